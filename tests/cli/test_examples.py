"""The example pipelines under scripts/examples run end to end, as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "scripts" / "examples"

pytestmark = pytest.mark.timeout(120)


def test_tasks_pipeline_example():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(EXAMPLES / "tasks-pipeline")], capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch: 20/20 completed by" in proc.stdout  # by one or both providers, as the scores fall
    lines = proc.stdout.splitlines()
    assert any(line.startswith("shout") and "completed" in line and "A MESH OF SMALL AGENTS" in line for line in lines)
    assert any(line.startswith("count") and "completed" in line and '"5"' in line for line in lines)


def test_ask_pipeline_example():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(EXAMPLES / "ask-pipeline")], capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(("==", "exit"))] == ["completed"] * 3 + ["canceled"]
    assert any("release notes" in line and "approved=True" in line for line in lines)
    assert any("draft: roadmap" in line and "approved=False" in line for line in lines)
    assert any("pass --answer-exec CMD to answer it" in line for line in lines)
    assert lines[-1] == "exit status: 6"
