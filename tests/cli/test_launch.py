"""The console-script launcher keeps TLS (ssl, OpenSSL's libcrypto, uvloop) out of `zmqagents node`."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys

import pytest

from zmqagents.identity import parse_public_key
from zmqagents.launch import LEAN_COMMANDS, command_of

LAUNCH = [sys.executable, "-m", "zmqagents.launch"]  # exactly what the `zmqagents` console script runs


@pytest.mark.parametrize("argv, command", [
    (["node", "--listen", "x"], "node"), (["-v", "-v", "node"], "node"), (["--verbose", "reply"], "reply"),
    (["keygen", "node"], "keygen"), ([], None), (["--version"], None),
])
def test_command_of(argv, command):
    assert command_of(argv) == command


def _unmeasured() -> dict[str, str]:
    """This environment without what starts coverage.py in a child (.ci/run measures the processes tests
    start): its tracer loads OpenSSL itself, so a process it measures cannot show what the launcher keeps out."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}


def _libraries(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def _first_line(proc: subprocess.Popen, timeout: float = 15) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the node printed nothing"
    return json.loads(proc.stdout.readline())


@pytest.mark.timeout(30)
def test_node_runs_without_openssl_and_still_works():
    assert "node" in LEAN_COMMANDS
    node = subprocess.Popen([*LAUNCH, "node", "--listen", "tcp://127.0.0.1:0", "--echo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_unmeasured())
    try:
        hello = _first_line(node)
        maps = _libraries(node.pid)
        assert "libcrypto" not in maps and "libssl" not in maps and "uvloop" not in maps
        # built-in sha256 gives the same node id as OpenSSL's in this (ordinary) test process
        key = parse_public_key(hello["contact"].split("@")[0])
        assert hello["node_id"] == hashlib.sha256(key).hexdigest()
        # and it serves: a request from another command (which keeps TLS and uvloop) round-trips
        out = subprocess.run([*LAUNCH, "request", "--to", hello["contact"], "--timeout", "10"],
                             input='{"x": 1}\n', capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.splitlines()[0])["reply"] == {"x": 1}
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(10) == 0
