"""What the layers above a node need from it: :class:`NodeAPI`, a ``typing.Protocol``.

The task runtime (``agents/``), the sidecar's local API and its durable outbox are written against
this Protocol, not against :class:`~zmqagents.node.Node`: it names the whole of what they use, so a
change to Node that keeps it does not reach them, and a stand-in node (a test's, a simulator's) is
anything that provides it. ``Node`` provides all of it (a test checks that every member exists).

Read-only views (``delivery``, ``membership``, ``routing``, ``transport``) are there for what they
report (``can_send``, ``rtt``, ``state_of``, ``known``, counters); sending and receiving go through
the node's own methods.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Protocol, runtime_checkable

from ..core.delivery import Delivery
from ..core.membership import Membership
from ..core.routing import RoutingCore
from ..dht import ProviderInfo
from ..envelope import Envelope
from ..identity import Contact
from ..transport.mesh import Transport
from .loop import Ticker
from .types import MemberEvent, Message, SettledCallback

Peer = bytes | str | Contact  # a node id, a hex node id or a contact (PUBLICKEY@ENDPOINT)


@runtime_checkable
class NodeAPI(Protocol):
    """A started node as the task runtime, the local API and the outbox use it."""

    # -- who and how it is -----------------------------------------------------------------
    @property
    def node_id(self) -> bytes: ...

    @property
    def contact(self) -> Contact: ...

    @property
    def running(self) -> bool: ...

    @property
    def transport(self) -> Transport: ...

    @property
    def delivery(self) -> Delivery: ...

    @property
    def membership(self) -> Membership | None: ...

    @property
    def routing(self) -> RoutingCore | None: ...

    def peers(self) -> list[dict]: ...

    def certified_groups(self, node_id: bytes) -> frozenset[str]: ...

    # -- the one clock and the one timer (shell/loop.py) --------------------------------------
    def now(self) -> float: ...

    def attach(self, ticker: Ticker) -> None: ...

    def detach(self, ticker: Ticker) -> None: ...

    def wake(self, at: float | None) -> None: ...

    # -- sending ------------------------------------------------------------------------------
    async def send(self, peer: Peer, body: Any, *, type: str = "msg", msg_id: bytes | None = None,
                   confirm: bool = False) -> bytes: ...

    def send_nowait(self, peer: Peer, body: Any, *, type: str = "msg", msg_id: bytes | None = None,
                    confirm: bool = False) -> bytes: ...

    async def request(self, peer: Peer, body: Any, *, timeout: float = 10.0, type: str = "req") -> Any: ...

    async def flush(self, timeout: float | None = None) -> None: ...

    def on_settled(self, callback: SettledCallback) -> SettledCallback: ...

    async def publish(self, topic: str | bytes, body: Any) -> None: ...

    # -- receiving ----------------------------------------------------------------------------
    def route(self, prefix: str, handler: Callable[[Envelope], None]) -> None: ...

    def reply(self, request: Envelope, body: Any, *, error: bool = False) -> None: ...

    async def receive(self, timeout: float | None = None) -> Message: ...

    def requeue(self, message: Message) -> None: ...

    def room_made(self) -> None: ...

    @property
    def inbox_size(self) -> tuple[int, int]: ...

    def events(self) -> AsyncIterator[MemberEvent]: ...

    # -- lookups and the DHT ----------------------------------------------------------------------
    async def lookup(self, target: bytes, *, timeout: float = 30.0, find: bool = False) -> list[Contact]: ...

    async def provide(self, name: str | bytes, *, meta: Any = None, timeout: float = 30.0) -> int: ...

    def unprovide(self, name: str | bytes) -> bool: ...

    async def find_providers(self, name: str | bytes, *, timeout: float = 30.0) -> list[ProviderInfo]: ...
