"""The example pipelines under scripts/examples run end to end, as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "scripts" / "examples"

pytestmark = pytest.mark.timeout(120)


def test_tasks_pipeline_example():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(EXAMPLES / "tasks-pipeline")], capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch: 20/20 completed by" in proc.stdout  # by one or both providers, as the scores fall
    lines = proc.stdout.splitlines()
    assert any(line.startswith("shout") and "completed" in line and "A MESH OF SMALL AGENTS" in line for line in lines)
    assert any(line.startswith("count") and "completed" in line and '"5"' in line for line in lines)
