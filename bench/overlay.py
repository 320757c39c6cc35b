#!/usr/bin/env python3
"""Overlay at scale: join time, failure detection and idle cost of N real nodes.

What it measures (tcp on 127.0.0.1, CURVE on every link, default configs):

* Layout. One *seed* Node in its own process starts first. Then, at t0 (wall
  clock, ``time.time()``, shared by every process on the box), every other
  node starts with ``bootstrap=[seed contact]``: ``--victims`` nodes each in
  its own one-node process (the ones killed later), and the rest spread over
  ``--procs`` worker processes, each running its Nodes on one event loop
  (``zmqagents.node.run``). ``--nodes`` counts all of them, seed and victims
  included. Processes talk to the orchestrator with JSON lines (stdin/stdout).
* ``join_all_findable_s`` — from t0 until every node id is found by
  ``node.lookup(id, find=True)`` (the node answered the lookup, so its id is
  among the returned contacts; ``find`` ends the lookup then instead of also
  waiting for the 19 other closest nodes) from every *source* node. Sources are a random sample of ``--sources`` nodes among the
  worker nodes (0 = every worker node); each source looks up every other
  node's id. A pair found once stays found; unfound pairs are retried every
  0.2 s. Each process reports the wall time its last pair was found; the
  figure is the latest of those minus t0. It includes the time the nodes
  took to start (``all_started_s``: every ``start()``, i.e. every join
  lookup, returned; ``node_start_s`` per node, ``join_cpu_s`` the CPU each
  process used meanwhile) and the time the lookups themselves take
  (``findable_check_s``), so it is an upper bound.
* Connections. ``connections_per_join``: DEALERs a joining node opened by the
  time its ``start()`` returned, mean over joining nodes (each DEALER is one
  CURVE handshake, ~2 ms of CPU on each side); ``find_node_per_join`` the
  FIND_NODEs it sent meanwhile. ``findable_check_dials`` and
  ``findable_check_forwarded``: DEALERs opened and queries forwarded through
  a node already connected (``kad.fwd``) by all nodes during the check. ``connections_per_node`` gives, at all
  started, all findable and the end of the idle window, the mean and max per
  node of DEALERs opened, inbound links authenticated (handshakes served) and
  FIND_NODEs sent, cumulative since the node was built.
* Idle. After that and ``--settle`` s, a quiet window of ``--window`` s: the
  sum over nodes of ``transport.stats["bytes_out"]`` (envelope bytes; CURVE
  and ZMTP framing not included) gives ``idle_bytes_per_node_per_s``; CPU of
  every node process (schedstat, all threads) over the window gives
  ``cpu_percent_per_node``; VmRSS gives ``rss_mb_per_process``.
* Failure detection. For each victim in turn: every live process reports
  which of its nodes hold the victim in their membership
  (``node.membership.state_of(id) is not None``); the victim's process is then
  SIGKILLed at t_kill. Every node's ``node.events()`` is recorded from before
  its start; the detection time of a holder is its first "failed" event about
  the victim minus t_kill. We wait until every holder detected it or
  ``--detect-timeout`` s. ``detect_all_s_p50`` / ``_max`` are over every
  (kill, holder) pair; ``detect_all_s_per_kill`` gives each kill's max
  (the time until *all* holders marked it failed); ``undetected`` counts
  holders that never did.
* ``transport_drops_*`` — ``transport.drops`` summed over nodes, by reason
  (the per-peer warnings are silenced unless ``--verbose``).
* ``false_positives`` — "failed" events, over the whole run and from every
  node, about a node that had not been killed yet.

The Serf reference (``/work/shared/DESIGN.md``, a Go Serf agent at N=100 on
the same machine: all-see-all ≈ 3 s, all mark a killed agent failed ≈ 9 s,
≈ 215 B/s per node idle) is in ``serf`` with a boolean per figure.

Prints one JSON object on stdout; progress goes to stderr.

    python bench/overlay.py           # 100 nodes (~2 min)
    python bench/overlay.py --quick   # 20 nodes, one victim, short windows (< 40 s)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import random
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
    median,
    percentile,
    prepare_node_process,
    rss_kb,
    run,
    serve_commands,
    stop_all,
)

SCRIPT = Path(__file__).resolve()
MB = 1024
SERF = {"all_see_all_s": 3.0, "all_mark_failed_s": 9.0, "idle_bytes_per_node_per_s": 215.0,
        "source": "/work/shared/DESIGN.md: Go Serf agent (memberlist SWIM + Lifeguard), N=100, same machine"}
LOOKUP_CONCURRENCY = 16


# =====================================================================================
# children: a process running --count Nodes, driven by JSON commands on stdin
# =====================================================================================


async def role_nodes(args) -> None:
    from zmqagents.node import Node

    prepare_node_process(args.verbose)
    bootstrap = [args.contact] if args.contact else []
    nodes = [Node(listen="tcp://127.0.0.1:0", bootstrap=bootstrap) for _ in range(args.count)]
    by_id = {n.node_id: n for n in nodes}
    events: list[list] = []  # [wall time, observer hex, kind, subject hex, incarnation]
    sent = 0  # events already handed to the orchestrator

    async def record(node) -> None:
        me = node.node_id.hex()
        async for ev in node.events():
            events.append([time.time(), me, ev.kind, ev.node_id.hex(), ev.incarnation])

    recorders = [asyncio.create_task(record(n)) for n in nodes]
    await asyncio.sleep(0)  # let every recorder register its queue before the nodes start

    emit({"event": "loaded", "pid": os.getpid(), "loop": loop_name()})

    async def start_all() -> dict:
        t0 = time.perf_counter()

        async def start(n) -> float:
            await n.start()
            return time.perf_counter() - t0

        took = await asyncio.gather(*(start(n) for n in nodes))
        return {"event": "started", "ids": [n.node_id.hex() for n in nodes],
                "contacts": [str(n.contact) for n in nodes], "t": time.time(), "start_s": took,
                "conns": [connections(n) for n in nodes]}

    async def check(cmd: dict) -> dict:
        """Look up every target from each of our source nodes until all are found."""
        sources = [by_id[bytes.fromhex(s)] for s in cmd["sources"] if bytes.fromhex(s) in by_id]
        targets = [bytes.fromhex(t) for t in cmd["targets"]]
        pending = {(s, t) for s in sources for t in targets if t != s.node_id}
        total = len(pending)
        deadline = time.monotonic() + cmd["timeout"]
        slots = asyncio.Semaphore(LOOKUP_CONCURRENCY)
        lookups = 0

        async def one(src, tgt) -> None:
            nonlocal lookups
            async with slots:
                lookups += 1
                try:
                    found = await src.lookup(tgt, timeout=10, find=True)
                except Exception:  # a lookup that fails is simply retried
                    return
                if any(c.node_id == tgt for c in found):
                    pending.discard((src, tgt))

        first_round = None
        while pending and time.monotonic() < deadline:
            await asyncio.gather(*(one(s, t) for s, t in list(pending)))
            if first_round is None:
                first_round = len(pending)
            if pending:
                await asyncio.sleep(0.2)
        return {"event": "checked", "t": time.time(), "pairs": total, "unfound": len(pending), "lookups": lookups,
                "unfound_first_round": first_round or 0, "conns": [connections(n) for n in nodes]}

    def connections(node) -> dict:
        """What this node opened and was sent so far: each DEALER it opened is one CURVE handshake it
        started (and its peer served); inbound links are handshakes it served."""
        t = node.transport.stats
        return {"dealers": t["dealers_opened"], "inbound": t["links_authenticated"],
                "find_node": node.routing.stats["find_node_sent"], "forwarded": node.routing.stats["forwarded_sent"]}

    def drops() -> dict:
        total: dict[str, int] = {}
        for n in nodes:
            for reason, count in n.transport.drops.items():
                total[reason] = total.get(reason, 0) + count
        return total

    def stats() -> dict:
        return {"event": "stats", "t": time.time(),
                "bytes_out": sum(n.transport.stats["bytes_out"] for n in nodes),
                "bytes_in": sum(n.transport.stats["bytes_in"] for n in nodes),
                "drops": drops(),
                "conns": [connections(n) for n in nodes],
                "members": [len(n.membership) for n in nodes],
                "table": [len(n.routing.table) for n in nodes]}

    def holders(victim: str) -> dict:
        vid = bytes.fromhex(victim)
        return {"event": "holders", "t": time.time(),
                "holders": [n.node_id.hex() for n in nodes if n.membership.state_of(vid) is not None]}

    def take_events() -> dict:
        nonlocal sent
        out = events[sent:]
        sent = len(events)
        return {"event": "events", "events": out}

    try:
        await serve_commands({"start": lambda cmd: start_all(), "check": check, "stats": lambda cmd: stats(),
                              "holders": lambda cmd: holders(cmd["victim"]), "events": lambda cmd: take_events()})
    finally:
        await close_nodes(nodes)
        for task in recorders:
            task.cancel()


ROLES = {"nodes": role_nodes}


# =====================================================================================
# orchestrator
# =====================================================================================


def sum_drops(after, before) -> dict:
    total: dict[str, int] = {}
    for sign, reports in ((1, after), (-1, before)):
        for report in reports:
            for reason, count in report["drops"].items():
                total[reason] = total.get(reason, 0) + sign * count
    return {k: v for k, v in sorted(total.items()) if v}


def conn_summary(conns: list[dict]) -> dict:
    """Per node: DEALERs opened (CURVE handshakes started), inbound links authenticated (handshakes
    served) and FIND_NODEs sent, as mean and max over the nodes."""
    out = {}
    for key in ("dealers", "inbound", "find_node", "forwarded"):
        values = [n[key] for n in conns]
        out[key] = {"mean": round(sum(values) / len(values), 2), "max": max(values)}
    return out


def tree_dirty() -> bool | None:
    """Whether zmqagents/ differs from the commit reported in env.git_commit (the run used the working tree)."""
    try:
        out = subprocess.run(["git", "-C", str(SCRIPT.parent.parent), "status", "--porcelain", "--", "zmqagents"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip())


def orchestrate(args) -> int:
    started = time.perf_counter()
    box = BoxLoad()
    rng = random.Random(args.seed)
    children: list[Child] = []
    workers: list[Child] = []
    victims: list[Child] = []
    counts: dict[Child, int] = {}
    ids_of: dict[Child, list[str]] = {}
    kill_time: dict[str, float] = {}
    all_events: list[list] = []
    out: dict = {}

    def ask(child: Child, cmd: dict, timeout: float = 30) -> dict:
        child.send(cmd)
        return child.read(timeout)

    def alive() -> list[Child]:
        return [c for c in children if c.proc.poll() is None]

    def poll_events() -> None:
        for c in alive():
            all_events.extend(ask(c, {"cmd": "events"})["events"])

    verbose = ["--verbose"] if args.verbose else []
    try:
        seed = Child(SCRIPT, "nodes", "--count", "1", *verbose, name="seed")
        children.append(seed)
        counts[seed] = 1
        seed.read(30)
        seed_info = ask(seed, {"cmd": "start"})
        ids_of[seed] = seed_info["ids"]
        contact = seed_info["contacts"][0]
        rest = args.nodes - 1 - args.victims
        per = [rest // args.procs + (1 if i < rest % args.procs else 0) for i in range(args.procs)]
        for i, count in enumerate(c for c in per if c > 0):
            # "=" form: a Z85 key may start with "-", which argparse would take for an option
            w = Child(SCRIPT, "nodes", f"--contact={contact}", "--count", str(count), *verbose, name=f"worker-{i}")
            children.append(w)
            workers.append(w)
            counts[w] = count
        for i in range(args.victims):
            v = Child(SCRIPT, "nodes", f"--contact={contact}", "--count", "1", *verbose, name=f"victim-{i}")
            children.append(v)
            victims.append(v)
            counts[v] = 1
        joiners = workers + victims
        for c in joiners:
            c.read(30)  # imported, nodes built: now start them all at once
        log(f"seed up; joining {sum(counts[c] for c in joiners)} nodes in {len(joiners)} processes")
        join_cpu0 = {c: cpu_ns(c.pid) for c in children}
        t0 = time.time()
        for c in joiners:
            c.send({"cmd": "start"})
        start_s: list[float] = []
        at_start: list[dict] = []  # each joining node's counts when its own start() returned
        for c in joiners:
            info = c.read(60)
            ids_of[c] = info["ids"]
            start_s += info["start_s"]
            at_start += info["conns"]
        t_started = max(0.0, time.time() - t0)
        join_cpu = {c: (cpu_ns(c.pid) - join_cpu0[c]) / 1e9 for c in children}
        conns_started = [n for c in children for n in ask(c, {"cmd": "stats"})["conns"]]
        all_ids = [i for c in children for i in ids_of[c]]
        worker_ids = [i for c in workers for i in ids_of[c]]
        sources = worker_ids if args.sources <= 0 else rng.sample(worker_ids, min(args.sources, len(worker_ids)))
        log(f"all started in {t_started:.2f} s; looking up {len(all_ids)} ids from {len(sources)} sources")
        check_timeout = 30 if args.quick else 60
        t_check = time.time()
        for w in workers:
            w.send({"cmd": "check", "sources": sources, "targets": all_ids, "timeout": check_timeout})
        checks = [w.read(check_timeout + 30) for w in workers]
        conns_findable = [n for c in children for n in ask(c, {"cmd": "stats"})["conns"]]
        unfound = sum(c["unfound"] for c in checks)
        findable_s = max(c["t"] for c in checks) - t0
        check_s = max(c["t"] for c in checks) - t_check
        log(f"all findable after {findable_s:.2f} s (unfound pairs: {unfound})")
        if unfound:
            raise BenchError(f"{unfound} (source, target) pairs still not findable after {check_timeout} s")

        # -- idle window ------------------------------------------------------------
        time.sleep(args.settle)
        pids = [c.pid for c in children]
        s0 = {c: ask(c, {"cmd": "stats"}) for c in children}
        cpu0, w0 = {p: cpu_ns(p) for p in pids}, time.perf_counter()
        log(f"idle window {args.window:.0f} s")
        time.sleep(args.window)
        cpu1, w1 = {p: cpu_ns(p) for p in pids}, time.perf_counter()
        s1 = {c: ask(c, {"cmd": "stats"}) for c in children}
        rss = {c: rss_kb(c.pid) / MB for c in children}
        span = w1 - w0
        bytes_out = sum(s1[c]["bytes_out"] - s0[c]["bytes_out"] for c in children)
        bytes_in = sum(s1[c]["bytes_in"] - s0[c]["bytes_in"] for c in children)
        cpu_total = sum(cpu1[p] - cpu0[p] for p in pids) / 1e9
        members = [m for c in children for m in s1[c]["members"]]
        tables = [m for c in children for m in s1[c]["table"]]
        idle_bps = bytes_out / args.nodes / span
        log(f"idle: {idle_bps:.0f} B/s out per node, {100 * cpu_total / span / args.nodes:.3f} % CPU per node")

        # -- failure detection ----------------------------------------------------------
        kills = []
        for v in victims:
            vid = ids_of[v][0]
            holders: set[str] = set()
            for c in alive():
                if c is v:
                    continue
                holders.update(ask(c, {"cmd": "holders", "victim": vid})["holders"])
            poll_events()  # the victim's own events up to now
            t_kill = time.time()
            v.kill()
            kill_time[vid] = t_kill
            log(f"killed {vid[:8]} (pid {v.pid}); {len(holders)} holders")
            detected: dict[str, float] = {}
            deadline = time.monotonic() + args.detect_timeout
            while time.monotonic() < deadline:
                poll_events()
                for t, obs, kind, subj, _inc in all_events:
                    if kind == "failed" and subj == vid and obs in holders and obs not in detected:
                        detected[obs] = t - t_kill
                if len(detected) == len(holders):
                    break
                time.sleep(0.25)
            times = sorted(detected.values())
            kills.append({"victim": vid[:16], "holders": len(holders), "detected": len(detected),
                          "undetected": len(holders) - len(detected), "times": times,
                          "p50": percentile(times, 0.5), "max": times[-1] if times else None})
            log(f"  detected by {len(detected)}/{len(holders)}; max {kills[-1]['max']}")
        time.sleep(0.5)
        poll_events()
        final = {c: ask(c, {"cmd": "stats"}) for c in alive()}

        # -- false positives ----------------------------------------------------------------
        fps = []
        for t, obs, kind, subj, _inc in all_events:
            if kind == "failed" and (subj not in kill_time or t < kill_time[subj]):
                fps.append({"observer": obs[:16], "subject": subj[:16], "t_s": round(t - t0, 3)})
        suspects_of_alive = sum(1 for t, _o, kind, subj, _i in all_events
                                if kind == "suspect" and (subj not in kill_time or t < kill_time[subj]))
        refuted = sum(1 for e in all_events if e[2] == "refuted")

        all_times = [t for k in kills for t in k["times"]]
        per_kill_max = [k["max"] for k in kills]
        undetected = sum(k["undetected"] for k in kills)
        detect_max = None if (not all_times or undetected) else max(all_times)
        worker_rss = [rss[w] for w in workers]
        out = {
            "benchmark": "overlay",
            "nodes": args.nodes,
            "join_all_findable_s": round(findable_s, 3),
            "all_started_s": round(t_started, 3),
            "findable_check_s": round(check_s, 3),
            # 0 means every pair was found by the first lookup issued once all nodes had started: the
            # overlay was findable by all_started_s + one lookup, and join_all_findable_s is bounded
            # by how long the check's own lookups take on this box
            "findable_unfound_first_round": sum(c["unfound_first_round"] for c in checks),
            "node_start_s": {"p50": round(median(start_s), 3), "max": round(max(start_s), 3),
                             "over_join_timeout": sum(1 for t in start_s if t >= 10.0)},
            # DEALERs a joining node opened (= CURVE handshakes it started) by the time its start() returned
            "connections_per_join": round(sum(n["dealers"] for n in at_start) / len(at_start), 2),
            "find_node_per_join": round(sum(n["find_node"] for n in at_start) / len(at_start), 2),
            # what the findable check cost the mesh: DEALERs opened and queries forwarded (kad.fwd, through a
            # node holding a connection instead of a new one: protocols/routing.md 5.6) by all nodes meanwhile
            "findable_check_dials": sum(n["dealers"] for n in conns_findable) - sum(n["dealers"] for n in conns_started),
            "findable_check_forwarded": (sum(n["forwarded"] for n in conns_findable)
                                         - sum(n["forwarded"] for n in conns_started)),
            "connections_per_node": {
                "all_started": conn_summary(conns_started),
                "all_findable": conn_summary(conns_findable),
                "end_of_idle_window": conn_summary([n for c in children for n in s1[c]["conns"]]),
            },
            "join_cpu_s": {"seed_process": round(join_cpu[seed], 2),
                           "worker_processes": [round(join_cpu[w], 2) for w in workers],
                           "wall_s": round(t_started, 2)},
            "detect_all_s_p50": None if not all_times else round(median(all_times), 3),
            "detect_all_s_max": None if detect_max is None else round(detect_max, 3),
            "detect_all_s_per_kill": [None if m is None else round(m, 3) for m in per_kill_max],
            "detect_first_s_per_kill": [round(k["times"][0], 3) if k["times"] else None for k in kills],
            "holders_per_kill": [k["holders"] for k in kills],
            "undetected": undetected,
            "false_positives": len(fps),
            "false_positive_events": fps[:20],
            "suspect_events_about_live_nodes": suspects_of_alive,
            "refuted_events": refuted,
            "idle_bytes_per_node_per_s": round(idle_bps, 1),
            "idle_bytes_in_per_node_per_s": round(bytes_in / args.nodes / span, 1),
            "cpu_percent_per_node": round(100 * cpu_total / span / args.nodes, 4),
            "rss_mb_per_process": round(sum(worker_rss) / len(worker_rss), 2) if worker_rss else None,
            "nodes_per_process": [counts[w] for w in workers],
            "rss_mb_worker_processes": [round(r, 2) for r in worker_rss],
            "rss_mb_one_node_process": round(rss[seed], 2),
            "transport_drops_idle_window": sum_drops(s1.values(), s0.values()),
            "transport_drops_whole_run_survivors": sum_drops(final.values(), []),
            "membership_size": {"min": min(members), "median": median(members), "max": max(members)},
            "routing_table_size": {"min": min(tables), "median": median(tables), "max": max(tables)},
            "serf": {
                **SERF,
                "join_beaten": findable_s < SERF["all_see_all_s"],
                "detect_beaten": detect_max is not None and detect_max < SERF["all_mark_failed_s"],
                "idle_bytes_beaten": idle_bps < SERF["idle_bytes_per_node_per_s"],
            },
            "params": {
                "nodes": args.nodes,
                "layout": f"1 seed process (1 node), {len(victims)} victim processes (1 node each), "
                          f"{len(workers)} worker processes ({'/'.join(str(counts[w]) for w in workers)} nodes)",
                "procs": args.procs,
                "victims": args.victims,
                "seed": args.seed,
                "quick": args.quick,
                "findable_check": (
                    f"{len(sources)} source nodes ({'all worker nodes' if args.sources <= 0 else 'random sample of worker nodes'})"
                    f" each look up all {len(all_ids)} ids (minus their own): {sum(c['pairs'] for c in checks)} pairs, "
                    f"{sum(c['lookups'] for c in checks)} lookups incl. retries; a pair counts when the id is among "
                    "the returned contacts; time = latest process to find all its pairs, minus t0 (start of joins)"),
                "settle_s": args.settle,
                "window_s": round(span, 2),
                "detect_timeout_s": args.detect_timeout,
                "detect": "holders = nodes with the victim in node.membership when it was SIGKILLed; "
                          "victims killed one after another, each once all its holders detected it (or timeout)",
                "idle_bytes": "sum of transport.stats bytes_out over all nodes / nodes / window (envelope bytes)",
                "cpu": "schedstat CPU of every node process over the idle window / nodes",
            },
            "env": {**environment(), "zmqagents_uncommitted_changes": tree_dirty(), **box.report()},
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
    except BenchError as exc:
        return failed("overlay", exc, children)
    finally:
        stop_all(children)
    print(json.dumps(out, indent=2))
    return 0 if out["undetected"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 nodes, one victim, short windows (< 40 s)")
    p.add_argument("--nodes", type=int, help="nodes in all, seed and victims included (default 100; quick 20)")
    p.add_argument("--procs", type=int, help="worker processes for the non-seed, non-victim nodes (default 4; quick 2)")
    p.add_argument("--victims", type=int, help="nodes killed one after another (default 3; quick 1)")
    p.add_argument("--sources", type=int, help="source nodes sampled for the findable check, 0 = all (default 10; quick 0)")
    p.add_argument("--window", type=float, help="idle window in seconds (default 10; quick 3)")
    p.add_argument("--settle", type=float, help="seconds between all-findable and the idle window (default 2; quick 1)")
    p.add_argument("--detect-timeout", type=float, help="seconds to wait for every holder to detect a kill (default 30; quick 15)")
    p.add_argument("--verbose", action="store_true", help="let the nodes log transport warnings (drops are counted either way)")
    p.add_argument("--seed", type=int, default=1, help="random seed for the source sample (default 1)")
    # child-only
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    p.add_argument("--contact", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        run(ROLES[args.role](args))
        return 0
    q = args.quick
    args.nodes = args.nodes or (20 if q else 100)
    args.procs = args.procs or (2 if q else 4)
    args.victims = args.victims if args.victims is not None else (1 if q else 3)
    args.sources = args.sources if args.sources is not None else (0 if q else 10)
    args.window = args.window or (3.0 if q else 10.0)
    args.settle = args.settle if args.settle is not None else (1.0 if q else 2.0)
    args.detect_timeout = args.detect_timeout or (15.0 if q else 30.0)
    if args.nodes < args.victims + 3:
        p.error("--nodes must leave at least 2 worker nodes besides the seed and the victims")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
