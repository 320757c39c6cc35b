"""The node's outgoing connections: one DEALER per peer we send to, kept in a bounded LRU.

A DEALER is only the second way to a peer: a peer that holds a connection to our inbox is answered
over it (``mesh.py``). The DEALER dials the endpoint in the peer's contact, authenticates with our
CURVE key against the peer's, and presents a routing id no one else can claim (``binding.py``).
At most ``max_dealers`` are open; opening one more closes the one used least recently.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

import zmq

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
    """DEALERs by peer node id, least recently used first.

    ``on_open`` is called with each new link once it is connecting (the Transport starts reading it),
    ``on_close`` with each link just before its socket closes (the Transport stops reading it).
    ``stats`` counts ``dealers_opened`` and ``dealers_evicted``."""

    def __init__(self, sockets: SocketMaker, public_key: bytes, max_dealers: int, stats: dict[str, int], *,
                 on_open: LinkHook, on_close: LinkHook):
        self._sockets = sockets
        self._public_key = public_key
        self._max_dealers = max_dealers
        self._stats = stats
        self._on_open = on_open
        self._on_close = on_close
        self._dealers: OrderedDict[bytes, Link] = OrderedDict()

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._dealers

    def __len__(self) -> int:
        return len(self._dealers)

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self._dealers.values()))

    def use(self, node_id: bytes) -> Link | None:
        """The open link to ``node_id`` (now the most recently used), or None."""
        link = self._dealers.get(node_id)
        if link is not None:
            self._dealers.move_to_end(node_id)
        return link

    def open(self, contact: Contact) -> Link:
        """Connect a new DEALER to ``contact``, closing the least recently used ones beyond the bound.
        Raises ``zmq.ZMQError`` if no socket can be made (out of fds, or of the context's sockets)."""
        while len(self._dealers) >= self._max_dealers:
            oldest = next(iter(self._dealers))
            self.close(oldest)
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
        self._on_open(link)
        self._stats["dealers_opened"] += 1
        return link

    def close(self, node_id: bytes) -> None:
        """Close the DEALER to ``node_id``, if one is open; what libzmq still queues in it is discarded."""
        link = self._dealers.pop(node_id, None)
        if link is not None:
            self._on_close(link)
            link.socket.close(linger=0)

    def clear(self) -> None:
        """Forget every link without closing it (the Transport closes the sockets itself, with its linger)."""
        self._dealers.clear()
