"""Reliable direct delivery: ack, retransmit, dedup, per-sender order, request/reply.

A sans-IO state machine (the wire rules are in ``protocols/delivery.md``):
the driver hands it envelopes and the current time, then drains the
envelopes it wants sent and the events it reports. It never reads a clock,
never touches a socket and draws every random number from the injected
``random.Random``, so a real node and the simulator run the same code.

Per peer it keeps our stream to the peer (epoch, next sequence number, the
unacked messages) and the peer's stream to us (its epoch, the cumulative
sequence delivered, a reorder buffer, the ids recently delivered). Every
piece of state has a bound; hitting a bound or dropping anything bumps a
counter in ``stats``.

Timers live in a hashed wheel of ``timer_granularity`` slots: arming one is a
list append, cancelling one clears its slot number (the stale entry is skipped
when its slot fires) and decrements the slot's live count. A slot left with
only cancelled timers never wakes the driver, and its entries are freed at once
rather than when its time comes (an answered request would otherwise stay
referenced for its whole timeout). Per-message timer work is O(1) with no heap
operation per message: the heap holds each slot number once.

Envelopes are never mutated after they are handed out (a retransmission
sends the same object again), so a driver may pass them around by reference.
"""

from __future__ import annotations

import builtins
import heapq
import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any, Iterable

from ..envelope import ID_LEN, Envelope
from .outputs import CoreOutputs
from ..errors import Error, InvalidArgument

ACK_TYPE = "ack"
FWD_TYPE = "fwd"
REPLY_TYPE = "rep"
ERROR_TYPE = "err"
RESERVED_TYPES = frozenset({ACK_TYPE, FWD_TYPE, REPLY_TYPE, ERROR_TYPE})
EPOCH_MOD = 1 << 63  # epochs are below this; they are compared as integers and never wrap
RANDOM_EPOCH_BITS = 62  # a random epoch base leaves 2^62 epochs of room above it for new streams
# A sender told that the receiver holds a higher epoch of it reopens at that epoch + REOPEN_GAP + a
# random number below REOPEN_GAP. The gap: an earlier run that reached it may have opened streams just
# above it (after a forget), and no run opens 2^32 streams. The random part: the ack may be late and
# name an epoch this run has already jumped above once, to a stream the receiver still holds; a
# second jump from the same epoch must not land on the first (their late frames would share epoch
# and seqs), and it must not need a memory of forgotten peers. Collision odds: 2^-32 per jump.
REOPEN_GAP = 1 << 32
MAX_SACK_ACCEPTED = 4096  # longest selective-ack list taken from a peer; longer is malformed

STAT_KEYS = (
    "sent", "received", "delivered", "retransmits", "duplicates", "acks_sent", "acks_piggybacked",
    "acks_stale", "out_of_order", "window_full", "reorder_overflow", "sack_truncated",
    "replies", "replies_unmatched", "send_failed", "requests_failed", "requests_timed_out",
    "requests_cancelled", "request_limit", "abandoned", "fwd_sent", "fwd_received", "skipped",
    "malformed", "unsequenced", "stale_epoch", "epoch_resets", "buffer_discarded", "peers_evicted",
    "dedup_restored", "reorder_bytes_full", "stream_reopens", "stalls", "reneged", "fast_retransmits",
    "floor_resends",
)


@dataclass
class DeliveryConfig:
    """Tuning of the delivery core. Defaults are for a LAN-to-WAN mesh of agents."""

    # first retransmit timeout (s): above LAN and typical WAN RTTs, so healthy links never retransmit
    rto_initial: float = 0.2
    rto_max: float = 5.0  # cap on the backed-off timeout: a healed partition is noticed within ~5 s
    backoff: float = 2.0  # doubling: retransmit load falls geometrically while a peer is away
    jitter: float = 0.25  # +/- fraction per timeout: peers that lost the same link do not retransmit in lockstep
    # then SendFailed / RequestFailed("unreachable"). 9 transmissions over ~26 s outlast short partitions;
    # an isolated message fails with p ~ (1 - 0.8**2)**9 ~ 1e-4 at 20% loss (sim: 2 in 40k), ~1e-10 at 5%
    max_retries: int = 8
    window: int = 1024  # unacked messages per destination: ~7 ms of traffic at 150k msg/s; bounds memory per peer
    ack_delay: float = 0.005  # delayed ack: a prompt reply carries the ack for free; tiny next to rto_initial
    ack_every: int = 64  # ...or ack at once after this many: one ack per 64 messages in a flood, far below window
    reorder_limit: int = 1024  # out-of-order messages buffered per sender: the sender's window, so no loss is fatal
    # ...and their bytes (Envelope.cost), per sender and over all senders: a buffer of 1024 max-size envelopes
    # would be a gigabyte. One envelope is always taken into an empty sender buffer (so a large one is not
    # refused for ever); beyond a bound, arrivals are dropped unacked and retransmitted later, as for the count.
    reorder_bytes: int = 4 << 20  # a whole window (1024) of messages of up to ~3 KB decoded: no loss is fatal
    reorder_bytes_total: int = 4 << 20
    dedup_window: int = 4096  # ids remembered per sender: 4x the window, covers re-sends across a sender restart
    max_peers: int = 10000  # peer states kept (LRU): O(k log N) contacts of a large mesh fit with room to spare
    # Dedup memories kept after a peer's state is dropped (forget(), eviction), newest first. A sender
    # that crashed is usually declared failed (and forgotten) before it restarts and re-sends its
    # outbox: this keeps its re-sends exactly-once. <= dedup_window ids (~400 KB) each.
    kept_dedup: int = 16
    sack_max: int = 64  # selective seqs per ack: = ack_every, so one ack reports every arrival since the last
    max_requests: int = 65536  # requests awaiting a reply, all peers: bounds what slow peers can pile up
    timer_granularity: float = 0.001  # timer wheel slot (s): timers fire at most this late; 1 ms << rto_initial
    # Stall watchdog (s): our messages to a peer that keeps talking to us have seen no cumulative ack
    # for this long -> Stalled is reported and the stream reopened on a fresh epoch. Above the capped
    # retransmit timeout (5 s +25 %) plus a round trip, so a healthy stream that just came back from a
    # partition is never taken for stalled; below the first give-up (19.65 s), so a stalled stream is
    # restarted before its messages fail. 0 turns the watchdog off.
    stall_after: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise InvalidArgument(f"DeliveryConfig.{f.name} must be a non-negative number, got {value!r}")
        for name in ("rto_initial", "timer_granularity", "window", "ack_every", "reorder_limit", "reorder_bytes",
                     "reorder_bytes_total", "dedup_window",
                     "max_peers", "sack_max", "max_requests"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"DeliveryConfig.{name} must be positive")
        if self.backoff < 1:
            raise InvalidArgument("DeliveryConfig.backoff must be at least 1")
        if self.jitter >= 1:
            raise InvalidArgument("DeliveryConfig.jitter must be below 1 (it is a +/- fraction of the timeout)")
        if self.rto_max < self.rto_initial:
            raise InvalidArgument("DeliveryConfig.rto_max must not be below rto_initial")
        if 0 < self.stall_after <= self.rto_max:
            raise InvalidArgument("DeliveryConfig.stall_after must be above rto_max (or 0 for no watchdog)")

    def timeout(self, attempt: int) -> float:
        """The un-jittered timeout after transmission number ``attempt`` (0 = the first send)."""
        return min(self.rto_initial * self.backoff ** attempt, self.rto_max)


class WindowFull(Error):
    """send/request/reply refused: ``window`` messages to this destination are unacked. Wait for WindowOpen."""


class TooManyRequests(Error):
    """request refused: ``max_requests`` requests already await a reply. Wait for replies or timeouts."""


@dataclass(slots=True)
class Delivered:
    """A data message or request from ``env.src``, in that sender's order, exactly once."""

    env: Envelope


@dataclass(slots=True)
class Replied:
    """The reply ("rep") or error reply ("err") to our request ``request_id``."""

    request_id: bytes
    env: Envelope


@dataclass(slots=True)
class RequestFailed:
    """Our request got no reply: "timeout" (deadline passed), "unreachable" (retries exhausted, or the
    peer was forgotten) or "evicted" (the peer's state was dropped by the max_peers bound)."""

    request_id: bytes
    dst: bytes
    reason: str


@dataclass(slots=True)
class Acked:
    """A message sent with ``confirm=True`` is known delivered: ``dst`` acknowledged it cumulatively.

    Reported once per such message, when the cumulative ack covers it (a selective ack is not
    enough: the receiver may still lose a message it holds behind a hole). A driver that keeps
    a durable outbox marks the message done on this event and no earlier.
    """

    msg_id: bytes
    dst: bytes


@dataclass(slots=True)
class SendFailed:
    """A send() or reply() was never acked: "unreachable" or "evicted", as for RequestFailed."""

    msg_id: bytes
    dst: bytes
    reason: str


@dataclass(slots=True)
class Stalled:
    """Our stream to ``dst`` stalled: ``dst`` kept talking to us, but none of the ``pending`` messages
    to it was acknowledged for ``waited`` seconds. Reported once per stall (until an ack makes
    progress again); the stream is reopened on a fresh epoch at every ``stall_after`` it lasts."""

    dst: bytes
    pending: int
    waited: float
    state: dict[str, Any] = field(default_factory=dict)  # Delivery.stream_state(dst) before the reopen


@dataclass(slots=True)
class WindowOpen:
    """can_send(dst) is true again after WindowFull was raised for dst."""

    dst: bytes


# A pending message is a plain list (the hot path allocates one per message; a list is ~4x cheaper
# to build than a slotted object):
#   [slot, envelope, peer, seq, transmissions so far - 1, request or None, selectively acked, confirm]
# slot 0 = no timer armed; envelope None = acked or dropped (frees the body if the wheel entry lingers).
# A selectively acked message stays pending (but is not retransmitted) until the cumulative ack covers
# it: the receiver holds it behind a hole and may still lose it, so it is not yet known delivered.
# confirm: report Acked when the cumulative ack covers it (send(confirm=True)).
_SLOT, _ENV, _PEER, _SEQ, _TRIES, _REQ, _SACKED, _CONFIRM = range(8)

# Kinds of the object timer entries (each has a ``kind`` class attribute and a ``slot``).
_DEADLINE, _ACK, _WATCH = 1, 2, 3


class _Request:
    """A request awaiting its reply; also its deadline timer."""

    __slots__ = ("slot", "id", "peer", "pending", "deadline")
    kind = _DEADLINE

    def __init__(self, rid: bytes, peer: "_Peer", pending: list[Any], deadline: float):
        self.slot = 0
        self.id = rid
        self.peer = peer
        self.pending = pending
        self.deadline = deadline  # on our clock; each copy sent carries the time left as its ttl


class _Watch:
    """The stall watchdog timer of one peer (allocated the first time the peer has to be watched)."""

    __slots__ = ("slot", "peer")
    kind = _WATCH

    def __init__(self, peer: "_Peer"):
        self.slot = 0
        self.peer = peer


class _Peer:
    """Both directions of our relationship with one peer; itself the timer entry of its delayed ack.

    Thousands of these exist in a large simulation, so what only some peers need
    (requests, the watchdog, dedup memory) is allocated on first use.
    """

    __slots__ = (
        "id", "ep", "next_seq", "low", "rcum", "out", "blocked", "requests", "fwd_at", "reopen_at", "fast_hi",
        "stuck", "watch", "stalled", "heard_at", "acked_at", "nudged_at", "in_ep", "cum", "buf", "buf_bytes", "owed", "slot", "ids", "ring", "ring_pos",
    )
    kind = _ACK

    def __init__(self, pid: bytes, ep: int):
        self.id = pid
        # -- our stream to the peer
        self.ep = ep
        self.next_seq = 1
        self.low = 1  # every seq below this is acked or abandoned (a lower bound of the lowest pending seq)
        self.rcum = 0  # highest cumulative seq the peer has acked on this stream
        self.out: dict[int, list[Any]] = {}  # seq -> pending entry, unacked messages in seq order
        self.blocked = False  # WindowFull was raised: report WindowOpen when there is room again
        self.requests: dict[bytes, _Request] | None = None
        self.fwd_at = float("-inf")  # when we last sent this peer a fwd (rate limit)
        self.reopen_at = float("-inf")  # when the peer's ack last made us reopen the stream (rate limit)
        self.fast_hi = 0  # the highest seq sent again by a fast retransmission (not sent again that way)
        # Since when the peer has been talking to us while our stream to it made no progress (no
        # cumulative ack), or None: the stall watchdog's clock.
        self.stuck: float | None = None
        self.watch: _Watch | None = None
        self.stalled = False  # reported Stalled; cleared by the next progress
        self.heard_at = float("-inf")  # when the peer last sent us anything
        self.acked_at = float("-inf")  # when an ack of ours last advanced its cumulative seq (progress)
        self.nudged_at = float("-inf")  # when a repeated ack last made us resend the floor (rate limit)
        # -- the peer's stream to us
        self.in_ep: int | None = None  # the highest epoch of the peer's seen: older ones are stale
        self.cum = 0  # every seq up to here was delivered, or skipped on the sender's word (fwd)
        self.buf: dict[int, Envelope] = {}  # out-of-order arrivals in arrival order (newest last)
        self.buf_bytes = 0  # their Envelope.cost
        self.owed = 0  # arrivals since our last ack to this peer
        self.slot = 0  # the delayed-ack timer
        self.ids: set[bytes] | None = None  # ids recently delivered (dedup)
        self.ring: list[bytes] = []  # the same ids in delivery order, to forget the oldest
        self.ring_pos = 0


def _ttl_ms(deadline: float, now: float) -> int:
    """A request's ``ttl``: whole milliseconds from ``now`` to ``deadline``, rounded up, at least 1, so a
    receiver never thinks it has less time than the requester gives it (protocols/delivery.md §8.2)."""
    return max(1, math.ceil((deadline - now) * 1000))


def _ack_ok(ack: object) -> bool:
    """Shape and types of a peer's ``ack`` field: [epoch, cumulative, [selective...], ...ignored]."""
    if type(ack) is not list or len(ack) < 3:
        return False
    ep, cum, sel = ack[0], ack[1], ack[2]
    if type(ep) is not int or type(cum) is not int or type(sel) is not list or ep < 0 or cum < 0:
        return False
    if len(sel) > MAX_SACK_ACCEPTED:
        return False
    for s in sel:
        if type(s) is not int:
            return False
    return True


class Delivery(CoreOutputs):
    """The reliable delivery core of one node. Call a method, then drain take_outgoing() and take_events().

    ``now`` is any monotonic clock in seconds, never negative, the same one for every call.
    """

    def __init__(self, node_id: bytes, rng: random.Random, config: DeliveryConfig | None = None,
                 epoch: int | None = None):
        self.node_id = node_id
        self.config = cfg = config or DeliveryConfig()
        self._rng = rng
        # Stream epochs are base + n, n counting the streams this instance opened: a stream re-opened
        # after forget() or eviction gets a higher epoch, and a receiver moves only to higher epochs,
        # so a late frame of the old stream can never retire the new one (protocols/delivery.md §3).
        # The driver passes a base above every epoch its previous runs used (a clock in microseconds);
        # a random base is the fallback, and a receiver that holds a higher epoch of ours tells us (§5.3).
        if epoch is None:
            epoch = rng.getrandbits(RANDOM_EPOCH_BITS)
        elif not 0 <= epoch < EPOCH_MOD:
            raise InvalidArgument(f"epoch must be in [0, 2^63), got {epoch!r}")
        self.epoch = epoch
        self._streams = 0
        self._stalled = 0  # peers in the Stalled state (a gauge)
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()
        self._requests: dict[bytes, _Request] = {}
        self._npending = 0
        self._buffered = 0  # out-of-order envelopes held, all senders
        self._buffered_bytes = 0  # ...and their Envelope.cost
        # node id -> (ids, ring, ring_pos, highest epoch seen) of peers whose state was dropped (kept_dedup)
        self._kept: OrderedDict[bytes, tuple[Any, ...]] = OrderedDict()
        CoreOutputs.__init__(self)
        # slot -> timer entries armed in it (some maybe cancelled); every key is in _slots exactly once
        self._wheel: dict[int, list[Any]] = {}
        self._live: dict[int, int] = {}  # slot -> entries in it still armed; a slot not in here is dead
        self._slots: list[int] = []  # heap of the wheel's slot numbers
        self._fired = 0  # the last slot tick() fired: nothing is ever armed at or before it
        self._fwd_due: dict[bytes, _Peer] = {}  # peers with messages abandoned during this tick
        self._g = cfg.timer_granularity
        self._inv_g = 1.0 / cfg.timer_granularity
        # Hot-path constants: the first timeout is uniform in [rto_lo, rto_lo + rto_span).
        self._rto_lo = cfg.rto_initial * (1.0 - cfg.jitter)
        self._rto_span = 2.0 * cfg.jitter * cfg.rto_initial
        # Least time between two fwds to a peer that an ack or a probe asks for: repeated acks
        # cannot make us flood, yet a lost fwd is replaced well within one retransmission timeout.
        self._fwd_interval = cfg.rto_initial / 2
        self._ack_every = cfg.ack_every
        self._rto_initial = cfg.rto_initial
        self._ack_delay = cfg.ack_delay
        self._dedup_window = cfg.dedup_window
        self._stall_after = cfg.stall_after
        # The longest a live peer we have messages pending for stays silent: it answers every copy it
        # gets, and a copy goes at least every capped, jittered timeout; rto_initial covers the round
        # trip. A peer silent for longer is away (down, cut off): that is no stall (§7.3).
        self._quiet = cfg.rto_max * (1.0 + cfg.jitter) + cfg.rto_initial
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    # -- application side ----------------------------------------------------------

    def can_send(self, dst: bytes) -> bool:
        peer = self._peers.get(dst)
        return peer is None or len(peer.out) < self.config.window

    def send(self, dst: bytes, body: Any, now: float, *, type: str = "msg", msg_id: bytes | None = None,
             confirm: bool = False) -> bytes:
        """Queue a reliable message; returns its id. Raises WindowFull if can_send(dst) is false.

        ``msg_id`` (16 bytes) re-sends a message under the id it had before, e.g. from a durable
        outbox after a restart: the receiver's dedup memory (§6 of protocols/delivery.md) then
        delivers it at most once even if the earlier copy arrived. ``confirm`` asks for an
        :class:`Acked` event once ``dst`` has it (failure is reported as SendFailed either way).
        """
        if type in RESERVED_TYPES:
            raise InvalidArgument(f"message type {type!r} is reserved by the delivery protocol")
        if msg_id is not None and (builtins.type(msg_id) is not bytes or len(msg_id) != ID_LEN):
            raise InvalidArgument(f"msg_id must be {ID_LEN} bytes, got {msg_id!r:.60}")
        peer = self._peers.get(dst)
        if peer is None or len(peer.out) >= self.config.window:
            peer = self._sending_peer(dst)
        else:
            self._peers.move_to_end(dst)
        p = self._transmit(peer, type, body, now, None, msg_id)
        if confirm:
            p[_CONFIRM] = True
        mid: bytes = p[_ENV].id
        return mid

    def request(self, dst: bytes, body: Any, now: float, *, timeout: float, type: str = "req") -> bytes:
        """Send a request; its reply comes as Replied, or RequestFailed. Returns the request (= message) id."""
        if type in RESERVED_TYPES:
            raise InvalidArgument(f"request type {type!r} is reserved by the delivery protocol")
        if not timeout > 0:
            raise InvalidArgument(f"request timeout must be positive, got {timeout!r}")
        if len(self._requests) >= self.config.max_requests:
            self.stats["request_limit"] += 1
            raise TooManyRequests(f"{len(self._requests)} requests already await a reply")
        peer = self._sending_peer(dst)
        deadline = now + timeout
        p = self._transmit(peer, type, body, now, None, None, _ttl_ms(deadline, now))
        rid: bytes = p[_ENV].id
        r = _Request(rid, peer, p, deadline)
        p[_REQ] = r
        if peer.requests is None:
            peer.requests = {}
        peer.requests[rid] = r
        self._requests[rid] = r
        self._arm(r, deadline)
        return rid

    def reply(self, request: Envelope, body: Any, now: float, *, error: bool = False) -> bytes:
        """Answer a delivered request (type "rep", or "err" if ``error``); reliable like send().

        A reply may exceed the window up to twice its size: it answers a request the peer
        already paid window for, and an application must not be made to hold answers back.
        Only a peer that leaves that many replies unacked gets WindowFull here.
        """
        typ = ERROR_TYPE if error else REPLY_TYPE
        peer = self._sending_peer(request.src, 2 * self.config.window)
        mid: bytes = self._transmit(peer, typ, body, now, request.id)[_ENV].id
        return mid

    def cancel_request(self, request_id: bytes) -> None:
        """Stop waiting for a reply; a late one is dropped. The request stays reliable: an unacked one is
        still retransmitted (it was accepted for delivery), but its failure is no longer reported."""
        r = self._requests.pop(request_id, None)
        if r is None:
            return
        self._cancel(r)
        requests = r.peer.requests
        assert requests is not None  # it holds r
        del requests[request_id]
        self.stats["requests_cancelled"] += 1

    def pending(self, dst: bytes | None = None) -> int:
        """Unacked messages to ``dst``, or to everyone."""
        if dst is None:
            return self._npending
        peer = self._peers.get(dst)
        return 0 if peer is None else len(peer.out)

    def buffered(self, src: bytes | None = None) -> tuple[int, int]:
        """(count, bytes) of out-of-order envelopes held from ``src``, or from everyone: accepted, not yet delivered."""
        if src is None:
            return self._buffered, self._buffered_bytes
        peer = self._peers.get(src)
        return (0, 0) if peer is None else (len(peer.buf), peer.buf_bytes)

    def releases(self, env: Envelope) -> tuple[int, int]:
        """(count, bytes) of what ``env`` would hand to the application if it arrived now: itself and the
        out-of-order envelopes it completes. (0, 0) if it would wait in the reorder buffer or is a duplicate.

        A driver that bounds what the application holds admits or refuses ``env`` on this, so the
        envelopes a reorder buffer releases all at once fit its bound too.
        """
        seq = env.seq
        peer = self._peers.get(env.src)
        if seq is None or peer is None or env.ep != peer.in_ep or env.type in RESERVED_TYPES:
            return 1, env.cost  # unsequenced (refused), or the first of a stream: delivered alone
        if seq != peer.cum + 1:
            return 0, 0
        count, cost = 1, env.cost
        buf = peer.buf
        while buf:
            seq += 1
            nxt = buf.get(seq)
            if nxt is None:
                break
            count += 1
            cost += nxt.cost
        return count, cost

    @property
    def stalled_peers(self) -> int:
        """Peers whose stream is stalled now (reported Stalled, no progress since): a gauge."""
        return self._stalled

    def heard(self, src: bytes, now: float) -> None:
        """``src`` sent us something that was not for this core (a membership probe or its answer, a
        lookup): the path from it works now. If our floor to it has gone unanswered (its timer fired
        at least once), send it again at once, as on a repeated ack (§5.3), rather than on a timer
        that backed off while the path was down: after a peer's restart, a healed cut or a relay's
        restart, membership speaks first and the stream's next copy was up to rto_max (+jitter) away
        (bench/chaos.py: a relay down 2.3 s, the stream behind it resumed 5 s after it was back). For
        the watchdog (§7.3) this is the peer talking, like any envelope of ours."""
        peer = self._peers.get(src)
        if peer is None or not peer.out:
            return
        self._talked(peer, now, now - peer.heard_at)
        peer.heard_at = now
        if now - peer.nudged_at >= self._rto_initial:
            self._resend_floor(peer, self._floor(peer), now)

    def ack(self, src: bytes, now: float) -> None:
        """Send ``src`` an ack of its stream to us now (nothing if we hold none).

        For a driver that refused ``src``'s messages for want of room (they reached no core, so no
        ack said anything) and has room again: the ack repeats our cumulative seq, which makes the
        sender resend its floor at once (§5.2) instead of on its backed-off timer. A window update,
        as TCP's receiver sends when its window opens again (RFC 9293 section 3.8.6.2.2)."""
        peer = self._peers.get(src)
        if peer is not None and peer.in_ep is not None:
            self._send_ack(peer, now)

    def stream_state(self, dst: bytes, now: float) -> dict[str, Any]:
        """Both streams with ``dst`` as this core sees them, for a log line when something looks wrong
        (the watchdog's Stalled carries it): our stream (epoch, next seq, pending seqs, how often they
        were sent, what the peer acked and when) and the peer's stream to us (the epoch we hold, its
        cumulative seq, the reorder buffer). Times are seconds before ``now``. O(pending)."""
        peer = self._peers.get(dst)
        if peer is None:
            return {}
        out = peer.out
        tries = [p[_TRIES] for p in out.values()]

        def ago(t: float) -> float | None:
            return None if t == float("-inf") else round(now - t, 3)

        return {
            "ep": peer.ep, "next_seq": peer.next_seq, "window": self.config.window, "pending": len(out),
            "pending_lo": min(out, default=None), "pending_hi": max(out, default=None),
            "sacked": sum(1 for p in out.values() if p[_SACKED]), "timers_armed": sum(1 for p in out.values() if p[_SLOT]),
            "tries_min": min(tries, default=None), "tries_max": max(tries, default=None),
            "rcum": peer.rcum, "fast_hi": peer.fast_hi, "heard_s_ago": ago(peer.heard_at),
            "progress_s_ago": ago(peer.acked_at), "reopened_s_ago": ago(peer.reopen_at),
            "stuck_s": None if peer.stuck is None else round(now - peer.stuck, 3),
            "in_ep": peer.in_ep, "cum": peer.cum, "buffered": len(peer.buf), "buffered_bytes": peer.buf_bytes,
            "buffered_lo": min(peer.buf, default=None), "owed": peer.owed,
        }

    def forget(self, peer: bytes) -> None:
        """Drop all state for a peer (it left or was declared dead); what is in flight to it fails "unreachable"."""
        state = self._peers.pop(peer, None)
        if state is not None:
            self._fail_peer(state, "unreachable")
            self._keep_dedup(state)

    def remember_delivered(self, src: bytes, ids: Iterable[bytes]) -> None:
        """Restore what a previous run of this node delivered from ``src`` (ids, oldest first): they
        enter its dedup memory, so a copy the sender re-sends after our restart is not delivered
        again (protocols/delivery.md §8.1). The driver reads them from durable storage (the
        sidecar's inbound spool) before it receives anything."""
        peer = self._peers.get(src)
        if peer is None:
            peer = self._new_peer(src)
        for mid in ids:
            self._remember(peer, mid)

    # -- network side --------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """Process one envelope whose ``src`` the transport has authenticated. Bad input is counted, never raised."""
        stats = self.stats
        stats["received"] += 1
        ack = env.ack
        if ack is not None and not _ack_ok(ack):
            stats["malformed"] += 1
            return
        typ = env.type
        seq = env.seq
        ep = env.ep
        if typ == ACK_TYPE:
            if ack is None:
                stats["malformed"] += 1
                return
        elif seq is None or ep is None:
            stats["unsequenced"] += 1
            return
        src = env.src
        peers = self._peers
        peer = peers.get(src)
        if peer is None:
            peer = self._new_peer(src)
        else:
            peers.move_to_end(src)
        silent = now - peer.heard_at
        peer.heard_at = now
        if ack is not None and not self._on_ack(peer, ack, now):
            return
        if peer.out and peer.acked_at != now:  # (an envelope that acked progress starts no clock)
            self._talked(peer, now, silent)
        if typ == ACK_TYPE:
            return
        assert seq is not None and ep is not None  # checked above for every type but ack
        if ep != peer.in_ep and not self._enter_epoch(peer, ep):
            pass  # a late frame of an older stream: dropped, but acked, so its sender learns our epoch
        elif typ == FWD_TYPE:
            self._on_fwd(peer, seq)
        else:
            cum = peer.cum
            buf = peer.buf
            if seq == cum + 1:
                self._deliver(peer, env)
                if buf:
                    nxt = buf.pop(seq + 1, None)
                    while nxt is not None:
                        seq += 1
                        self._unbuffered(peer, nxt)
                        self._deliver(peer, nxt)
                        nxt = buf.pop(seq + 1, None)
                peer.cum = seq
            elif seq <= cum:
                stats["duplicates"] += 1
            elif seq in buf:
                stats["duplicates"] += 1
                buf[seq] = buf.pop(seq)  # newest again, so the next ack's selective list reports it
            elif seq - cum > self.config.reorder_limit or len(buf) >= self.config.reorder_limit:
                stats["reorder_overflow"] += 1  # dropped, in no ack: the sender retransmits it later
            elif (buf and peer.buf_bytes + env.cost > self.config.reorder_bytes) or (
                    self._buffered and self._buffered_bytes + env.cost > self.config.reorder_bytes_total):
                stats["reorder_bytes_full"] += 1  # likewise
            else:
                buf[seq] = env
                peer.buf_bytes += env.cost
                self._buffered += 1
                self._buffered_bytes += env.cost
                stats["out_of_order"] += 1
        owed = peer.owed + 1
        peer.owed = owed
        if owed >= self._ack_every:
            self._send_ack(peer, now)
        elif owed == 1:
            self._arm(peer, now + self._ack_delay)

    def tick(self, now: float) -> None:
        """Fire every timer due by ``now``: retransmits, give-ups, request deadlines, delayed acks, fwds,
        the stall watchdog."""
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
                    if e[_SLOT] == k:
                        e[_SLOT] = 0
                        self._retransmit(e, now)
                elif e.slot == k:
                    e.slot = 0
                    kind = e.kind
                    if kind == _ACK:
                        if e.owed:
                            self._send_ack(e, now)
                    elif kind == _WATCH:
                        self._watchdog(e, now)
                    else:
                        self._deadline(e)
        if self._fwd_due:
            # One fwd per peer for all the messages abandoned in this tick.
            for peer in self._fwd_due.values():
                if self._peers.get(peer.id) is peer and self._floor(peer) > peer.rcum + 1:
                    self._send_fwd(peer, now)
            self._fwd_due.clear()

    def next_timer(self) -> float | None:
        """When tick() must next run (the end of the earliest slot with a live timer), or None."""
        slots = self._slots
        live = self._live
        while slots and slots[0] not in live:
            del self._wheel[heapq.heappop(slots)]
        return slots[0] * self._g if slots else None

    # -- sending -------------------------------------------------------------------

    def _sending_peer(self, dst: bytes, limit: int = 0) -> _Peer:
        peer = self._peers.get(dst)
        if peer is None:
            return self._new_peer(dst)
        self._peers.move_to_end(dst)
        if len(peer.out) >= (limit or self.config.window):
            peer.blocked = True
            self.stats["window_full"] += 1
            raise WindowFull(f"{len(peer.out)} messages to {dst.hex()[:12]} are unacked (window {self.config.window})")
        return peer

    def _transmit(self, peer: _Peer, typ: str, body: Any, now: float, re: bytes | None,
                  msg_id: bytes | None = None, ttl: int = 0) -> list[Any]:
        """Sequence, send and arm the retransmit timer of one new reliable message (the hot path)."""
        rng = self._rng
        seq = peer.next_seq
        peer.next_seq = seq + 1
        env = Envelope(msg_id or rng.getrandbits(128).to_bytes(16, "big"), self.node_id, typ, body, peer.id,
                       int(now * 1000), ttl, seq, peer.ep, re, self._piggyback(peer) if peer.owed else None)
        k = int((now + self._rto_lo + self._rto_span * rng.random()) * self._inv_g) + 1
        if k <= self._fired:
            k = self._fired + 1
        p = [k, env, peer, seq, 0, None, False, False]
        peer.out[seq] = p
        lst = self._wheel.get(k)
        if lst is None:
            self._wheel[k] = [p]
            self._live[k] = 1
            heapq.heappush(self._slots, k)
        else:
            lst.append(p)
            self._live[k] = self._live.get(k, 0) + 1  # the slot may be dead, not yet reaped: revive it
        self._npending += 1
        self._out.append(env)
        self.stats["sent"] += 1
        return p

    def _retransmit(self, p: list[Any], now: float) -> None:
        """A pending message's timer fired: retransmit it, probe for a stalled receiver, or give up."""
        cfg = self.config
        tries = p[_TRIES] + 1
        if p[_SACKED]:
            peer = p[_PEER]
            if p[_SEQ] == peer.rcum + 1:
                # The receiver waits for what it had acked: it lost what it buffered (it restarted or
                # evicted us). Every other mark came from that same lost buffer: clear them all, or each
                # would wait for its own timer to find itself at rcum + 1, one message per rto_max.
                p[_SACKED] = False
                self._renege(peer, now)
            elif self._floor(peer) < p[_SEQ]:
                # The receiver holds it behind a hole that a lower pending message will fill or, once
                # abandoned, a fwd will skip: wait, without spending retries.
                p[_SLOT] = self._arm_slot(p, now + self._jittered(cfg.rto_max))
                return
            else:
                # It is the floor and every hole below it was abandoned: probe with fwds until the
                # cumulative ack covers it, or the retries run out.
                if tries > cfg.max_retries:
                    self._give_up(p)
                    return
                if now - peer.fwd_at >= self._fwd_interval:
                    self._send_fwd(peer, now)
                p[_TRIES] = tries
                p[_SLOT] = self._arm_slot(p, now + self._jittered(cfg.timeout(tries)))
                return
        if tries > cfg.max_retries:
            self._give_up(p)
            return
        p[_TRIES] = tries
        p[_SLOT] = self._arm_slot(p, now + self._jittered(cfg.timeout(tries)))
        env = p[_ENV]
        r = p[_REQ]
        if r is not None:
            # A request's copy says how long its requester still waits, as of this copy (a new object:
            # one already handed out is never changed). Its piggybacked ack may be stale: harmless,
            # acks are cumulative.
            env = p[_ENV] = Envelope(env.id, env.src, env.type, env.body, env.dst, int(now * 1000),
                                     _ttl_ms(r.deadline, now), env.seq, env.ep, env.re, env.ack)
        self._out.append(env)
        self.stats["retransmits"] += 1

    def _renege(self, peer: _Peer, now: float) -> None:
        """The peer no longer holds what it selectively acked: unmark every other pending message to it
        and resend each on its current timeout, as an unacked one (RFC 2018 section 8: after a
        retransmit timeout the sender turns its SACK marks off). The caller resends its own entry."""
        cfg = self.config
        n = 1  # the caller's
        for q in peer.out.values():
            if not q[_SACKED]:
                continue
            q[_SACKED] = False
            n += 1
            if q[_SLOT]:
                self._disarm(q[_SLOT])
            q[_SLOT] = self._arm_slot(q, now + self._jittered(cfg.timeout(q[_TRIES] + 1)))
        self.stats["reneged"] += n

    def _jittered(self, timeout: float) -> float:
        return timeout * (1.0 + self.config.jitter * (2.0 * self._rng.random() - 1.0))

    def _give_up(self, p: list[Any]) -> None:
        """Retries exhausted: the message fails as "unreachable"."""
        peer = p[_PEER]
        mid = p[_ENV].id
        r = p[_REQ]
        self._abandon(p)
        if r is None:
            self.stats["send_failed"] += 1
            self._events.append(SendFailed(mid, peer.id, "unreachable"))
        elif self._requests.pop(r.id, None) is not None:  # else it was answered, cancelled or timed out already
            del peer.requests[r.id]
            self._cancel(r)
            self.stats["requests_failed"] += 1
            self._events.append(RequestFailed(r.id, peer.id, "unreachable"))

    def _abandon(self, p: list[Any]) -> None:
        """Stop sending a pending message; the end of the tick sends a fwd so the receiver skips it."""
        peer = p[_PEER]
        del peer.out[p[_SEQ]]
        self._settle(p)
        self._npending -= 1
        self.stats["abandoned"] += 1
        self._fwd_due[peer.id] = peer
        self._window_check(peer)

    def _settle(self, p: list[Any]) -> None:
        """A message left ``out`` (acked, abandoned or failed): drop its timer and its envelope."""
        if p[_SLOT]:
            self._disarm(p[_SLOT])
            p[_SLOT] = 0
        p[_ENV] = None

    def _window_check(self, peer: _Peer) -> None:
        if peer.blocked and len(peer.out) < self.config.window:
            peer.blocked = False
            self._events.append(WindowOpen(peer.id))

    def _floor(self, peer: _Peer) -> int:
        """The lowest seq still being retransmitted (next_seq if none): the receiver may skip any hole below it."""
        low = peer.low
        out = peer.out
        end = peer.next_seq
        while low < end and low not in out:
            low += 1
        peer.low = low
        return low

    def _send_fwd(self, peer: _Peer, now: float) -> None:
        """Tell the peer the lowest seq we still send: it skips every hole below."""
        peer.fwd_at = now
        ack = self._piggyback(peer) if peer.owed else None
        self._out.append(Envelope(self._rng.getrandbits(128).to_bytes(16, "big"), self.node_id, FWD_TYPE, None,
                                  peer.id, int(now * 1000), 0, self._floor(peer), peer.ep, None, ack))
        self.stats["fwd_sent"] += 1

    def _on_ack(self, peer: _Peer, ack: list[Any], now: float) -> bool:
        """Apply a peer's ack of our stream. False if it acknowledges what we never sent (drop the envelope)."""
        ep = ack[0]
        if ep != peer.ep:
            if ep < peer.ep:
                self.stats["acks_stale"] += 1  # about an older stream of ours: nothing pending belongs to it
                return True
            # The peer holds a newer stream of ours than this one (opened by an earlier run of this node,
            # whose clock was ahead, or with a random base) and drops this one as stale: move above it.
            if ep >= EPOCH_MOD - 2 * REOPEN_GAP:
                self.stats["malformed"] += 1  # no room above it: only a hostile peer says so
                return False
            if now - peer.reopen_at >= self.config.rto_initial:  # one renumbering per rto, however many acks
                self._reopen(peer, ep + REOPEN_GAP + self._rng.randrange(REOPEN_GAP), now)
            return True
        cum = ack[1]
        end = peer.next_seq
        if cum >= end:
            self.stats["malformed"] += 1
            return False
        out = peer.out
        n0 = len(out)
        low = peer.low
        if cum >= low:
            if n0:
                for s in range(low, cum + 1):
                    p = out.pop(s, None)
                    if p is not None:
                        if p[_CONFIRM]:
                            self._events.append(Acked(p[_ENV].id, peer.id))
                        self._settle(p)
            peer.low = cum + 1
            acked = n0 - len(out)
            if acked:
                peer.acked_at = now
                peer.stuck = None  # progress: the stall clock starts again when the peer next talks to us
                if peer.stalled:
                    peer.stalled = False
                    self._stalled -= 1
                self._npending -= acked
                if peer.blocked:
                    self._window_check(peer)
        if n0:
            for s in ack[2]:
                p = out.get(s)
                if p is not None:
                    p[_SACKED] = True
        if cum > peer.rcum:
            if n0 and out:
                self._fast_retransmit(peer, max(cum, peer.fast_hi) + 1, now)
            peer.rcum = cum
        elif cum == peer.rcum and out and now - peer.nudged_at >= self._rto_initial:
            self._resend_floor(peer, self._floor(peer), now)
        c1 = cum + 1
        if c1 < end and c1 not in out and now - peer.fwd_at >= self._fwd_interval:
            # This ack waits for a seq we no longer send: it was abandoned, the receiver lost its state,
            # or the ack is stale (reordered; then the fwd is a harmless no-op). Say where the stream goes on.
            self._send_fwd(peer, now)
        return True

    def _resend_floor(self, peer: _Peer, seq: int, now: float) -> None:
        """An ack of the current epoch repeats the cumulative seq while ``seq`` (the floor) is pending:
        the peer answers, but still lacks the floor. If the floor's own timer has fired at least once
        (its first copy got no ack in time) and it is not selectively acked, send it again now, with
        the run of such messages after it (at most ``ack_every``), at most once per ``rto_initial``
        per peer; timers untouched.

        Without this a floor lost again and again, or refused by a receiver whose application was not
        reading yet, waited for its backed-off timer (up to rto_max) each time while the peer kept
        acking the rest: 10 s without progress at 40 % loss in the chaos tests, and after a sidecar's
        restart (its inbox full until its local API started) the stream waited 3-6 s per refusal
        (bench/chaos.py seed 35: the stall watchdog fired). The peer's own acks pace these copies,
        like TCP's fast retransmission on duplicate acks (RFC 5681 section 3.2)."""
        p = peer.out.get(seq)
        if p is None or p[_SACKED] or not p[_TRIES]:
            return
        peer.nudged_at = now
        self._resend_run(peer, seq, now, "floor_resends")

    def _fast_retransmit(self, peer: _Peer, seq: int, now: float) -> None:
        """The cumulative ack advanced: send again, at once, the run of pending messages from ``seq`` on
        that were already retransmitted once (their first copy got no ack in time) and are not
        selectively acked, at most ``ack_every`` of them.

        A receiver whose reorder buffer is full drops what arrives beyond it, unacknowledged (§6): after
        the hole that filled it is repaired, those messages are next in line but would wait for their
        backed-off timers (up to rto_max each, spending their retries), and a full window of them kept
        a stream crawling for minutes once the reorder buffer was bounded in bytes (bench/chaos.py).
        Sent in order right after the progress, the receiver delivers them at once. A message still
        on its first timer is in flight, not lost: it is left alone, so a healthy stream sends nothing
        twice. Each seq is sent this way once per stream (``fast_hi``); its timer stays as it was."""
        last = self._resend_run(peer, seq, now, "fast_retransmits")
        if last:
            peer.fast_hi = last

    def _resend_run(self, peer: _Peer, seq: int, now: float, stat: str) -> int:
        """Send again the run of pending messages from ``seq`` on that were retransmitted already and
        are not selectively acked, at most ``ack_every``; the last seq sent (0 if none). Timers untouched."""
        out = peer.out
        first = seq
        for _ in range(self._ack_every):
            p = out.get(seq)
            if p is None or p[_SACKED] or not p[_TRIES]:
                break
            env = p[_ENV]
            r = p[_REQ]
            if r is not None:  # a request's copy says how long its requester still waits (§8.2)
                env = p[_ENV] = Envelope(env.id, env.src, env.type, env.body, env.dst, int(now * 1000),
                                         _ttl_ms(r.deadline, now), env.seq, env.ep, env.re, env.ack)
            self._out.append(env)
            seq += 1
        self.stats[stat] += seq - first
        return seq - 1 if seq > first else 0

    # -- receiving -----------------------------------------------------------------

    def _enter_epoch(self, peer: _Peer, ep: int) -> bool:
        """A sequenced envelope from an epoch we are not in: a newer stream (higher epoch), which
        replaces the one we hold, or a late packet of an older one (lower epoch), which is stale."""
        old = peer.in_ep
        if old is not None:
            if ep < old:
                self.stats["stale_epoch"] += 1
                return False
            self.stats["epoch_resets"] += 1
            self._discard_buffer(peer)
        peer.in_ep = ep
        peer.cum = 0
        return True

    def _on_fwd(self, peer: _Peer, floor: int) -> None:
        """The sender no longer sends anything below ``floor`` that we lack: deliver around the holes."""
        self.stats["fwd_received"] += 1
        cum = peer.cum
        if floor - 1 <= cum:
            return
        buf = peer.buf
        below = sorted(s for s in buf if s < floor)
        for s in below:
            env = buf.pop(s)
            self._unbuffered(peer, env)
            self._deliver(peer, env)
        self.stats["skipped"] += floor - 1 - cum - len(below)
        cum = floor - 1
        nxt = buf.pop(cum + 1, None)
        while nxt is not None:
            cum += 1
            self._unbuffered(peer, nxt)
            self._deliver(peer, nxt)
            nxt = buf.pop(cum + 1, None)
        peer.cum = cum

    def _unbuffered(self, peer: _Peer, env: Envelope) -> None:
        """Account for an envelope just taken out of ``peer``'s reorder buffer."""
        peer.buf_bytes -= env.cost
        self._buffered -= 1
        self._buffered_bytes -= env.cost

    def _discard_buffer(self, peer: _Peer) -> None:
        """Throw away ``peer``'s reorder buffer (a new epoch, or its state is dropped)."""
        self.stats["buffer_discarded"] += len(peer.buf)
        self._buffered -= len(peer.buf)
        self._buffered_bytes -= peer.buf_bytes
        peer.buf.clear()
        peer.buf_bytes = 0

    def _deliver(self, peer: _Peer, env: Envelope) -> None:
        """Hand an in-order envelope to the application, unless its id was delivered recently."""
        if not self._remember(peer, env.id):
            self.stats["duplicates"] += 1
            return
        typ = env.type
        if typ == REPLY_TYPE or typ == ERROR_TYPE:
            self._on_reply(peer, env)
        else:
            self.stats["delivered"] += 1
            self._events.append(Delivered(env))

    def _remember(self, peer: _Peer, mid: bytes) -> bool:
        """Add a delivered id to the peer's dedup memory (the oldest beyond dedup_window is forgotten);
        False if it is already there."""
        ids = peer.ids
        if ids is None:
            ids = peer.ids = set()
        elif mid in ids:
            return False
        ids.add(mid)
        ring = peer.ring
        if len(ring) < self._dedup_window:
            ring.append(mid)
        else:
            pos = peer.ring_pos
            ids.discard(ring[pos])
            ring[pos] = mid
            peer.ring_pos = (pos + 1) % len(ring)
        return True

    def _on_reply(self, peer: _Peer, env: Envelope) -> None:
        r = peer.requests.pop(env.re, None) if peer.requests and env.re is not None else None
        if r is None:
            self.stats["replies_unmatched"] += 1  # late (timed out, cancelled) or never asked of this peer
            return
        del self._requests[r.id]
        self._cancel(r)
        self.stats["replies"] += 1
        self._events.append(Replied(r.id, env))

    def _deadline(self, r: _Request) -> None:
        """The request's deadline passed: fail it, and stop retransmitting it if it is still unacked."""
        del self._requests[r.id]
        requests = r.peer.requests
        assert requests is not None  # it holds r
        del requests[r.id]
        if r.pending[_ENV] is not None:
            self._abandon(r.pending)
        self.stats["requests_timed_out"] += 1
        self._events.append(RequestFailed(r.id, r.peer.id, "timeout"))

    def _piggyback(self, peer: _Peer) -> list[Any]:
        """The ack of the peer's stream, to ride on an envelope going to it anyway; settles what is owed."""
        peer.owed = 0
        self._cancel(peer)
        self.stats["acks_piggybacked"] += 1
        return self._ack_state(peer)

    def _ack_state(self, peer: _Peer) -> list[Any]:
        buf = peer.buf
        if not buf:
            return [peer.in_ep, peer.cum, []]
        sack_max = self.config.sack_max
        if len(buf) > sack_max:
            self.stats["sack_truncated"] += 1
        return [peer.in_ep, peer.cum, list(islice(reversed(buf), sack_max))]

    def _send_ack(self, peer: _Peer, now: float) -> None:
        peer.owed = 0
        self._cancel(peer)
        self._out.append(Envelope(self._rng.getrandbits(128).to_bytes(16, "big"), self.node_id, ACK_TYPE, None,
                                  peer.id, int(now * 1000), ack=self._ack_state(peer)))
        self.stats["acks_sent"] += 1

    # -- bookkeeping -----------------------------------------------------------------

    def _new_peer(self, pid: bytes) -> _Peer:
        peers = self._peers
        if len(peers) >= self.config.max_peers:
            _, old = peers.popitem(last=False)
            self.stats["peers_evicted"] += 1
            self._fail_peer(old, "evicted")
            self._keep_dedup(old)
        peer = _Peer(pid, self._next_epoch())
        peers[pid] = peer
        kept = self._kept.pop(pid, None) if self._kept else None
        if kept is not None:
            # The same sender again (restarted, or back after being declared dead): what it re-sends
            # from before is still recognised, and its older epochs cannot reset the new stream. The
            # stream we held goes on from cum 0, as if we had lost its state (§7.2).
            peer.ids, peer.ring, peer.ring_pos, peer.in_ep = kept
            self.stats["dedup_restored"] += 1
        return peer

    def _next_epoch(self) -> int:
        """The epoch of the next stream this instance opens: base + the streams opened so far."""
        ep = self.epoch + self._streams
        self._streams += 1
        return ep if ep < EPOCH_MOD else EPOCH_MOD - 1

    def _keep_dedup(self, peer: _Peer) -> None:
        """Remember a dropped peer's delivered ids (and its epoch) for when it comes back."""
        limit = self.config.kept_dedup
        if not peer.ids or not limit:
            return
        kept = self._kept
        kept[peer.id] = (peer.ids, peer.ring, peer.ring_pos, peer.in_ep)
        kept.move_to_end(peer.id)
        while len(kept) > limit:
            kept.popitem(last=False)

    def _fail_peer(self, peer: _Peer, reason: str) -> None:
        """Fail everything in flight to a peer whose state is being dropped, and disarm its timers."""
        events = self._events
        for p in peer.out.values():
            if p[_REQ] is None:
                self.stats["send_failed"] += 1
                events.append(SendFailed(p[_ENV].id, peer.id, reason))
            self._settle(p)
        self._npending -= len(peer.out)
        self.stats["abandoned"] += len(peer.out)
        peer.out.clear()
        for r in (peer.requests or {}).values():
            self._cancel(r)
            del self._requests[r.id]
            self.stats["requests_failed"] += 1
            events.append(RequestFailed(r.id, peer.id, reason))
        peer.requests = None
        self._cancel(peer)
        if peer.watch is not None:
            self._cancel(peer.watch)
        if peer.stalled:
            peer.stalled = False
            self._stalled -= 1
        if peer.blocked:
            events.append(WindowOpen(peer.id))  # can_send() is true again: the state is gone
        self._discard_buffer(peer)

    def _talked(self, peer: _Peer, now: float, silent: float) -> None:
        """The peer talks to us, after ``silent`` seconds, while our messages to it are pending: our
        stream must progress from now on. A peer back from a silence longer than a live one keeps was
        away: its stall clock starts afresh."""
        if self._stall_after and (peer.stuck is None or silent > self._quiet):
            self._start_stall_clock(peer, now)

    def _start_stall_clock(self, peer: _Peer, now: float) -> None:
        """The peer talks to us while our messages to it are unacked: from now on they must progress."""
        peer.stuck = now
        watch = peer.watch
        if watch is None:
            watch = peer.watch = _Watch(peer)
        if not watch.slot:
            watch.slot = self._arm_slot(watch, now + self._stall_after)

    def _watchdog(self, watch: _Watch, now: float) -> None:
        """The watchdog timer fired: report and reopen a stream that made no progress for stall_after."""
        peer = watch.peer
        stuck = peer.stuck
        if stuck is None or self._peers.get(peer.id) is not peer:
            return  # it progressed (the clock restarts when the peer next talks to us), or was dropped
        if not peer.out or now - peer.heard_at > self._quiet:
            peer.stuck = None  # nothing pending, or the peer fell silent: its clock restarts when it talks
            return
        due = stuck + self._stall_after
        if now < due:
            watch.slot = self._arm_slot(watch, due)
            return
        if not peer.stalled:
            peer.stalled = True
            self._stalled += 1
            self.stats["stalls"] += 1
            self._events.append(Stalled(peer.id, len(peer.out), now - stuck, self.stream_state(peer.id, now)))
        # Whatever the cause (the receiver holds a stream we cannot see, a state we cannot repair from
        # here), a stream with an epoch it has never seen starts it afresh at seq 1 (§3).
        self._reopen(peer, max(self._next_epoch(), peer.ep + 1), now)
        self._start_stall_clock(peer, now)

    def _reopen(self, peer: _Peer, ep: int, now: float) -> None:
        """Move our stream to ``peer`` to epoch ``ep``: the pending messages, in their order, become
        seq 1, 2, ... of it (same ids, bodies and retry counts) and go out again at once (a request
        with a fresh ``ts`` and ``ttl``, §8.2)."""
        peer.ep = ep
        peer.reopen_at = now
        old, peer.out = peer.out, {}
        out = peer.out
        ack = self._piggyback(peer) if peer.owed else None
        seq = 0
        for p in old.values():  # insertion order is seq order
            seq += 1
            env = p[_ENV]
            r = p[_REQ]
            if r is None:
                new = Envelope(env.id, self.node_id, env.type, env.body, peer.id, env.ts, env.ttl, seq, ep, env.re,
                               ack)
            else:  # a request's copy says how long its requester still waits, as on a retransmission
                new = Envelope(env.id, self.node_id, env.type, env.body, peer.id, int(now * 1000),
                               _ttl_ms(r.deadline, now), seq, ep, env.re, ack)
            ack = None
            p[_ENV] = new
            p[_SEQ] = seq
            p[_SACKED] = False  # the receiver drops what it buffered of the old stream
            if p[_SLOT]:
                self._disarm(p[_SLOT])
            p[_SLOT] = self._arm_slot(p, now + self._jittered(self.config.timeout(p[_TRIES])))
            out[seq] = p
            self._out.append(new)
        self.stats["retransmits"] += seq
        peer.next_seq = seq + 1
        peer.low = 1
        peer.rcum = 0
        peer.fast_hi = 0
        peer.fwd_at = float("-inf")
        self.stats["stream_reopens"] += 1

    def _arm(self, entry: _Request | _Peer | _Watch, t: float) -> None:
        """(Re)arm an object timer entry to fire at ``t``."""
        if entry.slot:
            self._disarm(entry.slot)
        entry.slot = self._arm_slot(entry, t)

    def _cancel(self, entry: _Request | _Peer | _Watch) -> None:
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
