"""DHT records and providers on top of the Kademlia routing core (sans-IO).

The wire rules are in ``protocols/routing.md`` (section "Records and providers"); the lookup state machine
is :class:`~zmqagents.core.lookup.Lookup`, the routing table and RTT estimate belong to the
:class:`~zmqagents.core.routing.RoutingCore` this core is given. Nothing here does IO, reads a clock or
uses global randomness; signing and verifying (Ed25519, PyNaCl) is computation.

Six modules: :mod:`~zmqagents.core.dht_records` (a record's wire form, what its signature covers, making
and checking one), :mod:`~zmqagents.core.dht_store` (what this node holds for others, within its bounds;
:class:`DhtConfig`), :mod:`~zmqagents.core.dht_events` (message types, counters, :class:`DhtDone`),
:mod:`~zmqagents.core.dht_ops` (operations: lookups, the store phase, the RPC table),
:mod:`~zmqagents.core.dht_replication` (re-replication by holders, republishing by publishers) and this
one (the public API, answering peers, the timers). :class:`DhtCore` is built on the two layers below it
(operations, then replication). Every public name is importable from here.

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

import random
from collections import OrderedDict
from typing import Any

from ..envelope import Envelope
from ..errors import InvalidArgument
from ..identity import Contact, node_id_of
from .dht_events import (
    ADD_PROVIDER, FIND_PROVIDERS, FIND_VALUE, PREFIX, PROVIDERS, STAT_KEYS, STORE, STORED, VALUE, DhtDone,
)
from .dht_ops import OP_FIND, OP_GET, OP_PROVIDE, OP_PUT
from .dht_records import (
    KEY_LEN,
    PROVIDER_DOMAIN,
    RECORD_DOMAIN,
    ProviderRecord,
    Record,
    RecordError,
    check_key,
    key_for,
    make_provider,
    make_record,
    parse_provider,
    parse_record,
    provider_signing_bytes,
    record_signing_bytes,
)
from .dht_replication import DhtReplication
from .dht_store import DhtConfig, RecordStore
from .lookup import contact_fields
from .routing import RoutingCore, addressed_here

__all__ = [
    "PREFIX", "FIND_VALUE", "VALUE", "FIND_PROVIDERS", "PROVIDERS", "STORE", "ADD_PROVIDER", "STORED",
    "RECORD_DOMAIN", "PROVIDER_DOMAIN", "DhtConfig", "DhtCore", "DhtDone", "Record", "ProviderRecord",
    "RecordError", "make_record", "make_provider", "parse_record", "parse_provider", "key_for",
    "record_signing_bytes", "provider_signing_bytes",
]


class DhtCore(DhtReplication):
    """Records and providers of one node. See the module docstring; call a method, then drain
    take_outgoing() and take_events()."""

    def __init__(self, routing: RoutingCore, signer: Any, rng: random.Random, config: DhtConfig | None = None):
        pk = getattr(signer, "public_key", None)
        if type(pk) is not bytes or len(pk) != 32 or not callable(getattr(signer, "sign", None)):
            raise InvalidArgument("signer needs .public_key (32 bytes) and .sign(bytes)")
        self.routing = routing
        self.table = routing.table
        self.signer = signer
        self.node_id = routing.node_id
        self.config = cfg = config or DhtConfig()
        self._rng = rng
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._me_int = int.from_bytes(self.node_id, "big")
        self.store = RecordStore(self.node_id, cfg, self.stats)  # what this node holds for others
        DhtReplication.__init__(self)  # the operations' state, the replication's timers, our own records
        self._last_seq = 0
        self._rates: OrderedDict[bytes, list[Any]] = OrderedDict()  # peer -> [tokens, last refill]
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
        return self._submit(OP_PUT, key, rec, now)

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
            self._events.append(DhtDone(oid, OP_GET, key, True, rec))
            return oid
        return self._submit(OP_GET, key, None, now)

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
        return self._submit(OP_PROVIDE, key, entry, now)

    def unprovide(self, key: bytes) -> bool:
        """Stop refreshing our provider entry for ``key`` (held copies expire within ``provider_ttl``)."""
        return self._own_provs.pop(key, _MISSING) is not _MISSING

    def find_providers(self, key: bytes, now: float) -> int:
        """Look up the providers of ``key``; DhtDone(kind="providers").providers lists them."""
        check_key(key)
        return self._submit(OP_FIND, key, None, now)

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
        self._expire(now)
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



_MISSING = object()
