"""DHT records and providers on top of the Kademlia routing core (sans-IO).

The wire rules are in ``protocols/routing.md`` (section "Records and providers"); the lookup state machine
is :class:`~zmqagents.core.lookup.Lookup`, the routing table and RTT estimate belong to the
:class:`~zmqagents.core.routing.RoutingCore` this core is given. Nothing here does IO, reads a clock or
uses global randomness; signing and verifying (Ed25519, PyNaCl) is computation.

Three modules: :mod:`~zmqagents.core.dht_records` (a record's wire form, what its signature covers, making
and checking one), :mod:`~zmqagents.core.dht_store` (what this node holds for others, within its bounds;
:class:`DhtConfig`) and this one (the operations and their RPCs, answering peers, re-replication and
republishing). Every public name is importable from here.

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
        .stats (dict of counters), .config (DhtConfig), .node_id, .store (the RecordStore)
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

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from ..envelope import Envelope
from ..identity import Contact, node_id_of
from .dht_records import (
    KEY_LEN,
    PROVIDER_DOMAIN,
    RECORD_DOMAIN,
    ProviderRecord,
    Record,
    RecordError,
    check_key,
    key_for,
    lifetime_fault,
    make_provider,
    make_record,
    parse_provider,
    parse_record,
    provider_signing_bytes,
    record_signing_bytes,
)
from .dht_store import DhtConfig, RecordStore
from .lookup import LOOKUP_STAT_KEYS, Lookup, contact_fields
from .outputs import CoreOutputs
from .routing import QueryDestinations, RoutingCore, addressed_here
from ..errors import InvalidArgument

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
    "refused_vouched", "vouched_over",
    "evicted", "expired", "providers_stored", "providers_updated", "providers_full", "providers_forgotten",
    # records in answers to our lookups that were not usable
    "answers_bad_record", "answers_bad_provider",
    # operations
    "ops_started", "ops_queued", "ops_refused", "gets_found", "gets_local", "gets_not_found", "gets_failed",
    "puts_ok", "puts_failed", "provides_ok", "provides_failed", "finds_ok", "finds_failed",
    "stores_sent", "stores_acked", "stores_refused", "republished", "reprovided",
    "replicate_passes", "replicated",
)


# -- events ------------------------------------------------------------------------------------------

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
    providers: list[Any] = field(default_factory=list)
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


class DhtCore(CoreOutputs):
    """Records and providers of one node. See the module docstring; call a method, then drain
    take_outgoing() and take_events()."""

    def __init__(self, routing: RoutingCore, signer: Any, rng: random.Random, config: DhtConfig | None = None):
        pk = getattr(signer, "public_key", None)
        if type(pk) is not bytes or len(pk) != 32 or not callable(getattr(signer, "sign", None)):
            raise InvalidArgument("signer needs .public_key (32 bytes) and .sign(bytes)")
        CoreOutputs.__init__(self)
        self.routing = routing
        self.table = routing.table
        self.signer = signer
        self.node_id = routing.node_id
        self.config = cfg = config or DhtConfig()
        self._rng = rng
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._me_int = int.from_bytes(self.node_id, "big")
        self.store = RecordStore(self.node_id, cfg, self.stats)  # what this node holds for others
        self._serial = 0  # tie-break of the late heap
        self._own: dict[bytes, Record] = {}  # records this node published (republished until they expire)
        self._own_provs: dict[bytes, Any] = {}  # keys this node provides -> metadata (refreshed until unprovide)
        self._last_seq = 0
        self._rates: OrderedDict[bytes, list[Any]] = OrderedDict()  # peer -> [tokens, last refill]
        self._rpcs: dict[bytes, _Rpc] = {}
        self._fifo: deque[Any] = deque()  # (hard deadline, rpc id)
        self._late: list[Any] = []  # heap of (deadline, serial, op)
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
            raise InvalidArgument("DhtConfig.replicas must not exceed the routing table's k")

    # -- application side ----------------------------------------------------------------------------

    def put(self, key: bytes, value: Any, now: float, *, ttl: float | None = None, seq: int | None = None) -> int:
        """Sign and store ``value`` under ``key`` on the ``replicas`` closest nodes; republished every
        ``republish_interval`` until it expires (``ttl`` seconds from now, default ``default_ttl``).
        ``seq`` defaults to the time in milliseconds, or one more than this node's last. Raises ValueError
        for a bad key, ttl or value, or when the record is over ``max_record_bytes``."""
        cfg = self.config
        ttl = cfg.default_ttl if ttl is None else ttl
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= cfg.max_ttl:
            raise InvalidArgument(f"ttl must be in (0, {cfg.max_ttl:g}] seconds")
        if seq is None:
            seq = max(self._last_seq + 1, int(now * 1000))
            held = self._own.get(key)
            if held is not None and held.seq >= seq:
                seq = held.seq + 1
        self._last_seq = max(self._last_seq, seq)
        rec = make_record(self.signer, key, value, seq, int(now + ttl))
        if rec.size > cfg.max_record_bytes:
            raise InvalidArgument(f"record of {rec.size} bytes exceeds the limit of {cfg.max_record_bytes} bytes")
        if key not in self._own and len(self._own) + len(self._own_provs) >= cfg.max_own:
            raise InvalidArgument(f"this node already publishes {cfg.max_own} records and provided keys")
        self._own[key] = rec
        self._arm_republish(now)
        return self._submit(_PUT, key, rec, now)

    def get(self, key: bytes, now: float) -> int:
        """Look ``key`` up; DhtDone(kind="get") carries the first valid record found (None: not found)."""
        check_key(key)
        rec = self._own.get(key)
        if rec is None or rec.expires <= now:
            rec = self.store.live_record(key, now)
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
        check_key(key)
        me = self.routing.advertised
        if me is None or me[0] != self.signer.public_key:
            raise InvalidArgument("only a node that advertises its own contact, signed by its own key, can provide")
        if key not in self._own_provs and len(self._own) + len(self._own_provs) >= self.config.max_own:
            raise InvalidArgument(f"this node already publishes {self.config.max_own} records and provided keys")
        entry = self._provider_entry(key, meta, now)  # raises ValueError if the metadata is too big
        self._own_provs[key] = meta
        self._arm_republish(now)
        return self._submit(_PROVIDE, key, entry, now)

    def unprovide(self, key: bytes) -> bool:
        """Stop refreshing our provider entry for ``key`` (held copies expire within ``provider_ttl``)."""
        return self._own_provs.pop(key, _MISSING) is not _MISSING

    def find_providers(self, key: bytes, now: float) -> int:
        """Look up the providers of ``key``; DhtDone(kind="providers").providers lists them."""
        check_key(key)
        return self._submit(_FIND, key, None, now)

    def forget(self, node_id: bytes) -> int:
        """The liveness layer declared ``node_id`` dead (or it left): drop the provider entries it has here,
        so finds stop listing it before the entries expire. Safe on a false positive: a live provider
        re-stores its entry at its next refresh; an older copy pushed back by another holder is refused.
        Returns the entries dropped (also counted)."""
        return self.store.forget(node_id)

    def held(self, key: bytes) -> Record | None:
        """The record this node holds for ``key`` for others (expired ones may linger until the next check)."""
        return self.store.held(key)

    def held_providers(self, key: bytes) -> list[ProviderRecord]:
        return self.store.held_providers(key)

    @property
    def records(self) -> int:
        return self.store.records

    @property
    def provider_entries(self) -> int:
        return self.store.provider_entries

    @property
    def store_bytes(self) -> int:
        return self.store.bytes

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
            elif op.phase == 1 and op.lookup is not None and not op.lookup.done:  # phase 1: it has one
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

    def _observe_asker(self, env: Envelope, body: dict[Any, Any], now: float) -> None:
        frm = body.get("from")
        f = None if frm is None else contact_fields(frm)
        src = env.src
        if f is None:
            if frm is not None:
                self.stats["contacts_bad"] += 1
            self.table.touch(src, now)
        elif node_id_of(f[0]) != src:
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
            live = self.store.live_providers(key, now)
            if live:
                out["provs"] = [p.to_wire() for p in live]
                stats["providers_answered"] += 1
            typ = PROVIDERS
        else:
            rec = self.store.live_record(key, now)
            if rec is not None:
                out["rec"] = rec.to_wire()
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
        why = self._offer(providers, obj, now)
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

    def _offer(self, provider: bool, obj: Any, now: float) -> str | None:
        """Offer a record or provider entry (wire map) to the store: None if held, else why not. Whatever is
        held gets re-replicated, so the check timer is armed (it stays armed while anything is held)."""
        why = self.store.offer_provider(obj, now) if provider else self.store.offer_record(obj, now)
        if why is None:
            self._arm_check(now)
        return why

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
        self.store.purge(now)
        full = self._full_at is not None and self._full_at <= now
        mark = self._table_changes()
        if full or mark != self._table_mark:
            self._table_mark = mark
            self.stats["replicate_passes"] += 1
            self._replicate(now, full)
            if full:
                self._full_at = now + cfg.replicate_interval * (0.9 + 0.2 * self._rng.random())
        if self.store:
            self._arm_check(now)
        else:
            self._full_at = None

    def _replica_set(self, key: bytes) -> list[Any]:
        """The ``replicas`` closest live contacts to ``key`` in our table, with ``None`` standing for us
        when we are one of them."""
        r = self.config.replicas
        entries = self.table.closest(key, r, skip_failed=True)
        t = int.from_bytes(key, "big")
        mine = self._me_int ^ t
        out: list[Any] = []
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
        for key, h in self.store.held_records():
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
        for key, hp in self.store.held_provider_sets():
            pushed = set()
            live = [p for p in hp.entries.values() if p.expires > now]
            for e in self._replica_set(key):
                if e is None:
                    continue
                nid = e.node_id
                if full or nid not in hp.pushed:
                    n = sent.get(nid, 0)
                    if n + len(live) > cap:
                        behind = True
                        continue
                    sent[nid] = n + len(live)
                    for p in live:
                        self._store_rpc(None, nid, e.public_key, e.endpoint, ADD_PROVIDER, {"prov": p.to_wire()}, now)
                        self.stats["replicated"] += 1
                pushed.add(nid)
            hp.pushed = frozenset(pushed)
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
        assert me is not None  # only a node that advertises itself provides (provide() checks)
        entry = make_provider(self.signer, key, me[1], int(now + self.config.provider_ttl), meta)
        if entry.size > self.config.max_provider_bytes:
            raise InvalidArgument(f"provider entry of {entry.size} bytes exceeds the limit of "
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
            assert lk is not None  # phase 1 is the lookup
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
        assert lk is not None
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
        targets: list[Any] = []
        placed = self.routing.advertised is None  # nobody can find a node that does not advertise itself
        for c in found:
            if not placed and mine < (int.from_bytes(node_id_of(c.public_key), "big") ^ t):
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
                why = self._offer(provider, wire["prov" if provider else "rec"], now)
                if why is None:
                    op.stored += 1
                else:
                    op.refusals.append(why)
            else:
                rid = self._store_rpc(op, node_id_of(c.public_key), c.public_key, c.endpoint,
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

    def _query(self, op: _Op, pk: bytes, ep: str, typ: str, body: dict[Any, Any], now: float) -> bytes:
        return self._rpc(op, node_id_of(pk), pk, ep, typ, body, now, False)

    def _store_rpc(self, op: _Op | None, nid: bytes, pk: bytes, ep: str, typ: str, body: dict[Any, Any], now: float) -> bytes:
        self.stats["stores_sent"] += 1
        return self._rpc(op, nid, pk, ep, typ, body, now, True)

    def _rpc(self, op: _Op | None, nid: bytes, pk: bytes, ep: str, typ: str, body: dict[Any, Any], now: float,
             store: bool) -> bytes:
        rid = self._rid()
        self._rpcs[rid] = _Rpc(op, nid, pk, ep, now, store)
        self._fifo.append((now + self.config.query_timeout, rid))
        self._dests.add(nid, pk, ep)
        self._send(Envelope(rid, self.node_id, typ, body, nid, int(now * 1000)))
        return rid

    def _match(self, env: Envelope, store: bool) -> _Rpc | None:
        re = env.re
        if type(re) is not bytes:
            self.stats["unmatched"] += 1
            return None
        rpc = self._rpcs.get(re)
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
        assert op is not None  # an answer RPC (not a store) belongs to an operation, in phase 1 with a lookup
        body = env.body
        nodes = body.get("nodes") if type(body) is dict else None
        lk = op.lookup
        assert lk is not None
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
        if rec.key != key or lifetime_fault(rec.expires, now, cfg.max_ttl, cfg.max_clock_skew) is not None:
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
                old = None if pk is None else op.provs.get(node_id_of(pk))
                if old is not None and obj.get("sig") == old.signature:
                    got = True  # the same entry from another replica: already verified
                    continue
            try:
                p = parse_provider(obj, max_bytes=cfg.max_provider_bytes)
            except RecordError:
                self.stats["answers_bad_provider"] += 1
                continue
            if p.key != op.key or lifetime_fault(p.expires, now, cfg.max_ttl, cfg.max_clock_skew) is not None:
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
        if rid is None or op.pending.pop(rid, None) is None:  # (matched above, so it is set)
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
