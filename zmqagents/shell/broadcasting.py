"""Mesh-wide publish/subscribe for the Node: the broadcast core's publications in, the application's out.

The protocol (Plumtree over the routing table's sample, origin-signed messages, repair, at most once)
is :mod:`zmqagents.core.broadcast`, driven by the node's one composition like the other cores; this
module is the application's side of it: ``publish`` signs and pushes through the core, each
``subscribe`` iterator has its own queue, and a delivery the core reports goes to the queues of its
topic. A queue is bounded in messages and bytes (NodeConfig.subscription_queue/_bytes); a full one
drops its oldest and counts ``broadcast_dropped``: a slow reader loses what it did not read, it never
holds up the tree or the other subscribers (protocols/broadcast.md 5).

Topics match exactly (not by prefix as the one-hop PUB/SUB path does); ``""`` is the mesh-wide topic
every member is on.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable

from ..core.broadcast import Broadcast, Delivered, Gap
from ..queues import BoundedQueue
from .types import Message, NodeConfig, message_cost

log = logging.getLogger("zmqagents.node")

BROADCAST_TYPE = "bcast"  # Message.type of a mesh-wide publication


def topic_str(topic: str | bytes) -> str:
    """A topic as the broadcast protocol names it (a str); bytes must be UTF-8."""
    if isinstance(topic, bytes):
        try:
            return topic.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a mesh-wide topic must be UTF-8 text") from None
    return topic


class MeshTopics:
    """The node's mesh-wide subscriptions. ``attach`` the broadcast core when the node starts; until
    then subscriptions are remembered and publishing raises."""

    def __init__(self, config: NodeConfig, stats: dict[str, int], *, now: Callable[[], float],
                 pump: Callable[[], None]):
        self.config = config
        self._stats = stats
        for key in ("broadcast_dropped", "broadcast_gaps"):
            stats.setdefault(key, 0)
        self._now = now
        self._pump = pump
        self.core: Broadcast | None = None
        self._subs: dict[str, list[BoundedQueue[Message | None]]] = {}

    def attach(self, core: Broadcast) -> None:
        self.core = core
        for topic in self._subs:
            core.subscribe(topic)

    def publish(self, topic: str | bytes, body: Any) -> int:
        """Sign and push ``body`` on ``topic``; returns its sequence number. ValueError (PublishError)
        if it is over the size limit or this origin's rate; RuntimeError before the node started."""
        if self.core is None:
            raise RuntimeError("the node is not started: publish after start()")
        msg = self.core.publish(topic_str(topic), body, self._now())
        self._pump()
        return msg.seq

    def subscribe(self, topic: str | bytes) -> AsyncIterator[Message]:
        """Subscribed from this call on (not from the first iteration, as a plain async generator would
        be), so nothing published after it returns is missed; ``aclose()`` the iterator to unsubscribe."""
        t = topic_str(topic)
        cfg = self.config
        queue: BoundedQueue[Message | None] = BoundedQueue(cfg.subscription_queue, cfg.subscription_bytes)
        queues = self._subs.setdefault(t, [])
        queues.append(queue)
        if self.core is not None:
            self.core.subscribe(t)
            self._pump()  # the core's declaration timer may have moved (topic interest, broadcast.md 6)
        return self._read(t, queue)

    async def _read(self, t: str, queue: BoundedQueue[Message | None]) -> AsyncIterator[Message]:
        try:
            while True:
                item = (await queue.get())[0]
                if item is None:
                    return
                yield item
        finally:
            queues = self._subs.get(t, [])
            if queue in queues:
                queues.remove(queue)
            if not queues:
                self._subs.pop(t, None)
                if self.core is not None and t != "":  # every member stays on the mesh-wide topic
                    self.core.unsubscribe(t)
                    self._pump()

    def on_event(self, event: Delivered | Gap) -> None:
        """A delivery or a gap the broadcast core reported."""
        if type(event) is Gap:
            self._stats["broadcast_gaps"] += len(event.missing)
            log.debug("broadcast: %d publication(s) of %s on %r never arrived (epoch %d: %s)", len(event.missing),
                      event.origin.hex()[:12], event.topic, event.epoch, event.missing[:8])
            return
        assert type(event) is Delivered
        queues = self._subs.get(event.topic)
        if not queues:
            return
        cost = message_cost(event.size)
        msg = Message(event.origin, event.data, BROADCAST_TYPE, event.id, event.topic.encode("utf-8"), cost,
                      seq=event.seq)
        for queue in queues:
            why = queue.refuses(event.origin, cost)
            while why is not None and len(queue):
                queue.get_nowait()
                self._stats["broadcast_dropped"] += 1
                why = queue.refuses(event.origin, cost)
            queue.put(msg, event.origin, cost)

    def backlog(self) -> int:
        return sum(len(q) for qs in self._subs.values() for q in qs)

    def close(self) -> None:
        """The node is closing: every subscription ends (its iterator returns)."""
        for qs in self._subs.values():
            for q in qs:
                q.put(None, b"", 0)
