"""Faults injected into a simulated node: the pause (a stalled process).

Crashes, loss and partitions are the engine's (``Simulator.crash``, ``Network``); a pause is not,
since a paused node keeps its state and resumes: it wraps the node's core instead. The membership,
overlay and DHT runs all wrap their paused nodes in :class:`Paused`, so a pause means the same in
each and the detectors are judged against the same stall.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Core, Simulator


class Paused:
    """Wraps a core so the node is stalled ``duty`` of each ``period`` during [start, end).

    While stalled it reads nothing (arrivals are queued) and fires no timers; on waking it reads the
    backlog and then fires what is overdue (or the other way round with ``timers_first``), like a
    process resumed after SIGSTOP or a long GC pause. ``phase`` (in [0, period)) shifts the node's
    cycle, so that the paused nodes do not all stall and wake in step.
    """

    __slots__ = ("inner", "sim", "start", "end", "period", "pause", "phase", "buf", "timers_first")

    def __init__(self, inner: Core, sim: Simulator, start: float, end: float, period: float, duty: float,
                 phase: float, timers_first: bool):
        self.inner = inner
        self.sim = sim
        self.start = start
        self.end = end
        self.period = period
        self.pause = duty * period
        self.phase = phase
        self.buf: list = []
        self.timers_first = timers_first

    def _resume_at(self, t: float) -> float | None:
        """When the pause containing ``t`` ends, or None if the node runs at ``t``."""
        if t < self.start or t >= self.end:
            return None
        base = self.start - self.phase
        c0 = base + math.floor((t - base) / self.period) * self.period  # this cycle's start
        if t - c0 < self.pause - 1e-9:  # the epsilon: at the resume instant itself the node runs
            r = c0 + self.pause
            return r if r < self.end else self.end
        return None

    def receive(self, env, now):
        if self._resume_at(now) is not None:
            self.buf.append(env)
            return
        if self.buf:
            self._drain(now)
        self.inner.receive(env, now)

    def _drain(self, now):
        buf = self.buf
        self.buf = []
        for env in buf:
            self.inner.receive(env, now)

    def tick(self, now):
        if self._resume_at(now) is not None:
            return
        if self.timers_first:
            self.inner.tick(now)
            if self.buf:
                self._drain(now)
        else:
            if self.buf:
                self._drain(now)
            self.inner.tick(now)

    def next_timer(self):
        now = self.sim.now
        t = self.inner.next_timer()
        if self.buf:
            r = self._resume_at(now)
            wake = now if r is None else r
            if t is None or wake < t:
                t = wake
        if t is None:
            return None
        if t < now:
            t = now  # overdue: it fires as soon as the node runs
        r = self._resume_at(t)
        return t if r is None else r

    def take_outgoing(self):
        return self.inner.take_outgoing()

    def take_events(self):
        return self.inner.take_events()
