"""A real sidecar process (`zmqagents node --config`) with real peer processes around it, for the
tests of the commands that read a sidecar (`top`, `members`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from helpers.cli import CLI


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
