"""What a Node sends: reliable messages and requests, their backpressure, and how they end.

Delivery (:mod:`zmqagents.core.delivery`) decides retransmits, windows and ordering; this module is
the application's side of it: naming the destination (a node id, a hex id or a contact), waiting
while a peer's window is full, the futures of requests, the failures ``flush()`` reports and the
``on_settled`` callbacks a durable outbox relies on. It turns delivery's outcome events
(:meth:`Sender.on_event`) into those.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Sequence, TypeVar

from ..core.delivery import Acked, Delivery, Replied, RequestFailed, SendFailed, Stalled, WindowFull, WindowOpen
from ..identity import Contact, IdentityError, parse_node_id, short_id
from ..transport.mesh import Transport
from .loop import NodeLoop
from .types import PeerUnreachable, RemoteError, RequestTimeout, SendError, SettledCallback, UnknownPeer

log = logging.getLogger("zmqagents.node")

T = TypeVar("T")

MAX_FAILURES = 10_000  # failures kept for flush() to report; beyond it they reach on_settled callbacks only


class Sender:
    """Sends for a node through its ``delivery`` core, driven by its ``loop``."""

    def __init__(self, delivery: Delivery, transport: Transport, loop: NodeLoop):
        self.delivery = delivery
        self.transport = transport
        self.loop = loop
        self._requests: dict[bytes, asyncio.Future] = {}
        self._windows: dict[bytes, asyncio.Event] = {}
        self._failures: list[SendFailed] = []
        self._settled: list[SettledCallback] = []

    def resolve(self, peer: bytes | str | Contact) -> bytes:
        """The node id to send to; a contact is added to the transport's address book. UnknownPeer if
        the node has no way to reach ``peer``."""
        transport = self.transport
        if type(peer) is bytes and len(peer) == 32 and transport.known(peer):
            return peer  # the common case, first
        if isinstance(peer, Contact):
            return transport.add_contact(peer)
        if isinstance(peer, str):
            try:
                if "@" in peer:
                    return transport.add_contact(Contact.parse(peer))
                peer = parse_node_id(peer)
            except IdentityError as exc:
                raise UnknownPeer(f"{exc}; pass a contact (PUBLICKEY@ENDPOINT) or a 64-hex node id") from None
        if not isinstance(peer, bytes) or len(peer) != 32:
            raise UnknownPeer(f"peer must be a 32-byte node id, a hex node id or a contact, got {peer!r:.80}")
        if not transport.known(peer):
            raise UnknownPeer(f"no route to {short_id(peer)}: pass its contact (PUBLICKEY@ENDPOINT) instead of its id")
        return peer

    async def submit(self, dst: bytes, submit: Callable[[], T]) -> T:
        """Hand a message to the core, waiting (backpressure) while the window to ``dst`` is full."""
        while True:
            try:
                msg_id = submit()
            except WindowFull:
                event = self._windows.setdefault(dst, asyncio.Event())
                event.clear()
                await event.wait()
                continue
            self.loop.busy()
            self.loop.send_new()
            return msg_id

    async def send(self, peer: bytes | str | Contact, body: Any, *, type: str = "msg",
                   msg_id: bytes | None = None, confirm: bool = False) -> bytes:
        dst = self.resolve(peer)
        delivery = self.delivery
        if delivery.can_send(dst):  # the usual case, without the closure and the retry loop of submit()
            mid = delivery.send(dst, body, self.loop.now(), type=type, msg_id=msg_id, confirm=confirm)
            self.loop.busy()
            self.loop.send_new()
            return mid
        now = self.loop.now
        return await self.submit(
            dst, lambda: delivery.send(dst, body, now(), type=type, msg_id=msg_id, confirm=confirm)
        )

    async def send_many(self, peer: bytes | str | Contact, bodies: Sequence[Any], *, type: str = "msg") -> list[bytes]:
        """Send ``bodies`` to ``peer`` in order: as many as its window takes at a time, each chunk handed
        to the transport at once, waiting for room between chunks."""
        dst = self.resolve(peer)
        now = self.loop.now
        send_many = self.delivery.send_many
        ids: list[bytes] = []
        while len(ids) < len(bodies):
            rest = bodies[len(ids):] if ids else bodies
            ids += await self.submit(dst, lambda: send_many(dst, rest, now(), type=type))
        return ids

    def send_nowait(self, peer: bytes | str | Contact, body: Any, *, type: str = "msg",
                    msg_id: bytes | None = None, confirm: bool = False) -> bytes:
        dst = self.resolve(peer)
        msg_id = self.delivery.send(dst, body, self.loop.now(), type=type, msg_id=msg_id, confirm=confirm)
        self.loop.busy()
        self.loop.send_new()
        return msg_id

    async def request(self, peer: bytes | str | Contact, body: Any, *, timeout: float, type: str) -> Any:
        dst = self.resolve(peer)
        future = asyncio.get_running_loop().create_future()
        now = self.loop.now
        request_id = await self.submit(
            dst, lambda: self.delivery.request(dst, body, now(), timeout=timeout, type=type)
        )
        self._requests[request_id] = future
        try:
            return await future
        finally:
            self._requests.pop(request_id, None)

    def on_settled(self, callback: SettledCallback) -> SettledCallback:
        self._settled.append(callback)
        return callback

    async def flush(self, timeout: float | None) -> None:
        await asyncio.wait_for(self.loop.settled(), timeout)
        if self._failures:
            failures, self._failures = self._failures, []
            raise SendError(failures)

    def fail_all(self, exc: Exception) -> None:
        """The node is closing: every request still waiting for its reply raises ``exc``."""
        for future in self._requests.values():
            if not future.done():
                future.set_exception(exc)
        self._requests.clear()

    def on_event(self, event: object) -> None:
        """One of delivery's outcome events (every event but Delivered)."""
        if isinstance(event, Replied):
            future = self._requests.get(event.request_id)
            if future is not None and not future.done():
                if event.env.type == "err":
                    future.set_exception(RemoteError(event.env.body))
                else:
                    future.set_result(event.env.body)
        elif isinstance(event, RequestFailed):
            future = self._requests.get(event.request_id)
            if future is not None and not future.done():
                if event.reason == "timeout":
                    future.set_exception(RequestTimeout(f"no reply from {short_id(event.dst)} in time"))
                else:
                    future.set_exception(PeerUnreachable(f"{short_id(event.dst)} did not acknowledge the request"))
        elif isinstance(event, Acked):
            for callback in self._settled:
                callback(event.msg_id, event.dst, None)
        elif isinstance(event, SendFailed):
            if len(self._failures) < MAX_FAILURES:
                self._failures.append(event)
            for callback in self._settled:
                callback(event.msg_id, event.dst, event.reason)
        elif isinstance(event, WindowOpen):
            waiter = self._windows.get(event.dst)
            if waiter is not None:
                waiter.set()
        elif isinstance(event, Stalled):
            # Once per stall (the core reports it again only after progress); the core has already
            # reopened the stream, and the zmqagents_delivery_stalled_peers gauge counts it meanwhile.
            log.warning("delivery to %s stalled: %d message(s) unacknowledged for %.1f s although it "
                        "answers; reopened the stream (state before: %s)", short_id(event.dst), event.pending,
                        event.waited, event.state)
