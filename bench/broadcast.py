#!/usr/bin/env python3
"""Mesh-wide broadcast and a topic on real nodes: delivery, latency, redundancy, cost, and a kill mid-stream.

Layout (tcp on 127.0.0.1, CURVE on every link, default configs): one *seed* process runs the seed Node,
which is also the publisher; ``--victims`` nodes run one per process (SIGKILLed in the last phase); the
other nodes are spread over ``--procs`` worker processes, several Nodes per event loop. Every node
joins through the seed, is on the mesh-wide topic (``node.subscribe("")``) and ``--subscribers`` of
them (never the publisher) also subscribe to ``bench/topic``. Each subscription records (origin,
topic, seq, wall time); publications carry their wall send time (one box, one clock).

Phases (each ends with a drain of ``--drain`` s before counting; ``--warmup`` mesh-wide publications
go first and are not counted: the first messages flood every link until the prunes shape the tree):

1. ``mesh``: ``--count`` mesh-wide publications at ``--rate`` per s. ``delivery`` = delivered
   (publication, other live node) pairs / all such pairs; ``latency_ms_p50`` / ``_max`` over the
   delivered pairs; ``rmr`` = payloads received by every node (the broadcast core's
   ``payloads_received``) / (pairs) - 1; ``cpu_us_per_delivery`` = (CPU of every node process during
   the phase - their idle CPU, measured for ``--idle-s`` just before, over the same time) / deliveries;
   ``busiest_process_cores``: the CPU of the busiest node process over the phase, in cores (its nodes
   share one event loop: near 1.0 that process was saturated, and latency there is queueing, not the
   protocol; the box's own load is under ``env``).
2. ``topic``: the same count on ``bench/topic``: ``topic_delivery`` over its subscribers;
   ``non_subscriber_payloads`` = payloads received in this phase by nodes that neither subscribe to it
   nor forward it (the broadcast cores' ``unwanted_payloads``: interest travels the tree, so these get
   none once their declarations are heard, protocols/broadcast.md 6); ``payloads_to_non_subscribers``
   counts every non-subscriber's, the tree's inner nodes between subscribers included.
3. ``rate``: mesh-wide bursts of ``--rate-step-s`` s at rising rates; ``publish_rate_sustained`` =
   the highest rate whose delivery was >= 0.999 (the origin's own limit, BroadcastConfig.origin_rate,
   caps what one origin may send).
4. ``kill``: a mesh-wide stream of ``--count`` publications; after a third of them every victim
   process is SIGKILLed (``kill_stream``: its figures over the surviving nodes).
5. ``after_kill``: phases 1 to 3 again over the survivors, right after the kill (membership may not
   have declared every victim dead yet): every key of the top level.

Prints one JSON object on stdout; progress on stderr.

    python bench/broadcast.py           # 100 nodes, 30 topic subscribers, 10 victims
    python bench/broadcast.py --quick   # 16 nodes, 5 subscribers, 2 victims (< 60 s)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    BoxLoad,
    Child,
    close_nodes,
    cpu_ns,
    emit,
    environment,
    failed,
    log,
    loop_name,
    percentile,
    prepare_node_process,
    run,
    serve_commands,
    stop_all,
)

SCRIPT = Path(__file__).resolve()
# The broadcast core's counters reported per phase (where the payloads and control envelopes went).
COUNTERS = ("pushed", "filtered", "unwanted_payloads", "wants_sent", "ihave_sent", "grafts_sent", "graft_answered", "grafts_late", "gap_pulls", "graft_gave_up",
            "tree_grafts", "prunes_sent", "duplicates", "optimized", "missing_full", "ihave_queue_dropped")
TOPIC = "bench/topic"
MESH = ""


# =====================================================================================
# children
# =====================================================================================


async def role_nodes(args) -> None:
    from zmqagents.node import Node

    prepare_node_process(args.verbose)
    bootstrap = [args.contact] if args.contact else []
    nodes = [Node(listen="tcp://127.0.0.1:0", bootstrap=bootstrap) for _ in range(args.node_count)]
    by_hex = {n.node_id.hex(): n for n in nodes}
    got: list[list] = []  # [node hex, origin hex, topic, seq, wall time]
    readers: list[asyncio.Task] = []
    emit({"event": "loaded", "pid": os.getpid(), "loop": loop_name()})

    async def read(node, topic: str) -> None:
        me = node.node_id.hex()
        async for m in node.subscribe(topic):
            got.append([me, m.src.hex(), topic, m.seq, time.time()])

    async def start(cmd: dict) -> dict:
        await asyncio.gather(*(n.start() for n in nodes))
        for n in nodes:
            readers.append(asyncio.create_task(read(n, MESH)))
        return {"event": "started", "ids": list(by_hex), "contacts": [str(n.contact) for n in nodes]}

    async def subscribe(cmd: dict) -> dict:
        for h in cmd["ids"]:
            if h in by_hex:
                readers.append(asyncio.create_task(read(by_hex[h], TOPIC)))
        await asyncio.sleep(0)
        return {"event": "subscribed"}

    async def publish(cmd: dict) -> dict:
        node = nodes[0]
        sent = []
        period = 1.0 / cmd["rate"]
        t0 = time.monotonic()
        refused = 0
        for k in range(cmd["count"]):
            delay = t0 + k * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.time()
            try:
                seq = await node.publish(cmd["topic"], {"k": k, "t": t})
            except ValueError:  # over the origin's own rate limit: counted, not sent
                refused += 1
                continue
            sent.append([cmd["topic"], seq, t])
        return {"event": "published", "origin": node.node_id.hex(), "sent": sent, "refused": refused}

    def collect(cmd: dict) -> dict:
        out = list(got)
        got.clear()
        stats = {n.node_id.hex(): {**n.core.broadcast.stats, "neighbours": len(n.core.broadcast.neighbours())}
                 for n in nodes}
        return {"event": "collected", "got": out, "stats": stats}

    try:
        await serve_commands({"start": start, "subscribe": subscribe, "publish": publish, "collect": collect})
    finally:
        for task in readers:
            task.cancel()
        await close_nodes(nodes)


ROLES = {"nodes": role_nodes}


# =====================================================================================
# orchestrator
# =====================================================================================


class Mesh:
    """The running processes and what they report."""

    def __init__(self, args):
        self.args = args
        self.children: list[Child] = []
        self.ids: dict[Child, list[str]] = {}
        self.victims: list[Child] = []
        self.seed: Child | None = None
        self.dead: set[str] = set()
        self.subscribers: set[str] = set()
        self.stats: dict[str, dict] = {}

    def ask(self, child: Child, cmd: dict, timeout: float = 60) -> dict:
        child.send(cmd)
        return child.read(timeout)

    def live(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is None]

    def all_ids(self) -> list[str]:
        return [h for c in self.children for h in self.ids.get(c, []) if h not in self.dead]

    def cpu(self) -> dict[Child, int]:
        return {c: cpu_ns(c.pid) for c in self.live()}

    def cpu_since(self, before: dict[Child, int]) -> int:
        """CPU (ns) the processes still alive used since ``before`` (a killed one's share is lost)."""
        now = self.cpu()
        return sum(t - before[c] for c, t in now.items() if c in before)

    def idle_cpu_per_s(self, seconds: float) -> float:
        """CPU (ns per s) every node process uses with nothing published: the baseline a phase's CPU is
        measured above (membership probes, timers)."""
        before = self.cpu()
        t0 = time.monotonic()
        time.sleep(seconds)
        return self.cpu_since(before) / (time.monotonic() - t0)

    def collect(self) -> tuple[list[list], dict[str, dict]]:
        got: list[list] = []
        stats: dict[str, dict] = {}
        for c in self.live():
            r = self.ask(c, {"cmd": "collect"})
            got += r["got"]
            stats.update(r["stats"])
        return got, stats


def phase(mesh: Mesh, name: str, topic: str, count: int, rate: float, kill_after: int | None = None) -> dict:
    """Publish ``count`` on ``topic`` at ``rate`` from the seed, drain, and measure (module docstring)."""
    args = mesh.args
    mesh.collect()  # drop what earlier phases left
    before_stats = mesh.collect()[1]
    before = {h: s.get("payloads_received", 0) for h, s in before_stats.items()}
    idle = mesh.idle_cpu_per_s(args.idle_s)
    cpu0 = mesh.cpu()
    t0 = time.monotonic()
    if kill_after is None:
        pub = mesh.ask(mesh.seed, {"cmd": "publish", "topic": topic, "count": count, "rate": rate},
                       timeout=count / rate + 60)
    else:
        mesh.seed.send({"cmd": "publish", "topic": topic, "count": count, "rate": rate})
        time.sleep(kill_after / rate)
        for v in mesh.victims:
            v.kill()  # SIGKILL by PID
            mesh.dead.update(mesh.ids[v])
        log(f"broadcast: killed {len(mesh.victims)} victim processes mid-stream")
        pub = mesh.seed.read(count / rate + 60)
    time.sleep(args.drain)
    wall = time.monotonic() - t0
    per_proc = {c: t - cpu0[c] for c, t in mesh.cpu().items() if c in cpu0}
    cpu = sum(per_proc.values()) - idle * wall
    got, stats = mesh.collect()
    origin = pub["origin"]
    sent = {(t, seq): ts for t, seq, ts in pub["sent"]}
    targets = [h for h in mesh.all_ids() if h != origin and (topic == MESH or h in mesh.subscribers)]
    seen: set[tuple[str, int, str]] = set()
    lat: list[float] = []
    dup = 0
    for node, o, t, seq, at in got:
        if o != origin or t != topic or (t, seq) not in sent:
            continue
        key = (t, seq, node)
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        if node in targets:
            lat.append((at - sent[(t, seq)]) * 1000.0)
    pairs = len(sent) * len(targets)
    delivered = sum(1 for t, seq, node in seen if node in targets)
    payloads = sum(s.get("payloads_received", 0) - before.get(h, 0) for h, s in stats.items() if h not in mesh.dead)
    non_sub = sum(s.get("payloads_received", 0) - before.get(h, 0) for h, s in stats.items()
                  if h not in mesh.dead and h not in mesh.subscribers and h != origin)
    reached = len(targets) + 1
    counters: dict[str, int] = {}
    for h, s in stats.items():
        if h in mesh.dead:
            continue
        b = before_stats.get(h, {})
        for k in COUNTERS:
            counters[k] = counters.get(k, 0) + s.get(k, 0) - b.get(k, 0)
    return {
        "phase": name, "topic": topic, "published": len(sent), "refused_at_origin": pub["refused"],
        "targets": len(targets), "pairs": pairs, "delivered": delivered,
        "delivery": round(delivered / pairs, 6) if pairs else None,
        "duplicates_to_app": dup,
        "latency_ms_p50": _r(percentile(lat, 0.5)), "latency_ms_p99": _r(percentile(lat, 0.99)),
        "latency_ms_max": _r(percentile(lat, 1.0)),
        "rmr": round(payloads / (len(sent) * (reached - 1)) - 1, 4) if sent and topic == MESH else None,
        "payloads_received": payloads,
        # payloads at nodes that neither subscribe nor forward (the cores' unwanted_payloads), and at every
        # non-subscriber (forwarders included)
        "non_subscriber_payloads": counters["unwanted_payloads"] if topic != MESH else None,
        "payloads_to_non_subscribers": non_sub if topic != MESH else None,
        "cpu_us_per_delivery": round(cpu / 1000 / delivered, 1) if delivered else None,
        # Several nodes share a worker process (one event loop, one core at most): the busiest process's CPU
        # over the phase, in cores. Near 1 it saturated, and its nodes' deliveries queued behind each other.
        "busiest_process_cores": round(max(per_proc.values()) / 1e9 / wall, 3) if per_proc else None,
        "idle_cpu_percent": round(idle / 1e7, 2),
        "core": counters,  # the broadcast cores' counters over the phase, summed over the live nodes
        "latency_ms_max_by_publication": _by_publication(got, origin, topic, sent, set(targets)),
        "neighbours_p50": percentile(sorted(s["neighbours"] for h, s in stats.items() if h not in mesh.dead), 0.5),
    }


def rate_sweep(mesh: Mesh, name: str) -> tuple[float | None, list[dict]]:
    """Mesh-wide bursts at the rising ``--rates``: the highest whose delivery was >= 0.999 with nothing
    refused at the origin, and each rate's figures (the sweep stops at the first that fails)."""
    args = mesh.args
    rates = []
    sustained = None
    for rate in args.rates:
        p = phase(mesh, f"{name}{rate:g}", MESH, max(1, round(rate * args.rate_step_s)), rate)
        rates.append({"rate": rate, "delivery": p["delivery"], "refused_at_origin": p["refused_at_origin"],
                      "latency_ms_max": p["latency_ms_max"], "cpu_us_per_delivery": p["cpu_us_per_delivery"]})
        log(f"broadcast: {name} {rate:g}/s delivery {p['delivery']}")
        if p["delivery"] is not None and p["delivery"] >= 0.999 and not p["refused_at_origin"]:
            sustained = rate
        else:
            break
    return sustained, rates


def _by_publication(got: list[list], origin: str, topic: str, sent: dict, targets: set[str]) -> list:
    """Per publication in order, the latest delivery's latency (ms; None: none delivered): shows when a
    phase was slow (the first publications after a kill, or all of them)."""
    worst: dict[int, float] = {}
    for node, o, t, seq, at in got:
        if o == origin and t == topic and (t, seq) in sent and node in targets:
            worst[seq] = max(worst.get(seq, 0.0), (at - sent[(t, seq)]) * 1000.0)
    return [_r(worst.get(seq)) for (_t, seq) in sorted(sent, key=lambda k: k[1])]


def _r(x):
    return None if x is None else round(x, 2)


def orchestrate(args) -> int:
    box = BoxLoad()
    mesh = Mesh(args)
    out: dict = {"benchmark": "broadcast"}
    try:
        seed = Child(SCRIPT, "nodes", "--node-count", "1", name="seed")
        mesh.children.append(seed)
        mesh.seed = seed
        seed.read(30)
        r = mesh.ask(seed, {"cmd": "start"})
        mesh.ids[seed] = r["ids"]
        contact = r["contacts"][0]
        rest = args.nodes - 1 - args.victims
        per = [rest // args.procs + (1 if i < rest % args.procs else 0) for i in range(args.procs)]
        others = [Child(SCRIPT, "nodes", "--node-count", "1", "--contact", contact, name=f"victim{i}")
                  for i in range(args.victims)]
        mesh.victims = list(others)
        others += [Child(SCRIPT, "nodes", "--node-count", str(k), "--contact", contact, name=f"worker{i}")
                   for i, k in enumerate(per) if k]
        mesh.children += others
        for c in others:
            c.read(60)
        for c in others:
            c.send({"cmd": "start"})
        for c in others:
            mesh.ids[c] = c.read(120)["ids"]
        workers = [c for c in others if c not in mesh.victims]
        pool = [h for c in workers for h in mesh.ids[c]]
        mesh.subscribers = set(pool[:: max(1, len(pool) // args.subscribers)][: args.subscribers])
        for c in mesh.children:
            mesh.ask(c, {"cmd": "subscribe", "ids": sorted(mesh.subscribers)})
        log(f"broadcast: {args.nodes} nodes up, {len(mesh.subscribers)} on {TOPIC}; settling {args.settle:g} s")
        time.sleep(args.settle)
        warm = phase(mesh, "warmup", MESH, args.warmup, args.rate)  # the tree forms (first messages flood)
        log(f"broadcast: warm-up delivery {warm['delivery']} rmr {warm['rmr']}")
        mesh_phase = phase(mesh, "mesh", MESH, args.count, args.rate)
        log(f"broadcast: mesh {mesh_phase}")
        topic_phase = phase(mesh, "topic", TOPIC, args.count, args.rate)
        log(f"broadcast: topic {topic_phase}")
        sustained, rates = rate_sweep(mesh, "rate")
        kill = phase(mesh, "kill", MESH, args.count, args.rate, kill_after=max(1, args.count // 3))
        log(f"broadcast: after kill {kill}")
        # the same figures over the survivors, the dead still in their tables until membership says so
        mesh_after = phase(mesh, "mesh_after_kill", MESH, args.count, args.rate)
        topic_after = phase(mesh, "topic_after_kill", TOPIC, args.count, args.rate)
        sustained_after, rates_after = rate_sweep(mesh, "rate_after_kill")
        log(f"broadcast: after kill, mesh {mesh_after['delivery']} topic {topic_after['delivery']} "
            f"rate {sustained_after}")
        out.update({
            "nodes": args.nodes, "subscribers": len(mesh.subscribers), "victims": args.victims,
            "delivery": mesh_phase["delivery"], "topic_delivery": topic_phase["delivery"],
            "latency_ms_p50": mesh_phase["latency_ms_p50"], "latency_ms_max": mesh_phase["latency_ms_max"],
            "rmr": mesh_phase["rmr"], "non_subscriber_payloads": topic_phase["non_subscriber_payloads"],
            "payloads_to_non_subscribers": topic_phase["payloads_to_non_subscribers"],
            "publish_rate_sustained": sustained, "cpu_us_per_delivery": mesh_phase["cpu_us_per_delivery"],
            "busiest_process_cores": mesh_phase["busiest_process_cores"],
            "nodes_per_worker_process": max(len(mesh.ids[c]) for c in mesh.children),
            # the stream the kill hit (delivery over the survivors), then the figures measured after it
            "kill_stream": {k: kill[k] for k in ("delivery", "latency_ms_p50", "latency_ms_max", "rmr", "targets",
                                                 "cpu_us_per_delivery")},
            "after_kill": {
                "targets": mesh_after["targets"],
                "delivery": mesh_after["delivery"], "topic_delivery": topic_after["delivery"],
                "latency_ms_p50": mesh_after["latency_ms_p50"], "latency_ms_max": mesh_after["latency_ms_max"],
                "rmr": mesh_after["rmr"], "non_subscriber_payloads": topic_after["non_subscriber_payloads"],
                "payloads_to_non_subscribers": topic_after["payloads_to_non_subscribers"],
                "publish_rate_sustained": sustained_after, "cpu_us_per_delivery": mesh_after["cpu_us_per_delivery"]},
            "phases": [warm, mesh_phase, topic_phase, kill, mesh_after, topic_after], "rates": rates,
            "rates_after_kill": rates_after,
            "aims": {"delivery_1": mesh_phase["delivery"] == 1.0, "topic_delivery_1": topic_phase["delivery"] == 1.0,
                     "non_subscriber_payloads_0": topic_phase["non_subscriber_payloads"] == 0,
                     "latency_ms_max_le_300": (mesh_phase["latency_ms_max"] or 1e9) <= 300,
                     "rmr_le_0.2": (mesh_phase["rmr"] if mesh_phase["rmr"] is not None else 1e9) <= 0.2},
            "params": {k: getattr(args, k) for k in ("nodes", "procs", "victims", "subscribers", "count", "rate",
                                                     "drain", "settle", "rates", "rate_step_s", "warmup", "idle_s")},
            "env": {**environment(), **box.report()},
        })
        emit(out)
        return 0
    except BenchError as exc:
        return failed("broadcast", exc, mesh.children)
    finally:
        stop_all(mesh.children)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 nodes, 5 subscribers, 2 victims, short phases")
    p.add_argument("--nodes", type=int, help="nodes in all, seed and victims included (default 100; quick 16)")
    p.add_argument("--procs", type=int, help="worker processes (default 4; quick 2)")
    p.add_argument("--victims", type=int, help="single-node processes SIGKILLed mid-stream (default 10; quick 2)")
    p.add_argument("--subscribers", type=int, help="nodes on the topic (default 30; quick 5)")
    p.add_argument("--count", type=int, help="publications per phase (default 60; quick 15)")
    p.add_argument("--rate", type=float, default=10.0, help="publications per s in the phases (default 10)")
    p.add_argument("--rates", type=float, nargs="*", help="rates tried for publish_rate_sustained (default 20 50 100 200)")
    p.add_argument("--rate-step-s", type=float, default=2.0, help="seconds of publishing per rate tried")
    p.add_argument("--drain", type=float, help="seconds after a phase before counting (default 3; quick 2)")
    p.add_argument("--settle", type=float, help="seconds after every node started (default 5; quick 3)")
    p.add_argument("--warmup", type=int, help="mesh-wide publications before the measured phases (default 20; quick 10)")
    p.add_argument("--idle-s", type=float, help="seconds of idle CPU measured before each phase (default 3; quick 1)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    p.add_argument("--contact", help=argparse.SUPPRESS)
    p.add_argument("--node-count", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        run(ROLES[args.role](args))
        return 0
    q = args.quick
    args.nodes = args.nodes or (16 if q else 100)
    args.procs = args.procs or (2 if q else 4)
    args.victims = args.victims if args.victims is not None else (2 if q else 10)
    args.subscribers = args.subscribers or (5 if q else 30)
    args.count = args.count or (15 if q else 60)
    args.rates = args.rates or ([20.0, 50.0] if q else [20.0, 50.0, 100.0, 200.0])
    args.drain = args.drain if args.drain is not None else (2.0 if q else 3.0)
    args.settle = args.settle if args.settle is not None else (3.0 if q else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (10 if q else 20)
    args.idle_s = args.idle_s if args.idle_s is not None else (1.0 if q else 3.0)
    if args.nodes < args.victims + 3:
        p.error("--nodes must exceed --victims by 3 at least")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
