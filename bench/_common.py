"""Helpers shared by the benchmarks: child processes, the event loop, /proc readings.

Every benchmark is one orchestrating process that starts its subjects as
child processes of the same script (``--role ...``), so that the process
being measured shares nothing with the one measuring it. Children talk to
the orchestrator with one JSON object per line on stdout; diagnostics go to
stderr. A child that is a *server* runs until its stdin reaches EOF.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent


class BenchError(RuntimeError):
    """A benchmark could not run or a correctness check failed: the run is invalid."""


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def emit(obj: dict) -> None:
    """One JSON line on stdout (children → orchestrator)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- the event loop ------------------------------------------------------------


def run(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` the way zmqagents does: ``zmqagents.node.run`` (uvloop when installed).

    Raw-pyzmq children use the same runner so both sides of a comparison run on
    the same loop implementation. If ``zmqagents.node`` cannot be imported (its
    delivery core is missing in a partial checkout) the raw side falls back to an
    identical local runner, and ``loop_runner`` in the environment report says so.
    """
    try:
        from zmqagents.node import run as node_run
    except ImportError:
        return _local_run(coro)
    return node_run(coro)


def _local_run(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def loop_runner() -> str:
    try:
        import zmqagents.node  # noqa: F401
    except ImportError:
        return "bench._common (zmqagents.node not importable)"
    return "zmqagents.node.run"


def loop_name() -> str:
    """Module of the running loop's class: 'uvloop' or 'asyncio'."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def stdin_eof() -> None:
    """Wait until the orchestrator closes our stdin (how servers are told to stop)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)


async def stdin_lines() -> AsyncIterator[bytes]:
    """The lines the orchestrator writes to our stdin, read without blocking the loop, until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        yield line


async def serve_commands(handlers: dict[str, Callable[[dict], Any]]) -> None:
    """Answer each JSON command on stdin, ``{"cmd": NAME, ...}``, with the JSON line that
    ``handlers[NAME](command)`` returns (awaited if it is a coroutine), until EOF. An unknown
    NAME is answered with ``{"event": "error", ...}``, so the orchestrator fails with a reason."""
    async for line in stdin_lines():
        cmd = json.loads(line)
        handler = handlers.get(cmd["cmd"])
        if handler is None:
            emit({"event": "error", "error": f"unknown command {cmd['cmd']!r}"})
            continue
        answer = handler(cmd)
        emit(await answer if asyncio.iscoroutine(answer) else answer)


# -- child processes -------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the orchestrator dies, so a killed or
    timed-out benchmark leaves no orphaned senders behind (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """A child process of a benchmark script, reading its JSON lines with timeouts."""

    def __init__(self, script: Path, role: str, *args: str, name: str | None = None, extra_env: dict | None = None):
        self.name = name or role
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if extra_env:
            env.update(extra_env)
        cmd = [sys.executable, str(script), "--role", role, *args]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env, preexec_fn=_die_with_parent
        )
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float) -> dict:
        """The next JSON line the child prints; BenchError on timeout, exit or garbage."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name} (pid {self.pid}) printed nothing within {timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait()
                raise BenchError(f"{self.name} (pid {self.pid}) exited with code {code} before reporting")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise BenchError(f"{self.name} printed a line that is not JSON: {line[:200]!r}") from None

    def send(self, obj: dict) -> None:
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        """Tell a server child to exit (it stops at stdin EOF); a child already gone is fine."""
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def stop(self, timeout: float = 10.0) -> int:
        """Close stdin (servers exit on EOF) and wait; kill if it does not exit."""
        self.close_stdin()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name} (pid {self.pid}) did not exit within {timeout:.0f}s of stdin EOF")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name} (pid {self.pid}) did not finish within {timeout:.0f}s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def stop_all(children: list[Child]) -> None:
    """Stop every child the way servers expect (stdin EOF), SIGKILL by PID the ones that do not exit
    within 5 s; every child has exited and been reaped when it returns."""
    for child in children:
        child.close_stdin()
    for child in children:
        try:
            child.proc.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()


def kill_all(children: list[Child]) -> None:
    """SIGKILL (by PID) and reap every child still running: what a failed run does, since its
    children have nothing left worth waiting for."""
    for child in children:
        child.kill()


def failed(benchmark: str, exc: BaseException, children: list[Child]) -> int:
    """Say on stderr why ``benchmark`` failed, kill its children and return its exit code (1).

    For the ``except BenchError`` of an orchestrator whose ``finally`` calls :func:`stop_all`."""
    log(f"{benchmark} benchmark FAILED: {exc}")
    kill_all(children)
    return 1


# -- /proc --------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all threads), in clock ticks (1/CLK_TCK s)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return int(fields[11]) + int(fields[12])


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process in ns (schedstat: far finer than clock ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # thread exited between listdir and open
    return total


def busy_cpus(interval: float = 1.0) -> float:
    """How many CPUs were busy (non-idle) over ``interval`` s, from /proc/stat: run before
    measuring, so a result taken while something else loaded the box says so."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    total0, idle0 = read()
    time.sleep(interval)
    total1, idle1 = read()
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


class OtherLoad:
    """CPU used by processes *outside* this benchmark while it ran.

    Whole-machine busy time (/proc/stat) minus this process and its reaped children
    (os.times). Benchmarks on a shared 2-core box are only meaningful when this is ~0.
    """

    def __init__(self) -> None:
        self.start_busy, self.start_own, self.start_wall = self._busy_s(), self._own_s(), time.monotonic()

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return (sum(values) - idle) / CLK_TCK

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def report(self) -> dict:
        wall = time.monotonic() - self.start_wall
        other = max(0.0, (self._busy_s() - self.start_busy) - (self._own_s() - self.start_own))
        return {"other_cpu_s": round(other, 2), "other_cpus_busy_avg": round(other / wall, 3) if wall else 0.0}


class BoxLoad:
    """How loaded the box was around a benchmark, for its ``env`` report.

    Made at the start: the load average and the busy CPUs then (with a warning on stderr when other
    work already keeps the box busy, so a noisy result says so as it runs), and an :class:`OtherLoad`
    for the CPU that other processes take while the benchmark runs."""

    def __init__(self) -> None:
        self.load_avg_at_start = list(os.getloadavg())
        self.busy_at_start = busy_cpus(0.5)
        if self.busy_at_start > 0.3:
            log(f"warning: {self.busy_at_start:.1f} CPUs already busy before the benchmark: figures will be noisy")
        self.other = OtherLoad()

    def report(self) -> dict:
        return {"load_avg_at_start": self.load_avg_at_start, "busy_cpus_at_start": round(self.busy_at_start, 2),
                **self.other.report()}


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- reporting ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0 <= q <= 1) of ``values``: the sample nearest to rank q * (n - 1); None if empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def median(values: list[float]) -> float:
    import statistics  # imported late: ~0.5 MB that the measured processes should not carry

    return statistics.median(values) if values else float("nan")


def environment() -> dict:
    import msgpack
    import nacl
    import zmq

    info = {
        "load_avg_at_end": list(os.getloadavg()),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "pynacl": nacl.__version__,
        "loop_runner": loop_runner(),
        "has_curve": bool(zmq.has("curve")),
    }
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        info["git_commit"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def prepare_node_process(verbose: bool) -> None:
    """Set up a child that runs many Nodes: descriptors for all their sockets (:func:`raise_fd_limit`),
    and unless ``verbose`` no transport warnings: one per (peer, reason) per node floods stderr at
    N=100, and the nodes count their drops either way."""
    import logging

    raise_fd_limit()
    if not verbose:
        logging.getLogger("zmqagents.transport").setLevel(logging.ERROR)


async def close_nodes(nodes: list) -> None:
    """Close a child's Nodes without the graceful-leave pause (``leave_timeout`` each, one after the
    other): the run is over and every other node is closing too."""
    for n in nodes:
        n.config.leave_timeout = 0
        await n.close()


def raise_fd_limit() -> None:
    """Many peers per process need many descriptors: raise the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def cli_process(argv: list[str], ready: Callable[[], bool], what: str, env: dict):
    """A long-running command (the CLI benches' servers, seeds and sidecars), yielded once ``ready()``
    says it is up (30 s at most); stopped by its PID with SIGTERM, killed if it has not ended 15 s later."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
