"""The root of every exception zmqagents defines: ``except zmqagents.Error`` catches them all.

Each exception keeps the builtin base it had (a ``ValueError`` for bad input, a ``TimeoutError``
for a deadline), so code that catches those still works; :class:`Error` is added beside it. This
module imports nothing, so every layer, the sans-IO cores included, can derive from it.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every exception raised by zmqagents itself."""


class InvalidArgument(Error, ValueError):
    """An argument or setting out of its range: a mistake in the calling code or its configuration."""


class WrongType(Error, TypeError):
    """An argument of a type the function does not take."""
