"""What a node holds for others in the DHT: value records and provider entries, bounded in items and bytes.

The DHT core (:mod:`zmqagents.core.dht`) hands every record or entry it is offered (a peer's STORE, its own
put landing on itself) to :meth:`RecordStore.offer_record` / :meth:`RecordStore.offer_provider`, which
check it (``protocols/routing.md`` 10.2, 10.3: owner, sequence, conflict, expiry, signature) and keep it or
say why not. The bounds are 10.7: when the store is full, the item whose key is farthest from our id goes
first, and a newcomer farther than everything held is refused. Every refusal and eviction is counted in
the ``stats`` dict the core shares with it. Also here: the DHT's tuning (:class:`DhtConfig`), most of which
bounds this store. No IO, no clock: ``now`` is passed in.
"""

from __future__ import annotations

import builtins
import heapq
from dataclasses import dataclass, fields
from typing import Any, Callable, ItemsView

from .dht_records import ProviderRecord, Record, RecordError, lifetime_fault, parse_provider, parse_record, \
    verify_provider, verify_record
from ..errors import InvalidArgument

__all__ = ["DhtConfig", "HeldProviders", "HeldRecord", "RecordStore", "Vouch"]

# vouch(key, value): whether an authority this node trusts, not the record's publisher, vouches for ``value``
# under ``key`` (a fleet's revocation lists: signed by the CA, stored by any member). See offer_record.
Vouch = Callable[[bytes, Any], bool]


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
                raise InvalidArgument(f"DhtConfig.{f.name} must be a positive number, got {value!r}")
        if self.provider_ttl > self.max_ttl or self.default_ttl > self.max_ttl:
            raise InvalidArgument("DhtConfig.default_ttl and provider_ttl must not exceed max_ttl")
        if self.republish_interval >= self.provider_ttl:
            raise InvalidArgument("DhtConfig.republish_interval must be shorter than provider_ttl, or entries lapse")


class HeldRecord:
    """A record held for others. ``pushed``: the replica set the core's re-replication last pushed it to."""

    __slots__ = ("record", "pushed", "serial", "vouched")

    def __init__(self, record: Record, serial: int, vouched: bool = False):
        self.record = record
        self.pushed: frozenset[Any] = frozenset()
        self.serial = serial
        self.vouched = vouched  # the store's vouch accepted its value under its key


class HeldProviders:
    """The provider entries held for others under one key (node id -> entry), and ``pushed`` as above."""

    __slots__ = ("entries", "pushed", "serial")

    def __init__(self, serial: int):
        self.entries: dict[bytes, ProviderRecord] = {}
        self.pushed: frozenset[Any] = frozenset()
        self.serial = serial


class RecordStore:
    """The records and provider entries one node holds for others. ``stats`` is the core's counter dict."""

    def __init__(self, node_id: bytes, config: DhtConfig, stats: dict[str, int]):
        self.config = config
        self.stats = stats
        self._me_int = int.from_bytes(node_id, "big")
        self._records: dict[bytes, HeldRecord] = {}
        self._providers: dict[bytes, HeldProviders] = {}
        # Providers forgotten here (dead or left): node id -> the latest expiry of the entries dropped.
        # A copy of such an entry pushed back by a holder that did not hear of the death (re-replication)
        # is refused as "stale"; only an entry the provider signed anew (a later expiry) is taken.
        self._gone: dict[bytes, int] = {}
        self._items = 0
        self._bytes = 0
        self._far: list[Any] = []  # heap of (-distance of key to us, serial, key): eviction order, lazily cleaned
        self._serial = 0
        self.vouch: Vouch | None = None  # set by the shell when some keys have an authority beyond their publisher

    # -- reading -------------------------------------------------------------------------------------

    def held(self, key: bytes) -> Record | None:
        """The record held for ``key`` (expired ones may linger until the next :meth:`purge`)."""
        h = self._records.get(key)
        return None if h is None else h.record

    def live_record(self, key: bytes, now: float) -> Record | None:
        """The record held for ``key`` if it has not expired."""
        h = self._records.get(key)
        return h.record if h is not None and h.record.expires > now else None

    def held_providers(self, key: bytes) -> list[ProviderRecord]:
        h = self._providers.get(key)
        return [] if h is None else list(h.entries.values())

    def live_providers(self, key: bytes, now: float) -> list[ProviderRecord]:
        """The entries held for ``key`` that have not expired."""
        h = self._providers.get(key)
        return [] if h is None else [p for p in h.entries.values() if p.expires > now]

    def held_records(self) -> ItemsView[bytes, HeldRecord]:
        """Every record held, by key (for re-replication, which sets ``pushed``)."""
        return self._records.items()

    def held_provider_sets(self) -> ItemsView[bytes, HeldProviders]:
        """Every key with provider entries held (for re-replication, which sets ``pushed``)."""
        return self._providers.items()

    @property
    def records(self) -> int:
        return len(self._records)

    @property
    def provider_entries(self) -> int:
        return self._items - len(self._records)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __bool__(self) -> bool:
        return bool(self._records or self._providers)

    # -- offers ----------------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> str:
        self.stats["refused_" + reason] += 1
        return reason

    def offer_record(self, obj: Any, now: float) -> str | None:
        """Validate a record (its wire map) and store it. Returns None if held (new, updated or a
        duplicate), else the reason it was refused (also counted)."""
        cfg = self.config
        # A copy of what we hold, byte for byte, is a duplicate: no need to verify it again.
        if type(obj) is dict:
            k = obj.get("k")
            h = self._records.get(k) if type(k) is bytes else None
            if h is not None and obj.get("sig") == h.record.signature and obj.get("seq") == h.record.seq \
                    and obj.get("exp") == h.record.expires and obj.get("pk") == h.record.public_key:
                self.stats["duplicates"] += 1
                return None
        try:
            rec = parse_record(obj, max_bytes=cfg.max_record_bytes, verify=False)
        except RecordError as exc:
            return self._refuse(exc.reason)
        why = lifetime_fault(rec.expires, now, cfg.max_ttl, cfg.max_clock_skew)
        if why is not None:
            return self._refuse(why)
        h = self._records.get(rec.key)
        if h is not None and h.record.expires <= now:
            self._drop_record(rec.key)
            h = None
        vouch = self.vouch
        vouched = vouch is not None and vouch(rec.key, rec.value)
        if h is not None:
            old = h.record
            if h.vouched and not vouched:
                # What an authority vouched for under this key is never replaced by what it did not,
                # not even by the same publisher (a member that stored the CA's list cannot swap it).
                return self._refuse("vouched")
            if old.public_key != rec.public_key:
                if not vouched or h.vouched:
                    return self._refuse("owner")
                # A squatter was first on a key whose value an authority vouches for: the vouched
                # record takes the key over (checked below like any record).
                if not verify_record(rec):
                    return self._refuse("bad_signature")
                self._bytes += rec.size - old.size
                h.record, h.vouched = rec, True
                self.stats["vouched_over"] += 1
                self._make_room(None, 0, now)
                return None
            if rec.seq < old.seq:
                return self._refuse("stale")
            if rec.seq == old.seq:
                if rec.value_bytes != old.value_bytes:
                    return self._refuse("conflict")
                if rec.expires <= old.expires:
                    self.stats["duplicates"] += 1
                    return None
        if not verify_record(rec):
            return self._refuse("bad_signature")
        if h is not None:
            self._bytes += rec.size - h.record.size
            h.record, h.vouched = rec, vouched
            self.stats["updated"] += 1
            self._make_room(None, 0, now)
            return None
        if not self._make_room(rec.key, rec.size, now):
            return self._refuse("full")
        self._serial += 1
        self._records[rec.key] = HeldRecord(rec, self._serial, vouched)
        self._push_far(rec.key, self._serial)
        self._items += 1
        self._bytes += rec.size
        self.stats["stored"] += 1
        return None

    def offer_provider(self, obj: Any, now: float) -> str | None:
        """Validate a provider entry (its wire map) and store it; returns as :meth:`offer_record`."""
        cfg = self.config
        try:
            p = parse_provider(obj, max_bytes=cfg.max_provider_bytes, verify=False)
        except RecordError as exc:
            return self._refuse(exc.reason)
        why = lifetime_fault(p.expires, now, cfg.max_ttl, cfg.max_clock_skew)
        if why is not None:
            return self._refuse(why)
        h = self._providers.get(p.key)
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
        if not verify_provider(p):
            return self._refuse("bad_signature")
        if h is not None and old is not None:  # (old comes from h)
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
        h = self._providers.get(p.key)  # room making may have evicted the key
        if h is None:
            self._serial += 1
            h = self._providers[p.key] = HeldProviders(self._serial)
            self._push_far(p.key, self._serial)
        h.entries[nid] = p
        self._items += 1
        self._bytes += p.size
        self.stats["providers_stored"] += 1
        return None

    # -- forgetting ------------------------------------------------------------------------------------

    def forget(self, node_id: builtins.bytes) -> int:
        """Drop the provider entries of ``node_id`` (dead or left) and refuse older copies of them from now
        on. Returns the entries dropped (also counted)."""
        n = 0
        latest = None
        for key in [k for k, h in self._providers.items() if node_id in h.entries]:
            h = self._providers[key]
            p = h.entries.pop(node_id)
            self._items -= 1
            self._bytes -= p.size
            n += 1
            latest = p.expires if latest is None else max(latest, p.expires)
            if not h.entries:
                del self._providers[key]
        if latest is not None:
            gone = self._gone
            gone.pop(node_id, None)
            gone[node_id] = max(latest, gone.get(node_id, latest))
            if len(gone) > self.config.max_gone_providers:
                del gone[next(iter(gone))]  # the one forgotten longest ago
        self.stats["providers_forgotten"] += n
        return n

    def purge(self, now: float) -> None:
        """Drop everything that has expired (counted in ``expired``)."""
        n = 0
        for key in [k for k, h in self._records.items() if h.record.expires <= now]:
            self._drop_record(key)
            n += 1
        for key, h in list(self._providers.items()):
            gone = [nid for nid, p in h.entries.items() if p.expires <= now]
            for nid in gone:
                p = h.entries.pop(nid)
                self._items -= 1
                self._bytes -= p.size
            n += len(gone)
            if not h.entries:
                del self._providers[key]
        self.stats["expired"] += n

    # -- bounds ----------------------------------------------------------------------------------------

    def _push_far(self, key: builtins.bytes, serial: int) -> None:
        far = self._far
        heapq.heappush(far, (-(int.from_bytes(key, "big") ^ self._me_int), serial, key))
        if len(far) > 2 * (len(self._records) + len(self._providers)) + 64:
            live = [(-(int.from_bytes(k, "big") ^ self._me_int), h.serial, k) for k, h in self._records.items()]
            live += [(-(int.from_bytes(k, "big") ^ self._me_int), h.serial, k) for k, h in self._providers.items()]
            heapq.heapify(live)
            self._far = live

    def _make_room(self, key: builtins.bytes | None, size: int, now: float) -> bool:
        """Evict until ``size`` more bytes and one more item fit (nothing more for an update, key None). The
        item whose key is farthest from our id goes first; a newcomer farther than all that is held is
        refused (False). Expired items are purged before anything live is evicted."""
        cfg = self.config
        extra = 0 if key is None else 1
        if self._items + extra <= cfg.max_items and self._bytes + size <= cfg.max_store_bytes:
            return True
        self.purge(now)
        dist = None if key is None else int.from_bytes(key, "big") ^ self._me_int
        far = self._far
        while self._items + extra > cfg.max_items or self._bytes + size > cfg.max_store_bytes:
            victim: tuple[int, bytes, HeldRecord | HeldProviders] | None = None
            while far:
                negd, serial, k = far[0]
                h: HeldRecord | HeldProviders | None = self._records.get(k)
                if h is None or h.serial != serial:
                    h = self._providers.get(k)
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
            if isinstance(h, HeldRecord):
                self._drop_record(k)
            else:
                self._drop_providers(k)
            self.stats["evicted"] += 1
        return True

    def _drop_record(self, key: builtins.bytes) -> None:
        h = self._records.pop(key)
        self._items -= 1
        self._bytes -= h.record.size

    def _drop_providers(self, key: builtins.bytes) -> None:
        h = self._providers.pop(key)
        self._items -= len(h.entries)
        self._bytes -= sum(p.size for p in h.entries.values())
