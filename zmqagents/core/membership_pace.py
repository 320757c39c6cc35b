"""Pacing inbound probes: a member that many nodes probe asks them, in its acks, to probe it less often.

SWIM spreads probing evenly when views are symmetric: every node probes one member per period, so a member
is probed about once per period in aggregate. Partial views break that. A node that many peers know as
their only member (a hub that leaves, sidecars or short-lived clients attach to) is probed by each of them
every period: N pings per period, and with 100 such peers ~3 % of a CPU on the reference machine spent
answering them (``bench/footprint.py``). memberlist has no such rule: with its full views every member is
probed once per ProbeInterval on average, and its Lifeguard awareness stretches only a node's own probe
interval when that node is unhealthy, never the rate at which others probe it.

So the probed node counts the distinct nodes that pinged it recently. While more than ``probe_budget``
did, each of its acks to a periodic probe carries a *pace* p = ceil(probers / budget) (at most
``max_pace``): "probe me at most once every p periods". A prober then leaves that member out of its
round-robin for p - 1 periods after the ack. Only probers that would come back sooner notice: a node
with m members probes each one every m periods anyway, so in a mesh (m in the tens) nothing changes,
while a node whose only member is the hub probes it every p periods instead of every period. The count
is of distinct probers over ``2 * max_pace`` periods, not of pings, so it does not fall when they slow
down (no oscillation). The cost: a prober learns of a paced member's death up to p periods later.
Rules and measurements: ``protocols/membership.md`` 4.5.
"""

from __future__ import annotations

import math

__all__ = ["InboundPace"]


class InboundPace:
    """Who pinged this node lately, and the pace to ask of them (0: none)."""

    __slots__ = ("budget", "max_pace", "max_probers", "_seen", "_window")

    def __init__(self, budget: int, max_pace: int, period: float, max_probers: int = 4096):
        self.budget = budget  # distinct probers per window answered without pacing (0: never pace)
        self.max_pace = max_pace
        self.max_probers = max_probers  # a bound, not a size: past it the count saturates
        self._seen: dict[bytes, float] = {}  # prober -> last ping (insertion order = oldest first)
        self._window = 2 * max_pace * period

    def heard(self, src: bytes, now: float) -> None:
        """A periodic ping from ``src`` arrived."""
        if not self.budget:
            return
        seen = self._seen
        if src in seen:
            del seen[src]  # re-insert: the dict stays ordered by last ping
        elif len(seen) >= self.max_probers:
            del seen[next(iter(seen))]
        seen[src] = now

    def pace(self, now: float) -> int:
        """The pace to put in our acks now: 0 while at most ``budget`` distinct nodes pinged us within the
        window, else ceil(probers / budget) capped at ``max_pace``."""
        if not self.budget:
            return 0
        seen = self._seen
        horizon = now - self._window
        while seen:
            first = next(iter(seen))
            if seen[first] >= horizon:
                break
            del seen[first]
        n = len(seen)
        if n <= self.budget:
            return 0
        return min(self.max_pace, math.ceil(n / self.budget))

    def __len__(self) -> int:
        return len(self._seen)
