"""The ZeroMQ shell: one ROUTER inbox, a bounded LRU of DEALERs, PUB/SUB.

This module moves bytes and proves who sent them; it makes no protocol
decisions (those live in ``zmqagents.core``). Who a frame comes from is settled by
the routing id bound to the CURVE key its connection proved (``binding.py``).
It composes the pieces: every read and its checks (``receiving.py``), the
outgoing DEALERs (``outlinks.py``), how sockets are made (``sockets.py``); what
stays here is the address book, the routing of each frame and the burst of
writes, and pub/sub.

Everything for a node that holds a connection to our inbox goes back over that
connection (ROUTER to the routing id), ahead of any DEALER of ours: a
request/reply pair uses one TCP connection, a node that can only connect out is
still reachable, and a node restarted on another endpoint is answered at once
(our DEALER may still point at its old one). That is
what relays use: a destination whose contact is ``KEY@relay://...`` (or that
last reached us through a relay) is sent a signed envelope wrapped in a
``relay.fwd`` to one of its relays (``relaying.py``).

ZeroMQ's FD is edge-triggered, so every readable callback drains its socket
until EAGAIN (in bounded batches). Outgoing frames are written in one burst
per loop turn, after which the sockets written to are re-checked once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections import OrderedDict
from typing import Callable

import zmq

from ..core.linkpool import LinkPoolConfig
from ..core.ratelimit import PeerLimiter
from ..core.relay import FORWARD
from ..envelope import Envelope, EnvelopeError
from ..identity import RELAY_SCHEME, Contact, IdentityError, short_id
from .binding import KEY_SIZE
from .config import TransportConfig
from .droplog import OUTGOING_DROPS, DropLog
from .fleet import FleetConfig, FleetGate
from .linkwatch import LinkWatch
from .outlinks import Link, OutboundLinks
from .peertraffic import PeerTraffic
from .readers import Readers
from .receiving import READ_BATCH, BatchHandler, PublicationHandler, Receiver
from .relaying import RelayPaths
from .sockets import SocketMaker
from .sockio import MORE_NOBLOCK, NOBLOCK, readable
from .context import SocketContext
from .zap import PUB_DOMAIN, ZAP_DOMAIN, ZapHandler

log = logging.getLogger(__name__)

REBIND_TRIES = 200  # x 10 ms: how long the XPUB may wait for its own port after cutting subscribers


class Transport:
    """Sockets for one node. Call :meth:`start` inside a running event loop."""

    def __init__(
        self,
        identity,
        config: TransportConfig,
        *,
        on_batch: BatchHandler,
        on_publication: PublicationHandler,
        allow: frozenset[bytes] | None = None,
        fleet: FleetConfig | None = None,
        context: SocketContext | None = None,
    ):
        """``context``: a ZeroMQ context shared with other Transports in this process (context.py);
        by default the Transport makes its own and terminates it on :meth:`close`."""
        self.identity = identity
        self.config = config
        # join = "fleet": nothing passes to or from a peer before its certificate (fleet.py)
        self.fleet: FleetGate | None = None if fleet is None else FleetGate(
            identity, fleet, drop=self._drop, send_now=self._send_control, requeue=self._requeue)
        if self.fleet is not None:
            self.fleet.on_subscriber_revoked.append(self._cut_subscribers)
        self._own_context = context is None
        self.context = context if context is not None else SocketContext(
            max_sockets=max(1024, config.max_dealers + config.max_subscribers + 64))
        self.ctx = self.context.ctx
        self._sockets = SocketMaker(self.ctx, config, identity)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.router: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self._attached = False  # to self.context (start() attaches, close() detaches)
        self._readers = Readers()  # the sockets we read, with their drains
        self.endpoint = ""
        self.pub_endpoint = ""
        self.advertised: Contact | None = None  # what peers are told to use; default: our inbox endpoint
        self.relaying: RelayPaths | None = None  # made when a relayed destination first appears
        # Where the cores know a peer is (Node sets it): asked when a peer's own connection to our inbox has
        # closed and we hold no contact for it
        self.contact_for: Callable[[bytes], Contact | None] | None = None
        self._subs: dict[bytes, Link] = {}
        self._links: dict[zmq.Socket, Link] = {}  # DEALER and SUB sockets -> their peer
        self._topics: dict[bytes, int] = {}
        self.subscribed: set[bytes] = set()  # topic prefixes neighbours subscribed to on our XPUB
        self._contacts: OrderedDict[bytes, Contact] = OrderedDict()
        # (next hop, frame, destination) waiting for this loop turn's flush; the next hop is a relay
        # for a relayed frame, the destination otherwise
        self._outbox: list[tuple[bytes, bytes, bytes]] = []
        self._flush_scheduled = False
        self._recheck: set[zmq.Socket] = set()  # sockets written to since the last flush
        self._closed = False
        self.stats: dict[str, int] = {
            "frames_in": 0,
            "frames_out": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "publications_in": 0,
            "publications_out": 0,
            "dealers_opened": 0,
            "dealers_evicted": 0,  # closed to make room for another (max_dealers)
            "dealers_idle_closed": 0,  # closed after link_idle_timeout without traffic (core/linkpool.py)
            "links_accepted": 0,  # connections to our inbox and XPUB (linkwatch.py)
            "links_authenticated": 0,  # ... that completed the CURVE handshake
            "links_closed": 0,  # ... that closed, for any reason (libzmq does not say which)
            "subscribers_cut": 0,  # times our XPUB's connections were closed to cut off revoked subscribers
        }
        self.peer_traffic = PeerTraffic(config.max_known_keys)  # frames and bytes per peer, in and out
        self._link_watches: dict[zmq.Socket, LinkWatch] = {}  # monitor socket -> its watch
        self._droplog = DropLog(log, quiet=OUTGOING_DROPS)
        self.drops: dict[str, int] = self._droplog.counts  # refusals by reason (exported as metrics)
        self.limiter = PeerLimiter(config.rate_limit)
        self._receiver = Receiver(identity.node_id, config, self._readers, on_batch=on_batch,
                                  on_publication=on_publication, peer_of=self._peer_of, drop=self._drop,
                                  stats=self.stats, peer_traffic=self.peer_traffic, limiter=self.limiter,
                                  fleet=self.fleet, allow=allow)
        # node id -> the routing id on our ROUTER of its latest connection that proved its key
        self._inbound = self._receiver.inbound
        pool = LinkPoolConfig(idle_timeout=config.link_idle_timeout, max_links=config.max_dealers)
        self.dealers = OutboundLinks(self._sockets, identity.public_key, pool, self.stats,
                                     on_open=self._link_opened, on_close=self._link_closed)
        self._pub_cut = False  # the XPUB is unbound to cut revoked subscribers off, not yet bound again

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.loop = self._readers.loop = asyncio.get_running_loop()
        self.dealers.start(self.loop)
        cfg = self.config
        self.context.attach(self.loop, secure=cfg.secure,
                            admit_subscriber=None if self.fleet is None else self.fleet.admits_curve)
        self._attached = True
        self.router = self._sockets.server(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown routing id -> error, not a silent drop
        # A DEALER that reconnects with its (unguessable) id takes it over from its own stale connection.
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.bind(cfg.listen)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        # XPUB rather than PUB: it reports subscriptions, so a short-lived publisher
        # (a shell command) can wait until someone listens instead of publishing into the void.
        self.pub = self._sockets.server(zmq.XPUB, PUB_DOMAIN if self.fleet is not None else ZAP_DOMAIN)
        self.pub.bind(cfg.pub_listen or _any_port_like(self.endpoint))
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._watch(self.router, self._receiver.drain_router)
        self._watch(self.pub, self._drain_subscriptions)
        for server in (self.router, self.pub):  # links libzmq refuses or cuts before we see a message
            watch = LinkWatch(server, self.stats, self._drop)
            self._link_watches[watch.socket] = watch
            self._watch(watch.socket, self._drain_link_watch)

    def close(self) -> None:
        """Close every socket and the context. Safe to call twice."""
        if self._closed:
            return
        if self.config.close_linger_ms and self._outbox:
            self._flush()  # frames queued this loop turn go out before the sockets close (they linger below)
        self._closed = True
        socks = [link.socket for link in self.dealers] + [link.socket for link in self._subs.values()]
        socks += [s for s in (self.router, self.pub) if s is not None]
        for watch in self._link_watches.values():
            self._unwatch(watch.socket)
            watch.close()
        self._link_watches.clear()
        for sock in socks:
            self._unwatch(sock)
            # close_linger_ms: a short-lived publisher's last messages (PUB, and the broadcast payloads on
            # its links) may take that long to leave; the link watches never wait (nor the ZAP socket,
            # which belongs to the context: context.py).
            sock.close(linger=self.config.close_linger_ms)
        self.dealers.clear()
        self._subs.clear()
        if self._attached:
            self.context.detach()
        if self._own_context:
            self.context.close()

    @property
    def zap(self) -> ZapHandler | None:
        """The ZAP handler of our context (shared with the other Transports on it), once started."""
        return self.context.zap

    def contact(self) -> Contact:
        """How peers reach us: our inbox, or (outbound-only) the relays set in ``advertised``."""
        return self.advertised or self.identity.contact(self.endpoint)

    def paths(self) -> RelayPaths:
        """The relay routes, created on first use (a node that never meets a relay never pays for them)."""
        if self.relaying is None:
            self.relaying = RelayPaths(self.identity, max_entries=self.config.max_known_keys,
                                       max_size=self.config.max_message_size, drop=self._drop,
                                       seal_all=self.config.seal_relayed)
        return self.relaying

    # -- address book ----------------------------------------------------------

    def add_contact(self, contact: Contact) -> bytes:
        """Remember how to reach a node (bounded); returns its node id."""
        node_id = contact.node_id
        old = self._contacts.get(node_id)
        self._contacts[node_id] = contact
        self._contacts.move_to_end(node_id)
        if old is not None and old.endpoint != contact.endpoint:
            self.dealers.close(node_id)  # it moved: reconnect on next send
            if self.relaying is not None and not contact.relayed and not self.relaying.edge:
                self.relaying.forget(node_id)  # it became reachable directly
        if contact.relayed:
            relays = contact.relays
            for relay in relays:
                if relay.node_id not in self._contacts:
                    self._contacts[relay.node_id] = relay
            self.paths().set_route(node_id, [r.node_id for r in relays])
        while len(self._contacts) > self.config.max_known_keys:
            self._contacts.popitem(last=False)
        return node_id

    def relocate(self, contact: Contact) -> bool:
        """The node itself said (authenticated, e.g. in a FIND_NODE) that it is reached at ``contact``: if
        we hold another endpoint for it, switch to this one and close the DEALER to the old one. Unlike
        :meth:`add_contact` it adds nothing new, so what a peer says about itself cannot fill the address
        book. True if the contact changed."""
        old = self._contacts.get(contact.node_id)
        if old is None or old.endpoint == contact.endpoint:
            return False
        self.add_contact(contact)
        return True

    def drop_contact(self, contact: Contact) -> None:
        """Undo :meth:`add_contact` for a contact that turned out false, if it is still the one held."""
        node_id = contact.node_id
        if self._contacts.get(node_id) == contact:
            del self._contacts[node_id]
            self.dealers.close(node_id)
            if contact.relayed and self.relaying is not None:
                self.relaying.forget(node_id)

    def known(self, node_id: bytes) -> bool:
        return (node_id in self._contacts or node_id in self._inbound
                or (self.relaying is not None and node_id in self.relaying.via))

    def direct_route(self, node_id: bytes) -> bool:
        """True if we reach ``node_id`` without a relay: a connection is open, or its contact is direct."""
        if node_id in self._inbound or node_id in self.dealers:
            return True
        contact = self._contacts.get(node_id)
        return contact is not None and not contact.relayed

    def connected(self, node_id: bytes) -> bool:
        """True if a connection to ``node_id`` is open (its authenticated one to our inbox, or our DEALER):
        sending to it then costs no new CURVE handshake."""
        return node_id in self._inbound or node_id in self.dealers

    def public_key_of(self, node_id: bytes) -> bytes | None:
        """The verify key of a node we have a contact for, that has authenticated to us, or whose
        signed envelope reached us through a relay."""
        contact = self._contacts.get(node_id)
        if contact is not None:
            return contact.public_key
        rid = self._inbound.get(node_id)
        if rid is None:
            return self.relaying.keys.get(node_id) if self.relaying is not None else None
        return rid[:KEY_SIZE]

    def contacts(self) -> list[Contact]:
        return list(self._contacts.values())

    # -- sending ---------------------------------------------------------------

    def send(self, env: Envelope) -> bool:
        """Encode ``env`` now and queue it for ``env.dst``; False (and a counted drop) if it cannot be encoded.

        Frames are written to the sockets in one burst per event-loop turn (:meth:`_flush`): a
        burst wakes libzmq's I/O thread once, where a write per message would wake it for each
        (a system call every time). A frame that cannot go out is dropped and counted; the
        delivery core's retransmits make that safe.
        """
        relaying = self.relaying
        if relaying is not None and env.dst in relaying.via and env.dst not in self._inbound:
            return self._send_relayed(env, relaying)
        try:
            frame = env.encode(max_size=self.config.max_message_size)
        except EnvelopeError as exc:
            self._drop("encode_error", env.dst or b"", exc)
            return False
        self._outbox.append((env.dst, frame, env.dst))
        self._schedule_flush()
        return True

    def _send_relayed(self, env: Envelope, relaying: RelayPaths) -> bool:
        """Sign ``env`` (and seal it if asked), wrap it in a ``relay.fwd`` and queue that for a relay.

        The wrapper goes straight to the relay's own connection: a relay is never itself reached
        through a relay, so a contact that claims otherwise cannot make routes loop."""
        wrapped = self._wrap_relayed(env, relaying)
        if wrapped is None:
            return False
        self._outbox.append((wrapped[0], wrapped[1], env.dst))
        self._schedule_flush()
        return True

    def _wrap_relayed(self, env: Envelope, relaying: RelayPaths) -> tuple[bytes, bytes] | None:
        """(relay, frame of the relay.fwd carrying ``env``), or None (counted) if it cannot be encoded."""
        dst = env.dst
        relay = relaying.pick(env)
        try:
            body = relaying.wrap(env, self.public_key_of(dst))
            frame = Envelope(id=os.urandom(16), src=self.identity.node_id, dst=relay, type=FORWARD,
                             body=body).encode(max_size=self.config.max_message_size)
        except (EnvelopeError, IdentityError) as exc:
            self._drop("encode_error", dst, exc)
            return None
        return relay, frame

    def _send_control(self, env: Envelope) -> None:
        """Write ``env`` (our fleet.cert) now, ahead of everything queued and past the fleet gate."""
        relaying = self.relaying
        if relaying is not None and env.dst in relaying.via and env.dst not in self._inbound:
            wrapped = self._wrap_relayed(env, relaying)  # the relay hop was admitted, or is asked like any peer
        else:
            try:
                wrapped = env.dst, env.encode(max_size=self.config.max_message_size)
            except EnvelopeError as exc:
                self._drop("encode_error", env.dst, exc)
                wrapped = None
        if wrapped is not None:
            self._route(*wrapped)
            self._schedule_flush()

    def _requeue(self, dst: bytes, frames: list[bytes]) -> None:
        """Frames the fleet gate held for ``dst`` go out, in order, now that its certificate is accepted."""
        self._outbox.extend((dst, frame, dst) for frame in frames)
        self._schedule_flush()

    def admits(self, env: Envelope) -> bool:
        """Whether a received envelope may reach the cores (always, unless join = "fleet"): for envelopes
        that did not come straight off a socket, such as those unwrapped from a relay."""
        return self.fleet is None or self.fleet.admit(env)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def write_now(self) -> None:
        """Write every frame queued so far now, not at the end of this loop turn: for a caller about to
        block the loop (a durable store's fsync) with replies queued that do not depend on it. The
        sockets written to are still looked at again by the flush already scheduled."""
        if self._closed or not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        gate = self.fleet
        for hop, frame, dst in outbox:
            if gate is not None and not gate.clear(hop, frame, dst):
                continue  # held until hop shows its certificate (or dropped, see fleet.py)
            self._route(hop, frame)

    def _flush(self) -> None:
        """Write every queued frame, then look once more at each socket written to: a send can
        swallow the edge of ZeroMQ's edge-triggered FD, so incoming messages could otherwise wait."""
        self._flush_scheduled = False
        if self._closed:
            return
        self.write_now()
        socks, self._recheck = self._recheck, set()
        for sock in socks:
            if sock.closed or not readable(sock):  # the usual case: nothing came in meanwhile
                continue
            if sock is self.router:
                self._receiver.drain_router(sock)
            elif sock is self.pub:
                self._drain_subscriptions(sock)
            else:
                self._receiver.drain_link(sock)

    def _route(self, dst: bytes, frame: bytes) -> None:
        """Back over ``dst``'s own connection to our ROUTER if it has one; else our DEALER to it; else a new DEALER.

        The inbound connection comes first because it is proof, not a guess: ``dst`` dialled it and
        authenticated on it, and a restarted ``dst`` is answered over its new connection as soon as it speaks. Our
        DEALER only points at the endpoint we were told, which may be dead: a peer restarted on another
        port would otherwise wait for our acks and replies until membership buried its old self. A
        connection that is gone fails the send at once (ROUTER_MANDATORY) and the DEALER is used."""
        rid = self._inbound.get(dst)
        if rid is not None and self._send_router(rid, dst, frame):
            return
        link = self.dealers.use(dst)
        if link is None:
            contact = self._contacts.get(dst)
            if contact is None and self.contact_for is not None:
                # It reached us over its own connection, so we were never given its contact (the loop
                # looks one up only for peers the transport does not know), and that connection has
                # closed since (its idle timeout): dial it where the cores know it is.
                found = self.contact_for(dst)
                if found is not None and found.node_id == dst:
                    self.add_contact(found)
                    contact = found
            if contact is None:
                self._drop("no_route", dst, "no contact and no inbound connection")
                return
            if contact.endpoint.startswith(RELAY_SCHEME):
                self._drop("no_route", dst, "reached only through relays, and none is usable")
                return
            try:
                link = self.dealers.open(contact)
            except zmq.ZMQError as exc:  # out of fds (EMFILE) or of the context's sockets: this frame waits
                self._drop("no_socket", dst, f"cannot open a connection: {exc}")  # for a retransmit
                return
        try:
            link.socket.send(frame, NOBLOCK)
        except zmq.Again:
            self._recheck.add(link.socket)  # the refused send may have swallowed the FD's edge too
            self._drop("send_hwm", dst, "outgoing queue full")
            return
        self._sent(link.socket, frame)
        self.peer_traffic.sent(dst, len(frame))

    def _send_router(self, rid: bytes, dst: bytes, frame: bytes) -> bool:
        # Two sends rather than send_multipart, which re-checks and re-flags every part in Python. A
        # refusal (full queue, connection gone) comes on the routing id; the frame after it then always goes.
        router = self.router
        # Refused or not, a send processes the socket's pending commands and can swallow the edge of
        # its FD: re-check the inbox after this turn's writes whatever happens. A refused send alone
        # once left a restarted peer's frames unread for good (no other traffic to wake the inbox).
        self._recheck.add(router)
        try:
            router.send(rid, MORE_NOBLOCK)
            router.send(frame, NOBLOCK)
        except zmq.Again:
            self._drop("send_hwm", dst, "reply queue full")
            return True  # the connection exists; retransmit will retry it
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._inbound.pop(dst, None)  # that connection is gone
            return False
        self._sent(router, frame)
        self.peer_traffic.sent(dst, len(frame))
        return True

    def has_subscriber(self, topic: bytes) -> bool:
        """True once some neighbour subscribed to a prefix of ``topic``."""
        return any(topic.startswith(prefix) for prefix in self.subscribed)

    def _drain_subscriptions(self, sock: zmq.Socket) -> None:
        """XPUB delivers (un)subscriptions as b'\\x01topic' / b'\\x00topic' (first and last only)."""
        if sock.closed or self._readers.paused:  # paused: resume() drains it
            return
        for _ in range(READ_BATCH):
            try:
                msg = sock.recv(NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                if len(self.subscribed) < self.config.max_known_keys:
                    self.subscribed.add(msg[1:])
            elif msg[:1] == b"\x00":
                self.subscribed.discard(msg[1:])
        self.loop.call_soon(self._drain_subscriptions, sock)

    def _cut_subscribers(self, revoked: list[bytes]) -> None:
        """Close every connection to our XPUB: ``revoked`` peers were let in by ZAP, which libzmq asks only
        when a connection opens, and a PUB socket cannot close one subscriber's connection. Unbinding
        the endpoint ends the connections accepted on it; bound again (same address) as soon as libzmq's
        I/O thread has let the port go, the subscribers' SUB sockets reconnect through ZAP, which refuses
        the revoked ones. Admitted subscribers miss what is published meanwhile (publications are best
        effort). Counted in ``stats["subscribers_cut"]``."""
        pub = self.pub
        if pub is None or self._closed:
            return
        pub.unbind(self.pub_endpoint)
        # Until the port is ours again the old connections may not all be torn down on libzmq's I/O thread,
        # and a publication could still slip out on one: publish nothing (every subscriber is being cut anyway).
        self._pub_cut = True
        self.stats["subscribers_cut"] += 1
        log.warning("cut the subscriptions of revoked peer(s) %s (all subscribers reconnect)",
                    ", ".join(short_id(nid) for nid in revoked))
        self._rebind_pub(REBIND_TRIES)

    def _rebind_pub(self, tries: int) -> None:
        """Bind the XPUB to its address again; libzmq closes the old listener on its I/O thread, so the
        port may still be in use for a moment: try again every 10 ms, ``tries`` times in all."""
        if self._closed:
            return
        try:
            self.pub.bind(self.pub_endpoint)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EADDRINUSE and tries > 1:
                self.loop.call_later(0.01, self._rebind_pub, tries - 1)
                return
            self._pub_cut = False
            # Taken by someone else meanwhile: nobody can subscribe to us until a restart. Said loudly.
            log.error("could not bind our publications to %s again after cutting revoked subscribers: %s",
                      self.pub_endpoint, exc)
            return
        self._pub_cut = False

    def publish(self, topic: bytes, env: Envelope) -> None:
        frame = env.encode(max_size=self.config.max_message_size)
        if self._pub_cut:
            self._drop("subscribers_cut", b"", "publication while revoked subscribers are being cut off")
            return
        self.pub.send(topic, MORE_NOBLOCK)  # PUB drops at HWM, never blocks
        self.pub.send(frame, NOBLOCK)
        self.stats["publications_out"] += 1
        self._sent(self.pub, frame)
        self._schedule_flush()

    def _sent(self, sock: zmq.Socket, frame: bytes) -> None:
        stats = self.stats
        stats["frames_out"] += 1
        stats["bytes_out"] += len(frame)
        self._recheck.add(sock)

    # -- connections -------------------------------------------------------------

    @property
    def allow(self) -> frozenset[bytes] | None:
        """The only nodes whose frames the inbox accepts (None: any); the daemon swaps it on SIGHUP."""
        return self._receiver.allow

    @allow.setter
    def allow(self, allow: frozenset[bytes] | None) -> None:
        self._receiver.allow = allow

    def _link_opened(self, link: Link) -> None:
        self._links[link.socket] = link
        self._watch(link.socket, self._receiver.drain_link)

    def _link_closed(self, link: Link) -> None:
        del self._links[link.socket]
        self._unwatch(link.socket)
        self._recheck.discard(link.socket)

    def _peer_of(self, sock: zmq.Socket) -> bytes | None:
        """The peer of a DEALER or SUB about to be read; a DEALER read is traffic that keeps it open."""
        link = self._links.get(sock)
        if link is None:
            return None
        if link.node_id in self.dealers and sock.type == zmq.DEALER:
            self.dealers.heard(link.node_id)
        return link.node_id

    def forget(self, node_id: bytes) -> None:
        """Close everything held for a peer (it left or was declared dead), and drop the frames for it
        still waiting for this loop turn's writes.

        Forgotten means forgotten: those frames belong to streams the delivery core has just dropped.
        Written after the forget, they would open a fresh DEALER to the peer's address that keeps
        reconnecting in the background and delivers them to a restarted peer, which has opened new
        streams meanwhile, long after the fact (issue 12). Closing the DEALER (linger 0) discards
        what libzmq still queues in it."""
        outbox = self._outbox
        if outbox:
            kept = [entry for entry in outbox if entry[0] != node_id and entry[2] != node_id]
            for _ in range(len(outbox) - len(kept)):
                self._drop("forgotten", node_id, "the peer was forgotten before its frames were written")
            self._outbox = kept
        self.dealers.close(node_id)
        self._inbound.pop(node_id, None)
        self.unsubscribe_from(node_id)
        if self.fleet is not None:
            self.fleet.forget(node_id)
        if self.relaying is not None:
            self.relaying.forget(node_id)
            self.relaying.remove_relay(node_id)

    @property
    def dealer_count(self) -> int:
        return len(self.dealers)

    @property
    def inbound_count(self) -> int:
        """Peers whose connection to our inbox we can answer over."""
        return len(self._inbound)

    @property
    def backlog_bytes(self) -> int:
        """What frames read off the inbox and not yet decoded hold (``backlog.py``)."""
        return self._receiver.backlog_bytes

    @property
    def subscription_count(self) -> int:
        return len(self._subs)

    @property
    def outbox_size(self) -> int:
        """Frames queued for this loop turn's burst of socket writes."""
        return len(self._outbox)

    # -- pub/sub ------------------------------------------------------------------

    def subscribe_to(self, contact: Contact, pub_endpoint: str) -> None:
        """Open a SUB to a neighbour's PUB. One socket per neighbour, so every publication
        is attributed to the publisher whose CURVE key the SUB authenticated."""
        node_id = contact.node_id
        if node_id in self._subs or node_id == self.identity.node_id:
            return
        if len(self._subs) >= self.config.max_subscribers:
            self._drop("subscriber_limit", node_id, "too many neighbours to subscribe to")
            return
        sock = self._sockets.client(zmq.SUB, contact.public_key)
        for topic in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(pub_endpoint)
        link = self._subs[node_id] = Link(node_id, sock)
        self._links[sock] = link
        self._watch(sock, self._receiver.drain_link)

    def unsubscribe_from(self, node_id: bytes) -> None:
        link = self._subs.pop(node_id, None)
        if link is not None:
            del self._links[link.socket]
            self._unwatch(link.socket)
            link.socket.close(linger=0)

    def add_topic(self, topic: bytes) -> None:
        count = self._topics.get(topic, 0)
        self._topics[topic] = count + 1
        if count == 0:
            for link in self._subs.values():
                link.socket.setsockopt(zmq.SUBSCRIBE, topic)

    def remove_topic(self, topic: bytes) -> None:
        count = self._topics.get(topic, 0)
        if count <= 1:
            self._topics.pop(topic, None)
            for link in self._subs.values():
                link.socket.setsockopt(zmq.UNSUBSCRIBE, topic)
        else:
            self._topics[topic] = count - 1

    # -- receiving ---------------------------------------------------------------

    def _watch(self, sock: zmq.Socket, drain: Callable[[zmq.Socket], None]) -> None:
        self._readers.watch(sock, drain)

    def _unwatch(self, sock: zmq.Socket) -> None:
        self._readers.unwatch(sock)

    def pause(self) -> None:
        """Read no socket until :meth:`resume` (``Node.pause``). libzmq's I/O thread goes on meanwhile:
        it accepts, authenticates and queues what arrives, up to the high-water marks, as for a node
        whose event loop is stalled."""
        self._readers.pause()

    def resume(self) -> None:
        """Read again, starting with what queued up while paused."""
        self._readers.resume()

    def _drain_link_watch(self, sock: zmq.Socket) -> None:
        watch = self._link_watches.get(sock)
        if watch is not None and watch.drain():
            self.loop.call_soon(self._drain_link_watch, sock)  # a full batch: more may be waiting

    # -- drops ------------------------------------------------------------------

    def _drop(self, reason: str, peer: bytes, detail: object) -> None:
        """Count a dropped frame; log it at most once per (reason, peer) per interval (``droplog.py``).

        Frames refused because of what a peer sent are warnings; frames we could not send
        (no route, a full queue) are local conditions the delivery core retries, logged at debug.
        """
        self._droplog.drop(reason, peer, detail)


def _any_port_like(endpoint: str) -> str:
    """A free-port endpoint on the same host as ``endpoint`` (tcp) or a sibling path (ipc)."""
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
        return f"tcp://{host}:0"
    return endpoint + ".pub"
