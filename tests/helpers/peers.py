"""Hand-made peers: raw ZeroMQ sockets written from protocols/ alone, for tests that play a peer.

The hostile-peer, transport, node and deadline tests each need a DEALER that authenticates with a
key of its choosing and claims a routing id of its choosing (honestly or not) on a node's inbox;
this is the one that makes it.
"""

from __future__ import annotations

import zmq

from zmqagents.identity import Contact, Identity, curve_public_of


def curve_dealer(ctx: zmq.Context, server: Contact, *, key: Identity, routing_id: bytes | None,
                 options: dict[int, int] | None = None) -> zmq.Socket:
    """A DEALER connected to ``server``'s inbox, CURVE-authenticated as ``key``, claiming ``routing_id``
    (None: none, libzmq assigns one). Linger 0, so closing it never waits. ``options``: more socket
    options (``zmq.RCVHWM``, ``zmq.RCVBUF``, ...), set before it connects."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    for option, value in (options or {}).items():
        sock.setsockopt(option, value)
    sock.curve_secretkey = key.curve_secret
    sock.curve_publickey = key.curve_public
    sock.curve_serverkey = curve_public_of(server.public_key)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(server.endpoint)
    return sock
