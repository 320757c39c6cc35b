"""The overlay simulation: every node runs the real routing (Kademlia) and membership (SWIM) cores.

Each simulated node is one :class:`OverlayNode`: a
:class:`~zmqagents.core.composition.NodeCore` holding the node's routing and membership cores,
the composition a real node drives (which envelope goes to which core, membership probing exactly
the routing table's contacts, a ``Failed``/``Left`` member forgotten by the table, ``Alive`` observed
by it: the module docstring of :mod:`zmqagents.core.composition`). The run only counts what the
nodes report (``Failed``, ``Alive``, ``TableDropped`` ...); it wires nothing itself.

Node ids are ``sha256(public_key)``. Public keys are stand-ins: 32 bytes derived from the run seed
and the node number (both cores check only the length and derive the id from the key; no
signature is made or checked in these protocols, so real Ed25519 keys would change nothing here).

Joining. With ``warm_start`` (the default above ``full_join_max`` nodes) all but the last
``join_fraction`` of the nodes start with routing tables filled as if they had joined: for every
bucket of the table, the nodes whose ids fall in its range are looked up in the sorted id list; a
range of at most ``k`` nodes is taken whole (so the closest neighbours are exact), a larger one
contributes a random ``k + replacements`` (the extra go to the replacement cache). Membership is
given the table's contacts. The remaining nodes then *join for real*: at random times in
``join_window`` each calls ``routing.join`` with ``join_bootstrap`` random warm-started contacts and
runs the full FIND_NODE protocol over the simulated network. Without warm start every node joins
that way (node 0 founds the mesh; node i bootstraps from random earlier nodes).

``join_converged_s``: from the last node's ``join`` call until the first check (every
``join_check`` s) at which every target is *findable* from every sampled source. Targets: all
joining nodes plus a sample of the others (``join_targets`` in all); sources: ``join_sources``
random live nodes. Findable: an iterative lookup run over the *current routing tables* of live
nodes (the real ``RoutingTable.closest``; no messages, crashed nodes do not answer) from the
source reaches a node whose table holds the target. The check reads state only, so it does not
perturb the run.

Failure detection (same definitions as :mod:`zmqagents.sim.membership_run`, both computed by
:func:`zmqagents.sim.report.detection`; paused nodes are wrapped in :class:`zmqagents.sim.faults.Paused`
as there; traffic is counted by the engine itself): ``detect_first_s`` / ``detect_all_s`` per crash, from the
crash until the first / the last *holder* (a live node whose membership held the crashed node at
crash time) reports ``Failed``. A holder whose routing table dropped the crashed node for another
reason (a lookup RPC to it timed out) also stops holding it; that counts as detection too and is
reported in ``routing_dropped``. ``undetected``: holder/crash pairs never concluded by the end.

``false_positives``: ``Failed`` reports about a *healthy* node: up, not in the paused set, and not
on the other side of the partition from the observer (during the partition or after it healed:
suspicions begun while cut off may conclude later). Reports about paused nodes and across the
partition are counted apart (``failed_paused``, ``failed_partitioned``; ``partitioned_unrevived``:
such pairs still dead at the end, i.e. not yet reconnected after the heal;
``declared_after_heal``: such reports made after the heal, by suspicions begun while cut off;
``partition_revival_s``: per pair revived, the time from the heal, or from its declaration if that
came later, until the observer held the subject alive again; ``partition_healed_s``: the same revivals
timed from the heal alone, so a pair declared after the heal counts all its time since the heal: its p100
is when the last pair of live members saw each other alive again).
A pair is revived by membership's ``Alive``, or when the observer's routing table takes the subject
back on its own word (a kad query from it, or its answer): membership then drops the tombstone and
probes it as alive (``revived_by_table`` counts those).
``false_positives_in_partition``: those of the false positives reported while a partition was on or
within ``suspicion_max`` after it healed (still false positives: the subject was on the observer's
side; the partition made them, see protocols/membership.md 7).
``unrevived_false_positives``: (observer, healthy subject) pairs whose last report was ``Failed``
(not revived since) at the end of the run.

Cost (2-core reference machine, lan profile, 1 % loss): N=1000 for 60 virtual s, ~8 s wall, ~90 MB;
N=10,000 for 120 s (``zmqagents sim --nodes 10000 --seconds 120 --seed 1 --loss 0.01 --crash 50``):
5.4M simulator events (1M of them superseded timer events), ~1 GB peak RSS; on a quiet machine
114 s wall in one process (``--workers 1``; build 8.5 s) and 82 s on two workers (build 4 s, the
default there: :mod:`zmqagents.sim.parallel`), the same run either way. The two vCPUs slow each other
down: the one-process run took 154 s while another CPU-bound process ran beside it.
Building takes no cyclic-GC passes (``engine.bulk_build``: they were a third of the build) and
the built mesh is frozen out of the collector during the run (``engine.frozen_heap``). A profile
(pyinstrument) at N=2000 with 40 crashes: ~40 % in ``Membership.receive`` (half of it rumor
handling: ``_absorb``, ``_on_rumor``, ``_enqueue``), ~25 % in the engine's flush (sends, latency
draws, re-arming the node's timer), ~20 % in ticks (probes, pushes), ~12 % in the event loop and
heap, 4 % in the routing table's ``touch`` of each sender; nothing stands out, it is the cost of
~20 Python calls per simulated message.

Exit codes (see :func:`exit_code`): 129 if a healthy node was declared dead and never revived, else
128 if a crash was not detected by all holders or the join did not converge, else 0.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

from ..core.composition import NodeCore, TableAdded, TableDropped
from ..core.membership import Alive, Failed, Membership, MembershipConfig, Refuted, Suspect
from ..core.routing import Joined, RoutingConfig, RoutingCore
from ..identity import Contact, node_id_of
from .engine import Simulator, bulk_build, combine_traces, frozen_heap
from .faults import Paused
from .netmodel import parse_latency
from .pairtrace import PairTrace, merge
from .report import detection, engine_counts, summary
from .scenario import SimScenario

EXIT_OK, EXIT_LIVENESS, EXIT_CORRECTNESS = 0, 128, 129


@dataclass
class OverlayScenario(SimScenario):
    """The overlay run's scenario: the shared knobs (:class:`~zmqagents.sim.scenario.SimScenario`;
    ``crash_window`` defaults to (max(join end + 2, seconds/6), seconds*2/3)) and how nodes join."""

    warm_start: bool | None = None  # None: warm start above full_join_max nodes
    full_join_max: int = 500
    join_fraction: float = 0.01  # with warm start: this fraction of nodes (at least join_min) joins for real
    join_min: int = 5
    join_window: tuple[float, float] = (1.0, 6.0)
    join_bootstrap: int = 3
    join_check: float = 0.5
    join_sources: int = 16
    join_targets: int = 200
    progress: float = 0.0  # seconds of wall time between progress lines on stderr (0: none)
    trace: bool = False  # digest every send (report["trace_digest"]): a check that two runs are the same run
    # Instruments (sim/pairtrace.py), off by default; neither changes the run. pair_trace: (observer,
    # subject) node numbers whose timelines go to report["pair_trace"] (at most 16), within
    # pair_trace_window if given, pair_trace_limit entries each. slowest: report["slowest"] lists this
    # many of the slowest revivals after a partition, and the false positives (as many), to trace.
    pair_trace: tuple[tuple[int, int], ...] = ()
    pair_trace_window: tuple[float, float] | None = None
    pair_trace_limit: int = 400
    slowest: int = 0


def sim_key(seed: int, i: int) -> bytes:
    """The stand-in public key of node ``i`` in a run with ``seed``."""
    return hashlib.sha256(b"zmqagents-sim-key/%d/%d" % (seed, i)).digest()


class OverlayNode:
    """One simulated node: its :class:`~zmqagents.core.composition.NodeCore` (the cores wired as a real
    node wires them) behind the simulator's single-core interface, and its number in the run."""

    __slots__ = ("index", "core", "routing", "membership", "receive", "tick", "next_timer", "take_outgoing",
                 "take_events")

    def __init__(self, index: int, core: NodeCore):
        self.index = index
        self.core = core
        self.routing = core.routing
        self.membership = core.membership
        # The engine calls these after every event of a run: bound once here, they cost no extra call.
        self.receive = core.receive
        self.tick = core.tick
        self.next_timer = core.next_timer
        self.take_outgoing = core.take_outgoing
        self.take_events = core.take_events


class OverlayRun:
    """Build with an OverlayScenario, then ``run()`` for the report dict."""

    def __init__(self, sc: OverlayScenario, *, worker: int = 0, workers: int = 1):
        self.sc = sc
        n = sc.nodes
        self.worker = worker
        self.workers = workers
        self.link = None  # the other workers, in a parallel run (zmqagents.sim.parallel)
        self.mcfg = MembershipConfig.profile(sc.profile, **sc.config)
        self.rcfg = RoutingConfig()
        self.sim = Simulator(sc.seed, latency=sc.latency, loss=sc.loss, on_event=self._on_event,
                             sample_every=sc.byte_sample, trace=sc.trace, worker=worker,
                             owner_of=owner_function(workers) if workers > 1 else None)
        self.rng = self.sim.rng("overlay")
        self.contacts = [Contact(sim_key(sc.seed, i), f"tcp://10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:7000")
                         for i in range(n)]
        self.ids = [node_id_of(c.public_key) for c in self.contacts]
        self.index = {nid: i for i, nid in enumerate(self.ids)}
        self.by_id = {nid: self.contacts[i] for i, nid in enumerate(self.ids)}
        self.warm = sc.warm_start if sc.warm_start is not None else n > sc.full_join_max
        self.nodes: list[OverlayNode | None] = [None] * n  # None: a node another worker runs
        self.checks_at: list[float] = []  # times of the join checks still to come (parallel barriers)
        self.up = [True] * n
        self.paused: set[int] = set()
        self.cut: set[int] = set()  # the side of an active partition
        self.side: set[int] = set()  # the side the partition cuts off (chosen when the run is built)
        self.crashed_at: dict[int, float] = {}
        self.holders: dict[int, set[int]] = {}
        self.detected: dict[int, dict[int, float]] = {}
        self.routing_dropped = 0
        self.fp: list[tuple[float, int, int]] = []  # healthy subjects declared dead
        self.fp_pairs: dict[tuple[int, int], bool] = {}  # (observer, healthy subject) -> still dead
        self.failed_paused = 0
        self.failed_partitioned = 0
        self.part_pairs: dict[tuple[int, int], bool] = {}  # (observer, subject across the cut) -> still dead
        self.part_declared: dict[tuple[int, int], float] = {}  # such a pair -> when it was (last) declared
        self.part_revival: list[float] = []  # per revival of such a pair: s from max(heal, declaration)
        self.part_healed: list[float] = []  # the same revivals: s from the heal
        self.revived_partitioned = 0
        self.revived_by_table = 0
        self.declared_after_heal = 0
        self.revived = 0
        self.slow: list[tuple[float, int, int, float, float, str]] = []  # with sc.slowest: per pair revival
        self.fp_revived: dict[tuple[int, int], float] = {}  # with sc.slowest: when a false positive was revived
        self.tracer: PairTrace | None = None
        self.suspects_of_live = 0
        self.refutations = 0
        self.failed_events = 0
        self.detect_times: list[float] = []  # absolute times of holders' detections (for plots)
        self.joined_ok = 0
        self.joined_failed = 0
        self.joiners: list[int] = []
        self.join_converged_at: float | None = None
        self.join_checks = 0
        self.join_check_wall = 0.0
        self.last_check: dict | None = None
        self.build_wall = 0.0
        with bulk_build():
            self._build()
        if sc.pair_trace:
            self.tracer = PairTrace(list(sc.pair_trace), self.ids, [c.public_key for c in self.contacts],
                                    self.membership_of, self.side, sc.partition[:2] if sc.partition else None,
                                    sc.pair_trace_window, sc.pair_trace_limit)
            self.sim.tap = self.tracer.tap

    # -- building ------------------------------------------------------------------------------

    def _build(self) -> None:
        t0 = time.perf_counter()
        sc = self.sc
        n = sc.nodes
        rng = self.rng
        if self.warm:
            nj = min(n - 1, max(sc.join_min, round(sc.join_fraction * n)))
            self.joiners = sorted(rng.sample(range(n), nj))
        else:
            self.joiners = list(range(1, n))
        joining = set(self.joiners)
        if sc.pause_fraction > 0:
            cand = [i for i in range(n) if i not in joining]
            self.paused = set(rng.sample(cand, min(len(cand), round(sc.pause_fraction * n))))
        pw = sc.pause_span()
        mcfg, rcfg, contacts, sim = self.mcfg, self.rcfg, self.contacts, self.sim
        for i in range(n):
            def factory(nid, core_rng, i=i):
                routing = RoutingCore(contacts[i], random.Random(core_rng.getrandbits(64)), rcfg)
                mem = Membership(contacts[i], core_rng, mcfg)
                mem.set_network_size(n)
                node = self.make_node(i, routing, mem)
                self.nodes[i] = node
                if i in self.paused:
                    return [Paused(node, sim, pw[0], pw[1], sc.pause_period, sc.pause_duty,
                                   core_rng.random() * sc.pause_period, False)]
                return [node]
            sim.add_node(factory, node_id=self.ids[i])
        if self.warm:
            self._warm_start(joining)
            for node in sim.nodes:
                sim.flush(node)  # arm each node's first timer: its tables were filled after add_node
        # joins
        j0, j1 = sc.join_window
        warm = [i for i in range(n) if i not in joining]
        self.last_join_at = 0.0
        for pos, i in enumerate(self.joiners):
            if self.warm:
                t = rng.uniform(j0, j1)
                pool = warm
            else:
                t = j0 + (j1 - j0) * pos / max(1, len(self.joiners))
                pool = range(pos + 1)  # nodes 0..pos joined before node pos+1
            boot = rng.sample(pool, min(len(pool), sc.join_bootstrap))
            self.last_join_at = max(self.last_join_at, t)
            sim.at(t, lambda now, i=i, boot=boot: self.nodes[i].routing.join([contacts[b] for b in boot], now),
                   sim.nodes[i])
        if self.joiners:
            # Checks start once the last node has called join(): earlier ones could not pass.
            self._schedule_check(self.last_join_at)
        # crashes
        cw = sc.crash_window or (max(j1 + 2.0, sc.seconds / 6), sc.seconds * 2 / 3)
        cand = [i for i in range(n) if i not in self.paused]
        for v in rng.sample(cand, min(len(cand), sc.crash)):
            sim.at(rng.uniform(*cw), lambda now, v=v: self._crash(v, now))
        if sc.partition is not None:
            p0, p1, frac = sc.partition
            side = rng.sample(range(n), round(frac * n))
            self.side = set(side)
            sim.at(p0, lambda now: self._partition(side))
            sim.at(p1, lambda now: self._heal())
        self.build_wall = time.perf_counter() - t0

    def membership_of(self, i: int) -> Membership | None:
        """Node ``i``'s membership core, None where another worker runs it."""
        node = self.nodes[i]
        return None if node is None else node.membership

    def make_node(self, i: int, routing: RoutingCore, mem: Membership) -> OverlayNode:
        """Node ``i`` around its routing and membership cores; a run that adds cores (sim/dht_run.py)
        returns an OverlayNode subclass here."""
        return OverlayNode(i, NodeCore(routing, mem, contacts=self.by_id))

    def _warm_start(self, joining: set[int]) -> None:
        """Fill the tables of the non-joining nodes as a completed join would (see the module doc)."""
        k = self.rcfg.k
        per = k + min(2, self.rcfg.replacements)
        warm = [i for i in range(self.sc.nodes) if i not in joining]
        keyed = sorted((int.from_bytes(self.ids[i], "big"), i) for i in warm)
        ints = [x for x, _ in keyed]
        order = [i for _, i in keyed]
        contacts = self.contacts
        ids = self.ids
        seed = self.sc.seed
        for i in warm:
            node = self.nodes[i]
            if node is None:
                continue
            rng = random.Random(f"{seed}/warm/{i}")  # per node: the same tables however the nodes are split
            table = node.routing.table
            me = int.from_bytes(ids[i], "big")
            for b in range(255, -1, -1):
                # Own subtree above bit b: the ids sharing our top 255-b bits; stop when it holds only us.
                own_lo = (me >> (b + 1)) << (b + 1)
                lo_i = bisect.bisect_left(ints, own_lo)
                hi_i = bisect.bisect_left(ints, own_lo + (1 << (b + 1)))
                if hi_i - lo_i <= 1:
                    break
                sib = ((me >> b) ^ 1) << b
                s0 = bisect.bisect_left(ints, sib, lo_i, hi_i)
                s1 = bisect.bisect_left(ints, sib + (1 << b), lo_i, hi_i)
                cnt = s1 - s0
                if cnt <= 0:
                    continue
                pick = range(s0, s1) if cnt <= per else rng.sample(range(s0, s1), per)
                for p in pick:
                    j = order[p]
                    c = contacts[j]
                    table.add(ids[j], c.public_key, c.endpoint, 0.0)
            table.take_checks()
            # A join ends by refreshing every bucket farther than the closest neighbour: none is stale.
            near = table.nearest_bucket()
            if near is not None:
                for b in range(near, 256):
                    table.touch_bucket(b, 0.0)
            node.core.sync(0.0)
            for ev in node.core.take_events():  # TableAdded each: counted now, not all held until the flush
                self._on_event(node, ev, 0.0)

    # -- scenario actions ------------------------------------------------------------------------

    def _crash(self, v: int, now: float) -> None:
        self.up[v] = False
        self.crashed_at[v] = now
        nid = self.ids[v]
        self.holders[v] = {i for i, node in enumerate(self.nodes)
                           if node is not None and self.up[i] and nid in node.membership}
        self.detected[v] = {}
        self.sim.crash(nid)

    def _partition(self, side: list[int]) -> None:
        self.cut = set(side)
        self.sim.partition([self.ids[j] for j in side])

    def _heal(self) -> None:
        # ``cut`` stays: suspicions begun during the partition may conclude after it healed, and
        # those reports are still the partition's doing (counted apart, not as false positives).
        self.sim.heal()

    def revive(self, i: int, j: int, now: float, how: str = "Alive") -> bool:
        """Observer ``i`` holds ``j`` alive again (membership's ``Alive``, or its table re-added ``j``):
        close the pair if ``i`` had declared a healthy ``j`` dead. True if it had."""
        if self.fp_pairs.get((i, j)):
            self.fp_pairs[(i, j)] = False
            self.revived += 1
            if self.sc.slowest:
                self.fp_revived[(i, j)] = now
            return True
        if self.part_pairs.get((i, j)):
            self.part_pairs[(i, j)] = False
            self.revived_partitioned += 1
            declared = self.part_declared[(i, j)]
            took = now - max(self.sc.partition[1], declared)
            self.part_revival.append(took)
            self.part_healed.append(now - self.sc.partition[1])
            if self.sc.slowest:
                self.slow.append((took, i, j, declared, now, how))
            return True
        return False

    def added_by_routing(self, i: int, nid: bytes, now: float) -> None:
        """Node ``i``'s table handed ``nid`` to membership. The table takes a contact only on its own
        word (a kad query from it, or its answer to ours), and membership then drops its tombstone and
        probes it as alive: a declared pair ends here too, without an ``Alive`` event."""
        j = self.index.get(nid)
        if j is not None and (self.fp_pairs or self.part_pairs) and self.revive(i, j, now, "TableAdded"):
            self.revived_by_table += 1

    def dropped_by_routing(self, i: int, nid: bytes, now: float) -> None:
        j = self.index.get(nid)
        if j is None or self.up[j]:
            return
        d = self.detected.get(j)
        if d is not None and i not in d:
            d[i] = now
            self.routing_dropped += 1
            self.detect_times.append(now)

    # -- what the run counts of its nodes' events (the wiring itself is NodeCore's) ------------------

    def _on_event(self, simnode, ev, now: float) -> None:
        i = simnode.index
        t = type(ev)
        if self.tracer is not None:
            self.tracer.event(i, ev, now)
        if t is Failed:
            j = self.index.get(ev.node_id)
            if j is not None:
                self.failed_events += 1
                if not self.up[j]:
                    d = self.detected.get(j)
                    if d is not None and i not in d:
                        d[i] = now
                        self.detect_times.append(now)
                elif j in self.paused:
                    self.failed_paused += 1
                elif self.cut and ((i in self.cut) != (j in self.cut)):
                    self.failed_partitioned += 1
                    self.part_pairs[(i, j)] = True
                    self.part_declared[(i, j)] = now
                    if now >= self.sc.partition[1]:
                        self.declared_after_heal += 1
                else:
                    self.fp.append((now, i, j))
                    self.fp_pairs[(i, j)] = True
        elif t is TableDropped:
            self.dropped_by_routing(i, ev.node_id, now)
        elif t is TableAdded:
            self.added_by_routing(i, ev.node_id, now)
        elif t is Alive:
            nid = node_id_of(ev.contact.public_key)
            j = self.index.get(nid)
            if j is not None:
                self.revive(i, j, now)
        elif t is Suspect:
            j = self.index.get(ev.node_id)
            if j is not None and self.up[j]:
                self.suspects_of_live += 1
        elif t is Refuted:
            self.refutations += 1
        elif t is Joined:
            if ev.ok:
                self.joined_ok += 1
            else:
                self.joined_failed += 1

    # -- join convergence ------------------------------------------------------------------------

    def table_view(self, j: int, target: bytes, k: int) -> tuple[bool, list[bytes]]:
        """What node ``j``'s routing table says about ``target``: whether it holds it, and the ids of
        its ``k`` closest contacts. Asked of the worker that runs node ``j``."""
        table = self.nodes[j].routing.table
        return table.get(target) is not None, [e.node_id for e in table.closest(target, k)]

    def _view(self, j: int, target: bytes, k: int) -> tuple[bool, list[bytes]]:
        if self.nodes[j] is not None:
            return self.table_view(j, target, k)
        return self.link.ask(self.sim.owner_of(self.ids[j]), (j, target, k))

    def findable(self, src: int, target: bytes) -> bool:
        """An iterative lookup for ``target`` over the current tables of live nodes, from ``src``."""
        k = self.rcfg.k
        up = self.up
        index = self.index
        tgt = int.from_bytes(target, "big")
        has, closest = self._view(src, target, k)
        if has:
            return True
        cands: dict[bytes, int] = {}
        for nid in closest:
            cands[nid] = int.from_bytes(nid, "big") ^ tgt
        asked: set[bytes] = set()
        for _ in range(10 * k):
            window = sorted(cands, key=cands.__getitem__)
            nxt = None
            live = 0
            for nid in window:
                j = index[nid]
                if not up[j]:
                    continue
                live += 1
                if nid not in asked:
                    nxt = nid
                    break
                if live >= k:
                    break
            if nxt is None:
                return False
            asked.add(nxt)
            if nxt == target:
                return True
            has, closest = self._view(index[nxt], target, k)
            if has:
                return True
            for nid in closest:
                if nid not in cands:
                    cands[nid] = int.from_bytes(nid, "big") ^ tgt
        return False

    def _schedule_check(self, t: float) -> None:
        self.checks_at.append(t)
        self.sim.at(t, self._check_join)

    def _check_join(self, now: float) -> None:
        """Every worker runs this at the same virtual time (a barrier of a parallel run): the first
        does the lookups, reading the other workers' tables through the link; the others answer."""
        w0 = time.perf_counter()
        sc = self.sc
        self.checks_at.remove(now)
        self.join_checks += 1
        if self.worker == 0:
            pairs, missing = self._join_lookups()
            if self.link is not None:
                self.link.done((pairs, missing))
        else:
            pairs, missing = self.link.serve(self.table_view)
        self.last_check = {"at": round(now, 3), "pairs": pairs, "not_found": missing}
        self.join_check_wall += time.perf_counter() - w0
        if missing == 0 and now >= self.last_join_at:
            self.join_converged_at = now
            return
        if now + sc.join_check <= sc.seconds:
            self._schedule_check(now + sc.join_check)

    def _join_lookups(self) -> tuple[int, int]:
        sc = self.sc
        rng = random.Random(f"{sc.seed}/join-check/{self.join_checks - 1}")
        live = [i for i in range(sc.nodes) if self.up[i]]
        started = [i for i in self.joiners if self.up[i]]
        others = [i for i in live if i not in set(self.joiners)] if self.warm else []
        targets = started[: sc.join_targets]
        room = sc.join_targets - len(targets)
        if room > 0 and others:
            targets += rng.sample(others, min(room, len(others)))
        sources = rng.sample(live, min(sc.join_sources, len(live)))
        missing = 0
        pairs = 0
        for s in sources:
            for t in targets:
                if s == t:
                    continue
                pairs += 1
                if not self.findable(s, self.ids[t]):
                    missing += 1
        return pairs, missing

    # -- running -------------------------------------------------------------------------------

    @staticmethod
    def lookahead(sc: OverlayScenario) -> float:
        """How far workers of a parallel run may run apart in virtual time: the smallest delay."""
        return parse_latency(sc.latency).min_delay

    def counts(self) -> tuple[int, ...]:
        """This worker's share of what the progress line shows: events processed, Failed reports (a
        run that adds a workload appends its own counts)."""
        return self.sim.events, self.failed_events

    def _progress(self, now: float) -> None:
        wall = time.perf_counter() - self._t0
        events, failed = (self.link.totals() if self.link is not None else self.counts())[:2]
        print(f"sim: t={now:.0f}s/{self.sc.seconds:.0f}s wall={wall:.1f}s events={events} "
              f"crashes={len(self.crashed_at)} failed_reports={failed}", file=sys.stderr, flush=True)
        step = max(1.0, self.sc.seconds / 20)
        if now + step < self.sc.seconds:
            self.sim.at(now + step, self._progress)

    def start(self) -> None:
        """Start the clock (and the progress lines, from the first worker)."""
        self._t0 = time.perf_counter()
        if self.sc.progress and self.worker == 0:
            self.sim.at(0.0, self._progress)

    def run(self) -> dict:
        self.start()
        with frozen_heap():
            self.sim.run(until=self.sc.seconds)
        return self.report_from(self.sc, [self.partial()], time.perf_counter() - self._t0)

    @staticmethod
    def prepare(sc: OverlayScenario) -> None:
        """What a run sets in its scenario before it is built (a run that adds a workload may: see
        sim/dht_run.py); a parallel run calls it before it forks, so the report shows the same scenario."""

    @classmethod
    def report_from(cls, sc: OverlayScenario, parts: list[dict], wall: float) -> dict:
        """The run's report from its workers' :meth:`partial` results (one part in one process)."""
        return build_report(sc, parts, wall)

    def partial(self) -> dict:
        """What this worker saw, in a form the first worker's can be merged with (build_report)."""
        sim = self.sim
        rep = sim.report()
        stats: Counter = Counter()
        rstats: Counter = Counter()
        sizes = []
        for i, node in enumerate(self.nodes):
            if node is None:
                continue
            stats.update({k: v for k, v in node.membership.stats.items() if v})
            rstats.update({k: v for k, v in node.routing.stats.items() if v})
            if self.up[i]:
                sizes.append(len(node.routing.table))
        return {
            "worker": self.worker,
            "sim": engine_counts(rep),
            "by_type": dict(sim.by_type), "sampled_bytes": sim.sampled_bytes, "sampled": sim.sampled,
            "traces": sim.traces(),
            "crashed_at": self.crashed_at, "holders": self.holders, "detected": self.detected, "up": self.up,
            "fp": self.fp, "fp_pairs": self.fp_pairs, "part_pairs": self.part_pairs, "part_revival": self.part_revival,
            "part_healed": self.part_healed,
            "detect_times": self.detect_times,
            "pair_trace": self.tracer.result() if self.tracer is not None else None,
            "slowest": sorted(self.slow, reverse=True)[: self.sc.slowest],
            "fp_revived": self.fp_revived,
            "side": sorted(self.side) if self.sc.slowest else [],
            "counts": {name: getattr(self, name) for name in _SUMMED},
            "membership_stats": stats, "routing_stats": rstats, "table_sizes": sizes,
            "join": {"joiners": len(self.joiners), "warm": self.warm, "checks": self.join_checks,
                     "last_check": self.last_check, "last_join_at": self.last_join_at,
                     "converged_at": self.join_converged_at},
            "paused_nodes": len(self.paused),
            "build_wall": self.build_wall, "join_check_wall": self.join_check_wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


# Counters each worker keeps for its own nodes (summed over workers in the report).
_SUMMED = ("routing_dropped", "failed_paused", "failed_partitioned", "revived_partitioned", "revived",
           "revived_by_table", "declared_after_heal",
           "suspects_of_live", "refutations", "failed_events", "joined_ok", "joined_failed")


def owner_function(workers: int):
    """Which worker runs a node: by the top bits of its id, so a worker holds one region of the id
    space. Kademlia tables cluster by id, so most traffic stays inside a worker (at 10,000 nodes
    one message in ten crosses between two)."""
    def owner_of(node_id: bytes) -> int:
        return (int.from_bytes(node_id[:4], "big") * workers) >> 32
    return owner_of


class Merged:
    """The workers' partial() results put together: what a report (and a plot) is made of."""

    def __init__(self, sc: OverlayScenario, parts: list[dict]):
        self.sc = sc
        self.parts = parts = sorted(parts, key=lambda p: p["worker"])
        first = parts[0]
        self.crashed_at = first["crashed_at"]  # every worker runs every crash
        self.up = first["up"]
        self.holders: dict[int, set[int]] = {v: set() for v in self.crashed_at}
        self.detected: dict[int, dict[int, float]] = {v: {} for v in self.crashed_at}
        self.detect_times: list[float] = []
        for p in parts:
            for v in self.crashed_at:
                self.holders[v] |= p["holders"].get(v, set())
                self.detected[v].update(p["detected"].get(v, {}))
            self.detect_times += p["detect_times"]
        self.detect_times.sort()


def build_report(sc: OverlayScenario, parts: list[dict], wall: float) -> dict:
    """The run's report from its workers' partial() results (one part for a run in one process)."""
    m = Merged(sc, parts)
    parts = m.parts
    first = parts[0]
    crashed_at = m.crashed_at
    fp: list = []
    fp_pairs: dict = {}
    part_pairs: dict = {}
    part_revival: list = []
    part_healed: list = []
    counts: Counter = Counter()
    simc: Counter = Counter()
    by_type: Counter = Counter()
    stats: Counter = Counter()
    rstats: Counter = Counter()
    sizes: list[int] = []
    traces: dict[int, bytes] = {}
    sampled_bytes = sampled = 0
    for p in parts:
        fp += p["fp"]
        fp_pairs.update(p["fp_pairs"])
        part_pairs.update(p["part_pairs"])
        part_revival += p["part_revival"]
        part_healed += p["part_healed"]
        counts.update(p["counts"])
        simc.update(p["sim"])
        by_type.update(p["by_type"])
        stats.update(p["membership_stats"])
        rstats.update(p["routing_stats"])
        sizes += p["table_sizes"]
        traces.update(p["traces"])
        sampled_bytes += p["sampled_bytes"]
        sampled += p["sampled"]
    fp.sort()
    n = sc.nodes
    avg = sampled_bytes / sampled if sampled else 0.0
    node_seconds = n * sc.seconds
    sizes.sort()
    join = first["join"]
    join_conv = None
    if join["converged_at"] is not None:
        join_conv = round(join["converged_at"] - join["last_join_at"], 3)
    joiners = join["joiners"]
    report = {
        "seed": sc.seed,
        "scenario": {**asdict(sc), "warm_start": join["warm"]},
        "workers": len(parts),
        "join": {
            "mode": ("warm_start: %d nodes' tables filled as if joined, %d joined via real lookups"
                     % (n - joiners, joiners)) if join["warm"]
            else "all %d nodes joined via real lookups" % n,
            "joiners": joiners,
            "joined_ok": counts["joined_ok"],
            "joined_failed": counts["joined_failed"],
            "checks": join["checks"],
            "last_check": join["last_check"],
            "last_join_at": round(join["last_join_at"], 3),
            "converged_at": join["converged_at"],
            "measured": "s from the last node's join() until every target was findable from every sampled source "
                        "(checked every join_check s)",
        },
        "join_converged_s": join_conv,
        "crashes": len(crashed_at),
        **detection(m),
        "routing_dropped": counts["routing_dropped"],
        "false_positives": len(fp),
        "false_positive_subjects": len({j for _, _, j in fp}),
        "false_positives_in_partition": _in_partition(sc, fp),
        "unrevived_false_positives": sum(1 for still in fp_pairs.values() if still),
        "revived": counts["revived"],
        "paused_nodes": first["paused_nodes"],
        "failed_paused": counts["failed_paused"],
        "failed_partitioned": counts["failed_partitioned"],
        "revived_partitioned": counts["revived_partitioned"],
        "revived_by_table": counts["revived_by_table"],
        "partitioned_unrevived": sum(1 for still in part_pairs.values() if still),
        "declared_after_heal": counts["declared_after_heal"],
        "partition_revival_s": summary(part_revival),
        "partition_healed_s": summary(part_healed),
        "suspects_of_live": counts["suspects_of_live"],
        "refutations": counts["refutations"],
        "table_size": {"min": sizes[0] if sizes else 0,
                       "p50": sizes[len(sizes) // 2] if sizes else 0,
                       "max": sizes[-1] if sizes else 0},
        "msgs_per_node_per_s": round(simc["sent"] / node_seconds, 3),
        "bytes_per_node_per_s": round(simc["sent"] * avg / node_seconds, 1),
        "avg_msg_bytes": round(avg, 1),
        "by_type_per_node_per_s": {k: round(v / node_seconds, 3) for k, v in sorted(by_type.items())},
        "sim": {k: simc[k] for k in ("events", "sent", "delivered", "dropped_loss", "dropped_partition",
                                     "dropped_crashed", "stale_timers")},
        "membership_stats": {k: v for k, v in sorted(stats.items())},
        "routing_stats": {k: v for k, v in sorted(rstats.items())},
        "build_wall_s": round(max(p["build_wall"] for p in parts), 2),
        "join_check_wall_s": round(first["join_check_wall"], 2),
        "wall_s": round(wall + max(p["build_wall"] for p in parts), 2),
        # every worker's peak together: what the run needed of the machine
        "peak_rss_mb": round(sum(p["peak_rss_mb"] for p in parts), 1),
    }
    if traces:
        report["trace_digest"] = combine_traces(traces)
    if sc.slowest:
        report["slowest"] = slowest(sc, parts, fp)
    if sc.pair_trace:
        report["pair_trace"] = merge([p["pair_trace"] for p in parts])
    report["exit_code"] = exit_code(report)
    return report


def slowest(sc: OverlayScenario, parts: list[dict], fp: list) -> dict:
    """The ``sc.slowest`` slowest revivals after the partition and the first as many false positives,
    by node number, to be traced in a second run of the same seed (``pair_trace``)."""
    slow = sorted((s for p in parts for s in p["slowest"]), reverse=True)[: sc.slowest]
    revived: dict = {}
    for p in parts:
        revived.update(p["fp_revived"])
    side = set(parts[0]["side"])

    def sides(i: int, j: int) -> list[str] | None:
        return ["cut" if k in side else "rest" for k in (i, j)] if side else None
    return {
        "revivals": [{"observer": i, "subject": j, "sides": sides(i, j), "revival_s": round(took, 4),
                      "declared_at": round(declared, 4), "revived_at": round(at, 4), "by": how}
                     for took, i, j, declared, at, how in slow],
        "false_positives": [{"observer": i, "subject": j, "sides": sides(i, j), "declared_at": round(t, 4),
                             "revived_at": None if (i, j) not in revived else round(revived[(i, j)], 4)}
                            for t, i, j in fp[: sc.slowest]],
    }


def _in_partition(sc: OverlayScenario, fp: list) -> int:
    """Of the false positives, those reported while a partition was on or within ``suspicion_max``
    after it healed (a suspicion begun while it was on). They stay false positives (the subject was
    on the observer's side, reachable), but a partition is what made them: most of a node's view
    is unreachable and not yet declared, so its helpers and gossip targets are drawn from there."""
    if sc.partition is None:
        return 0
    t0, t1, _ = sc.partition
    t1 += MembershipConfig.profile(sc.profile, **sc.config).suspicion_max
    return sum(1 for t, _, _ in fp if t0 <= t <= t1)


def exit_code(report: dict) -> int:
    if report["unrevived_false_positives"] > 0:
        return EXIT_CORRECTNESS
    if report["undetected"] > 0:
        return EXIT_LIVENESS
    if report["join"]["joiners"] and report["join_converged_s"] is None:
        return EXIT_LIVENESS
    return EXIT_OK


def run(sc: OverlayScenario) -> dict:
    return OverlayRun(sc).run()
