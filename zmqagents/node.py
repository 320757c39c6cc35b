"""The public async Node: the protocol cores driven by real ZeroMQ sockets, behind one small API.

``Node`` owns no protocol logic and little machinery: it composes the pieces of the shell and keeps
the public facade. The pieces, each with one job:

* :mod:`zmqagents.core.composition` (sans-IO): routing, membership, the DHT and the relay cores,
  wired once for Node and the simulator alike; :mod:`zmqagents.core.delivery` beside it.
* :mod:`zmqagents.shell.loop`: the one clock, the pump between the transport and those cores, the
  one timer at the earliest deadline.
* :mod:`zmqagents.shell.sending` and :mod:`zmqagents.shell.serving`: what the application sends
  (backpressure, request futures, settled callbacks) and what it is delivered (the inbox, handlers).
* :mod:`zmqagents.shell.neighbours`: hello and one-hop pub/sub; :mod:`zmqagents.shell.relays`: the
  socket side of relaying.

What is left here: making them (:meth:`Node.__init__`, :meth:`Node.start`), closing them, joining and
looking up, member events, the fleet's revocations, and the public methods, which delegate.

    async with Node(listen="tcp://127.0.0.1:0", peers=[contact]) as node:
        reply = await node.request(peer_id, {"q": 1}, timeout=5)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence

from .certs import CertError
from .core.broadcast import Broadcast
from .core.broadcast import Delivered as Published
from .core.broadcast import Gap
from .core.composition import NodeCore, PeerGone
from .core.delivery import Delivered, Delivery
from .core.dht import DhtCore, DhtDone
from .core.membership import Alive, Failed, Left, Membership, Refuted, Suspect
from .core.relay import RelayClient, RelayDown, RelayServer, RelayUp
from .core.routing import Introduced, Joined, LookupDone, RoutingCore
from .dht import Dht, DhtError, ProviderInfo
from .envelope import Envelope
from .errors import InvalidArgument
from .identity import Contact, Identity, IdentityError, short_id
from .queues import BoundedQueue, FairQueue
from .revocations import RevocationSync
from .shell.broadcasting import MeshTopics
from .shell.loop import Clock, NodeLoop, Ticker
from .shell.neighbours import Neighbours
from .shell.relays import Relays
from .shell.sending import Sender
from .shell.serving import Serving
from .shell.types import (  # re-exported: the Node API's types (zmqagents.shell.types)
    CONTACT_RECORD_DOMAIN,
    EXPIRED,
    HELLO,
    MESSAGE_COST,
    PEERS,
    MemberEvent,
    Message,
    NodeConfig,
    NodeError,
    PeerUnreachable,
    RemoteError,
    RequestHandler,
    RequestTimeout,
    SendError,
    SettledCallback,
    UnknownPeer,
    contact_key,
    message_cost,
)
from .transport.context import SocketContext
from .transport.mesh import Transport
from .transport.reach import dial_problem

__all__ = [
    "Node", "NodeConfig", "Message", "MemberEvent", "NodeError", "UnknownPeer", "RequestTimeout",
    "PeerUnreachable", "RemoteError", "SendError", "RequestHandler", "SettledCallback", "HELLO", "PEERS",
    "EXPIRED", "MESSAGE_COST", "CONTACT_RECORD_DOMAIN", "message_cost", "contact_key", "run",
]

log = logging.getLogger(__name__)

# s an outbound-only node waits for a TCP connection to a bootstrap node before joining through its relays
# instead: a routed host answers a connect in a round trip, a firewall that drops it never does
DIAL_CHECK_TIMEOUT = 3.0


class Node:
    """A peer on the mesh. Use as ``async with Node(...) as node``."""

    def __init__(
        self,
        identity: Identity | str | os.PathLike | None = None,
        *,
        listen: str | None = None,
        peers: Iterable[str | Contact] = (),
        bootstrap: Iterable[str | Contact] = (),
        secure: bool | None = None,
        allowlist: Iterable[bytes] | None = None,
        config: NodeConfig | None = None,
        rng: random.Random | None = None,
        inbox: BoundedQueue[Message] | None = None,
        context: SocketContext | None = None,
    ):
        """``listen`` and ``secure`` override ``config.transport``'s (whose defaults are
        tcp://127.0.0.1:0 and CURVE on); the ``config`` passed in is never modified, so one
        NodeConfig can serve several nodes. ``inbox``: where direct messages wait for the
        application, if not a FairQueue of ``config``'s bounds (senders in turn): a queue with the same interface
        whose ``flush()`` is called before any ack for what it was given leaves (the sidecar's
        inbound spool: nothing acknowledged lives only in memory). ``context``: a ZeroMQ context shared
        by many nodes of this process on one event loop (transport/context.py; ``zmqagents swarm``); by
        default the node has its own."""
        if identity is None:
            identity = Identity.generate()
        elif not isinstance(identity, Identity):
            identity = Identity.load(identity)
        self.identity = identity
        config = config or NodeConfig()
        if listen is not None or secure is not None:  # into copies: the caller's objects stay as they were
            transport = dataclasses.replace(config.transport)
            if listen is not None:
                transport.listen = listen
            if secure is not None:
                transport.secure = secure
            config = dataclasses.replace(config, transport=transport)
        self.config = config
        self._peers = [p if isinstance(p, Contact) else Contact.parse(p) for p in peers]
        relays = [p if isinstance(p, Contact) else Contact.parse(p) for p in config.relays]
        if config.outbound_only and not relays:
            raise InvalidArgument("an outbound-only node needs at least one relay contact (NodeConfig.relays / --relay)")
        if relays and not config.outbound_only:
            raise InvalidArgument("relays are for outbound-only nodes: set NodeConfig.outbound_only (--outbound-only)")
        self._bootstrap = [p if isinstance(p, Contact) else Contact.parse(p) for p in bootstrap]
        self._rng = rng or random.Random()
        self.stats: dict[str, int] = {
            "inbox_refused": 0, "inbox_bytes_refused": 0, "inbox_share_refused": 0,
            "publications_dropped": 0, "publications_refused": 0, "handler_errors": 0, "replies_dropped": 0,
            "relay_not_served": 0, "relay_refusals_received": 0, "contact_records_refused": 0,
            "requests_expired": 0,
            "bootstrap_undialable": 0, "window_updates": 0,
        }
        # The transport calls back into pieces made just below it (they need it to exist first).
        self.transport = Transport(
            identity,
            config.transport,
            on_batch=lambda batch: self.loop.on_batch(batch),
            on_publication=lambda topic, env: self._neighbours.on_publication(topic, env),
            allow=frozenset(allowlist) if allowlist is not None else None,
            fleet=config.fleet,
            context=context,
        )
        # One clock for every part of this node (its cores, the DHT facade, the task runtime): see shell/loop.py.
        self.clock = Clock()
        # Stream epochs from the wall clock in microseconds: a restarted node opens its streams above
        # every epoch its previous run used (it opened fewer streams than microseconds passed), so a
        # receiver never takes a late frame of the old run for the newer stream (protocols/delivery.md
        # §3). A clock set back is repaired by the receiver, which names the epoch it holds (§5.3).
        self.delivery = Delivery(identity.node_id, self._rng, config.delivery, epoch=int(time.time() * 1_000_000))
        self.loop = NodeLoop(self.clock, self.delivery, self.transport, self.stats,
                             on_delivery=self._on_delivery, on_core_event=self._on_core_event,
                             on_relay=lambda env, batch: self._relays.on_envelope(env, batch))
        self._sender = Sender(self.delivery, self.transport, self.loop)
        self._inbox: BoundedQueue[Message] = (
            inbox if inbox is not None else FairQueue(config.inbox_limit, config.inbox_bytes, config.inbox_share))
        self._neighbours = Neighbours(identity.node_id, self.transport, config, self.stats,
                                      request=self._hello_request, observe=self._observe,
                                      forget=self.delivery.forget)
        self._serving = Serving(self.delivery, self.loop, self._inbox, self.stats, max_handlers=config.max_handlers,
                                answers={HELLO: self._neighbours.answer, PEERS: lambda env: self.peers()})
        self._relays = Relays(self.transport, relays, config.relay, self._rng, self.stats,
                              outbound_only=config.outbound_only, serve=config.serve_relay, emit=self._emit,
                              greet=lambda contact: self._serving.spawn(self._neighbours.hello(contact)))
        self.routing: RoutingCore | None = None  # needs our endpoint, known once the inbox is bound
        self.membership: Membership | None = None  # likewise (alive rumors about us carry our contact)
        # Records and providers (zmqagents/dht.py); its core is made by start().
        self.dht = Dht(now=self.clock.now, pump=self.loop.pump)
        # Mesh-wide publish/subscribe (zmqagents/shell/broadcasting.py); its core is made by start().
        self._topics = MeshTopics(config, self.stats, now=self.clock.now, pump=self.loop.pump)
        # Routing, membership, the DHT core and the relay cores wired as one (zmqagents/core/composition.py).
        self.core: NodeCore | None = None
        self._event_queues: list[asyncio.Queue] = []
        self._lookups: dict[int, asyncio.Future] = {}
        self._joined: asyncio.Future | None = None
        self._started = False
        self._closed = False
        self.revocation_sync = self._fleet_setup()  # None unless join = "fleet"

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> "Node":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        cfg = self.config
        self.transport.start()
        self._relays.start()
        # A short-lived client (member=False) does not advertise itself: it stays out of peers' tables,
        # so no record is ever stored on a node that is about to exit.
        self.routing = RoutingCore(self.contact, self._rng, cfg.routing, advertise=cfg.member,
                                   identity=self.identity)
        self.routing.linked = self.transport.connected  # a join's refreshes open few new connections
        self.dht.core = DhtCore(self.routing, self.identity, self._rng, cfg.dht)
        self.membership = Membership(self.contact, self._rng, cfg.membership)
        # Broadcast epoch: the wall clock in ms, so a restarted origin numbers its messages above its last run.
        broadcast = Broadcast(self.node_id, self.identity, int(time.time() * 1000), self._rng, cfg.broadcast)
        self._topics.attach(broadcast)
        self.core = NodeCore(self.routing, self.membership, self.dht.core,
                             relay_server=self._relays.server, relay_client=self._relays.client, broadcast=broadcast)
        self.transport.contact_for = self.core.contact_for  # a peer whose connection to us closed is dialled
        self.loop.start(self.core, self._inbox)
        if self._relays.client is not None:
            self._relays.client.start(self.now())
            self.loop.pump()
        relays = self._relays.relays
        peers = self._peers + [r for r in relays if r not in self._peers]
        if peers:
            await asyncio.gather(*(self._neighbours.hello(c) for c in peers))
        if self.revocation_sync is not None:
            self.revocation_sync.start()
        if self._bootstrap:
            bootstrap = self._bootstrap
            if cfg.outbound_only:
                bootstrap = await self._dialable_bootstrap(bootstrap)
            joined = await self.join(bootstrap, timeout=cfg.join_timeout)
            if joined and cfg.outbound_only:
                try:  # the DHT republishes it while we run
                    await self.publish_contact(timeout=cfg.join_timeout)
                except (DhtError, ValueError) as exc:
                    log.warning("could not publish our relayed contact in the DHT: %s", exc)

    async def _dialable_bootstrap(self, bootstrap: list[Contact]) -> list[Contact]:
        """The bootstrap contacts an outbound-only node can dial; its relays if it can dial none of them.

        Such a node reaches others by dialling them (only what comes back uses its relays), so a
        bootstrap node it has no route to can never answer its join: ZeroMQ retries in silence, and the
        join lookup (which also starts from the table, where the relays' hellos put them) goes on only
        once it has waited that node out, and says nothing of why. Its relays it can dial (it is
        registered with them), and a relay that is itself a member of the mesh answers a join like any
        node, so the node joins through them at once and says so, with the reason for each contact.
        """
        timeout = min(DIAL_CHECK_TIMEOUT, self.config.join_timeout)
        problems = await asyncio.gather(*(dial_problem(c.endpoint, timeout) for c in bootstrap))
        usable = [c for c, problem in zip(bootstrap, problems) if problem is None]
        failed = [(c, problem) for c, problem in zip(bootstrap, problems) if problem is not None]
        self.stats["bootstrap_undialable"] += len(failed)
        for contact, problem in failed:
            log.warning("cannot dial bootstrap node %s at %s: %s", short_id(contact.node_id), contact.endpoint, problem)
        if usable:
            return usable
        log.error("this outbound-only node cannot dial any of its %d bootstrap node(s), so it cannot join through "
                  "them: it dials the nodes it talks to and only hears back through its relays. Joining through "
                  "its relay(s) %s instead: a relay answers the join only if it is a member of the mesh (started "
                  "with --bootstrap); nodes this host cannot dial are reached only when they talk to it first "
                  "(through its relays)", len(bootstrap), ", ".join(short_id(r.node_id) for r in self._relays.relays))
        return list(self._relays.relays)

    async def publish_contact(self, *, timeout: float = 30.0) -> int:
        """Store this node's contact in the DHT under :func:`contact_key`, signed by this node's key;
        returns how many replicas accepted it. An outbound-only node does it after joining, so its relay
        list is a signed record anyone can fetch (:meth:`find_contact`)."""
        result = await self.dht.put(contact_key(self.node_id), {"contact": str(self.contact)}, timeout=timeout)
        return result.stored

    async def find_contact(self, node_id: bytes, *, timeout: float = 30.0) -> Contact | None:
        """The contact ``node_id`` published about itself (:meth:`publish_contact`), checked and remembered;
        None if there is none, or if the record under its key was not signed by ``node_id`` itself."""
        record = await self.dht.get_record(contact_key(node_id), timeout=timeout)
        if record is None:
            return None
        value = record.value
        text = value.get("contact") if isinstance(value, dict) else None
        try:
            contact = Contact.parse(text) if isinstance(text, str) else None
        except IdentityError:
            contact = None
        if record.publisher != node_id or contact is None or contact.node_id != node_id:
            self.stats["contact_records_refused"] += 1
            log.warning("refused the contact record for %s: not a contact signed by that node", short_id(node_id))
            return None
        self.transport.add_contact(contact)
        return contact

    async def join(self, bootstrap: Iterable[str | Contact], *, timeout: float = 10.0) -> bool:
        """Join the mesh through bootstrap contacts: a lookup of our own id, then a refresh of far buckets.

        Returns whether the join lookup reached anyone; on False the node carries on alone
        and keeps re-trying the bootstrap contacts in the background.
        """
        contacts = [p if isinstance(p, Contact) else Contact.parse(p) for p in bootstrap]
        self._joined = asyncio.get_running_loop().create_future()
        now = self.now()
        self.routing.join(contacts, now)
        self.core.sync(now)
        self.loop.pump()
        try:
            joined = await asyncio.wait_for(asyncio.shield(self._joined), timeout)
        except asyncio.TimeoutError:
            log.warning("join through %d bootstrap contact(s) did not finish in %g s", len(contacts), timeout)
            return False
        if not joined.ok:
            log.warning("no bootstrap contact answered; running alone until one does")
        return joined.ok

    async def lookup(self, target: bytes, *, timeout: float = 30.0, find: bool = False) -> list[Contact]:
        """The (up to k) live nodes closest to ``target`` in XOR distance, found by an iterative lookup.

        ``find=True`` looks for the node whose id is ``target``: it returns as soon as that node answered
        (it is then among the contacts), without waiting for the k closest."""
        lookup_id = self.routing.lookup(target, self.now(), find=find)
        future = self._lookups.get(lookup_id)
        if future is None:
            future = self._lookups[lookup_id] = asyncio.get_running_loop().create_future()
        self.loop.pump()
        done: LookupDone = await asyncio.wait_for(asyncio.shield(future), timeout)
        return list(done.contacts)

    async def provide(self, name: str | bytes, *, meta: Any = None, timeout: float = 30.0) -> int:
        """Announce that this node provides ``name`` (a capability, a topic; a str is hashed with sha256 into
        the DHT key). Kept refreshed until close() or unprovide(). See :class:`~zmqagents.dht.Dht`."""
        return await self.dht.provide(name, meta=meta, timeout=timeout)

    def unprovide(self, name: str | bytes) -> bool:
        """Stop refreshing this node's provider entry for ``name`` (it expires on the holders)."""
        return self.dht.unprovide(name)

    async def find_providers(self, name: str | bytes, *, timeout: float = 30.0) -> list[ProviderInfo]:
        """The nodes that provide ``name``: node id, contact, expiry and metadata of each."""
        return await self.dht.find_providers(name, timeout=timeout)

    def peers(self) -> list[dict]:
        """The routing table with membership's view of each contact: node_id, contact, state
        ("alive"/"suspect", or "unprobed" until membership takes it on), incarnation, rtt_ms
        (from probes, else from lookups), last_seen, fails."""
        membership = self.membership
        rows = []
        for e in self.routing.table:
            rtt = membership.rtt(e.node_id) or e.rtt
            rows.append({
                "node_id": e.node_id.hex(), "contact": str(e.contact),
                "state": membership.state_of(e.node_id) or "unprobed",
                "incarnation": membership.incarnation_of(e.node_id) or 0,
                "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
                "last_seen": e.last_seen, "fails": e.fails,
            })
        return rows

    async def close(self, *, leave: bool = True) -> None:
        """Stop timers and handlers, fail pending requests, close every socket.

        ``leave=False`` goes without telling the members (no leave rumor, no wait): to them it is a
        crash, detected by probes (how ``zmqagents swarm --kill`` kills a node of its process)."""
        if self._closed:
            return
        if leave and self.config.member and self.membership is not None and len(self.membership) and not self.membership.leaving:
            # Tell the members we are going, so they report "left" rather than a failure later.
            self.membership.leave(self.now())
            self.loop.pump()
            await asyncio.sleep(self.config.leave_timeout)
        self._closed = True
        if self.revocation_sync is not None:
            await self.revocation_sync.close()
        self.loop.halt()
        await self._serving.close()
        closed = NodeError("node closed")
        self.dht.close(closed)
        self._sender.fail_all(closed)
        for fut in [*self._lookups.values(), self._joined]:
            if fut is not None and not fut.done():
                fut.set_exception(closed)
        self._lookups.clear()
        self._neighbours.close()
        self._topics.close()
        for queue in self._event_queues:
            queue.put_nowait(None)
        self.transport.close()

    def pause(self) -> None:
        """Stall this node until :meth:`resume`: no socket read, no timer fired, as peers see a process
        that stopped (a long GC pause, SIGSTOP) while its kernel and libzmq still accept connections and
        queue what arrives. For fault injection (``zmqagents swarm --pause``), where many nodes share
        one process and a signal would stop them all. What the application calls meanwhile still runs."""
        if self.running:
            self.transport.pause()
            self.loop.pause()

    def resume(self) -> None:
        """End :meth:`pause`: what queued up is read, and deadlines that passed fire at once."""
        if self.running:
            self.loop.resume()
            self.transport.resume()

    @property
    def running(self) -> bool:
        """Started and not yet closed."""
        return self._started and not self._closed

    def now(self) -> float:
        """Seconds on this node's clock (shell/loop.py, Clock): monotonic, reads as Unix time. Every
        part of the node runs on it; a component driving its own sans-IO cores with this node (the
        task runtime) uses it too, and can have its deadlines served by the node's one timer
        (:meth:`attach`)."""
        return self.clock.now()

    def attach(self, ticker: Ticker) -> None:
        """Serve ``ticker``'s deadlines (``next_timer()`` on this node's clock) with the node's one
        timer: ``ticker.tick(now)`` runs with the node's own cores when it fires. After a change that
        may bring its deadline earlier, the ticker calls :meth:`wake`."""
        self.loop.attach(ticker)

    def detach(self, ticker: Ticker) -> None:
        self.loop.detach(ticker)

    def wake(self, at: float | None) -> None:
        """An attached ticker's next deadline is ``at`` (None: nothing due)."""
        self.loop.wake(at)

    # -- identity ------------------------------------------------------------------

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    @property
    def contact(self) -> Contact:
        """What other nodes pass as a peer to reach this one."""
        return self.transport.contact()

    def neighbours(self) -> list[bytes]:
        """Node ids that completed a hello with this node."""
        return self._neighbours.ids()

    @property
    def relay_server(self) -> RelayServer | None:
        """The relay we serve for outbound-only nodes (``serve_relay``), once started."""
        return self._relays.server

    @property
    def relay_client(self) -> RelayClient | None:
        """On an outbound-only node, once started: our registrations with our relays."""
        return self._relays.client

    # -- sending -----------------------------------------------------------------

    async def send(self, peer: bytes | str | Contact, body: Any, *, type: str = "msg",
                   msg_id: bytes | None = None, confirm: bool = False) -> bytes:
        """Queue a reliable message; returns its id once the transport has it.

        Waits (backpressure) while too many messages to this peer are unacknowledged.
        Delivery failures surface from :meth:`flush` and :meth:`on_settled` callbacks.
        ``msg_id`` re-sends a message under its earlier id (the receiver delivers an id once);
        ``confirm`` reports its acknowledgement to the :meth:`on_settled` callbacks.
        """
        return await self._sender.send(peer, body, type=type, msg_id=msg_id, confirm=confirm)

    async def send_many(self, peer: bytes | str | Contact, bodies: Sequence[Any], *, type: str = "msg") -> list[bytes]:
        """Send several messages to one peer, in order: :meth:`send` for each, at a fraction of the
        cost per message (one call into the delivery core and the transport per window's worth).
        Returns their ids once the transport has them all; waits (backpressure) whenever the peer's
        window is full. Each message is delivered exactly once, in order, like any other.
        """
        return await self._sender.send_many(peer, bodies, type=type)

    def send_nowait(self, peer: bytes | str | Contact, body: Any, *, type: str = "msg",
                    msg_id: bytes | None = None, confirm: bool = False) -> bytes:
        """:meth:`send` for a caller that schedules its own sends (a durable outbox): never waits.

        Raises :class:`~zmqagents.core.delivery.WindowFull` when ``window`` messages to the peer
        are unacknowledged (``node.delivery.can_send(dst)`` tells beforehand), and UnknownPeer.
        """
        return self._sender.send_nowait(peer, body, type=type, msg_id=msg_id, confirm=confirm)

    def route(self, prefix: str, handler: Callable[[Envelope], None]) -> None:
        """Hand every delivered message (or request) whose type starts with ``prefix`` to ``handler``
        instead of the request handler: how a component such as the task runtime gets its protocol's
        envelopes. The handler runs inside the node's event handling: keep it short, never block;
        it answers a request with :meth:`reply`."""
        self._serving.route(prefix, handler)

    def reply(self, request: Envelope, body: Any, *, error: bool = False) -> None:
        """Answer a request envelope handed to a :meth:`route` handler."""
        self._serving.reply(request, body, error=error)
        self.loop.send_new()

    def on_settled(self, callback: SettledCallback) -> SettledCallback:
        """Call ``callback(msg_id, dst, None)`` when ``dst`` acknowledges a message sent with
        ``confirm=True``, and ``callback(msg_id, dst, reason)`` when any sent message fails.

        This is what a durable outbox needs: a message may be forgotten only once acknowledged.
        Callbacks run inside the node's event handling: keep them short, never block.
        """
        return self._sender.on_settled(callback)

    async def request(self, peer: bytes | str | Contact, body: Any, *, timeout: float = 10.0, type: str = "req") -> Any:
        """Send a request and wait for its reply body.

        Raises RequestTimeout, PeerUnreachable, or RemoteError (the handler failed).
        """
        return await self._sender.request(peer, body, timeout=timeout, type=type)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every sent message is acknowledged or has failed; raise SendError on failures."""
        await self._sender.flush(timeout)

    # -- receiving ---------------------------------------------------------------

    def on_request(self, handler: RequestHandler) -> RequestHandler:
        """Serve requests: ``handler(body, message)`` returns the reply body.

        The handler is a plain function (answered inline, lowest latency) or an
        ``async def`` (run as a task, at most ``max_handlers`` at once). An
        exception becomes an error reply, so the caller gets RemoteError.
        Usable as a decorator.
        """
        self._serving.on_request(handler)
        return handler

    @property
    def request_handler(self) -> RequestHandler | None:
        """The handler :meth:`on_request` set (a component that takes over may fall back to it)."""
        return self._serving.handler

    async def receive(self, timeout: float | None = None) -> Message:
        """The next direct message, in order per sender, exactly once."""
        message = (await asyncio.wait_for(self._inbox.get(), timeout))[0]
        self.room_made()
        return message

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            message = (await self._inbox.get())[0]
            self.room_made()
            yield message

    def room_made(self) -> None:
        """The inbox may have room again: senders whose messages it refused get a window update
        (protocols/delivery.md 5.2) if theirs fit now. :meth:`receive` calls it; an inbox that holds
        taken messages until the application acknowledges them (the sidecar's inbound spool) makes
        room only then, and its owner calls this after the acknowledgements."""
        if self.loop.owes_window_update:
            self.loop.offer_room()

    def requeue(self, message: Message) -> None:
        """Put a message just taken with :meth:`receive` back at the head of the inbox.

        For a consumer that takes a message and then finds nobody to hand it to (the local API's
        clients went away): it waits in the inbox, first in line, and counts against its bounds again.
        """
        self._inbox.unget(message, message.src, message.cost)

    @property
    def inbox_size(self) -> tuple[int, int]:
        """(messages, bytes) waiting in the inbox for the application."""
        return len(self._inbox), self._inbox.bytes

    @property
    def subscription_backlog(self) -> int:
        """Publications waiting in every subscription's queue."""
        return self._neighbours.backlog + self._topics.backlog()

    @property
    def handlers_running(self) -> int:
        """Request handlers running now (and background hellos to relays that came back)."""
        return self._serving.handlers_running

    # -- pub/sub -------------------------------------------------------------------

    async def publish(self, topic: str | bytes, body: Any, *, one_hop: bool = False) -> int | None:
        """Publish ``body`` on ``topic`` to every node of the mesh subscribed to it, wherever it is (signed
        by this node, carried by the broadcast tree: protocols/broadcast.md); returns its sequence
        number on the topic. ValueError if it is over the size limit or this node's publication rate.

        ``one_hop=True``: the PUB/SUB path instead: to every *neighbour* subscribed to a prefix of
        ``topic`` (best effort, unsigned, no sequence number; returns None)."""
        if one_hop:
            self._neighbours.publish(topic.encode() if isinstance(topic, str) else topic, body)
            return None
        return self._topics.publish(topic, body)

    async def broadcast(self, body: Any) -> int:
        """Publish on the mesh-wide topic ``""``, which every member receives."""
        return self._topics.publish("", body)

    async def wait_for_subscriber(self, topic: str | bytes, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until a neighbour subscribes to a prefix of ``topic``.

        ZeroMQ subscriptions take a round trip to arrive, so a publisher that has
        just started would otherwise publish to nobody.
        """
        return await self._neighbours.wait_for_subscriber(topic.encode() if isinstance(topic, str) else topic, timeout)

    def subscribe(self, topic: str | bytes = "", *, one_hop: bool = False) -> AsyncIterator[Message]:
        """Yield the mesh's publications on exactly ``topic`` ("" = the mesh-wide broadcasts) until the node
        closes (an async generator: ``aclose()`` it, or leave its ``async for``, to unsubscribe). Each
        Message names its origin (``src``), ``topic`` and ``seq`` (per origin and topic: a jump is a gap).
        A reader that falls behind loses its oldest (``stats["broadcast_dropped"]``).

        ``one_hop=True``: publications of *neighbours* (their PUB sockets) whose topic starts with
        ``topic``; see :meth:`wait_for_subscriber`."""
        if one_hop:
            return self._neighbours.subscribe(topic.encode() if isinstance(topic, str) else topic)
        return self._topics.subscribe(topic)

    # -- hello: neighbours learn each other's PUB endpoint ------------------------

    async def introduce(self, contact: Contact, *, timeout: float | None = None) -> bool:
        """Say hello to a node known only from a claim (an mDNS announcement, say) and keep it only if
        it answers.

        The hello goes over a CurveZMQ link opened with ``contact``'s public key, whose handshake
        fails unless the far end holds the matching secret key: a True return proves the claimed
        id. On False everything the claim put in the address book is dropped again, so a false
        claim cannot redirect traffic meant for the real node.
        """
        return await self._neighbours.introduce(contact, timeout)

    async def _hello_request(self, node_id: bytes, body: Any, timeout: float, type: str) -> Any:
        return await self._sender.request(node_id, body, timeout=timeout, type=type)

    def _observe(self, contact: Contact) -> None:
        """A member neighbour said hello: the routing table (and so membership) takes it."""
        self.core.observe(contact, self.now())

    # -- fleet: join = "fleet" (protocols/certificates.md) ---------------------------

    def _fleet_setup(self) -> "RevocationSync | None":
        """Check our own certificate as a peer would (a node that would be refused everywhere fails now,
        with the reason) and wire revocation: lists that cut peers off, the DHT copy of the list."""
        gate = self.transport.fleet
        if gate is None:
            return None
        try:
            cert = gate.admission.check_own(self.identity.public_key, time.time())
        except CertError as exc:
            raise InvalidArgument(f"this node's fleet certificate cannot be used ({exc.reason}): {exc}") from None
        left = cert.not_after - time.time()
        if left < min(7 * 86400, (cert.not_after - cert.not_before) / 5):
            log.warning("this node's fleet certificate expires in %.1f days: have the operator sign a new one",
                        left / 86400)
        sync = RevocationSync(self.dht, self.revoke, gate.admission, interval=self.config.fleet.revocation_poll,
                              ttl=self.config.dht.max_ttl, rng=self._rng)
        gate.on_newer_revocations.append(lambda issuer, sequence: sync.poke())
        return sync

    def revoke(self, revocations: bytes) -> list[bytes]:
        """Take a CA-signed revocation list (the bytes ``zmqagents ca revoke`` writes, decoded): peers it
        revokes are cut off and forgotten by every core; the list is published in the DHT for the rest of
        the fleet. Returns the ids cut off; CertError if the list cannot be trusted, InvalidArgument (a
        ValueError) if this node is not a fleet member."""
        gate = self.transport.fleet
        if gate is None:
            raise InvalidArgument('revocation lists are for join = "fleet" nodes')
        gone = gate.adopt(revocations)
        now = self.now()
        for nid in gone if self.core is not None else ():  # before start() there is nothing to forget
            self.core.forget(nid, now)  # delivery and the transport forget it on the PeerGone that follows
            self._neighbours.drop(nid)
            self._emit(MemberEvent("revoked", nid))
        if self.revocation_sync is not None:
            self.revocation_sync.poke()
        if gone:
            self.loop.pump()
        return gone

    def certified_groups(self, node_id: bytes) -> frozenset[str]:
        """The groups the certificate of an admitted fleet peer names (empty outside a fleet)."""
        gate = self.transport.fleet
        return frozenset() if gate is None else gate.admission.groups_of(node_id)

    # -- what the cores report ---------------------------------------------------------

    def _on_delivery(self, events: list) -> None:
        """Delivery's events: what it delivered is served, the outcomes of our sends settled. Direct
        messages go to the inbox (and its flush) before any other event is acted on: a handler may
        send, and whatever is sent carries acks for these messages."""
        serving = self._serving
        sender = self._sender
        serving.store(events)
        for event in events:
            if isinstance(event, Delivered):
                serving.delivered(event.env)
            else:
                sender.on_event(event)

    def _on_core_event(self, event: object) -> None:
        if isinstance(event, DhtDone):
            self.dht.settle(event)
        elif isinstance(event, LookupDone):
            future = self._lookups.pop(event.lookup_id, None)
            if future is not None and not future.done():
                future.set_result(event)
        elif isinstance(event, PeerGone):
            # Confirmed gone (the Failed/Left before it was reported); the cores forgot it already.
            self.delivery.forget(event.node_id)
            self.transport.forget(event.node_id)
        elif isinstance(event, (Failed, Left)):
            self._emit(MemberEvent("failed" if isinstance(event, Failed) else "left", event.node_id,
                                   event.incarnation))
        elif isinstance(event, Alive):
            self._emit(MemberEvent("alive", event.contact.node_id, event.incarnation))
        elif isinstance(event, Suspect):
            self._emit(MemberEvent("suspect", event.node_id, event.incarnation))
        elif isinstance(event, Refuted):
            self._emit(MemberEvent("refuted", self.node_id, event.incarnation))
        elif isinstance(event, Introduced):
            self.transport.relocate(event.contact)  # its own word: a stale endpoint it left is dropped
        elif isinstance(event, Joined):
            if self._joined is not None and not self._joined.done():
                self._joined.set_result(event)
            if event.ok:
                self._emit(MemberEvent("joined", self.node_id))
        elif isinstance(event, (RelayUp, RelayDown)):
            self._relays.on_event(event)
        elif isinstance(event, (Published, Gap)):
            self._topics.on_event(event)
        # TableAdded, TableDropped: nothing to do here

    def _emit(self, event: MemberEvent) -> None:
        for queue in self._event_queues:
            if queue.qsize() >= self.config.event_queue:
                queue.get_nowait()
            queue.put_nowait(event)

    async def events(self) -> AsyncIterator[MemberEvent]:
        """Membership events (joined, alive, suspect, failed, left, refuted) from now until the node closes."""
        queue: asyncio.Queue = asyncio.Queue()
        self._event_queues.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._event_queues.remove(queue)


def run(coro: Awaitable[Any]) -> Any:
    """asyncio.run with uvloop when it is installed (it is the ``fast`` extra)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
