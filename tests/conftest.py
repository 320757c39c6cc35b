"""Shared test helpers. Async tests run on a fresh event loop with a hard time bound."""

from __future__ import annotations

import asyncio

import pytest


def run_async(coro, timeout: float = 20.0):
    """Run a coroutine to completion, failing (not hanging) after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def arun():
    return run_async
