"""From a run's records to its report: percentile summaries, crash detection, engine counters, plots.

The membership run (:mod:`zmqagents.sim.membership_run`) and the overlay run
(:mod:`zmqagents.sim.overlay`, and the DHT run on top of it) record crashes the same way: ``up``
(index -> still running), ``crashed_at`` (index -> crash time), ``holders`` (index -> the live nodes
whose membership held it at crash time) and ``detected`` (index -> {holder: time it reported the
crash}). The functions here read those, so that both reports define detection alike.
The plot needs matplotlib, which is not a dependency of the package; it is imported only there.
"""

from __future__ import annotations

import math
from typing import Protocol

from .engine import SimReport


class CrashRecords(Protocol):
    up: list[bool]
    crashed_at: dict[int, float]
    holders: dict[int, set[int]]
    detected: dict[int, dict[int, float]]


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``, rounded to 3 decimals; None if empty."""
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
    return round(s[i], 3)


def summary(values: list[float]) -> dict:
    """``n``, p50, p90, p99 and p100 of ``values``: the distribution form of every timing in a report."""
    return {"n": len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99), "p100": percentile(values, 1.0)}


def counted_holders(run: CrashRecords, v: int) -> list[int]:
    """The holders of crashed node ``v`` that count: those that reported it, and those still up. A
    holder that crashed or left before noticing cannot report, so it is neither a detection nor a miss."""
    d = run.detected[v]
    return [h for h in run.holders[v] if h in d or run.up[h]]


def detection(run: CrashRecords) -> dict:
    """Per crash, the time from the crash to the first report (``detect_first_s``) and to the last
    counted holder's (``detect_all_s``, only for crashes every counted holder reported), and per
    (holder, crash) pair (``detect_holder_s``); ``undetected``: pairs never reported."""
    first, last, per_holder = [], [], []
    undetected = 0
    for v, t_c in run.crashed_at.items():
        d = run.detected[v]
        if d:
            first.append(min(d.values()) - t_c)
        holders = counted_holders(run, v)
        got = [d[h] - t_c for h in holders if h in d]
        per_holder.extend(got)
        missing = len(holders) - len(got)
        undetected += missing
        if holders and not missing:
            last.append(max(got))
    return {"detect_first_s": summary(first), "detect_all_s": summary(last), "detect_holder_s": summary(per_holder),
            "undetected": undetected}


def engine_counts(rep: SimReport) -> dict:
    """The engine's own counters of a run, for the report's ``sim`` entry."""
    return {"events": rep.events, "sent": rep.sent, "delivered": rep.delivered, "dropped_loss": rep.dropped_loss,
            "dropped_partition": rep.dropped_partition, "dropped_crashed": rep.dropped_crashed,
            "stale_timers": rep.stale_timers}


def plot_run(run, report: dict, path: str) -> None:
    """Write a PNG: left, the share of holders that marked each crashed node Failed against the time
    since its crash (dissemination of the detection, one line per crash); right, holders' Failed
    reports per second over the run (detection over time), crash times marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for v, t_c in sorted(run.crashed_at.items()):
        d = run.detected[v]
        holders = counted_holders(run, v)
        if not holders:
            continue
        times = sorted(d[h] - t_c for h in holders if h in d)
        ys = [(k + 1) / len(holders) for k in range(len(times))]
        ax1.step([0.0] + times, [0.0] + ys, where="post", alpha=0.5, linewidth=1)
    ax1.set_xlabel("seconds since crash")
    ax1.set_ylabel("holders that marked it Failed")
    ax1.set_ylim(0, 1.02)
    ax1.set_title("dissemination of each detection")
    seconds = run.sc.seconds
    bins = max(1, int(seconds))
    ax2.hist(run.detect_times, bins=bins, range=(0, seconds), color="tab:red", alpha=0.7)
    for t_c in run.crashed_at.values():
        ax2.axvline(t_c, color="grey", linewidth=0.5, alpha=0.5)
    ax2.set_xlabel("virtual time (s)")
    ax2.set_ylabel("Failed reports per second")
    ax2.set_title("detections over time (grey: crashes)")
    fig.suptitle(f"{report['scenario']['nodes']} nodes, seed {report['seed']}, loss {report['scenario']['loss']}: "
                 f"detect_all p50 {report['detect_all_s']['p50']} s, p100 {report['detect_all_s']['p100']} s, "
                 f"false positives {report['false_positives']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
