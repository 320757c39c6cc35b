"""The local API: applications on the same host talk to the sidecar over a unix socket.

A ZeroMQ ROUTER bound to ``ipc://PATH``; a client connects a DEALER and exchanges envelopes
(``protocols/envelope.md``), one per frame. The operations, their replies and error codes are
specified in ``protocols/local-api.md``. Who may connect is decided by the file system: the socket
file gets ``[local_api] mode`` (default 0660: the sidecar's user and group), and a missing parent
directory is created 0750 (0700 if the mode grants the group nothing).

Bad input from a client (not one frame, not an envelope, oversize, wrong field types, an unknown
operation) gets an ``error`` reply naming the problem, is counted in ``stats``, and changes nothing:
the sidecar keeps serving every client. Frames beyond four times the envelope limit are refused by
libzmq itself, which drops that client's connection (nothing else is affected).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from ..envelope import DEFAULT_MAX_SIZE, Envelope, EnvelopeError, decode
from ..identity import Contact, IdentityError, format_node_id, parse_node_id
from ..queues import BoundedQueue
from ..errors import Error
from .localsocket import LocalApiError, prepare_socket_path
from . import views
from .localmesh import OPS as MESH_OPS, LocalMesh, MeshOpError, heard_within
from .serving import LocalServing, ServingError

if TYPE_CHECKING:
    from ..shell.api import NodeAPI

log = logging.getLogger(__name__)

READ_BATCH = 512  # frames per readable callback: one spool write (and fsync) per burst
MAX_CREDIT = 10_000  # messages a client may have asked for and not yet received
MAX_RECEIVERS = 1024  # clients holding credit at once (a client with none left is forgotten)
MAX_REQUESTS = 1024  # requests on the mesh on behalf of local clients at once
# Frames libzmq may queue for one client (ZMQ_SNDHWM): it counts messages, and a pushed message or a reply
# may be ~1 MiB (up to 4 MiB), so this is what bounds, in bytes, what a client that does not read makes the
# sidecar hold in libzmq: 16 frames. Beyond it a push waits in the node's inbox (bounded in bytes) and a
# reply in ``unsent`` (bounded in bytes, a share per client), and both are tried again (retry_after).
# With the former 20,000 a client holding 10,000 credit and not reading could pin 10,000 messages.
SEND_HWM = 16
# A full queue is the normal state of a client that reads promptly but slower than the mesh delivers: 16
# frames go in a few microseconds. A fixed 5 ms wait capped such a client at 16 frames per 5 ms (~3,200/s,
# ~1,000/s on a loaded box). So the wait starts short and doubles while the queue stays full, up to
# PUSH_RETRY: a client that is not reading costs one failed write per 5 ms, one that reads is written to
# again within a fraction of a millisecond; a frame from the client (it shows life) ends the wait.
PUSH_RETRY_MIN = 0.0002  # s before the first retry after a queue was found full
PUSH_RETRY = 0.005  # s, the longest wait between retries
UNSENT_REPLIES = 4096  # replies waiting for clients whose queues are full...
UNSENT_BYTES = 8 << 20  # ... and their bytes; one client may hold half of either
DEFAULT_REQUEST_TIMEOUT_MS = 30_000
DEFAULT_ACK_TIMEOUT_MS = 60_000  # a message handed to an acknowledging client goes back after this
MAX_ACK_TIMEOUT_MS = 3_600_000
MAX_ACK_IDS = 10_000  # ids in one ack
CHECK_INTERVAL = 1.0  # s between checks of serving clients' leases and unacknowledged messages
VERSION = 3  # of this API (protocols/local-api.md); `status` reports it
CLIENT_FIELDS = ("to", "topic")  # extra envelope fields the local API reads


class _Reply(Error):
    """Raised inside an operation to answer the client with an error."""

    def __init__(self, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.code = code
        self.extra = extra


def retry_after(wait: float) -> float:
    """The wait before the next retry when a queue is still full after a wait of ``wait`` s (0: it was
    not full before): PUSH_RETRY_MIN, doubling up to PUSH_RETRY."""
    return min(PUSH_RETRY, max(PUSH_RETRY_MIN, 2 * wait))


class _Client:
    __slots__ = ("rid", "credit", "acks", "full_until", "wait")

    def __init__(self, rid: bytes):
        self.rid = rid
        self.credit = 0
        self.full_until = 0.0  # loop time before which its queue is taken to be full (nothing pushed)
        self.wait = 0.0  # the last wait after a full queue (0 once a push went through): see retry_after
        self.acks = False  # the client acknowledges what it receives (version 2): see _Unacked


class _Unacked:
    """Messages handed to an acknowledging client, not yet acknowledged: they are still in the
    inbound spool, and go back to the head of the line if the client is gone or too slow. With a
    spool only their ids are held here (the spool has the rest); a node without one (tests, a plain
    Node) needs the Message to put it back."""

    __slots__ = ("timeout", "messages")

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.messages: OrderedDict[bytes, tuple[Any, float]] = OrderedDict()  # id -> (Message or None, handed at)


class LocalApi:
    """The ROUTER socket and the operations behind it. ``outbox`` may be None (send is then refused)."""

    consumes_messages = True  # direct messages go to local clients, not to the node command's stdout
    metric_name = "local_api"  # stats exported by the admin endpoint as zmqagents_local_api_events_total

    @property
    def pending(self) -> int:
        """Received messages waiting for a local client (a gauge)."""
        return self.node.inbox_size[0]

    def __init__(self, node: NodeAPI, outbox=None, *, path: str | os.PathLike, mode: int = 0o660,
                 max_size: int = DEFAULT_MAX_SIZE, inbox=None):
        self.node = node
        self.outbox = outbox
        self.inbox = inbox  # the node's inbound spool (sidecar/inbound.py), if it has one: acks go there
        self.serving = LocalServing(node, self._push_work)
        self.mesh = LocalMesh(node, self.serving.runtime, self._reply, self._send,
                              lambda rid: bool(self._unsent.held_by(rid)[0]))
        self._unacked: dict[bytes, _Unacked] = {}  # client -> what it was handed and has not acknowledged
        self._commit_scheduled = False
        self._checker: asyncio.TimerHandle | None = None
        self.path = Path(path)
        self.mode = mode
        self.max_size = max_size
        self.ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None
        self._clients: dict[bytes, _Client] = {}
        self._receivers: deque[_Client] = deque()  # clients with credit, in round-robin order
        self._pump: asyncio.Task | None = None
        self._credit_event: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._recheck_scheduled = False
        self._closed = False
        self.stats: dict[str, int] = dict.fromkeys((
            "frames_in", "replies_out", "messages_out", "sends_accepted", "sends_refused", "requests",
            "bad_frames", "malformed", "oversize", "unknown_op", "bad_request", "client_gone",
            "acks", "unknown_acks", "redelivered", "work_pushed", "client_full", "replies_held", "held_sent",
            "replies_refused", "publishes", "publishes_refused",
        ), 0)
        # Replies for clients whose queue was full, in order per client, written when there is room.
        self._unsent: BoundedQueue[bytes] = BoundedQueue(UNSENT_REPLIES, UNSENT_BYTES, 0.5)
        self._unsent_timer: asyncio.Handle | None = None
        self._unsent_wait = 0.0  # the last wait before retrying them (0 once one went through)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        prepare_socket_path(self.path, self.mode)
        self.ctx = zmq.Context(io_threads=1)
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a client that left raises, not vanishes
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_size)  # over-limit frames up to 4x get a clear error
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        old = os.umask(0o777 & ~self.mode)  # the socket file is born with the right mode...
        try:
            sock.bind(f"ipc://{self.path}")
        except zmq.ZMQError as exc:
            sock.close()
            self.ctx.term()
            raise LocalApiError(f"cannot bind the local API socket {self.path}: {exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)  # ...and keeps it whatever the umask did
        self.sock = sock
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.FD, self._drain)
        loop.call_soon(self._drain)
        self._credit_event = asyncio.Event()
        self._pump = loop.create_task(self._deliver())
        self._checker = loop.call_later(CHECK_INTERVAL, self._check)
        log.info("local API on %s (mode 0o%03o)", self.path, self.mode)

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Stop serving at once (the outbox, closed after, drains what was accepted)."""
        if self._closed or self.sock is None:
            return
        self._closed = True
        if self._checker is not None:
            self._checker.cancel()
        await self.mesh.close()
        await self.serving.close()
        for rid in list(self._unacked):
            self._give_back(rid)
        self._commit()
        for task in [self._pump, *self._tasks]:
            if task is not None:
                task.cancel()
        if self._unsent_timer is not None:
            self._unsent_timer.cancel()
        await asyncio.gather(*(t for t in [self._pump, *self._tasks] if t is not None), return_exceptions=True)
        asyncio.get_running_loop().remove_reader(self.sock.FD)
        self.sock.close(linger=0)
        self.ctx.term()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        if self.pending:
            log.warning("local API closed with %d received message(s) no client took", self.pending)

    def ready(self) -> bool:
        return self.sock is not None and not self._closed

    # -- reading client frames --------------------------------------------------------------------

    def _drain(self) -> None:
        sock = self.sock
        if sock is None or self._closed:
            return
        sends: list[tuple[bytes, Envelope, bytes, Contact | None]] = []
        for _ in range(READ_BATCH):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.stats["frames_in"] += 1
            rid = parts[0]
            if len(parts) != 2:
                self.stats["bad_frames"] += 1
                self._error(rid, None, "bad_frame", f"expected one envelope per message, got {len(parts) - 1} frames")
                continue
            try:
                env = decode(parts[1], max_size=self.max_size)
            except EnvelopeError as exc:
                kind = "oversize" if type(exc).__name__ == "OversizeEnvelope" else "malformed"
                self.stats[kind] += 1
                self._error(rid, None, kind, f"{type(exc).__name__}: {exc}")
                continue
            self.serving.heard(rid)
            self._shows_life(rid)
            try:
                if env.type == "send":
                    dst, contact = self._destination(env)
                    sends.append((rid, env, dst, contact))
                else:
                    self._operation(rid, env)
            except _Reply as reply:
                self.stats[reply.code] = self.stats.get(reply.code, 0) + 1
                self._error(rid, env.id, reply.code, str(reply), **reply.extra)
        else:
            asyncio.get_running_loop().call_soon(self._drain)  # more may wait; let others run first
        if sends:
            self._accept(sends)
        # Writing may have consumed the edge of the edge-triggered FD: look again.
        if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            asyncio.get_running_loop().call_soon(self._drain)

    def _shows_life(self, rid: bytes) -> None:
        """A frame from a client: it is reading its socket, so whatever waits for room in its queue is tried
        again at once rather than after the rest of its wait."""
        client = self._clients.get(rid)
        if client is not None and client.wait:
            client.full_until = 0.0
            client.wait = 0.0
        if self._unsent_wait and self._unsent_timer is not None and self._unsent.held_by(rid)[0]:
            self._unsent_timer.cancel()
            self._unsent_wait = 0.0
            self._unsent_timer = asyncio.get_running_loop().call_soon(self._send_unsent)

    def _wrote(self) -> None:
        """After a write outside _drain (a pushed message, an answer from a task): the FD is
        edge-triggered and a send can consume its edge, so clients' frames that arrived meanwhile
        would wait unnoticed (under a stream of pushes, for ever). Look once more, next loop turn."""
        if not self._recheck_scheduled:
            self._recheck_scheduled = True
            asyncio.get_running_loop().call_soon(self._recheck)

    def _recheck(self) -> None:
        self._recheck_scheduled = False
        if self.sock is not None and not self._closed and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._drain()

    def _destination(self, env: Envelope) -> tuple[bytes, Contact | None]:
        """The destination of a send or request: ``dst`` (a node id), or ``to`` (a contact or a hex id)."""
        to = env.extra.get("to")
        if to is not None:
            if type(to) is not str:
                raise _Reply("bad_request", "field 'to' must be a contact string PUBLICKEY@ENDPOINT or a hex node id")
            try:
                if "@" in to:
                    contact = Contact.parse(to)
                    return contact.node_id, contact
                return parse_node_id(to), None
            except IdentityError as exc:
                raise _Reply("bad_request", f"field 'to': {exc}") from None
        if env.dst is None:
            raise _Reply("bad_request", "say where to: field 'dst' (32-byte node id) or 'to' (contact)")
        return env.dst, None

    # -- operations ------------------------------------------------------------------------------

    def _accept(self, sends: list) -> None:
        """Spool a burst of sends (one write and one fsync when all fit), then answer each."""
        if self.outbox is None or not self.outbox.accepting:
            for rid, env, _, _ in sends:
                self.stats["sends_refused"] += 1
                self._error(rid, env.id, "unavailable", "the outbox is not accepting messages (stopping?)")
            return
        batch = [(dst, contact, env.body, env.id) for _, env, dst, contact in sends]
        for refused, (rid, env, _, _) in zip(self.outbox.accept(batch), sends):
            if refused is None:
                self.stats["sends_accepted"] += 1
                self._reply(rid, "accepted", env.id, None)
                continue
            self.stats["sends_refused"] += 1
            code = "spool_full" if type(refused).__name__ == "SpoolFull" else \
                "bad_envelope" if isinstance(refused, EnvelopeError) else "spool_error"
            self._error(rid, env.id, code, str(refused))

    def _operation(self, rid: bytes, env: Envelope) -> None:
        op = env.type
        if op == "receive":
            self._receive(rid, env)
        elif op == "request":
            self._request(rid, env)
        elif op == "publish":
            topic = env.extra.get("topic")
            if type(topic) is not str or not topic:
                raise _Reply("bad_request", "publish needs a non-empty string field 'topic'")
            self._publish(rid, env, topic)
        elif op == "peers" and env.extra.get("to") is not None:
            self._mesh_op(rid, env, lambda: self.mesh.peers_of(rid, env, env.extra["to"]))
        elif op == "peers":
            self._reply(rid, "peers", env.id, self.node.peers())
        elif op in MESH_OPS:
            self._mesh_op(rid, env, lambda: self.mesh.operation(rid, env))
        elif op == "status":
            self._reply(rid, "status", env.id, self.status())
        elif op == "top":
            self._reply(rid, "top", env.id, self.top())
        elif op == "members":
            rows = views.members(self.node)
            self._reply(rid, "members", env.id, {"members": views.first_rows(rows), "total": len(rows)})
        elif op == "ack":
            self._ack(rid, env)
        elif op == "ping":
            self._reply(rid, "ok", env.id, None)
        elif op in ("progress", "result", "fail"):
            try:
                self.serving.answer(rid, op, env.re, env.body)
            except ServingError as exc:
                raise _Reply(exc.code, str(exc)) from None
            self._reply(rid, "ok", env.id, None)
        elif op in ("serve", "withdraw", "handle"):
            self._serving_op(rid, env)
        else:
            raise _Reply("unknown_op", f"unknown operation {op!r}: use send, request, receive, ack, publish, peers, "
                         "status, top, members, serve, withdraw, handle, progress, result, fail, ping, subscribe, "
                         "unsubscribe, submit, cancel, find, dht_get or dht_put")

    def _mesh_op(self, rid: bytes, env: Envelope, start) -> None:
        """Start an operation of localmesh.py; one it refuses before starting is answered and counted here."""
        try:
            start()
        except MeshOpError as exc:
            raise _Reply(exc.code, str(exc)) from None

    def _serving_op(self, rid: bytes, env: Envelope) -> None:
        op = env.type
        if op == "serve":
            async def run() -> None:
                try:
                    result = await self.serving.serve(rid, env.body)
                except ServingError as exc:
                    self.stats[exc.code] = self.stats.get(exc.code, 0) + 1
                    self._error(rid, env.id, exc.code, str(exc))
                else:
                    self._reply(rid, "ok", env.id, result)
            self._track(asyncio.get_running_loop().create_task(run()))
            return
        try:
            result = self.serving.withdraw(rid, env.body) if op == "withdraw" else self.serving.handle(rid, env.body)
        except ServingError as exc:
            raise _Reply(exc.code, str(exc)) from None
        self._reply(rid, "ok", env.id, result)

    def _push_work(self, rid: bytes, env: Envelope) -> bool:
        """Push a task, request or cancel to a serving client; False if it is gone."""
        env.ts = int(time.time() * 1000)
        try:
            frame = env.encode(max_size=4 * self.max_size)
        except EnvelopeError:
            self.stats["client_gone"] += 1
            return False
        if self._write(rid, frame) in ("gone", "refused"):  # held (its queue is full) is pushed, in order
            self.stats["client_gone"] += 1
            return False
        self.stats["work_pushed"] += 1
        return True

    def _receive(self, rid: bytes, env: Envelope) -> None:
        body = env.body if env.body is not None else {}
        credit = body.get("credit", 100) if isinstance(body, dict) else None
        if type(credit) is not int or credit < 0:
            raise _Reply("bad_request", "receive body must be {\"credit\": N} with N a non-negative integer")
        acks = body.get("ack", False)
        ack_timeout = body.get("ack_timeout_ms", DEFAULT_ACK_TIMEOUT_MS)
        if type(acks) is not bool or type(ack_timeout) is not int or not 1000 <= ack_timeout <= MAX_ACK_TIMEOUT_MS:
            raise _Reply("bad_request", f"receive: 'ack' must be a boolean and 'ack_timeout_ms' an integer "
                         f"1000..{MAX_ACK_TIMEOUT_MS}")
        unacked = self._unacked.get(rid)
        if acks:
            if unacked is None:
                unacked = self._unacked[rid] = _Unacked(ack_timeout / 1000)
            unacked.timeout = ack_timeout / 1000
            credit = min(credit, max(0, MAX_CREDIT - len(unacked.messages)))  # credit + unacked stay bounded
        client = self._clients.get(rid)
        if client is None and credit:
            if len(self._clients) >= MAX_RECEIVERS:
                raise _Reply("busy", f"{MAX_RECEIVERS} clients are already receiving; retry later")
            client = self._clients[rid] = _Client(rid)
        total = 0
        if client is not None:
            client.acks = acks
            had = client.credit
            client.credit = total = min(MAX_CREDIT, client.credit + credit)
            if not had:
                self._receivers.append(client)
            self._credit_event.set()
        self._reply(rid, "ok", env.id, {"credit": total, "queued": self.pending})

    def _request(self, rid: bytes, env: Envelope) -> None:
        if len(self._tasks) >= MAX_REQUESTS:
            raise _Reply("busy", f"{MAX_REQUESTS} requests are already in flight; retry later")
        dst, contact = self._destination(env)
        timeout = (env.ttl or DEFAULT_REQUEST_TIMEOUT_MS) / 1000
        self.stats["requests"] += 1

        async def run() -> None:
            from ..node import NodeError, RemoteError, RequestTimeout, UnknownPeer

            began = time.monotonic()
            try:
                result = await self.node.request(contact or dst, env.body, timeout=timeout)
            except RemoteError as exc:
                self._error(rid, env.id, "remote", str(exc), remote=exc.body)
            except RequestTimeout as exc:
                if heard_within(self.node, dst, time.monotonic() - began):
                    self._error(rid, env.id, "timeout", str(exc))
                else:
                    self._error(rid, env.id, "unreachable", f"{exc}: it acknowledged nothing (unreachable: down or cut off)")
            except UnknownPeer as exc:
                self._error(rid, env.id, "unknown_peer", str(exc))
            except NodeError as exc:
                self._error(rid, env.id, "unreachable", str(exc))
            except Exception as exc:  # e.g. a body the envelope cannot carry
                self._error(rid, env.id, "bad_request", f"{type(exc).__name__}: {exc}")
            else:
                self._reply(rid, "reply", env.id, result)

        self._track(asyncio.get_running_loop().create_task(run()))

    def _publish(self, rid: bytes, env: Envelope, topic: str) -> None:
        """Hand a publication to the node and answer with what it decided: ``ok`` with the sequence
        number, or ``refused`` (over the broadcast size limit or the origin's rate, counted) so a client
        never takes a publication the node dropped for a sent one."""
        async def run() -> None:
            try:
                seq = await self.node.publish(topic, env.body)
            except ValueError as exc:  # PublishError: oversize, rate, or a body the envelope cannot carry
                self.stats["publishes_refused"] += 1
                self._error(rid, env.id, "refused", str(exc))
            else:
                self.stats["publishes"] += 1
                self._reply(rid, "ok", env.id, {"seq": seq})

        self._track(asyncio.get_running_loop().create_task(run()))

    def _track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- delivering received messages to clients ------------------------------------------------------

    async def _deliver(self) -> None:
        """Move direct messages from the node to clients that asked for them (credit).

        With no client asking, messages wait in the node's inbox (bounded by its ``inbox_limit`` and
        ``inbox_bytes``; beyond them the node leaves new ones unacknowledged, so their senders
        retransmit later). A message taken for a client that turns out to be gone goes back to the
        head of the inbox, so what waits here never exceeds those bounds.
        """
        loop = asyncio.get_running_loop()
        while True:
            while not self._receivers:
                self._credit_event.clear()
                await self._credit_event.wait()
            wait = min(c.full_until for c in self._receivers) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # every client with credit has a full queue: until the first retry
                continue
            msg = await self.node.receive()
            while True:
                client = self._next_receiver()
                if client is None:
                    self.node.requeue(msg)  # nobody to take it now: first in line for the next one
                    break
                if self._push(client, msg):
                    break

    def _next_receiver(self) -> _Client | None:
        """The next client in turn with credit and room in its queue, or None."""
        receivers = self._receivers
        now = asyncio.get_running_loop().time()
        for _ in range(len(receivers)):
            if not receivers:
                break
            client = receivers[0]
            if client.credit <= 0:
                receivers.popleft()
                continue
            receivers.rotate(-1)
            if client.full_until <= now:
                return client
        return None

    def _push(self, client: _Client, msg) -> bool:
        env = Envelope(msg.id, msg.src, msg.type, msg.body, None, int(time.time() * 1000))
        try:
            frame = env.encode(max_size=4 * self.max_size)
            self.sock.send_multipart((client.rid, frame), zmq.NOBLOCK)
        except zmq.Again:
            # Its queue is full (SEND_HWM): it has not read that far yet. It keeps its credit; the message
            # stays first in line (in the node's inbox, bounded in bytes) and the client is tried again
            # after a wait that grows while it stays full (retry_after), or when it sends a frame.
            self.stats["client_full"] += 1
            client.wait = retry_after(client.wait)
            client.full_until = asyncio.get_running_loop().time() + client.wait
            return False
        except zmq.ZMQError:
            # Gone (EHOSTUNREACH): it gets nothing more until it asks again, and what it did not
            # acknowledge goes to the next client.
            self.stats["client_gone"] += 1
            self._clients.pop(client.rid, None)
            client.credit = 0
            try:
                self._receivers.remove(client)
            except ValueError:
                pass
            self._give_back(client.rid)
            return False
        self._wrote()
        client.wait = 0.0
        if client.acks:
            unacked = self._unacked.get(client.rid)
            if unacked is None:
                unacked = self._unacked[client.rid] = _Unacked(DEFAULT_ACK_TIMEOUT_MS / 1000)
            unacked.messages[msg.id] = (None if self.inbox is not None else msg, time.monotonic())
        elif self.inbox is not None:
            self.inbox.ack(msg.id)  # written to the client: version 1 semantics, acknowledged on its behalf
            self._schedule_commit()
        client.credit -= 1
        if not client.credit:
            self._clients.pop(client.rid, None)  # it asks again (a new entry) when it wants more
        self.stats["messages_out"] += 1
        return True

    # -- acknowledgements ---------------------------------------------------------------------------

    def _ack(self, rid: bytes, env: Envelope) -> None:
        """``ack``: body ``{"ids": [ID, ...]}`` of messages this client was handed."""
        ids = env.body.get("ids") if isinstance(env.body, dict) else None
        if type(ids) is not list or len(ids) > MAX_ACK_IDS or any(type(i) is not bytes for i in ids):
            raise _Reply("bad_request", f"ack body must be {{\"ids\": [...]}}: at most {MAX_ACK_IDS} message ids "
                         "(bin)")
        unacked = self._unacked.get(rid)
        done = unknown = 0
        for mid in ids:
            entry = unacked.messages.pop(mid, None) if unacked is not None else None
            if entry is None:
                unknown += 1
                continue
            done += 1
            if self.inbox is not None:
                self.inbox.ack(mid)
        self.stats["acks"] += done
        self.stats["unknown_acks"] += unknown
        if done:
            self._schedule_commit()
        self._reply(rid, "ok", env.id, {"acked": done, "unknown": unknown})

    def _give_back(self, rid: bytes) -> None:
        """The client is gone: what it was handed and did not acknowledge goes back, first in line, in order."""
        unacked = self._unacked.pop(rid, None)
        if unacked is None:
            return
        for mid, (msg, _) in reversed(unacked.messages.items()):
            self._put_back(mid, msg)

    def _check(self) -> None:
        """Every second: serving clients' leases, and messages not acknowledged in time go back."""
        self._checker = asyncio.get_running_loop().call_later(CHECK_INTERVAL, self._check)
        self.serving.expire()
        self.mesh.check()
        now = time.monotonic()
        for rid, unacked in list(self._unacked.items()):
            late = [(mid, m) for mid, (m, at) in unacked.messages.items() if now - at > unacked.timeout]
            for mid, msg in reversed(late):
                del unacked.messages[mid]
                self._put_back(mid, msg)
            if not unacked.messages and rid not in self._clients:
                del self._unacked[rid]

    def _put_back(self, mid: bytes, msg: Any) -> None:
        """A handed message goes back to the head of the line, to be pushed again."""
        if self.inbox is not None:
            self.inbox.release(mid)
        else:
            self.node.requeue(msg)
        self.stats["redelivered"] += 1

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled and self.inbox is not None:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self._commit_scheduled = False
        if self.inbox is not None:
            self.inbox.commit()
            if not self._closed:
                # Acknowledged messages left the spool's bounds: senders it refused meanwhile get a window
                # update now, not when their backed-off retransmission finds the room (up to rto_max later).
                self.node.room_made()

    # -- replies -------------------------------------------------------------------------------------

    def _reply(self, rid: bytes, typ: str, re: bytes | None, body: Any) -> None:
        self._send(rid, typ, re, body)

    def _send(self, rid: bytes, typ: str, re: bytes | None, body: Any) -> str:
        """An answer or a push (``re`` naming the operation it belongs to); what ``_write`` said."""
        env = Envelope(os.urandom(16), self.node.node_id, typ, body, None, int(time.time() * 1000), re=re)
        try:
            frame = env.encode(max_size=4 * self.max_size)
        except EnvelopeError as exc:
            env = Envelope(os.urandom(16), self.node.node_id, "error",
                           {"code": "internal", "error": f"reply could not be encoded: {exc}"}, re=re)
            frame = env.encode()
        result = self._write(rid, frame)
        if result == "sent":
            self.stats["replies_out"] += 1
        return result

    def _write(self, rid: bytes, frame: bytes) -> str:
        """Write a reply or pushed work to a client: "sent"; "held" when its queue is full (or earlier frames
        for it are held: this one goes after them), written later in order; "refused" when the held
        frames are over their bounds (dropped, counted); "gone" when the client left (counted)."""
        if not self._unsent.held_by(rid)[0]:
            try:
                self.sock.send_multipart((rid, frame), zmq.NOBLOCK)
            except zmq.Again:
                pass
            except zmq.ZMQError:
                self.stats["client_gone"] += 1  # it left before its answer
                return "gone"
            else:
                self._wrote()
                return "sent"
        # Held within UNSENT_REPLIES and UNSENT_BYTES, half of each per client: beyond them the client is not
        # reading what it asked for, and what it would be sent is dropped.
        if self._unsent.refuses(rid, len(frame)) is not None:
            self.stats["replies_refused"] += 1
            return "refused"
        self._unsent.put(frame, rid, len(frame))
        self.stats["replies_held"] += 1
        if self._unsent_timer is None:
            self._unsent_wait = retry_after(0.0)
            self._unsent_timer = asyncio.get_running_loop().call_later(self._unsent_wait, self._send_unsent)
        return "held"

    def _send_unsent(self) -> None:
        """Write the held frames, oldest first; a client whose queue is still full keeps the rest of its
        frames, in order, for the next try."""
        self._unsent_timer = None
        if self._closed:
            return
        unsent = self._unsent
        waiting: list[tuple[bytes, bytes, int]] = []
        full: set[bytes] = set()
        sent = 0
        for _ in range(len(unsent)):
            frame, rid, cost = unsent.get_nowait()
            if rid in full:
                waiting.append((frame, rid, cost))
                continue
            try:
                self.sock.send_multipart((rid, frame), zmq.NOBLOCK)
            except zmq.Again:
                full.add(rid)
                waiting.append((frame, rid, cost))
                continue
            except zmq.ZMQError:
                self.stats["client_gone"] += 1
                continue
            self._wrote()
            self.stats["held_sent"] += 1
            sent += 1
        for entry in reversed(waiting):
            unsent.unget(*entry)
        if waiting:
            self._unsent_wait = retry_after(0.0 if sent else self._unsent_wait)
            self._unsent_timer = asyncio.get_running_loop().call_later(self._unsent_wait, self._send_unsent)
        else:
            self._unsent_wait = 0.0

    def _error(self, rid: bytes, re: bytes | None, code: str, message: str, **extra: Any) -> None:
        self._reply(rid, "error", re, {"code": code, "error": message, **extra})

    def top(self) -> dict:
        """The node's live view (``views.snapshot``, its table cut to ``views.MAX_ROWS``) and what
        waits in this sidecar: messages for local clients, the outbox, the inbound spool."""
        view = views.snapshot(self.node)
        view["peers_total"] = len(view["peers"])
        view["peers"] = views.first_rows(view["peers"])
        view["queues"].update({
            "local_unacked": sum(len(u.messages) for u in self._unacked.values()),
            "outbox_queued": self.outbox.status()["queued"] if self.outbox is not None else 0,
            "inbound_queued": self.inbox.status()["queued"] if self.inbox is not None else 0,
        })
        return view

    def status(self) -> dict:
        node = self.node
        return {
            "version": VERSION,
            "node_id": format_node_id(node.node_id),
            "contact": str(node.contact),
            "inbox": self.pending,
            "clients_receiving": len(self._receivers),
            "local_api": dict(self.stats),
            "outbox": self.outbox.status() if self.outbox is not None else None,
            "delivery": dict(node.delivery.stats),
            "drops": dict(node.transport.drops),
            "inbound": self.inbox.status() if self.inbox is not None else None,
            "unacked": sum(len(u.messages) for u in self._unacked.values()),
            "serving": self.serving.status(),
            "mesh": self.mesh.status(),
        }


def create(sidecar) -> LocalApi:
    """The daemon's factory (no IO here: the socket is bound in start())."""
    cfg = sidecar.config.local_api
    return LocalApi(sidecar.node, sidecar.services.get("outbox"), path=cfg.path, mode=cfg.mode,
                    inbox=sidecar.inbox)
