"""One event-loop timer for several sans-IO cores: the shell side of their ``next_timer()``/``tick()``.

A node drives its cores (delivery, routing, membership, DHT, relays) and an agent runtime drives its
task cores the same way: after every batch of work, arm a single loop timer at the earliest deadline
any of them reports, and when it fires, tick them all. Keeping one timer (re-armed only when a
deadline comes earlier than the pending one) costs one ``call_at`` per change of the earliest
deadline instead of one per core per event.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Iterable


class CoreTimer:
    """A loop timer at the earliest of the deadlines it is given, on the cores' clock ``now()``.

    ``fire`` is called (with the timer already cleared) when that deadline is reached; it should tick
    the cores and arm again with their new deadlines.
    """

    __slots__ = ("_now", "_fire", "_handle", "at")

    def __init__(self, now: Callable[[], float], fire: Callable[[], None]):
        self._now = now
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self.at: float | None = None  # the pending deadline, None if nothing is armed

    def arm(self, deadlines: Iterable[float | None]) -> None:
        """Arm at the earliest of ``deadlines`` (None: that core has nothing due), unless the pending
        timer fires no later."""
        at = None
        for t in deadlines:
            if t is not None and (at is None or t < at):
                at = t
        if at is None:
            return
        if self._handle is not None:
            if self.at <= at:
                return
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self.at = at
        self._handle = loop.call_at(loop.time() + max(0.0, at - self._now()), self._due)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self.at = None

    def _due(self) -> None:
        self._handle = None
        self.at = None
        self._fire()
