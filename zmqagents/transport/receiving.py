"""Every read of a Transport's sockets: the ROUTER inbox through the read backlog, and the replies and
publications on the links it opened (DEALER, SUB).

Nothing reaches the cores before it passed, cheapest first: one frame per envelope, the routing id
bound to the CURVE key its connection proved (``binding.py``), room in the read backlog, the
sender's rate limit (``core/ratelimit.py``), then the envelope's decoding, its ``src`` (the sender)
and ``dst`` (us, or nobody), and, with ``join = "fleet"``, the sender's certificate (``fleet.py``).
Each refusal is counted and logged through ``drop``.

ZeroMQ's FD is edge-triggered, so every drain reads its socket until EAGAIN (in bounded batches,
the rest on a later loop turn).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

import zmq

from ..core.ratelimit import PeerLimiter
from ..envelope import ENVELOPE_COST, Envelope, EnvelopeError, decode
from ..identity import short_id
from .backlog import ReadBacklog
from .binding import ROUTING_ID_SIZE, PeerBinding
from .config import TransportConfig
from .fleet import FleetGate
from .peertraffic import PeerTraffic
from .readers import Readers
from .sockio import NOBLOCK

READ_BATCH = 512  # messages per readable callback before yielding to the loop
# ...or fewer: a batch ends once the envelopes decoded in it cost this much (Envelope.cost), so a burst
# of large envelopes is handed on (and its memory freed) one or two at a time, not 512 at once. 1 MiB:
# one envelope of 16,384 values (~1.6 MB decoded) or one wide string (~4 MiB) is then a batch alone,
# where 2 MiB let two of the first or a wide string after 2 MiB of others be held at once; batches of
# small envelopes end at DECODE_BATCH long before (64 x ~2 KB).
BATCH_BYTES = 1 << 20
# Frames the inbox takes out of libzmq per turn, at most, before it decodes (into the read backlog,
# where they are bounded in bytes; see backlog.py): a few microseconds each, so a turn stays short.
READ_AHEAD = READ_BATCH
# Envelopes the inbox decodes and hands on per turn: the replies a batch queues go out before the next
# one is decoded, so a request waits for at most one batch of another peer's flood (~128 x what the
# node does per message), not 512 (bench/hostile.py, honest_p99_ms_during_flood).
DECODE_BATCH = 64
COPY_BELOW = 16384  # frames up to this size wait in the backlog as a copy, larger ones as libzmq's buffer

BatchHandler = Callable[[list[Envelope]], None]
PublicationHandler = Callable[[bytes, Envelope], None]
Drop = Callable[[str, bytes, object], None]


class Receiver:
    """Reads and checks what arrives on a Transport's sockets and hands the envelopes on.

    ``inbound`` maps each node id to the routing id of its latest connection to our inbox that proved
    its key: the Transport answers over it. ``peer_of`` names the peer of a DEALER or SUB socket (None
    once it is closed); ``allow``, when set, is the only nodes the inbox accepts frames from."""

    def __init__(self, node_id: bytes, config: TransportConfig, readers: Readers, *,
                 on_batch: BatchHandler, on_publication: PublicationHandler,
                 peer_of: Callable[[zmq.Socket], bytes | None], drop: Drop, stats: dict[str, int],
                 peer_traffic: PeerTraffic, limiter: PeerLimiter, fleet: FleetGate | None,
                 allow: frozenset[bytes] | None):
        self.node_id = node_id
        self.config = config
        self.allow = allow
        self.inbound: OrderedDict[bytes, bytes] = OrderedDict()
        self._readers = readers
        self._on_batch = on_batch
        self._on_publication = on_publication
        self._peer_of = peer_of
        self._drop = drop
        self._stats = stats
        self._peer_traffic = peer_traffic
        self._limiter = limiter
        self._fleet = fleet
        self._backlog = ReadBacklog(config.read_backlog_bytes, config.read_backlog_bytes // 2,
                                    config.read_backlog_bytes // 4)
        self._binding = PeerBinding(secure=config.secure, max_keys=config.max_known_keys, drop=drop)
        self._router_again = False  # a drain of the ROUTER is scheduled for the next loop turn

    @property
    def backlog_bytes(self) -> int:
        """What frames read off the inbox and not yet decoded hold (``backlog.py``)."""
        return self._backlog.bytes

    def drain_router(self, sock: zmq.Socket) -> None:
        """Take what libzmq holds for the inbox into the read backlog, then decode one batch from the
        backlog and hand it on (``backlog.py`` says why the two steps)."""
        if sock.closed or self._readers.paused:  # paused: resume() drains it
            return
        more = self._read_router(sock)
        backlog = self._backlog
        batch: list[Envelope] = []
        inbound = self.inbound
        fleet = self._fleet
        limiter = self._limiter
        now = time.monotonic()
        cost = 0
        for _ in range(DECODE_BATCH):
            if cost > BATCH_BYTES:  # the rest next turn, this batch's memory freed
                break
            item = backlog.take()
            if item is None:
                break
            sender, rid, frame = item
            why = limiter.in_debt(sender, now)  # its envelopes decoded since were dearer than their length
            if why is not None:
                self._drop(why, sender, "over its rate limit")
                continue
            env = self._decode_admitted(frame, sender)
            if env is None:
                continue
            cost += env.cost
            if inbound.get(sender) != rid and len(rid) == ROUTING_ID_SIZE:  # never answer a guessable id
                inbound[sender] = rid
                while len(inbound) > self.config.max_known_keys:
                    inbound.popitem(last=False)
            if fleet is not None and not fleet.admit(env):
                continue
            batch.append(env)
        if batch:
            self._on_batch(batch)  # first: the replies it queues are written before the next drain
        if more or len(backlog):
            self._drain_router_later(sock)

    def _read_router(self, sock: zmq.Socket) -> bool:
        """Move frames from libzmq into the read backlog until it has none (False) or READ_AHEAD frames
        were read (True: more may wait). Only checks that cost no decoding run here: the frame count,
        the routing id's binding, the backlog's room, the sender's rate."""
        stats = self._stats
        secure = self.config.secure
        backlog = self._backlog
        limiter = self._limiter
        now = time.monotonic()
        for _ in range(READ_AHEAD):
            try:
                rid_frame = sock.recv(NOBLOCK, copy=False)
            except zmq.Again:
                return False
            # Multipart messages arrive whole, so the frames after the first are already here.
            body = None
            extra = False
            if rid_frame.more:
                body = sock.recv(NOBLOCK, copy=False)
                more = body.more
                while more:
                    more = sock.recv(NOBLOCK, copy=False).more
                    extra = True
            size = 0 if body is None else len(body)
            stats["frames_in"] += 1
            stats["bytes_in"] += size
            rid = rid_frame.bytes
            if extra:
                self._drop("multipart", rid, "unexpected extra frames")
                continue
            sender = self._binding.sender(rid, rid_frame.get("User-Id") if secure else None, self.allow)
            if sender is None:
                continue
            self._peer_traffic.received(sender, size)
            why = backlog.refuses(sender, size)
            if why is None:
                why = limiter.admit(sender, size, now)
            if why is not None:
                self._drop(why, sender, "over its rate limit or its share of the read backlog")  # unacked: resent later
                continue
            # A small frame is copied: the zero-copy buffer it came in is shared with the others libzmq
            # decoded from the same read (~18 KB) and would be pinned while it waits. A large one has its own.
            backlog.put(sender, rid, b"" if body is None else body.bytes if size <= COPY_BELOW else body.buffer)
        return True

    def _drain_router_later(self, sock: zmq.Socket) -> None:
        """Drain again next loop turn, once: the FD's callback and the flush's re-check also drain, and
        a drain that reschedules itself for each of them would multiply under a flood, each turn longer
        than the last, until nothing else (a timer, the local API) got a turn for seconds."""
        if not self._router_again:
            self._router_again = True
            self._readers.loop.call_soon(self._drain_router_again, sock)

    def _drain_router_again(self, sock: zmq.Socket) -> None:
        self._router_again = False
        self.drain_router(sock)

    def _decode(self, frame: bytes, sender: bytes) -> Envelope | None:
        """The envelope in ``frame`` from the authenticated ``sender``, or None (dropped and counted).

        The sender's rate limit is checked first, on the frame's length alone, so a flood costs a
        comparison per frame; what the envelope cost to decode beyond its length is charged after.
        """
        why = self._limiter.admit(sender, len(frame), time.monotonic())
        if why is not None:
            self._drop(why, sender, "over its rate limit")  # unacked: a reliable sender retransmits later
            return None
        return self._decode_admitted(frame, sender)

    def _decode_admitted(self, frame: bytes, sender: bytes) -> Envelope | None:
        """:meth:`_decode` for a frame whose length the sender's rate limit already admitted."""
        limiter = self._limiter
        try:
            env = decode(frame, max_size=self.config.max_message_size)
        except EnvelopeError as exc:
            self._drop(type(exc).__name__, sender, exc)
            return None
        limiter.charge(sender, env.cost - len(frame) - ENVELOPE_COST)  # what its body decoded into
        if env.src != sender:
            self._drop("src_mismatch", sender, f"claims src {short_id(env.src)}")
            return None
        if env.dst is not None and env.dst != self.node_id:
            self._drop("wrong_dst", sender, f"addressed to {short_id(env.dst)}")
            return None
        return env

    def drain_link(self, sock: zmq.Socket) -> None:
        """Read a DEALER (replies from a peer we connected to) or a SUB (a neighbour's publications)."""
        if sock.closed or self._readers.paused:  # paused: resume() drains it
            return
        node_id = self._peer_of(sock)
        if node_id is None:
            return
        loop = self._readers.loop
        fleet = self._fleet
        is_sub = sock.type == zmq.SUB
        batch: list[Envelope] = []
        stats = self._stats
        cost = 0
        for _ in range(READ_BATCH):
            if cost > BATCH_BYTES:
                loop.call_soon(self.drain_link, sock)
                break
            try:
                parts = sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                break
            stats["frames_in"] += 1
            stats["bytes_in"] += len(parts[-1])
            self._peer_traffic.received(node_id, len(parts[-1]))
            if is_sub:
                if len(parts) != 2:
                    self._drop("multipart", node_id, "publication must be [topic, envelope]")
                    continue
                env = self._decode(parts[1], node_id)
                if env is not None and (fleet is None or fleet.admit(env)):
                    stats["publications_in"] += 1
                    self._on_publication(parts[0], env)
                continue
            if len(parts) != 1:
                self._drop("multipart", node_id, "unexpected extra frames")
                continue
            env = self._decode(parts[0], node_id)
            if env is not None and (fleet is None or fleet.admit(env)):
                cost += env.cost
                batch.append(env)
        else:
            loop.call_soon(self.drain_link, sock)
        if batch:
            self._on_batch(batch)
