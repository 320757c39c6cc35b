"""The fault plan: kill or pause a share of this process's nodes, and see who noticed a kill when.

A kill is ``node.close(leave=False)``: its sockets close at once and no leave rumor goes out, so to
its peers it is a crash (TCP resets included, as when a process dies). A pause is ``node.pause()`` for
``--for`` seconds. Victims are drawn at random (``--seed``) among every node but the process's first.

Detection is seen from this process: the holders of a victim are its surviving nodes whose
membership held the victim when it was killed; a holder's detection time is its first ``failed``
event about the victim minus the kill. Other processes' and pods' nodes notice it too, but they do
not know it was killed; a pod of M nodes samples the holders. Membership events are recorded from
the start of the workload on every node, so a ``failed`` event about one of this process's nodes
that was neither killed nor paused is a false positive.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from ..node import Node
from .crowd import Crowd
from .plan import Plan
from .report import Tally


class Faults:
    def __init__(self, crowd: Crowd, plan: Plan, tally: Tally, progress: Callable[[str], None]):
        self.crowd = crowd
        self.plan = plan
        self.tally = tally
        self.progress = progress
        self.pending: set[tuple[int, bytes]] = set()  # (holder index, victim id) not detected yet
        self.kill_at: dict[bytes, float] = {}  # victim id -> time.monotonic() of the kill
        self.paused_ids: set[bytes] = set()
        self.last_kill: float | None = None
        self._recorders: list[asyncio.Task] = []

    @property
    def planned(self) -> bool:
        return bool(self.plan.faults.get("kill") or self.plan.faults.get("pause"))

    def watch(self) -> None:
        """Record membership events on every node from now on (false positives count from here)."""
        for index in self.crowd.alive_indexes():
            self._recorders.append(asyncio.get_running_loop().create_task(self._record(index, self.crowd.nodes[index])))

    async def _record(self, index: int, node: Node) -> None:
        local = self.crowd.local_ids()
        async for event in node.events():
            if event.kind != "failed":
                continue
            subject = event.node_id
            if (index, subject) in self.pending:
                self.pending.discard((index, subject))
                self.tally.observe("detect_s", time.monotonic() - self.kill_at[subject])
            elif subject in self.paused_ids:
                self.tally.add("paused_declared_failed")
            elif subject in local and local[subject] not in self.crowd.killed:
                self.tally.add("false_positives")

    async def run(self, start: float) -> None:
        """At ``start + plan.at`` (loop.time()): the kills and the pauses; the pauses end ``--for`` later."""
        if not self.planned:
            return
        loop = asyncio.get_running_loop()
        assert self.plan.at is not None
        await asyncio.sleep(max(0.0, start + self.plan.at - loop.time()))
        candidates = [i for i in self.crowd.alive_indexes() if i != 0]
        chosen = self.crowd.rng.sample(candidates, min(len(candidates),
                                                       self.plan.faults["kill"] + self.plan.faults["pause"]))
        victims, paused = chosen[:self.plan.faults["kill"]], chosen[self.plan.faults["kill"]:]
        await self._kill(victims)
        if paused:
            for i in paused:
                self.paused_ids.add(self.crowd.nodes[i].node_id)
                self.crowd.paused.add(i)
                self.crowd.nodes[i].pause()
            self.tally.add("paused", len(paused))
            self.progress(f"paused {len(paused)} node(s) for {self.plan.pause_for:g} s")
            await asyncio.sleep(self.plan.pause_for)
            for i in paused:
                self.crowd.nodes[i].resume()
                self.crowd.paused.discard(i)
            self.progress(f"resumed {len(paused)} node(s)")

    async def _kill(self, victims: list[int]) -> None:
        if not victims:
            return
        nodes = self.crowd.nodes
        survivors = [i for i in self.crowd.alive_indexes() if i not in victims]
        for v in victims:
            vid = nodes[v].node_id
            for i in survivors:
                membership = nodes[i].membership
                if membership is not None and membership.state_of(vid) is not None:
                    self.pending.add((i, vid))
        self.tally.add("detect_pairs", len(self.pending))
        now = time.monotonic()
        for v in victims:
            self.crowd.kill(v)
            self.kill_at[nodes[v].node_id] = now
        self.last_kill = now
        self.tally.add("killed", len(victims))
        await asyncio.gather(*(nodes[v].close(leave=False) for v in victims))
        self.progress(f"killed {len(victims)} node(s); {len(self.pending)} (holder, victim) pairs to detect")

    async def detected(self) -> None:
        """Wait until every holder detected its victims, or ``--detect-timeout`` after the kill."""
        while self.pending and self.last_kill is not None:
            left = self.last_kill + self.plan.detect_timeout - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(0.1, left))

    async def close(self) -> None:
        for task in self._recorders:
            task.cancel()
        await asyncio.gather(*self._recorders, return_exceptions=True)
