"""What every read and write on a ZeroMQ socket in this package shares: flags and the readable check.

The flags are plain ints: pyzmq's constants are enum members, and combining
them (``zmq.SNDMORE | zmq.NOBLOCK``) builds a new enum member, a Python call,
on every message.
"""

from __future__ import annotations

import zmq

NOBLOCK = int(zmq.NOBLOCK)
MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def readable(sock: zmq.Socket) -> bool:
    """True if a message is waiting on ``sock``.

    For a socket that is most likely empty (the re-check after a burst of
    sends; the ZAP socket, one request per handshake): asking costs a few
    times less CPU than a receive that fails with a raised ``zmq.Again``.
    It is no cheaper per message than a receive that succeeds, though (it
    always polls libzmq's command mailbox, a system call, where a receive
    that finds a message does so once per 100 messages), so busy sockets are
    drained by receiving until ``zmq.Again``. Reading ZMQ_EVENTS processes
    the socket's pending commands, which is what re-arms its edge-triggered
    FD, so "not readable" leaves the socket in the same state as EAGAIN does.
    """
    return bool(sock.get(_EVENTS) & _POLLIN)
