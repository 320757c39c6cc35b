"""The README's first quick-start command runs zmqagents.demo: keep it true with a small run."""

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_demo_runs_a_batch_and_a_workflow_across_real_agent_processes():
    run = subprocess.run([sys.executable, "-m", "zmqagents.demo", "--workers", "2", "--requests", "20"],
                         capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = [line for line in run.stdout.splitlines() if line.startswith("summary:")]
    assert summary and "20/20 tasks completed by 2 wordstats agents" in summary[0], run.stdout
    assert "workflow 2/2 steps completed" in summary[0]
    assert '"output": "COOPERATING"' in run.stdout  # the workflow's second step saw the first one's output
