"""A node's neighbours: the hello that introduces two nodes, and one-hop pub/sub over their PUB sockets.

A hello is a request (type ``hello``) each side answers with its inbox endpoint, its PUB endpoint and
whether it is a member of the mesh (protocols/node.md). It goes over a CurveZMQ link opened with the
peer's public key, so an answer proves the peer holds that key; the answer makes the peer a
neighbour, and a member one is observed by the routing table. Publications travel one hop, from a
node's PUB to its neighbours' SUBs: SUB links exist only while the application subscribes to
something, since each costs a CURVE connection (~30 KB) on both ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from ..envelope import Envelope
from ..identity import Contact, IdentityError, format_public_key, node_id_of, short_id
from ..queues import BoundedQueue
from ..transport.mesh import Transport
from .types import HELLO, Message, NodeConfig, NodeError, message_cost

log = logging.getLogger("zmqagents.node")

# (node id, body, timeout, type) -> the reply body: the node's request
Request = Callable[[bytes, Any, float, str], Awaitable[Any]]


class Neighbours:
    """The nodes that completed a hello with this one, and the subscriptions served by their PUBs.

    ``observe(contact)`` is called for a member neighbour (the node hands it to its routing table);
    ``forget(node_id)`` drops what delivery holds for a claimed node that did not answer.
    """

    def __init__(self, node_id: bytes, transport: Transport, config: NodeConfig, stats: dict[str, int], *,
                 request: Request, observe: Callable[[Contact], None], forget: Callable[[bytes], None]):
        self.node_id = node_id
        self.transport = transport
        self.config = config
        self._stats = stats  # the node's counters: publications dropped and refused
        self._request = request
        self._observe = observe
        self._forget = forget
        # node id -> (contact, PUB endpoint)
        self._neighbours: dict[bytes, tuple[Contact, str]] = {}
        self._subscriptions: list[tuple[bytes, BoundedQueue]] = []
        self._closed = False

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._neighbours

    def ids(self) -> list[bytes]:
        return list(self._neighbours)

    def drop(self, node_id: bytes) -> None:
        """``node_id`` is no neighbour any more (revoked)."""
        self._neighbours.pop(node_id, None)

    # -- hello -------------------------------------------------------------------------------

    async def hello(self, contact: Contact) -> None:
        """Say hello to ``contact`` (a configured peer, a relay); a failure is logged."""
        node_id = self.transport.add_contact(contact)
        try:
            body = await self._request(node_id, self.hello_body(), self.config.hello_timeout, HELLO)
        except NodeError as exc:
            log.warning("peer %s did not answer hello: %s", contact, exc)
            return
        self._add(node_id, body)

    async def introduce(self, contact: Contact, timeout: float | None) -> bool:
        """Hello to a node known only from a claim; keep it only if it answers (Node.introduce)."""
        node_id = contact.node_id
        if node_id in self._neighbours:
            return True
        self.transport.add_contact(contact)
        try:
            body = await self._request(node_id, self.hello_body(), timeout or self.config.hello_timeout, HELLO)
        except NodeError:
            if node_id not in self._neighbours:  # unless it said hello to us meanwhile
                self._forget(node_id)
                self.transport.drop_contact(contact)
            return False
        return self._add(node_id, body)

    def answer(self, env: Envelope) -> dict:
        """A hello request arrived: take its sender as a neighbour and return our hello."""
        self._add(env.src, env.body)
        return self.hello_body()

    def hello_body(self) -> dict:
        # "member": false marks a short-lived client (a shell command): peers keep it out of their
        # routing tables, so they never probe it or report it failed once it exits.
        # An outbound-only node advertises its relays as its endpoint and no PUB (nobody can connect to it).
        pub = "" if self.config.outbound_only else self.transport.pub_endpoint
        return {"endpoint": self.transport.contact().endpoint, "pub": pub, "member": self.config.member}

    def _add(self, node_id: bytes, body: Any) -> bool:
        if not isinstance(body, dict) or not isinstance(body.get("pub"), str) or not isinstance(body.get("endpoint"), str):
            log.warning("malformed hello from %s", short_id(node_id))
            return False
        public_key = self.transport.public_key_of(node_id)
        pub = body["pub"]
        if public_key is None or node_id_of(public_key) != node_id or not (pub == "" or pub.startswith(("tcp://", "ipc://"))):
            log.warning("bad hello from %s", short_id(node_id))
            return False
        try:  # tcp://, ipc:// or relay://RELAYCONTACT,... (each relay checked)
            contact = Contact.parse(f"{format_public_key(public_key)}@{body['endpoint']}")
        except IdentityError as exc:
            log.warning("bad hello from %s: %s", short_id(node_id), exc)
            return False
        self.transport.add_contact(contact)
        if body.get("member", True) is not False:
            self._observe(contact)
        self._neighbours[node_id] = (contact, pub)
        if self._subscriptions and pub:
            self.transport.subscribe_to(contact, pub)
        return True

    # -- pub/sub -------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Publications waiting in every subscription's queue."""
        return sum(len(queue) for _, queue in self._subscriptions)

    def publish(self, topic: bytes, body: Any) -> None:
        env = Envelope(id=os.urandom(16), src=self.node_id, type="pub", body=body, ts=int(time.time() * 1000))
        self.transport.publish(topic, env)

    async def wait_for_subscriber(self, topic: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.transport.has_subscriber(topic):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def subscribe(self, topic: bytes) -> AsyncIterator[Message]:
        cfg = self.config
        queue: BoundedQueue[Message | None] = BoundedQueue(cfg.subscription_queue, cfg.subscription_bytes, cfg.inbox_share)
        entry = (topic, queue)
        if not self._subscriptions:
            for contact, pub in self._neighbours.values():
                if pub:  # "" for an outbound-only neighbour: nobody can connect to it
                    self.transport.subscribe_to(contact, pub)
        self._subscriptions.append(entry)
        self.transport.add_topic(topic)
        try:
            while True:
                item = (await queue.get())[0]
                if item is None:
                    return
                yield item
        finally:
            self._subscriptions.remove(entry)
            if not self._closed:
                self.transport.remove_topic(topic)
                if not self._subscriptions:
                    for node_id in self._neighbours:
                        self.transport.unsubscribe_from(node_id)

    def on_publication(self, topic: bytes, env: Envelope) -> None:
        """The transport's callback for each publication read from a SUB socket."""
        src = env.src
        cost = message_cost(env.cost)
        msg = Message(src, env.body, env.type, env.id, topic, cost)
        for prefix, queue in self._subscriptions:
            if topic.startswith(prefix):
                # Best effort: a publisher over its share loses its newest; otherwise the oldest make room.
                why = queue.refuses(src, cost)
                if why is not None and why.startswith("peer_share"):
                    self._stats["publications_refused"] += 1
                    continue
                while why is not None and len(queue):
                    queue.get_nowait()
                    self._stats["publications_dropped"] += 1
                    why = queue.refuses(src, cost)
                queue.put(msg, src, cost)

    def close(self) -> None:
        """The node is closing: every subscription ends (its iterator returns)."""
        self._closed = True
        for _, queue in self._subscriptions:
            queue.put(None, b"", 0)
