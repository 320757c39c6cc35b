#!/usr/bin/env python3
"""DHT records on real nodes: put/get success and latency, before and after killing 20 % of the nodes.

What it measures (tcp on 127.0.0.1, CURVE on every link, default configs):

* Layout. One *seed* Node in its own process starts first; then every other node starts with
  ``bootstrap=[seed contact]``: the nodes that will be killed (``--kill`` of ``--nodes``, 20 % by
  default) spread over ``--victim-procs`` processes, the rest over ``--procs`` worker processes; each
  process runs its Nodes on one event loop (``zmqagents.node.run``). ``--nodes`` counts all of them.
  Identities are derived from ``--seed`` and each node's number, so a seed fixes which ids die.
  After every ``start()`` returned, ``--settle`` s pass before the first put (the joins' bucket
  refreshes finish meanwhile; ``routing_table_size`` at the first put is reported).
* Puts. ``--keys`` keys (``"bench/<seed>/<j>"``, values of ~80 bytes), each put with
  ``node.dht.put`` by a random node (any node). Each process runs its puts with at most
  ``--concurrency`` in flight. ``put_success``: puts that returned (at least one replica accepted);
  ``put_p50_ms`` / ``put_p99_ms``: their durations (lookup of the key, then STORE to the closest).
* Gets. Every stored key is read once with ``node.dht.get`` from a random node (any node), the same
  concurrency. ``get_success``: gets that returned the value put (a get that returns another value is
  counted in ``get_wrong_value`` and is a failed run); ``get_p50_ms`` / ``get_p99_ms``.
* Kill. The victim processes are SIGKILLed (no graceful leave: the others learn only by silence).
  Right after they are reaped -- before any node has had time to detect the deaths -- every stored key
  is read again from a random *surviving* node: ``get_success_after_kill``, ``get_p50_ms_after_kill``,
  ``get_p99_ms_after_kill``. This is the worst moment for a lookup: tables still list the dead, and
  the only defence is the lookup's late limit, which routes around a silent peer once others answered
  instead of waiting for its 2 s hard timeout (``gets_over_hard_timeout_after_kill`` counts gets that
  took longer than that). A key whose holders were all killed cannot be found until its publisher
  republishes it (``republish_interval``, 5 min): ``keys_closest_all_killed`` counts keys whose
  ``replicas`` closest nodes (by XOR distance over all node ids) were all killed, i.e. the misses to
  expect.
* Raw pyzmq. In the same run, before the nodes start, ``bench/throughput.py``'s raw pyzmq ping-pong
  (DEALER -> ROUTER echo, CURVE, tcp loopback, one request in flight, separate processes) gives the
  round trip of one message; ``get_p50_raw_rtts`` = ``get_p50_ms`` / that round trip: what a get
  costs in units of the transport's own round trip (a get is a lookup of a few hops, each a round
  trip through a Python node, plus signature checks).

Prints one JSON object on stdout; progress goes to stderr. Exit code 0, or 1 if the run was invalid
(a node process died, a wrong value came back, a step timed out).

    python bench/dht.py           # 50 nodes, 1000 keys (~1-2 min)
    python bench/dht.py --quick   # 12 nodes, 60 keys (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (the raw pyzmq ping-pong is measured the way that benchmark does)
from _common import (  # noqa: E402
    BenchError,
    BoxLoad,
    Child,
    close_nodes,
    emit,
    environment,
    failed,
    log,
    loop_name,
    percentile,
    prepare_node_process,
    rss_kb,
    run,
    serve_commands,
    stop_all,
)

SCRIPT = Path(__file__).resolve()
MB = 1024
HARD_TIMEOUT_MS = 2000.0  # DhtConfig.query_timeout: a get that waited on a dead peer takes at least this


# =====================================================================================
# children: a process running --count Nodes, driven by JSON commands on stdin
# =====================================================================================


async def role_nodes(args) -> None:
    import hashlib

    from zmqagents.dht import DhtError
    from zmqagents.identity import Identity
    from zmqagents.node import Node

    prepare_node_process(args.verbose)
    bootstrap = [args.contact] if args.contact else []
    # Identities from the run seed and the node's number: the same seed puts the same ids (so the same
    # keys' closest nodes) among the killed.
    nodes = [Node(Identity.from_seed(hashlib.sha256(b"bench-dht/%d/%d" % (args.seed, args.first + i)).digest()),
                  listen="tcp://127.0.0.1:0", bootstrap=bootstrap) for i in range(args.count)]

    emit({"event": "loaded", "pid": os.getpid(), "loop": loop_name()})

    async def start_all() -> dict:
        await asyncio.gather(*(n.start() for n in nodes))
        return {"event": "started", "ids": [n.node_id.hex() for n in nodes], "contacts": [str(n.contact) for n in nodes]}

    async def ops(cmd: dict) -> dict:
        """Run puts or gets: items [node index, key, value]; results [status, ms, detail] in item order."""
        kind = cmd["op"]
        items = cmd["items"]
        results: list = [None] * len(items)
        slots = asyncio.Semaphore(cmd["concurrency"])
        timeout = cmd["timeout"]
        clock = time.perf_counter

        async def one(pos: int, idx: int, key: str, value) -> None:
            node = nodes[idx]
            async with slots:
                t = clock()
                try:
                    if kind == "put":
                        res = await node.dht.put(key, value, timeout=timeout)
                        results[pos] = ["ok", (clock() - t) * 1000, res.stored]
                    else:
                        got = await node.dht.get(key, timeout=timeout)
                        status = "found" if got == value else "not_found" if got is None else "wrong"
                        results[pos] = [status, (clock() - t) * 1000, None]
                except DhtError as exc:  # DhtTimeout included (reason "timeout")
                    results[pos] = ["error:" + exc.reason, (clock() - t) * 1000, None]

        t0 = clock()
        await asyncio.gather(*(one(p, *item) for p, item in enumerate(items)))
        return {"event": "ops", "results": results, "wall_s": clock() - t0}

    def stats() -> dict:
        total: dict[str, int] = {}
        drops: dict[str, int] = {}
        for n in nodes:
            for k, v in n.dht.stats.items():
                if v:
                    total[k] = total.get(k, 0) + v
            for k, v in n.transport.drops.items():
                drops[k] = drops.get(k, 0) + v
        return {"event": "stats", "dht": total, "drops": drops, "table": [len(n.routing.table) for n in nodes],
                "records": [n.dht.core.records for n in nodes]}

    try:
        await serve_commands({"start": lambda cmd: start_all(), "ops": ops, "stats": lambda cmd: stats()})
    finally:
        await close_nodes(nodes)


ROLES = {"nodes": role_nodes}


# =====================================================================================
# orchestrator
# =====================================================================================


def spread(total: int, parts: int) -> list[int]:
    return [c for c in (total // parts + (1 if i < total % parts else 0) for i in range(parts)) if c > 0]


def key_id(name: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest(), "big")


def orchestrate(args) -> int:
    started = time.perf_counter()
    box = BoxLoad()
    rng = random.Random(args.seed)
    children: list[Child] = []
    out: dict = {}

    def ask(child: Child, cmd: dict, timeout: float = 60) -> dict:
        child.send(cmd)
        return child.read(timeout)

    verbose = ["--verbose"] if args.verbose else []
    try:
        log(f"raw pyzmq ping-pong ({args.raw_samples} samples)")
        raw = throughput.measure("pingpong", "raw", args.raw_samples, max(50, args.raw_samples // 10), 1, 60, None)

        common = ["--seed", str(args.seed), *verbose]
        seed = Child(SCRIPT, "nodes", "--count", "1", "--first", "0", *common, name="seed")
        children.append(seed)
        seed.read(30)
        seed_info = ask(seed, {"cmd": "start"})
        contact = seed_info["contacts"][0]
        procs: list[tuple[Child, bool]] = [(seed, False)]  # (process, killed later)
        n_kill = args.kill_nodes
        rest = args.nodes - 1 - n_kill
        first = 1
        for i, count in enumerate(spread(rest, args.procs)):
            # "=" form: a Z85 key may start with "-", which argparse would take for an option
            procs.append((Child(SCRIPT, "nodes", f"--contact={contact}", "--count", str(count), "--first", str(first),
                                *common, name=f"worker-{i}"), False))
            first += count
        for i, count in enumerate(spread(n_kill, args.victim_procs)):
            procs.append((Child(SCRIPT, "nodes", f"--contact={contact}", "--count", str(count), "--first", str(first),
                                *common, name=f"victim-{i}"), True))
            first += count
        children.extend(c for c, _ in procs[1:])
        for c, _ in procs[1:]:
            c.read(30)
        t_start = time.perf_counter()
        for c, _ in procs[1:]:
            c.send({"cmd": "start"})
        ids: dict[Child, list[str]] = {seed: seed_info["ids"]}
        for c, _ in procs[1:]:
            ids[c] = c.read(60)["ids"]
        started_s = time.perf_counter() - t_start
        log(f"{args.nodes} nodes started in {started_s:.2f} s in {len(procs)} processes; settling {args.settle:g} s")
        time.sleep(args.settle)

        # (process, index in it) of every node; the victims' set
        every = [(c, i) for c, _ in procs for i in range(len(ids[c]))]
        survivors = [(c, i) for c, killed in procs if not killed for i in range(len(ids[c]))]
        victims = {c for c, killed in procs if killed}
        tables = [t for c, _ in procs for t in ask(c, {"cmd": "stats"})["table"]]

        keys = [f"bench/{args.seed}/{j}" for j in range(args.keys)]
        values = [f"value-{j}-" + "x" * 64 for j in range(args.keys)]

        def phase(op: str, js: list[int], pool: list) -> tuple[dict, float]:
            """Run one op per key from random nodes of ``pool``; results by key number, and the wall time."""
            per: dict[Child, list] = {}
            for j in js:
                c, i = rng.choice(pool)
                per.setdefault(c, []).append((j, [i, keys[j], values[j]]))
            t0 = time.perf_counter()
            for c, items in per.items():
                c.send({"cmd": "ops", "op": op, "items": [it for _, it in items], "concurrency": args.concurrency,
                        "timeout": args.op_timeout})
            res: dict[int, list] = {}
            for c, items in per.items():
                got = c.read(args.op_timeout * (len(items) / args.concurrency + 2) + 30)["results"]
                for (j, _), r in zip(items, got):
                    res[j] = r
            return res, time.perf_counter() - t0

        log(f"put {args.keys} keys")
        puts, put_wall = phase("put", list(range(args.keys)), every)
        stored = [j for j in range(args.keys) if puts[j][0] == "ok"]
        log(f"  {len(stored)} stored in {put_wall:.2f} s; get each")
        gets, get_wall = phase("get", stored, every)

        # which keys lost every one of their closest nodes (the expected misses after the kill)
        node_ids = [(int(h, 16), c in victims) for c, _ in procs for h in ids[c]]
        replicas = 3
        closest_all_killed = 0
        for j in stored:
            k = key_id(keys[j])
            near = sorted(node_ids, key=lambda x: x[0] ^ k)[:replicas]
            closest_all_killed += all(dead for _, dead in near)

        for c in victims:
            c.kill()  # SIGKILL by PID, then reaped
        log(f"killed {n_kill} nodes ({len(victims)} processes); get each from the {len(survivors)} survivors")
        after, after_wall = phase("get", stored, survivors)
        final = [ask(c, {"cmd": "stats"}) for c, killed in procs if not killed]
        rss = {c.name: round(rss_kb(c.pid) / MB, 1) for c, killed in procs if not killed}

        def summary(res: dict, ok_status: str) -> dict:
            ms = [round(r[1], 2) for r in res.values() if r[0] == ok_status]
            statuses: dict[str, int] = {}
            for r in res.values():
                statuses[r[0]] = statuses.get(r[0], 0) + 1
            return {"n": len(res), "ok": len(ms), "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99),
                    "max_ms": percentile(ms, 1.0), "statuses": statuses}

        ps, gs, ga = summary(puts, "ok"), summary(gets, "found"), summary(after, "found")
        wrong = gs["statuses"].get("wrong", 0) + ga["statuses"].get("wrong", 0)
        dht_stats: dict[str, int] = {}
        drops: dict[str, int] = {}
        for f in final:
            for k, v in f["dht"].items():
                dht_stats[k] = dht_stats.get(k, 0) + v
            for k, v in f["drops"].items():
                drops[k] = drops.get(k, 0) + v
        put_replicas: dict[str, int] = {}
        for j in stored:
            put_replicas[str(puts[j][2])] = put_replicas.get(str(puts[j][2]), 0) + 1
        raw_p50_ms = raw["p50_us"] / 1000
        out = {
            "benchmark": "dht",
            "nodes": args.nodes,
            "keys": args.keys,
            "put_success": round(len(stored) / args.keys, 4),
            "put_p50_ms": ps["p50_ms"],
            "put_p99_ms": ps["p99_ms"],
            "get_success": round(gs["ok"] / len(stored), 4) if stored else None,
            "get_p50_ms": gs["p50_ms"],
            "get_p99_ms": gs["p99_ms"],
            "killed_nodes": n_kill,
            "get_success_after_kill": round(ga["ok"] / len(stored), 4) if stored else None,
            "get_p50_ms_after_kill": ga["p50_ms"],
            "get_p99_ms_after_kill": ga["p99_ms"],
            "get_wrong_value": wrong,
            "gets_over_hard_timeout_after_kill": sum(1 for r in after.values() if r[1] >= HARD_TIMEOUT_MS),
            "keys_closest_all_killed": closest_all_killed,
            "raw_rtt_p50_ms": round(raw_p50_ms, 3),
            "raw_rtt_p99_ms": round(raw["p99_us"] / 1000, 3),
            "get_p50_raw_rtts": round(gs["p50_ms"] / raw_p50_ms, 1) if gs["p50_ms"] else None,
            "get_p50_raw_rtts_after_kill": round(ga["p50_ms"] / raw_p50_ms, 1) if ga["p50_ms"] else None,
            "puts": ps,
            "gets": gs,
            "gets_after_kill": ga,
            "put_replicas": put_replicas,
            "ops_per_s": {"put": round(args.keys / put_wall, 1), "get": round(len(stored) / get_wall, 1),
                          "get_after_kill": round(len(stored) / after_wall, 1)},
            "routing_table_size_at_first_put": {"min": min(tables), "max": max(tables)},
            "dht_stats_survivors": dict(sorted(dht_stats.items())),
            "transport_drops_survivors": dict(sorted(drops.items())),
            "rss_mb_survivor_processes": rss,
            "started_s": round(started_s, 2),
            "params": {
                "nodes": args.nodes, "keys": args.keys, "kill_nodes": n_kill, "procs": args.procs,
                "victim_procs": args.victim_procs, "concurrency_per_process": args.concurrency,
                "settle_s": args.settle, "op_timeout_s": args.op_timeout, "seed": args.seed, "quick": args.quick,
                "identities": "Identity.from_seed(sha256('bench-dht/<seed>/<node number>')): the seed fixes who is killed",
                "raw_samples": args.raw_samples,
                "layout": f"1 seed process (1 node), {len(procs) - 1 - len(victims)} worker and {len(victims)} victim "
                          f"processes ({'/'.join(str(len(ids[c])) for c, _ in procs[1:])} nodes)",
                "publishers": "random node of all for each put; getters: random node of all, after the kill random survivor",
                "after_kill": "gets start as soon as the victim processes are reaped (no detection time given)",
            },
            "env": {**environment(), **box.report()},
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
        if wrong:
            raise BenchError(f"{wrong} gets returned a value other than the one put")
    except BenchError as exc:
        return failed("dht", exc, children)
    finally:
        stop_all(children)
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="12 nodes, 60 keys (seconds)")
    p.add_argument("--nodes", type=int, help="nodes in all, seed and victims included (default 50; quick 12)")
    p.add_argument("--keys", type=int, help="keys put and got (default 1000; quick 60)")
    p.add_argument("--kill", type=float, default=0.2, help="fraction of the nodes killed (default 0.2)")
    p.add_argument("--procs", type=int, help="worker processes for the surviving nodes (default 3; quick 2)")
    p.add_argument("--victim-procs", type=int, help="processes for the nodes to kill (default 2; quick 1)")
    p.add_argument("--concurrency", type=int, default=8, help="operations in flight per process (default 8)")
    p.add_argument("--settle", type=float, help="seconds between the last start and the first put (default 3; quick 1)")
    p.add_argument("--op-timeout", type=float, default=30.0, help="timeout of one put or get (s, default 30)")
    p.add_argument("--raw-samples", type=int, help="raw pyzmq ping-pong samples (default 2000; quick 300)")
    p.add_argument("--seed", type=int, default=1, help="random seed: node identities, publishers, getters (default 1)")
    p.add_argument("--verbose", action="store_true", help="let the nodes log transport warnings")
    # child-only
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    p.add_argument("--contact", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        run(ROLES[args.role](args))
        return 0
    q = args.quick
    args.nodes = args.nodes or (12 if q else 50)
    args.keys = args.keys or (60 if q else 1000)
    args.procs = args.procs or (2 if q else 3)
    args.victim_procs = args.victim_procs or (1 if q else 2)
    args.settle = args.settle if args.settle is not None else (1.0 if q else 3.0)
    args.raw_samples = args.raw_samples or (300 if q else 2000)
    if not 0 <= args.kill < 1:
        p.error("--kill is a fraction in [0, 1)")
    args.kill_nodes = round(args.kill * args.nodes)
    if args.nodes - 1 - args.kill_nodes < 2:
        p.error("--nodes must leave at least 2 surviving nodes besides the seed")
    if min(args.keys, args.procs, args.victim_procs, args.concurrency) < 1 or args.op_timeout <= 0:
        p.error("--keys, --procs, --victim-procs, --concurrency and --op-timeout must be positive")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
