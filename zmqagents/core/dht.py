"""DHT records and providers on top of the Kademlia routing core (sans-IO).

The wire rules are in ``protocols/routing.md`` (section "Records and providers"); the lookup state machine
is :class:`~zmqagents.core.lookup.Lookup`, the routing table and RTT estimate belong to the
:class:`~zmqagents.core.routing.RoutingCore` this core is given. Nothing here does IO, reads a clock or
uses global randomness; signing and verifying (Ed25519, PyNaCl) is computation.

What it stores:

* **Value records** -- ``key`` (32 bytes), ``value`` (any msgpack value, the whole record at most
  ``max_record_bytes``), the publisher's Ed25519 verify key, a sequence number, an expiry (Unix
  seconds) and a signature over a canonical encoding. A holder keeps one record per key. The key is
  bound to its publisher while the held record lives: a record by another key is refused ("owner").
  Higher ``seq`` wins; equal ``seq`` with another value is refused ("conflict"); equal ``seq`` and value
  with a later expiry is a refresh.
* **Provider records** -- "node N offers capability C / subscribes to topic T": per key, one entry per
  provider (its contact, an expiry, optional small metadata), signed by the provider's own key (the key
  of the contact), at most ``max_providers_per_key`` per key. An entry lives until its expiry unless its
  provider refreshes it.

How it moves them:

* ``get``: iterative FIND_VALUE (``dht.find_value``), the same lookup as FIND_NODE (same late limits,
  from the routing core's RTT estimate: no lookup waits on a dead peer once others answered) that stops
  at the first valid record for the key.
* ``put`` / ``provide``: a lookup of the key, then STORE (``dht.store`` / ``dht.add_provider``) to the
  ``replicas`` closest nodes found (this node included if it is one of them). It finishes when every
  store is answered, or when at least one was accepted and the others have gone silent past the late
  limit.
* ``find_providers``: a lookup that merges the entries of every answer (``dht.find_providers``); it
  stops early once ``replicas`` answers had entries or the per-key bound is reached.
* **Republish**: the publisher re-stores its live records and provider entries every
  ``republish_interval`` (provider entries are re-signed with a fresh expiry: that is their refresh).
* **Re-replication**: every ``replicate_check`` seconds, if the routing table changed (a closer node
  appeared, a holder was declared dead and forgotten) -- and anyway every ``replicate_interval`` -- a
  holder pushes each record it holds to those of the key's ``replicas`` closest nodes (by its own
  table, which knows its neighbourhood best) it has not pushed it to yet. No lookups are needed.
* **Bounds**: record and provider-entry sizes, the store (items and bytes; when full, the item whose key
  is farthest from our id goes first, and an incoming item farther than everything held is refused),
  STOREs per peer (token bucket), operations running and queued, records this node publishes. Every
  refusal and eviction is counted in ``stats``.

Driving it (the same shape as every core; ``now`` is Unix time in seconds -- record expiries are Unix
seconds -- or any epoch every node of a simulation shares)::

    routing = RoutingCore(identity.contact(endpoint), rng)
    dht = DhtCore(routing, identity, rng)        # identity: .public_key (32 bytes) and .sign(bytes) -> 64 bytes
    dht.receive(env, now)       # every envelope whose type starts with "dht." (src authenticated)
    dht.tick(now)               # whenever now >= dht.next_timer()
    dht.take_outgoing()         # envelopes to send; dht.contact_for(env.dst) (else routing's) says where
    dht.take_events()           # DhtDone

Public API (stable)::

    DhtCore(routing, signer, rng, config=None)
        .put(key, value, now, *, ttl=None, seq=None) -> op id       # DhtDone(kind="put", stored=n)
        .get(key, now) -> op id                                      # DhtDone(kind="get", record=Record|None)
        .provide(key, now, *, meta=None) -> op id                    # DhtDone(kind="provide"); refreshed until
        .unprovide(key) -> bool                                      #   unprovide(): entries then expire
        .forget(node_id) -> int     # liveness layer: that node is dead or left; drop its provider entries
        .find_providers(key, now) -> op id                           # DhtDone(kind="providers", providers=[...])
        .held(key) -> Record | None, .held_providers(key) -> list[ProviderRecord]
        .records -> int (records held), .provider_entries -> int, .store_bytes -> int
        .stats (dict of counters), .config (DhtConfig), .node_id
        .receive(env, now), .tick(now), .next_timer(), .take_outgoing(), .take_events(), .contact_for(node_id)
    DhtDone(op_id, kind, key, ok, record, providers, stored, rounds, queries, duration, reason)
        ok and record None for a get: not found (the lookup converged); ok False: failed ("failed",
        "no_contacts", "busy"; for put/provide the refusal the holders gave, e.g. "owner", "conflict").
    Record, ProviderRecord, make_record(signer, key, value, seq, expires), make_provider(signer, key,
        endpoint, expires, meta=None), parse_record(obj), parse_provider(obj) -> raise RecordError(reason)
    key_for(name: str | bytes) -> bytes    # sha256 of the UTF-8 name; 32-byte keys pass through
    Message types: dht.find_value -> dht.value, dht.find_providers -> dht.providers,
                   dht.store / dht.add_provider -> dht.stored

Why a separate RPC table rather than RoutingCore's: RoutingCore's jobs end on a FIND_NODE answer and
merge lookups by target; a FIND_VALUE lookup must look at each answer (a valid record ends it) and puts
go on to a store phase that waits for acknowledgements. So this core keeps its own small table of
pending queries (ids, hard timeouts, late deadlines), and feeds what it learns back into the routing
core: answers add their sender to the table with its RTT, hard timeouts mark it failed, and every RTT
goes into the one estimate (``routing.sample_rtt``) that sets late limits. There is one routing table
and one RTT estimate per node.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field, fields
from typing import Any

import nacl.exceptions
import nacl.signing

from ..envelope import Envelope, canonical_packb
from ..identity import Contact
from .lookup import LOOKUP_STAT_KEYS, Lookup, contact_fields, node_id_for
from .outputs import CoreOutputs
from .routing import QueryDestinations, RoutingCore, addressed_here

__all__ = [
    "PREFIX", "FIND_VALUE", "VALUE", "FIND_PROVIDERS", "PROVIDERS", "STORE", "ADD_PROVIDER", "STORED",
    "RECORD_DOMAIN", "PROVIDER_DOMAIN", "DhtConfig", "DhtCore", "DhtDone", "Record", "ProviderRecord",
    "RecordError", "make_record", "make_provider", "parse_record", "parse_provider", "key_for",
    "record_signing_bytes", "provider_signing_bytes",
]

PREFIX = "dht."
FIND_VALUE = "dht.find_value"
VALUE = "dht.value"
FIND_PROVIDERS = "dht.find_providers"
PROVIDERS = "dht.providers"
STORE = "dht.store"
ADD_PROVIDER = "dht.add_provider"
STORED = "dht.stored"

RECORD_DOMAIN = b"zmqagents/dht-record/v1\x00"
PROVIDER_DOMAIN = b"zmqagents/dht-provider/v1\x00"
SIGNATURE_LEN = 64
KEY_LEN = 32
MAX_UINT64 = (1 << 64) - 1

STAT_KEYS = LOOKUP_STAT_KEYS + (
    # traffic
    "received", "sent", "malformed", "misdirected", "from_self", "from_mismatch", "other_types", "unmatched",
    "late_responses", "rpc_timeouts",
    "find_value_received", "find_providers_received", "store_received", "add_provider_received",
    "values_answered", "providers_answered",
    # records and provider entries offered to the store (STORE, our own puts, re-replication)
    "stored", "updated", "duplicates",
    "refused_malformed", "refused_oversize", "refused_expired", "refused_future", "refused_bad_signature",
    "refused_owner", "refused_conflict", "refused_stale", "refused_full", "refused_rate", "refused_key",
    "evicted", "expired", "providers_stored", "providers_updated", "providers_full", "providers_forgotten",
    # records in answers to our lookups that were not usable
    "answers_bad_record", "answers_bad_provider",
    # operations
    "ops_started", "ops_queued", "ops_refused", "gets_found", "gets_local", "gets_not_found", "gets_failed",
    "puts_ok", "puts_failed", "provides_ok", "provides_failed", "finds_ok", "finds_failed",
    "stores_sent", "stores_acked", "stores_refused", "republished", "reprovided",
    "replicate_passes", "replicated",
)


class RecordError(ValueError):
    """A record or provider entry that must be refused. ``reason`` names the counter (e.g. "bad_signature")."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def key_for(name: str | bytes) -> bytes:
    """The 32-byte DHT key of ``name``: ``sha256(name.encode("utf-8"))`` for a str (and for bytes that are
    not 32 long); a 32-byte bytes value is taken as the key itself."""
    if isinstance(name, str):
        return hashlib.sha256(name.encode("utf-8")).digest()
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name)
        return name if len(name) == KEY_LEN else hashlib.sha256(name).digest()
    raise TypeError(f"a DHT key is a str or bytes, not {type(name).__name__}")


# -- records ------------------------------------------------------------------------------------------

def record_signing_bytes(key: bytes, value: Any, public_key: bytes, seq: int, expires: int) -> bytes:
    """What a value record's signature covers: the domain, then the canonical msgpack of
    ``{"exp", "k", "pk", "seq", "v"}`` (keys sorted by their encoding, recursively)."""
    return RECORD_DOMAIN + canonical_packb({"k": key, "v": value, "pk": public_key, "seq": seq, "exp": expires})


def provider_signing_bytes(key: bytes, contact: list, expires: int, meta: Any = None) -> bytes:
    """What a provider entry's signature covers: the domain, then the canonical msgpack of
    ``{"c": [key, endpoint], "exp", "k"}`` plus ``"m"`` when there is metadata."""
    m = {"k": key, "c": contact, "exp": expires}
    if meta is not None:
        m["m"] = meta
    return PROVIDER_DOMAIN + canonical_packb(m)


@dataclass(slots=True, frozen=True, eq=False)
class Record:
    """A signed value record (validated). ``size``: bytes of its signed encoding plus the signature."""

    key: bytes
    value: Any
    public_key: bytes
    seq: int
    expires: int
    signature: bytes
    size: int
    value_bytes: bytes  # canonical msgpack of the value: equal-seq conflicts compare these

    @property
    def publisher(self) -> bytes:
        """The publisher's node id, ``sha256(public_key)``."""
        return node_id_for(self.public_key)

    def to_wire(self) -> dict:
        return {"k": self.key, "v": self.value, "pk": self.public_key, "seq": self.seq, "exp": self.expires,
                "sig": self.signature}


@dataclass(slots=True, frozen=True, eq=False)
class ProviderRecord:
    """A signed provider entry (validated): ``contact`` offers ``key`` until ``expires``."""

    key: bytes
    contact: Contact
    expires: int
    meta: Any
    signature: bytes
    size: int

    @property
    def node_id(self) -> bytes:
        return node_id_for(self.contact.public_key)

    def to_wire(self) -> dict:
        m = {"k": self.key, "c": [self.contact.public_key, self.contact.endpoint], "exp": self.expires,
             "sig": self.signature}
        if self.meta is not None:
            m["m"] = self.meta
        return m


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_UINT64


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError,
            nacl.exceptions.CryptoError):
        return False


def make_record(signer: Any, key: bytes, value: Any, seq: int, expires: int) -> Record:
    """Sign a value record with ``signer`` (``.public_key``, ``.sign(bytes) -> signature``)."""
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise ValueError(f"a record key is {KEY_LEN} bytes")
    if not _uint(seq) or not _uint(expires):
        raise ValueError("seq and expires are unsigned 64-bit integers")
    try:
        body = record_signing_bytes(key, value, signer.public_key, seq, expires)
        value_bytes = canonical_packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"the value cannot be encoded as msgpack: {exc}") from None
    sig = signer.sign(body)
    return Record(key, value, signer.public_key, seq, expires, sig, len(body) - len(RECORD_DOMAIN) + len(sig),
                  value_bytes)


def make_provider(signer: Any, key: bytes, endpoint: str, expires: int, meta: Any = None) -> ProviderRecord:
    """Sign a provider entry for ``signer``'s own contact (``signer.public_key`` at ``endpoint``)."""
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise ValueError(f"a provider key is {KEY_LEN} bytes")
    if contact_fields([signer.public_key, endpoint]) is None:
        raise ValueError(f"malformed endpoint {endpoint!r:.80}")
    if not _uint(expires):
        raise ValueError("expires is an unsigned 64-bit integer")
    c = [signer.public_key, endpoint]
    try:
        body = provider_signing_bytes(key, c, expires, meta)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"the metadata cannot be encoded as msgpack: {exc}") from None
    sig = signer.sign(body)
    return ProviderRecord(key, Contact(signer.public_key, endpoint), expires, meta, sig,
                          len(body) - len(PROVIDER_DOMAIN) + len(sig))


def parse_record(obj: Any, *, max_bytes: int = 1 << 20, verify: bool = True) -> Record:
    """A value record from its wire map, or RecordError("malformed" | "oversize" | "bad_signature").
    Unknown map keys are ignored (and not signed). Expiry is the caller's check (it needs the time)."""
    if type(obj) is not dict:
        raise RecordError("malformed", "a record is a map")
    key = obj.get("k")
    pk = obj.get("pk")
    seq = obj.get("seq")
    exp = obj.get("exp")
    sig = obj.get("sig")
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise RecordError("malformed", "k must be 32 bytes")
    if type(pk) is not bytes or len(pk) != 32:
        raise RecordError("malformed", "pk must be 32 bytes")
    if not _uint(seq) or not _uint(exp):
        raise RecordError("malformed", "seq and exp must be unsigned 64-bit integers")
    if type(sig) is not bytes or len(sig) != SIGNATURE_LEN:
        raise RecordError("malformed", "sig must be 64 bytes")
    if "v" not in obj:
        raise RecordError("malformed", "no value")
    value = obj["v"]
    try:
        body = record_signing_bytes(key, value, pk, seq, exp)
        value_bytes = canonical_packb(value)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise RecordError("malformed", "value is not msgpack") from None
    size = len(body) - len(RECORD_DOMAIN) + SIGNATURE_LEN
    if size > max_bytes:
        raise RecordError("oversize", f"{size} bytes, limit {max_bytes}")
    if verify and not _verify(pk, body, sig):
        raise RecordError("bad_signature", "the signature does not verify with the record's key")
    return Record(key, value, pk, seq, exp, sig, size, value_bytes)


def parse_provider(obj: Any, *, max_bytes: int = 1 << 20, verify: bool = True) -> ProviderRecord:
    """A provider entry from its wire map, or RecordError("malformed" | "oversize" | "bad_signature")."""
    if type(obj) is not dict:
        raise RecordError("malformed", "a provider entry is a map")
    key = obj.get("k")
    c = obj.get("c")
    exp = obj.get("exp")
    sig = obj.get("sig")
    meta = obj.get("m")
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise RecordError("malformed", "k must be 32 bytes")
    f = contact_fields(c) if type(c) is list else None
    if f is None:
        raise RecordError("malformed", "c must be [32-byte key, endpoint]")
    if not _uint(exp):
        raise RecordError("malformed", "exp must be an unsigned 64-bit integer")
    if type(sig) is not bytes or len(sig) != SIGNATURE_LEN:
        raise RecordError("malformed", "sig must be 64 bytes")
    try:
        body = provider_signing_bytes(key, [f[0], f[1]], exp, meta)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise RecordError("malformed", "metadata is not msgpack") from None
    size = len(body) - len(PROVIDER_DOMAIN) + SIGNATURE_LEN
    if size > max_bytes:
        raise RecordError("oversize", f"{size} bytes, limit {max_bytes}")
    if verify and not _verify(f[0], body, sig):
        raise RecordError("bad_signature", "the signature does not verify with the provider's key")
    return ProviderRecord(key, Contact(f[0], f[1]), exp, meta, sig, size)


# -- configuration and events ------------------------------------------------------------------------

@dataclass
class DhtConfig:
    """Tuning of the DHT core. The reasons for each default are in protocols/routing.md, section 10 (10.6, 10.7)."""

    replicas: int = 3  # nodes that hold each record: the closest to its key
    query_timeout: float = 2.0  # hard timeout of one FIND_VALUE/STORE (s): after it the peer counts as failed
    max_record_bytes: int = 8192  # a value record's signed encoding plus signature
    max_provider_bytes: int = 1024  # a provider entry's (metadata included)
    max_providers_per_key: int = 20  # entries held (and answered) per key
    max_gone_providers: int = 1024  # providers forgotten here whose old entries are refused (LRU, ~60 KB)
    max_store_bytes: int = 4 << 20  # records and provider entries held for others, in bytes
    max_items: int = 16384  # ... and in number
    max_own: int = 1024  # records and provided keys this node publishes itself
    default_ttl: float = 3600.0  # lifetime of a put without ttl (s)
    provider_ttl: float = 900.0  # lifetime of a provider entry; it is re-signed at every republish
    max_ttl: float = 86400.0  # a record may not expire later than this from now ...
    max_clock_skew: float = 60.0  # ... plus this much
    republish_interval: float = 300.0  # the publisher re-stores its records and provider entries (jittered +-10%)
    replicate_check: float = 10.0  # holders look whether the table changed and re-replicate (jittered +-10%)
    replicate_interval: float = 600.0  # ... and push everything to the current replica set anyway
    store_rate: float = 100.0  # STOREs accepted per peer per second (token bucket) ...
    store_burst: float = 500.0  # ... with this burst
    rate_peers: int = 4096  # peers whose token buckets are remembered (least recently used forgotten)
    max_ops: int = 16  # operations (get, put, provide, find) running at once; more are queued
    max_queued_ops: int = 1024  # beyond this an operation fails at once ("busy")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"DhtConfig.{f.name} must be a positive number, got {value!r}")
        if self.provider_ttl > self.max_ttl or self.default_ttl > self.max_ttl:
            raise ValueError("DhtConfig.default_ttl and provider_ttl must not exceed max_ttl")
        if self.republish_interval >= self.provider_ttl:
            raise ValueError("DhtConfig.republish_interval must be shorter than provider_ttl, or entries lapse")


@dataclass(slots=True)
class DhtDone:
    """An operation finished.

    ``kind``: "get", "put", "provide" or "providers". ``ok``: the operation did what it was asked (a get
    that converged without finding anything is ok with ``record`` None: not found). ``record``: for a get
    the record found, for a put the signed record it stored (its ``seq`` and ``expires``). ``stored``: replicas
    that accepted a put/provide (ours included). ``rounds``: the deepest lookup hop that answered.
    ``reason``: "" when ok (a get that found nothing: "not_found"); else "failed" (nobody answered),
    "no_contacts", "busy", or for put/provide the refusal the holders gave ("owner", "conflict", ...).
    """

    op_id: int
    kind: str
    key: bytes
    ok: bool
    record: Record | None = None
    providers: list = field(default_factory=list)
    stored: int = 0
    rounds: int = 0
    queries: int = 0
    duration: float = 0.0
    reason: str = ""


# -- internals ------------------------------------------------------------------------------------------

_GET, _PUT, _PROVIDE, _FIND, _REPUBLISH, _REPROVIDE = "get", "put", "provide", "providers", "republish", "reprovide"
_QUERY_TYPE = {_GET: FIND_VALUE, _PUT: FIND_VALUE, _REPUBLISH: FIND_VALUE,
               _PROVIDE: FIND_PROVIDERS, _FIND: FIND_PROVIDERS, _REPROVIDE: FIND_PROVIDERS}
_PUBLIC_KIND = {_REPUBLISH: None, _REPROVIDE: None}


class _Op:
    __slots__ = ("id", "kind", "key", "item", "lookup", "phase", "found", "provs", "with_provs", "pending",
                 "stored", "refusals", "max_ack", "armed", "started")

    def __init__(self, oid: int, kind: str, key: bytes, item: Any):
        self.id = oid
        self.kind = kind
        self.key = key
        self.item = item  # the Record / ProviderRecord to store
        self.lookup: Lookup | None = None
        self.phase = 0  # 0 queued, 1 lookup, 2 store, 3 done
        self.found: Record | None = None
        self.provs: dict[bytes, ProviderRecord] = {}
        self.with_provs = 0  # answers that held provider entries
        self.pending: dict[bytes, float] = {}  # rpc id -> sent, stores not yet answered
        self.stored = 0
        self.refusals: list[str] = []
        self.max_ack: float | None = None  # slowest store acknowledgement (s)
        self.armed: float | None = None
        self.started = 0.0


class _Rpc:
    __slots__ = ("op", "nid", "pk", "ep", "sent", "store")

    def __init__(self, op: _Op | None, nid: bytes, pk: bytes, ep: str, sent: float, store: bool):
        self.op = op
        self.nid = nid
        self.pk = pk
        self.ep = ep
        self.sent = sent
        self.store = store


class _Held:
    """A record held for others, and the replica set it was last pushed to."""

    __slots__ = ("record", "pushed", "serial")

    def __init__(self, record: Record, serial: int):
        self.record = record
        self.pushed: frozenset = frozenset()
        self.serial = serial


class _HeldProviders:
    __slots__ = ("entries", "pushed", "serial")

    def __init__(self, serial: int):
        self.entries: dict[bytes, ProviderRecord] = {}
        self.pushed: frozenset = frozenset()
        self.serial = serial


class DhtCore(CoreOutputs):
    """Records and providers of one node. See the module docstring; call a method, then drain
    take_outgoing() and take_events()."""

    def __init__(self, routing: RoutingCore, signer: Any, rng: random.Random, config: DhtConfig | None = None):
        pk = getattr(signer, "public_key", None)
        if type(pk) is not bytes or len(pk) != 32 or not callable(getattr(signer, "sign", None)):
            raise ValueError("signer needs .public_key (32 bytes) and .sign(bytes)")
        CoreOutputs.__init__(self)
        self.routing = routing
        self.table = routing.table
        self.signer = signer
        self.node_id = routing.node_id
        self.config = cfg = config or DhtConfig()
        self._rng = rng
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._me_int = int.from_bytes(self.node_id, "big")
        self._store: dict[bytes, _Held] = {}
        self._provs: dict[bytes, _HeldProviders] = {}
        # Providers forgotten here (dead or left): node id -> the latest expiry of the entries dropped.
        # A copy of such an entry pushed back by a holder that did not hear of the death (re-replication)
        # is refused as "stale"; only an entry the provider signed anew (a later expiry) is taken.
        self._gone: dict[bytes, int] = {}
        self._items = 0
        self._bytes = 0
        self._far: list = []  # heap of (-distance of key to us, serial, key): eviction order, lazily cleaned
        self._serial = 0
        self._own: dict[bytes, Record] = {}  # records this node published (republished until they expire)
        self._own_provs: dict[bytes, Any] = {}  # keys this node provides -> metadata (refreshed until unprovide)
        self._last_seq = 0
        self._rates: OrderedDict[bytes, list] = OrderedDict()  # peer -> [tokens, last refill]
        self._rpcs: dict[bytes, _Rpc] = {}
        self._fifo: deque = deque()  # (hard deadline, rpc id)
        self._late: list = []  # heap of (deadline, serial, op)
        self._dests = QueryDestinations()  # for contact_for()
        self._active: dict[int, _Op] = {}
        self._queue: deque[_Op] = deque()
        self._next_id = 1
        self._check_at: float | None = None
        self._full_at: float | None = None
        self._republish_at: float | None = None
        self._table_mark = -1
        self._max_queries = routing.config.max_queries or 10 * routing.config.k
        if cfg.replicas > routing.config.k:
            raise ValueError("DhtConfig.replicas must not exceed the routing table's k")

    # -- application side ----------------------------------------------------------------------------

    def put(self, key: bytes, value: Any, now: float, *, ttl: float | None = None, seq: int | None = None) -> int:
        """Sign and store ``value`` under ``key`` on the ``replicas`` closest nodes; republished every
        ``republish_interval`` until it expires (``ttl`` seconds from now, default ``default_ttl``).
        ``seq`` defaults to the time in milliseconds, or one more than this node's last. Raises ValueError
        for a bad key, ttl or value, or when the record is over ``max_record_bytes``."""
        cfg = self.config
        ttl = cfg.default_ttl if ttl is None else ttl
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= cfg.max_ttl:
            raise ValueError(f"ttl must be in (0, {cfg.max_ttl:g}] seconds")
        if seq is None:
            seq = max(self._last_seq + 1, int(now * 1000))
            held = self._own.get(key)
            if held is not None and held.seq >= seq:
                seq = held.seq + 1
        self._last_seq = max(self._last_seq, seq)
        rec = make_record(self.signer, key, value, seq, int(now + ttl))
        if rec.size > cfg.max_record_bytes:
            raise ValueError(f"record of {rec.size} bytes exceeds the limit of {cfg.max_record_bytes} bytes")
        if key not in self._own and len(self._own) + len(self._own_provs) >= cfg.max_own:
            raise ValueError(f"this node already publishes {cfg.max_own} records and provided keys")
        self._own[key] = rec
        self._arm_republish(now)
        return self._submit(_PUT, key, rec, now)

    def get(self, key: bytes, now: float) -> int:
        """Look ``key`` up; DhtDone(kind="get") carries the first valid record found (None: not found)."""
        _check_key(key)
        rec = self._own.get(key)
        if rec is None or rec.expires <= now:
            h = self._store.get(key)
            rec = h.record if h is not None and h.record.expires > now else None
        if rec is not None:
            oid = self._next_id
            self._next_id += 1
            self.stats["gets_local"] += 1
            self._events.append(DhtDone(oid, _GET, key, True, rec))
            return oid
        return self._submit(_GET, key, None, now)

    def provide(self, key: bytes, now: float, *, meta: Any = None) -> int:
        """Announce this node as a provider of ``key`` (with optional small ``meta``); the entry is re-signed
        and re-stored every ``republish_interval`` until :meth:`unprovide`."""
        _check_key(key)
        me = self.routing.advertised
        if me is None or me[0] != self.signer.public_key:
            raise ValueError("only a node that advertises its own contact, signed by its own key, can provide")
        if key not in self._own_provs and len(self._own) + len(self._own_provs) >= self.config.max_own:
            raise ValueError(f"this node already publishes {self.config.max_own} records and provided keys")
        entry = self._provider_entry(key, meta, now)  # raises ValueError if the metadata is too big
        self._own_provs[key] = meta
        self._arm_republish(now)
        return self._submit(_PROVIDE, key, entry, now)

    def unprovide(self, key: bytes) -> bool:
        """Stop refreshing our provider entry for ``key`` (held copies expire within ``provider_ttl``)."""
        return self._own_provs.pop(key, _MISSING) is not _MISSING

    def find_providers(self, key: bytes, now: float) -> int:
        """Look up the providers of ``key``; DhtDone(kind="providers").providers lists them."""
        _check_key(key)
        return self._submit(_FIND, key, None, now)

    def forget(self, node_id: bytes) -> int:
        """The liveness layer declared ``node_id`` dead (or it left): drop the provider entries it has here,
        so finds stop listing it before the entries expire. Safe on a false positive: a live provider
        re-stores its entry at its next refresh. Returns the entries dropped (also counted)."""
        n = 0
        latest = None
        for key in [k for k, h in self._provs.items() if node_id in h.entries]:
            h = self._provs[key]
            p = h.entries.pop(node_id)
            self._items -= 1
            self._bytes -= p.size
            n += 1
            latest = p.expires if latest is None else max(latest, p.expires)
            if not h.entries:
                del self._provs[key]
        if latest is not None:
            gone = self._gone
            gone.pop(node_id, None)
            gone[node_id] = max(latest, gone.get(node_id, latest))
            if len(gone) > self.config.max_gone_providers:
                del gone[next(iter(gone))]  # the one forgotten longest ago
        self.stats["providers_forgotten"] += n
        return n

    def held(self, key: bytes) -> Record | None:
        """The record this node holds for ``key`` for others (expired ones may linger until the next check)."""
        h = self._store.get(key)
        return None if h is None else h.record

    def held_providers(self, key: bytes) -> list[ProviderRecord]:
        h = self._provs.get(key)
        return [] if h is None else list(h.entries.values())

    @property
    def records(self) -> int:
        return len(self._store)

    @property
    def provider_entries(self) -> int:
        return self._items - len(self._store)

    @property
    def store_bytes(self) -> int:
        return self._bytes

    @property
    def own_records(self) -> dict[bytes, Record]:
        """Records this node published and republishes (read-only view)."""
        return dict(self._own)

    @property
    def provided(self) -> list[bytes]:
        """Keys this node provides."""
        return list(self._own_provs)

    def contact_for(self, node_id: bytes) -> Contact | None:
        """Where to send an envelope for ``node_id`` that the table may not hold (a lookup candidate)."""
        c = self._dests.get(node_id)
        if c is not None:
            return c
        e = self.table.find(node_id)
        return None if e is None else e.contact

    # -- network side --------------------------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """Process one envelope whose ``src`` the transport authenticated. Bad input is counted, never raised."""
        stats = self.stats
        if not addressed_here(env, self.node_id, stats):
            return
        typ = env.type
        if typ == VALUE or typ == PROVIDERS:
            self._on_answer(env, now)
        elif typ == STORED:
            self._on_stored(env, now)
        elif typ == FIND_VALUE or typ == FIND_PROVIDERS:
            self._on_find(env, now)
        elif typ == STORE or typ == ADD_PROVIDER:
            self._on_store(env, now)
        else:
            stats["other_types"] += 1
            self.table.touch(env.src, now)

    def tick(self, now: float) -> None:
        """Fire what is due: hard timeouts, late deadlines, re-replication, expiry, republishing."""
        fifo = self._fifo
        rpcs = self._rpcs
        while fifo and fifo[0][0] <= now:
            rid = fifo.popleft()[1]
            rpc = rpcs.pop(rid, None)
            if rpc is None:
                continue
            self._dests.release(rpc.nid)
            self.stats["rpc_timeouts"] += 1
            self.table.mark_failed(rpc.nid)
            op = rpc.op
            if op is None or op.phase == 3:
                continue
            if rpc.store:
                if op.pending.pop(rid, None) is not None:
                    self._pump(op, now)
            elif op.phase == 1 and not op.lookup.done:
                op.lookup.on_timeout(rpc.nid, now)
                self._pump(op, now)
        late = self._late
        while late and late[0][0] <= now:
            t, _, op = heapq.heappop(late)
            if op.armed == t:
                op.armed = None
            if op.phase in (1, 2):
                self._pump(op, now)
        if self._check_at is not None and self._check_at <= now:
            self._check(now)
        if self._republish_at is not None and self._republish_at <= now:
            self._republish(now)

    def next_timer(self) -> float | None:
        t = self._check_at
        for d in (self._republish_at, self._fifo[0][0] if self._fifo else None, self._late[0][0] if self._late else None):
            if d is not None and (t is None or d < t):
                t = d
        return t

    # -- requests from peers --------------------------------------------------------------------------

    def _observe_asker(self, env: Envelope, body: dict, now: float) -> None:
        frm = body.get("from")
        f = None if frm is None else contact_fields(frm)
        src = env.src
        if f is None:
            if frm is not None:
                self.stats["contacts_bad"] += 1
            self.table.touch(src, now)
        elif node_id_for(f[0]) != src:
            self.stats["from_mismatch"] += 1
            self.table.touch(src, now)
        else:
            self.table.add(src, f[0], f[1], now)

    def _on_find(self, env: Envelope, now: float) -> None:
        stats = self.stats
        providers = env.type == FIND_PROVIDERS
        stats["find_providers_received" if providers else "find_value_received"] += 1
        body = env.body
        key = body.get("key") if type(body) is dict else None
        if type(key) is not bytes or len(key) != KEY_LEN:
            stats["malformed"] += 1
            return
        self._observe_asker(env, body, now)
        src = env.src
        nodes = [[e.public_key, e.endpoint] for e in self.table.closest(key, self.routing.config.k, exclude=src,
                                                                        skip_failed=True)]
        out: dict[str, Any] = {"nodes": nodes}
        if providers:
            h = self._provs.get(key)
            if h is not None:
                live = [p.to_wire() for p in h.entries.values() if p.expires > now]
                if live:
                    out["provs"] = live
                    stats["providers_answered"] += 1
            typ = PROVIDERS
        else:
            h = self._store.get(key)
            if h is not None and h.record.expires > now:
                out["rec"] = h.record.to_wire()
                stats["values_answered"] += 1
            typ = VALUE
        self._send(Envelope(self._rid(), self.node_id, typ, out, src, int(now * 1000), 0, None, None, env.id))

    def _on_store(self, env: Envelope, now: float) -> None:
        stats = self.stats
        providers = env.type == ADD_PROVIDER
        stats["add_provider_received" if providers else "store_received"] += 1
        src = env.src
        self.table.touch(src, now)
        if not self._take_token(src, now):
            stats["refused_rate"] += 1  # a flooding peer gets no answer: it would only feed the flood
            return
        body = env.body
        obj = body.get("prov" if providers else "rec") if type(body) is dict else None
        why = self._offer_provider(obj, now) if providers else self._offer_record(obj, now)
        answer = {"ok": True} if why is None else {"ok": False, "why": why}
        self._send(Envelope(self._rid(), self.node_id, STORED, answer, src, int(now * 1000), 0, None, None, env.id))

    def _take_token(self, src: bytes, now: float) -> bool:
        cfg = self.config
        rates = self._rates
        b = rates.get(src)
        if b is None:
            b = rates[src] = [cfg.store_burst, now]
            if len(rates) > cfg.rate_peers:
                rates.popitem(last=False)
        else:
            rates.move_to_end(src)
            tokens = b[0] + (now - b[1]) * cfg.store_rate
            b[0] = cfg.store_burst if tokens > cfg.store_burst else tokens
            b[1] = now
        if b[0] < 1.0:
            return False
        b[0] -= 1.0
        return True

    # -- the store -------------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> str:
        self.stats["refused_" + reason] += 1
        return reason

    def _offer_record(self, obj: Any, now: float) -> str | None:
        """Validate a record and store it. Returns None if held (new, updated or a duplicate), else the
        reason it was refused (also counted)."""
        cfg = self.config
        # A copy of what we hold, byte for byte, is a duplicate: no need to verify it again.
        if type(obj) is dict:
            k = obj.get("k")
            h = self._store.get(k) if type(k) is bytes else None
            if h is not None and obj.get("sig") == h.record.signature and obj.get("seq") == h.record.seq \
                    and obj.get("exp") == h.record.expires and obj.get("pk") == h.record.public_key:
                self.stats["duplicates"] += 1
                return None
        try:
            rec = parse_record(obj, max_bytes=cfg.max_record_bytes, verify=False)
        except RecordError as exc:
            return self._refuse(exc.reason)
        if rec.expires <= now:
            return self._refuse("expired")
        if rec.expires > now + cfg.max_ttl + cfg.max_clock_skew:
            return self._refuse("future")
        h = self._store.get(rec.key)
        if h is not None and h.record.expires <= now:
            self._drop_record(rec.key)
            h = None
        if h is not None:
            old = h.record
            if old.public_key != rec.public_key:
                return self._refuse("owner")
            if rec.seq < old.seq:
                return self._refuse("stale")
            if rec.seq == old.seq:
                if rec.value_bytes != old.value_bytes:
                    return self._refuse("conflict")
                if rec.expires <= old.expires:
                    self.stats["duplicates"] += 1
                    return None
        if not _verify(rec.public_key, record_signing_bytes(rec.key, rec.value, rec.public_key, rec.seq, rec.expires),
                       rec.signature):
            return self._refuse("bad_signature")
        if h is not None:
            self._bytes += rec.size - h.record.size
            h.record = rec
            self.stats["updated"] += 1
            self._make_room(None, 0, now)
            return None
        if not self._make_room(rec.key, rec.size, now):
            return self._refuse("full")
        self._serial += 1
        self._store[rec.key] = _Held(rec, self._serial)
        self._push_far(rec.key, self._serial)
        self._items += 1
        self._bytes += rec.size
        self.stats["stored"] += 1
        self._arm_check(now)
        return None

    def _offer_provider(self, obj: Any, now: float) -> str | None:
        cfg = self.config
        try:
            p = parse_provider(obj, max_bytes=cfg.max_provider_bytes, verify=False)
        except RecordError as exc:
            return self._refuse(exc.reason)
        if p.expires <= now:
            return self._refuse("expired")
        if p.expires > now + cfg.max_ttl + cfg.max_clock_skew:
            return self._refuse("future")
        h = self._provs.get(p.key)
        nid = p.node_id
        gone = self._gone.get(nid)
        if gone is not None and p.expires <= gone:
            return self._refuse("stale")  # an old copy of an entry we dropped when its provider went
        old = None if h is None else h.entries.get(nid)
        if old is not None:
            if p.signature == old.signature:
                self.stats["duplicates"] += 1
                return None
            if p.expires <= old.expires:
                return self._refuse("stale")
        if not _verify(p.contact.public_key, provider_signing_bytes(p.key, [p.contact.public_key, p.contact.endpoint],
                                                                    p.expires, p.meta), p.signature):
            return self._refuse("bad_signature")
        if old is not None:
            h.entries[nid] = p
            self._bytes += p.size - old.size
            self.stats["providers_updated"] += 1
            self._make_room(None, 0, now)
            return None
        if h is not None and len(h.entries) >= cfg.max_providers_per_key:
            # Full: the entry that expires first makes room, if the newcomer outlives it.
            victim = min(h.entries.values(), key=lambda e: e.expires)
            if victim.expires >= p.expires:
                self.stats["providers_full"] += 1
                return "providers_full"
            del h.entries[victim.node_id]
            self._items -= 1
            self._bytes -= victim.size
            self.stats["evicted"] += 1
        if not self._make_room(p.key, p.size, now):
            return self._refuse("full")
        h = self._provs.get(p.key)  # room making may have evicted the key
        if h is None:
            self._serial += 1
            h = self._provs[p.key] = _HeldProviders(self._serial)
            self._push_far(p.key, self._serial)
        h.entries[nid] = p
        self._items += 1
        self._bytes += p.size
        self.stats["providers_stored"] += 1
        self._arm_check(now)
        return None

    def _push_far(self, key: bytes, serial: int) -> None:
        far = self._far
        heapq.heappush(far, (-(int.from_bytes(key, "big") ^ self._me_int), serial, key))
        if len(far) > 2 * (len(self._store) + len(self._provs)) + 64:
            live = [(-(int.from_bytes(k, "big") ^ self._me_int), h.serial, k) for k, h in self._store.items()]
            live += [(-(int.from_bytes(k, "big") ^ self._me_int), h.serial, k) for k, h in self._provs.items()]
            heapq.heapify(live)
            self._far = live

    def _make_room(self, key: bytes | None, size: int, now: float) -> bool:
        """Evict until ``size`` more bytes and one more item fit (nothing more for an update, key None). The
        item whose key is farthest from our id goes first; a newcomer farther than all that is held is
        refused (False). Expired items are purged before anything live is evicted."""
        cfg = self.config
        extra = 0 if key is None else 1
        if self._items + extra <= cfg.max_items and self._bytes + size <= cfg.max_store_bytes:
            return True
        self._purge(now)
        dist = None if key is None else int.from_bytes(key, "big") ^ self._me_int
        far = self._far
        while self._items + extra > cfg.max_items or self._bytes + size > cfg.max_store_bytes:
            victim = None
            while far:
                negd, serial, k = far[0]
                h = self._store.get(k)
                if h is None or h.serial != serial:
                    h = self._provs.get(k)
                    if h is None or h.serial != serial:
                        heapq.heappop(far)  # gone since: a stale heap entry
                        continue
                victim = (-negd, k, h)
                break
            if victim is None:
                return key is None
            d, k, h = victim
            if dist is not None and d <= dist:
                return False  # the newcomer is the farthest: refuse it rather than evict a closer one
            heapq.heappop(far)
            if isinstance(h, _Held):
                self._drop_record(k)
            else:
                self._drop_providers(k)
            self.stats["evicted"] += 1
        return True

    def _drop_record(self, key: bytes) -> None:
        h = self._store.pop(key)
        self._items -= 1
        self._bytes -= h.record.size

    def _drop_providers(self, key: bytes) -> None:
        h = self._provs.pop(key)
        self._items -= len(h.entries)
        self._bytes -= sum(p.size for p in h.entries.values())

    def _purge(self, now: float) -> None:
        n = 0
        for key in [k for k, h in self._store.items() if h.record.expires <= now]:
            self._drop_record(key)
            n += 1
        for key, h in list(self._provs.items()):
            gone = [nid for nid, p in h.entries.items() if p.expires <= now]
            for nid in gone:
                p = h.entries.pop(nid)
                self._items -= 1
                self._bytes -= p.size
            n += len(gone)
            if not h.entries:
                del self._provs[key]
        self.stats["expired"] += n

    # -- re-replication and republishing ---------------------------------------------------------------

    def _arm_check(self, now: float) -> None:
        if self._check_at is None:
            cfg = self.config
            self._check_at = now + cfg.replicate_check * (0.9 + 0.2 * self._rng.random())
            if self._full_at is None:
                self._full_at = now + cfg.replicate_interval * (0.9 + 0.2 * self._rng.random())

    def _table_changes(self) -> int:
        s = self.routing.stats
        return s["table_added"] + s["table_removed"] + s["table_replaced"] + s["table_promoted"]

    def _check(self, now: float) -> None:
        """Purge expired items, and push held items to replicas that lack them when the table changed
        (or, every replicate_interval, to the whole current replica set)."""
        cfg = self.config
        self._check_at = None
        self._purge(now)
        full = self._full_at is not None and self._full_at <= now
        mark = self._table_changes()
        if full or mark != self._table_mark:
            self._table_mark = mark
            self.stats["replicate_passes"] += 1
            self._replicate(now, full)
            if full:
                self._full_at = now + cfg.replicate_interval * (0.9 + 0.2 * self._rng.random())
        if self._store or self._provs:
            self._arm_check(now)
        else:
            self._full_at = None

    def _replica_set(self, key: bytes) -> list:
        """The ``replicas`` closest live contacts to ``key`` in our table, with ``None`` standing for us
        when we are one of them."""
        r = self.config.replicas
        entries = self.table.closest(key, r, skip_failed=True)
        t = int.from_bytes(key, "big")
        mine = self._me_int ^ t
        out: list = []
        placed = False
        for e in entries:
            if not placed and mine < (int.from_bytes(e.node_id, "big") ^ t):
                out.append(None)
                placed = True
            out.append(e)
        if not placed:
            out.append(None)
        return out[:r]

    def _replicate(self, now: float, full: bool) -> None:
        """Push held items to replicas that lack them. At most half a token bucket's burst goes to one peer
        per pass, so an honest holder never trips its peers' STORE rate bound; what is left over goes at
        the next check."""
        cap = max(1, int(self.config.store_burst // 2))
        sent: dict[bytes, int] = {}
        behind = False
        for key, h in self._store.items():
            wire = None
            pushed = set()
            for e in self._replica_set(key):
                if e is None:
                    continue
                nid = e.node_id
                if full or nid not in h.pushed:
                    n = sent.get(nid, 0)
                    if n >= cap:
                        behind = True
                        continue
                    sent[nid] = n + 1
                    if wire is None:
                        wire = {"rec": h.record.to_wire()}
                    self._store_rpc(None, nid, e.public_key, e.endpoint, STORE, wire, now)
                    self.stats["replicated"] += 1
                pushed.add(nid)
            h.pushed = frozenset(pushed)
        for key, h in self._provs.items():
            pushed = set()
            live = [p for p in h.entries.values() if p.expires > now]
            for e in self._replica_set(key):
                if e is None:
                    continue
                nid = e.node_id
                if full or nid not in h.pushed:
                    n = sent.get(nid, 0)
                    if n + len(live) > cap:
                        behind = True
                        continue
                    sent[nid] = n + len(live)
                    for p in live:
                        self._store_rpc(None, nid, e.public_key, e.endpoint, ADD_PROVIDER, {"prov": p.to_wire()}, now)
                        self.stats["replicated"] += 1
                pushed.add(nid)
            h.pushed = frozenset(pushed)
        if behind:
            self._table_mark = -1  # not everything went: pass again at the next check

    def _arm_republish(self, now: float) -> None:
        if self._republish_at is None:
            self._republish_at = now + self.config.republish_interval * (0.9 + 0.2 * self._rng.random())

    def _republish(self, now: float) -> None:
        self._republish_at = None
        for key, rec in list(self._own.items()):
            if rec.expires <= now:
                del self._own[key]
                continue
            self.stats["republished"] += 1
            self._submit(_REPUBLISH, key, rec, now)
        for key, meta in list(self._own_provs.items()):
            self.stats["reprovided"] += 1
            self._submit(_REPROVIDE, key, self._provider_entry(key, meta, now), now)
        if self._own or self._own_provs:
            self._arm_republish(now)

    def _provider_entry(self, key: bytes, meta: Any, now: float) -> ProviderRecord:
        me = self.routing.advertised
        entry = make_provider(self.signer, key, me[1], int(now + self.config.provider_ttl), meta)
        if entry.size > self.config.max_provider_bytes:
            raise ValueError(f"provider entry of {entry.size} bytes exceeds the limit of "
                             f"{self.config.max_provider_bytes} bytes (make the metadata smaller)")
        return entry

    # -- operations ----------------------------------------------------------------------------------

    def _submit(self, kind: str, key: bytes, item: Any, now: float) -> int:
        cfg = self.config
        oid = self._next_id
        self._next_id += 1
        op = _Op(oid, kind, key, item)
        if len(self._active) < cfg.max_ops:
            self._start(op, now)
        elif len(self._queue) < cfg.max_queued_ops:
            self._queue.append(op)
            self.stats["ops_queued"] += 1
        else:
            self.stats["ops_refused"] += 1
            op.phase = 3
            self._report(op, False, "busy")
        return oid

    def _start(self, op: _Op, now: float) -> None:
        rcfg = self.routing.config
        self.stats["ops_started"] += 1
        seeds = self.table.closest(op.key, rcfg.k, skip_failed=True) or self.table.closest(op.key, rcfg.k)
        self._active[op.id] = op
        op.started = now
        op.phase = 1
        op.lookup = Lookup(op.key, seeds, k=rcfg.k, alpha=rcfg.alpha, self_id=self.node_id,
                           late_after=self.routing.rto, late_factor=rcfg.late_factor, late_min=rcfg.late_min,
                           max_queries=self._max_queries, stats=self.stats)
        self._pump(op, now)

    def _pump(self, op: _Op, now: float) -> None:
        """Advance an operation: send the queries its lookup wants, or go on to storing, or finish."""
        if op.phase == 1:
            lk = op.lookup
            lk.late_after = self.routing.rto
            queries = lk.next_queries(now)
            if queries:
                typ = _QUERY_TYPE[op.kind]
                me = self.routing.advertised
                body = {"key": op.key, "from": me} if me is not None else {"key": op.key}
                for c in queries:
                    self._query(op, c.public_key, c.endpoint, typ, body, now)
            if lk.done:
                self._lookup_done(op, now)
                return
            self._arm_late(op, lk.next_timer())
        elif op.phase == 2:
            if not op.pending:
                self._finish_store(op, now)
                return
            limit = self._store_late_limit(op)
            earliest = min(op.pending.values())
            if op.stored > 0 and earliest + limit <= now:
                # Every store still unanswered has been silent past the late limit, and one replica has it.
                self._finish_store(op, now)
                return
            if op.stored > 0:
                self._arm_late(op, earliest + limit)

    def _store_late_limit(self, op: _Op) -> float:
        """How long an unanswered STORE is waited for once another replica accepted: the node's RTO (RFC 6298:
        when a live peer's answer is overdue), or late_factor times this put's slowest acknowledgement if
        that is longer, never the hard timeout. A put reports the replicas that answered within it."""
        rcfg = self.routing.config
        limit = self.routing.rto
        if op.max_ack is not None and rcfg.late_factor * op.max_ack > limit:
            limit = rcfg.late_factor * op.max_ack
        return limit if limit < self.config.query_timeout else self.config.query_timeout

    def _arm_late(self, op: _Op, t: float | None) -> None:
        if t is not None and (op.armed is None or t < op.armed):
            op.armed = t
            self._serial += 1
            heapq.heappush(self._late, (t, self._serial, op))

    def _lookup_done(self, op: _Op, now: float) -> None:
        lk = op.lookup
        kind = op.kind
        if kind == _GET:
            if lk.ok:
                self._finish(op, True, "not_found", now)
            else:
                self._finish(op, False, "failed" if lk.queries else "no_contacts", now)
            return
        if kind == _FIND:
            if lk.ok or op.provs:
                self._finish(op, True, "", now)
            else:
                self._finish(op, False, "failed" if lk.queries else "no_contacts", now)
            return
        # put / provide / their republishing: store on the replicas closest among those that answered and us
        t = int.from_bytes(op.key, "big")
        mine = self._me_int ^ t
        found = lk.result()
        targets: list = []
        placed = self.routing.advertised is None  # nobody can find a node that does not advertise itself
        for c in found:
            if not placed and mine < (int.from_bytes(node_id_for(c.public_key), "big") ^ t):
                targets.append(None)
                placed = True
            targets.append(c)
        if not placed:
            targets.append(None)
        targets = targets[: self.config.replicas]
        provider = kind in (_PROVIDE, _REPROVIDE)
        wire = {"prov" if provider else "rec": op.item.to_wire()}
        op.phase = 2
        for c in targets:
            if c is None:
                why = self._offer_provider(wire["prov"], now) if provider else self._offer_record(wire["rec"], now)
                if why is None:
                    op.stored += 1
                else:
                    op.refusals.append(why)
            else:
                rid = self._store_rpc(op, node_id_for(c.public_key), c.public_key, c.endpoint,
                                      ADD_PROVIDER if provider else STORE, wire, now)
                op.pending[rid] = now
        if not found:
            # Nobody else holds it (we may, and republish it once peers appear): that is not a success.
            self._finish(op, False, "failed" if lk.queries else "no_contacts", now)
            return
        self._pump(op, now)

    def _finish_store(self, op: _Op, now: float) -> None:
        if op.stored > 0:
            self._finish(op, True, "", now)
        else:
            reason = max(set(op.refusals), key=op.refusals.count) if op.refusals else "failed"
            self._finish(op, False, reason, now)

    def _finish(self, op: _Op, ok: bool, reason: str, now: float) -> None:
        op.phase = 3
        self._active.pop(op.id, None)
        stats = self.stats
        kind = op.kind
        if kind == _GET:
            stats["gets_found" if op.found is not None else "gets_not_found" if ok else "gets_failed"] += 1
        elif kind == _PUT:
            stats["puts_ok" if ok else "puts_failed"] += 1
        elif kind == _PROVIDE:
            stats["provides_ok" if ok else "provides_failed"] += 1
        elif kind == _FIND:
            stats["finds_ok" if ok else "finds_failed"] += 1
        self._report(op, ok, reason, now)
        while self._queue and len(self._active) < self.config.max_ops:
            self._start(self._queue.popleft(), now)

    def _report(self, op: _Op, ok: bool, reason: str, now: float | None = None) -> None:
        if op.kind in _PUBLIC_KIND:
            return
        lk = op.lookup
        provs = sorted(op.provs.values(), key=lambda p: int.from_bytes(p.node_id, "big") ^ int.from_bytes(op.key, "big"))
        record = op.found if op.kind == _GET else op.item if isinstance(op.item, Record) else None
        self._events.append(DhtDone(op.id, op.kind, op.key, ok, record, provs, op.stored,
                                    lk.rounds if lk else 0, lk.queries if lk else 0,
                                    (now - op.started) if (lk is not None and now is not None) else 0.0, reason))

    # -- RPCs --------------------------------------------------------------------------------------

    def _rid(self) -> bytes:
        return self._rng.getrandbits(128).to_bytes(16, "big")

    def _send(self, env: Envelope) -> None:
        self._out.append(env)
        self.stats["sent"] += 1

    def _query(self, op: _Op, pk: bytes, ep: str, typ: str, body: dict, now: float) -> bytes:
        return self._rpc(op, node_id_for(pk), pk, ep, typ, body, now, False)

    def _store_rpc(self, op: _Op | None, nid: bytes, pk: bytes, ep: str, typ: str, body: dict, now: float) -> bytes:
        self.stats["stores_sent"] += 1
        return self._rpc(op, nid, pk, ep, typ, body, now, True)

    def _rpc(self, op, nid, pk, ep, typ, body, now, store) -> bytes:
        rid = self._rid()
        self._rpcs[rid] = _Rpc(op, nid, pk, ep, now, store)
        self._fifo.append((now + self.config.query_timeout, rid))
        self._dests.add(nid, pk, ep)
        self._send(Envelope(rid, self.node_id, typ, body, nid, int(now * 1000)))
        return rid

    def _match(self, env: Envelope, store: bool) -> _Rpc | None:
        re = env.re
        rpc = self._rpcs.get(re) if type(re) is bytes else None
        if rpc is None or rpc.nid != env.src or rpc.store != store:
            self.stats["unmatched"] += 1
            return None
        del self._rpcs[re]
        self._dests.release(rpc.nid)
        return rpc

    def _on_answer(self, env: Envelope, now: float) -> None:
        rpc = self._match(env, False)
        if rpc is None:
            self.table.touch(env.src, now)
            return
        op = rpc.op
        body = env.body
        nodes = body.get("nodes") if type(body) is dict else None
        lk = op.lookup
        if type(nodes) is not list:
            self.stats["malformed"] += 1  # alive but useless: failed in the lookup, not refreshed
            if op.phase == 1 and not lk.done:
                lk.on_failure(rpc.nid, now)
                self._pump(op, now)
            return
        rtt = now - rpc.sent
        self.routing.sample_rtt(rtt)
        self.table.add(rpc.nid, rpc.pk, rpc.ep, now, rtt)
        if op.phase != 1 or lk.done:
            self.stats["late_responses"] += 1
            return
        if op.kind == _GET and "rec" in body:
            rec = self._answer_record(body["rec"], op.key, now)
            if rec is not None:
                lk.on_response(rpc.nid, nodes, now)
                op.found = rec
                self._finish(op, True, "", now)
                return
        elif op.kind == _FIND and "provs" in body:
            if self._merge_providers(op, body["provs"], now):
                op.with_provs += 1
        lk.on_response(rpc.nid, nodes, now)
        if op.kind == _FIND and (op.with_provs >= self.config.replicas
                                 or len(op.provs) >= self.config.max_providers_per_key):
            self._finish(op, True, "", now)
            return
        self._pump(op, now)

    def _answer_record(self, obj: Any, key: bytes, now: float) -> Record | None:
        cfg = self.config
        try:
            rec = parse_record(obj, max_bytes=cfg.max_record_bytes)
        except RecordError:
            self.stats["answers_bad_record"] += 1
            return None
        if rec.key != key or rec.expires <= now or rec.expires > now + cfg.max_ttl + cfg.max_clock_skew:
            self.stats["answers_bad_record"] += 1
            return None
        return rec

    def _merge_providers(self, op: _Op, provs: Any, now: float) -> bool:
        cfg = self.config
        if type(provs) is not list:
            self.stats["answers_bad_provider"] += 1
            return False
        got = False
        for obj in provs[: cfg.max_providers_per_key]:
            if type(obj) is dict:
                c = obj.get("c")
                pk = c[0] if type(c) is list and c and type(c[0]) is bytes and len(c[0]) == 32 else None
                old = None if pk is None else op.provs.get(node_id_for(pk))
                if old is not None and obj.get("sig") == old.signature:
                    got = True  # the same entry from another replica: already verified
                    continue
            try:
                p = parse_provider(obj, max_bytes=cfg.max_provider_bytes)
            except RecordError:
                self.stats["answers_bad_provider"] += 1
                continue
            if p.key != op.key or p.expires <= now or p.expires > now + cfg.max_ttl + cfg.max_clock_skew:
                self.stats["answers_bad_provider"] += 1
                continue
            got = True
            old = op.provs.get(p.node_id)
            if old is None or p.expires > old.expires:
                if old is None and len(op.provs) >= cfg.max_providers_per_key:
                    continue
                op.provs[p.node_id] = p
        return got

    def _on_stored(self, env: Envelope, now: float) -> None:
        rpc = self._match(env, True)
        if rpc is None:
            self.table.touch(env.src, now)
            return
        rtt = now - rpc.sent
        self.routing.sample_rtt(rtt)
        self.table.add(rpc.nid, rpc.pk, rpc.ep, now, rtt)
        body = env.body
        ok = type(body) is dict and body.get("ok") is True
        if ok:
            self.stats["stores_acked"] += 1
        else:
            self.stats["stores_refused"] += 1
        op = rpc.op
        if op is None or op.phase != 2:
            return
        rid = env.re
        if op.pending.pop(rid, None) is None:
            return
        if ok:
            op.stored += 1
            if op.max_ack is None or rtt > op.max_ack:
                op.max_ack = rtt
        else:
            why = body.get("why") if type(body) is dict else None
            op.refusals.append(why if type(why) is str and len(why) <= 32 else "refused")
        self._pump(op, now)


_MISSING = object()


def _check_key(key: Any) -> None:
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise ValueError(f"a DHT key is {KEY_LEN} bytes (use key_for(name) for a name)")
