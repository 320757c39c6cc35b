"""Frames read off the inbox but not yet decoded: bounded in bytes, per peer, taken round-robin.

Why the inbox reads ahead of its decoder. libzmq's I/O thread reads each connection ahead of the
application, up to ``ZMQ_RCVHWM`` messages, and a message there holds up to the size limit. While
the event loop is busy (decoding, the cores, the spool), every connection fills to that mark, so
libzmq holds ``connections x (RCVHWM + 1) x size limit``: 9 MiB for each peer sending maximum-size
frames, and nothing bounds the number of peers (in an open mesh anyone may connect). Taking a frame
out of libzmq costs a few microseconds (no copy, no decoding), so each turn of the loop empties
libzmq's queues into this backlog first and decodes from it second. Over-rate frames are dropped on
the way in, and the backlog itself is bounded in bytes: what libzmq holds is then only what arrived
during one turn, and what the node holds beyond it is this module's bound, not a multiple of the
number of connections.

A frame refused here is dropped unacknowledged, like an over-rate one, so a reliable sender sends it
again later and nothing accepted is lost. One peer may hold at most ``peer_bytes``, so a flood
from one peer leaves room for the others; the decoder takes one frame from each peer in turn, so an
honest peer's request waits for one frame of each other peer, not for a flooder's whole backlog.
Frames of at most ``small`` bytes (requests, acks, probes) may also use ``reserve`` bytes beyond
``max_bytes``, so that peers sending large frames cannot crowd out the small ones.

Pure data structure: no sockets, no clock; the transport feeds it and drains it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

ENTRY_COST = 128  # bytes charged per waiting frame besides its length: the tuple, the deque slot, the bytes header
SMALL_FRAME = 4096  # frames up to this size may use the reserve


class ReadBacklog:
    """Undecoded frames by sender, each with the routing id it came with."""

    __slots__ = ("max_bytes", "peer_bytes", "reserve", "_queues", "_held", "bytes")

    def __init__(self, max_bytes: int, peer_bytes: int, reserve: int):
        self.max_bytes = max_bytes
        self.peer_bytes = peer_bytes
        self.reserve = reserve
        self._queues: OrderedDict[bytes, deque[tuple[bytes, Any]]] = OrderedDict()  # sender -> (rid, frame), oldest first
        self._held: dict[bytes, int] = {}  # sender -> bytes it holds here
        self.bytes = 0  # held by all senders

    def __len__(self) -> int:
        """Senders with frames waiting."""
        return len(self._queues)

    def refuses(self, sender: bytes, size: int) -> str | None:
        """Why a frame of ``size`` bytes from ``sender`` cannot wait here (a drop reason), or None.

        A sender that holds nothing may always put one frame (else a frame larger than its share could
        never pass); beyond that it keeps to its share, and everyone to the total."""
        cost = size + ENTRY_COST
        held = self._held.get(sender, 0)
        if held and held + cost > self.peer_bytes:
            return "backlog_peer_share"
        limit = self.max_bytes + (self.reserve if size <= SMALL_FRAME else 0)
        if self.bytes + cost > limit:
            return "backlog_full"
        return None

    def put(self, sender: bytes, rid: bytes, frame: Any) -> None:
        """Queue ``frame`` (bytes, or a buffer of them) behind ``sender``'s earlier ones; call :meth:`refuses` first."""
        cost = len(frame) + ENTRY_COST
        queue = self._queues.get(sender)
        if queue is None:
            queue = self._queues[sender] = deque()
            self._held[sender] = cost
        else:
            self._held[sender] += cost
        queue.append((rid, frame))
        self.bytes += cost

    def take(self) -> tuple[bytes, bytes, Any] | None:
        """The next frame: (sender, routing id, frame), one sender after the other; None when empty."""
        queues = self._queues
        if not queues:
            return None
        sender = next(iter(queues))
        queue = queues[sender]
        rid, frame = queue.popleft()
        cost = len(frame) + ENTRY_COST
        self.bytes -= cost
        if queue:
            self._held[sender] -= cost
            queues.move_to_end(sender)
        else:
            del queues[sender]
            del self._held[sender]
        return sender, rid, frame
