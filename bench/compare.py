#!/usr/bin/env python3
"""An older commit against this checkout, side by side in one run: ``bench/throughput.py`` (and,
with ``--tasks``, ``bench/tasks.py``) of each, interleaved.

    python bench/compare.py REF                  # e.g. main, HEAD~3, a hash; 5 rounds
    python bench/compare.py REF --quick          # seconds; what the smoke test runs
    python bench/throughput.py --compare REF     # the same

REF is exported with ``git archive`` into a temporary directory (this repository's history: nothing is
checked out, no worktree is touched). Each round runs REF's benchmark with REF's package on
``PYTHONPATH``, then this checkout's with its own (the order alternates between rounds, so drift on a
shared box does not favour one side), each a full ``throughput.py`` run of one repeat: raw pyzmq and
zmqagents measured back to back in that run, as always. A commit's figure is the median over rounds.

Why whole runs of each commit's own script rather than one harness importing two packages: a benchmark
drives the public Node API of its own commit, so a run compares what a user of each commit gets, and
each run brings its own raw pyzmq reference from the same minutes.

Prints one JSON object: this checkout's figures under the keys ``bench/throughput.py`` prints
(``oneway_ratio``, ``rr_ratio``, ``pingpong_p50_ratio``, ``oneway_msgs_per_s``, ...; with ``--tasks``
also ``tasks_per_s``, ``tasks_ratio``), the same keys for REF under ``ref``, and ``new_over_ref``: this
checkout's rate over REF's (> 1 is faster), or for latencies REF's over this one's (> 1 is faster too).
Per-message CPU (``*_cpu_us_per_msg``) of both is kept: on a loaded box it moves far less than rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchError, log, median  # noqa: E402

HERE = Path(__file__).resolve().parent.parent  # this checkout

# What is compared: throughput.py's rates and latencies (higher rate / lower latency is better).
RATES = ("oneway_msgs_per_s", "raw_oneway_msgs_per_s", "oneway_ratio", "oneway_flush_msgs_per_s",
         "rr_msgs_per_s", "raw_rr_msgs_per_s", "rr_ratio")
LATENCIES = ("pingpong_p50_us", "pingpong_p99_us", "raw_pingpong_p50_us", "raw_pingpong_p99_us", "pingpong_p50_ratio")
CPU = ("oneway_cpu_us_per_msg", "rr_cpu_us_per_msg", "pingpong_cpu_us_per_msg")
TASKS = ("tasks_per_s", "task_p50_ms", "task_p99_ms", "raw_rr_msgs_per_s", "tasks_ratio")


def export(ref: str, into: Path) -> str:
    """Write the tree of commit ``ref`` into ``into``; its full hash."""
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            capture_output=True, text=True, timeout=30)
    if commit.returncode != 0:
        raise BenchError(f"{ref!r} is not a commit of {HERE}: {commit.stderr.strip()}")
    sha = commit.stdout.strip()
    archive = subprocess.Popen(["git", "-C", str(HERE), "archive", sha], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, capture_output=True, timeout=120)
    archive.stdout.close()  # type: ignore[union-attr]
    if archive.wait(timeout=120) != 0 or tar.returncode != 0:
        raise BenchError(f"could not export {ref}: {tar.stderr.decode(errors='replace').strip()}")
    return sha


def run_one(tree: Path, script: str, args: list[str], timeout: float) -> dict:
    """One run of ``tree``'s ``bench/<script>`` with ``tree``'s package first on the path; its JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, str(tree / "bench" / script), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BenchError(f"{tree.name}: bench/{script} exited {proc.returncode}: {tail}")
    try:
        out: dict = json.loads(proc.stdout)
    except ValueError:
        raise BenchError(f"{tree.name}: bench/{script} printed no JSON object") from None
    return out


def summary(runs: list[dict], keys: tuple[str, ...]) -> dict:
    """Median over runs of each key present (dicts of numbers: median per field)."""
    out: dict = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            continue
        if isinstance(values[0], dict):
            out[key] = {f: round(median([v[f] for v in values if v.get(f) is not None]), 2)
                        for f in values[0] if any(v.get(f) is not None for v in values)}
        else:
            out[key] = round(median(values), 3)
    return out


def compare(ref: str, *, rounds: int, quick: bool, tasks: bool, throughput_args: list[str]) -> dict:
    started = time.perf_counter()
    t_args = ["--repeats", "1", *(["--quick"] if quick else []), *throughput_args]
    k_args = ["--quick"] if quick else ["--tasks", "3000", "--failover-tasks", "1000"]
    runs: dict[str, dict[str, list[dict]]] = {"new": {"t": [], "k": []}, "ref": {"t": [], "k": []}}
    with tempfile.TemporaryDirectory(prefix="zmqagents-compare-") as tmp:
        old = Path(tmp) / "ref"
        old.mkdir()
        sha = export(ref, old)
        trees = {"new": HERE, "ref": old}
        for i in range(rounds):
            order = ("ref", "new") if i % 2 == 0 else ("new", "ref")
            for side in order:
                log(f"[{i + 1}/{rounds}] throughput.py of {side}")
                runs[side]["t"].append(run_one(trees[side], "throughput.py", t_args, 1800))
            if tasks:
                for side in order:
                    log(f"[{i + 1}/{rounds}] tasks.py of {side}")
                    runs[side]["k"].append(run_one(trees[side], "tasks.py", k_args, 1800))
    figures = {side: {**summary(r["t"], RATES + LATENCIES + CPU), **summary(r["k"], TASKS)}
               for side, r in runs.items()}
    new, old_f = figures["new"], figures["ref"]
    gain: dict = {}
    for key in ("oneway_msgs_per_s", "rr_msgs_per_s", "tasks_per_s", "oneway_ratio", "rr_ratio", "tasks_ratio"):
        if new.get(key) and old_f.get(key):
            gain[key] = round(new[key] / old_f[key], 3)
    for key in ("pingpong_p50_us", "pingpong_p99_us", "pingpong_p50_ratio"):
        if new.get(key) and old_f.get(key):
            gain[key] = round(old_f[key] / new[key], 3)
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=30).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30).stdout.strip())
    return {
        "benchmark": "throughput-compare",
        **new,
        "ref": {"name": ref, "commit": sha[:12], **old_f},
        "new_over_ref": gain,
        "commit": commit + ("+dirty" if dirty else ""),
        "rounds": rounds,
        "params": {"quick": quick, "tasks": tasks, "throughput_args": throughput_args,
                   "statistic": "median over rounds; each round one run of each commit's throughput.py "
                                "(raw pyzmq measured in the same run), order alternating"},
        "per_round": {side: {"oneway_ratio": [r.get("oneway_ratio") for r in rs["t"]],
                             "rr_ratio": [r.get("rr_ratio") for r in rs["t"]],
                             "pingpong_p50_ratio": [r.get("pingpong_p50_ratio") for r in rs["t"]],
                             "load_avg_at_end": [r.get("env", {}).get("load_avg_at_end") for r in rs["t"]]}
                      for side, rs in runs.items()},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", help="the older commit (anything git rev-parse takes)")
    p.add_argument("--rounds", type=int, help="runs of each commit (default 5; quick 1)")
    p.add_argument("--quick", action="store_true", help="throughput.py --quick in each run")
    p.add_argument("--tasks", action="store_true", help="also bench/tasks.py of each (tasks_per_s, tasks_ratio)")
    p.epilog = "Arguments after -- go to each throughput.py run, e.g. -- --only oneway --messages 50000"
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    rounds = args.rounds or (1 if args.quick else 5)
    if rounds < 1:
        p.error("--rounds must be positive")
    extra = argv[cut + 1:]
    try:
        out = compare(args.ref, rounds=rounds, quick=args.quick, tasks=args.tasks, throughput_args=extra)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        log(f"compare FAILED: {exc}")
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
