"""The DHT simulation: every node runs the real routing, membership *and* DHT cores.

This is the overlay simulation (:mod:`zmqagents.sim.overlay`: warm start or full join, SWIM, crash
scheduling, the same exit-code rules) with a :class:`~zmqagents.core.dht.DhtCore` added to each node,
wired by the same :class:`~zmqagents.core.composition.NodeCore` a real node drives: envelopes whose
type starts with ``dht.`` go to the DHT core, which feeds what it learns (answers, RTTs, hard
timeouts) into the node's one routing table; table changes are handed to membership as for ``kad.``
traffic, and a member that failed or left, or a contact the table gave up, also goes to
``DhtCore.forget``. Each node signs with its own Ed25519 key (derived
from the run seed and its number), so every STORE and every record in an answer is really verified.

The timeline of a run (``S`` = ``--seconds``, ``W`` = the spread of each phase, 4 % of ``S`` clamped
to [1, 10] s; all times virtual):

1. joins as in the overlay run (end at 6 s);
2. **puts** in ``[10, 10 + W]`` s: key ``j`` (``sha256("sim/<seed>/<j>")``) is put by a random live
   node, value ``"value-<j>"``, default ttl (an hour);
3. **gets before the crash** in ``[15 + W, 15 + 2W]``: every stored key is read once from a random
   live node. ``lookup_success`` = gets that returned the very record put / gets attempted;
   ``lookup_rounds_p50`` / ``_p99`` are over those that went to the network (a getter that holds the
   record answers locally, ``gets_local``): the deepest lookup hop that answered, hop 1 being the
   contacts the getter started from;
4. **the crash** at ``T = 20 + 2W``: all ``--crash`` nodes stop at once (SWIM detects them and the
   routing tables forget them; holders re-replicate to the new closest nodes);
5. **one republish interval**: the DHT's ``republish_interval`` is set to
   ``R = min(600, (S - T - W - 15) / 1.1)`` (214 s for S = 300) and the run waits ``1.1 R + 5`` s
   after the crash -- the longest gap between two republishes of one record, since republish timers
   are jittered by +-10 %, plus time for the republish to finish. Every surviving publisher has thus
   re-stored its record on the closest live nodes at least once after the crash;
6. **gets after the crash** in ``[T + 1.1 R + 5, + W]``: every stored key again, from random
   surviving nodes: ``get_success_after_crash``.

Other DHT settings are the defaults (``replicas`` 3 unless ``--dht-replicas``, ``replicate_check``
10 s, ``query_timeout`` 2 s). The getters and publishers are never paused nodes.

``waited_hard_timeout`` counts gets and puts that finished in a tick of the DHT core in which a query's
hard timeout fired although some peer had answered the operation's lookup (``rounds`` > 0): such an
operation waited on a silent peer until it was declared failed. The design says this never happens
(the lookup's late limit routes around silent peers once others answered); a run where it does is a
liveness failure. ``get_ms`` gives the duration of the gets for the same question from the other side.

What explains a miss after the crash: ``keys_without_live_holder_at_crash`` (every node holding the
record crashed) and, among them, ``keys_lost`` whose publisher crashed too -- no node can bring such a
record back. With 3 replicas and 20 % of the nodes crashing independently of the keys, about
0.2**4 = 0.16 % of the keys are expected to be lost that way.

Exit codes (:func:`exit_code`): 129 (correctness) if the overlay's correctness rule fails or a get
returned a record other than the one put (another value or publisher); else 128 (liveness) if the
overlay's liveness rule fails, a put was not stored, ``lookup_success`` < 1, ``get_success_after_crash``
< 0.999 (< 1 when nothing crashed), or ``waited_hard_timeout`` > 0; else 0. ``dht.violations`` lists
which rule tripped.

Cost (seed 1, 1000 keys, on the shared 2-core box while other work kept it fully busy, load average
~10, so wall times are 5-7x the CPU time): N=10,000 without a crash, 60 s: 80 s of CPU (build with warm
start ~15 s of it), 1.0 GB peak RSS, ~2M events. The simultaneous crash of 20 % is what costs: every
survivor's SWIM core then holds ~20 % dead members, so detection traffic and the rumors piggybacked on
it grow for minutes. N=2000, 300 s, 20 % crash: 231 s of CPU, 5.5M events, 336 MB. N=10,000, 300 s, 20 % crash did
not finish in the time available: 2.5 wall-min to the crash at 40 s, then 11.6M events and 17.5
wall-min for the 60 virtual seconds after 45 s (protocols/routing.md 10.9 has the figures). The holder scans at the crash and
before the last gets read every live node's store once per key (~2.5 CPU-s at N=10,000).

On the parallel workers (``--workers``, :mod:`zmqagents.sim.parallel`; the same run and report as in one
process): N=2000, 300 s, 20 % crash on 2 workers, 5.65M events, 280,000 lockstep windows, 294 CPU-s
user + 15 sys for all processes together (about 150 per worker), 383 MB for both; every DHT and
detection figure as in one process (load average 11-38 during that run, so its 1,462 s of wall time
says nothing of the split). Where the time goes after a mass crash (cProfile, N=2000, 80 s, 400 of
them crashing, one process): membership's receive ~38 % of it, most of that rumor handling
(``_absorb``, ``_on_rumor``, the rumor queue's ``enqueue`` and ``pick``); the engine's flush and
timers ~25 %. Two workers can at best halve the work per process, so a 10,000-node run with a 20 %
crash needs a cheaper SWIM core under a mass crash as well to finish in minutes.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass

from ..core.dht import DhtConfig, DhtCore, DhtDone, key_for
from ..core.composition import NodeCore
from ..core.membership import Membership
from ..core.routing import RoutingCore
from ..identity import Identity
from .overlay import EXIT_CORRECTNESS, EXIT_LIVENESS, EXIT_OK, OverlayNode, OverlayRun, OverlayScenario, build_report
from .overlay import exit_code as overlay_exit_code
from .report import summary
from ..errors import InvalidArgument

REPUBLISH_JITTER = 1.1  # DhtCore re-arms its republish timer at R * (0.9 + 0.2 * random)
MAX_REPUBLISH = 600.0  # keeps R below the default provider_ttl (900 s), which DhtConfig requires
MIN_REPUBLISH = 5.0
TARGET_AFTER_CRASH = 0.999


@dataclass
class DhtScenario(OverlayScenario):
    """An overlay scenario plus the DHT workload. ``crash`` nodes all crash at once (``crash_window`` is
    set by the timeline; see the module docstring)."""

    keys: int = 1000
    replicas: int = 3
    window: float | None = None  # spread of each phase (s); default 4 % of seconds, in [1, 10]
    republish: float | None = None  # DHT republish interval (s); default: fill the run (module docstring)


@dataclass(frozen=True)
class Timeline:
    puts: tuple[float, float]
    gets_before: tuple[float, float]
    crash_at: float
    republish: float
    gets_after: tuple[float, float]


def timeline(sc: DhtScenario) -> Timeline:
    """When each phase happens; ValueError (the message says what to change) if ``seconds`` is too short."""
    s = sc.seconds
    w = sc.window if sc.window is not None else max(1.0, min(10.0, 0.04 * s))
    b = sc.join_window[1] + 4.0
    puts = (b, b + w)
    before = (b + w + 5.0, b + 2 * w + 5.0)
    crash_at = before[1] + 5.0
    r = sc.republish if sc.republish is not None else min(MAX_REPUBLISH, (s - crash_at - w - 15.0) / REPUBLISH_JITTER)
    if r < MIN_REPUBLISH:
        need = crash_at + w + 15.0 + REPUBLISH_JITTER * MIN_REPUBLISH
        raise InvalidArgument(f"a DHT run of {s:g} s is too short: give --seconds {need:.0f} or more")
    a0 = crash_at + REPUBLISH_JITTER * r + 5.0
    after = (a0, a0 + w)
    if after[1] + 5.0 > s:
        raise InvalidArgument(f"a republish interval of {r:g} s does not fit in {s:g} s: give --seconds "
                         f"{after[1] + 5.0:.0f} or more")
    return Timeline(puts, before, crash_at, r, after)


class DhtNode(OverlayNode):
    """An overlay node whose NodeCore has a DHT core; it notes when a tick fired a query's hard timeout."""

    __slots__ = ("dht", "timeout_tick")

    def __init__(self, index: int, core: NodeCore):
        super().__init__(index, core)
        self.dht = core.dht
        self.timeout_tick = -1.0  # last time a tick of the DHT core fired a query's hard timeout
        self.tick = self._tick

    def _tick(self, now: float) -> None:
        stats = self.dht.stats
        before = stats["rpc_timeouts"]
        self.core.tick(now)
        if stats["rpc_timeouts"] != before:
            self.timeout_tick = now


ROUNDS_SHOWN = 8  # the progress line's count of gets by lookup rounds: 0 .. 7, deeper ones in the last


class _Phase:
    """Outcome counters of one round of gets, made from the gets' records (:meth:`DhtRun.partial`, one
    ``(key number, start, outcome, reason, local, rounds, ms)`` per get, every worker's together). A get
    counts if its key was stored (``stored_at``: key number -> when its put was) before it started."""

    def __init__(self, gets: list[tuple], stored_at: dict[int, float]) -> None:
        self.attempted = 0
        self.found = 0
        self.local = 0
        self.not_found = 0
        self.failed: Counter = Counter()
        self.wrong = 0
        self.unfinished = 0
        self.rounds: list[int] = []
        self.ms: list[float] = []
        for j, started, outcome, reason, local, rounds, ms in gets:
            stored = stored_at.get(j)
            if stored is None or stored >= started:  # at one instant, scenario calls come before nodes' events
                continue
            self.attempted += 1
            if outcome is None:
                self.unfinished += 1
                continue
            if outcome == "found":
                self.found += 1
            elif outcome == "not_found":
                self.not_found += 1
            elif outcome == "wrong":
                self.wrong += 1
            else:
                self.failed[reason] += 1
            if local:
                self.local += 1
            elif rounds is not None:
                self.rounds.append(rounds)
            self.ms.append(ms)

    def report(self) -> dict:
        return {"attempted": self.attempted, "found": self.found, "local": self.local, "not_found": self.not_found,
                "failed": dict(self.failed), "wrong_record": self.wrong, "unfinished": self.unfinished,
                "rounds": summary([float(r) for r in self.rounds]), "get_ms": summary(self.ms)}

    def success(self) -> float | None:
        return round(self.found / self.attempted, 6) if self.attempted else None


class DhtRun(OverlayRun):
    """Build with a DhtScenario, then ``run()`` for the report dict (the overlay report plus the DHT's).

    On several workers (:mod:`zmqagents.sim.parallel`) the workload is a scenario-wide call that every
    worker runs alike: each draws the same node for a put or a get (the draws read only what every
    worker knows: which nodes are up or paused), and the worker that owns the node starts the
    operation and records its outcome. :meth:`partial` holds those records; :meth:`report_from` merges
    every worker's. The one thing a worker cannot see is whether another worker's put was stored, so
    a get is started for every key put and counted only if its key was stored before it started (what
    a run in one process decides at the get's start; both skip the same gets)."""

    def __init__(self, sc: DhtScenario, *, worker: int = 0, workers: int = 1):
        self.tl = self.prepare(sc)
        self.dcfg = DhtConfig(replicas=sc.replicas, republish_interval=self.tl.republish)
        self.keys = [key_for(f"sim/{sc.seed}/{j}") for j in range(sc.keys)]
        self.publisher: dict[int, int] = {}  # key number -> node that put it (every worker knows)
        self.stored_at: dict[int, float] = {}  # key number -> when its put was stored (puts of this worker's nodes)
        self.put_failed: Counter = Counter()
        self.put_replicas: Counter = Counter()
        self.ops: dict[tuple[int, int], tuple[str, int, float]] = {}  # (node, op id) -> (phase, key number, start)
        self.gets: dict[str, list[tuple]] = {"before": [], "after": []}  # finished gets of this worker's nodes
        self.started = {"before": 0, "after": 0}  # gets this worker started (for the progress line)
        self.rounds_seen = [0] * ROUNDS_SHOWN  # gets before the crash that went to the network, by rounds
        self.waited: list[dict] = []
        self.holders_at: dict[str, dict] = {}
        self._signers: dict[int, bytes] = {}
        super().__init__(sc, worker=worker, workers=workers)
        self.drng = self.sim.rng("dht")
        self._schedule()

    @staticmethod
    def prepare(sc: DhtScenario) -> Timeline:
        """The run's timeline; the crash window is set from it (all crashes at once). Raises ValueError
        if ``seconds`` is too short."""
        tl = timeline(sc)
        sc.crash_window = (tl.crash_at, tl.crash_at)
        return tl

    def make_node(self, i: int, routing: RoutingCore, mem: Membership) -> OverlayNode:
        dht = DhtCore(routing, Identity.from_seed(self._signer_seed(i)), random.Random(f"{self.sc.seed}/dht/{i}"),
                      self.dcfg)
        return DhtNode(i, NodeCore(routing, mem, dht, contacts=self.by_id))

    def _signer_seed(self, i: int) -> bytes:
        return hashlib.sha256(b"zmqagents-sim-dht/%d/%d" % (self.sc.seed, i)).digest()

    # -- the workload -------------------------------------------------------------------------------

    def _schedule(self) -> None:
        tl, sim, rng = self.tl, self.sim, self.drng
        for j in range(self.sc.keys):
            sim.at(rng.uniform(*tl.puts), lambda now, j=j: self._put(j, now))
            sim.at(rng.uniform(*tl.gets_before), lambda now, j=j: self._get("before", j, now))
            sim.at(rng.uniform(*tl.gets_after), lambda now, j=j: self._get("after", j, now))
        # just after the crashes (scheduled at crash_at when the overlay was built), and before the gets after
        sim.at(tl.crash_at + 0.001, lambda now: self._count_holders("at_crash"))
        sim.at(tl.gets_after[0] - 0.001, lambda now: self._count_holders("before_gets_after"))

    def _live(self) -> int:
        """A random node that is up and not paused (the same draw in every worker)."""
        n, up, paused, rng = self.sc.nodes, self.up, self.paused, self.drng
        while True:
            i = rng.randrange(n)
            if up[i] and i not in paused:
                return i

    def _put(self, j: int, now: float) -> None:
        i = self._live()
        self.publisher[j] = i
        node = self.nodes[i]
        if node is None:
            return  # another worker's node: that worker puts
        oid = node.dht.put(self.keys[j], f"value-{j}", now)
        self.ops[(i, oid)] = ("put", j, now)
        self.sim.flush(self.sim.nodes[i])

    def _get(self, phase: str, j: int, now: float) -> None:
        i = self._live()
        node = self.nodes[i]
        if node is None:
            return  # another worker's node: that worker gets
        self.started[phase] += 1
        oid = node.dht.get(self.keys[j], now)
        self.ops[(i, oid)] = (phase, j, now)
        self.sim.flush(self.sim.nodes[i])

    def _on_event(self, simnode, ev, now: float) -> None:
        t = type(ev)
        if t is not DhtDone:
            OverlayRun._on_event(self, simnode, ev, now)
            return
        i = simnode.index
        op = self.ops.pop((i, ev.op_id), None)
        if op is None:
            return
        phase, j, started = op
        if ev.rounds > 0 and self.nodes[i].timeout_tick == now:
            self.waited.append({"kind": ev.kind, "node": i, "key": j, "at": round(now, 3), "rounds": ev.rounds,
                                "duration_s": round(now - started, 3)})
        if phase == "put":
            if ev.ok:
                self.stored_at[j] = now
                self.put_replicas[ev.stored] += 1
            else:
                self.put_failed[ev.reason] += 1
            return
        rec = ev.record
        reason = None
        if not ev.ok:
            outcome, reason = "failed", ev.reason
        elif rec is None:
            outcome = "not_found"
        elif (rec.key != self.keys[j] or rec.value != f"value-{j}"
              or rec.public_key != self.signers_pk(self.publisher[j])):
            outcome = "wrong"
        else:
            outcome = "found"
        local = ev.ok and rec is not None and ev.queries == 0
        rounds = ev.rounds if ev.ok and not local else None
        if phase == "before" and rounds is not None:
            self.rounds_seen[min(rounds, ROUNDS_SHOWN - 1)] += 1
        self.gets[phase].append((j, started, outcome, reason, local, rounds, (now - started) * 1000.0))

    def signers_pk(self, i: int) -> bytes:
        """Node ``i``'s signing key (derived from the run seed, so any worker knows another's)."""
        pk = self._signers.get(i)
        if pk is None:
            pk = self._signers[i] = Identity.from_seed(self._signer_seed(i)).public_key
        return pk

    def _count_holders(self, label: str) -> None:
        """Per key: how many of this worker's live nodes hold its record for others (summed over the
        workers in the report)."""
        w0 = time.perf_counter()
        live = [node.dht for i, node in enumerate(self.nodes)
                if node is not None and self.up[i] and node.dht.records]
        self.holders_at[label] = {"at": self.sim.now,
                                  "per_key": [sum(1 for d in live if d.held(key) is not None) for key in self.keys],
                                  "scan_wall_s": time.perf_counter() - w0}

    def counts(self) -> tuple[int, ...]:
        """The overlay's counts, then this worker's puts stored, gets started and found per phase,
        operations that waited on a hard timeout, and gets before the crash by lookup rounds."""
        found = {ph: sum(1 for g in self.gets[ph] if g[2] == "found") for ph in self.gets}
        return (*OverlayRun.counts(self), len(self.stored_at), self.started["before"], found["before"],
                self.started["after"], found["after"], len(self.waited), *self.rounds_seen)

    def _progress(self, now: float) -> None:
        c = self.link.totals() if self.link is not None else self.counts()
        puts, b_started, b_found, a_started, a_found, waited = c[2:8]
        hist = c[8:]
        # What is known so far, so that a long run stopped early still says something.
        print(f"sim-dht: t={now:.0f}s puts_ok={puts}/{self.sc.keys} "
              f"gets_before={b_found}/{b_started} (rounds p50={_hist_quantile(hist, 0.5)} "
              f"p99={_hist_quantile(hist, 0.99)}) gets_after={a_found}/{a_started} waited_hard_timeout={waited}",
              file=sys.stderr, flush=True)
        OverlayRun._progress(self, now)

    # -- the report ------------------------------------------------------------------------------------

    def partial(self) -> dict:
        part = OverlayRun.partial(self)
        stats: Counter = Counter()
        for node in self.nodes:
            if node is not None:
                stats.update({k: v for k, v in node.dht.stats.items() if v})
        gets = {ph: list(self.gets[ph]) for ph in self.gets}
        unfinished_puts = 0
        for (_i, _oid), (phase, j, started) in self.ops.items():
            if phase == "put":
                unfinished_puts += 1
            else:
                gets[phase].append((j, started, None, None, False, None, 0.0))
        part["dht"] = {"stored_at": self.stored_at, "publisher": self.publisher, "put_failed": self.put_failed,
                       "put_replicas": self.put_replicas, "unfinished_puts": unfinished_puts, "gets": gets,
                       "waited": self.waited, "holders": self.holders_at, "stats": stats}
        return part

    @classmethod
    def report_from(cls, sc: DhtScenario, parts: list[dict], wall: float) -> dict:
        """The overlay report of the workers' parts plus the DHT's (see the module docstring)."""
        report = build_report(sc, parts, wall)
        tl = timeline(sc)
        dparts = [p["dht"] for p in sorted(parts, key=lambda p: p["worker"])]
        stored_at: dict[int, float] = {}
        put_failed: Counter = Counter()
        put_replicas: Counter = Counter()
        stats: Counter = Counter()
        gets: dict[str, list] = {"before": [], "after": []}
        waited: list[dict] = []
        for d in dparts:
            stored_at.update(d["stored_at"])
            put_failed.update(d["put_failed"])
            put_replicas.update(d["put_replicas"])
            stats.update(d["stats"])
            for ph in gets:
                gets[ph] += d["gets"][ph]
            waited += d["waited"]
        waited.sort(key=lambda w: (w["at"], w["node"], w["key"]))
        publisher = dparts[0]["publisher"]  # every worker drew the same publishers
        b, a = _Phase(gets["before"], stored_at), _Phase(gets["after"], stored_at)
        rounds = summary([float(r) for r in b.rounds])
        report.update({
            "lookup_success": b.success(),
            "lookup_rounds_p50": rounds["p50"],
            "lookup_rounds_p99": rounds["p99"],
            "get_success_after_crash": a.success(),
            "dht": {
                "keys": sc.keys,
                "replicas": sc.replicas,
                "republish_interval_s": round(tl.republish, 3),
                "timeline_s": {"puts": _r(tl.puts), "gets_before": _r(tl.gets_before), "crash_at": round(tl.crash_at, 3),
                               "gets_after": _r(tl.gets_after)},
                "puts_stored": len(stored_at),
                "puts_failed": dict(put_failed),
                "puts_unfinished": sum(d["unfinished_puts"] for d in dparts),
                "put_replicas": {str(k): v for k, v in sorted(put_replicas.items())},
                "gets_before": b.report(),
                "gets_after": a.report(),
                "waited_hard_timeout": len(waited),
                "waited_examples": waited[:10],
                "holders": _holders(dparts, stored_at, publisher, parts[0]["up"]),
                "stats": {k: v for k, v in sorted(stats.items())},
            },
        })
        report["dht"]["violations"] = violations(report)
        report["exit_code"] = exit_code(report)
        return report


def _holders(dparts: list[dict], stored_at: dict[int, float], publisher: dict[int, int], up: list[bool]) -> dict:
    """Per scan (at the crash, before the gets after it): how many live nodes held the record of each
    key stored by then, summed over the workers; keys held by none, and those of them whose publisher is
    down too (``up``: at the end, the same as at the scans, which come after the one crash)."""
    out = {}
    for label in dparts[0]["holders"]:
        scans = [d["holders"][label] for d in dparts]
        at = scans[0]["at"]
        counts: Counter = Counter()
        none = lost = 0
        for j in sorted(j for j, t in stored_at.items() if t <= at):
            h = sum(s["per_key"][j] for s in scans)
            counts[h] += 1
            if h == 0:
                none += 1
                if not up[publisher[j]]:
                    lost += 1
        out[label] = {"live_holders_per_key": {str(k): v for k, v in sorted(counts.items())},
                      "keys_without_live_holder": none, "keys_lost": lost,
                      "scan_wall_s": round(max(s["scan_wall_s"] for s in scans), 2)}
    return out


def _hist_quantile(hist: tuple[int, ...], q: float) -> int | None:
    """The nearest-rank ``q`` quantile of the values a histogram (count per value 0, 1, ...) counts."""
    total = sum(hist)
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return value
    return len(hist) - 1


def _r(pair: tuple[float, float]) -> list[float]:
    return [round(pair[0], 3), round(pair[1], 3)]


def violations(report: dict) -> list[str]:
    """The DHT rules a report breaks (see the module docstring), as short sentences."""
    d = report["dht"]
    out = []
    wrong = d["gets_before"]["wrong_record"] + d["gets_after"]["wrong_record"]
    if wrong:
        out.append(f"correctness: {wrong} gets returned a record other than the one put")
    if d["puts_stored"] < d["keys"]:
        out.append(f"liveness: {d['keys'] - d['puts_stored']} of {d['keys']} puts were not stored")
    if report["lookup_success"] is not None and report["lookup_success"] < 1.0:
        out.append(f"liveness: lookup_success {report['lookup_success']} < 1")
    target = TARGET_AFTER_CRASH if report["crashes"] else 1.0
    after = report["get_success_after_crash"]
    if after is not None and after < target:
        out.append(f"liveness: get_success_after_crash {after} < {target}")
    if d["waited_hard_timeout"]:
        out.append(f"liveness: {d['waited_hard_timeout']} operations waited on a hard timeout after a peer answered")
    return out


def exit_code(report: dict) -> int:
    base = overlay_exit_code(report)
    bad = report["dht"]["violations"]
    if base == EXIT_CORRECTNESS or any(v.startswith("correctness") for v in bad):
        return EXIT_CORRECTNESS
    if base == EXIT_LIVENESS or bad:
        return EXIT_LIVENESS
    return EXIT_OK


def run(sc: DhtScenario) -> dict:
    return DhtRun(sc).run()
