"""The Kademlia k-bucket routing table: a node's partial view of the mesh (sans-IO).

No IO, clocks or global randomness (the wire rules are in ``protocols/routing.md`` section 4; Kademlia is
Maymounkov & Mazières, IPTPS 2002). The protocol around it -- FIND_NODE, lookups, joins, refreshes -- is
:class:`~zmqagents.core.routing.RoutingCore`, which owns one table per node.

256-bit XOR space. Bucket ``i`` holds contacts whose id differs from ours first at bit ``i`` (counting
from the least significant bit), i.e. whose XOR distance to us is in ``[2**i, 2**(i+1))``. Each bucket
holds at most ``k`` contacts in *confirmation order* (least recently confirmed first) plus a bounded
*replacement cache* of newer contacts that found the bucket full. Only non-empty buckets exist (a dict),
so the table is O(k * log2(N/k)) entries and a few dicts, never O(N) and never 256 slots.

Liveness is not the table's job (SWIM's, in ``membership``): when a full bucket meets a new contact,
classic Kademlia would ping the least recently seen one; here the newcomer goes to the replacement cache
and the least recently seen contact is *recorded for checking*. Whoever does liveness drains
:meth:`RoutingTable.take_checks` and answers with :meth:`~RoutingTable.touch` / :meth:`~RoutingTable.update`
(alive) or :meth:`~RoutingTable.remove` (dead: the freshest replacement is promoted). A contact that
already failed an RPC (``fails > 0``) is replaced by a newcomer at once: the newcomer just proved it is
alive.

Only *direct* evidence adds a contact: a message it sent us (its key is authenticated by the transport
and its id is ``sha256(key)``), or its answer to our query. Contacts merely listed in someone's answer
are lookup candidates, never table entries, so a lying peer cannot fill our table.

Public API::

    RoutingTable(node_id, k=20, *, replacements=8, stale_after=5, max_checks=64, stats=None)
        .update(contact, now, rtt=None) -> ADDED|UPDATED|CACHED|REPLACED|IGNORED
        .add(node_id, public_key, endpoint, now, rtt=None)       # same, fields already validated
        .touch(node_id, now, rtt=None) -> bool, .mark_failed(node_id) -> bool, .remove(node_id) -> bool
        .closest(target, n=None, *, exclude=None, skip_failed=False) -> list[Entry]
        .get(node_id) / .find(node_id) -> Entry | None (find also looks in replacement caches)
        .bucket_index(node_id), .bucket(i), .replacements_of(i), .bucket_sizes(), .nearest_bucket()
        .buckets_needing_refresh(now, interval), .touch_bucket(i, now), .random_id_in_bucket(i, rng)
        .take_checks(), len(table), iter(table) -> Entry (node_id, public_key, endpoint, last_seen,
        rtt, fails; .contact)
    distance(a, b) -> int, bucket_index(self_id, node_id) -> int

Memory: an entry is one slotted object (node id, key, endpoint, last seen, RTT, failure count); keys and
endpoints are shared with the envelope they came from, and node ids are memoized process-wide
(``node_id_of``), so tables of a simulated mesh share their bytes. About 42 KiB per table of ~185
contacts plus ~55 replacements (tests/core/test_routing.py measures it with tracemalloc).
"""

from __future__ import annotations

import random
from bisect import insort
from typing import Any, Iterator

from ..identity import Contact, node_id_of
from .lookup import NODE_ID_LEN, contact_fields
from ..errors import InvalidArgument

__all__ = [
    "ID_BITS", "Entry", "RoutingTable", "distance", "bucket_index", "TABLE_STAT_KEYS",
    "IGNORED", "UPDATED", "ADDED", "CACHED", "REPLACED",
]

ID_BITS = 256

# Outcomes of RoutingTable.update().
IGNORED = 0  # our own id
UPDATED = 1  # already in its bucket: moved to most recently seen
ADDED = 2  # the bucket had room
CACHED = 3  # the bucket is full: kept in the replacement cache, the least recently seen is to be checked
REPLACED = 4  # the bucket was full but held a contact that had failed: the newcomer took its place

TABLE_STAT_KEYS = (
    "table_added", "table_updated", "table_cached", "table_replaced", "table_removed", "table_promoted",
    "table_cache_dropped", "table_checks_dropped", "table_self",
)


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two node ids, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(self_id: bytes, node_id: bytes) -> int:
    """Index of the bucket ``node_id`` falls in for ``self_id``: the position (0 = least significant)
    of the highest bit in which they differ; -1 if they are equal."""
    return distance(self_id, node_id).bit_length() - 1


class Entry:
    """A contact in the table, with what we know about it. Read-only for users of the table."""

    __slots__ = ("node_id", "public_key", "endpoint", "last_seen", "rtt", "fails")

    def __init__(self, node_id: bytes, public_key: bytes, endpoint: str, last_seen: float, rtt: float | None):
        self.node_id = node_id
        self.public_key = public_key
        self.endpoint = endpoint
        self.last_seen = last_seen  # the last time it was seen alive (the caller's clock)
        self.rtt = rtt  # smoothed round-trip time of our RPCs to it (s), None if never measured
        self.fails = 0  # RPCs that failed since it was last seen alive

    @property
    def contact(self) -> Contact:
        return Contact(self.public_key, self.endpoint)

    def __repr__(self) -> str:
        rtt = "?" if self.rtt is None else f"{self.rtt * 1000:.1f}ms"
        return f"Entry({self.node_id.hex()[:12]}@{self.endpoint}, seen={self.last_seen:.3f}, rtt={rtt}, fails={self.fails})"


class RoutingTable:
    """The k-bucket table of node ``node_id``. See the module docstring for the rules.

    ``now`` is the caller's clock (seconds); ``stats`` may be a dict shared with the owner (the
    ``table_*`` counters are added to it).
    """

    __slots__ = ("node_id", "k", "replacements", "stale_after", "max_checks", "stats",
                 "_me", "_buckets", "_cache", "_order", "_touched", "_checks", "_size")

    def __init__(self, node_id: bytes, k: int = 20, *, replacements: int = 8, stale_after: int = 5,
                 max_checks: int = 64, stats: dict[Any, Any] | None = None):
        if type(node_id) is not bytes or len(node_id) != NODE_ID_LEN:
            raise InvalidArgument(f"node id must be {NODE_ID_LEN} bytes")
        if k < 1 or replacements < 0 or stale_after < 1 or max_checks < 0:
            raise InvalidArgument("k and stale_after must be at least 1; replacements and max_checks non-negative")
        self.node_id = node_id
        self.k = k
        self.replacements = replacements  # replacement cache size per full bucket
        self.stale_after = stale_after  # consecutive failures after which a contact goes even without a replacement
        self.max_checks = max_checks  # contacts waiting to be checked by the liveness layer
        if stats is None:
            stats = {}
        for key in TABLE_STAT_KEYS:
            stats.setdefault(key, 0)
        self.stats = stats
        self._me = int.from_bytes(node_id, "big")
        self._buckets: dict[int, dict[bytes, Entry]] = {}  # non-empty buckets only
        self._cache: dict[int, dict[bytes, Entry]] = {}  # non-empty replacement caches only
        self._order: list[int] = []  # indices of non-empty buckets, ascending
        self._touched: dict[int, float] = {}  # bucket index -> last lookup into its range
        self._checks: dict[bytes, None] | None = None  # ids to check, oldest first
        self._size = 0

    # -- queries ---------------------------------------------------------------------------

    def bucket_index(self, node_id: bytes) -> int:
        """-1 for our own id, else 0 (closest) .. 255 (the far half of the space)."""
        return (self._me ^ int.from_bytes(node_id, "big")).bit_length() - 1

    def __len__(self) -> int:
        """Contacts in buckets (replacement caches not counted)."""
        return self._size

    def __iter__(self) -> Iterator[Entry]:
        """Every entry in the buckets, nearest bucket first, least recently confirmed first within one."""
        for i in self._order:
            yield from self._buckets[i].values()

    def __contains__(self, node_id: bytes) -> bool:
        return self.get(node_id) is not None

    def get(self, node_id: bytes) -> Entry | None:
        """The bucket entry for ``node_id`` (not the replacement cache), or None."""
        b = self._buckets.get(self.bucket_index(node_id))
        return None if b is None else b.get(node_id)

    def find(self, node_id: bytes) -> Entry | None:
        """The entry for ``node_id`` in a bucket or in a replacement cache, or None."""
        i = self.bucket_index(node_id)
        b = self._buckets.get(i)
        e = None if b is None else b.get(node_id)
        if e is None:
            c = self._cache.get(i)
            e = None if c is None else c.get(node_id)
        return e

    def bucket(self, i: int) -> list[Entry]:
        """Entries of bucket ``i``, least recently confirmed first."""
        b = self._buckets.get(i)
        return [] if b is None else list(b.values())

    def replacements_of(self, i: int) -> list[Entry]:
        """Replacement cache of bucket ``i``, oldest first (the last one is promoted first)."""
        c = self._cache.get(i)
        return [] if c is None else list(c.values())

    def bucket_sizes(self) -> dict[int, int]:
        return {i: len(self._buckets[i]) for i in self._order}

    def nearest_bucket(self) -> int | None:
        """Index of the closest non-empty bucket (where our closest neighbour is), None if empty."""
        return self._order[0] if self._order else None

    def closest(self, target: bytes, n: int | None = None, *, exclude: bytes | None = None,
                skip_failed: bool = False) -> list[Entry]:
        """The ``n`` (default k) entries closest to ``target`` by XOR distance, closest first.

        Buckets are visited in their exact distance order from the target, so only the buckets whose
        entries are returned are looked at and sorted (O(k log k) on a well-spread table), never the
        whole table. With x = ours XOR target and b its top bit: bucket b first; then the buckets
        below b where x has a 1 bit, highest first; then those where x has a 0 bit, lowest first; then
        b+1, b+2, ... (the entries of each bucket are farther than all before it).
        ``exclude`` leaves one id out (the asker); ``skip_failed`` leaves out contacts whose last RPC failed.
        """
        if n is None:
            n = self.k
        if n <= 0 or not self._size:
            return []
        t = int.from_bytes(target, "big")
        x = self._me ^ t
        b = x.bit_length() - 1
        buckets = self._buckets
        order = self._order
        if b < 0:
            seq = order
        else:
            seq = [b] if b in buckets else []
            lower = [i for i in order if i < b]
            if lower:
                seq += [i for i in reversed(lower) if (x >> i) & 1]
                seq += [i for i in lower if not (x >> i) & 1]
            seq += [i for i in order if i > b]
        out: list[Entry] = []
        fb = int.from_bytes
        filtered = skip_failed or exclude is not None
        cand: list[Entry] = []
        last = len(seq) - 1
        for si, i in enumerate(seq):
            cand.extend(buckets[i].values())
            if len(cand) < n - len(out) and si < last:
                continue  # consecutive buckets stay in order when sorted together: one sort for several
            if filtered:
                dec = [(fb(e.node_id, "big") ^ t, e) for e in cand
                       if not (skip_failed and e.fails) and e.node_id != exclude]
            else:
                dec = [(fb(e.node_id, "big") ^ t, e) for e in cand]
            dec.sort()  # distances are unique: the entries themselves are never compared
            out.extend([d[1] for d in dec[: n - len(out)]])
            if len(out) >= n:
                break
            cand = []
        return out

    def buckets_needing_refresh(self, now: float, interval: float) -> list[int]:
        """Bucket indices from our closest neighbour's outward (the range where nodes can exist) that
        no lookup has touched for ``interval`` seconds (never touched counts as stale)."""
        if not self._order:
            return []
        touched = self._touched
        return [i for i in range(self._order[0], ID_BITS)
                if (last := touched.get(i)) is None or now - last >= interval]

    def touch_bucket(self, i: int, now: float) -> None:
        """A lookup into bucket ``i``'s range was done (bucket refresh bookkeeping)."""
        if 0 <= i < ID_BITS:
            self._touched[i] = now

    def random_id_in_bucket(self, i: int, rng: random.Random) -> bytes:
        """A uniformly random id whose distance to us falls in bucket ``i``."""
        if not 0 <= i < ID_BITS:
            raise InvalidArgument(f"bucket index must be in 0..{ID_BITS - 1}, got {i}")
        x = (1 << i) | rng.getrandbits(i)
        return (self._me ^ x).to_bytes(NODE_ID_LEN, "big")

    def take_checks(self) -> list[Entry]:
        """Contacts whose liveness is in doubt (least recently seen of a full bucket that met a newcomer,
        or a contact whose RPC failed), oldest first; draining clears the list. Bounded by max_checks."""
        checks = self._checks
        if not checks:
            return []
        self._checks = None
        out = []
        for nid in checks:
            e = self.get(nid)
            if e is not None:
                out.append(e)
        return out

    # -- changes ---------------------------------------------------------------------------

    def update(self, contact: Contact, now: float, rtt: float | None = None) -> int:
        """``contact`` was seen alive at ``now`` (it sent us something, or answered us in ``rtt`` s).

        Returns ADDED, UPDATED, CACHED, REPLACED or IGNORED (our own id). Raises ValueError if a field
        is malformed (contacts from peers are validated before they get here).
        """
        f = contact_fields(contact)
        if f is None:
            raise InvalidArgument(f"malformed contact {contact!r:.80}")
        return self.add(node_id_of(f[0]), f[0], f[1], now, rtt)

    def add(self, node_id: bytes, public_key: bytes, endpoint: str, now: float, rtt: float | None = None) -> int:
        """:meth:`update` with fields already validated and ``node_id == sha256(public_key)`` known."""
        stats = self.stats
        x = self._me ^ int.from_bytes(node_id, "big")
        if not x:
            stats["table_self"] += 1
            return IGNORED
        i = x.bit_length() - 1
        buckets = self._buckets
        b = buckets.get(i)
        if b is None:
            buckets[i] = {node_id: Entry(node_id, public_key, endpoint, now, rtt)}
            insort(self._order, i)
            self._size += 1
            stats["table_added"] += 1
            return ADDED
        e = b.pop(node_id, None)
        if e is not None:
            b[node_id] = e  # now the most recently seen
            self._seen(e, endpoint, now, rtt)
            stats["table_updated"] += 1
            return UPDATED
        if len(b) < self.k:
            b[node_id] = Entry(node_id, public_key, endpoint, now, rtt)
            self._size += 1
            stats["table_added"] += 1
            return ADDED
        cache = self._cache.get(i)
        if cache is not None:
            e = cache.pop(node_id, None)
        # A full bucket. A contact that failed its last RPC loses its place to one that just spoke.
        failed = None
        for old in b.values():
            if old.fails:
                failed = old.node_id
                break
        if failed is not None:
            del b[failed]
            if self._checks:
                self._checks.pop(failed, None)
            if e is None:
                e = Entry(node_id, public_key, endpoint, now, rtt)
            else:
                self._seen(e, endpoint, now, rtt)
                if not cache:
                    del self._cache[i]
            b[node_id] = e
            stats["table_replaced"] += 1
            return REPLACED
        if cache is None:
            cache = self._cache[i] = {}
        if e is None:
            e = Entry(node_id, public_key, endpoint, now, rtt)
        else:
            self._seen(e, endpoint, now, rtt)
        cache[node_id] = e  # the freshest replacement is the last one
        if len(cache) > self.replacements:
            del cache[next(iter(cache))]
            stats["table_cache_dropped"] += 1
            if not cache:
                del self._cache[i]
        stats["table_cached"] += 1
        self._check(next(iter(b)))
        return CACHED

    def touch(self, node_id: bytes, now: float, rtt: float | None = None) -> bool:
        """``node_id`` was seen alive (an id alone: it is updated if known, never added). True if known."""
        i = (self._me ^ int.from_bytes(node_id, "big")).bit_length() - 1
        b = self._buckets.get(i)
        if b is not None:
            e = b.pop(node_id, None)
            if e is not None:
                b[node_id] = e
                if rtt is None:
                    # _seen() inlined: every message from a peer lands here.
                    e.last_seen = now
                    e.fails = 0
                    if self._checks:
                        self._checks.pop(node_id, None)
                else:
                    self._seen(e, e.endpoint, now, rtt)
                return True
        c = self._cache.get(i)
        if c is not None:
            e = c.pop(node_id, None)
            if e is not None:
                c[node_id] = e
                self._seen(e, e.endpoint, now, rtt)
                return True
        return False

    def mark_failed(self, node_id: bytes) -> bool:
        """An RPC to ``node_id`` failed. It is replaced at once by the freshest replacement if its bucket
        has one, removed after ``stale_after`` consecutive failures otherwise (a lone stale contact is
        better than an empty bucket, e.g. while our own link is down), and recorded for checking.
        A failed replacement-cache entry is dropped. Returns True if the contact left its bucket."""
        i = (self._me ^ int.from_bytes(node_id, "big")).bit_length() - 1
        b = self._buckets.get(i)
        e = None if b is None else b.get(node_id)
        if e is None:
            c = self._cache.get(i)
            if c is not None and c.pop(node_id, None) is not None:
                self.stats["table_cache_dropped"] += 1
                if not c:
                    del self._cache[i]
            return False
        e.fails += 1
        if self._cache.get(i) or e.fails >= self.stale_after:
            assert b is not None  # e came from it
            self._remove(i, b, node_id)
            return True
        self._check(node_id)
        return False

    def remove(self, node_id: bytes) -> bool:
        """``node_id`` is dead (or left): drop it from its bucket, promoting the freshest replacement, or
        from the replacement cache. True if it was in the table."""
        i = (self._me ^ int.from_bytes(node_id, "big")).bit_length() - 1
        b = self._buckets.get(i)
        if b is not None and node_id in b:
            self._remove(i, b, node_id)
            return True
        c = self._cache.get(i)
        if c is not None and c.pop(node_id, None) is not None:
            if not c:
                del self._cache[i]
            return True
        return False

    # -- internals -------------------------------------------------------------------------

    def _seen(self, e: Entry, endpoint: str, now: float, rtt: float | None) -> None:
        e.last_seen = now
        e.fails = 0
        if endpoint is not e.endpoint:
            e.endpoint = endpoint  # the key proved the id; the newest address wins
        if rtt is not None:
            e.rtt = rtt if e.rtt is None else e.rtt + 0.125 * (rtt - e.rtt)
        if self._checks:
            self._checks.pop(e.node_id, None)

    def _check(self, node_id: bytes) -> None:
        checks = self._checks
        if checks is None:
            checks = self._checks = {}
        elif node_id in checks:
            return
        if self.max_checks == 0:
            self.stats["table_checks_dropped"] += 1
            return
        if len(checks) >= self.max_checks:
            del checks[next(iter(checks))]
            self.stats["table_checks_dropped"] += 1
        checks[node_id] = None

    def _remove(self, i: int, b: dict[Any, Any], node_id: bytes) -> None:
        del b[node_id]
        self.stats["table_removed"] += 1
        if self._checks:
            self._checks.pop(node_id, None)
        c = self._cache.get(i)
        if c:
            nid, e = c.popitem()  # the freshest
            if not c:
                del self._cache[i]
            # Promoted at the front: it is the contact confirmed least recently, the first to check.
            nb = {nid: e}
            nb.update(b)
            self._buckets[i] = nb
            self.stats["table_promoted"] += 1
            return
        self._size -= 1
        if not b:
            del self._buckets[i]
            self._order.remove(i)
