"""Plots of an overlay run (optional: needs matplotlib, which is not a dependency of the package)."""

from __future__ import annotations


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
        holders = [h for h in run.holders[v] if h in d or run.up[h]]
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
