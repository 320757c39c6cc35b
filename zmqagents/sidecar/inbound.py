"""The inbound spool: messages received for local applications, on disk before they are acknowledged.

The node acknowledges a direct message to its sender once it is in its inbox; a sidecar's inbox is
this: a :class:`~zmqagents.sidecar.spool.Spool` (``[spool] dir``/inbound, the records of
``protocols/spool.md`` holding the envelopes as received) with the interface of the node's
in-memory :class:`~zmqagents.queues.BoundedQueue`. The node calls :meth:`SpoolInbox.put` for each
message a batch delivers, then :meth:`SpoolInbox.flush` (one write, one fsync per policy) before any
acknowledgement of them is sent. A message leaves the spool when the application acknowledges it
(:meth:`SpoolInbox.ack`, the local API's ``ack``); one taken but not acknowledged goes back to the
head of the line (:meth:`SpoolInbox.unget`). After a restart, what was not acknowledged waits again,
oldest first.

The spool also keeps the last ``keep_done`` acknowledged records (whole segments): with the waiting
ones, they are the ids this node delivered lately, restored into the delivery core's dedup memory at
start (:meth:`SpoolInbox.delivered_ids`), so a sender that re-sends a message whose acknowledgement the
crash swallowed does not get it delivered twice.

In memory a waiting message costs its place in the queue (a reference, not the message); the bounds
are the node's inbox bounds in count and per-sender share, and the spool's size on disk, each message
counted at its ``Envelope.cost`` (an over-estimate of its record). If writing fails anyway (an IO
error, a disk full beyond the bound), the messages stay in memory (counted: ``unspooled``): they were
accepted, so they are kept, only not across a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from ..envelope import Envelope, EnvelopeError
from ..node import Message, message_cost
from ..queues import BoundedQueue, FairQueue
from .spool import Spool, SpoolConfig, SpoolError

log = logging.getLogger(__name__)

INBOUND_DIR = "inbound"  # under [spool] dir


class SpoolInbox:
    """A node inbox whose waiting messages live in a spool until the application acknowledges them."""

    def __init__(self, config: SpoolConfig, *, limit: int, share: float, node_id: bytes, dedup_window: int):
        self.config = config
        self.node_id = node_id
        self.dedup_window = dedup_window
        # Items are spool references (int), or Messages when writing them failed (kept in memory).
        self._queue: BoundedQueue[int | Message] = FairQueue(limit, config.max_bytes, share)  # senders in turn
        self._pending: list[Message] = []  # put, not yet flushed
        self._taken: dict[bytes, tuple[int | Message, bytes, int]] = {}  # msg id -> (item, sender, cost)
        self._taken_by: dict[bytes, list[int]] = {}  # sender -> [count, cost] taken, not acknowledged
        self._taken_cost = 0
        self.spool: Spool | None = None
        self._sync_handle: asyncio.TimerHandle | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "acked", "requeued", "unspooled", "unreadable", "restored", "unknown_acks"), 0)

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> dict[bytes, list[bytes]]:
        """Open the spool and queue what waits in it; return, per sender, the ids delivered lately
        (oldest first, at most ``dedup_window`` each) for the delivery core's dedup memory."""
        self.spool = Spool(self.config, node_id=self.node_id)
        recent: dict[bytes, deque[bytes]] = {}
        for ref, env, done in self.spool.records():
            ids = recent.get(env.src)
            if ids is None:
                ids = recent[env.src] = deque(maxlen=self.dedup_window)
            ids.append(env.id)
            if not done:
                self._queue.put(ref, env.src, self._cost(env))
                self.stats["restored"] += 1
        if self.stats["restored"]:
            log.info("inbound spool: %d received message(s) from before the restart wait for local clients",
                     self.stats["restored"])
        return {src: list(ids) for src, ids in recent.items()}

    def close(self) -> None:
        """Write the acknowledgements noted and close the spool (what waits stays for the next start)."""
        if self._sync_handle is not None:
            self._sync_handle.cancel()
            self._sync_handle = None
        if self.spool is not None:
            self.spool.close()

    @staticmethod
    def _cost(env: Envelope) -> int:
        return message_cost(env.cost)  # as the node charged it when it arrived (the record decodes alike)

    # -- the queue interface the node uses ------------------------------------------------------

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def bytes(self) -> int:
        return self._queue.bytes

    def refuses(self, sender: bytes, cost: int, *, need: int = 1, held: tuple[int, int] = (0, 0),
                sender_held: tuple[int, int] = (0, 0)) -> str | None:
        """As :meth:`BoundedQueue.refuses`, counting messages taken and not yet acknowledged (they are
        still on disk). The bytes bound is the spool's: each message at its cost, more than its record."""
        mine = self._taken_by.get(sender, (0, 0))
        return self._queue.refuses(sender, cost, need=need,
                                   held=(held[0] + len(self._taken), held[1] + self._taken_cost),
                                   sender_held=(sender_held[0] + mine[0], sender_held[1] + mine[1]))

    def put(self, message: Message, sender: bytes, cost: int) -> None:
        self._pending.append(message)

    def flush(self) -> None:
        """Write what ``put`` was given since the last flush, then queue it: called before the acks."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ts = int(time.time() * 1000)
        envs = [Envelope(m.id, m.src, m.type, m.body, self.node_id, ts) for m in pending]
        refs: list[int | Message]
        try:
            refs = list(self.spool.append(envs))
        except (SpoolError, EnvelopeError):
            refs = [self._append_one(env, message) for env, message in zip(envs, pending)]
        for item, message in zip(refs, pending):
            self._queue.put(item, message.src, message.cost)
        self.stats["accepted"] += len(pending)

    def _append_one(self, env: Envelope, message: Message) -> int | Message:
        """After a burst failed: this message's record, or the message itself if it cannot be written
        (kept in memory, counted: accepted, only not across a crash)."""
        try:
            return self.spool.append([env])[0]
        except (SpoolError, EnvelopeError) as exc:
            log.error("inbound spool: a message from %s is kept in memory only: %s", env.src.hex()[:12], exc)
            self.stats["unspooled"] += 1
            return message

    async def get(self) -> tuple[Message, bytes, int]:
        """The oldest waiting message; it stays on disk until :meth:`ack` (or goes back with :meth:`unget`)."""
        while True:
            item, sender, cost = await self._queue.get()
            message = self._read(item, sender, cost)
            if message is not None:
                break
        self._taken[message.id] = (item, sender, cost)
        held = self._taken_by.get(sender)
        if held is None:
            held = self._taken_by[sender] = [0, 0]
        held[0] += 1
        held[1] += cost
        self._taken_cost += cost
        return message, sender, cost

    def _read(self, item: int | Message, sender: bytes, cost: int) -> Message | None:
        if isinstance(item, Message):
            return item
        try:
            env = self.spool.read(item)
        except (SpoolError, EnvelopeError, KeyError) as exc:  # damaged on disk since it was written
            log.error("inbound spool: %s; that message is dropped", exc)
            self.stats["unreadable"] += 1
            self.spool.mark_done(item)
            return None
        return Message(env.src, env.body, env.type, env.id, None, cost)

    def unget(self, message: Message, sender: bytes, cost: int) -> None:
        """Put a taken message back at the head of the line (its client left without acknowledging it)."""
        self.release(message.id)

    def release(self, msg_id: bytes) -> bool:
        """:meth:`unget` by id: what a consumer holding only ids (not the messages) gives back."""
        entry = self._untake(msg_id)
        if entry is None:
            return False
        self.stats["requeued"] += 1
        self._queue.unget(*entry)
        return True

    def ack(self, msg_id: bytes) -> bool:
        """The application has the message: it leaves the spool. False if it was not taken (or acked)."""
        entry = self._untake(msg_id)
        if entry is None:
            self.stats["unknown_acks"] += 1
            return False
        if not isinstance(entry[0], Message):
            self.spool.mark_done(entry[0])
        self.stats["acked"] += 1
        return True

    def commit(self) -> None:
        """Record the acknowledgements noted since the last commit (the caller batches them); under
        fsync "batch" they reach the disk within ``sync_interval``."""
        spool = self.spool
        if spool is None:
            return
        spool.commit()
        if spool.sync_pending and self._sync_handle is None:
            self._sync_handle = asyncio.get_running_loop().call_later(self.config.sync_interval, self._sync)

    def _sync(self) -> None:
        self._sync_handle = None
        if self.spool is not None:
            self.spool.sync()

    def _untake(self, msg_id: bytes) -> tuple[int | Message, bytes, int] | None:
        entry = self._taken.pop(msg_id, None)
        if entry is None:
            return None
        held = self._taken_by[entry[1]]
        held[0] -= 1
        held[1] -= entry[2]
        if not held[0]:
            del self._taken_by[entry[1]]
        self._taken_cost -= entry[2]
        return entry

    # -- reporting --------------------------------------------------------------------------------

    @property
    def taken(self) -> int:
        """Messages handed to clients and not yet acknowledged."""
        return len(self._taken)

    def status(self) -> dict:
        spool = self.spool
        return {
            **self.stats,
            "queued": len(self._queue),
            "taken": len(self._taken),
            "spool_bytes": spool.bytes if spool is not None else 0,
            "spool_max_bytes": self.config.max_bytes,
            **({f"spool_{k}": v for k, v in spool.stats.items()} if spool is not None else {}),
        }
