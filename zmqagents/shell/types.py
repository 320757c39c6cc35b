"""The data types and errors of the Node API: its configuration, what the application receives, the
membership events it reports, and the errors it raises.

They live apart from :mod:`zmqagents.node` so the pieces of the shell (the loop, the neighbours, the
relay glue, serving and sending) can name them without importing the Node that composes them;
``zmqagents.node`` re-exports every name here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..core.broadcast_config import BroadcastConfig
from ..core.delivery import DeliveryConfig, SendFailed
from ..core.dht import DhtConfig
from ..core.membership import MembershipConfig
from ..core.relay import RelayConfig
from ..core.routing import RoutingConfig
from ..envelope import ENVELOPE_COST
from ..errors import Error
from ..identity import short_id
from ..transport.fleet import FleetConfig
from ..transport.config import TransportConfig

HELLO = "hello"  # request type neighbours exchange to learn each other's PUB endpoint
PEERS = "zmqagents.peers"  # request type answered by the node itself with its routing table
EXPIRED = "Expired"  # ``type`` of the error reply to a request refused because its deadline passed
# BoundedQueue's reasons -> Node.stats keys (and the dropped-messages metric's reasons, sidecar/admin.py)
INBOX_REFUSALS = {"queue_full": "inbox_refused", "queue_bytes": "inbox_bytes_refused",
                   "peer_share": "inbox_share_refused", "peer_share_bytes": "inbox_share_refused"}
# What a Message waiting in the inbox or a subscription holds beyond its body's values (Envelope.cost
# counts those): the Message, its src, id and type, and the body's own container (measured: under
# 500 bytes). The envelope's other fields are gone by then, so its fixed ENVELOPE_COST is not charged.
MESSAGE_COST = 512


def message_cost(cost: int, count: int = 1) -> int:
    """What ``count`` messages whose envelopes cost ``cost`` in all hold once they wait as Messages."""
    return max(count * MESSAGE_COST, cost - count * (ENVELOPE_COST - MESSAGE_COST))


CONTACT_RECORD_DOMAIN = b"zmqagents/contact/v1\x00"  # DHT keys of nodes' own signed contact records


def contact_key(node_id: bytes) -> bytes:
    """The DHT key under which a node publishes its own contact, signed by its key (protocols/node.md,
    "Relaying"): an outbound-only node's relay list can be found from its node id alone."""
    return hashlib.sha256(CONTACT_RECORD_DOMAIN + node_id).digest()


class NodeError(Error):
    """Base of errors the Node API raises (a zmqagents.Error)."""


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
    seq: int | None = None  # a mesh-wide publication's sequence number (per origin and topic)

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
    broadcast: BroadcastConfig = field(default_factory=BroadcastConfig)  # mesh-wide publish/subscribe
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
