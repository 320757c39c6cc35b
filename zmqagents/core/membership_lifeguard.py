"""Lifeguard's two measures of health for the membership core: of a suspected member, and of ourselves.

Dadgar, Phillips, Currey, "Lifeguard: Local Health Awareness for More Accurate Failure Detection" (2018,
arXiv:1707.00788); ``protocols/membership.md`` sections 6.2 (suspicion timeout) and 8 (local health) have
the rules as this mesh applies them.

* **Suspicion** (:class:`Suspicion`, :class:`SuspicionTimeouts`): a suspected member gets a timeout
  that starts at ``suspicion_max`` and shrinks towards ``suspicion_min`` as independent accusers confirm
  it (their short ids travel in the suspect rumor): with ``c`` confirmations out of the ``K`` that reach
  the minimum, ``max(min, max - (max - min) * log(c + 1) / log(K + 1))``. The timeout runs from when the
  suspicion began, and is not stretched by the local health: stalls are handled by the stall guard.
* **Local health** (:class:`LocalHealth`): a saturating counter (0..``lhm_max``) of evidence that we are
  the slow one; the probe interval and timeout are multiplied by ``1 + value``.

What a suspicion *does* to a member (suspect, clear, declare) is the state machine's business
(:class:`~zmqagents.core.membership.Membership`); here are the records and the arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

from .membership_config import MembershipConfig
from .membership_rumors import SUSPECT

__all__ = ["LocalHealth", "Suspicion", "SuspicionTimeouts"]

INF = float("inf")


class Suspicion:
    """One suspicion of member ``rec`` (the state machine's member record) at incarnation ``inc``."""

    __slots__ = ("rec", "inc", "start", "accusers", "named", "verified", "final", "expired", "due")

    def __init__(self, rec: Any, inc: int, start: float):
        self.rec = rec
        self.inc = inc
        self.start = start
        self.accusers: list[bytes] = []  # short ids, at most K + 1 (the confirmations that count, plus one)
        self.named: list[Any] | None = None  # the accuser our rumor names, [key, endpoint]: the latest to accuse
        self.verified = False  # our own probe of it failed during this suspicion
        self.final = SUSPECT  # DEAD or LEFT once such a rumor was heard: declared as soon as verified
        self.expired = False  # the timeout ran out before our own probe: declare on its failure
        self.due = INF  # when the timeout runs out (INF: not armed)


class SuspicionTimeouts:
    """The timeout of a suspicion by its number of accusers, and how accusers are added."""

    def __init__(self, config: MembershipConfig):
        k = max(1, config.suspicion_confirmations)
        self.k = k  # confirmations after which the timeout is at its minimum (Lifeguard's K)
        lo, hi = config.suspicion_min, config.suspicion_max
        self._table = [max(lo, hi - (hi - lo) * math.log(c + 1) / math.log(k + 1)) for c in range(k + 1)]

    def due(self, s: Suspicion, now: float) -> float:
        """When ``s`` runs out, given its accusers so far (never before ``now``)."""
        c = len(s.accusers) - 1
        table = self._table
        timeout = table[c if 0 <= c < len(table) else (0 if c < 0 else -1)]
        due = s.start + timeout
        return now if due < now else due

    def add_accusers(self, s: Suspicion, accusers: Any) -> bool:
        """Add accusers (one short id, or a list of them) not yet listed, up to K + 1; True if any was."""
        acc = s.accusers
        grew = False
        for a in ((accusers,) if type(accusers) is bytes else accusers):
            if len(acc) > self.k:
                break
            if a not in acc:
                acc.append(a)
                grew = True
        return grew

    def accuse(self, s: Suspicion, short: bytes) -> None:
        """Our own probe failed: list us (``short``) among the accusers, in the last place if the list is full."""
        acc = s.accusers
        if short not in acc:
            if len(acc) > self.k:
                acc.pop()
            acc.append(short)


class LocalHealth:
    """Lifeguard's local health multiplier (LHM): 0 (healthy) .. ``limit``."""

    __slots__ = ("value", "limit")

    def __init__(self, limit: int):
        self.value = 0
        self.limit = limit

    def add(self, delta: int) -> None:
        """Up by ``delta`` (a failed probe nobody nacked, a refutation, a stall) or down (an acked probe)."""
        v = self.value + delta
        self.value = 0 if v < 0 else self.limit if v > self.limit else v

    def scaled(self, value: float) -> float:
        """A probe interval or timeout stretched by our health: ``value * (1 + LHM)``."""
        return value * (1 + self.value)
