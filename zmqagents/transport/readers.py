"""The sockets a Transport reads, each registered with the event loop with its drain; pausable.

ZeroMQ's FD is edge-triggered: a socket registered late, or again after a pause, may hold messages
whose wake-up already fired, so every (re)registration is followed by one drain on the next turn.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import zmq

Drain = Callable[[zmq.Socket], None]


class Readers:
    """Sockets and their drains. :meth:`pause` stops reading them all, :meth:`resume` reads again."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the Transport's start()
        self._drains: dict[zmq.Socket, Drain] = {}
        self.paused = False

    def watch(self, sock: zmq.Socket, drain: Drain) -> None:
        assert self.loop is not None
        self._drains[sock] = drain
        if not self.paused:
            self.loop.add_reader(sock.FD, drain, sock)
            self.loop.call_soon(drain, sock)  # the FD may already have fired before we watched it

    def unwatch(self, sock: zmq.Socket) -> None:
        """Before ``sock`` closes."""
        self._drains.pop(sock, None)
        if self.loop is not None and not sock.closed and not self.paused:
            self.loop.remove_reader(sock.FD)

    def pause(self) -> None:
        if self.paused or self.loop is None:
            return
        self.paused = True
        for sock in self._drains:
            if not sock.closed:
                self.loop.remove_reader(sock.FD)

    def resume(self) -> None:
        if not self.paused or self.loop is None:
            return
        self.paused = False
        for sock, drain in list(self._drains.items()):
            if not sock.closed:
                self.loop.add_reader(sock.FD, drain, sock)
                self.loop.call_soon(drain, sock)
