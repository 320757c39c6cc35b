#!/usr/bin/env python3
"""Tasks across real nodes: throughput and latency, then failover while providers are killed.

Setup: provider nodes run as child processes of this script (``--role provider``), each serving
the capability ``echo`` with a trivial in-process agent (a coroutine that returns its input) and
appending every task it starts to its own run log (one line per run, flushed per line, so a
SIGKILL loses nothing already started). The caller is a Node in this process that finds the
providers through DHT provider records and runs tasks with ``Agents.request`` semantics
(``Agents.submit``), ``--parallel`` in flight. tcp on 127.0.0.1, CURVE on every link.

* **throughput**: ``--tasks`` tasks over 3 providers. ``tasks_per_s`` = tasks / wall time from
  the first submit to the last outcome; ``task_p50_ms``/``task_p99_ms`` are per-task times from
  submit to outcome as the caller sees them (TaskDone.elapsed).
* **raw pyzmq, same run**: ``raw_rr_msgs_per_s`` is bench/throughput.py's raw pyzmq request/reply
  (a CURVE DEALER keeping ``--parallel`` requests in flight to a ROUTER that echoes them, one
  process each), measured right after; ``tasks_ratio`` = tasks_per_s / raw_rr_msgs_per_s, the
  share of a bare request/reply rate that tasks keep with routing, the task protocol and agents.
* **failover**: three more providers join, then ``--failover-tasks`` non-idempotent tasks run
  while providers are killed one by one with SIGKILL (at 25 %, 50 % and 75 % of the outcomes),
  so three providers remain. ``lost_tasks`` = tasks that never got an outcome;
  ``duplicate_runs`` = tasks started more than once, summed over every provider's run log
  (killed ones included). Both must be 0: the caller never re-sends a non-idempotent task that
  may have run. ``failed_maybe_ran`` counts tasks whose provider died under them (reported
  failed, never re-run), ``completed`` the rest.

Prints one JSON object on stdout; progress on stderr. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BenchError, log, run  # noqa: E402


async def provider_main(args) -> None:
    from zmqagents.agents.capability import Capability
    from zmqagents.agents.runtime import Agents
    from zmqagents.identity import Contact
    from zmqagents.node import Node

    runs = open(args.runs_file, "a", buffering=1)
    bootstrap = [Contact.parse(Path(args.seed).read_text().strip())] if args.seed else []
    async with Node(bootstrap=bootstrap) as node:
        agents = Agents(node)

        async def echo(value, ctx):
            runs.write(f"{value['i']}\n")
            if args.delay:
                await asyncio.sleep(args.delay)
            return value

        try:
            await agents.serve(Capability("echo", max_concurrency=args.max_concurrency), echo, timeout=10)
        except Exception as exc:  # the seed is alone at first; its record is re-published while it runs
            log(f"provider: first provide failed ({exc})")
        tmp = Path(args.contact_file + ".tmp")
        tmp.write_text(str(node.contact) + "\n")
        tmp.replace(args.contact_file)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
        await agents.close()


class Providers:
    def __init__(self, workdir: Path, delay: float, max_concurrency: int):
        self.workdir = workdir
        self.delay = delay
        self.max_concurrency = max_concurrency
        self.procs: list[subprocess.Popen] = []
        self.contacts: dict[int, Path] = {}  # pid -> contact file
        self.seed: Path | None = None  # the first provider's contact: the caller joins through it

    def start(self) -> subprocess.Popen:
        n = len(self.procs)
        contact = self.workdir / f"p{n}.contact"
        cmd = [sys.executable, __file__, "--role", "provider", "--contact-file", str(contact),
               "--runs-file", str(self.workdir / f"p{n}.runs"), "--delay", str(self.delay),
               "--max-concurrency", str(self.max_concurrency)]
        alive = [self.contacts[q.pid] for q in self.procs if q.poll() is None]
        if alive:  # join through a provider still alive (the first one may have been killed)
            cmd += ["--seed", str(alive[-1])]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=sys.stderr)
        deadline = time.monotonic() + 30
        while not contact.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError("a provider did not start")
            time.sleep(0.05)
        if self.seed is None:
            self.seed = contact
        self.contacts[proc.pid] = contact
        self.procs.append(proc)
        return proc

    def runs(self) -> list[str]:
        out = []
        for f in sorted(self.workdir.glob("p*.runs")):
            out += f.read_text().split()
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def drive(agents, n: int, parallel: int, base: int, *, on_done=None, spec=None) -> list:
    from zmqagents.core.tasks import TaskSpec

    slots = asyncio.Semaphore(parallel)
    outcomes = []

    async def one(i: int) -> None:
        async with slots:
            _, done = await agents.submit(TaskSpec("echo", {"i": base + i}, **(spec or {})), validate=False)
            res = await done
            outcomes.append(res)
            if on_done is not None:
                on_done(len(outcomes))

    await asyncio.gather(*(one(i) for i in range(n)))
    return outcomes


async def orchestrate(args) -> dict:
    from zmqagents.agents.runtime import Agents
    from zmqagents.core import tasks as T
    from zmqagents.core.tasks import CallerConfig
    from zmqagents.identity import Contact
    from zmqagents.node import Node

    workdir = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    providers = Providers(workdir, args.delay, args.max_concurrency)
    result: dict = {"bench": "tasks", "params": {"tasks": args.tasks, "failover_tasks": args.failover_tasks,
                                                  "parallel": args.parallel, "quick": args.quick,
                                                  "delay_s": args.delay, "max_concurrency": args.max_concurrency}}
    try:
        for _ in range(3):
            providers.start()
        seed = Contact.parse(providers.seed.read_text().strip())
        async with Node(bootstrap=[seed]) as node:
            agents = Agents(node, caller=CallerConfig(accept_timeout=2.0))
            deadline = time.monotonic() + 30
            while len(await agents.candidates("echo")) < 3:  # every provider record is findable
                if time.monotonic() > deadline:
                    raise BenchError("the providers' records did not all appear in the DHT")
                agents.lookup._cache.clear()
                await asyncio.sleep(0.2)
            await drive(agents, min(200, args.tasks), args.parallel, 10_000_000)  # warm-up
            loop = asyncio.get_running_loop()
            log(f"throughput: {args.tasks} tasks")
            t0 = time.perf_counter()
            outcomes = await drive(agents, args.tasks, args.parallel, 0)
            wall = time.perf_counter() - t0
            ok = [o for o in outcomes if o.state == T.COMPLETED]
            if len(ok) != args.tasks:
                raise BenchError(f"throughput run: {args.tasks - len(ok)} task(s) did not complete")
            ms = sorted(o.elapsed * 1000 for o in outcomes)
            result.update(tasks_per_s=round(args.tasks / wall, 1), task_p50_ms=round(statistics.median(ms), 3),
                          task_p99_ms=round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3))

            # Three more providers first, so that three can die and the mesh never runs dry.
            for _ in range(3):
                await loop.run_in_executor(None, providers.start)
            deadline = time.monotonic() + 30
            while len(await agents.candidates("echo")) < 6:
                if time.monotonic() > deadline:
                    raise BenchError("the spare providers' records did not appear in the DHT")
                agents.lookup._cache.clear()
                await asyncio.sleep(0.2)
            log(f"failover: {args.failover_tasks} tasks, killing providers one by one")
            base = 20_000_000
            kill_at = [int(args.failover_tasks * f) for f in (0.25, 0.5, 0.75)]
            killed = []

            reached = asyncio.Event()

            def on_done(count: int) -> None:
                if kill_at and count >= kill_at[0]:
                    reached.set()

            async def killer() -> None:
                # One at a time, the oldest provider still alive is killed with SIGKILL.
                while kill_at:
                    await reached.wait()
                    reached.clear()
                    count = kill_at.pop(0)
                    victim = next(p for p in providers.procs if p.poll() is None)
                    os.kill(victim.pid, signal.SIGKILL)
                    killed.append(victim.pid)
                    log(f"failover: killed provider pid {victim.pid} after {count} outcomes ({time.perf_counter() - t0:.2f} s)")

            killing = asyncio.ensure_future(killer())
            t0 = time.perf_counter()
            outcomes = await asyncio.wait_for(
                drive(agents, args.failover_tasks, args.parallel, base, on_done=on_done,
                      spec={"idle_timeout": 3.0}), timeout=args.failover_tasks * 0.1 + 120)
            wall = time.perf_counter() - t0
            killing.cancel()
            await agents.close()
        ids = [str(base + i) for i in range(args.failover_tasks)]
        runs = [r for r in providers.runs() if int(r) >= base]
        counts: dict[str, int] = {}
        for r in runs:
            counts[r] = counts.get(r, 0) + 1
        states: dict[str, int] = {}
        for o in outcomes:
            states[o.state] = states.get(o.state, 0) + 1
        result.update(
            failover_tasks=args.failover_tasks, providers_killed=len(killed),
            lost_tasks=args.failover_tasks - len(outcomes),
            duplicate_runs=sum(c - 1 for c in counts.values() if c > 1),
            completed=states.get(T.COMPLETED, 0),
            failed_maybe_ran=sum(1 for o in outcomes if o.state == T.FAILED and o.maybe_ran),
            failed_other=sum(1 for o in outcomes if o.state == T.FAILED and not o.maybe_ran),
            rejected=states.get(T.REJECTED, 0),
            never_ran=sum(1 for i in ids if i not in counts),
            failover_wall_s=round(wall, 2),
        )
        completed_not_run = sum(1 for o in outcomes if o.state == T.COMPLETED and str(o.output["i"]) not in counts)
        if completed_not_run:
            raise BenchError(f"{completed_not_run} task(s) reported completed without a run on any provider")
        if result["lost_tasks"] or result["duplicate_runs"]:
            raise BenchError(f"lost_tasks={result['lost_tasks']} duplicate_runs={result['duplicate_runs']}")
    finally:
        providers.stop()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["orchestrator", "provider"], default="orchestrator")
    p.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--failover-tasks", type=int, default=10_000)
    p.add_argument("--parallel", type=int, default=64)
    p.add_argument("--delay", type=float, default=0.0, help="seconds each task takes at the provider")
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--seed"), p.add_argument("--contact-file"), p.add_argument("--runs-file")
    args = p.parse_args()
    if args.role == "provider":
        run(provider_main(args))
        return
    if args.quick:
        args.tasks, args.failover_tasks, args.parallel = 300, 600, 16
        args.delay = max(args.delay, 0.005)
    result = run(orchestrate(args))
    import throughput  # the raw pyzmq reference, from the benchmark that owns it (bench/ is sys.path[0])

    log(f"raw pyzmq request/reply: {args.tasks} requests, {args.parallel} in flight")
    raw = throughput.measure("rr", "raw", args.tasks, min(500, args.tasks), args.parallel, 120.0, None)
    result["raw_rr_msgs_per_s"] = round(raw["msgs_per_s"], 1)
    result["tasks_ratio"] = round(result["tasks_per_s"] / result["raw_rr_msgs_per_s"], 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
