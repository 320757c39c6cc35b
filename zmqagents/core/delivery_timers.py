"""The delivery core's timers: a hashed wheel of ``timer_granularity`` slots.

Arming a timer is a list append, cancelling one clears its slot number (the stale entry is skipped
when its slot fires) and decrements the slot's live count. A slot left with only cancelled timers
never wakes the driver, and its entries are freed at once rather than when its time comes (an
answered request would otherwise stay referenced for its whole timeout). Per-message timer work is
O(1) with no heap operation per message: the heap holds each slot number once.

An entry is either a pending message (a list whose item ``SLOT`` is its slot) or an object with a
``slot`` attribute (a request's deadline, a peer's delayed ack, its stall watchdog); slot 0 means not
armed. What a timer does when it fires is the core's business (:meth:`Delivery.tick`).
"""

from __future__ import annotations

import heapq
from typing import Any, Iterator

from .delivery_streams import SLOT, Peer, PendingRequest, Watch


class TimerWheel:
    """The wheel, as a base class of the delivery core (its hot path arms slots inline)."""

    def __init__(self, granularity: float):
        # slot -> timer entries armed in it (some maybe cancelled); every key is in _slots exactly once
        self._wheel: dict[int, list[Any]] = {}
        self._live: dict[int, int] = {}  # slot -> entries in it still armed; a slot not in here is dead
        self._slots: list[int] = []  # heap of the wheel's slot numbers
        self._fired = 0  # the last slot fired: nothing is ever armed at or before it
        self._g = granularity
        self._inv_g = 1.0 / granularity

    def next_timer(self) -> float | None:
        """When tick() must next run (the end of the earliest slot with a live timer), or None."""
        slots = self._slots
        live = self._live
        while slots and slots[0] not in live:
            del self._wheel[heapq.heappop(slots)]
        return slots[0] * self._g if slots else None

    def _due(self, now: float) -> Iterator[Any]:
        """Disarm and yield, in slot order, every live timer entry due by ``now``. Entries armed while
        the caller handles one are yielded too if they are due by ``now`` (never in a slot already fired)."""
        slots = self._slots
        wheel = self._wheel
        live = self._live
        g = self._g
        while slots and slots[0] * g <= now:
            k = heapq.heappop(slots)
            entries = wheel.pop(k)
            if live.pop(k, None) is None:
                continue  # every timer in it was cancelled
            self._fired = k
            for e in entries:
                if type(e) is list:
                    if e[SLOT] == k:
                        e[SLOT] = 0
                        yield e
                elif e.slot == k:
                    e.slot = 0
                    yield e

    def _arm(self, entry: PendingRequest | Peer | Watch, t: float) -> None:
        """(Re)arm an object timer entry to fire at ``t``."""
        if entry.slot:
            self._disarm(entry.slot)
        entry.slot = self._arm_slot(entry, t)

    def _cancel(self, entry: PendingRequest | Peer | Watch) -> None:
        if entry.slot:
            self._disarm(entry.slot)
            entry.slot = 0

    def _arm_slot(self, entry: Any, t: float) -> int:
        """Put ``entry`` in the wheel slot ending just after ``t`` (it fires at most one granularity late)."""
        k = int(t * self._inv_g) + 1
        if k <= self._fired:
            k = self._fired + 1
        lst = self._wheel.get(k)
        if lst is None:
            self._wheel[k] = [entry]
            self._live[k] = 1
            heapq.heappush(self._slots, k)
        else:
            lst.append(entry)
            self._live[k] = self._live.get(k, 0) + 1
        return k

    def _disarm(self, k: int) -> None:
        """One timer armed in slot ``k`` was cancelled or moved."""
        n = self._live.get(k)
        if n is not None:
            if n > 1:
                self._live[k] = n - 1
            else:
                del self._live[k]
                self._wheel[k].clear()  # free the cancelled entries now; the slot stays registered
