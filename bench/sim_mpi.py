#!/usr/bin/env python3
"""The simulator on MPI against the forked workers and one process: the same run, and what keeping
the workers in step costs each way.

Runs one ``zmqagents sim`` scenario (``--nodes``, ``--seconds``, ``--seed``, ``--crash``; ``--trace``
on) three ways, one after the other, as a user would type them:

* ``single``: ``zmqagents sim ... --workers 1``, one process;
* ``fork``: ``zmqagents sim ... --workers R``, R forked workers over socketpairs (sim/exchange.py);
* ``mpi``: ``mpirun -n R zmqagents sim ...``, R MPI ranks over MPI collectives (sim/mpi.py).

Per way: ``wall_s``, ``build_wall_s``, ``peak_rss_mb`` (summed) and, for the parallel ones,
``windows`` (lockstep windows), ``peak_rss_mb_per_worker``, ``swap_wait_s`` per worker (wall seconds
swapping and waiting at window ends) and ``swap_ms_per_window`` (their mean over the workers, per
window): the price of the lockstep, which is what grows with ranks on a cluster. Also the run's
``false_positives``, ``detect_all_s`` and ``exit_code``. ``same_report``: the reports are equal
but for the wall-clock fields (wall_s, build_wall_s, join_check_wall_s, peak_rss_mb, workers,
parallel) and ``same_trace``: their trace digests (every message every node sent) are equal; the
run is invalid (exit 1) if either is false. Ratios from the same run: ``mpi_over_fork_wall``,
``mpi_over_fork_swap_ms``. ``env`` has the box's load (the figures are noisy on a shared box).

Needs MPICH's mpirun and the ``mpi`` extra (see setup.cfg). Prints one JSON object on stdout.

    python bench/sim_mpi.py                 # 10,000 nodes, 60 s, 2 workers/ranks (~10 min on 2 idle cores)
    python bench/sim_mpi.py --quick         # 150 nodes, 20 s (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, BoxLoad, environment, log  # noqa: E402

ZMQAGENTS = str(Path(sys.executable).with_name("zmqagents"))
WALL_CLOCK = ("wall_s", "build_wall_s", "join_check_wall_s", "peak_rss_mb", "workers", "parallel")


def _sim(cmd: list[str], timeout: float) -> dict:
    """Run one ``zmqagents sim`` (in its own session: on timeout, mpirun and its ranks end together)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BenchError(f"{' '.join(cmd[:6])} ... did not end within {timeout} s") from None
    if proc.returncode not in (0, 128, 129):
        raise BenchError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n{stderr[-3000:]}")
    try:
        report = json.loads(stdout)
    except ValueError:
        raise BenchError(f"no JSON report from {' '.join(cmd[:6])} ...:\n{stdout[:1000]}") from None
    if report["exit_code"] != proc.returncode:
        raise BenchError(f"exit code {proc.returncode}, report says {report['exit_code']}")
    log(f"{cmd[0].rsplit('/', 1)[-1]} ... done in {time.monotonic() - t0:.1f} s")
    return report


def _figures(report: dict) -> dict:
    out = {k: report[k] for k in ("wall_s", "build_wall_s", "peak_rss_mb", "false_positives", "detect_all_s",
                                  "exit_code")}
    par = report.get("parallel")
    if par is not None:
        waits = par["swap_wait_s"]
        out.update(windows=par["windows"], peak_rss_mb_per_worker=par["peak_rss_mb"], swap_wait_s=waits,
                   swap_ms_per_window=round(1000 * sum(waits) / len(waits) / max(1, par["windows"]), 3))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--crash", default="20")
    ap.add_argument("--ranks", type=int, default=2, help="forked workers and MPI ranks")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    ap.add_argument("--quick", action="store_true", help="150 nodes, 20 s, 2 crashes")
    a = ap.parse_args()
    if a.quick:
        a.nodes, a.seconds, a.crash = 150, 20.0, "2"
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise BenchError("mpirun is missing: install MPICH (Debian: apt-get install mpich libmpich-dev)")
    load = BoxLoad()
    args = ["--nodes", str(a.nodes), "--seconds", str(a.seconds), "--seed", str(a.seed), "--crash", a.crash,
            "--trace", "--json", "--quiet"]
    reports = {
        "single": _sim([ZMQAGENTS, "sim", *args, "--workers", "1"], a.timeout),
        "fork": _sim([ZMQAGENTS, "sim", *args, "--workers", str(a.ranks)], a.timeout),
        "mpi": _sim([mpirun, "-n", str(a.ranks), ZMQAGENTS, "sim", *args], a.timeout),
    }
    strip = {k: json.dumps({f: v for f, v in r.items() if f not in WALL_CLOCK}, sort_keys=True)
             for k, r in reports.items()}
    same_report = strip["single"] == strip["fork"] == strip["mpi"]
    same_trace = len({r.get("trace_digest") for r in reports.values()}) == 1
    fork, mpi = _figures(reports["fork"]), _figures(reports["mpi"])
    out = {
        "nodes": a.nodes, "seconds": a.seconds, "seed": a.seed, "crash": a.crash, "ranks": a.ranks,
        **{k: _figures(r) for k, r in reports.items()},
        "same_report": same_report, "same_trace": same_trace,
        "mpi_over_fork_wall": round(mpi["wall_s"] / fork["wall_s"], 3),
        "mpi_over_fork_swap_ms": round(mpi["swap_ms_per_window"] / max(1e-9, fork["swap_ms_per_window"]), 3),
        "env": {**environment(), **load.report()},
    }
    print(json.dumps(out, indent=1))
    if not (same_report and same_trace):
        log("the three runs differ: the run is invalid")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"sim_mpi: {exc}")
        sys.exit(1)
