#!/usr/bin/env python3
"""The Kubernetes load test's pods on this machine: what a swarm pod and the seed cost (deploy/k8s).

Runs the seed container and ``--pods`` swarm pods of ``deploy/k8s/<--overlay>`` as the kubelet would
start them (tools/k8s_local.py: the manifests' own command lines, environment and init container;
each pod on a loopback address of its own), with NODES, SWARM_SECONDS and WORKLOAD set from the flags
as an overlay would set them. The pods start together, as an Indexed Job's do.

While they run, every 0.5 s it reads each process's VmRSS, open fds and CPU time (schedstat, every
thread) from /proc: ``rss_mb_peak`` and ``fds_peak`` are the largest readings, ``cpu_cores_peak``
the most CPU used over one 0.5 s interval (in cores), ``cpu_cores_mean`` the CPU time over the
process's whole life divided by that life. Each pod's report is the last line of its stdout (as in
the pod's log); ``summary`` is ``zmqagents swarm collect`` of those lines, which is also checked to
merge them (its node count is the sum). What the requests and limits of deploy/k8s are sized from.

There is no raw-pyzmq side to compare with: the figures size containers, they do not rate the code
(``zmqagents swarm``'s own report carries per-node figures, and bench/overlay.py the overlay's).

    python bench/k8s_pods.py --pods 1 --nodes 500 --seconds 60    # one pod of overlays/10k, 60 s
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_DIR, BenchError, cpu_ns, environment, fd_count, log, rss_kb

sys.path.append(str(REPO_DIR / "tools"))
import k8s_local  # noqa: E402  (tools/k8s_local.py)
from kustomize_lite import render  # noqa: E402  (tools/kustomize_lite.py)

REPORT_KEYS = ("nodes", "joined", "join_failed", "join_s_p50", "join_s_p99", "request_ms_p50", "request_ms_p99",
               "delivery", "rss_mb", "rss_mb_per_node", "rss_mb_per_node_end", "cpu_percent_per_node",
               "links_per_node", "fds", "fds_per_node", "fd_limit")
INTERVAL = 0.5


class Sampler:
    """Peaks of one process's RSS, fds and CPU rate, read from /proc while it lives."""

    def __init__(self, pid: int):
        self.pid = pid
        self.started = time.monotonic()
        self.last_t, self.last_cpu = self.started, 0
        self.rss_kb_peak = self.fds_peak = 0
        self.samples = 0
        self.cpu_peak = 0.0
        self.ended: float | None = None

    def sample(self) -> None:
        try:
            rss, fds, cpu = rss_kb(self.pid), fd_count(self.pid), cpu_ns(self.pid)
        except (OSError, BenchError):
            return  # exited between two readings
        now = time.monotonic()
        self.rss_kb_peak, self.fds_peak = max(self.rss_kb_peak, rss), max(self.fds_peak, fds)
        if self.samples and now > self.last_t:  # the first reading is the baseline of the first interval
            self.cpu_peak = max(self.cpu_peak, (cpu - self.last_cpu) / 1e9 / (now - self.last_t))
        self.last_t, self.last_cpu = now, cpu
        self.samples += 1

    def figures(self) -> dict:
        life = (self.ended or time.monotonic()) - self.started
        return {"rss_mb_peak": round(self.rss_kb_peak / 1024, 1),
                "fds_peak": self.fds_peak, "cpu_s": round(self.last_cpu / 1e9, 2),
                "cpu_cores_peak": round(self.cpu_peak, 2), "cpu_cores_mean": round(self.last_cpu / 1e9 / life, 3),
                "life_s": round(life, 1)}


def run(args: argparse.Namespace, workdir: Path) -> dict:
    objects = render(REPO_DIR / "deploy" / "k8s" / args.overlay)
    params = {"NODES": str(args.nodes), "SWARM_SECONDS": str(args.seconds), "WORKLOAD": args.workload}
    deadline = time.monotonic() + args.seconds + args.budget
    with k8s_local.LocalCluster(objects, workdir, params) as cluster:
        seed, hello = cluster.start_seed()
        seed_sampler = Sampler(seed.pid)
        seed_sampler.sample()
        seed_idle_mb = round(rss_kb(seed.pid) / 1024, 1)  # before any swarm node joined
        log(f"seed {hello['contact']}")
        pods = [cluster.start_swarm_pod(index) for index in range(args.pods)]
        samplers = [Sampler(p.pid) for p in pods]
        while any(p.poll() is None for p in pods):
            if time.monotonic() > deadline:
                raise BenchError(f"the pods did not finish within --seconds + {args.budget:g} s")
            for proc, sampler in zip(pods, samplers):
                if proc.poll() is None:
                    sampler.sample()
                elif sampler.ended is None:
                    sampler.ended = time.monotonic()
            seed_sampler.sample()
            time.sleep(INTERVAL)
        for sampler in samplers:
            sampler.ended = sampler.ended or time.monotonic()
        seed_sampler.sample()
        seed_figures = seed_sampler.figures()
        seed_exit = cluster.stop(seed)
        # A pod's log, as `kubectl logs` gives it: its stderr (progress) and its stdout (the report last).
        logs = [(workdir / f"swarm-{i}" / "stderr").read_text() + (workdir / f"swarm-{i}" / "log").read_text()
                for i in range(args.pods)]
    per_pod = []
    for index, (proc, sampler, text) in enumerate(zip(pods, samplers, logs)):
        stdout = (workdir / f"swarm-{index}" / "log").read_text().strip().splitlines()
        if proc.returncode != 0 or not stdout or not stdout[-1].startswith("{"):
            raise BenchError(f"swarm-{index} exited {proc.returncode} without a report; its log ends:\n{text[-3000:]}")
        report = json.loads(stdout[-1])
        per_pod.append({"index": index, "exit": proc.returncode, **sampler.figures(),
                        "report": {k: report.get(k) for k in REPORT_KEYS}})
    # As the runbook does: every pod's log through `zmqagents swarm collect -`.
    collect = subprocess.run([sys.executable, "-m", "zmqagents.cli", "swarm", "collect", "--json", "-"], input="".join(logs),
                             capture_output=True, text=True, timeout=60)
    if collect.returncode != 0:
        raise BenchError(f"zmqagents swarm collect exited {collect.returncode}: {collect.stderr[-2000:]}")
    merged = json.loads(collect.stdout)
    summary = {k: v for k, v in merged.items() if k not in ("raw", "how")}
    if summary.get("nodes") != args.pods * args.nodes:
        raise BenchError(f"collect merged {summary.get('nodes')} nodes, the pods ran {args.pods * args.nodes}")
    return {"benchmark": "k8s_pods", "overlay": args.overlay, "pods": args.pods, "nodes_per_pod": args.nodes,
            "workload": args.workload, "seconds": args.seconds, "per_pod": per_pod,
            "seed": {"exit": seed_exit, "rss_mb_idle": seed_idle_mb, **seed_figures}, "summary": summary,
            "pod_rss_mb_peak_max": max(p["rss_mb_peak"] for p in per_pod),
            "pod_fds_peak_max": max(p["fds_peak"] for p in per_pod),
            "pod_cpu_cores_peak_max": max(p["cpu_cores_peak"] for p in per_pod),
            "environment": environment()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=2, help="swarm pods (default 2)")
    parser.add_argument("--nodes", type=int, default=250, help="nodes per pod: NODES (default 250)")
    parser.add_argument("--seconds", type=float, default=60, help="SWARM_SECONDS (default 60)")
    parser.add_argument("--workload", default="requests", help="WORKLOAD (default requests)")
    parser.add_argument("--overlay", default="base", help="under deploy/k8s (default base)")
    parser.add_argument("--budget", type=float, default=600,
                        help="seconds allowed beyond --seconds for start, joins and reports (default 600)")
    parser.add_argument("--quick", action="store_true", help="2 pods x 5 nodes, 3 s (the smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.pods, args.nodes, args.seconds, args.budget = 2, 5, 3.0, 90.0
    # SIGTERM ends the run like an error would: the pods and the seed are stopped by their PIDs on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="zq-k8s-") as tmp:
        try:
            result = run(args, Path(tmp))
        except (BenchError, RuntimeError) as exc:
            log(f"k8s_pods benchmark FAILED: {exc}")
            return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
