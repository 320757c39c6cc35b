"""Run N membership cores over the simulator and measure failure detection.

Each node runs one :class:`~zmqagents.core.membership.Membership` core, given a member view the way a
routing table would give it: all other nodes for N <= ``full_view_max``, else a random subset of
``k * log2(N)`` nodes. The driver plays the table owner: a ``Failed`` member is removed and a random
replacement is added (a Kademlia table promotes one from its replacement cache), an ``Alive`` member
that is not held is added back.

Scenario knobs: loss and latency, crashes (``crash`` nodes at random times in ``crash_window``),
pauses (a fraction of nodes stalled ``pause_duty`` of the time in cycles of ``pause_period``
seconds during ``pause_window``: they neither read nor fire timers while paused, and catch up on
waking), and one partition (``partition`` = (start, end, fraction of nodes cut off)).

Measured:

* ``detect_first_s`` / ``detect_all_s`` per crash: from the crash until the first node, and until the
  last of the nodes that held the crashed node at crash time, reports it ``Failed``; summarized as
  p50 / p90 / p100 over crashes. ``detect_holder_s``: the same per (holder, crash) pair.
  ``undetected``: holder/crash pairs never reported by the end of the run.
* ``false_positives``: ``Failed`` events whose subject was up (not crashed) when reported, anywhere;
  ``healthy_false_positives`` excludes subjects that were paused (stalled nodes may be declared
  dead, that is what the detector is for; healthy ones must not be).
* traffic: messages and (sampled) encoded bytes per node per second, per message type.
* wall time and peak RSS of the process.

Run ``python -m zmqagents.sim.membership_run --nodes 1000 --seconds 120 --loss 0.01 --crash 50`` for
a JSON report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

from ..core.membership import Alive, Failed, Left, Membership, MembershipConfig, Refuted, Suspect
from ..identity import Contact, node_id_of
from .engine import Simulator, bulk_build, frozen_heap
from .faults import Paused
from .report import detection, engine_counts
from .scenario import SimScenario


@dataclass
class Scenario(SimScenario):
    """The membership run's scenario: the shared knobs (:class:`~zmqagents.sim.scenario.SimScenario`;
    ``crash_window`` defaults to (seconds/6, seconds*2/3)) with its own defaults, and its own knobs:
    the member view (there is no routing table here), graceful leaves, the order in which a paused
    node catches up, and an idle window."""

    seconds: float = 120.0
    loss: float = 0.01
    k: int = 20  # view size k * log2(N) above full_view_max
    full_view_max: int = 100
    pause_timers_first: bool = False  # on waking, fire overdue timers before reading the backlog
    leave: int = 0  # nodes that leave gracefully at random times in crash_window
    idle_window: tuple[float, float] | None = None  # measure idle traffic here (no crash/pause/partition)


def sim_contact(i: int) -> Contact:
    """The contact of simulated node ``i``: a stand-in 32-byte key and a made-up endpoint."""
    pk = hashlib.sha256(b"zmqagents-sim-key/%d" % i).digest()
    return Contact(pk, f"tcp://10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:7000")


class MembershipRun:
    """Build with a Scenario, then ``run()`` for the report dict."""

    def __init__(self, sc: Scenario):
        self.sc = sc
        n = sc.nodes
        self.cfg = MembershipConfig.profile(sc.profile, **sc.config)
        self.sim = Simulator(sc.seed, latency=sc.latency, loss=sc.loss, on_event=self._on_event,
                             sample_every=sc.byte_sample)
        self.rng = self.sim.rng("scenario")
        self.contacts = [sim_contact(i) for i in range(n)]
        self.ids = [node_id_of(c.public_key) for c in self.contacts]
        self.index = {nid: i for i, nid in enumerate(self.ids)}
        if n - 1 <= sc.full_view_max:
            self.view_size = n - 1
        else:
            self.view_size = min(n - 1, round(sc.k * math.log2(n)))
        self.cores: list[Membership] = []
        self.up = [True] * n
        self.crashed_at: dict[int, float] = {}
        self.left_at: dict[int, float] = {}
        self.paused: set[int] = set()
        self.holders: dict[int, set[int]] = {}  # crashed index -> holder indices at crash time
        self.detected: dict[int, dict[int, float]] = {}  # crashed index -> {observer: time}
        self.false_positives: list[tuple[float, int, int]] = []  # (time, observer, subject)
        self.suspects_of_live = 0
        self.refutations = 0
        self.left_events = 0
        self.failed_of_left = 0
        self.re_added = 0
        self.replaced = 0
        with bulk_build():
            self._build()

    # -- building ----------------------------------------------------------------------------------------

    def _build(self) -> None:
        sc = self.sc
        n = sc.nodes
        rng = self.rng
        if sc.pause_fraction > 0:
            self.paused = set(rng.sample(range(n), round(sc.pause_fraction * n)))
        pw = sc.pause_span()
        for i in range(n):
            if self.view_size == n - 1:
                view = [j for j in range(n) if j != i]
            else:
                view = rng.sample(range(n - 1), self.view_size)
                view = [j if j < i else j + 1 for j in view]
            contact = self.contacts[i]
            cfg = self.cfg
            contacts = self.contacts

            def factory(nid, core_rng, contact=contact, view=view):
                core = Membership(contact, core_rng, cfg)
                core.set_network_size(n)
                for j in view:
                    core.add(contacts[j], 0.0)
                self.cores.append(core)
                if i in self.paused:
                    phase = core_rng.random() * sc.pause_period
                    return [Paused(core, self.sim, pw[0], pw[1], sc.pause_period, sc.pause_duty, phase,
                                    sc.pause_timers_first)]
                return [core]

            self.sim.add_node(factory, node_id=self.ids[i])
        cw = sc.crash_window or (sc.seconds / 6, sc.seconds * 2 / 3)
        candidates = [i for i in range(n) if i not in self.paused]
        victims = rng.sample(candidates, min(len(candidates), sc.crash + sc.leave))
        for v in victims[: sc.crash]:
            self.sim.at(rng.uniform(*cw), lambda now, v=v: self._crash(v, now))
        for v in victims[sc.crash:]:
            node = self.sim.nodes[v]
            self.sim.at(rng.uniform(*cw), lambda now, v=v: self._leave(v, now), node)
        if sc.partition is not None:
            t0, t1, frac = sc.partition
            side = rng.sample(range(n), round(frac * n))
            self.sim.at(t0, lambda now: self.sim.partition([self.ids[j] for j in side]))
            self.sim.at(t1, lambda now: self.sim.heal())
        if sc.idle_window is not None:
            self.sim.window = sc.idle_window

    def _crash(self, v: int, now: float) -> None:
        self.up[v] = False
        self.crashed_at[v] = now
        nid = self.ids[v]
        self.holders[v] = {i for i, core in enumerate(self.cores) if self.up[i] and nid in core}
        self.detected[v] = {}
        self.sim.crash(nid)

    def _leave(self, v: int, now: float) -> None:
        until = self.cores[v].leave(now)
        self.left_at[v] = now
        self.sim.at(until, lambda t: self._stop(v, t))

    def _stop(self, v: int, now: float) -> None:
        self.up[v] = False
        self.sim.crash(self.ids[v])

    # -- the table owner -----------------------------------------------------------------------------------

    def _on_event(self, node, ev, now: float) -> None:
        i = node.index
        core = self.cores[i]
        t = type(ev)
        if t is Failed:
            j = self.index.get(ev.node_id)
            if j is None:
                return
            if j in self.left_at:
                self.failed_of_left += 1
            elif self.up[j]:
                self.false_positives.append((now, i, j))
            else:
                d = self.detected.get(j)
                if d is not None and i not in d:
                    d[i] = now
            # Replace it, as a table promotes a contact from its replacement cache (which holds
            # nodes recently seen alive: here, a random live node).
            for _ in range(8):
                r = self.rng.randrange(len(self.ids))
                if r != i and self.up[r] and self.ids[r] not in core:
                    core.add(self.contacts[r], now)
                    self.replaced += 1
                    break
        elif t is Suspect:
            j = self.index.get(ev.node_id)
            if j is not None and self.up[j]:
                self.suspects_of_live += 1
        elif t is Alive:
            nid = node_id_of(ev.contact.public_key)
            if nid not in core and core.add(ev.contact, now, ev.incarnation):
                self.re_added += 1
        elif t is Left:
            self.left_events += 1
        elif t is Refuted:
            self.refutations += 1

    # -- running -------------------------------------------------------------------------------------------

    def run(self) -> dict:
        sc = self.sc
        t0 = time.perf_counter()
        with frozen_heap():
            rep = self.sim.run(until=sc.seconds)
        wall = time.perf_counter() - t0
        n = sc.nodes
        fp_subjects = {j for _, _, j in self.false_positives}
        healthy_fp = [x for x in self.false_positives if x[2] not in self.paused]
        stats: Counter = Counter()
        for core in self.cores:
            stats.update(core.stats)
        sim = self.sim
        avg = sim.sampled_bytes / sim.sampled if sim.sampled else 0.0
        node_seconds = n * sc.seconds
        index = self.index
        live_dead = sum(1 for i, core in enumerate(self.cores) if self.up[i]
                        for nid, _, _ in core.tombstones() if self.up[index[nid]])
        report = {
            "scenario": {**asdict(self.sc), "view_size": self.view_size,
                         "transmit_limit": self.cores[0].transmit_limit if self.cores else None},
            "crashes": len(self.crashed_at),
            **detection(self),
            "false_positives": len(self.false_positives),
            "false_positive_subjects": len(fp_subjects),
            "healthy_false_positives": len(healthy_fp),
            "paused_nodes": len(self.paused),
            "paused_declared_dead": len({j for _, _, j in self.false_positives if j in self.paused}),
            "suspects_of_live": self.suspects_of_live,
            "refutations": self.refutations,
            "left_events": self.left_events,
            "failed_of_left": self.failed_of_left,
            "live_held_dead_at_end": live_dead,
            "replaced": self.replaced,
            "re_added": self.re_added,
            "msgs_per_node_s": round(rep.sent / node_seconds, 3),
            "bytes_per_node_s": round(rep.sent * avg / node_seconds, 1),
            "avg_msg_bytes": round(avg, 1),
            "by_type_per_node_s": {k: round(v / node_seconds, 3) for k, v in sorted(sim.by_type.items())},
            "sim": engine_counts(rep),
            "stats": {k: v for k, v in sorted(stats.items()) if v},
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if sc.idle_window is not None:
            w0, w1 = sc.idle_window
            wavg = sim.window_bytes / sim.window_sampled if sim.window_sampled else avg
            report["idle_msgs_per_node_s"] = round(sim.window_sent / (n * (w1 - w0)), 3)
            report["idle_bytes_per_node_s"] = round(sim.window_sent * wavg / (n * (w1 - w0)), 1)
        return report


def run(sc: Scenario) -> dict:
    return MembershipRun(sc).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zmqagents.sim.membership_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loss", type=float, default=0.01)
    p.add_argument("--latency", default="lognormal:5ms:0.5")
    p.add_argument("--profile", default="lan")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="MembershipConfig override")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--crash", type=int, default=0)
    p.add_argument("--crash-window", type=float, nargs=2, default=None)
    p.add_argument("--leave", type=int, default=0)
    p.add_argument("--pause", type=float, default=0.0, help="fraction of nodes paused")
    p.add_argument("--pause-duty", type=float, default=0.9)
    p.add_argument("--pause-period", type=float, default=1.0)
    p.add_argument("--pause-window", type=float, nargs=2, default=None)
    p.add_argument("--pause-timers-first", action="store_true")
    p.add_argument("--partition", type=float, nargs=3, default=None, metavar=("START", "END", "FRACTION"))
    p.add_argument("--idle-window", type=float, nargs=2, default=None)
    p.add_argument("--byte-sample", type=int, default=32)
    a = p.parse_args(argv)
    overrides = {}
    for item in a.set:
        name, _, value = item.partition("=")
        overrides[name] = float(value) if "." in value or "e" in value else int(value)
    sc = Scenario(nodes=a.nodes, seconds=a.seconds, seed=a.seed, loss=a.loss, latency=a.latency, profile=a.profile,
                  config=overrides, k=a.k, crash=a.crash,
                  crash_window=tuple(a.crash_window) if a.crash_window else None, leave=a.leave,
                  pause_fraction=a.pause, pause_duty=a.pause_duty, pause_period=a.pause_period,
                  pause_window=tuple(a.pause_window) if a.pause_window else None,
                  pause_timers_first=a.pause_timers_first,
                  partition=tuple(a.partition) if a.partition else None,
                  idle_window=tuple(a.idle_window) if a.idle_window else None, byte_sample=a.byte_sample)
    report = run(sc)
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
