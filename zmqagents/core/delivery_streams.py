"""The per-peer records of the reliable delivery core, and the checks and figures taken from them.

A :class:`Peer` holds both streams with one peer (ours to it, its to us); a pending message is a plain
list indexed by the constants below; :class:`PendingRequest` and :class:`Watch` are timer entries of the
core's wheel (:mod:`zmqagents.core.delivery_timers`). These are data: what changes them, and when, is
the core's business (:mod:`zmqagents.core.delivery` receives, :mod:`zmqagents.core.delivery_retransmit`
moves our stream on, :mod:`zmqagents.core.delivery_watchdog` watches it).
"""

from __future__ import annotations

import math
from typing import Any

from ..envelope import Envelope
from .delivery_config import MAX_SACK_ACCEPTED


# A pending message is a plain list (the hot path allocates one per message; a list is ~4x cheaper
# to build than a slotted object):
#   [slot, envelope, peer, seq, transmissions so far - 1, request or None, selectively acked, confirm]
# slot 0 = no timer armed; envelope None = acked or dropped (frees the body if the wheel entry lingers).
# A selectively acked message stays pending (but is not retransmitted) until the cumulative ack covers
# it: the receiver holds it behind a hole and may still lose it, so it is not yet known delivered.
# confirm: report Acked when the cumulative ack covers it (send(confirm=True)).
SLOT, ENV, PEER, SEQ, TRIES, REQ, SACKED, CONFIRM = range(8)

# Kinds of the object timer entries (each has a ``kind`` class attribute and a ``slot``).
DEADLINE_TIMER, ACK_TIMER, WATCH_TIMER = 1, 2, 3


class PendingRequest:
    """A request awaiting its reply; also its deadline timer."""

    __slots__ = ("slot", "id", "peer", "pending", "deadline")
    kind = DEADLINE_TIMER

    def __init__(self, rid: bytes, peer: "Peer", pending: list[Any], deadline: float):
        self.slot = 0
        self.id = rid
        self.peer = peer
        self.pending = pending
        self.deadline = deadline  # on our clock; each copy sent carries the time left as its ttl


class Watch:
    """The stall watchdog timer of one peer (allocated the first time the peer has to be watched)."""

    __slots__ = ("slot", "peer")
    kind = WATCH_TIMER

    def __init__(self, peer: "Peer"):
        self.slot = 0
        self.peer = peer


class Peer:
    """Both directions of our relationship with one peer; itself the timer entry of its delayed ack.

    Thousands of these exist in a large simulation, so what only some peers need
    (requests, the watchdog, dedup memory) is allocated on first use.
    """

    __slots__ = (
        "id", "ep", "next_seq", "low", "rcum", "out", "blocked", "requests", "fwd_at", "reopen_at", "fast_hi",
        "stuck", "watch", "stalled", "heard_at", "acked_at", "nudged_at", "in_ep", "cum", "buf", "buf_bytes", "owed", "slot", "ids", "ring", "ring_pos",
    )
    kind = ACK_TIMER

    def __init__(self, pid: bytes, ep: int):
        self.id = pid
        # -- our stream to the peer
        self.ep = ep
        self.next_seq = 1
        self.low = 1  # every seq below this is acked or abandoned (a lower bound of the lowest pending seq)
        self.rcum = 0  # highest cumulative seq the peer has acked on this stream
        self.out: dict[int, list[Any]] = {}  # seq -> pending entry, unacked messages in seq order
        self.blocked = False  # WindowFull was raised: report WindowOpen when there is room again
        self.requests: dict[bytes, PendingRequest] | None = None
        self.fwd_at = float("-inf")  # when we last sent this peer a fwd (rate limit)
        self.reopen_at = float("-inf")  # when the peer's ack last made us reopen the stream (rate limit)
        self.fast_hi = 0  # the highest seq sent again by a fast retransmission (not sent again that way)
        # Since when the peer has been talking to us while our stream to it made no progress (no
        # cumulative ack), or None: the stall watchdog's clock.
        self.stuck: float | None = None
        self.watch: Watch | None = None
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


def ttl_ms(deadline: float, now: float) -> int:
    """A request's ``ttl``: whole milliseconds from ``now`` to ``deadline``, rounded up, at least 1, so a
    receiver never thinks it has less time than the requester gives it (protocols/delivery.md §8.2)."""
    return max(1, math.ceil((deadline - now) * 1000))


def ack_ok(ack: object) -> bool:
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



def stream_state(peer: Peer, now: float, window: int) -> dict[str, Any]:
    """Both streams with ``peer`` as the core sees them, for a log line when something looks wrong:
    our stream (epoch, next seq, pending seqs, how often they were sent, what the peer acked and when)
    and the peer's stream to us (the epoch we hold, its cumulative seq, the reorder buffer). Times are
    seconds before ``now``. O(pending)."""
    out = peer.out
    tries = [p[TRIES] for p in out.values()]

    def ago(t: float) -> float | None:
        return None if t == float("-inf") else round(now - t, 3)

    return {
        "ep": peer.ep, "next_seq": peer.next_seq, "window": window, "pending": len(out),
        "pending_lo": min(out, default=None), "pending_hi": max(out, default=None),
        "sacked": sum(1 for p in out.values() if p[SACKED]), "timers_armed": sum(1 for p in out.values() if p[SLOT]),
        "tries_min": min(tries, default=None), "tries_max": max(tries, default=None),
        "rcum": peer.rcum, "fast_hi": peer.fast_hi, "heard_s_ago": ago(peer.heard_at),
        "progress_s_ago": ago(peer.acked_at), "reopened_s_ago": ago(peer.reopen_at),
        "stuck_s": None if peer.stuck is None else round(now - peer.stuck, 3),
        "in_ep": peer.in_ep, "cum": peer.cum, "buffered": len(peer.buf), "buffered_bytes": peer.buf_bytes,
        "buffered_lo": min(peer.buf, default=None), "owed": peer.owed,
    }
