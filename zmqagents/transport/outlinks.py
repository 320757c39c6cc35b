"""The node's outgoing connections: one DEALER per peer we send to, kept in a bounded LRU.

A DEALER is only the second way to a peer: a peer that holds a connection to our inbox is answered
over it (``mesh.py``). The DEALER dials the endpoint in the peer's contact, authenticates with our
CURVE key against the peer's, and presents a routing id no one else can claim (``binding.py``).
Which stay open is the link pool's call (``core/linkpool.py``): a DEALER with no traffic either way for
``link_idle_timeout`` closes, and at most ``max_dealers`` are open (opening one more closes the one
used least recently). A closed DEALER reopens on the next send to its peer. Its peer's inbox sees the
connection close, and answers over its own DEALER from then on (``mesh.py``, ``_route``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterator

import zmq

from ..core.linkpool import LinkPool, LinkPoolConfig
from ..identity import Contact
from .binding import dealer_routing_id
from .sockets import SocketMaker


class Link:
    """An outgoing connection (DEALER) or a subscription (SUB) to one peer."""

    __slots__ = ("node_id", "socket", "fd")

    def __init__(self, node_id: bytes, socket: zmq.Socket):
        self.node_id = node_id
        self.socket = socket
        self.fd = socket.FD


LinkHook = Callable[[Link], None]


class OutboundLinks:
    """DEALERs by peer node id, and the pool that says which to close and when.

    ``on_open`` is called with each new link once it is connecting (the Transport starts reading it),
    ``on_close`` with each link just before its socket closes (the Transport stops reading it).
    ``stats`` counts ``dealers_opened``, ``dealers_evicted`` (closed to make room) and
    ``dealers_idle_closed``. Idle links are looked for on the event loop given to :meth:`start`."""

    def __init__(self, sockets: SocketMaker, public_key: bytes, pool: LinkPoolConfig, stats: dict[str, int], *,
                 on_open: LinkHook, on_close: LinkHook, clock: Callable[[], float] = time.monotonic):
        self._sockets = sockets
        self._public_key = public_key
        self._pool_config = pool
        self._pool = LinkPool(pool)
        self._stats = stats
        self._on_open = on_open
        self._on_close = on_close
        self._clock = clock
        self._dealers: dict[bytes, Link] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Look for idle links on ``loop`` from now on."""
        self._loop = loop
        self._schedule_sweep()

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._dealers

    def __len__(self) -> int:
        return len(self._dealers)

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self._dealers.values()))

    def use(self, node_id: bytes) -> Link | None:
        """The open link to ``node_id``, about to be written to (it is in use now), or None."""
        link = self._dealers.get(node_id)
        if link is not None:
            self._pool.used(node_id, self._clock())
        return link

    def heard(self, node_id: bytes) -> None:
        """Something arrived on the link to ``node_id`` (it is in use now)."""
        self._pool.used(node_id, self._clock())

    def open(self, contact: Contact) -> Link:
        """Connect a new DEALER to ``contact``, closing the least recently used ones beyond the bound.
        Raises ``zmq.ZMQError`` if no socket can be made (out of fds, or of the context's sockets)."""
        for victim in self._pool.make_room():
            self._discard(victim)
            self._stats["dealers_evicted"] += 1
        sock = self._sockets.client(zmq.DEALER, contact.public_key)
        try:
            sock.setsockopt(zmq.ROUTING_ID, dealer_routing_id(self._public_key))
            sock.connect(contact.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        link = Link(contact.node_id, sock)
        self._dealers[contact.node_id] = link
        self._pool.opened(contact.node_id, self._clock())
        self._on_open(link)
        self._stats["dealers_opened"] += 1
        self._schedule_sweep()
        return link

    def close(self, node_id: bytes) -> None:
        """Close the DEALER to ``node_id``, if one is open; what libzmq still queues in it is discarded."""
        self._pool.closed(node_id)
        self._discard(node_id)

    def _discard(self, node_id: bytes) -> None:
        link = self._dealers.pop(node_id, None)
        if link is not None:
            self._on_close(link)
            link.socket.close(linger=0)

    def _schedule_sweep(self) -> None:
        if self._sweep is not None or self._loop is None:
            return
        now = self._clock()
        when = self._pool.next_sweep(now)
        if when is not None:
            self._sweep = self._loop.call_later(when - now, self._close_idle)

    def _close_idle(self) -> None:
        """Close the links the pool finds idle, and come back when the next may be."""
        self._sweep = None
        for node_id in self._pool.idle(self._clock()):
            self._discard(node_id)
            self._stats["dealers_idle_closed"] += 1
        self._schedule_sweep()

    def clear(self) -> None:
        """Forget every link without closing it (the Transport closes the sockets itself, with its linger)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._loop = None
        self._dealers.clear()
        self._pool = LinkPool(self._pool_config)
