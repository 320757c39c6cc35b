"""A real sidecar process (`zmqagents node --config FILE`) in a short temporary directory, and a raw local
API client for it (a DEALER speaking envelopes, as an application in any language would); and
`sidecar_mesh`, a sidecar with real peer processes around it, for the commands that read one (`top`, `members`).

    side = SidecarProc(mesh=["@/tmp/seed.contact"])
    side.start()
    side.call("status")["b"]          # one operation, its answer as a msgpack map
    side.close()                      # kills it (by PID) and removes the directory
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import msgpack
import zmq

from helpers.cli import CLI


def envelope(op: str, body=None, **fields) -> tuple[bytes, bytes]:
    """(id, frame) of a client envelope: 4-byte length, then the msgpack map."""
    mid = fields.pop("id", None) or os.urandom(16)
    payload = msgpack.packb({"v": 1, "id": mid, "src": bytes(32), "t": op, "b": body, **fields})
    return mid, struct.pack(">I", len(payload)) + payload


def unpack(frame: bytes) -> dict:
    return msgpack.unpackb(frame[4:4 + struct.unpack(">I", frame[:4])[0]])


class SidecarProc:
    """A sidecar whose local API socket is ``sock`` (also its default path: RUNTIME_DIRECTORY is ``dir``
    in ``env``, so a command run with ``env`` finds it without --socket)."""

    def __init__(self, mesh: list[str] = (), *, socket_in_config: bool = True):
        self.dir = Path(tempfile.mkdtemp(prefix="zasc-", dir="/tmp"))  # unix socket paths are short
        self.sock = str(self.dir / "node.sock")
        self.mesh = list(mesh)
        self.config = self.dir / "sidecar.toml"
        self.config.write_text(
            f'[node]\nkey = "{self.dir / "sidecar.key"}"\nlisten = "tcp://127.0.0.1:0"\ndrain_timeout = 1\n'
            + (f'[local_api]\npath = "{self.sock}"\nmode = 0o600\n' if socket_in_config else "")
            + f'[spool]\ndir = "{self.dir / "spool"}"\nfsync = "never"\n'
            '[mdns]\nenabled = false\n[admin]\nenabled = false\n')
        self.env = {**os.environ, "RUNTIME_DIRECTORY": str(self.dir)}
        self.proc: subprocess.Popen | None = None
        self._ctx = zmq.Context()

    def start(self, timeout: float = 20) -> "SidecarProc":
        args = CLI + ["node", "--config", str(self.config)] + [a for c in self.mesh for a in ("--mesh", c)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"sidecar exited: {self.proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the sidecar's socket never answered"
            if os.path.exists(self.sock):
                try:
                    self.call("status", timeout_ms=500)
                    return self
                except zmq.Again:
                    pass
            time.sleep(0.05)

    def client(self, timeout_ms: int = 20_000, *, rcvhwm: int = 1000) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.connect(f"ipc://{self.sock}")
        return sock

    def call(self, op: str, body=None, *, timeout_ms: int = 20_000, **fields) -> dict:
        """One operation on a connection of its own; its answer."""
        sock = self.client(timeout_ms)
        try:
            sock.send(envelope(op, body, **fields)[1])
            return unpack(sock.recv())
        finally:
            sock.close()

    def status(self) -> dict:
        return self.call("status")["b"]

    def run(self, *args: str, input: str | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        """`zmqagents ARGS` with this sidecar at its default path (no --socket needed)."""
        return subprocess.run(CLI + list(args), input=input, capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **env})

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._ctx.destroy(linger=0)
        shutil.rmtree(self.dir, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def sidecar_mesh(peers: int = 2, *, extra_config: str = "", timeout: float = 30):
    """Yield (work dir, local API socket path, sidecar contact file, [peer contact files]) once the
    sidecar's node lists every peer alive with a measured RTT (read through its local API)."""
    from zmqagents.cli.nodeview import SidecarSource

    work = Path(tempfile.mkdtemp(prefix="zatop-", dir="/tmp"))  # unix socket paths are short
    sock = work / "node.sock"
    contact = work / "sidecar.contact"
    (work / "sidecar.toml").write_text(
        f'[node]\nkey = "{work}/sidecar.key"\nlisten = "tcp://127.0.0.1:0"\ncontact_file = "{contact}"\n'
        f'drain_timeout = 1\n[local_api]\npath = "{sock}"\nmode = 0o600\n[spool]\ndir = "{work}/spool"\n'
        f'[mdns]\nenabled = false\n[admin]\nenabled = false\n{extra_config}')
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(CLI + ["node", "--config", str(work / "sidecar.toml")],
                                      stdout=subprocess.DEVNULL, stderr=open(work / "sidecar.log", "w")))
        deadline = time.monotonic() + timeout
        while not (contact.exists() and sock.exists()):
            assert procs[0].poll() is None, (work / "sidecar.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the sidecar did not start"
            time.sleep(0.05)
        files = []
        for i in range(peers):
            files.append(work / f"peer{i}.contact")
            procs.append(subprocess.Popen(CLI + ["node", "--peer", f"@{contact}", "--contact-file", str(files[-1])],
                                          stdout=subprocess.DEVNULL, stderr=open(work / f"peer{i}.log", "w")))
        _wait_alive(SidecarSource, sock, peers, deadline)
        yield work, sock, contact, files
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def _wait_alive(source_class, sock: Path, peers: int, deadline: float) -> None:
    import asyncio

    async def poll() -> None:
        source = source_class(sock, 5.0)
        try:
            while True:
                rows, _ = await source.members()
                if sum(r["state"] == "alive" and r["rtt_ms"] is not None for r in rows) >= peers:
                    return
                assert time.monotonic() < deadline, f"only {rows} after the deadline"
                await asyncio.sleep(0.1)
        finally:
            await source.close()

    asyncio.run(poll())
