#!/usr/bin/env python3
"""Real nodes at scale on this box: `zmqagents swarm` as a user runs it, next to raw pyzmq's cost of a link.

What it measures:

* ``swarm``: the report of ``zmqagents swarm --nodes N --procs P --workload W --seconds S --json``
  (a subprocess, exactly that command line): ``rss_mb_per_node``, ``join_s_p99``, ``request_ms_p99``,
  ``delivery``, ``links_per_node``, ``fds`` ... (its ``how`` says how each is made). The top-level keys
  repeat the issue's four figures.
* ``raw_pyzmq``, in the same run, in a fresh process: one context, a CURVE ROUTER and ``--raw-links``
  CURVE DEALERs connected to it, one 100-byte message each; RSS after minus before, per connection
  (both ends in the process, as for two in-process nodes). It prices what libzmq holds per link.
* ``rss_per_node_explained``: ``links_per_node`` x half of that per-connection cost (a node holds one
  end of each of its links), in MB, and its share of ``rss_mb_per_node``: how much of a node's memory
  is its connections, which the protocol decides (a node keeps a link to most of its routing table),
  rather than the node's own objects.
* ``limits``: what bounded the run: fds used against the limit per process, CPU of the swarm's
  processes against the box's cores, RSS against the memory available.

Prints one JSON object on stdout; progress goes to stderr.

    python bench/swarm.py --nodes 1000 --procs 2 --workload requests --seconds 60
    python bench/swarm.py --quick      # 8 nodes, one process, 3 s of requests (< 30 s)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BoxLoad, environment, log  # noqa: E402

AIM_MB_PER_NODE = 0.5  # issue 18: memory per extra in-process node, idle

RAW = r"""
import json, sys, time, zmq
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
n = int(sys.argv[1])
ctx = zmq.Context()
ctx.set(zmq.MAX_SOCKETS, n + 64)
spub, ssec = zmq.curve_keypair()
router = ctx.socket(zmq.ROUTER)
router.curve_server, router.curve_secretkey, router.curve_publickey = True, ssec, spub
port = router.bind_to_random_port("tcp://127.0.0.1")
time.sleep(0.2)
before = rss()
dealers = []
for _ in range(n):
    d = ctx.socket(zmq.DEALER)
    d.curve_publickey, d.curve_secretkey = zmq.curve_keypair()
    d.curve_serverkey = spub
    d.connect(f"tcp://127.0.0.1:{port}")
    d.send(b"x" * 100)
    dealers.append(d)
for _ in range(n):
    router.recv_multipart()
time.sleep(0.3)
print(json.dumps({"links": n, "kb_per_connection_both_ends": round((rss() - before) / n, 2)}))
for d in dealers:
    d.close(0)
router.close(0)
ctx.term()
"""


def raw_pyzmq(links: int) -> dict:
    out = subprocess.run([sys.executable, "-c", RAW, str(links)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"raw pyzmq measurement failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 nodes, one process, 3 s of requests")
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--workload", default="requests")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--raw-links", type=int, default=500, help="CURVE connections in the raw pyzmq measurement")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the swarm may take in all")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.procs, args.seconds, args.raw_links = 8, 1, 3.0, 100
    box = BoxLoad()
    started = time.monotonic()
    raw = raw_pyzmq(args.raw_links)
    log(f"raw pyzmq: {raw['kb_per_connection_both_ends']} KB per CURVE connection (both ends)")
    command = [sys.executable, "-m", "zmqagents.cli", "swarm", "--nodes", str(args.nodes), "--procs", str(args.procs),
               "--workload", args.workload, "--rate", str(args.rate), "--seconds", str(args.seconds), "--json"]
    log("running: zmqagents " + " ".join(command[3:]))
    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=args.timeout)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0:
        log(f"zmqagents swarm exited {run.returncode}")
        if not lines:
            return 1
    report = json.loads(lines[-1])  # a --procs run whose child failed still reports the others
    links = report["links_per_node"] or 0.0
    per_node = report["rss_mb_per_node"]
    # links_per_node is over the nodes that joined; a node that did not join holds (almost) none
    joined_share = report["joined"] / report["nodes"] if report["nodes"] else 0.0
    explained = links * joined_share * raw["kb_per_connection_both_ends"] / 2 / 1024
    mem_available_mb = _meminfo("MemAvailable") / 1024
    out = {
        "benchmark": "swarm",
        "swarm_exit": run.returncode,
        "nodes": report["nodes"],
        "procs": report["procs"],
        "rss_mb_per_node": per_node,
        "join_s_p99": report["join_s_p99"],
        "request_ms_p99": report.get("request_ms_p99"),
        "delivery": report["delivery"],
        "links_per_node": links,
        "aim_mb_per_node": AIM_MB_PER_NODE,
        "aim_met": per_node is not None and per_node <= AIM_MB_PER_NODE,
        "raw_pyzmq": raw,
        "rss_per_node_explained": {
            "links_mb": round(explained, 3),
            "links_share": round(explained / per_node, 3) if per_node else None,
            "rest_mb": round(per_node - explained, 3) if per_node is not None else None,
        },
        "limits": {
            "fds_per_process": round(report["fds"] / report["procs"]),
            "fd_limit_per_process": report["fd_limit"] // report["procs"] if report["procs"] else None,
            "fds_per_node": report["fds_per_node"],
            "cpu_cores_used": round(report["cpu_percent_per_node"] * report["nodes"] / 100, 2)
            if report["cpu_percent_per_node"] is not None else None,
            "cpu_cores": os.cpu_count(),
            "rss_mb_all_processes": report["rss_mb"],
            "mem_available_mb_at_end": round(mem_available_mb),
        },
        "swarm": report,
        "params": {"nodes": args.nodes, "procs": args.procs, "workload": args.workload, "seconds": args.seconds,
                   "rate": args.rate, "quick": args.quick, "command": "zmqagents " + " ".join(command[3:])},
        "env": {**environment(), **box.report(), "uptime": _uptime()},
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(out, indent=2))
    return 0 if run.returncode == 0 else 1


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
