"""Iterative Kademlia node lookup (FIND_NODE) as a pure state machine.

No IO, no clock, no randomness: the caller sends the queries this object asks
for, reports what came back (or did not), and passes the current time. The
wire protocol around it (envelopes, RPC ids, hard timeouts) lives in
:class:`zmqagents.core.routing.RoutingCore`; the rules are written down in
``protocols/routing.md``.

Use::

    lk = Lookup(target, table.closest(target, 20), self_id=my_id, late_after=0.3)
    for c in lk.next_queries(now):          # up to ``alpha`` Contacts to send FIND_NODE to
        send(c, now)
    ...
    lk.on_response(node_id, contacts, now)   # a peer answered (contacts as received)
    lk.on_timeout(node_id, now)              # the hard timeout of a query fired, or it failed
    for c in lk.next_queries(now): ...       # after every event, and when now >= lk.next_timer()
    lk.late_after = current_rto              # optional: the caller's RTT estimate may change meanwhile
    if lk.done:
        lk.result()                          # the k closest that answered, closest first

Candidates are kept sorted by XOR distance to the target. Each is *fresh*
(never asked), *waiting* (asked, no answer yet), *answered*, or *failed* (the
caller reported a hard timeout or an unusable answer). A waiting query is
*late* once it has been silent for longer than the late limit ``L``:

    L = late_after                                  before anything answered
    L = min(late_after, max(late_min, late_factor * slowest RTT answered so far))

* **Parallelism.** A query is sent only while fewer than ``alpha`` are waited
  for (waiting and not late). A late
  query frees its slot at once and leaves the termination window, but it is
  not failed: its answer is used if it comes before the end. Lateness is
  judged afresh at every step, so if slower answers later raise ``L``, a
  query that turned late early is waited for again, up to the new ``L`` (so
  more than ``alpha`` may briefly be waited for; nothing new is sent then).
  This is what keeps a dead peer from holding a lookup up: once others have
  answered, it costs at most ``late_factor`` times the slowest RTT seen in
  this very lookup (or the caller's ``late_after``, from measured RTTs, if
  smaller), never the hard timeout.
* **Termination.** The *window* is the ``k`` closest candidates that are
  neither failed nor late. The lookup is done as soon as every candidate in
  the window has answered (``ok`` is then True), or when nothing more may be
  asked and nothing is waited for (every candidate failed, or the
  ``max_queries`` budget is spent: ``ok`` False). Once anyone has answered it
  never waits for a late peer, nor for anything outside the window; while
  nobody has answered and only late queries remain, they are all there is,
  so it waits for their answers or hard timeouts. A late peer's answer that
  comes after the end is ignored: the result is final once ``done``.
* **Bounds.** At most ``max_per_response`` contacts are read from one answer
  (the rest is counted and ignored), at most ``max_candidates`` candidates are
  kept (the farthest never-asked one makes room, or the newcomer is dropped)
  and at most ``max_queries`` queries are sent. A contact with a malformed
  field, our own id, or one already listed in the same answer is counted and
  skipped. Nothing a peer sends can raise.
* **Finding one node.** With ``stop_at_target`` the lookup is done, ``ok``, as
  soon as the target itself answers (its answer proves it is reachable
  through the mesh); the result holds what answered so far, the target
  included. While the target itself is waited for (asked, not late), nothing
  else is asked: its answer ends the lookup, so any other query would be
  wasted (a target in the table is found with one query, one listed by the
  first answers with one more). Without it, a lookup for a node's own id
  still waits for the k closest, as a lookup of any id does.
* **Dials.** A lookup may be given ``linked`` (node id -> whether a connection
  to that node is already open, so asking it costs no new CURVE handshake)
  and ``max_dials``: then at most ``max_dials`` candidates that are not
  linked are asked. Once that budget is spent, a fresh candidate that is not
  linked is *skipped* when its turn comes: never asked, out of the window
  like a failed one. A join's bucket refreshes use it (``routing.py``), the
  lookups that must reach the k closest never do.
* **Referrers.** Each candidate learned from an answer remembers the peer whose answer listed it first
  (:meth:`referrer`): that peer holds it in its table, so a query may be forwarded through it rather
  than opening a connection (``protocols/routing.md`` 5.6, decided by the caller). A forwarded answer
  names the node's endpoint in its own signed words, which replaces the listed one (``on_response``).
* **Hops.** The contacts we start from are hop 1; a contact first learned
  from an answer of a hop-h peer is hop h+1. ``rounds`` is the deepest hop
  that answered, ``hops`` the hop of the closest peer that answered.

Contacts may be given as :class:`~zmqagents.identity.Contact`, as routing
table entries (anything with ``public_key`` and ``endpoint`` attributes), or
in wire form ``[public_key, endpoint, ...]``. Node ids are always derived
from the key (``sha256(public_key)``), never taken from a peer.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Iterable

from ..identity import Contact, node_id_of
from ..errors import InvalidArgument

NODE_ID_LEN = 32
PUBLIC_KEY_LEN = 32
MAX_ENDPOINT_LEN = 255  # bytes of a DNS name plus scheme and port fit; anything longer is garbage

# Candidate states ("late" is a waiting candidate past the late limit, see state_of()). SKIPPED: never
# asked because it was not linked once the dial budget was spent (settled, out of the window, like FAILED).
FRESH, WAITING, ANSWERED, FAILED, SKIPPED = 0, 1, 2, 3, 4
_STATE_NAMES = ("fresh", "waiting", "answered", "failed", "skipped")

# A candidate is a plain list (allocated per contact learned; cheaper than an object):
# [distance to target (int), node id, public key, endpoint, state, hop, late now (bool), sent at, last answer mark,
#  referrer: the node id of the first peer whose answer listed it (None for a starting contact)]
_D, _NID, _PK, _EP, _ST, _HOP, _LATE, _SENT, _MARK, _VIA = range(10)


LOOKUP_STAT_KEYS = (
    "contacts_accepted",  # new candidates taken from answers
    "contacts_known",  # already a candidate (normal: answers overlap)
    "contacts_bad",  # malformed: wrong types, key not 32 bytes, endpoint empty or too long
    "contacts_self",  # our own id (normal when a peer does not exclude the asker)
    "contacts_duplicate",  # listed twice in one answer
    "contacts_truncated",  # answers that listed more than max_per_response contacts
    "candidates_dropped",  # the max_candidates bound refused or evicted a candidate
    "responses_unexpected",  # an answer from a peer we did not ask (or asked and already settled)
    "responses_malformed",  # the contact list was not a list
    "candidates_unlinked_skipped",  # not asked: no open connection to it and the lookup's dial budget was spent
)


def contact_fields(c: Any) -> tuple[bytes, str] | None:
    """``(public_key, endpoint)`` of a contact in any accepted form, or None if a field is malformed.

    Accepted forms: a wire list/tuple ``[public_key, endpoint, ...]`` (extra items are ignored, for
    forward compatibility), or an object with ``public_key`` and ``endpoint`` attributes.
    """
    t = type(c)
    if t is list or t is tuple:
        if len(c) < 2:
            return None
        pk = c[0]
        ep = c[1]
    else:
        pk = getattr(c, "public_key", None)
        ep = getattr(c, "endpoint", None)
    if type(pk) is not bytes or len(pk) != PUBLIC_KEY_LEN:
        return None
    if type(ep) is not str or not ep or len(ep) > MAX_ENDPOINT_LEN:
        return None
    return pk, ep


class Lookup:
    """One iterative FIND_NODE lookup for ``target``. See the module docstring for the rules."""

    __slots__ = (
        "target", "k", "alpha", "self_id", "late_after", "late_factor", "late_min", "max_candidates",
        "max_queries", "max_per_response", "stats", "done", "ok", "queries", "responses", "failures", "late",
        "rounds", "started", "finished", "max_rtt", "stop_at_target", "linked", "max_dials", "dials",
        "_t", "_sorted", "_dists", "_by_id", "_by_pk", "_waiting", "_outbox", "_serial",
    )

    def __init__(self, target: bytes, contacts: Iterable[Any], *, k: int = 20, alpha: int = 3,
                 self_id: bytes | None = None, late_after: float = 1.0, late_factor: float = 3.0,
                 late_min: float = 0.0, max_candidates: int | None = None, max_queries: int | None = None,
                 max_per_response: int | None = None, stats: dict[Any, Any] | None = None, stop_at_target: bool = False,
                 linked: Callable[[bytes], bool] | None = None, max_dials: int | None = None):
        if type(target) is not bytes or len(target) != NODE_ID_LEN:
            raise InvalidArgument(f"lookup target must be {NODE_ID_LEN} bytes")
        if k < 1 or alpha < 1:
            raise InvalidArgument("k and alpha must be at least 1")
        self.target = target
        self.k = k
        self.alpha = alpha
        self.self_id = self_id
        self.late_after = late_after  # the late limit before any answer, and its ceiling (s); may be updated
        self.late_factor = late_factor  # ... otherwise this many times the slowest RTT answered so far
        self.late_min = late_min  # ... but never less than this (s)
        self.max_per_response = k if max_per_response is None else max_per_response
        self.max_queries = 10 * k if max_queries is None else max_queries
        # Answered/waiting/late/failed candidates are never evicted, and there are at most max_queries of
        # them; the rest of the room holds never-asked (fresh or skipped) candidates, of which the closest matter.
        self.max_candidates = self.max_queries + 2 * k if max_candidates is None else max(max_candidates, k)
        self.stats = stats if stats is not None else dict.fromkeys(LOOKUP_STAT_KEYS, 0)
        self.done = False
        self.ok = False
        self.queries = 0
        self.responses = 0
        self.failures = 0  # hard timeouts and failures reported by the caller
        self.late = 0  # times a query turned late (stopped being waited for)
        self.rounds = 0
        self.started: float | None = None
        self.finished: float | None = None
        self.max_rtt: float | None = None  # slowest answer so far (s)
        # Finding one node rather than the k closest to an id: done (ok) as soon as the target itself
        # answers, which proves it is reachable through the mesh; the k closest are not waited for.
        self.stop_at_target = stop_at_target
        # Asking a node we hold no connection to costs a CURVE handshake on both ends (~2 ms of CPU each):
        # with both set, at most max_dials such nodes are asked (see "Dials" in the module doc).
        if (linked is None) != (max_dials is None) or (max_dials is not None and max_dials < 0):
            raise InvalidArgument("linked and max_dials go together, and max_dials must not be negative")
        self.linked = linked
        self.max_dials = max_dials
        self.dials = 0  # candidates asked that were not linked
        self._t = int.from_bytes(target, "big")
        self._sorted: list[list[Any]] = []  # candidates, closest first
        self._dists: list[int] = []  # their distances (parallel to _sorted, for bisect)
        self._by_id: dict[bytes, list[Any]] = {}
        self._by_pk: dict[bytes, list[Any]] = {}  # the same candidates by key: duplicates skip hashing
        self._waiting: list[list[Any]] = []  # candidates in state WAITING (late ones included), in asking order
        self._outbox: list[list[Any]] = []  # chosen to be asked, not yet handed out by next_queries
        self._serial = 0  # answers processed; marks candidates seen in the current answer
        for c in contacts:
            f = contact_fields(c)
            if f is None:
                self.stats["contacts_bad"] += 1
                continue
            self._add(f[0], f[1], 1)

    # -- driving -------------------------------------------------------------------------

    def next_queries(self, now: float) -> list[Contact]:
        """Give up waiting on overdue queries, then return the peers to ask now (mark them asked).

        Call after creating the lookup, after every on_response/on_timeout, and whenever ``now`` reaches
        :meth:`next_timer`. Updates ``done``.
        """
        if not self.done:
            if self.started is None:
                self.started = now
                self._advance(now)
            else:
                t = self.next_timer()
                if t is not None and t <= now:
                    self._advance(now)  # (on_response and on_timeout advance by themselves)
        out = self._outbox
        if not out:
            return []
        self._outbox = []
        return [Contact(rec[_PK], rec[_EP]) for rec in out]

    def next_timer(self) -> float | None:
        """When the next waiting query turns late (call next_queries then), or None."""
        if self.done or not self._waiting:
            return None
        t = None
        for rec in self._waiting:
            if not rec[_LATE]:
                t = rec[_SENT]
                break  # _waiting is in asking order: the first one not late is the oldest
        return None if t is None else t + self.late_limit()

    def late_limit(self) -> float:
        """L: how long a query may stay silent before it stops being waited for (see the module doc)."""
        r = self.max_rtt
        if r is None:
            return self.late_after
        r *= self.late_factor
        if r < self.late_min:
            r = self.late_min
        return r if r < self.late_after else self.late_after

    def on_response(self, node_id: bytes, contacts: Any, now: float, endpoint: str | None = None) -> bool:
        """``node_id`` answered with ``contacts`` (a list in any accepted form; validated here).

        ``endpoint``: the endpoint the node named for itself in a signed answer that came through other
        nodes (``protocols/routing.md`` 5.6); it replaces the endpoint the candidate was listed with, so
        :meth:`result` holds what the node said, not what a lister said. The caller validates it.

        Late answers are used as long as the lookup is not done; once it is done, nothing changes (the
        result is final) and False is returned. Returns False, and counts it, for an answer from a peer
        that was not asked or was already settled.
        """
        if self.done:
            return False
        rec = self._by_id.get(node_id)
        if rec is None or rec[_ST] != WAITING:
            self.stats["responses_unexpected"] += 1
            return False
        self._waiting.remove(rec)
        rec[_ST] = ANSWERED
        self.responses += 1
        rtt = now - rec[_SENT]
        if self.max_rtt is None or rtt > self.max_rtt:
            self.max_rtt = rtt
        hop = rec[_HOP]
        if hop > self.rounds:
            self.rounds = hop
        if endpoint is not None:
            rec[_EP] = endpoint  # the node's own signed word (a forwarded answer), not the lister's
        if type(contacts) is list or type(contacts) is tuple:
            self._merge(contacts, hop + 1, node_id)
        else:
            self.stats["responses_malformed"] += 1
        if self.stop_at_target and rec[_D] == 0:
            self._finish(now, ok=True)
            return True
        self._advance(now)
        return True

    def on_timeout(self, node_id: bytes, now: float) -> bool:
        """The query to ``node_id`` failed for good (hard timeout, unreachable, garbage answer).
        False if it was not waited on (not asked, already settled) or the lookup is done."""
        if self.done:
            return False
        rec = self._by_id.get(node_id)
        if rec is None or rec[_ST] != WAITING:
            return False
        self._waiting.remove(rec)
        rec[_ST] = FAILED
        self.failures += 1
        self._advance(now)
        return True

    on_failure = on_timeout

    # -- results ---------------------------------------------------------------------------

    def result(self) -> list[Contact]:
        """The (up to) k closest candidates that answered, closest first."""
        return [Contact(rec[_PK], rec[_EP]) for rec in self._answered()]

    def result_ids(self) -> list[bytes]:
        return [rec[_NID] for rec in self._answered()]

    @property
    def hops(self) -> int:
        """Hop count of the closest peer that answered (0 if none did)."""
        for rec in self._sorted:
            if rec[_ST] == ANSWERED:
                hop: int = rec[_HOP]
                return hop
        return 0

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def waiting(self) -> int:
        """Queries waited for (not late) as of the last step."""
        return sum(1 for rec in self._waiting if not rec[_LATE])

    def state_of(self, node_id: bytes) -> str | None:
        """"fresh", "waiting", "late" (waiting, past the late limit at the last step), "answered",
        "failed", "skipped" (not linked once the dial budget was spent), or None if not a candidate."""
        rec = self._by_id.get(node_id)
        if rec is None:
            return None
        return "late" if rec[_ST] == WAITING and rec[_LATE] else _STATE_NAMES[rec[_ST]]

    def referrer(self, node_id: bytes) -> bytes | None:
        """The node id of the first peer whose answer listed ``node_id`` (None for a starting contact or
        a node that is not a candidate): the node known to hold it in its table, through which a query
        may be forwarded rather than dialled (``protocols/routing.md`` 5.6)."""
        rec = self._by_id.get(node_id)
        return None if rec is None else rec[_VIA]

    def __len__(self) -> int:
        """Candidates held (bounded by max_candidates)."""
        return len(self._sorted)

    def __repr__(self) -> str:
        return (f"Lookup({self.target.hex()[:12]}, candidates={len(self._sorted)}, queries={self.queries}, "
                f"answered={self.responses}, done={self.done}, ok={self.ok})")

    # -- internals -----------------------------------------------------------------------------

    def _answered(self) -> list[list[Any]]:
        out = []
        k = self.k
        for rec in self._sorted:
            if rec[_ST] == ANSWERED:
                out.append(rec)
                if len(out) >= k:
                    break
        return out

    def _add(self, pk: bytes, ep: str, hop: int, via: bytes | None = None) -> list[Any] | None:
        """Insert a new candidate (validated fields) unless it is us, known, or the bound refuses it."""
        nid = node_id_of(pk)
        if nid == self.self_id:
            self.stats["contacts_self"] += 1
            return None
        rec = self._by_id.get(nid)
        if rec is not None:
            return rec
        d = int.from_bytes(nid, "big") ^ self._t
        s = self._sorted
        dists = self._dists
        if len(s) >= self.max_candidates:
            # Make room by dropping the farthest never-asked (fresh or skipped) candidate, if the newcomer is closer.
            for i in range(len(s) - 1, -1, -1):
                far = s[i]
                if far[_D] < d:
                    break
                if far[_ST] == FRESH or far[_ST] == SKIPPED:
                    del s[i]
                    del dists[i]
                    del self._by_id[far[_NID]]
                    del self._by_pk[far[_PK]]
                    self.stats["candidates_dropped"] += 1
                    break
            if len(s) >= self.max_candidates:
                self.stats["candidates_dropped"] += 1
                return None
        rec = [d, nid, pk, ep, FRESH, hop, False, 0.0, 0, via]
        self._by_id[nid] = rec
        self._by_pk[pk] = rec
        i = bisect_left(dists, d)
        dists.insert(i, d)
        s.insert(i, rec)
        return rec

    def _merge(self, contacts: list[Any] | tuple[Any, ...], hop: int, via: bytes) -> None:
        stats = self.stats
        self._serial += 1
        serial = self._serial
        limit = self.max_per_response
        if len(contacts) > limit:
            stats["contacts_truncated"] += 1
            contacts = contacts[:limit]
        by_pk = self._by_pk
        accepted = known = bad = dup = 0
        for c in contacts:
            # contact_fields() inlined for the wire form: this loop runs for every contact of every answer.
            if type(c) is list and len(c) >= 2:
                pk = c[0]
                ep = c[1]
            else:
                f = contact_fields(c)
                if f is None:
                    bad += 1
                    continue
                pk, ep = f
            if type(pk) is not bytes:
                bad += 1
                continue
            rec = by_pk.get(pk)
            if rec is not None:
                if rec[_MARK] == serial:
                    dup += 1
                else:
                    rec[_MARK] = serial
                    known += 1
                continue
            if len(pk) != PUBLIC_KEY_LEN or type(ep) is not str or not ep or len(ep) > MAX_ENDPOINT_LEN:
                bad += 1
                continue
            rec = self._add(pk, ep, hop, via)
            if rec is not None:
                rec[_MARK] = serial
                accepted += 1
        stats["contacts_accepted"] += accepted
        stats["contacts_known"] += known
        if bad:
            stats["contacts_bad"] += bad
        if dup:
            stats["contacts_duplicate"] += dup

    def _advance(self, now: float) -> None:
        """Judge lateness, ask the closest fresh candidates of the window while fewer than alpha are waited
        for, and detect the end."""
        waiting = self._waiting
        active = 0
        if waiting:
            limit = self.late_limit()
            for rec in waiting:
                if rec[_SENT] + limit > now:  # the same sum as next_timer(): no rounding gap between them
                    rec[_LATE] = False
                    active += 1
                elif not rec[_LATE]:
                    rec[_LATE] = True
                    self.late += 1
        k = self.k
        alpha = self.alpha
        s = self._sorted
        if self.stop_at_target and s and s[0][_D] == 0 and s[0][_ST] == WAITING and not s[0][_LATE]:
            alpha = 0  # the target is waited for: its answer ends the lookup (see "Finding one node")
        counted = 0
        unsettled = False  # a window candidate is fresh or waited for
        can_ask = self.queries < self.max_queries
        linked = self.linked
        max_dials = self.max_dials
        for rec in s:
            st = rec[_ST]
            if st == WAITING:
                if rec[_LATE]:
                    continue
                unsettled = True
            elif st == FRESH:
                if can_ask and active < alpha:
                    if linked is not None and max_dials is not None and not linked(rec[_NID]):
                        if self.dials >= max_dials:
                            rec[_ST] = SKIPPED
                            self.stats["candidates_unlinked_skipped"] += 1
                            continue
                        self.dials += 1
                    rec[_ST] = WAITING
                    rec[_LATE] = False
                    rec[_SENT] = now
                    waiting.append(rec)
                    self._outbox.append(rec)
                    active += 1
                    if rec[_D] == 0 and self.stop_at_target:
                        alpha = 0  # the target itself is asked: nothing else while it is waited for
                    self.queries += 1
                    can_ask = self.queries < self.max_queries
                unsettled = True
            elif st >= FAILED:  # failed or skipped
                continue
            counted += 1
            if counted >= k:
                break
        if not unsettled:
            if counted:
                self._finish(now, ok=True)  # every window candidate answered
            elif not waiting:
                self._finish(now, ok=False)  # every candidate failed
            # else nobody answered yet and only late queries are left: they are all there is to wait for,
            # until they answer or their hard timeouts come (on_timeout).
        elif not active and not can_ask:
            self._finish(now, ok=False)  # budget spent with fresh candidates left in the window

    def _finish(self, now: float, ok: bool) -> None:
        self.done = True
        self.ok = ok
        self.finished = now
        self._outbox = []
