"""An asyncio client of the local API (``protocols/local-api.md``): what the CLI uses to work through a
running sidecar instead of starting a node of its own.

Many operations are in flight on one DEALER connection; each answer is matched to its call by
``re``. Operations that go on after their answer (``subscribe``, ``submit``) are *streams*: every
envelope whose ``re`` names the operation (the answer, then the pushes) goes to the stream's queue,
in order. The queue is bounded: a caller that stops reading loses the oldest pushes (counted in
``dropped``), never the sidecar's memory or its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Any

import zmq
import zmq.asyncio

from ..envelope import DEFAULT_MAX_SIZE, Envelope, EnvelopeError, decode

log = logging.getLogger(__name__)

NO_SRC = bytes(32)  # what a local client puts in `src`: it has no node id of its own
STREAM_QUEUE = 4096  # envelopes one stream holds for a reader that has not taken them yet


class Stream:
    """The answer and the pushes of one streaming operation, in order (see :meth:`LocalClient.stream`)."""

    def __init__(self, client: "LocalClient", op_id: bytes):
        self.client = client
        self.id = op_id
        self._items: deque[Envelope] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0  # pushes lost because the reader fell STREAM_QUEUE behind

    def _put(self, env: Envelope) -> None:
        if len(self._items) >= STREAM_QUEUE:
            self._items.popleft()
            self.dropped += 1
        self._items.append(env)
        self._ready.set()

    async def next(self, timeout: float | None = None) -> Envelope:
        """The next envelope of this operation (asyncio.TimeoutError after ``timeout`` s)."""
        while not self._items:
            self._ready.clear()
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self._items.popleft()

    def close(self) -> None:
        self.client._streams.pop(self.id, None)


class LocalClient:
    """Many local API operations in flight on one connection.

    :meth:`call` returns the sidecar's answer envelope (``accepted``, ``reply``, ``ok``, ``error``, ...).
    """

    def __init__(self, path: str | os.PathLike, *, max_size: int = DEFAULT_MAX_SIZE):
        self.max_size = max_size
        self.ctx = zmq.asyncio.Context(io_threads=1)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{os.fspath(path)}")
        self._waiting: dict[bytes, asyncio.Future] = {}
        self._streams: dict[bytes, Stream] = {}
        self._pushes: Stream | None = None  # work pushed to a serving client (no `re` of ours): see pushes()
        self._reader: asyncio.Task | None = None

    def _envelope(self, op: str, body: Any, to: str | None, ttl_ms: int, msg_id: bytes | None,
                  re: bytes | None, fields: dict[str, Any]) -> Envelope:
        env = Envelope(msg_id or os.urandom(16), NO_SRC, op, body, ttl=ttl_ms, re=re)
        if to is not None:
            env.extra["to"] = to
        env.extra.update(fields)
        return env

    async def call(self, op: str, body: Any = None, *, to: str | None = None, ttl_ms: int = 0,
                   msg_id: bytes | None = None, re: bytes | None = None, timeout: float = 30.0,
                   **fields: Any) -> Envelope:
        env = self._envelope(op, body, to, ttl_ms, msg_id, re, fields)
        frame = env.encode(max_size=self.max_size)
        future = asyncio.get_running_loop().create_future()
        self._waiting[env.id] = future
        self._start_reader()
        try:
            await self.sock.send(frame)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(env.id, None)

    async def stream(self, op: str, body: Any = None, **fields: Any) -> Stream:
        """Send an operation whose answer is followed by pushes; read them all with ``Stream.next``."""
        env = self._envelope(op, body, None, 0, None, None, fields)
        frame = env.encode(max_size=self.max_size)
        stream = self._streams[env.id] = Stream(self, env.id)
        self._start_reader()
        await self.sock.send(frame)
        return stream

    def pushes(self) -> Stream:
        """The envelopes the sidecar pushes that answer no operation of ours: the ``task``, ``request`` and
        ``cancel`` pushes a serving client gets (``protocols/local-api.md`` §5), in order, bounded."""
        if self._pushes is None:
            self._pushes = Stream(self, b"")
            self._start_reader()
        return self._pushes

    def _start_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            frame = await self.sock.recv()
            try:
                env = decode(frame, max_size=4 * self.max_size)
            except EnvelopeError as exc:
                log.warning("undecodable answer from the sidecar: %s", exc)
                continue
            stream = self._streams.get(env.re) if env.re is not None else None
            if stream is not None:
                stream._put(env)
                continue
            future = self._waiting.get(env.re) if env.re is not None else None
            if future is not None and not future.done():
                future.set_result(env)
            elif future is None and self._pushes is not None:
                self._pushes._put(env)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()
        self.ctx.term()
