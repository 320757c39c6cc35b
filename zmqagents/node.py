"""The public async Node: the delivery core driven by real ZeroMQ sockets.

``Node`` owns no protocol logic. It feeds what the transport receives into two
sans-IO objects: :class:`~zmqagents.core.composition.NodeCore` (routing,
membership, the DHT and the relay cores, wired once, there, for Node and the
simulator alike) and the :class:`~zmqagents.core.delivery.Delivery` core beside
it. It sends what they want sent, arms one timer for their next deadline, and
turns their events into futures, queues and handler calls for the application.

    async with Node(listen="tcp://127.0.0.1:0", peers=[contact]) as node:
        reply = await node.request(peer_id, {"q": 1}, timeout=5)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

from .core.delivery import (
    Acked,
    Delivered,
    Delivery,
    DeliveryConfig,
    Replied,
    RequestFailed,
    SendFailed,
    Stalled,
    WindowFull,
    WindowOpen,
)
from .core.composition import NodeCore, PeerGone
from .core.dht import DhtConfig, DhtCore, DhtDone
from .core.membership import Alive, Failed, Left, Membership, MembershipConfig, Refuted, Suspect
from .core.relay import (
    DELIVER,
    FORWARD,
    NOT_FORWARDED,
    REFUSED,
    REGISTER,
    RELAY_TYPES,
    RelayClient,
    RelayConfig,
    RelayDown,
    RelayServer,
    RelayUp,
)
from .core.routing import Introduced, Joined, LookupDone, RoutingConfig, RoutingCore
from .coretimer import CoreTimer
from .dht import Dht, DhtError, ProviderInfo
from .envelope import ENVELOPE_COST, Envelope
from .certs import CertError
from .identity import Contact, Identity, IdentityError, format_public_key, node_id_of, parse_node_id, short_id
from .queues import BoundedQueue
from .revocations import RevocationSync
from .transport.fleet import FleetConfig
from .transport.mesh import Transport, TransportConfig
from .transport.reach import dial_problem

log = logging.getLogger(__name__)

HELLO = "hello"  # request type neighbours exchange to learn each other's PUB endpoint
PEERS = "zmqagents.peers"  # request type answered by the node itself with its routing table
EXPIRED = "Expired"  # ``type`` of the error reply to a request refused because its deadline passed
# BoundedQueue's reasons -> Node.stats keys (and the dropped-messages metric's reasons, sidecar/admin.py)
_INBOX_REFUSALS = {"queue_full": "inbox_refused", "queue_bytes": "inbox_bytes_refused",
                   "peer_share": "inbox_share_refused", "peer_share_bytes": "inbox_share_refused"}
# s an outbound-only node waits for a TCP connection to a bootstrap node before joining through its relays
# instead: a routed host answers a connect in a round trip, a firewall that drops it never does
DIAL_CHECK_TIMEOUT = 3.0
# What a Message waiting in the inbox or a subscription holds beyond its body's values (Envelope.cost
# counts those): the Message, its src, id and type, and the body's own container (measured: under
# 500 bytes). The envelope's other fields are gone by then, so its fixed ENVELOPE_COST is not charged.
MESSAGE_COST = 512
MAX_REFUSED_SENDERS = 1024  # senders remembered for a window update once the inbox has room (others wait for timers)


def message_cost(cost: int, count: int = 1) -> int:
    """What ``count`` messages whose envelopes cost ``cost`` in all hold once they wait as Messages."""
    return max(count * MESSAGE_COST, cost - count * (ENVELOPE_COST - MESSAGE_COST))


CONTACT_RECORD_DOMAIN = b"zmqagents/contact/v1\x00"  # DHT keys of nodes' own signed contact records


def contact_key(node_id: bytes) -> bytes:
    """The DHT key under which a node publishes its own contact, signed by its key (protocols/node.md,
    "Relaying"): an outbound-only node's relay list can be found from its node id alone."""
    return hashlib.sha256(CONTACT_RECORD_DOMAIN + node_id).digest()


class NodeError(Exception):
    """Base of errors the Node API raises."""


class UnknownPeer(NodeError):
    """No contact for that peer and no connection from it: pass its contact (PUBLICKEY@ENDPOINT)."""


class RequestTimeout(NodeError, TimeoutError):
    """No reply before the deadline."""


class PeerUnreachable(NodeError):
    """Every retransmit went unanswered."""


class RemoteError(NodeError):
    """The peer's handler failed; ``body`` holds what it reported."""

    def __init__(self, body: Any):
        self.body = body
        message = body.get("error") if isinstance(body, dict) else body
        super().__init__(f"remote handler failed: {message}")


class SendError(NodeError):
    """Messages handed to ``send`` could not be delivered (see ``failures``)."""

    def __init__(self, failures: list[SendFailed]):
        self.failures = failures
        super().__init__(f"{len(failures)} message(s) could not be delivered")


@dataclass(slots=True, frozen=True)
class MemberEvent:
    """A change in what this node knows of a peer: ``kind`` is "joined" (this node joined the mesh;
    ``node_id`` is ours), "alive", "suspect", "failed", "left" or "refuted" (we were suspected and
    raised our own incarnation); on an outbound-only node also "relay_up" / "relay_down" (one of its
    relays started or stopped answering its keepalive); in a fleet "revoked" (a revocation list cut
    the peer off)."""

    kind: str
    node_id: bytes
    incarnation: int = 0

    @property
    def peer(self) -> str:
        return short_id(self.node_id)


@dataclass(slots=True)
class Message:
    """What the application receives: a direct message, a request, or a publication."""

    src: bytes
    body: Any
    type: str
    id: bytes
    topic: bytes | None = None
    cost: int = field(default=0, repr=False, compare=False)  # what it holds in memory (message_cost)

    @property
    def sender(self) -> str:
        return short_id(self.src)


@dataclass
class NodeConfig:
    """Knobs of a node; the transport and delivery sections have their own dataclasses."""

    transport: TransportConfig = field(default_factory=TransportConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    dht: DhtConfig = field(default_factory=DhtConfig)
    event_queue: int = 1000  # membership events buffered per events() reader; the oldest is dropped beyond it
    leave_timeout: float = 0.5  # how long close() lingers after announcing a graceful leave
    member: bool = True  # False for a short-lived client: not put in peers' tables, no leave to announce
    inbox_limit: int = 10_000  # messages waiting for the application before new ones are refused (sender retries)
    # ...and their bytes (Envelope.cost: what the decoded messages hold). One sender may hold inbox_share of
    # each bound, so a peer that fills the inbox leaves room for the others. Bounds of the sidecar's 50 MB.
    inbox_bytes: int = 4 << 20
    inbox_share: float = 0.5
    max_handlers: int = 64  # async request handlers running at once; further requests wait for a slot (unrun if their deadline passes)
    subscription_queue: int = 10_000  # publications buffered per subscriber; the oldest is dropped beyond it
    subscription_bytes: int = 4 << 20  # ...and their bytes; one publisher may hold inbox_share of them
    hello_timeout: float = 5.0
    join_timeout: float = 10.0  # how long start() waits for the bootstrap lookup before carrying on alone
    # Reachability through relays (protocols/node.md, "Relaying"). An outbound-only node accepts no
    # connections: it registers with ``relays`` (contacts of relay nodes) and advertises the contact
    # KEY@relay://R1,R2. ``serve_relay`` makes this node a relay for others.
    outbound_only: bool = False
    relays: list = field(default_factory=list)  # contacts (str or Contact) of our relays, preferred first
    serve_relay: bool = False
    relay: RelayConfig = field(default_factory=RelayConfig)
    # join = "fleet" (protocols/certificates.md): talk only to peers with a certificate from our CA
    fleet: FleetConfig | None = None


RequestHandler = Callable[[Any, Message], Any | Awaitable[Any]]
# (message id, destination, None if acknowledged else the failure reason): see Node.on_settled
SettledCallback = Callable[[bytes, bytes, "str | None"], None]


class Node:
    """A peer on the mesh. Use as ``async with Node(...) as node``."""

    def __init__(
        self,
        identity: Identity | str | os.PathLike | None = None,
        *,
        listen: str = "tcp://127.0.0.1:0",
        peers: Iterable[str | Contact] = (),
        bootstrap: Iterable[str | Contact] = (),
        secure: bool = True,
        allowlist: Iterable[bytes] | None = None,
        config: NodeConfig | None = None,
        rng: random.Random | None = None,
        inbox: "BoundedQueue[Message] | None" = None,
    ):
        if identity is None:
            identity = Identity.generate()
        elif not isinstance(identity, Identity):
            identity = Identity.load(identity)
        self.identity = identity
        self.config = config or NodeConfig()
        self.config.transport.listen = listen
        self.config.transport.secure = secure
        self._peers = [p if isinstance(p, Contact) else Contact.parse(p) for p in peers]
        self._relays = [p if isinstance(p, Contact) else Contact.parse(p) for p in self.config.relays]
        if self.config.outbound_only and not self._relays:
            raise ValueError("an outbound-only node needs at least one relay contact (NodeConfig.relays / --relay)")
        if self._relays and not self.config.outbound_only:
            raise ValueError("relays are for outbound-only nodes: set NodeConfig.outbound_only (--outbound-only)")
        self._bootstrap = [p if isinstance(p, Contact) else Contact.parse(p) for p in bootstrap]
        self.transport = Transport(
            identity,
            self.config.transport,
            on_batch=self._on_batch,
            on_publication=self._on_publication,
            allow=frozenset(allowlist) if allowlist is not None else None,
            fleet=self.config.fleet,
        )
        self._rng = rng or random.Random()
        # The cores get a monotonic clock, so a wall-clock step (NTP, a suspended VM) cannot look like
        # a stall to membership or fire every retransmit at once. It is anchored to the wall clock once,
        # here, so the times it yields (``last_seen`` in peers()) still read as Unix time.
        self._clock_offset = time.time() - time.monotonic()
        # Stream epochs from the wall clock in microseconds: a restarted node opens its streams above
        # every epoch its previous run used (it opened fewer streams than microseconds passed), so a
        # receiver never takes a late frame of the old run for the newer stream (protocols/delivery.md
        # §3). A clock set back is repaired by the receiver, which names the epoch it holds (§5.3).
        self.delivery = Delivery(identity.node_id, self._rng, self.config.delivery,
                                 epoch=int(time.time() * 1_000_000))
        self.routing: RoutingCore | None = None  # needs our endpoint, known once the inbox is bound
        self.membership: Membership | None = None  # likewise (alive rumors about us carry our contact)
        # Records and providers (zmqagents/dht.py); its core is made by start().
        self.dht = Dht(now=self._now, pump=self._pump)
        # Routing, membership, the DHT core and the relay cores wired as one (zmqagents/core/composition.py).
        self.core: NodeCore | None = None
        self.relay_server: RelayServer | None = None  # with serve_relay
        self.relay_client: RelayClient | None = None  # on an outbound-only node
        self._relays_seen_up: set[bytes] = set()
        self._event_queues: list[asyncio.Queue] = []
        self._lookups: dict[int, asyncio.Future] = {}
        self._joined: asyncio.Future | None = None
        # Direct messages wait here for the application. A caller may pass its own queue with the same
        # interface plus flush(), called before any ack for what it was given leaves (the sidecar's
        # inbound spool: nothing acknowledged lives only in memory).
        self._inbox: BoundedQueue[Message] | None = inbox
        self._refused: set[bytes] = set()  # senders whose messages the inbox refused, owed a window update
        self._requests: dict[bytes, asyncio.Future] = {}
        self._windows: dict[bytes, asyncio.Event] = {}
        self._failures: list[SendFailed] = []
        self._settled: list[SettledCallback] = []
        self._routes: list[tuple[str, Callable[[Envelope], None]]] = []  # type prefix -> component (route())
        self._handler: RequestHandler | None = None
        self._handler_is_async = False
        self._handler_slots: asyncio.Semaphore | None = None
        self._handler_tasks: set[asyncio.Task] = set()
        self._subscriptions: list[tuple[bytes, BoundedQueue]] = []
        # node id -> (contact, PUB endpoint). SUB sockets to these exist only while the application
        # subscribes to something: each costs a CURVE connection (~30 KB) on both ends.
        self._neighbours: dict[bytes, tuple[Contact, str]] = {}
        self._timer = CoreTimer(self._now, self._on_timer)
        self._idle: asyncio.Event | None = None
        self._started = False
        self._closed = False
        self.stats: dict[str, int] = {
            "inbox_refused": 0, "inbox_bytes_refused": 0, "inbox_share_refused": 0,
            "publications_dropped": 0, "publications_refused": 0, "handler_errors": 0, "replies_dropped": 0,
            "relay_not_served": 0, "relay_refusals_received": 0, "contact_records_refused": 0,
            "requests_expired": 0,
            "bootstrap_undialable": 0, "window_updates": 0,
        }
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
        if self._inbox is None:
            self._inbox = BoundedQueue(cfg.inbox_limit, cfg.inbox_bytes, cfg.inbox_share)
        self._handler_slots = asyncio.Semaphore(self.config.max_handlers)
        self._idle = asyncio.Event()
        self._idle.set()
        self.transport.start()
        self._start_relaying()
        # A short-lived client (member=False) does not advertise itself: it stays out of peers' tables,
        # so no record is ever stored on a node that is about to exit.
        self.routing = RoutingCore(self.contact, self._rng, self.config.routing, advertise=self.config.member)
        self.dht.core = DhtCore(self.routing, self.identity, self._rng, self.config.dht)
        self.membership = Membership(self.contact, self._rng, self.config.membership)
        self.core = NodeCore(self.routing, self.membership, self.dht.core,
                             relay_server=self.relay_server, relay_client=self.relay_client)
        self._pump()
        if self.relay_client is not None:
            self.relay_client.start(self._now())
            self._pump()
        peers = self._peers + [r for r in self._relays if r not in self._peers]
        if peers:
            await asyncio.gather(*(self._hello(c) for c in peers))
        if self.revocation_sync is not None:
            self.revocation_sync.start()
        if self._bootstrap:
            bootstrap = self._bootstrap
            if self.config.outbound_only:
                bootstrap = await self._dialable_bootstrap(bootstrap)
            joined = await self.join(bootstrap, timeout=self.config.join_timeout)
            if joined and self.config.outbound_only:
                try:  # the DHT republishes it while we run
                    await self.publish_contact(timeout=self.config.join_timeout)
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
                  "(through its relays)", len(bootstrap), ", ".join(short_id(r.node_id) for r in self._relays))
        return list(self._relays)

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
        now = self._now()
        self.routing.join(contacts, now)
        self.core.sync(now)
        self._pump()
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
        lookup_id = self.routing.lookup(target, self._now(), find=find)
        future = self._lookups.get(lookup_id)
        if future is None:
            future = self._lookups[lookup_id] = asyncio.get_running_loop().create_future()
        self._pump()
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

    async def close(self) -> None:
        """Stop timers and handlers, fail pending requests, close every socket."""
        if self._closed:
            return
        if self.config.member and self.membership is not None and len(self.membership) and not self.membership.leaving:
            # Tell the members we are going, so they report "left" rather than a failure later.
            self.membership.leave(self._now())
            self._pump()
            await asyncio.sleep(self.config.leave_timeout)
        self._closed = True
        if self.revocation_sync is not None:
            await self.revocation_sync.close()
        self._timer.cancel()
        for task in list(self._handler_tasks):
            task.cancel()
        if self._handler_tasks:
            await asyncio.gather(*self._handler_tasks, return_exceptions=True)
        self.dht.close(NodeError("node closed"))
        for fut in [*self._requests.values(), *self._lookups.values(), self._joined]:
            if fut is not None and not fut.done():
                fut.set_exception(NodeError("node closed"))
        self._requests.clear()
        self._lookups.clear()
        for _, queue in self._subscriptions:
            queue.put(None, b"", 0)
        for queue in self._event_queues:
            queue.put_nowait(None)
        self.transport.close()

    @property
    def running(self) -> bool:
        """Started and not yet closed."""
        return self._started and not self._closed

    def _now(self) -> float:
        """Seconds on the cores' clock: monotonic, anchored to Unix time when the node was made."""
        return time.monotonic() + self._clock_offset

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
        return list(self._neighbours)

    # -- sending -----------------------------------------------------------------

    def _resolve(self, peer: bytes | str | Contact) -> bytes:
        if type(peer) is bytes and len(peer) == 32 and self.transport.known(peer):
            return peer  # the common case, first
        if isinstance(peer, Contact):
            return self.transport.add_contact(peer)
        if isinstance(peer, str):
            try:
                if "@" in peer:
                    return self.transport.add_contact(Contact.parse(peer))
                peer = parse_node_id(peer)
            except IdentityError as exc:
                raise UnknownPeer(f"{exc}; pass a contact (PUBLICKEY@ENDPOINT) or a 64-hex node id") from None
        if not isinstance(peer, bytes) or len(peer) != 32:
            raise UnknownPeer(f"peer must be a 32-byte node id, a hex node id or a contact, got {peer!r:.80}")
        if not self.transport.known(peer):
            raise UnknownPeer(f"no route to {short_id(peer)}: pass its contact (PUBLICKEY@ENDPOINT) instead of its id")
        return peer

    async def _submit(self, dst: bytes, submit: Callable[[], bytes]) -> bytes:
        """Hand a message to the core, waiting (backpressure) while the window to ``dst`` is full."""
        while True:
            try:
                msg_id = submit()
            except WindowFull:
                event = self._windows.setdefault(dst, asyncio.Event())
                event.clear()
                await event.wait()
                continue
            self._idle.clear()
            self._send_new()
            return msg_id

    def _send_new(self) -> None:
        """After send/request: the core has new envelopes but, unlike after receive or tick, no events.
        Send them and re-arm the timer only if the new deadline is the earliest."""
        delivery = self.delivery
        send = self.transport.send
        for env in delivery.take_outgoing():
            send(env)
        if not self._closed:
            self._timer.arm((delivery.next_timer(),))  # earlier than the pending timer, or none pending

    async def send(self, peer: bytes | str | Contact, body: Any, *, type: str = "msg",
                   msg_id: bytes | None = None, confirm: bool = False) -> bytes:
        """Queue a reliable message; returns its id once the transport has it.

        Waits (backpressure) while too many messages to this peer are unacknowledged.
        Delivery failures surface from :meth:`flush` and :meth:`on_settled` callbacks.
        ``msg_id`` re-sends a message under its earlier id (the receiver delivers an id once);
        ``confirm`` reports its acknowledgement to the :meth:`on_settled` callbacks.
        """
        dst = self._resolve(peer)
        return await self._submit(
            dst, lambda: self.delivery.send(dst, body, self._now(), type=type, msg_id=msg_id, confirm=confirm)
        )

    def send_nowait(self, peer: bytes | str | Contact, body: Any, *, type: str = "msg",
                    msg_id: bytes | None = None, confirm: bool = False) -> bytes:
        """:meth:`send` for a caller that schedules its own sends (a durable outbox): never waits.

        Raises :class:`~zmqagents.core.delivery.WindowFull` when ``window`` messages to the peer
        are unacknowledged (``node.delivery.can_send(dst)`` tells beforehand), and UnknownPeer.
        """
        dst = self._resolve(peer)
        msg_id = self.delivery.send(dst, body, self._now(), type=type, msg_id=msg_id, confirm=confirm)
        self._idle.clear()
        self._send_new()
        return msg_id

    def route(self, prefix: str, handler: Callable[[Envelope], None]) -> None:
        """Hand every delivered message (or request) whose type starts with ``prefix`` to ``handler``
        instead of the request handler: how a component such as the task runtime gets its protocol's
        envelopes. The handler runs inside the node's event handling: keep it short, never block;
        it answers a request with :meth:`reply`."""
        self._routes.append((prefix, handler))

    def reply(self, request: Envelope, body: Any, *, error: bool = False) -> None:
        """Answer a request envelope handed to a :meth:`route` handler."""
        self._reply(request, body, error=error)
        self._send_new()

    def _route(self, env: Envelope) -> bool:
        for prefix, handler in self._routes:
            if env.type.startswith(prefix):
                try:
                    handler(env)
                except Exception:  # a component's bug must not take the node down
                    self.stats["handler_errors"] += 1
                    log.exception("handler for %s messages failed", prefix)
                return True
        return False

    def on_settled(self, callback: SettledCallback) -> SettledCallback:
        """Call ``callback(msg_id, dst, None)`` when ``dst`` acknowledges a message sent with
        ``confirm=True``, and ``callback(msg_id, dst, reason)`` when any sent message fails.

        This is what a durable outbox needs: a message may be forgotten only once acknowledged.
        Callbacks run inside the node's event handling: keep them short, never block.
        """
        self._settled.append(callback)
        return callback

    async def request(self, peer: bytes | str | Contact, body: Any, *, timeout: float = 10.0, type: str = "req") -> Any:
        """Send a request and wait for its reply body.

        Raises RequestTimeout, PeerUnreachable, or RemoteError (the handler failed).
        """
        dst = self._resolve(peer)
        future = asyncio.get_running_loop().create_future()
        request_id = await self._submit(
            dst, lambda: self.delivery.request(dst, body, self._now(), timeout=timeout, type=type)
        )
        self._requests[request_id] = future
        try:
            return await future
        finally:
            self._requests.pop(request_id, None)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every sent message is acknowledged or has failed; raise SendError on failures."""
        async def settled() -> None:
            while self.delivery.pending():
                self._idle.clear()
                await self._idle.wait()
        await asyncio.wait_for(settled(), timeout)
        if self._failures:
            failures, self._failures = self._failures, []
            raise SendError(failures)

    # -- receiving ---------------------------------------------------------------

    def on_request(self, handler: RequestHandler) -> RequestHandler:
        """Serve requests: ``handler(body, message)`` returns the reply body.

        The handler is a plain function (answered inline, lowest latency) or an
        ``async def`` (run as a task, at most ``max_handlers`` at once). An
        exception becomes an error reply, so the caller gets RemoteError.
        Usable as a decorator.
        """
        self._handler = handler
        self._handler_is_async = asyncio.iscoroutinefunction(handler) or asyncio.iscoroutinefunction(
            getattr(handler, "__call__", None)
        )
        return handler

    @property
    def request_handler(self) -> RequestHandler | None:
        """The handler :meth:`on_request` set (a component that takes over may fall back to it)."""
        return self._handler

    async def receive(self, timeout: float | None = None) -> Message:
        """The next direct message, in order per sender, exactly once."""
        message = (await asyncio.wait_for(self._inbox.get(), timeout))[0]
        if self._refused:
            self._offer_room()
        return message

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            message = (await self._inbox.get())[0]
            if self._refused:
                self._offer_room()
            yield message

    def _offer_room(self) -> None:
        """The application took a message: ack each sender whose messages the full inbox refused, once
        what its reorder buffer would release with the next one fits again (a window update). Refused
        messages reached no core and got no ack; without this the sender resent them on its backed-off
        timer, up to 6 s later (a restarted sidecar whose inbox filled before its local API started:
        bench/chaos.py, seed 35)."""
        inbox = self._inbox
        delivery = self.delivery
        now = self._now()
        for src in list(self._refused):
            n, held = delivery.buffered(src)
            if inbox.refuses(src, message_cost(held + (held // n if n else ENVELOPE_COST), n + 1), need=n + 1) is None:
                self._refused.discard(src)
                delivery.ack(src, now)
                self.stats["window_updates"] += 1
        self._pump()

    def requeue(self, message: Message) -> None:
        """Put a message just taken with :meth:`receive` back at the head of the inbox.

        For a consumer that takes a message and then finds nobody to hand it to (the local API's
        clients went away): it waits in the inbox, first in line, and counts against its bounds again.
        """
        self._inbox.unget(message, message.src, message.cost)

    @property
    def inbox_size(self) -> tuple[int, int]:
        """(messages, bytes) waiting in the inbox for the application."""
        return len(self._inbox) if self._inbox is not None else 0, self._inbox.bytes if self._inbox is not None else 0

    @property
    def subscription_backlog(self) -> int:
        """Publications waiting in every subscription's queue."""
        return sum(len(queue) for _, queue in self._subscriptions)

    # -- pub/sub -------------------------------------------------------------------

    async def publish(self, topic: str | bytes, body: Any) -> None:
        """Send to every neighbour subscribed to a prefix of ``topic`` (one hop, best effort)."""
        topic_b = topic.encode() if isinstance(topic, str) else topic
        env = Envelope(
            id=os.urandom(16), src=self.node_id, type="pub", body=body, ts=int(time.time() * 1000)
        )
        self.transport.publish(topic_b, env)

    async def wait_for_subscriber(self, topic: str | bytes, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until a neighbour subscribes to a prefix of ``topic``.

        ZeroMQ subscriptions take a round trip to arrive, so a publisher that has
        just started would otherwise publish to nobody.
        """
        topic_b = topic.encode() if isinstance(topic, str) else topic
        deadline = time.monotonic() + timeout
        while not self.transport.has_subscriber(topic_b):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def subscribe(self, topic: str | bytes = b"") -> AsyncIterator[Message]:
        """Yield publications whose topic starts with ``topic`` until the node closes."""
        topic_b = topic.encode() if isinstance(topic, str) else topic
        cfg = self.config
        queue: BoundedQueue[Message | None] = BoundedQueue(cfg.subscription_queue, cfg.subscription_bytes, cfg.inbox_share)
        entry = (topic_b, queue)
        if not self._subscriptions:
            for contact, pub in self._neighbours.values():
                if pub:  # "" for an outbound-only neighbour: nobody can connect to it
                    self.transport.subscribe_to(contact, pub)
        self._subscriptions.append(entry)
        self.transport.add_topic(topic_b)
        try:
            while True:
                item = (await queue.get())[0]
                if item is None:
                    return
                yield item
        finally:
            self._subscriptions.remove(entry)
            if not self._closed:
                self.transport.remove_topic(topic_b)
                if not self._subscriptions:
                    for node_id in self._neighbours:
                        self.transport.unsubscribe_from(node_id)

    def _on_publication(self, topic: bytes, env: Envelope) -> None:
        src = env.src
        cost = message_cost(env.cost)
        msg = Message(src, env.body, env.type, env.id, topic, cost)
        for prefix, queue in self._subscriptions:
            if topic.startswith(prefix):
                # Best effort: a publisher over its share loses its newest; otherwise the oldest make room.
                why = queue.refuses(src, cost)
                if why is not None and why.startswith("peer_share"):
                    self.stats["publications_refused"] += 1
                    continue
                while why is not None and len(queue):
                    queue.get_nowait()
                    self.stats["publications_dropped"] += 1
                    why = queue.refuses(src, cost)
                queue.put(msg, src, cost)

    # -- hello: neighbours learn each other's PUB endpoint ------------------------

    async def _hello(self, contact: Contact) -> None:
        node_id = self.transport.add_contact(contact)
        try:
            body = await self.request(node_id, self._hello_body(), timeout=self.config.hello_timeout, type=HELLO)
        except NodeError as exc:
            log.warning("peer %s did not answer hello: %s", contact, exc)
            return
        self._add_neighbour(node_id, body)

    async def introduce(self, contact: Contact, *, timeout: float | None = None) -> bool:
        """Say hello to a node known only from a claim (an mDNS announcement, say) and keep it only if
        it answers.

        The hello goes over a CurveZMQ link opened with ``contact``'s public key, whose handshake
        fails unless the far end holds the matching secret key: a True return proves the claimed
        id. On False everything the claim put in the address book is dropped again, so a false
        claim cannot redirect traffic meant for the real node.
        """
        node_id = contact.node_id
        if node_id in self._neighbours:
            return True
        self.transport.add_contact(contact)
        try:
            body = await self.request(
                node_id, self._hello_body(), timeout=timeout or self.config.hello_timeout, type=HELLO
            )
        except NodeError:
            if node_id not in self._neighbours:  # unless it said hello to us meanwhile
                self.delivery.forget(node_id)
                self.transport.drop_contact(contact)
            return False
        return self._add_neighbour(node_id, body)

    def _hello_body(self) -> dict:
        # "member": false marks a short-lived client (a shell command): peers keep it out of their
        # routing tables, so they never probe it or report it failed once it exits.
        # An outbound-only node advertises its relays as its endpoint and no PUB (nobody can connect to it).
        pub = "" if self.config.outbound_only else self.transport.pub_endpoint
        return {"endpoint": self.contact.endpoint, "pub": pub, "member": self.config.member}

    def _add_neighbour(self, node_id: bytes, body: Any) -> bool:
        if not isinstance(body, dict) or not isinstance(body.get("pub"), str) or not isinstance(body.get("endpoint"), str):
            log.warning("malformed hello from %s", short_id(node_id))
            return False
        public_key = self.transport.public_key_of(node_id)
        pub = body["pub"]
        if public_key is None or node_id_of(public_key) != node_id or not (pub == "" or pub.startswith(("tcp://", "ipc://"))):
            log.warning("bad hello from %s", short_id(node_id))
            return False
        try:  # tcp://, ipc:// or relay://RELAYCONTACT,... (each relay checked)
            contact = Contact.parse(f"{format_public_key(public_key)}@{body['endpoint']}")
        except IdentityError as exc:
            log.warning("bad hello from %s: %s", short_id(node_id), exc)
            return False
        self.transport.add_contact(contact)
        if body.get("member", True) is not False:
            self.core.observe(contact, self._now())
        self._neighbours[node_id] = (contact, pub)
        if self._subscriptions and pub:
            self.transport.subscribe_to(contact, pub)
        return True

    # -- relaying: outbound-only nodes reached through relays ----------------------

    def _start_relaying(self) -> None:
        cfg = self.config
        transport = self.transport
        if cfg.outbound_only:
            transport.advertised = Contact.via(self.identity.public_key, self._relays)
            paths = transport.paths()
            paths.edge = [r.node_id for r in self._relays]
            for relay in self._relays:
                transport.add_contact(relay)
            self.relay_client = RelayClient(self.node_id, paths.edge[:], self._rng, cfg.relay)
        if cfg.serve_relay:
            self.relay_server = RelayServer(self.node_id, self._rng, cfg.relay, direct_route=transport.direct_route)

    def _on_relay(self, env: Envelope, batch: list[Envelope]) -> None:
        """The relay envelopes NodeCore leaves to the shell: a relayed delivery (unwrapped by the
        transport's paths), a relay request when we serve none, a refusal that demotes a relay path."""
        typ = env.type
        if typ == DELIVER:
            inner = self.transport.paths().unwrap(env)  # verified, or dropped and counted
            if inner is not None and self.transport.admits(inner):  # a fleet takes certified senders only
                batch.append(inner)  # the caller's loop handles it next, like any other arrival
        elif typ == FORWARD or typ == REGISTER:  # we serve no relay (NodeCore took it otherwise)
            self.stats["relay_not_served"] += 1
            body = {"to": env.body.get("to") if isinstance(env.body, dict) else None, "why": "not_a_relay"}
            if typ == REGISTER:
                body = {"n": 0, "why": "not_a_relay"}
            self.transport.send(Envelope(id=os.urandom(16), src=self.node_id, dst=env.src,
                                         type=NOT_FORWARDED if typ == FORWARD else REFUSED, body=body, re=env.id))
        elif typ == NOT_FORWARDED:
            self.stats["relay_refusals_received"] += 1
            to = env.body.get("to") if isinstance(env.body, dict) else None
            if type(to) is bytes and self.transport.relaying is not None:
                self.transport.relaying.demote(env.src, to)  # try that destination's next relay first

    def _on_relay_event(self, event: RelayUp | RelayDown) -> None:
        """One of our relays started or stopped answering our keepalive (outbound-only nodes)."""
        client = self.relay_client
        assert client is not None  # only the relay client reports these
        paths = self.transport.paths()
        active = client.active()
        paths.edge = active + [r for r in paths.edge if r not in active]
        if isinstance(event, RelayDown):
            log.warning("relay %s is down (%s); %d relay(s) up", short_id(event.node_id), event.reason, len(active))
            paths.demote(event.node_id)
            self._emit(MemberEvent("relay_down", event.node_id))
        else:
            log.info("relay %s is up", short_id(event.node_id))
            self._emit(MemberEvent("relay_up", event.node_id))
            if event.node_id in self._relays_seen_up:
                # Back after being down (perhaps restarted, its table empty): introduce ourselves again,
                # so it hands our relayed contact out in lookups once more.
                contact = next(c for c in self._relays if c.node_id == event.node_id)
                task = asyncio.get_running_loop().create_task(self._hello(contact))
                self._handler_tasks.add(task)  # cancelled by close() like the handlers
                task.add_done_callback(self._handler_tasks.discard)
            self._relays_seen_up.add(event.node_id)

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
            raise ValueError(f"this node's fleet certificate cannot be used ({exc.reason}): {exc}") from None
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
        the fleet. Returns the ids cut off; CertError if the list cannot be trusted, ValueError if this
        node is not a fleet member."""
        gate = self.transport.fleet
        if gate is None:
            raise ValueError('revocation lists are for join = "fleet" nodes')
        gone = gate.adopt(revocations)
        now = self._now()
        for nid in gone if self.core is not None else ():  # before start() there is nothing to forget
            self.core.forget(nid, now)  # delivery and the transport forget it on the PeerGone that follows
            self._neighbours.pop(nid, None)
            self._emit(MemberEvent("revoked", nid))
        if self.revocation_sync is not None:
            self.revocation_sync.poke()
        if gone:
            self._pump()
        return gone

    def certified_groups(self, node_id: bytes) -> frozenset[str]:
        """The groups the certificate of an admitted fleet peer names (empty outside a fleet)."""
        gate = self.transport.fleet
        return frozenset() if gate is None else gate.admission.groups_of(node_id)

    # -- driving the core ------------------------------------------------------------

    def _on_batch(self, batch: list[Envelope]) -> None:
        delivery = self.delivery
        core = self.core
        inbox = self._inbox
        # Accepted for the inbox but not in it yet: this batch's messages, delivered into the inbox
        # when the batch is pumped. They count as if queued.
        held_n = held_b = 0
        in_batch: dict[bytes, list[int]] = {}
        now = self._now()
        for env in batch:
            # Routing, membership, the DHT and the relay cores take theirs (and any message refreshes
            # its sender in the table); what is left is delivery's, or a relay path's.
            if core.receive(env, now):
                delivery.heard(env.src, now)  # the path from it works: a stalled floor to it goes again now
                continue
            typ = env.type
            if typ in RELAY_TYPES:
                self._on_relay(env, batch)
                continue
            # A full inbox refuses data before the core sees it: no ack, so the sender
            # retransmits later and nothing accepted is ever thrown away.
            if typ == "msg":
                src = env.src
                # In order, it enters the inbox with the out-of-order ones it completes, which must
                # fit; out of order, it waits in the delivery core's reorder buffer (bounded there).
                need, cost = delivery.releases(env)
                if need:
                    cost = message_cost(cost, need)
                    mine = in_batch.get(src)
                    if mine is None:
                        mine = in_batch[src] = [0, 0]
                    why = inbox.refuses(src, cost, need=need, held=(held_n, held_b), sender_held=(mine[0], mine[1]))
                    if why is not None:
                        self.stats[_INBOX_REFUSALS[why]] += 1
                        if len(self._refused) < MAX_REFUSED_SENDERS:
                            self._refused.add(src)
                        continue
                    held_n += need
                    held_b += cost
                    mine[0] += need
                    mine[1] += cost
            delivery.receive(env, now)
        self._pump()

    def _pump(self) -> None:
        """Send what the cores want sent, act on their events, re-arm the timer."""
        delivery = self.delivery
        send = self.transport.send
        events = delivery.take_events()
        if events:
            self._dispatch(events)  # first: received messages are stored before their acks leave
        for env in delivery.take_outgoing():
            send(env)
        if self.core is not None:
            self._pump_core()
        if not delivery.pending():
            self._idle.set()
        self._arm_timer()

    def _pump_core(self) -> None:
        """Send what routing, membership, the DHT and the relay cores queued, and act on their events
        until none is left (acting on one may queue more). A destination the transport has no link to
        yet (a lookup candidate, a ping relayed for another prober) is reached at the contact the
        cores know for it (``contact_for``)."""
        core = self.core
        transport = self.transport
        while True:
            for env in core.take_outgoing():
                if not transport.known(env.dst):
                    contact = core.contact_for(env.dst)
                    if contact is not None:
                        transport.add_contact(contact)
                transport.send(env)
            events = core.take_events()
            if not events:
                return
            for event in events:
                self._on_core_event(event)

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
            self._on_relay_event(event)
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

    def _dispatch(self, events: list) -> None:
        # Direct messages go to the inbox (and its flush) before any other event is acted on: a handler
        # may send, and whatever is sent carries acks for these messages.
        inbox = self._inbox
        for event in events:
            if isinstance(event, Delivered) and event.env.type == "msg":
                env = event.env
                cost = message_cost(env.cost)
                inbox.put(Message(env.src, env.body, env.type, env.id, None, cost), env.src, cost)
        inbox.flush()
        for event in events:
            if isinstance(event, Delivered):
                env = event.env
                if env.type == "msg":
                    pass  # in the inbox already
                elif env.type == HELLO:
                    self._add_neighbour(env.src, env.body)
                    self._reply(env, self._hello_body())
                elif env.type == PEERS:
                    self._reply(env, self.peers())
                elif self._routes and self._route(env):
                    pass
                else:
                    self._start_handler(env)
            elif isinstance(event, Replied):
                future = self._requests.get(event.request_id)
                if future is not None and not future.done():
                    if event.env.type == "err":
                        future.set_exception(RemoteError(event.env.body))
                    else:
                        future.set_result(event.env.body)
            elif isinstance(event, RequestFailed):
                future = self._requests.get(event.request_id)
                if future is not None and not future.done():
                    if event.reason == "timeout":
                        future.set_exception(RequestTimeout(f"no reply from {short_id(event.dst)} in time"))
                    else:
                        future.set_exception(PeerUnreachable(f"{short_id(event.dst)} did not acknowledge the request"))
            elif isinstance(event, Acked):
                for callback in self._settled:
                    callback(event.msg_id, event.dst, None)
            elif isinstance(event, SendFailed):
                if len(self._failures) < 10_000:
                    self._failures.append(event)
                for callback in self._settled:
                    callback(event.msg_id, event.dst, event.reason)
            elif isinstance(event, WindowOpen):
                waiter = self._windows.get(event.dst)
                if waiter is not None:
                    waiter.set()
            elif isinstance(event, Stalled):
                # Once per stall (the core reports it again only after progress); the core has already
                # reopened the stream, and the zmqagents_delivery_stalled_peers gauge counts it meanwhile.
                log.warning("delivery to %s stalled: %d message(s) unacknowledged for %.1f s although it "
                            "answers; reopened the stream (state before: %s)", short_id(event.dst), event.pending,
                            event.waited, event.state)

    def _start_handler(self, env: Envelope) -> None:
        if self._handler is None:
            self._reply_error(env, "this node serves no requests", "NoHandler")
            return
        if self._handler_is_async:
            # The requester's deadline on our clock: its ttl counts from now, when we read it (clocks of
            # different hosts are not compared; protocols/delivery.md §8.2). A plain function below runs
            # at once, so only a request that waits for a handler slot can outlive it.
            deadline = self._now() + env.ttl / 1000 if env.ttl else None
            task = asyncio.get_running_loop().create_task(self._run_handler(env, deadline))
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)
            return
        # A plain function answers inline: no task, no extra loop turn on the latency path.
        try:
            result = self._handler(env.body, Message(env.src, env.body, env.type, env.id))
        except Exception as exc:  # the handler is the application's code: report, never crash the node
            self._reply_error(env, str(exc) or type(exc).__name__, type(exc).__name__)
            return
        self._reply(env, result)

    def _reply(self, env: Envelope, body: Any, *, error: bool = False) -> None:
        try:
            self.delivery.reply(env, body, self._now(), error=error)
        except WindowFull:
            # The requester leaves twice a window of replies unacked: drop this one (it times out)
            # rather than buffer without bound.
            self.stats["replies_dropped"] += 1

    async def _run_handler(self, env: Envelope, deadline: float | None) -> None:
        async with self._handler_slots:
            if deadline is not None and self._now() >= deadline:
                # It waited for a slot until its requester gave up: running it would be work nobody
                # reads. Refused and counted; the error reply reaches a requester still listening.
                self.stats["requests_expired"] += 1
                self._reply(env, {"error": "the request's deadline passed before a handler was free; it was not run",
                                  "type": EXPIRED}, error=True)
                self._pump()
                return
            try:
                result = await self._handler(env.body, Message(env.src, env.body, env.type, env.id))
                self._reply(env, result)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._reply_error(env, str(exc) or type(exc).__name__, type(exc).__name__)
            self._pump()

    def _reply_error(self, env: Envelope, message: str, kind: str) -> None:
        self.stats["handler_errors"] += 1
        self._reply(env, {"error": message, "type": kind}, error=True)

    def _arm_timer(self) -> None:
        if self._closed:
            return
        cores: list = [self.delivery]
        if self.core is not None:
            cores.append(self.core)
        self._timer.arm(core.next_timer() for core in cores)

    def _on_timer(self) -> None:
        now = self._now()
        self.delivery.tick(now)
        if self.core is not None:
            self.core.tick(now)
        self._pump()


def run(coro: Awaitable[Any]) -> Any:
    """asyncio.run with uvloop when it is installed (it is the ``fast`` extra)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
