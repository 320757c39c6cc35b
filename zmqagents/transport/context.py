"""One ZeroMQ context, and the ZAP handler that goes with it, for one or many Transports.

A ``zmq.Context`` is two threads (its I/O thread and its reaper), an epoll set and a few eventfds,
and libzmq asks one ZAP handler per context about every CURVE connection (the handler binds the
fixed endpoint ``inproc://zeromq.zap.01``, so a context can have only one). A node alone owns a
context (``Transport`` makes one). Many nodes in one process (``zmqagents swarm``) share one: one
I/O thread for all of them instead of two threads per node, and one ZAP socket.

Sharing is safe because the ZAP handler decides nothing per node: it admits any CURVE key and
labels the connection with it, and each node's inbox then checks that label against the routing id
(binding.py) and its own allowlist. The one per-node decision ZAP makes, which subscribers a fleet
node's XPUB admits, needs the node's certificates, so a fleet node keeps a context of its own.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import zmq

from ..errors import InvalidArgument
from .binding import seed_libzmq_counters
from .zap import ZapHandler


class SocketContext:
    """A ``zmq.Context`` with ``io_threads`` I/O threads and room for ``max_sockets`` sockets, and the
    ZAP handler of its CURVE sockets, served from the event loop of the Transports attached to it.

    Each Transport attaches when it starts and detaches when it closes. The ZAP handler is made by the
    first secure attach and lives as long as the context (libzmq unbinds a closed socket's inproc
    endpoint later, on its reaper thread, so a new handler could not bind it at once); the event loop
    serves it while any Transport is attached. :meth:`close` terminates the context: a Transport that
    made its own closes it, the owner of a shared one closes it after the last Transport closed."""

    def __init__(self, *, io_threads: int = 1, max_sockets: int = 1024):
        seed_libzmq_counters()  # before our first ROUTER (and the ZAP handler's REP, built on one)
        self.ctx = zmq.Context(io_threads=io_threads)
        # ctx.set, not ctx.setsockopt: pyzmq's Context.setsockopt sets a default *socket* option for the
        # sockets it makes, so the limit stayed libzmq's 1023 sockets when set that way
        self.ctx.set(zmq.MAX_SOCKETS, min(max_sockets, self.ctx.get(zmq.SOCKET_LIMIT)))
        self.zap: ZapHandler | None = None
        self._fleet = False  # the ZAP handler admits subscribers by one fleet node's certificates
        self._loop: asyncio.AbstractEventLoop | None = None  # serving the ZAP handler while users > 0
        self._users = 0

    @property
    def users(self) -> int:
        """Transports attached now."""
        return self._users

    def attach(self, loop: asyncio.AbstractEventLoop, *, secure: bool,
               admit_subscriber: Callable[[bytes], bool] | None = None) -> None:
        """A Transport starts on ``loop``. ``admit_subscriber`` (a fleet node's) needs the context alone."""
        if self._users and loop is not self._loop:
            raise InvalidArgument("the nodes sharing a ZeroMQ context must run on one event loop")
        if self._fleet or (admit_subscriber is not None and (self._users or self.zap is not None)):
            raise InvalidArgument("a fleet node needs a ZeroMQ context of its own (its ZAP handler admits "
                                  "subscribers by its certificates)")
        if secure and self.zap is None:
            self.zap = ZapHandler(self.ctx, admit_subscriber=admit_subscriber)
            self._fleet = admit_subscriber is not None
        if self._users == 0 and self.zap is not None:
            zap = self.zap
            loop.add_reader(zap.socket.FD, zap.drain)
            loop.call_soon(zap.drain)  # a request may be waiting already (the FD is edge-triggered)
        self._loop = loop
        self._users += 1

    def detach(self) -> None:
        """A Transport closed; after the last one the event loop stops serving the ZAP handler."""
        if self._users == 0:
            return
        self._users -= 1
        if self._users == 0:
            self._unwatch()

    def _unwatch(self) -> None:
        if self.zap is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.zap.socket.FD)
        self._loop = None

    def close(self) -> None:
        """Terminate the context. Its sockets should be closed by now (they keep the linger they were
        closed with); one still open (a node whose start was cancelled half way) is closed here with
        linger 0, since libzmq's term would otherwise wait for it for ever."""
        if self.zap is not None:
            if self._users:
                self._unwatch()
            self.zap.close()
            self.zap = None
        self._users = 0
        self.ctx.destroy(linger=0)
