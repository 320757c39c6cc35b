"""Which outgoing links a node keeps open, decided without sockets (every call takes ``now``).

Why a policy at all: a link (our DEALER, connected to a peer's inbox) costs libzmq a pipe pair and
an engine with its buffers at both ends (~40 KB each) and three file descriptors. SWIM probes every
contact of the routing table in turn, and a link once opened used to stay open until the peer died,
so each node ended up linked to nearly every contact: the links, not the protocol state, were most
of a node's memory (issue 18: ~72 % of 2.6 MB per node at 300 nodes, and ~224 fds a node at 1,000).

The policy, for the links of one node:

* **Idle links close.** A link with no traffic either way (nothing sent on it, nothing read from
  it) for ``idle_timeout`` seconds is closed. Nothing queued on it is lost that anyone still wants:
  a frame still queued there was written at least ``idle_timeout`` ago and never went out (the
  peer is unreachable), and the delivery core retransmits what is unacknowledged through the same
  link, which keeps it in use; once the core gives up, the frame is stale anyway.
* **At most ``max_links`` are open.** Opening one more closes the least recently used first (it
  may be busy: whatever libzmq still queued on it is discarded, and retransmits go out over a new
  link; the bound only bites when a node talks to more than ``max_links`` peers within
  ``idle_timeout``).
* A closed link reopens on the next send (a CURVE handshake, ~1.5 ms of wall time). The other end's
  inbox sees the connection close and forgets it; it reaches us by its own link from then on.

Links are keyed by peer node id. ``now`` must never go backwards (a monotonic clock): links are
kept in the order they were last used, which is then also the order in which they go idle, so
finding the idle ones costs one look per link closed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class LinkPoolConfig:
    """``idle_timeout``: seconds without traffic after which a link closes (0: never for idleness).
    ``max_links``: links open at once, at most. ``sweep_every``: the shortest wait between two
    sweeps for idle links, as a fraction of ``idle_timeout`` (a link then closes between
    ``idle_timeout`` and ``(1 + sweep_every) x idle_timeout`` after its last use), so that a node
    with many links wakes a few times per ``idle_timeout``, not once per link."""

    idle_timeout: float = 30.0
    max_links: int = 256
    sweep_every: float = 0.125

    def __post_init__(self) -> None:
        if not self.idle_timeout >= 0:
            raise InvalidArgument(f"idle_timeout must be >= 0, not {self.idle_timeout!r}")
        if self.max_links < 1:
            raise InvalidArgument(f"max_links must be >= 1, not {self.max_links!r}")
        if not 0 < self.sweep_every <= 1:
            raise InvalidArgument(f"sweep_every must be in (0, 1], not {self.sweep_every!r}")


class LinkPool:
    """The open links of one node, least recently used first, and when each was last used.

    The caller opens and closes the sockets; the pool says which to close and when:
    :meth:`make_room` before opening one, :meth:`idle` when :meth:`next_sweep` comes, and
    :meth:`used` on every frame written to or read from a link."""

    __slots__ = ("config", "_last")

    def __init__(self, config: LinkPoolConfig):
        self.config = config
        self._last: OrderedDict[bytes, float] = OrderedDict()  # peer -> when last used, oldest first

    def __contains__(self, peer: object) -> bool:
        return peer in self._last

    def __len__(self) -> int:
        return len(self._last)

    def opened(self, peer: bytes, now: float) -> None:
        """A link to ``peer`` was just opened (counts as a use)."""
        self._last[peer] = now
        self._last.move_to_end(peer)

    def used(self, peer: bytes, now: float) -> None:
        """A frame was written to or read from the link to ``peer``; unknown peers are ignored (a
        frame read from a link closed since, in the same loop turn)."""
        last = self._last
        if peer in last:
            last[peer] = now
            last.move_to_end(peer)

    def closed(self, peer: bytes) -> None:
        """The link to ``peer`` was closed for a reason of the caller's (the peer moved or was forgotten)."""
        self._last.pop(peer, None)

    def make_room(self) -> list[bytes]:
        """The links to close before one more is opened: the least recently used while the pool is full.
        They are taken out of the pool."""
        last = self._last
        victims = []
        while len(last) >= self.config.max_links:
            victims.append(last.popitem(last=False)[0])
        return victims

    def idle(self, now: float) -> list[bytes]:
        """The links unused for ``idle_timeout`` or longer at ``now``, oldest first; taken out of the pool."""
        timeout = self.config.idle_timeout
        last = self._last
        victims: list[bytes] = []
        if timeout <= 0:
            return victims
        while last:
            peer, at = next(iter(last.items()))
            if now - at < timeout:
                break
            del last[peer]
            victims.append(peer)
        return victims

    def next_sweep(self, now: float) -> float | None:
        """When to call :meth:`idle` next (a time like ``now``), or None while no link can go idle:
        when the least recently used link goes idle, but not sooner than ``sweep_every x idle_timeout``
        from ``now``."""
        timeout = self.config.idle_timeout
        if timeout <= 0 or not self._last:
            return None
        oldest = next(iter(self._last.values()))
        return max(oldest + timeout, now + self.config.sweep_every * timeout)
