"""Mesh-wide broadcast and topics: Plumtree epidemic broadcast trees, sans-IO.

Plumtree (Leitão, Pereira, Rodrigues, "Epidemic Broadcast Trees", SRDS 2007): a node pushes a new
message's payload to its *eager* neighbours and announces its id (IHAVE) to its *lazy* ones. A node
that receives a payload it already has answers PRUNE (the sender moves it to lazy), so the eager
links shrink to a spanning tree; a node that hears an IHAVE and no payload within a timeout sends
GRAFT (the announcer pushes the payload and moves it to eager), so the tree heals around losses and
crashes from the lazy links. The sender of a first copy becomes eager (links both ways, so one tree
serves every origin).

Neighbours are a sample of the routing table (:mod:`zmqagents.core.broadcast_sample`, set by the
composition through :meth:`Broadcast.set_sample`) plus *inbound* peers: those that push or announce
to us without being in our sample (they have us in theirs), at most ``max_inbound``, dropped after
``inbound_ttl`` of silence.

Messages outlive a hop, so their origin signs them (:mod:`zmqagents.core.broadcast_wire`). The order
of checks on a payload is the cheap one first: shape, then the id against the seen cache and the
(origin, topic) sequence window (duplicates and replays dropped before any verification), then size
and signature (once per node per message), then the origin's rate limit. Only a verified message
is recorded as seen, so a forged copy cannot shadow the genuine one.

Topics: one mesh-wide tree carries every topic; a node delivers to its application the messages of
the topics it subscribed to (and of the mesh-wide topic ``""``) and forwards the rest. See
``protocols/broadcast.md`` 6 for why, and what it costs (every node handles every topic's payloads).

Events: :class:`Delivered` (at most once per message), :class:`Gap` (a hole in an origin's sequence
still open ``gap_report_after`` s after it was seen). Everything bounded; each bound hit is a counter
in ``stats``.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from ..envelope import Envelope
from ..identity import node_id_of
from .broadcast_config import BroadcastConfig
from .broadcast_topics import Interests
from .broadcast_wire import (GRAFT, IHAVE, MSG, PRUNE, WANT, BadMessage, Claimed, Message, make_message, message_id,
                             parse_claimed, parse_graft_body, parse_ihave_body, parse_msg_body, parse_want_body,
                             verify_claimed)
from .outputs import CoreOutputs
from .ratelimit import TokenBucket
from ..errors import Error

STAT_KEYS = (
    "published", "delivered", "payloads_received", "duplicates", "stale", "malformed", "bad_signature",
    "oversize", "over_rate", "not_subscribed", "pushed", "hop_limit", "ihave_sent", "ihave_received",
    "ihave_ignored", "ihave_queue_dropped", "missing_full", "grafts_sent", "graft_gave_up", "grafts_received",
    "graft_answered", "graft_unknown", "graft_over_rate", "prunes_sent", "prunes_received", "inbound_full",
    "gaps_reported", "seen_evicted", "cache_evicted", "streams_evicted", "gaps_dropped", "optimized",
    "gap_pulls", "grafts_late", "wants_sent", "wants_received", "want_over", "filtered", "unwanted_payloads",
    "tree_grafts", "wants_repeated",
)
MAX_GRAFTED = 1024  # grafted ids remembered to notice a late eager copy (a sample of the graft delay)
CACHE_OVERHEAD = 256  # bytes charged per cached message beyond its signed size (the dict, the tuple)


class PublishError(Error, ValueError):
    """A publication refused at its origin: ``reason`` is "oversize", "rate" or "malformed"."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass(slots=True, frozen=True)
class Delivered:
    """A message for the application, at most once per (origin, epoch, seq, topic). ``origin`` is the
    origin's node id, ``hops`` how many links it crossed to get here (0: published here)."""

    origin: bytes
    topic: str
    epoch: int
    seq: int
    data: Any
    hops: int
    id: bytes
    size: int  # bytes of its signed form (the data's encoding + ~80): what holding it costs, roughly


@dataclass(slots=True, frozen=True)
class Gap:
    """Sequence numbers of an origin's topic stream that never arrived, ``gap_report_after`` s after a
    later one did (repair had its chance). A subscriber can report them; they are not retried."""

    origin: bytes
    topic: str
    epoch: int
    missing: tuple[int, ...]


class _Stream:
    """One (origin, topic) stream: its epoch, the highest seq accepted, and which of the ``window``
    sequence numbers up to it were accepted (bit d set: high - d was)."""

    __slots__ = ("epoch", "high", "bits")

    def __init__(self, epoch: int, high: int):
        self.epoch = epoch
        self.high = high
        self.bits = 1


class _Missing:
    """An id announced to us and not received: the graft timer's deadline, who announced it (in order),
    and whom we asked for it (GRAFT) so far."""

    __slots__ = ("deadline", "announcers", "creator", "asked")

    def __init__(self, deadline: float, peer: bytes, hops: int):
        self.deadline = deadline
        self.announcers: deque[tuple[bytes, int]] = deque(((peer, hops),))
        self.creator = peer
        self.asked: tuple[bytes, ...] = ()


class Broadcast(CoreOutputs):
    """One node's Plumtree state. Drive it with :meth:`receive` (``bcast.*`` envelopes), :meth:`tick` at
    :meth:`next_timer`, :meth:`set_sample` when the routing table changed and :meth:`peer_down` when a
    peer is gone; publish with :meth:`publish`; drain ``take_outgoing``/``take_events``.

    ``signer``: ``.public_key`` (Ed25519, 32 bytes) and ``.sign(bytes)``; ``epoch``: this run's epoch
    (the shell passes its start time in ms, so a restarted origin's numbering is newer than before).
    """

    def __init__(self, node_id: bytes, signer: Any, epoch: int, rng: random.Random,
                 config: BroadcastConfig | None = None):
        super().__init__()
        self.node_id = node_id
        self.signer = signer
        self.epoch = epoch
        self.config = config = config or BroadcastConfig()
        self._rng = rng
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.topics: set[str] = {""}  # topics delivered to the application; "" is mesh-wide
        self.sample: set[bytes] = set()
        self.inbound: dict[bytes, float] = {}  # peer -> last heard
        self.eager: set[bytes] = set()
        self.lazy: set[bytes] = set()
        self._seqs: dict[str, int] = {}  # our next seq per topic
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        # id -> (wire form, hops it is forwarded with, bytes charged, when, who sent it first (None: ours))
        self._cache: OrderedDict[bytes, tuple[dict[str, Any], int, int, float, bytes | None]] = OrderedDict()
        self._cache_bytes = 0
        self._streams: OrderedDict[tuple[bytes, str], _Stream] = OrderedDict()
        self._origins: OrderedDict[bytes, tuple[TokenBucket, TokenBucket]] = OrderedDict()
        self._grafters: OrderedDict[bytes, TokenBucket] = OrderedDict()
        # Ids to announce at the next IHAVE flush: (id, hops it is forwarded with, who sent it to us).
        self._ihave: deque[tuple[bytes, int, bytes | None, str]] = deque()  # (id, hops, from, topic)
        self._ihave_at: float | None = None
        self._missing: dict[bytes, _Missing] = {}
        self._missing_by: dict[bytes, int] = {}  # peer -> missing entries its IHAVE opened
        self._timers: list[tuple[float, bytes]] = []
        self._gaps: deque[tuple[float, bytes, str, int, int, int]] = deque()  # (due, origin, topic, epoch, lo, hi)
        self._sweep_at: float | None = None
        self._now = 0.0  # the time of the latest input (what _send stamps)
        self._link_at: float | None = None  # next refresh of our links (empty IHAVEs to the sample)
        self._sent: dict[bytes, float] = {}  # sample member -> when we last sent it anything
        # Ids we grafted -> the peers asked: their answers after the eager copy are expected duplicates (no prune).
        self._grafted: OrderedDict[bytes, tuple[bytes, ...]] = OrderedDict()
        # Ids a repair brought before any eager copy -> (when, who repaired it). The eager copy arriving within
        # graft_timeout shows the tree path works, only slowly (counted grafts_late, the entry goes); one still
        # missing by then shows it broken: the repairer is grafted into the tree (protocols/broadcast.md 4).
        self._unconfirmed: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._interests = Interests(config.max_want_topics)  # topics each neighbour wants (broadcast_topics.py)
        self._want_at: float | None = None  # when our changed declarations go out
        self._want_last = -1e300  # when they last did (recomputed at most every want_interval)

    # -- neighbours ---------------------------------------------------------------------------------

    def neighbours(self) -> set[bytes]:
        """Every peer we push or announce to: the sample and the inbound peers."""
        return self.eager | self.lazy

    def set_sample(self, ids: set[bytes], now: float) -> None:
        """The routing table's sample changed: new members start eager (Plumtree's NeighborUp); members
        that left are dropped unless they are inbound peers too."""
        self._now = now
        ids = set(ids)
        ids.discard(self.node_id)
        for p in sorted(ids - self.sample):
            self.inbound.pop(p, None)
            if p not in self.lazy:
                self.eager.add(p)
                self._tree_changed()
            self._send(p, IHAVE, {"i": []})  # a link announcement: p takes us as an inbound neighbour
        for p in sorted(self.sample - ids):
            self._sent.pop(p, None)
            self._drop_neighbour(p)
        self.sample = ids
        if ids and self._link_at is None:
            self._link_at = now + self.config.link_refresh

    def peer_down(self, node_id: bytes) -> None:
        """``node_id`` failed or left: it is no neighbour any more (it is out of the sample too once the
        composition recomputes it), its announcements are not waited for."""
        self.sample.discard(node_id)
        self.inbound.pop(node_id, None)
        self._drop_neighbour(node_id)
        self._interests.forget(node_id)
        self._grafters.pop(node_id, None)
        for m in self._missing.values():
            if m.announcers and any(p == node_id for p, _ in m.announcers):
                m.announcers = deque(a for a in m.announcers if a[0] != node_id)

    def _drop_neighbour(self, p: bytes) -> None:
        if p in self.inbound:
            return
        self.eager.discard(p)
        self.lazy.discard(p)
        self._tree_changed()

    def _to_eager(self, p: bytes) -> None:
        if p not in self.eager:
            self.lazy.discard(p)
            self.eager.add(p)
            self._tree_changed()

    def _to_lazy(self, p: bytes) -> None:
        if p in self.eager:
            self.eager.discard(p)
            self.lazy.add(p)
            self._tree_changed()

    def _tree_changed(self) -> None:
        """Our eager links, neighbours or topics changed: what we tell our neighbours we want may have
        too. Declarations go out ``want_delay`` later, batched (a tree that is still forming changes often)."""
        if self._want_at is None:
            cfg = self.config
            self._want_at = max(self._now + cfg.want_delay, self._want_last + cfg.want_interval)

    def _heard(self, p: bytes, now: float) -> bool:
        """A peer pushed or announced to us: make it an (inbound) neighbour if it is none. False if it is
        not a neighbour and there is no room for it."""
        if p in self.sample:
            return True
        if p in self.inbound:
            self.inbound[p] = now
            return True
        if len(self.inbound) >= self.config.max_inbound:
            self.stats["inbound_full"] += 1
            return False
        self.inbound[p] = now
        self.lazy.add(p)
        self._tree_changed()
        self._arm_sweep(now)
        return True

    def _tell_outsider(self, p: bytes) -> None:
        """``p`` pushes or announces to us (it samples us) but we have no room for it as a neighbour: it still
        filters by what we last told it, which may be a forwarder's "every topic" from when it was one. Tell it
        our own topics (what a lazy neighbour hears), once per change: otherwise it pushes and announces us
        every topic for as long as it samples us, and we graft topic payloads nobody here needs."""
        changed, topics = self._interests.tell(p, self.topics)
        if changed:
            self._send(p, WANT, {"t": None if topics is None else sorted(topics)})
            self.stats["wants_sent"] += 1

    # -- subscriptions and publishing -------------------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        if topic not in self.topics:
            self.topics.add(topic)
            self._tree_changed()

    def unsubscribe(self, topic: str) -> None:
        if topic and topic in self.topics:
            self.topics.discard(topic)
            self._tree_changed()

    def publish(self, topic: str, data: Any, now: float) -> Message:
        """Sign and push a new message on ``topic`` ("" = mesh-wide); it is delivered here too if we are
        subscribed. PublishError if it is over the size limit or our own origin rate (peers would refuse it)."""
        self._now = now
        seq = self._seqs.get(topic, 0) + 1
        try:
            msg = make_message(self.signer, self.epoch, seq, topic, data)
        except BadMessage as exc:
            raise PublishError("malformed", str(exc)) from None
        cfg = self.config
        if msg.size > cfg.max_message_bytes:
            raise PublishError("oversize", f"{msg.size} bytes signed, limit {cfg.max_message_bytes} "
                                           "(BroadcastConfig.max_message_bytes)")
        if not self._origin_allows(msg.origin, msg.size, now):
            raise PublishError("rate", f"over this origin's limit of {cfg.origin_rate:g} messages/s "
                                       f"and {cfg.origin_bytes:g} bytes/s")
        self._seqs[topic] = seq
        self.stats["published"] += 1
        self._accept(msg, None, 0, now)
        return msg

    # -- input ----------------------------------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """One ``bcast.*`` envelope from ``env.src`` (authenticated by the link)."""
        self._now = now
        t = env.type
        p = env.src
        try:
            if t == MSG:
                self._on_msg(p, env.body, now)
            elif t == IHAVE:
                self._on_ihave(p, env.body, now)
            elif t == GRAFT:
                self._on_graft(p, env.body, now)
            elif t == PRUNE:
                self.stats["prunes_received"] += 1
                self._to_lazy(p)
            elif t == WANT:
                self._on_want(p, env.body, now)
            else:
                self.stats["malformed"] += 1
        except BadMessage as exc:
            self.stats[exc.reason] += 1

    def _on_msg(self, p: bytes, body: Any, now: float) -> None:
        m, hops = parse_msg_body(body)
        c = parse_claimed(m)
        st = self.stats
        st["payloads_received"] += 1
        outsider = not self._heard(p, now)  # no room for it: its message is still judged; we just do not push back
        if outsider:
            self._tell_outsider(p)
        if c.topic not in self.topics:
            st["not_subscribed"] += 1
            wants = self._interests.wants
            if not any(q != p and wants(q, c.topic) for q in self.eager):
                st["unwanted_payloads"] += 1  # we neither deliver nor forward it: declarations not yet heard
                if self._interests.told_without(p, c.topic):
                    # We told p we do not want this topic: it did not hear (declarations go once, unreliably,
                    # and a lost one was never repeated: p pushed the topic to us for good) or it is still on its
                    # way. Tell p again, at the next declaration (at most once per want_interval).
                    st["wants_repeated"] += 1
                    self._interests.retell(p)
                    if outsider:
                        self._tell_outsider(p)
                    else:
                        self._tree_changed()
        state = self._window(c)
        if state:
            st["duplicates" if state == 1 else "stale"] += 1
            asked = self._grafted.get(c.id)
            if asked is not None:
                if p in asked:
                    return  # the answer to our graft, after the eager copy: asked for, no prune
                if self._unconfirmed.pop(c.id, None) is not None:
                    st["grafts_late"] += 1  # the eager copy after its repair: the path is slow, not broken
                    return
            # A redundant eager link: ask the sender to announce instead. Whatever our view of it (it may
            # not have heard an earlier PRUNE), a payload we did not need is answered with one.
            self._to_lazy(p)
            self._send(p, PRUNE, None)
            st["prunes_sent"] += 1
            return
        msg = verify_claimed(c, self.config.max_message_bytes)
        if not self._origin_allows(msg.origin, msg.size, now):
            st["over_rate"] += 1
            self._remember(msg.id, now)  # later copies are dropped by id, not verified again
            return
        if p in self.lazy:  # the first copy came this way: push back along it (one tree for all origins) ...
            m = self._missing.get(msg.id)
            if m is None or p not in m.asked:  # ... unless it answers our repair (the tree stays as it is)
                self._to_eager(p)
        self._accept(msg, p, hops, now)

    def _on_ihave(self, p: bytes, body: Any, now: float) -> None:
        cfg = self.config
        pairs, skipped = parse_ihave_body(body, cfg.max_ihave_ids)
        st = self.stats
        st["ihave_received"] += len(pairs)
        st["ihave_ignored"] += skipped
        if not self._heard(p, now):
            self._tell_outsider(p)
        missing = self._missing
        for mid, hops in pairs:
            if mid in self._seen:
                if cfg.optimization_threshold:
                    self._shorter_path(mid, p, hops)
                continue
            m = missing.get(mid)
            if m is not None:
                if len(m.announcers) < cfg.max_announcers and all(a[0] != p for a in m.announcers):
                    m.announcers.append((p, hops))
                continue
            self._expect(mid, p, hops, now)

    def _expect(self, mid: bytes, p: bytes, hops: int, now: float) -> bool:
        """Wait for ``mid``, which ``p`` holds (it announced it, or it sent a later message of its stream):
        graft it from ``p`` if it has not arrived within the graft timeout. False (counted) if full."""
        opened = self._missing_by.get(p, 0)
        if len(self._missing) >= self.config.max_missing or opened >= self.config.max_ihave_queue:
            self.stats["missing_full"] += 1
            return False
        self._missing_by[p] = opened + 1
        deadline = now + self.config.graft_timeout
        self._missing[mid] = _Missing(deadline, p, hops)
        heapq.heappush(self._timers, (deadline, mid))
        return True

    def _on_want(self, p: bytes, body: Any, now: float) -> None:
        topics, over = parse_want_body(body, self.config.max_want_topics)
        st = self.stats
        st["wants_received"] += 1
        st["want_over"] += over
        if not self._heard(p, now):
            return
        if self._interests.set_want(p, topics) and p in self.eager:
            self._tree_changed()

    def _on_graft(self, p: bytes, body: Any, now: float) -> None:
        cfg = self.config
        ids, skipped, repair = parse_graft_body(body, cfg.max_graft_ids)
        st = self.stats
        st["grafts_received"] += 1
        st["ihave_ignored"] += skipped
        if not repair:
            self._to_eager(p)
        bucket = None
        for mid in ids:
            ent = self._cache.get(mid)
            if ent is None:
                st["graft_unknown"] += 1
                continue
            if bucket is None:
                bucket = self._grafters.get(p)
                if bucket is None:
                    bucket = self._grafters[p] = TokenBucket(cfg.graft_burst, now)
                    if len(self._grafters) > cfg.max_streams:
                        self._grafters.popitem(last=False)
            if not bucket.take(now, cfg.graft_rate, cfg.graft_burst):
                st["graft_over_rate"] += 1
                continue
            wire, hops = ent[0], ent[1]
            self._send(p, MSG, {"m": wire, "h": hops})
            st["graft_answered"] += 1

    # -- the checks -------------------------------------------------------------------------------------

    def _window(self, c: Claimed) -> int:
        """0: new; 1: a duplicate (seen id, or inside the stream's window and accepted); 2: stale (an
        older epoch, or below the window: a replay)."""
        if c.id in self._seen:
            return 1
        s = self._streams.get((c.origin, c.topic))
        if s is None or c.epoch > s.epoch:
            return 0
        if c.epoch < s.epoch:
            return 2
        if c.seq > s.high:
            return 0
        d = s.high - c.seq
        if d >= self.config.window:
            return 2
        return 1 if (s.bits >> d) & 1 else 0

    def _origin_allows(self, origin: bytes, size: int, now: float) -> bool:
        cfg = self.config
        b = self._origins.get(origin)
        if b is None:
            b = self._origins[origin] = (TokenBucket(cfg.origin_burst, now), TokenBucket(cfg.origin_byte_burst, now))
            if len(self._origins) > cfg.max_streams:
                self._origins.popitem(last=False)
        else:
            self._origins.move_to_end(origin)
        msgs, nbytes = b
        if msgs.refill(now, cfg.origin_rate, cfg.origin_burst) < 1 or \
                nbytes.refill(now, cfg.origin_bytes, cfg.origin_byte_burst) < size:
            return False
        msgs.tokens -= 1
        nbytes.tokens -= size
        return True

    # -- accepting, forwarding ----------------------------------------------------------------------------

    def _remember(self, mid: bytes, now: float) -> None:
        seen = self._seen
        seen[mid] = now
        if len(seen) > self.config.max_seen:
            seen.popitem(last=False)
            self.stats["seen_evicted"] += 1
        self._arm_sweep(now)

    def _accept(self, msg: Message, frm: bytes | None, hops: int, now: float) -> None:
        """A new, verified message (``frm`` None: our own): record, cache, deliver, push on."""
        cfg = self.config
        mid = msg.id
        self._remember(mid, now)
        m = self._missing.pop(mid, None)
        if m is not None:
            self._closed(m)
            if m.asked:
                self._grafted[mid] = m.asked
                if len(self._grafted) > MAX_GRAFTED:
                    self._grafted.popitem(last=False)
                if frm in m.asked and frm is not None:  # repaired: the eager copy may still come (the path is slow)
                    self._unconfirmed[mid] = (now, frm)
                    if len(self._unconfirmed) > MAX_GRAFTED:
                        self._unconfirmed.popitem(last=False)
                else:  # the eager copy came after we grafted: the graft was early
                    self.stats["grafts_late"] += 1
        self._record_seq(msg, frm, now)
        wire = msg.to_wire()
        nxt = hops + 1
        if nxt <= cfg.max_hops:
            size = msg.size + CACHE_OVERHEAD
            cache = self._cache
            cache[mid] = (wire, nxt, size, now, frm)
            self._cache_bytes += size
            while self._cache_bytes > cfg.cache_bytes and cache:
                _k, ent = cache.popitem(last=False)
                self._cache_bytes -= ent[2]
                self.stats["cache_evicted"] += 1
            body = {"m": wire, "h": nxt}
            wants = self._interests.wants
            topic = msg.topic
            for p in sorted(self.eager):
                if p == frm:
                    continue
                if wants(p, topic):
                    self._send(p, MSG, body)
                    self.stats["pushed"] += 1
                else:
                    self.stats["filtered"] += 1
            if self.lazy and cfg.lazy_fanout:
                if self._ihave_at is None:
                    self._ihave_at = now + cfg.ihave_interval
                q = self._ihave
                if len(q) >= cfg.max_ihave_queue:
                    q.popleft()
                    self.stats["ihave_queue_dropped"] += 1
                q.append((mid, nxt, frm, msg.topic))
        else:
            self.stats["hop_limit"] += 1
        if msg.topic in self.topics:
            self.stats["delivered"] += 1
            self._events.append(Delivered(node_id_of(msg.origin), msg.topic, msg.epoch, msg.seq, msg.data, hops, mid,
                                           msg.size))

    def _shorter_path(self, mid: bytes, p: bytes, hops: int) -> None:
        """Plumtree's optimization (Leitao et al. 3.8): ``p`` announces a message we got from our eager
        parent over ``optimization_threshold`` or more hops more than ``p``'s copy took: the tree is
        deeper than it need be here. Graft ``p`` (it pushes to us from now on) and prune the parent.
        At most once per message (the cache entry forgets its parent)."""
        ent = self._cache.get(mid)
        if ent is None or ent[4] is None or ent[4] == p:
            return
        parent = ent[4]
        if hops + self.config.optimization_threshold > ent[1] - 1:  # ent[1]: our copy's hops + 1
            return
        self._cache[mid] = (ent[0], ent[1], ent[2], ent[3], None)
        self.stats["optimized"] += 1
        self._to_eager(p)
        self._send(p, GRAFT, {"i": []})
        self._to_lazy(parent)
        self._send(parent, PRUNE, None)
        self.stats["grafts_sent"] += 1
        self.stats["prunes_sent"] += 1

    def _closed(self, m: _Missing) -> None:
        n = self._missing_by.get(m.creator, 0) - 1
        if n > 0:
            self._missing_by[m.creator] = n
        else:
            self._missing_by.pop(m.creator, None)

    def _record_seq(self, msg: Message, frm: bytes | None, now: float) -> None:
        key = (msg.origin, msg.topic)
        streams = self._streams
        s = streams.get(key)
        w = self.config.window
        if s is None or msg.epoch > s.epoch:
            streams[key] = _Stream(msg.epoch, msg.seq)
            if s is None and len(streams) > self.config.max_streams:
                streams.popitem(last=False)
                self.stats["streams_evicted"] += 1
            return
        streams.move_to_end(key)
        if msg.seq > s.high:
            shift = msg.seq - s.high
            if shift > 1 and msg.topic in self.topics:
                # Only a stream we deliver has holes worth pulling: a forwarder's hole is most often the time it
                # was off the topic's path (nothing lost), and what it forwards, its subscribers repair.
                self._note_gap(msg.origin, msg.topic, msg.epoch, s.high + 1, msg.seq - 1, now)
                if frm is not None:
                    self._pull_hole(msg, max(s.high + 1, msg.seq - self.config.gap_pull), frm, now)
            s.bits = ((s.bits << shift) | 1) & ((1 << w) - 1) if shift < w else 1
            s.high = msg.seq
        else:
            s.bits |= 1 << (s.high - msg.seq)

    def _pull_hole(self, msg: Message, lo: int, frm: bytes, now: float) -> None:
        """Sequence numbers ``lo`` .. ``msg.seq - 1`` of ``msg``'s stream are missing here and ``frm`` sent
        ``msg``: it most likely holds them (it forwards in order), so expect them from it (a graft after
        the timeout) unless they come meanwhile or someone announces them first."""
        for seq in range(lo, msg.seq):
            mid = message_id(msg.origin, msg.epoch, seq, msg.topic)
            if mid in self._seen or mid in self._missing:
                continue
            if not self._expect(mid, frm, 1, now):
                return
            self.stats["gap_pulls"] += 1

    def _note_gap(self, origin: bytes, topic: str, epoch: int, lo: int, hi: int, now: float) -> None:
        gaps = self._gaps
        if len(gaps) >= self.config.max_gaps:
            self.stats["gaps_dropped"] += 1
            self._report_gap(gaps.popleft())
        gaps.append((now + self.config.gap_report_after, origin, topic, epoch, lo, hi))
        self._arm_sweep(now)

    def _report_gap(self, gap: tuple[float, bytes, str, int, int, int]) -> None:
        _due, origin, topic, epoch, lo, hi = gap
        s = self._streams.get((origin, topic))
        w = self.config.window
        missing = []
        for seq in range(max(lo, hi - w + 1), hi + 1):
            if s is not None and s.epoch == epoch and 0 <= s.high - seq < w and (s.bits >> (s.high - seq)) & 1:
                continue
            missing.append(seq)
        if missing:
            self.stats["gaps_reported"] += len(missing)
            self._events.append(Gap(node_id_of(origin), topic, epoch, tuple(missing)))

    def _send(self, to: bytes, typ: str, body: Any) -> None:
        self._out.append(Envelope(self._rng.randbytes(16), self.node_id, typ, body, to))
        if to in self.sample:
            self._sent[to] = self._now

    def _refresh_links(self, now: float) -> None:
        """An empty IHAVE to every sample member we sent nothing for ``link_refresh`` s: it keeps us in
        its inbound neighbours (they expire after ``inbound_ttl`` of silence), so every sampled link is
        usable both ways and a node that never publishes is still pushed to."""
        every = self.config.link_refresh
        for p in sorted(self.sample):
            if self._sent.get(p, -1e300) + every <= now:  # the sum the schedule below uses (no rounding gap)
                self._send(p, IHAVE, {"i": []})
                self._interests.retell(p)  # it may have dropped us and forgotten what we want
                self._tree_changed()
        # Next when the member we sent to longest ago is due (a fixed period would let a link go up to
        # twice link_refresh silent after other traffic reset its clock).
        sent = self._sent
        self._link_at = min(sent.get(p, now) for p in self.sample) + self.config.link_refresh if self.sample else None

    def state_size(self) -> dict[str, int]:
        """How much this core holds now (each bounded by its BroadcastConfig field)."""
        return {"neighbours": len(self.eager) + len(self.lazy), "inbound": len(self.inbound), "seen": len(self._seen),
                "cache": len(self._cache), "cache_bytes": self._cache_bytes, "missing": len(self._missing),
                "streams": len(self._streams), "ihave_queued": len(self._ihave),
                "gaps": len(self._gaps),
                "interest_topics": self._interests.size()}

    # -- timers ----------------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        t = self._ihave_at
        if self._want_at is not None and (t is None or self._want_at < t):
            t = self._want_at
        if self._timers:
            d = self._timers[0][0]
            if t is None or d < t:
                t = d
        if self._unconfirmed:
            c = next(iter(self._unconfirmed.values()))[0] + self.config.tree_graft_after
            if t is None or c < t:
                t = c
        for s in (self._sweep_at, self._link_at):
            if s is not None and (t is None or s < t):
                t = s
        return t

    def tick(self, now: float) -> None:
        self._now = now
        if self._ihave_at is not None and self._ihave_at <= now:
            self._flush_ihave()
        if self._want_at is not None and self._want_at <= now:
            self._want_at = None
            self._want_last = now
            for p, topics in self._interests.declarations(self.topics, self.eager, self.eager | self.lazy):
                self._send(p, WANT, {"t": None if topics is None else sorted(topics)})
                self.stats["wants_sent"] += 1
        timers = self._timers
        if timers and timers[0][0] <= now:
            self._fire_grafts(now)
        if self._unconfirmed:
            self._confirm_repairs(now)
        if self._sweep_at is not None and self._sweep_at <= now:
            self._sweep(now)
        if self._link_at is not None and self._link_at <= now:
            self._refresh_links(now)

    def _flush_ihave(self) -> None:
        """Announce what was queued since the last flush to ``lazy_fanout`` lazy neighbours drawn at random
        for this batch (each gets every queued id but those it sent us): a batch costs that many envelopes
        however many messages it holds."""
        self._ihave_at = None
        cfg = self.config
        step = cfg.max_ihave_ids
        queued = self._ihave
        self._ihave = deque()
        lazy = sorted(self.lazy)
        self._rng.shuffle(lazy)
        wants = self._interests.wants
        told = 0
        for p in lazy:
            if told >= cfg.lazy_fanout:
                break
            items = [[mid, h] for mid, h, frm, topic in queued if frm != p and wants(p, topic)]
            if items:
                told += 1
            for i in range(0, len(items), step):
                self._send(p, IHAVE, {"i": items[i:i + step]})
            self.stats["ihave_sent"] += len(items)

    def _fire_grafts(self, now: float) -> None:
        cfg = self.config
        timers = self._timers
        missing = self._missing
        grafts: dict[bytes, list[bytes]] = {}
        while timers and timers[0][0] <= now:
            deadline, mid = heapq.heappop(timers)
            m = missing.get(mid)
            if m is None or m.deadline != deadline:
                continue  # received meanwhile, or re-armed
            if not m.announcers:
                del missing[mid]
                self._closed(m)
                self.stats["graft_gave_up"] += 1
                continue
            p, _hops = m.announcers.popleft()
            grafts.setdefault(p, []).append(mid)
            m.asked += (p,)
            m.deadline = now + cfg.graft_retry
            heapq.heappush(timers, (m.deadline, mid))
        for p in sorted(grafts):
            ids = grafts[p]
            for i in range(0, len(ids), cfg.max_ihave_ids):
                self._send(p, GRAFT, {"i": ids[i:i + cfg.max_ihave_ids], "r": True})
                self.stats["grafts_sent"] += 1

    def _confirm_repairs(self, now: float) -> None:
        """Repairs whose eager copy has not come ``tree_graft_after`` after them: the tree path is broken, not
        merely slow, so the peer that repaired each becomes our parent (a plain GRAFT: it pushes to us from
        now on). A graft fetches only (``r``): most mean a late eager copy (a loaded sender, one lost push),
        and re-shaping the tree for each (Plumtree's rule) made trees flap on loaded real nodes, each change
        also changing topic declarations (protocols/broadcast.md 4 and 6)."""
        pending = self._unconfirmed
        wait = self.config.tree_graft_after
        grafted: set[bytes] = set()
        while pending:
            at, p = next(iter(pending.values()))
            if at + wait > now:  # the sum next_timer uses: no rounding gap that would re-arm the same instant
                break
            pending.popitem(last=False)
            if p in grafted or p in self.eager or p not in self.lazy:
                continue  # already pushing to us, or gone
            grafted.add(p)
            self._to_eager(p)
            self._send(p, GRAFT, {"i": []})
            self.stats["tree_grafts"] += 1

    def _arm_sweep(self, now: float) -> None:
        if self._sweep_at is None:
            self._sweep_at = now + self.config.sweep_interval

    def _sweep(self, now: float) -> None:
        cfg = self.config
        self._sweep_at = None
        seen = self._seen
        cut = now - cfg.seen_ttl
        while seen:
            mid, t = next(iter(seen.items()))
            if t > cut:
                break
            seen.popitem(last=False)
        cache = self._cache
        cut = now - cfg.cache_ttl
        while cache:
            mid, ent = next(iter(cache.items()))
            if ent[3] > cut:
                break
            cache.popitem(last=False)
            self._cache_bytes -= ent[2]
        cut = now - cfg.inbound_ttl
        for p in [p for p, t in self.inbound.items() if t <= cut]:
            del self.inbound[p]
            if p not in self.sample:
                self._drop_neighbour(p)
        gaps = self._gaps
        while gaps and gaps[0][0] <= now:
            self._report_gap(gaps.popleft())
        if seen or cache or self.inbound or gaps:
            self._arm_sweep(now)
