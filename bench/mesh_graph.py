#!/usr/bin/env python3
"""The crawl behind `zmqagents mesh graph` and the /ui dashboard, on a real mesh of ``--nodes`` nodes.

Layout (tcp on 127.0.0.1, CURVE on every link, default configs): a *seed* process runs one Node with
the admin endpoint (the dashboard's side); ``--procs`` worker processes run the other nodes, several
per event loop, all joining through the seed. After ``--settle`` s the orchestrator runs the real CLI,
``zmqagents mesh graph --mesh SEED --format json --max-nodes 2N``, as an operator would:

- ``crawl``: at the command's defaults (20 requests a second, 8 in flight): ``nodes_found`` (of
  ``nodes``), ``seconds`` (the crawl, as the command reports it), ``wall_seconds`` (the whole command,
  with its own start and stop), ``messages_sent`` (requests: a table and a ``task.describe`` per node),
  ``messages_per_node`` (2.0 is the least a crawl that asks every node both can send),
  ``rate_floor_seconds`` (what the rate limit alone costs: (messages - burst) / rate) and
  ``seconds_over_floor`` (the crawl's time against it, the ratio that says whether the crawl is
  limited by the rate, as designed, or by the mesh);
- ``crawl_unthrottled``: the same with ``--rate 10000 --parallel 64``, in the same run: what the rate
  limit costs against the mesh's own answer time;
- ``dashboard``: the seed's RSS before any /ui request (after a /metrics scrape), after the page and
  one status (the dashboard's import), and after its dashboard has crawled the mesh (``/ui/api/graph``
  polled until the crawl ends), and that crawl's ``nodes_found`` and ``seconds``: what the dashboard
  costs a node only when it is used.

Prints one JSON object on stdout; progress on stderr.

    python bench/mesh_graph.py           # 100 nodes in 4 worker processes
    python bench/mesh_graph.py --quick   # 12 nodes (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    Child,
    close_nodes,
    emit,
    environment,
    failed,
    log,
    prepare_node_process,
    rss_kb,
    run,
    serve_commands,
    stop_all,
)

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent


# -- children ------------------------------------------------------------------------------

async def role_seed(args) -> None:
    from zmqagents.node import Node
    from zmqagents.sidecar.admin import AdminServer

    prepare_node_process(args.verbose)
    node = Node(listen="tcp://127.0.0.1:0")
    await node.start()
    admin = AdminServer(node, "127.0.0.1:0")
    await admin.start()
    emit({"event": "started", "contact": str(node.contact), "admin": admin.address, "pid": os.getpid()})

    def table(cmd: dict) -> dict:
        return {"event": "table", "size": len(node.peers())}

    try:
        await serve_commands({"table": table})
    finally:
        await admin.close()
        await close_nodes([node])


async def role_nodes(args) -> None:
    from zmqagents.node import Node

    prepare_node_process(args.verbose)
    nodes = [Node(listen="tcp://127.0.0.1:0", bootstrap=[args.contact]) for _ in range(args.node_count)]
    for n in nodes:  # one after another: a hundred joins at once would be a load test of its own
        await n.start()
    emit({"event": "started", "ids": [n.node_id.hex() for n in nodes]})

    def tables(cmd: dict) -> dict:
        return {"event": "tables", "sizes": [len(n.peers()) for n in nodes]}

    try:
        await serve_commands({"tables": tables})
    finally:
        await close_nodes(nodes)


ROLES = {"seed": role_seed, "nodes": role_nodes}


# -- orchestrator ----------------------------------------------------------------------------

def crawl_cli(seed: str, nodes: int, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "zmqagents.cli", "mesh", "graph", "--mesh", seed, "--format", "json",
           "--max-nodes", str(2 * nodes), "--timeout", "300", *extra]
    began = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=360, cwd=REPO)
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise BenchError(f"mesh graph exited {done.returncode}: {done.stderr[-1000:]}")
    log(done.stderr.strip())
    return json.loads(done.stdout) | {"wall_seconds": wall}


def figures(graph: dict, ids: set[str], rate: float, burst: float) -> dict:
    c = graph["crawl"]
    found = {n["id"] for n in graph["nodes"]}
    floor = max(0.0, (c["messages_sent"] - burst) / rate)
    return {"nodes_found": len(found & ids), "nodes_missed": len(ids - found),
            "answered": c["answered"], "unreachable": c["unreachable"], "seconds": c["seconds"],
            "wall_seconds": round(graph["wall_seconds"], 3), "messages_sent": c["messages_sent"],
            "messages_per_node": round(c["messages_sent"] / max(1, len(found)), 3),
            "edges": len(graph["edges"]), "rate_floor_seconds": round(floor, 3),
            "seconds_over_floor": None if not floor else round(c["seconds"] / floor, 3)}


def get_json(address: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def main_orchestrator(args) -> int:
    children: list[Child] = []
    try:
        seed = Child(SCRIPT, "seed", *(["-v"] if args.verbose else []), name="seed")
        children.append(seed)
        hello = seed.read(30)
        others = args.nodes - 1
        per = [others // args.procs + (1 if i < others % args.procs else 0) for i in range(args.procs)]
        ids: set[str] = set()
        for i, count in enumerate(per):
            if count <= 0:
                continue
            child = Child(SCRIPT, "nodes", "--contact", hello["contact"], "--node-count", str(count),
                          *(["-v"] if args.verbose else []), name=f"nodes{i}")
            children.append(child)
        for child in children[1:]:
            ids.update(child.read(60 + 2 * args.nodes)["ids"])
        log(f"{len(ids) + 1} nodes up; settling {args.settle} s")
        time.sleep(args.settle)
        sizes = []
        for child in children[1:]:
            child.send({"cmd": "tables"})
            sizes += child.read(30)["sizes"]
        seed.send({"cmd": "table"})
        seed_table = seed.read(30)["size"]
        with urllib.request.urlopen(f"http://{hello['admin']}/metrics", timeout=10) as resp:
            resp.read()
        rss_before = rss_kb(seed.pid)
        all_ids = set(ids)

        # the dashboard first, so its RSS is measured before the CLI's crawls add peers to the seed's links;
        # the page and the status first (what importing the dashboard costs), then the crawl
        for path in ("/ui", "/ui/style.css", "/ui/graph.js", "/ui/dashboard.js", "/ui/api/status"):
            with urllib.request.urlopen(f"http://{hello['admin']}{path}", timeout=10) as resp:
                resp.read()
        rss_page = rss_kb(seed.pid)
        began = time.monotonic()
        graph = get_json(hello["admin"], "/ui/api/graph")
        while graph["crawling"] and time.monotonic() - began < 300:
            time.sleep(0.25)
            graph = get_json(hello["admin"], "/ui/api/graph")
        rss_after = rss_kb(seed.pid)
        seed_id = next(n["id"] for n in graph["nodes"] if n["local"])
        all_ids.add(seed_id)
        dash = graph["crawl"]
        dashboard = {"rss_mb_before_ui": round(rss_before / 1024, 1), "rss_mb_after_ui_page": round(rss_page / 1024, 1),
                     "rss_mb_after_ui_crawl": round(rss_after / 1024, 1),
                     "nodes_found": len({n["id"] for n in graph["nodes"]} & all_ids), "seconds": dash["seconds"],
                     "messages_sent": dash["messages_sent"]}

        crawl = figures(crawl_cli(hello["contact"], args.nodes), all_ids, 20.0, 8.0)
        fast = figures(crawl_cli(hello["contact"], args.nodes, "--rate", "10000", "--parallel", "64"), all_ids,
                       10000.0, 64.0)
        emit({"benchmark": "mesh_graph", "nodes": len(all_ids), "procs": args.procs,
              "table_size_mean": round((sum(sizes) + seed_table) / (len(sizes) + 1), 1),
              "crawl": crawl, "crawl_unthrottled": fast, "dashboard": dashboard, "environment": environment()})
        if crawl["nodes_missed"] or fast["nodes_missed"]:
            raise BenchError(f"the crawl missed nodes: {crawl['nodes_missed']} / {fast['nodes_missed']}")
        return 0
    except BenchError as exc:
        return failed("mesh_graph", exc, children)
    finally:
        stop_all(children)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=sorted(ROLES))
    parser.add_argument("--contact")
    parser.add_argument("--node-count", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between the last join and the crawl")
    parser.add_argument("--quick", action="store_true", help="12 nodes, 2 processes, 3 s to settle")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.role:
        run(ROLES[args.role](args))
        return 0
    if args.quick:
        args.nodes, args.procs, args.settle = 12, 2, 3.0
    if args.nodes < 2 or args.procs < 1:
        parser.error("--nodes must be at least 2 and --procs at least 1")
    return main_orchestrator(args)


if __name__ == "__main__":
    sys.exit(main())
