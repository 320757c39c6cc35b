"""A real node in a process of its own (helpers/sidecar_node.py), driven with one JSON line per command.

The sidecar-service tests (mDNS, the admin endpoint) and the hostile-peer tests need a node they can
kill or put in a network namespace; this is the one place that starts it, talks to it and stops it
(by its PID).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

HELPER = Path(__file__).resolve().parent / "sidecar_node.py"


class NodeProc:
    """``helpers/sidecar_node.py ARGS`` on this host, or inside network namespace ``ns`` (``ip netns
    exec``); ``program`` runs another command that prints JSON lines the same way (``zmqagents node``).
    ``hello`` is its first line (its contact, ...); :meth:`ask` sends a command and reads the answer;
    :meth:`stop` closes its stdin (it exits) and kills it if it does not."""

    def __init__(self, *args: str, ns: str | None = None, program: list[str] | None = None):
        cmd = [*(program or [sys.executable, str(HELPER)]), *args]
        if ns is not None:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._buf = b""
        self.hello = self.read(15)

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"helper pid {self.proc.pid} said nothing in {timeout} s")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"helper exited {self.proc.wait()}: {self.proc.stderr.read().decode()[-2000:]}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def ask(self, cmd: dict, timeout: float = 10) -> dict:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait()
