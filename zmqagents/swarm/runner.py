"""One process's swarm, from its first node to its report.

1. The first node starts (and joins ``bootstrap``, when one was given; else it founds the mesh, and
   its contact goes to ``seed_file`` for the other processes). The process's RSS and fds now are the
   baseline of one node.
2. The other nodes start and join (``--join-concurrency`` at a time), each through the first node
   (a member of the mesh by then; through the bootstrap contacts if it could not join).
3. ``--settle`` seconds, then the idle figures (RSS, fds, links per node).
4. The workload for ``--seconds``, with the fault plan; then what is in flight finishes, and kills
   get up to ``--detect-timeout`` to be noticed.
5. The report is made, then every node closes (a graceful leave: the mesh they joined is told).

A cancel (SIGINT/SIGTERM through run_main) at any point skips to 5 with what was measured so far,
and the report says ``"interrupted": true``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from pathlib import Path

import zmq
from typing import Any, Awaitable, Callable

from ..identity import Contact
from ..node import Node, NodeConfig
from ..transport.context import SocketContext
from . import measure
from .crowd import Crowd
from .faults import Faults
from .plan import Plan
from .report import Tally, report
from .workload import DRIVERS

log = logging.getLogger(__name__)

PROGRESS_EVERY = 2.0  # s between progress lines while nodes join
JOIN_TRIES = 3


class Swarm:
    def __init__(self, plan: Plan, bootstrap: list[Contact], *, progress: Callable[[str], None] = lambda s: None,
                 seed_file: Path | None = None, params: dict[str, Any] | None = None,
                 config: Callable[[], NodeConfig] | None = None,
                 gate: Callable[[str], Awaitable[None]] | None = None):
        """``config()`` makes each node's NodeConfig (default: the defaults); the plan's listen address
        and join timeout are set on it. ``gate(phase)`` is awaited before the workload ("ready") and
        before the nodes close ("done"): the barrier of ``--procs``, a ``--start-at`` time."""
        self.plan = plan.check()
        self.bootstrap = bootstrap
        self.progress = progress
        self.seed_file = seed_file
        self.params = params or {}
        self._make_config = config or NodeConfig
        self._gate = gate
        self.tally = Tally()
        self.crowd = Crowd(random.Random(plan.seed))
        self.context: SocketContext | None = None
        self.interrupted = False
        self._built: list[Node] = []  # every Node made, started or not: all are closed at the end
        self.cannot_start: str | None = None  # why no further node could start (out of fds), once one could not
        self.phase = "starting"

    def _config(self) -> NodeConfig:
        config = self._make_config()
        config.join_timeout = self.plan.join_timeout
        config.transport.listen = self.plan.listen
        if self.plan.link_idle is not None:
            config.transport.link_idle_timeout = self.plan.link_idle
        return config

    async def run(self) -> dict[str, Any]:
        """Run the plan; return the report (every node closed)."""
        plan, tally = self.plan, self.tally
        limit = measure.raise_fd_limit(measure.fds_wanted(plan.nodes))
        tally.add("fd_limit", limit.soft)
        likely = plan.nodes * measure.FDS_PER_NODE_TYPICAL
        if limit.soft < likely:
            self.progress(f"file descriptors: the limit is {limit.soft} and {plan.nodes} nodes in one process may "
                          f"need ~{likely} (~{measure.FDS_PER_NODE_TYPICAL} per node in a mesh of a few hundred): "
                          f"expect to run out near {limit.soft // measure.FDS_PER_NODE_TYPICAL} nodes; use --procs "
                          f"{-(-likely // limit.soft) * max(1, int(self.params.get('procs') or 1))} or a higher hard limit")
        tally.add("nodes_planned", plan.nodes)
        tally.add("procs", 1)
        # libzmq counts its sockets against this: each node holds ~8 and 1 per DEALER it opens
        self.context = SocketContext(max_sockets=plan.nodes * 300 + 64)
        driver = DRIVERS[plan.workload](self.crowd, plan, tally)
        faults = Faults(self.crowd, plan, tally, self.progress)
        try:
            await self._join_all()
            self.phase = "settling"
            await asyncio.sleep(plan.settle)
            self._idle_figures()
            self.phase = "preparing the workload"
            await driver.prepare()
            if self._gate is not None:
                self.phase = "waiting for the other processes to be ready"
                await self._pass_gate("ready")
            self.phase = "workload"
            await self._window(driver, faults)
        except asyncio.CancelledError:
            self.interrupted = True
            self.progress(f"interrupted while {self.phase}: reporting what was measured")
            driver.cancel()
        except BaseException:
            driver.cancel()
            await faults.close()
            await self._close_all()
            raise
        finally:
            await faults.close()
        tally.add("nodes", len(self.crowd.nodes))  # started (a process out of fds starts fewer than planned)
        tally.add("rss_mb_end", measure.rss_mb())
        tally.add("fds_end", measure.open_fds())
        tally.add("dealers_end", sum(n.transport.dealer_count for n in self.crowd.live()))
        tally.add("live_end", len(self.crowd.live()))
        for node in self.crowd.nodes:
            tally.add("dealers_idle_closed", node.transport.stats["dealers_idle_closed"])
            for reason, count in node.transport.drops.items():
                tally.add(f"drop.{reason}", count)
        if not tally.get("rss_mb_idle"):  # interrupted before the idle figures
            tally.add("rss_mb_idle", tally.get("rss_mb_end"))
        extra = {"interrupted": self.interrupted or None, "phase": self.phase if self.interrupted else None}
        result = report(tally, self.params, extra)
        if self._gate is not None and not self.interrupted:
            self.phase = "waiting for the other processes to finish"
            await self._pass_gate("done")
        await self._close_all()
        return result

    async def _pass_gate(self, phase: str) -> None:
        """The gate, or on with a warning when it cannot be passed (out of fds): the report counts more."""
        assert self._gate is not None
        try:
            await self._gate(phase)
        except OSError as exc:
            self.tally.add("gate_failed")
            self.progress(f"could not wait for the other processes ({phase}: {exc}); going on alone")

    # -- joining ------------------------------------------------------------------------------------

    async def _join_all(self) -> None:
        plan, tally, crowd = self.plan, self.tally, self.crowd
        loop = asyncio.get_running_loop()
        self.phase = "starting the first node"
        first = Node(config=self._config(), context=self.context)
        self._built.append(first)
        crowd.add(first)
        await first.start()
        if self.bootstrap:
            await self._join(0, self.bootstrap)
        else:
            crowd.joined.add(0)  # the founder: nothing to join (no join time), but a member of the mesh
            tally.add("joined")
            if self.seed_file is not None:
                tmp = self.seed_file.with_name(self.seed_file.name + ".tmp")
                tmp.write_text(str(first.contact) + "\n")
                tmp.replace(self.seed_file)
        if 0 not in crowd.joined:
            self.progress("the first node did not join the mesh: is --mesh right, and reachable from here?")
        gc.collect()
        tally.add("rss_mb_one_node", measure.rss_mb())
        tally.add("fds_one_node", measure.open_fds())
        # The others join through the first node once it is a member: the mesh's seed then answers one
        # join per process (per pod), not one per node, and is no hotspot that fails joins by timing out
        # (1,000 nodes in 10 processes through one founder on a loaded box: 949 joins failed).
        contacts = [first.contact] if 0 in crowd.joined else self.bootstrap
        self.phase = "joining"
        started = loop.time()
        slots = asyncio.Semaphore(plan.join_concurrency)
        last_progress = [loop.time()]

        async def one() -> None:
            async with slots:
                if self.cannot_start is not None:
                    tally.add("start_failed")
                    return
                node = Node(config=self._config(), context=self.context)
                self._built.append(node)
                try:
                    await node.start()
                except (zmq.ZMQError, OSError) as exc:  # out of fds or sockets: no further node would start
                    await node.close(leave=False)
                    tally.add("start_failed")
                    self.cannot_start = str(exc)
                    self.progress(f"cannot start more nodes ({exc}) with {len(crowd.nodes)} started and "
                                  f"{measure.open_fds()} fds open (limit {tally.get('fd_limit'):.0f}): going on "
                                  "with those; use more --procs, or a higher `ulimit -n`")
                    return
                index = crowd.add(node)
                await self._join(index, contacts)
                if loop.time() - last_progress[0] >= PROGRESS_EVERY:
                    last_progress[0] = loop.time()
                    self.progress(f"joined {len(crowd.joined)}/{plan.nodes} "
                                  f"({tally.get('join_failed'):.0f} failed) in {loop.time() - started:.1f} s")

        await asyncio.gather(*(one() for _ in range(plan.nodes - 1)))
        tally.add("join_all_s", loop.time() - started)
        self.progress(f"joined {len(crowd.joined)}/{plan.nodes} in {loop.time() - started:.1f} s")

    async def _join(self, index: int, contacts: list[Contact]) -> None:
        """Join, trying again (JOIN_TRIES in all) when no contact answered in time: on a process short of
        CPU a lookup's replies can wait in the sockets past its timeouts. join_s counts from the first
        try; ``join_retries`` says how often it took more than one."""
        node = self.crowd.nodes[index]
        began = time.perf_counter()
        for attempt in range(JOIN_TRIES):
            if attempt:
                self.tally.add("join_retries")
            if await node.join(contacts, timeout=self.plan.join_timeout):
                self.crowd.joined.add(index)
                self.tally.add("joined")
                self.tally.observe("join_s", time.perf_counter() - began)
                return
        self.tally.add("join_failed")

    def _idle_figures(self) -> None:
        gc.collect()
        tally, crowd = self.tally, self.crowd
        tally.add("rss_mb_idle", measure.rss_mb())
        tally.add("fds", measure.open_fds())
        members = [crowd.nodes[i] for i in sorted(crowd.joined)]
        tally.add("joined_or_seed", len(members))
        tally.add("links", sum(n.transport.dealer_count + n.transport.inbound_count for n in members))
        tally.add("dealers", sum(n.transport.dealer_count for n in members))

    # -- the measured window -------------------------------------------------------------------------

    def _traffic(self) -> tuple[int, int]:
        frames = sent = 0
        for node in self.crowd.nodes:
            stats = node.transport.stats
            frames += stats["frames_in"] + stats["frames_out"]
            sent += stats["bytes_in"] + stats["bytes_out"]
        return frames, sent

    async def _window(self, driver, faults: Faults) -> None:
        plan, tally = self.plan, self.tally
        loop = asyncio.get_running_loop()
        frames0, bytes0 = self._traffic()
        cpu0, t0 = measure.cpu_s(), loop.time()
        if faults.planned:
            faults.watch()
        self.progress(f"{plan.workload} workload for {plan.seconds:g} s on {len(self.crowd.live())} live nodes")
        fault_task = loop.create_task(faults.run(t0))
        try:
            await driver.run(t0 + plan.seconds)
            self.phase = "finishing the workload"
            await driver.finish()
            await fault_task
            self.phase = "waiting for kills to be detected"
            await faults.detected()
        finally:
            fault_task.cancel()
            frames1, bytes1 = self._traffic()  # killed nodes' counters stay readable after close
            tally.add("window_s", loop.time() - t0)
            tally.add("cpu_s_window", measure.cpu_s() - cpu0)
            tally.add("frames_window", frames1 - frames0)
            tally.add("bytes_window", bytes1 - bytes0)

    async def _close_all(self) -> None:
        self.phase = "closing"
        killed = {id(self.crowd.nodes[i]) for i in self.crowd.killed}
        nodes = [n for n in self._built if id(n) not in killed]
        for i in list(self.crowd.paused):
            self.crowd.nodes[i].resume()
        await asyncio.gather(*(n.close() for n in nodes), return_exceptions=True)
        if self.context is not None:
            self.context.close()
