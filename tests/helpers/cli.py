"""The `zmqagents` command run as a shell user runs it, for the tests of the CLI and of what it drives."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

CLI = [sys.executable, "-m", "zmqagents.cli"]


def zmqa(*args: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), input=input, capture_output=True, text=True, timeout=timeout)


@contextmanager
def server(tmp_path: Path, *args: str, name: str = "server"):
    """Start a long-running command that writes --contact-file; yield "@FILE"; stop it by PID."""
    contact = tmp_path / f"{name}.contact"
    proc = subprocess.Popen(CLI + list(args) + ["--contact-file", str(contact)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not contact.exists():
            assert proc.poll() is None, f"server exited early: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"@{contact}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
