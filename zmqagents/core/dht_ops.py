"""The DHT core's operations and RPCs: lookups of a key, the store phase that follows, the RPC table.

An operation (get, put, provide, find_providers, and the publisher's republishing) is an iterative
lookup (:class:`~zmqagents.core.lookup.Lookup`) of its key with FIND_VALUE or FIND_PROVIDERS; a get ends at
the first valid record, a find merges the provider entries of every answer, a put or provide goes on to
STORE / ADD_PROVIDER on the ``replicas`` closest nodes found (this node included if it is one of them).
At most ``max_ops`` run, ``max_queued_ops`` wait. Each query and store is an RPC with a hard timeout
(``query_timeout``: the peer counts as failed) and, for an operation, a late deadline from the routing
core's RTT estimate; answers feed the routing table and that estimate.

Answering peers, the public API and the timers' dispatch are in :mod:`zmqagents.core.dht`; what is held
and re-replicated in :mod:`zmqagents.core.dht_replication`, which tells this layer, through
:meth:`DhtOperations._holding`, when something is held here.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import Any

from ..envelope import Envelope
from ..identity import node_id_of
from .dht_events import ADD_PROVIDER, FIND_PROVIDERS, FIND_VALUE, STORE, DhtDone
from .dht_records import ProviderRecord, Record, RecordError, lifetime_fault, parse_provider, parse_record
from .dht_store import DhtConfig, RecordStore
from .lookup import Lookup
from .outputs import CoreOutputs
from .routing import QueryDestinations, RoutingCore
from .routing_table import RoutingTable

__all__ = ["DhtOperations", "OP_FIND", "OP_GET", "OP_PROVIDE", "OP_PUT", "OP_REPROVIDE", "OP_REPUBLISH",
           "Operation", "Rpc"]


# Operation kinds (the first four are DhtDone.kind; the publisher's republishing reports nothing).
OP_GET, OP_PUT, OP_PROVIDE, OP_FIND = "get", "put", "provide", "providers"
OP_REPUBLISH, OP_REPROVIDE = "republish", "reprovide"
_QUERY_TYPE = {OP_GET: FIND_VALUE, OP_PUT: FIND_VALUE, OP_REPUBLISH: FIND_VALUE,
               OP_PROVIDE: FIND_PROVIDERS, OP_FIND: FIND_PROVIDERS, OP_REPROVIDE: FIND_PROVIDERS}
_PUBLIC_KIND = {OP_REPUBLISH: None, OP_REPROVIDE: None}


class Operation:
    """One get, put, provide, find or republishing, from its lookup to its report."""

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


class Rpc:
    """A query or store sent and not yet answered (``op`` None: a re-replication push)."""

    __slots__ = ("op", "nid", "pk", "ep", "sent", "store")

    def __init__(self, op: Operation | None, nid: bytes, pk: bytes, ep: str, sent: float, store: bool):
        self.op = op
        self.nid = nid
        self.pk = pk
        self.ep = ep
        self.sent = sent
        self.store = store


class DhtOperations(CoreOutputs):
    """Operations and RPCs, as the base class of the DHT core."""

    # The core's own, set by DhtCore.__init__.
    routing: RoutingCore
    table: RoutingTable
    node_id: bytes
    config: DhtConfig
    stats: dict[str, int]
    store: RecordStore
    _rng: random.Random
    _me_int: int  # our id as an integer (XOR distances)
    _max_queries: int  # per lookup

    def __init__(self) -> None:
        CoreOutputs.__init__(self)
        self._serial = 0  # tie-break of the late heap
        self._rpcs: dict[bytes, Rpc] = {}
        self._fifo: deque[Any] = deque()  # (hard deadline, rpc id)
        self._late: list[Any] = []  # heap of (deadline, serial, op)
        self._dests = QueryDestinations()  # for contact_for()
        self._active: dict[int, Operation] = {}
        self._queue: deque[Operation] = deque()
        self._next_id = 1

    def _expire(self, now: float) -> None:
        """Fire the hard timeouts and late deadlines due by ``now``."""
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

    def _offer(self, provider: bool, obj: Any, now: float) -> str | None:
        """Offer a record or provider entry (wire map) to the store: None if held, else why not. Whatever is
        held gets re-replicated, so the check timer is armed (it stays armed while anything is held)."""
        why = self.store.offer_provider(obj, now) if provider else self.store.offer_record(obj, now)
        if why is None:
            self._holding(now)
        return why

    def _holding(self, now: float) -> None:
        """Something is held here now (re-replication must look at it): the replication layer's business."""
        raise NotImplementedError

    # -- operations ----------------------------------------------------------------------------------

    def _submit(self, kind: str, key: bytes, item: Any, now: float) -> int:
        cfg = self.config
        oid = self._next_id
        self._next_id += 1
        op = Operation(oid, kind, key, item)
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

    def _start(self, op: Operation, now: float) -> None:
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

    def _pump(self, op: Operation, now: float) -> None:
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

    def _store_late_limit(self, op: Operation) -> float:
        """How long an unanswered STORE is waited for once another replica accepted: the node's RTO (RFC 6298:
        when a live peer's answer is overdue), or late_factor times this put's slowest acknowledgement if
        that is longer, never the hard timeout. A put reports the replicas that answered within it."""
        rcfg = self.routing.config
        limit = self.routing.rto
        if op.max_ack is not None and rcfg.late_factor * op.max_ack > limit:
            limit = rcfg.late_factor * op.max_ack
        return limit if limit < self.config.query_timeout else self.config.query_timeout

    def _arm_late(self, op: Operation, t: float | None) -> None:
        if t is not None and (op.armed is None or t < op.armed):
            op.armed = t
            self._serial += 1
            heapq.heappush(self._late, (t, self._serial, op))

    def _lookup_done(self, op: Operation, now: float) -> None:
        lk = op.lookup
        assert lk is not None
        kind = op.kind
        if kind == OP_GET:
            if lk.ok:
                self._finish(op, True, "not_found", now)
            else:
                self._finish(op, False, "failed" if lk.queries else "no_contacts", now)
            return
        if kind == OP_FIND:
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
        provider = kind in (OP_PROVIDE, OP_REPROVIDE)
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

    def _finish_store(self, op: Operation, now: float) -> None:
        if op.stored > 0:
            self._finish(op, True, "", now)
        else:
            reason = max(set(op.refusals), key=op.refusals.count) if op.refusals else "failed"
            self._finish(op, False, reason, now)

    def _finish(self, op: Operation, ok: bool, reason: str, now: float) -> None:
        op.phase = 3
        self._active.pop(op.id, None)
        stats = self.stats
        kind = op.kind
        if kind == OP_GET:
            stats["gets_found" if op.found is not None else "gets_not_found" if ok else "gets_failed"] += 1
        elif kind == OP_PUT:
            stats["puts_ok" if ok else "puts_failed"] += 1
        elif kind == OP_PROVIDE:
            stats["provides_ok" if ok else "provides_failed"] += 1
        elif kind == OP_FIND:
            stats["finds_ok" if ok else "finds_failed"] += 1
        self._report(op, ok, reason, now)
        while self._queue and len(self._active) < self.config.max_ops:
            self._start(self._queue.popleft(), now)

    def _report(self, op: Operation, ok: bool, reason: str, now: float | None = None) -> None:
        if op.kind in _PUBLIC_KIND:
            return
        lk = op.lookup
        provs = sorted(op.provs.values(), key=lambda p: int.from_bytes(p.node_id, "big") ^ int.from_bytes(op.key, "big"))
        record = op.found if op.kind == OP_GET else op.item if isinstance(op.item, Record) else None
        self._events.append(DhtDone(op.id, op.kind, op.key, ok, record, provs, op.stored,
                                    lk.rounds if lk else 0, lk.queries if lk else 0,
                                    (now - op.started) if (lk is not None and now is not None) else 0.0, reason))

    # -- RPCs --------------------------------------------------------------------------------------

    def _rid(self) -> bytes:
        return self._rng.getrandbits(128).to_bytes(16, "big")

    def _send(self, env: Envelope) -> None:
        self._out.append(env)
        self.stats["sent"] += 1

    def _query(self, op: Operation, pk: bytes, ep: str, typ: str, body: dict[Any, Any], now: float) -> bytes:
        return self._rpc(op, node_id_of(pk), pk, ep, typ, body, now, False)

    def _store_rpc(self, op: Operation | None, nid: bytes, pk: bytes, ep: str, typ: str, body: dict[Any, Any], now: float) -> bytes:
        self.stats["stores_sent"] += 1
        return self._rpc(op, nid, pk, ep, typ, body, now, True)

    def _rpc(self, op: Operation | None, nid: bytes, pk: bytes, ep: str, typ: str, body: dict[Any, Any], now: float,
             store: bool) -> bytes:
        rid = self._rid()
        self._rpcs[rid] = Rpc(op, nid, pk, ep, now, store)
        self._fifo.append((now + self.config.query_timeout, rid))
        self._dests.add(nid, pk, ep)
        self._send(Envelope(rid, self.node_id, typ, body, nid, int(now * 1000)))
        return rid

    def _match(self, env: Envelope, store: bool) -> Rpc | None:
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
        if op.kind == OP_GET and "rec" in body:
            rec = self._answer_record(body["rec"], op.key, now)
            if rec is not None:
                lk.on_response(rpc.nid, nodes, now)
                op.found = rec
                self._finish(op, True, "", now)
                return
        elif op.kind == OP_FIND and "provs" in body:
            if self._merge_providers(op, body["provs"], now):
                op.with_provs += 1
        lk.on_response(rpc.nid, nodes, now)
        if op.kind == OP_FIND and (op.with_provs >= self.config.replicas
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

    def _merge_providers(self, op: Operation, provs: Any, now: float) -> bool:
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
