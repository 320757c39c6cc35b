"""The broadcast peer sample: which contacts of the Kademlia routing table a node pushes broadcasts to.

Why a sample of k-buckets rather than HyParView's separate active/passive views: the routing table is
already a maintained partial view (SWIM evicts dead contacts, replacements are promoted, a healed
partition is re-learned by lookups and membership's revivals), and Kademlia's routing argument gives
connectivity for free: if every node links to at least one live contact in each of its non-empty
buckets, then from any node a link leads into the subtree holding any target, one shared prefix bit
longer each hop, so the sampled graph is strongly connected. A second view with its own join,
shuffle and repair messages would duplicate that maintenance.

The choice inside a bucket must be stable (a sample that changes whenever a contact is touched
would re-shape the tree on every message): per bucket, the ``per_bucket`` entries closest (XOR) to a
pivot the node drew once at random for that bucket. A contact leaves the sample only when it leaves
the table. The ``near`` closest contacts are added (the nearest buckets' subtrees are tiny, so they
are mostly in each other's samples: links both ways).
"""

from __future__ import annotations

import heapq
import random

from .routing_table import RoutingTable


class PeerSample:
    """The sample rule of one node: ``pick(table)`` returns the node ids to use as broadcast neighbours."""

    __slots__ = ("node_id", "per_bucket", "near", "_seed", "_pivots")

    def __init__(self, node_id: bytes, rng: random.Random, per_bucket: int, near: int):
        self.node_id = node_id
        self.per_bucket = per_bucket
        self.near = near
        self._seed = rng.getrandbits(64)
        # One pivot per bucket index, drawn when the bucket is first sampled (a node has ~log2(N/k) buckets).
        self._pivots: dict[int, int] = {}

    def _pivot(self, i: int) -> int:
        p = self._pivots.get(i)
        if p is None:
            p = self._pivots[i] = random.Random(self._seed * 257 + i).getrandbits(256)
        return p

    def pick(self, table: RoutingTable) -> set[bytes]:
        """The sample of ``table`` now: ``per_bucket`` pivot-closest entries per bucket, and the ``near`` closest."""
        out: set[bytes] = set()
        per = self.per_bucket
        if per:
            for i in table.bucket_sizes():
                entries = table.bucket(i)
                if len(entries) <= per:
                    out.update(e.node_id for e in entries)
                    continue
                pv = self._pivot(i)
                out.update(e.node_id for e in heapq.nsmallest(per, entries,
                                                              key=lambda e: int.from_bytes(e.node_id, "big") ^ pv))
        if self.near:
            out.update(e.node_id for e in table.closest(self.node_id, self.near))
        out.discard(self.node_id)
        return out

