"""``--procs P``: the swarm split over P processes, each a ``zmqagents swarm`` of its own, reports merged.

Each child gets ``nodes / P`` nodes (the first ones one more, for a remainder) and the same plan. On
an own mesh the first child founds it and writes its first node's contact to a file; the others
start once it exists and join through it. Every child prints its report as one JSON line on stdout
(its progress goes to our stderr); the merge is :func:`report.merge`. A signal makes the parent
send SIGTERM to each child (by PID), which then reports what it measured.

The children start their workload together and close their nodes together (:class:`FileBarrier`):
a process that started late would otherwise still send requests to the nodes of one that had
finished and left, and count them as failures of the mesh.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..errors import Error
from .report import merge

SEED_WAIT_S = 60.0  # how long the other children wait for the first one's founder contact
PHASES = ("ready", "done")  # the barriers: all joined (start the workload), all finished (close)
POLL_S = 0.05


class FileBarrier:
    """A child's side of the barriers, through entries in a directory the parent watches: the child
    makes ``PHASE.PID`` and waits for ``PHASE.go``, which the parent makes once every child still
    running made its own."""

    def __init__(self, directory: Path):
        self.directory = directory

    async def __call__(self, phase: str) -> None:
        # a directory, not a file: mkdir needs no file descriptor, and a process of many nodes may have
        # none left (seen at 100 nodes a process: EMFILE touching a file lost a whole report)
        (self.directory / f"{phase}.{os.getpid()}").mkdir(exist_ok=True)
        go = self.directory / f"{phase}.go"
        while not go.exists():
            await asyncio.sleep(POLL_S)


async def _release(directory: Path, children: list[asyncio.subprocess.Process], expected: int) -> None:
    """The parent's side: open each barrier once every child that is still running reached it."""
    for phase in PHASES:
        while True:
            arrived = len(list(directory.glob(f"{phase}.[0-9]*")))
            running = sum(1 for c in children if c.returncode is None)
            if len(children) == expected and arrived >= running:
                break
            await asyncio.sleep(POLL_S)
        (directory / f"{phase}.go").touch()


class ProcsError(Error):
    """A child could not be started or gave no report."""


def split(nodes: int, procs: int) -> list[int]:
    return [nodes // procs + (1 if i < nodes % procs else 0) for i in range(procs)]


async def run_procs(procs: int, nodes: int, child_args: Callable[[int, int, list[str]], list[str]],
                    mesh: list[str], progress: Callable[[str], None],
                    interrupted: Callable[[dict[str, Any]], None]) -> tuple[dict[str, Any], int]:
    """Run the children; (merged report, children that failed). ``child_args(index, nodes, extra)`` is
    the command line of child ``index`` after ``zmqagents swarm`` (``extra``: the barrier, the founder).
    Cancelled (a signal), it stops the children, hands their merged report to ``interrupted``, and
    lets the cancellation go on."""
    counts = [n for n in split(nodes, procs) if n > 0]
    children: list[asyncio.subprocess.Process] = []
    outputs: list[asyncio.Task] = []
    with tempfile.TemporaryDirectory(prefix="zmqagents-swarm-") as tmp:
        seed_file = Path(tmp) / "founder.contact"
        barrier = Path(tmp) / "barrier"
        barrier.mkdir()
        release = asyncio.get_running_loop().create_task(_release(barrier, children, len(counts)))

        async def spawn(index: int, extra: list[str]) -> None:
            argv = [sys.executable, "-m", "zmqagents.cli", "swarm",
                    *child_args(index, counts[index], ["--barrier", str(barrier), *extra])]
            child = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
            children.append(child)
            outputs.append(asyncio.get_running_loop().create_task(child.communicate()))

        try:
            if mesh:
                for i in range(len(counts)):
                    await spawn(i, [])
            else:
                await spawn(0, ["--seed-file", str(seed_file)])
                await _wait_for(seed_file, children[0])
                for i in range(1, len(counts)):
                    await spawn(i, ["--mesh", f"@{seed_file}"])
            progress(f"{len(children)} processes, pids {' '.join(str(c.pid) for c in children)}")
            results = await asyncio.shield(asyncio.gather(*outputs))
        except asyncio.CancelledError:
            for child in children:
                if child.returncode is None:
                    child.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*outputs)
            report, _failed = _merge(results, children)
            report["interrupted"] = True
            interrupted(report)
            raise
        except BaseException:
            for child in children:
                if child.returncode is None:
                    child.kill()
            await asyncio.gather(*outputs, return_exceptions=True)
            raise
        finally:
            release.cancel()
    return _merge(results, children)


async def _wait_for(path: Path, child: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SEED_WAIT_S
    while not path.exists():
        if child.returncode is not None:
            raise ProcsError(f"the first process (pid {child.pid}) exited with status {child.returncode} "
                             "before its first node was up")
        if loop.time() > deadline:
            raise ProcsError(f"the first process (pid {child.pid}) did not start its first node in {SEED_WAIT_S:g} s")
        await asyncio.sleep(0.05)


def _merge(results: list[tuple[bytes, bytes]], children: list[asyncio.subprocess.Process]) -> tuple[dict[str, Any], int]:
    reports = []
    failed = 0
    for (out, _err), child in zip(results, children):
        report = _last_report(out)
        if report is None:
            failed += 1
            print(f"swarm: process {child.pid} exited with status {child.returncode} and no report", file=sys.stderr)
        else:
            reports.append(report)
    if not reports:
        raise ProcsError("no process gave a report")
    merged = merge(reports)
    merged["procs_failed"] = failed or None
    return merged, failed


def _last_report(out: bytes) -> dict[str, Any] | None:
    for line in reversed(out.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) and obj.get("report") == "zmqagents swarm" else None
    return None
