"""The rumor queue of the membership core: what news goes out on the next messages, and what news was heard.

A rumor is one piece of news about one node, in wire form (``protocols/membership.md`` section 5):
``[ALIVE, incarnation, key, endpoint]``, ``[SUSPECT, node id, incarnation, accusers, named?]`` (``named``:
one accuser's ``[key, endpoint]``, so the suspect can reach it), ``[DEAD, node id, incarnation]`` or
``[LEFT, node id, incarnation]``. News about one node is ordered by its *code* (5.2),
``incarnation * 4 + kind``: a higher code overrides a lower one.

:class:`RumorQueue` keeps

* the rumors to send, at most one per subject (the newest news), in buckets by how many times each was
  sent: a message takes the fewest-sent first, within a byte budget, and a rumor retires after its
  transmit limit (``ceil(retransmit_mult * log10(N + 1))`` sends; a dead rumor fewer, see
  :meth:`RumorQueue.enqueue`). When the queue is full the most-sent rumor makes room. Each bucket is
  an insertion-ordered dict keyed by subject, so taking the newest, evicting the oldest and replacing
  a subject's news are O(1) (after a mass crash a node queues news at every message: lists with
  lazily skipped dead entries made every pick and eviction walk them);
* the dedup memory: the highest code heard per subject we hold (members, tombstones, ourselves; bounded,
  least recently heard forgotten first), and, apart, per *stranger* whose news we relay (a node we do not
  hold): at most ``foreign_limit`` strangers per ``foreign_window`` seconds. A stranger's news past that
  bound is dropped, neither remembered nor queued, and never pushes anything out of the queue. Both
  memories together hold a fixed number of fixed-size entries, so they are bounded in bytes. Before
  this split one LRU memory of 256 subjects served both; a mass crash (20 % of 2,000 nodes) brought news
  of 400 subjects to every node, which forgot and re-learned each of them again and again, and relayed
  it afresh every time: 3.9 M forgets and 4.0 M queue evictions in a 120 s run, and news that never died
  out (``protocols/membership.md`` 5.2);
* the log of recent news (time learned, wire) that answers a sync (anti-entropy).

What the news *means* for a member (suspect it, declare it, revive it) is the state machine's business
(:class:`~zmqagents.core.membership.Membership`); this module only stores and hands out rumors. No IO,
no clock (``now`` is passed in), no randomness.
"""

from __future__ import annotations

from typing import Any

from ..identity import node_id_of
from .membership_config import MembershipConfig

__all__ = ["ALIVE", "SUSPECT", "DEAD", "LEFT", "RumorQueue", "rumor_code", "rumor_size", "suspect_wire", "WIRE_LEN"]

# Rumor kinds, which are also the member states.
ALIVE, SUSPECT, DEAD, LEFT = 0, 1, 2, 3

# How many elements of each kind a node understands, and relays (what follows is dropped, so a relayed rumor
# costs what rumor_size estimates, whatever a peer appended to it).
WIRE_LEN = (4, 5, 3, 3)


def suspect_wire(subject: bytes, inc: int, accusers: list[bytes], named: list[Any] | None) -> list[Any]:
    """A suspect rumor: the accusers' short ids and, if known, one accuser's ``[key, endpoint]``
    (``named``), so the suspect can send its refutation to that accuser even if it does not hold it."""
    wire = [SUSPECT, subject, inc, list(accusers)]
    if named is not None:
        wire.append(named)
    return wire


def rumor_code(wire: list[Any]) -> int:
    """A rumor's precedence (incarnation * 4 + kind), as the dedup memory orders news."""
    code: int = (wire[1] if wire[0] == ALIVE else wire[2]) * 4 + wire[0]
    return code


def rumor_size(wire: list[Any]) -> int:
    """Estimated encoded size of a rumor (msgpack): good enough for a byte budget."""
    kind = wire[0]
    if kind == ALIVE:
        return 42 + len(wire[3])
    if kind == SUSPECT and len(wire) > 3:
        if len(wire) > 4:
            return 77 + 9 * len(wire[3]) + len(wire[4][1])  # the named accuser: key, endpoint
        return 40 + 9 * len(wire[3])
    return 40


class _Rumor:
    __slots__ = ("subject", "code", "wire", "size", "tx", "limit", "stake")

    def __init__(self, subject: bytes, code: int, wire: list[Any], size: int, limit: int):
        self.subject = subject
        self.code = code
        self.wire = wire  # shared, never mutated: a merge builds a new list
        self.size = size
        self.tx = 0  # sends so far: it sits in bucket tx while queued
        self.limit = limit  # sends after which it retires
        self.stake = True  # about a member, a tombstone or us (pushed with gossip_fanout)


class RumorQueue:
    """Rumors to send (fewest-sent first), the dedup memory and the sync log of node ``node_id``.

    ``stats`` is the core's counter dict (``rumors_evicted``, ``rumors_retired``, ``heard_evicted``,
    ``rumors_foreign_dropped``). ``heard`` (subject we hold -> highest code heard, least recently heard
    first) and ``strangers`` (stranger -> highest code heard, oldest first) are read by the core's hot path.
    """

    def __init__(self, node_id: bytes, config: MembershipConfig, stats: dict[str, int]):
        self.node_id = node_id
        self.config = config
        self.stats = stats
        self.limit = config.transmit_limit(1)  # transmissions of a rumor (dead ones: see enqueue)
        self.live = 0  # rumors queued
        self.heard: dict[bytes, int] = {}  # subject held -> highest news code seen (insertion order = LRU)
        self.strangers: dict[bytes, int] = {}  # stranger -> highest news code seen (insertion order = admission)
        self._stranger_at: dict[bytes, float] = {}  # stranger -> when its first news was admitted (oldest first)
        self._dead_skip = max(0, config.gossip_transmits - config.dead_pushes)
        # _buckets[c] holds the rumors sent c times (subject -> rumor), newest last
        self._buckets: list[dict[bytes, _Rumor]] = [{} for _ in range(self.limit)]
        self._by_subject: dict[bytes, _Rumor] = {}
        self._log: list[Any] | None = None  # ring of (time learned, wire) for syncs
        self._log_pos = 0
        self._pinned: list[Any] | None = None
        self._stake = False  # set by pick() when it picked news with a stake

    def resize(self, n: int) -> None:
        """The mesh is estimated at ``n`` nodes: rumors queued from now on go out that many more or fewer times."""
        limit = self.config.transmit_limit(n)
        if limit != self.limit:
            buckets = self._buckets
            if limit > len(buckets):
                buckets.extend({} for _ in range(limit - len(buckets)))
            self.limit = limit

    def pin(self, wire: list[Any]) -> None:
        """Carry ``wire`` first on every message from now on (our own 'left', while we leave)."""
        self._pinned = wire

    # -- the dedup memory ------------------------------------------------------------------------------

    def remember(self, subject: bytes, code: int) -> None:
        """``code`` is the latest news heard about ``subject``."""
        heard = self.heard
        if subject in heard:
            del heard[subject]
        elif len(heard) >= self.config.heard_limit:
            del heard[next(iter(heard))]
            self.stats["heard_evicted"] += 1
        heard[subject] = code

    def admit_stranger(self, subject: bytes, code: int, now: float) -> bool:
        """News (``code``) about ``subject``, a node we do not hold: True if we relay it (it is now
        remembered; the caller queues it), False if it is dropped (counted ``rumors_foreign_dropped``;
        nothing is remembered, so it costs nothing but this call).

        A stranger we relay already takes its newer news. A new one takes a slot of the
        ``foreign_limit`` per ``foreign_window`` (the oldest slot is reused once it is that old), and
        only if the queue has room without evicting: its news is useless to us, while the queue holds
        news about our own members. Relaying strangers' news keeps the epidemic going for the holders
        spread over the mesh; after a mass crash, when every node would relay the news of hundreds of
        deaths, the bound keeps that cost per node fixed, and holders find their dead by their own
        probes (sweeps, ``protocols/membership.md`` 4.3.1)."""
        strangers = self.strangers
        room = self.live < self.config.max_rumors or subject in self._by_subject
        if subject in strangers:
            strangers[subject] = code
        elif room:
            at = self._stranger_at
            if len(at) >= self.config.foreign_limit:
                oldest = next(iter(at), None)
                if oldest is None or at[oldest] > now - self.config.foreign_window:
                    room = False
                else:
                    del at[oldest]
                    del strangers[oldest]
            if room:
                strangers[subject] = code
                at[subject] = now
        if not room:
            self.stats["rumors_foreign_dropped"] += 1
        return room

    def strangers_full(self, now: float) -> bool:
        """Whether foreign_limit strangers' news was admitted within the last foreign_window: news of that
        many other nodes in so short a time means many are failing at once."""
        at = self._stranger_at
        limit = self.config.foreign_limit
        return limit > 0 and len(at) >= limit and at[next(iter(at))] > now - self.config.foreign_window

    def code_of(self, subject: bytes) -> int:
        """The highest news code remembered about ``subject`` (held or stranger), -1 if none."""
        code = self.heard.get(subject, -1)
        other = self.strangers.get(subject, -1)
        return code if code >= other else other

    # -- the queue -------------------------------------------------------------------------------------

    def wire_of(self, subject: bytes, code: int | None = None) -> list[Any] | None:
        """The rumor queued about ``subject`` (only if its code is ``code``, when given), or None."""
        e = self._by_subject.get(subject)
        if e is None or (code is not None and e.code != code):
            return None
        return e.wire

    def enqueue(self, subject: bytes, code: int, wire: list[Any], size: int, now: float, stake: bool) -> bool:
        """Queue news about ``subject``; ``stake``: it is about a member, a tombstone or us (pushed wider).

        The same news (same code) replaces the queued wire and keeps its count (a merge: more accusers);
        older news than what is queued is ignored. A dead rumor starts past all but ``dead_pushes`` of the
        push rounds and goes half as many times: holders mostly conclude on their own timers, it is for
        the stragglers. Returns True if the rumor was queued as new news (the caller arms its push round).
        """
        by_subject = self._by_subject
        old = by_subject.get(subject)
        if old is not None:
            if old.code > code:
                return False
            if old.code == code:
                old.wire = wire  # a merge (more accusers): same news, keep its count
                old.size = size
                return False
            del self._buckets[old.tx][subject]
            self.live -= 1
        elif self.live >= self.config.max_rumors:
            self._evict()
        e = _Rumor(subject, code, wire, size, self.limit)
        e.stake = stake
        if code & 3 == DEAD:
            c = self._dead_skip  # starting past the first pushes: only dead_pushes of them
            lim = c + (self.limit + 1) // 2
            nb = len(self._buckets)
            if lim > nb:
                lim = nb
            if c >= lim:
                c = lim - 1
            e.limit = lim
            e.tx = c
            self._buckets[c][subject] = e
        else:
            self._buckets[0][subject] = e
        by_subject[subject] = e
        self.live += 1
        log = self._log
        if log is None:
            log = self._log = []
        if len(log) < self.config.sync_rumors:
            log.append((now, wire))
        else:
            log[self._log_pos] = (now, wire)
            self._log_pos = (self._log_pos + 1) % len(log)
        return True

    def merge(self, subject: bytes, code: int, wire: list[Any]) -> bool:
        """Replace the wire of the rumor queued about ``subject`` at ``code`` (the same news, grown: more
        accusers), keeping its count. False if no such rumor is queued."""
        e = self._by_subject.get(subject)
        if e is None or e.code != code:
            return False
        e.wire = wire
        e.size = rumor_size(wire)
        return True

    def rewind(self, subject: bytes, tx: int) -> bool:
        """Send the rumor queued about ``subject`` again as if it had gone ``tx`` times, if it went more
        often than that. True if it was put back (the caller arms its push round)."""
        e = self._by_subject.get(subject)
        if e is None or e.tx <= tx:
            return False
        del self._buckets[e.tx][subject]
        e.tx = tx
        self._buckets[tx][subject] = e
        return True

    def _evict(self) -> None:
        """Make room: drop the rumor sent most often (it has spread furthest)."""
        for bucket in reversed(self._buckets):
            if bucket:
                subject = next(iter(bucket))  # the oldest of the most-sent
                del bucket[subject]
                del self._by_subject[subject]
                self.live -= 1
                self.stats["rumors_evicted"] += 1
                return

    def has_fresh(self) -> bool:
        """Whether some live rumor has been sent fewer than gossip_transmits times."""
        buckets = self._buckets
        for c in range(min(len(buckets), self.config.gossip_transmits)):
            if buckets[c]:
                return True
        return False

    def pick(self, budget: int, dst: bytes | None, max_tx: int = 1 << 30) -> list[Any] | None:
        """Rumors for one message to ``dst``, counted as sent: the pinned one, news about ``dst`` itself,
        then fewest-sent first (only those sent fewer than ``max_tx`` times), within ``budget`` bytes and
        ``max_rumors_per_message``. None if there is nothing."""
        out = None
        pinned = self._pinned
        if pinned is not None:
            out = [pinned]
            budget -= 40
        if not self.live:
            return out
        by_subject = self._by_subject
        buddy = by_subject.get(dst) if dst is not None else None
        if buddy is not None and buddy.subject != self.node_id:
            if out is None:
                out = [buddy.wire]
            else:
                out.append(buddy.wire)
            budget -= buddy.size
        cap = self.config.max_rumors_per_message
        buckets = self._buckets
        moved = None
        c = 0
        nb = len(buckets) if len(buckets) < max_tx else max_tx
        while c < nb and budget > 0:
            bucket = buckets[c]
            while bucket:
                subject, e = bucket.popitem()  # the newest
                if e is not buddy and (e.size > budget or (out is not None and len(out) >= cap)):
                    bucket[subject] = e  # back where it was (it was the newest)
                    budget = 0
                    break
                if e is not buddy and e.wire is not pinned:
                    if out is None:
                        out = [e.wire]
                    else:
                        out.append(e.wire)
                    budget -= e.size
                    if e.stake:
                        self._stake = True
                e.tx = c + 1
                if c + 1 >= e.limit:
                    self.live -= 1
                    del by_subject[subject]
                    self.stats["rumors_retired"] += 1
                elif moved is None:
                    moved = [e]
                else:
                    moved.append(e)
            c += 1
        if moved is not None:
            for e in moved:
                buckets[e.tx][e.subject] = e
        return out

    def pick_push(self, budget: int, max_tx: int) -> tuple[list[Any] | None, bool]:
        """:meth:`pick` for a push round (no destination), and whether it took news we have a stake in."""
        self._stake = False
        out = self.pick(budget, None, max_tx)
        return out, self._stake

    # -- the sync log ----------------------------------------------------------------------------------

    def recent(self, since: float) -> dict[bytes, list[Any]]:
        """The newest news per subject among the rumors queued at or after ``since`` (subject -> wire)."""
        news: dict[bytes, list[Any]] = {}
        log = self._log
        if log:
            for t, wire in log:
                if t >= since:
                    subject = wire[1] if wire[0] != ALIVE else node_id_of(wire[2])
                    old = news.get(subject)
                    if old is None or rumor_code(wire) > rumor_code(old):
                        news[subject] = wire
        return news
