"""A queue of received messages bounded in count and in bytes, with a share per sender.

What peers send waits here for the application (the node's inbox, each subscription). A count
alone does not bound memory: ten thousand messages may be ten thousand bytes or ten gigabytes.
So each message carries its ``cost`` (``Envelope.cost``: an upper bound of the memory its decoded
form holds) and the queue is bounded by both, and no sender may hold more than ``share`` of
either bound, so one peer filling the queue still leaves room for the others.

The queue decides; the caller applies the decision. The inbox refuses a message that does not
fit before the delivery core sees it (no ack: the sender retransmits later, nothing accepted is
lost); a subscription drops publications (best effort). What the queue was told to hold it
holds: ``put`` never refuses.

:class:`FairQueue`, the inbox, hands messages out one sender at a time, in turn, each sender's in
order: a local application or handler taking from an inbox a flooder fills to its share (half of
10,000 messages by default) takes an honest peer's message next, not after the flooder's thousands.
Subscriptions keep the plain FIFO (their end is marked by a last entry that must come last).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Generic, TypeVar
from .errors import InvalidArgument

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    """FIFO of ``(item, sender, cost)``; ``get`` is awaitable by several consumers.

    ``limit`` messages, ``max_bytes`` bytes of cost; one sender may hold ``share`` (0 < share <= 1)
    of each. Not thread-safe: one event loop.
    """

    def __init__(self, limit: int, max_bytes: int, share: float = 1.0):
        if limit < 1 or max_bytes < 1 or not 0 < share <= 1:
            raise InvalidArgument("a queue needs limit >= 1, max_bytes >= 1 and 0 < share <= 1")
        self.limit = limit
        self.max_bytes = max_bytes
        self.share = share
        self._items: deque[tuple[T, bytes, int]] = deque()  # (FairQueue keeps its own storage)
        self._count = 0
        self._bytes = 0
        self._by_sender: dict[bytes, list[int]] = {}  # sender -> [count, bytes] it holds here
        self._waiters: deque[asyncio.Future] = deque()

    def __len__(self) -> int:
        return self._count

    def qsize(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        """Cost of what is queued, in bytes."""
        return self._bytes

    def held_by(self, sender: bytes) -> tuple[int, int]:
        """(count, bytes) that ``sender`` holds here."""
        held = self._by_sender.get(sender)
        return (held[0], held[1]) if held else (0, 0)

    def refuses(self, sender: bytes, cost: int, *, need: int = 1, held: tuple[int, int] = (0, 0),
                sender_held: tuple[int, int] = (0, 0)) -> str | None:
        """Why ``need`` more messages costing ``cost`` in all from ``sender`` would not fit, or None if they would.

        ``held`` and ``sender_held`` are (count, bytes) already accepted on the way here but not
        queued yet (the rest of a batch): they count as if queued. An empty queue takes anything,
        and a sender holding nothing may take anything that fits the whole queue, so what is larger
        than a bound is not refused for ever.
        """
        count = self._count + held[0]
        if count:
            if count + need > self.limit:
                return "queue_full"
            if self._bytes + held[1] + cost > self.max_bytes:
                return "queue_bytes"
        mine = self._by_sender.get(sender)
        n = (mine[0] if mine else 0) + sender_held[0]
        if n:
            if n + need > self.share * self.limit:
                return "peer_share"
            if (mine[1] if mine else 0) + sender_held[1] + cost > self.share * self.max_bytes:
                return "peer_share_bytes"
        return None

    def put(self, item: T, sender: bytes, cost: int) -> None:
        """Queue ``item`` (decided on already: this never refuses) and wake a waiting consumer."""
        self._push(item, sender, cost)
        self._account(sender, 1, cost)
        self._wake()

    def flush(self) -> None:
        """Nothing to do: what ``put`` was given is queued at once (a durable inbox writes here)."""

    def unget(self, item: T, sender: bytes, cost: int) -> None:
        """Put back at the head an item just taken that could not be handed on (it stays first in line)."""
        self._push_front(item, sender, cost)
        self._account(sender, 1, cost)
        self._wake()

    def get_nowait(self) -> tuple[T, bytes, int]:
        """The next ``(item, sender, cost)`` (the oldest; in a FairQueue, the next sender's oldest);
        IndexError if empty."""
        entry = self._pop()
        self._account(entry[1], -1, -entry[2])
        return entry

    async def get(self) -> tuple[T, bytes, int]:
        """Wait for and take the next entry. Cancelling the wait takes nothing."""
        while not self._count:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
        return self.get_nowait()

    # -- storage: one FIFO here; FairQueue overrides these three ---------------------------------

    def _push(self, item: T, sender: bytes, cost: int) -> None:
        self._items.append((item, sender, cost))

    def _push_front(self, item: T, sender: bytes, cost: int) -> None:
        self._items.appendleft((item, sender, cost))

    def _pop(self) -> tuple[T, bytes, int]:
        return self._items.popleft()

    def _account(self, sender: bytes, n: int, cost: int) -> None:
        self._count += n
        self._bytes += cost
        held = self._by_sender.get(sender)
        if held is None:
            self._by_sender[sender] = [n, cost]
            return
        held[0] += n
        held[1] += cost
        if not held[0]:
            del self._by_sender[sender]

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return


class FairQueue(BoundedQueue[T]):
    """A :class:`BoundedQueue` that hands out one sender's oldest entry after the other's, in turn.

    Each sender's entries stay in order; a sender that had nothing waiting joins the end of the turn.
    ``unget`` puts an entry back at the head of its sender's line and that sender first in turn, so it
    is the next taken, as in the FIFO. Costs a dict lookup more per entry than the FIFO.
    """

    def __init__(self, limit: int, max_bytes: int, share: float = 1.0):
        super().__init__(limit, max_bytes, share)
        self._lines: OrderedDict[bytes, deque[tuple[T, int]]] = OrderedDict()  # sender -> (item, cost), in turn

    def _push(self, item: T, sender: bytes, cost: int) -> None:
        line = self._lines.get(sender)
        if line is None:
            line = self._lines[sender] = deque()
        line.append((item, cost))

    def _push_front(self, item: T, sender: bytes, cost: int) -> None:
        line = self._lines.get(sender)
        if line is None:
            line = self._lines[sender] = deque()
        line.appendleft((item, cost))
        self._lines.move_to_end(sender, last=False)

    def _pop(self) -> tuple[T, bytes, int]:
        lines = self._lines
        if not lines:
            raise IndexError("get from an empty queue")
        sender = next(iter(lines))
        line = lines[sender]
        item, cost = line.popleft()
        if line:
            lines.move_to_end(sender)
        else:
            del lines[sender]
        return item, sender, cost
