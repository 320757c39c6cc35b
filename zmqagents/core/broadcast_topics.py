"""Topic interest on the broadcast tree: which topics each neighbour wants, and what we tell each one.

One mesh-wide Plumtree tree carries every topic (``protocols/broadcast.md`` 6), and a node must not
receive payloads of a topic that no one beyond it needs. So interest travels the eager tree the way
multicast prunes travel a reverse-path tree (DVMRP, RFC 1075): a node tells each neighbour ``p`` the
topics it wants from ``p``: its own subscriptions, and every topic that another *eager* neighbour
wants from it (a subtree on its far side needs it). A leaf that subscribes to nothing wants nothing
but the mesh-wide topic ``""``, which every node always gets. A lazy neighbour (it only announces to
us, and we graft from it when a payload is missing) is told our own topics only: so a subscriber
repairs a lost or cut-off push from any neighbour holding the topic, while a node that merely forwards
is never announced the topic and never grafts it. Telling lazy neighbours what our eager ones want
too (interest is the same for every origin, so it cannot say which side a payload will come from)
made forwarders graft payloads their parent had rightly stopped pushing, and the tree flipped
between two shapes on every message (a 40-node test: 5 grafts and 5 unwanted payloads per
publication, for ever; with own topics only: none after the first declarations). A neighbour that
has told us nothing wants everything: a missing or late declaration costs payloads, never a delivery.

What each side knows must stay in step. A neighbour only re-declares when its declaration changes, so
a node that forgot what a neighbour wants (it dropped the link when its table sample changed, and the
neighbour, which still samples it, came back as an inbound peer) pushed that neighbour every topic
for good, and declared "every topic" on its behalf to the rest of the tree: on 40 real nodes, 7 topic
payloads per publication to nodes that neither subscribe nor forward, at a steady state. So records
outlive a dropped link (at most ``max_peers``, least recently declared first out: a forgotten record
reads as "every topic", payloads not losses), and a neighbour never told anything is told even
"every topic", so that one that restarted, or evicted our record, replaces what we remembered.

This module only computes; the broadcast core sends the ``bcast.want`` envelopes and filters its
pushes and announcements with :meth:`Interests.wants`.
"""

from __future__ import annotations

from typing import AbstractSet, Iterable

Topics = frozenset[str] | None  # None: every topic


class Interests:
    """Per neighbour: the topics it wants (``want``, absent: all) and the ones we told it (``told``,
    absent: nothing told, so it pushes us everything)."""

    __slots__ = ("max_topics", "max_peers", "want", "told")

    def __init__(self, max_topics: int, max_peers: int = 256):
        self.max_topics = max_topics
        self.max_peers = max_peers
        self.want: dict[bytes, Topics] = {}
        self.told: dict[bytes, Topics] = {}

    def wants(self, peer: bytes, topic: str) -> bool:
        """Does ``peer`` want payloads (or announcements) of ``topic``? The mesh-wide topic always."""
        if topic == "":
            return True
        w = self.want.get(peer)
        return w is None or topic in w

    def set_want(self, peer: bytes, topics: Topics) -> bool:
        """``peer`` declared ``topics``; True if that changed what it wants."""
        old = self.want.pop(peer, None)  # absent and None both mean every topic
        self.want[peer] = topics
        self._bound(self.want)
        return old != topics

    def forget(self, peer: bytes) -> None:
        """``peer`` failed or left (a restarted one declares anew): what it wanted and what we told it go.
        A link merely dropped keeps both (module docstring)."""
        self.want.pop(peer, None)
        self.told.pop(peer, None)

    def _bound(self, records: dict[bytes, Topics]) -> None:
        while len(records) > self.max_peers:
            del records[next(iter(records))]

    def told_without(self, peer: bytes, topic: str) -> bool:
        """Did we tell ``peer`` a list of topics without ``topic`` (so it should not push it to us)?"""
        if topic == "" or peer not in self.told:
            return False
        d = self.told[peer]
        return d is not None and topic not in d

    def retell(self, peer: bytes) -> None:
        """Tell ``peer`` again at the next declaration (it may have dropped and re-added us, and so forgot)."""
        self.told.pop(peer, None)

    def tell(self, peer: bytes, own: AbstractSet[str]) -> tuple[bool, Topics]:
        """What to tell ``peer``, which is no neighbour of ours (we had no room for it) but pushes or announces
        to us: our topics ``own`` only (we forward nothing to it). (True, topics) if that is not what it was
        last told (recorded as told), else (False, topics)."""
        d = self._cap(frozenset(t for t in own if t != ""))
        if peer in self.told and self.told[peer] == d:
            return False, d
        self.told.pop(peer, None)
        self.told[peer] = d
        self._bound(self.told)
        return True, d

    def declarations(self, own: AbstractSet[str], eager: AbstractSet[bytes],
                     neighbours: Iterable[bytes]) -> list[tuple[bytes, Topics]]:
        """What to tell each of ``neighbours`` whose declaration changed or who was never told (sorted by
        peer): our topics ``own``, and to an eager one what our other eager neighbours want; None if that
        is every topic or more than ``max_topics``."""
        base = frozenset(t for t in own if t != "")
        wants = {q: self.want.get(q) for q in eager}
        lazy = self._cap(base)
        out: list[tuple[bytes, Topics]] = []
        for p in sorted(neighbours):
            if p in eager:
                d = self._cap(self._union_without(base, wants, p))
            else:
                d = lazy
            if p in self.told:
                if self.told[p] == d:
                    continue
                del self.told[p]
            self.told[p] = d
            out.append((p, d))
        self._bound(self.told)
        return out

    def _union_without(self, base: frozenset[str], wants: dict[bytes, Topics], p: bytes) -> Topics:
        acc = set(base)
        for q, w in wants.items():
            if q == p:
                continue
            if w is None:
                return None
            acc.update(w)
        return frozenset(acc)

    def _cap(self, topics: Topics) -> Topics:
        return None if topics is None or len(topics) > self.max_topics else topics

    def size(self) -> int:
        """Topic names held (bounded: neighbours x max_topics)."""
        return sum(len(w) for w in self.want.values() if w) + sum(len(w) for w in self.told.values() if w)
