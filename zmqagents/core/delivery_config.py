"""Tuning and wire constants of the reliable delivery core (:mod:`zmqagents.core.delivery`).

The message types the protocol reserves, the bounds on epochs and selective acks a peer may send
(``protocols/delivery.md``), the counters every delivery core keeps, and :class:`DeliveryConfig`
with the reason for each default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import InvalidArgument

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
    "floor_resends", "dedup_dropped",
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
    # Ids remembered over all senders, live and kept (~90 B each: 65,536 ~ 6 MB, sixteen full memories).
    # dedup_window alone lets each of max_peers senders pin ~370 KB (GBs in all: one host can make
    # thousands of keys); beyond this the memory of the sender that delivered least recently is dropped
    # whole. That sender is the one least likely to re-send: what is at risk after a crash is its last
    # unconfirmed messages, and those were delivered recently.
    dedup_total: int = 1 << 16
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
                     "reorder_bytes_total", "dedup_window", "dedup_total",
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

