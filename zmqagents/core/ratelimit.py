"""Token buckets, and per-peer rate limits built from them (sans-IO: every call takes ``now``).

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second; taking what it does
not hold is refused. :class:`PeerLimiter` keeps two buckets per peer, one counted in messages and
one in bytes, so a peer that floods is slowed down to ``rate`` without starving anyone else: it
is the receive path's first check, before a frame is decoded, so an over-rate message costs a
length comparison, not a decode.

The bytes bucket is charged in two steps. Before decoding, the frame's length must be covered
(a frame is refused when the bucket holds less); after decoding, what the envelope turned out
to cost beyond its length and the envelope's fixed part (``Envelope.cost``: the Python objects its
body built) is charged too, and
may leave the bucket in debt. A peer sending payloads that decode into many small objects
thus spends its allowance as fast as the memory and CPU they take, not as their wire size.

A refused message is dropped unacknowledged: a well-behaved sender retransmits it later (the
delivery protocol's backoff), so a refusal defers rather than loses what it was sent.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from ..errors import InvalidArgument


class TokenBucket:
    """``tokens`` at time ``at``; refilled lazily, on the next call, from the time that passed."""

    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float):
        self.tokens = tokens
        self.at = at

    def refill(self, now: float, rate: float, burst: float) -> float:
        """Bring the bucket to ``now`` and return what it holds (negative while in debt)."""
        if now > self.at:
            self.tokens = min(burst, self.tokens + (now - self.at) * rate)
            self.at = now
        return self.tokens

    def take(self, now: float, rate: float, burst: float, amount: float = 1.0) -> bool:
        """Take ``amount`` if the bucket holds it; otherwise take nothing and return False."""
        if self.refill(now, rate, burst) < amount:
            return False
        self.tokens -= amount
        return True


@dataclass
class RateLimitConfig:
    """Per-peer limits of what a node accepts. Generous: an honest peer never meets them in normal work.

    A bucket's burst is what a peer that was quiet may send at once; ``byte_burst`` must hold the
    largest envelope (a frame larger than the burst could never pass).
    """

    # Messages a second per peer: above what one node handles from all its peers together (~40k/s for a
    # Node, ~4k/s for a sidecar that writes each batch to its inbound spool), so that one honest heavy peer
    # is held back by the node's speed, not by this limit (bench/throughput.py: the former 10,000 capped
    # one sender at 10k/s). Sharing the node among several peers is not this limit's job: the inbox
    # decodes one frame of each waiting peer in turn, each peer holds at most half of the read backlog,
    # and a batch answers the other peers before it stores a flooder's messages (transport/backlog.py,
    # shell/loop.py), which is fair whatever the node's speed, where a fixed rate is either too low for
    # one peer or too high for many. Over-rate frames are dropped where they enter the read backlog.
    messages: float = 50_000.0
    message_burst: float = 50_000.0
    # Bytes a second per peer: the wire size, plus what the body decoded into (Envelope.cost without the
    # envelope's own fixed part). 8 MiB/s lets ~30k small messages through (the message limit binds
    # first) but only ~5 bodies of 16,384 values, which take a few ms each to count and decode; a burst
    # of one second's worth keeps what one peer can make the node do at once to a few tens of ms.
    bytes: float = 8 * 2**20
    byte_burst: float = 8 * 2**20
    max_peers: int = 4096  # peers whose buckets are remembered (LRU); a forgotten one starts full

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgument(f"RateLimitConfig.{f.name} must be a positive number, got {value!r}")
        if self.message_burst < 1:
            raise InvalidArgument("RateLimitConfig.message_burst must be at least 1 (one message)")


class _Peer:
    __slots__ = ("messages", "bytes")

    def __init__(self, cfg: RateLimitConfig, now: float):
        self.messages = TokenBucket(cfg.message_burst, now)
        self.bytes = TokenBucket(cfg.byte_burst, now)


RATE_LIMIT_STATS = ("admitted", "refused_messages", "refused_bytes", "charged_bytes", "peers_forgotten")


class PeerLimiter:
    """Messages/s and bytes/s per peer, for the receive path. Memory: ``max_peers`` small entries."""

    def __init__(self, config: RateLimitConfig | None = None):
        self.config = config or RateLimitConfig()
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()
        self.stats: dict[str, int] = dict.fromkeys(RATE_LIMIT_STATS, 0)

    def admit(self, peer: bytes, size: int, now: float) -> str | None:
        """Take one message of ``size`` bytes from ``peer``'s buckets: None if admitted, else the reason
        (``rate_messages`` or ``rate_bytes``). A refusal takes nothing from either bucket."""
        cfg = self.config
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer(cfg, now)
            if len(self._peers) > cfg.max_peers:
                self._peers.popitem(last=False)
                self.stats["peers_forgotten"] += 1
        else:
            self._peers.move_to_end(peer)
        if state.messages.refill(now, cfg.messages, cfg.message_burst) < 1.0:
            self.stats["refused_messages"] += 1
            return "rate_messages"
        if not state.bytes.take(now, cfg.bytes, cfg.byte_burst, size):
            self.stats["refused_bytes"] += 1
            return "rate_bytes"
        state.messages.tokens -= 1.0
        self.stats["admitted"] += 1
        return None

    def charge(self, peer: bytes, amount: int) -> None:
        """Charge ``peer``'s bytes bucket ``amount`` more (what a decoded envelope cost beyond its size).

        The bucket may go into debt: the peer's next messages wait until it is paid back.
        """
        state = self._peers.get(peer)
        if state is not None and amount > 0:
            state.bytes.tokens -= amount
            self.stats["charged_bytes"] += amount

    def in_debt(self, peer: bytes, now: float) -> str | None:
        """For a message admitted earlier by its size and decoded only now: ``rate_bytes`` (counted as a
        refusal) if what ``peer``'s envelopes decoded into has since put its bytes bucket in debt, else
        None. Keeps :meth:`charge` binding when a receiver admits several messages before decoding them."""
        state = self._peers.get(peer)
        if state is None:
            return None
        cfg = self.config
        if state.bytes.refill(now, cfg.bytes, cfg.byte_burst) >= 0.0:
            return None
        self.stats["refused_bytes"] += 1
        return "rate_bytes"

    def forget(self, peer: bytes) -> None:
        self._peers.pop(peer, None)
