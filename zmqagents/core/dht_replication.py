"""The DHT core's re-replication (by holders) and republishing (by publishers).

* **Re-replication**: every ``replicate_check`` seconds while anything is held, if the routing table
  changed (a closer node appeared, a holder was declared dead and forgotten) -- and anyway every
  ``replicate_interval`` -- a holder pushes each record it holds to those of the key's ``replicas`` closest
  nodes (by its own table, which knows its neighbourhood best) it has not pushed it to yet. No lookups.
  At most half a STORE token bucket's burst goes to one peer per pass.
* **Republishing**: the publisher re-stores its live records and provider entries every
  ``republish_interval`` (provider entries are re-signed with a fresh expiry: that is their refresh),
  each as an operation of :mod:`zmqagents.core.dht_ops`.

``protocols/routing.md`` section 10 has the rules. The timers are fired by :meth:`DhtCore.tick`.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument
from .dht_events import ADD_PROVIDER, STORE
from .dht_ops import OP_REPROVIDE, OP_REPUBLISH, DhtOperations
from .dht_records import ProviderRecord, Record, make_provider

__all__ = ["DhtReplication"]


class DhtReplication(DhtOperations):
    """Re-replication and republishing, as a base class of the DHT core (on its operations)."""

    signer: Any  # the core's own (set by DhtCore.__init__): .public_key and .sign(bytes)

    def __init__(self) -> None:
        DhtOperations.__init__(self)
        self._own: dict[bytes, Record] = {}  # records this node published (republished until they expire)
        self._own_provs: dict[bytes, Any] = {}  # keys this node provides -> metadata (refreshed until unprovide)
        self._check_at: float | None = None
        self._full_at: float | None = None
        self._republish_at: float | None = None
        self._table_mark = -1

    def _holding(self, now: float) -> None:
        """Something is held here now: the check runs every replicate_check while anything is held."""
        self._arm_check(now)

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
            self._submit(OP_REPUBLISH, key, rec, now)
        for key, meta in list(self._own_provs.items()):
            self.stats["reprovided"] += 1
            self._submit(OP_REPROVIDE, key, self._provider_entry(key, meta, now), now)
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
