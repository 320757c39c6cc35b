"""The broadcast simulation: every node runs routing, membership *and* the broadcast core (Plumtree).

This is the overlay simulation (:mod:`zmqagents.sim.overlay`: warm start or full join, SWIM, crashes,
partitions, the same exit-code rules) with a :class:`~zmqagents.core.broadcast.Broadcast` core in
each node's :class:`~zmqagents.core.composition.NodeCore`, the wiring a real node drives: ``bcast.``
envelopes go to it, its neighbours are the sample of the node's routing table (recomputed when the
table changes), a member that failed or left is dropped. Each node signs with a real Ed25519 key
(derived from the run seed and its number), and every payload is verified once per node.

Workload: from ``start`` (default: join window end + 4 s) until ``seconds - drain``, ``rate``
publications per second (a Poisson process), each by a random live, unpaused node, with a body of
``body_bytes``. With ``topics`` K > 0, each publication picks one of K topics or the mesh-wide topic
(K + 1 choices, uniformly); each topic's subscribers are a random ``subscribers`` fraction of the
nodes, chosen at build time. Every node is on the mesh-wide topic.

Figures (all in the report's ``broadcast`` section, the headline ones also at the top level):

* ``broadcast_delivery``: delivered / (publication, live subscriber) pairs. A subscriber is live if it
  is up at the end of the run; the origin is not a pair. Publications made while a partition is on
  are left out and reported apart: pairs across the cut (``pairs_across_partition``, no path exists,
  and Plumtree does not re-send old messages after a heal: ``delivery_across_partition``) and pairs on
  one side (``pairs_in_partition``, ``delivery_in_partition``: a side's neighbour graph is whole again
  only once membership has declared the other side dead and the tables promoted same-side
  replacements, so some are lost meanwhile; the subscriber sees them as gaps).
* ``broadcast_latency_ms`` {p50, p99, max}: publication to delivery, over delivered pairs.
* ``broadcast_ldh`` {p50, max}: per publication, the hop count of its most distant delivery
  ("last delivery hop", Leitão et al.).
* ``broadcast_rmr``: relative message redundancy, payloads received / (subscribers reached - 1) - 1,
  over the publications made after ``warmup`` s of broadcasting (steady state; the first messages
  flood every link until the prunes shape the tree); ``rmr_all`` over all of them. For a topic
  publication the subscribers are the topic's, while the payload travels the mesh-wide tree, so
  its RMR counts every non-subscriber's copy: ``rmr_mesh_wide`` is the figure for mesh-wide ones.
* ``broadcast_bytes_per_node_per_s`` {payload, control}: encoded bytes of ``bcast.msg`` envelopes and
  of the others (IHAVE, GRAFT, PRUNE), sampled one envelope in ``byte_sample``, per node per second
  of the broadcast period.
* ``non_subscriber_payloads``: payloads of topic publications received by nodes that neither subscribe
  to the topic nor forward it (the broadcast cores' ``unwanted_payloads``: a declaration of interest
  not yet heard, protocols/broadcast.md 6); ``payloads_to_non_subscribers``: every payload of a topic
  publication received by a node not subscribed to it, forwarders included (the tree's inner nodes
  between subscribers).
* ``graph``: every ``graph_check`` s, the strongly connected components of the directed broadcast
  graph (a link from each up node to each of its eager and lazy neighbours that is up; links across
  an active partition left out): one component means a message from any node can reach every node.
  ``max_components`` outside partitions, ``components_at_end``, and the series.
  ``last_incomplete_after_heal_s``: from the heal to the last publication that missed a live
  subscriber (None: none missed): how long the tree took to reach everyone again.
* ``state``: per node at the end, neighbours, seen ids and cached payload bytes (p50, max): what
  must not grow with N beyond O(log N).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from ..core.broadcast import Broadcast, BroadcastConfig, Delivered, Gap
from ..core.broadcast_wire import MSG, PREFIX as BCAST_PREFIX
from ..core.composition import NodeCore
from ..core.membership import Membership
from ..core.routing import RoutingCore
from ..identity import Identity
from .overlay import OverlayNode, OverlayRun, OverlayScenario
from .report import percentile
from ..errors import InvalidArgument


@dataclass
class BroadcastScenario(OverlayScenario):
    """An overlay scenario plus the broadcast workload (module docstring)."""

    rate: float = 1.0  # publications per second, mesh-wide
    topics: int = 0
    subscribers: float = 0.3  # fraction of the nodes subscribed to each topic
    body_bytes: int = 128
    start: float | None = None  # default: join window end + 4 s
    drain: float = 5.0  # s at the end without publications (deliveries and repairs finish)
    warmup: float = 5.0  # s of broadcasting before the RMR counts (the tree forms)
    graph_check: float = 5.0
    bconfig: dict = field(default_factory=dict)  # BroadcastConfig overrides


class BroadcastNode(OverlayNode):
    """An overlay node with a broadcast core; counts the payloads it receives and the bytes it sends."""

    __slots__ = ("bcast", "run", "_recv", "_take")

    def __init__(self, index: int, core: NodeCore, run: "BroadcastRun"):
        super().__init__(index, core)
        self.bcast = core.broadcast
        self.run = run
        self._recv = core.receive
        self._take = core.take_outgoing
        self.receive = self._receive
        self.take_outgoing = self._take_outgoing

    def _receive(self, env, now: float) -> bool:
        if env.type == MSG:
            self.run.payload_in(self.index, env.body)
        return self._recv(env, now)

    def _take_outgoing(self) -> list:
        out = self._take()
        if out:
            self.run.count_out(out)
        return out


class BroadcastRun(OverlayRun):
    """Build with a BroadcastScenario, then ``run()`` for the report (the overlay's plus ``broadcast``)."""

    def __init__(self, sc: BroadcastScenario):
        self.bcfg = BroadcastConfig(**sc.bconfig)
        self.topic_names = [f"t{j}" for j in range(sc.topics)]
        self.pubs: dict[tuple[bytes, str, int], dict] = {}  # (origin pk, topic, seq) -> record
        self.msgs: dict[bytes, dict] = {}  # message id -> the same record
        self.payload_bytes = 0
        self.control_bytes = 0
        self.graph: list[dict] = []
        self.gaps = 0
        self.subs: dict[str, set[int]] = {}
        super().__init__(sc)
        b0 = sc.start if sc.start is not None else sc.join_window[1] + 4.0
        self.b0 = b0
        self.b1 = sc.seconds - sc.drain
        if self.b1 <= b0:
            raise InvalidArgument(f"a broadcast run of {sc.seconds:g} s is too short: publications start at {b0:g} s "
                             f"and stop {sc.drain:g} s before the end")
        self.brng = self.sim.rng("broadcast")
        self._schedule()

    def make_node(self, i: int, routing: RoutingCore, mem: Membership) -> OverlayNode:
        sc = self.sc
        if not self.subs:
            rng = random.Random(f"{sc.seed}/subscribers")
            k = max(1, round(sc.subscribers * sc.nodes))
            self.subs = {t: set(rng.sample(range(sc.nodes), min(k, sc.nodes))) for t in self.topic_names}
        signer = Identity.from_seed(hashlib.sha256(b"zmqagents-sim-bcast/%d/%d" % (sc.seed, i)).digest())
        b = Broadcast(routing.node_id, signer, 1, random.Random(f"{sc.seed}/bcast/{i}"), self.bcfg)
        for t, members in self.subs.items():
            if i in members:
                b.subscribe(t)
        return BroadcastNode(i, NodeCore(routing, mem, broadcast=b, contacts=self.by_id), self)

    # -- workload ---------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        sc, rng = self.sc, self.brng
        t = self.b0
        while True:
            t += rng.expovariate(sc.rate)
            if t >= self.b1:
                break
            self.sim.at(t, self._publish)
        t = self.b0
        while t <= sc.seconds:
            self.sim.at(t, self._check_graph)
            t += sc.graph_check

    def _publish(self, now: float) -> None:
        sc, rng = self.sc, self.brng
        n = sc.nodes
        while True:
            i = rng.randrange(n)
            if self.up[i] and i not in self.paused:
                break
        k = rng.randrange(len(self.topic_names) + 1)
        topic = "" if k == len(self.topic_names) else self.topic_names[k]
        node = self.nodes[i]
        msg = node.bcast.publish(topic, b"x" * sc.body_bytes, now)
        rec = {"t": now, "topic": topic, "origin": i, "got": {}, "payloads": 0, "payloads_non_sub": 0,
               "cut": set(self.cut) if self.sim_partitioned else None}
        self.pubs[(msg.origin, topic, msg.seq)] = rec
        self.msgs[msg.id] = rec
        self.sim.flush(self.sim.nodes[i])

    @property
    def sim_partitioned(self) -> bool:
        p = self.sc.partition
        return p is not None and p[0] <= self.sim.now < p[1]

    def payload_in(self, i: int, body) -> None:
        try:
            m = body["m"]
            rec = self.pubs.get((m["o"], m["t"], m["s"]))
        except (TypeError, KeyError):
            return
        if rec is None:
            return
        rec["payloads"] += 1
        topic = rec["topic"]
        if topic and i not in self.subs[topic]:
            rec["payloads_non_sub"] += 1

    def count_out(self, out: list) -> None:
        k = self.sc.byte_sample
        for env in out:
            if env.type.startswith(BCAST_PREFIX) and int.from_bytes(env.id[-4:], "big") % k == 0:
                n = len(env.encode()) * k
                if env.type == MSG:
                    self.payload_bytes += n
                else:
                    self.control_bytes += n

    def _on_event(self, simnode, ev, now: float) -> None:
        t = type(ev)
        if t is Delivered:
            rec = self.msgs.get(ev.id)
            if rec is not None and simnode.index != rec["origin"]:
                rec["got"][simnode.index] = (now - rec["t"], ev.hops)
            return
        if t is Gap:
            self.gaps += len(ev.missing)
            return
        OverlayRun._on_event(self, simnode, ev, now)

    def _check_graph(self, now: float) -> None:
        """Strongly connected components of the directed broadcast graph over up nodes (module docstring)."""
        w0 = time.perf_counter()
        up = self.up
        index = self.index
        cut = self.cut if self.sim_partitioned else None
        out: dict[int, list[int]] = {}
        for i, node in enumerate(self.nodes):
            if not up[i]:
                continue
            edges = out[i] = []
            for nid in node.bcast.neighbours():
                j = index.get(nid)
                if j is not None and up[j] and (cut is None or (i in cut) == (j in cut)):
                    edges.append(j)
        sizes = strong_components(out)
        live = len(out)
        self.graph.append({"t": round(now, 3), "components": len(sizes),
                           "largest": round(max(sizes) / live, 6) if sizes else 0.0, "partitioned": cut is not None,
                           "wall_s": round(time.perf_counter() - w0, 3)})

    def _progress(self, now: float) -> None:
        done = sum(1 for r in self.pubs.values() if r["t"] <= now)
        print(f"sim-broadcast: t={now:.0f}s publications={done}", file=sys.stderr, flush=True)
        OverlayRun._progress(self, now)

    # -- the report --------------------------------------------------------------------------------------

    def run(self) -> dict:
        report = OverlayRun.run(self)
        report["broadcast"] = b = self.figures()
        for key in ("broadcast_delivery", "broadcast_latency_ms", "broadcast_ldh", "broadcast_rmr",
                    "broadcast_bytes_per_node_per_s", "non_subscriber_payloads"):
            report[key] = b[key]
        return report

    def figures(self) -> dict:
        sc = self.sc
        up = self.up
        n = sc.nodes
        everyone = [i for i in range(n) if up[i]]
        pairs = got = across = across_got = inside = inside_got = 0
        topic_pairs = topic_got = 0
        lat: list[float] = []
        ldh: list[float] = []
        rmr_steady: list[float] = []
        rmr_all: list[float] = []
        rmr_mesh: list[float] = []
        non_sub = 0
        heal = sc.partition[1] if sc.partition is not None else None
        last_incomplete = None
        for rec in self.pubs.values():
            topic = rec["topic"]
            members = everyone if not topic else [i for i in self.subs[topic] if up[i]]
            cut = rec["cut"]
            o = rec["origin"]
            g = rec["got"]
            for i in members:
                if i == o:
                    continue
                hit = i in g
                if cut is not None:
                    if (i in cut) != (o in cut):
                        across += 1
                        across_got += hit
                    else:
                        inside += 1
                        inside_got += hit
                    continue
                pairs += 1
                got += hit
                if topic:
                    topic_pairs += 1
                    topic_got += hit
            if heal is not None and rec["t"] >= heal and any(i not in g for i in members if i != o):
                last_incomplete = max(last_incomplete or 0.0, rec["t"] - heal)
            if g:
                lat.extend(ms * 1000.0 for ms, _h in g.values())
                ldh.append(float(max(h for _ms, h in g.values())))
            reached = sum(1 for i in members if i in g) + (1 if o in members else 0)
            if reached > 1:
                r = rec["payloads"] / (reached - 1) - 1
                rmr_all.append(r)
                if rec["t"] >= self.b0 + sc.warmup:
                    rmr_steady.append(r)
                    if not topic:
                        rmr_mesh.append(r)
            non_sub += rec["payloads_non_sub"]
        period = max(1e-9, self.b1 - self.b0 + sc.drain)
        stats: Counter = Counter()
        nb, seen, cache = [], [], []
        for i, node in enumerate(self.nodes):
            stats.update({k: v for k, v in node.bcast.stats.items() if v})
            if up[i]:
                nb.append(len(node.bcast.neighbours()))
                s = node.bcast.state_size()
                seen.append(s["seen"])
                cache.append(s["cache_bytes"])
        outside = [c["components"] for c in self.graph if not c["partitioned"]]
        p = sc.partition
        after_heal = [c for c in self.graph if p is not None and c["t"] >= p[1]]

        def mean(xs: list[float]) -> float | None:
            return round(sum(xs) / len(xs), 4) if xs else None

        def dist(xs: list) -> dict:
            return {"p50": percentile(xs, 0.5), "max": percentile(xs, 1.0)}
        return {
            "publications": len(self.pubs),
            "window_s": [round(self.b0, 3), round(self.b1, 3)],
            "broadcast_delivery": round(got / pairs, 6) if pairs else None,
            "pairs": pairs, "delivered_pairs": got,
            "topic_delivery": round(topic_got / topic_pairs, 6) if topic_pairs else None,
            "pairs_across_partition": across,
            "delivery_across_partition": round(across_got / across, 6) if across else None,
            "pairs_in_partition": inside,
            "delivery_in_partition": round(inside_got / inside, 6) if inside else None,
            "broadcast_latency_ms": {"p50": _r(percentile(lat, 0.5)), "p99": _r(percentile(lat, 0.99)),
                                     "max": _r(percentile(lat, 1.0))},
            "broadcast_ldh": {"p50": percentile(ldh, 0.5), "max": percentile(ldh, 1.0)},
            "broadcast_rmr": mean(rmr_steady),
            "rmr_all": mean(rmr_all),
            "rmr_mesh_wide": mean(rmr_mesh),
            "broadcast_bytes_per_node_per_s": {"payload": round(self.payload_bytes / (n * period), 1),
                                               "control": round(self.control_bytes / (n * period), 1)},
            "non_subscriber_payloads": stats.get("unwanted_payloads", 0),
            "payloads_to_non_subscribers": non_sub,
            "gaps_reported": self.gaps,
            "graph": {"checks": len(self.graph), "max_components": max(outside) if outside else None,
                      "components_at_end": self.graph[-1]["components"] if self.graph else None,
                      "components_after_heal": [c["components"] for c in after_heal],
                      "last_incomplete_after_heal_s": None if last_incomplete is None else round(last_incomplete, 3),
                      "series": self.graph},
            "state": {"neighbours": dist(nb), "seen_ids": dist(seen), "cache_bytes": dist(cache)},
            "stats": {k: v for k, v in sorted(stats.items())},
        }


def strong_components(out: dict[int, list[int]]) -> list[int]:
    """Sizes of the strongly connected components of the directed graph ``out`` (Kosaraju, iterative):
    one component means every node's messages can reach every other node along the links it pushes on."""
    order: list[int] = []
    seen: set[int] = set()
    for s in out:
        if s in seen:
            continue
        seen.add(s)
        stack = [(s, iter(out[s]))]
        while stack:
            x, it = stack[-1]
            for y in it:
                if y not in seen:
                    seen.add(y)
                    stack.append((y, iter(out[y])))
                    break
            else:
                stack.pop()
                order.append(x)
    rev: dict[int, list[int]] = {x: [] for x in out}
    for x, ys in out.items():
        for y in ys:
            rev[y].append(x)
    done: set[int] = set()
    sizes = []
    for s in reversed(order):
        if s in done:
            continue
        done.add(s)
        stack2 = [s]
        size = 0
        while stack2:
            x = stack2.pop()
            size += 1
            for y in rev[x]:
                if y not in done:
                    done.add(y)
                    stack2.append(y)
        sizes.append(size)
    return sizes


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run(sc: BroadcastScenario) -> dict:
    return BroadcastRun(sc).run()
