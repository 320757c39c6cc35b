"""``zmqagents sim``: run the overlay simulation (real routing + membership cores) and report JSON.

With ``--dht-keys N`` every node also runs the DHT core and the run puts and gets N records around a
crash (:mod:`zmqagents.sim.dht_run`).

Registered in the CLI with ``cli.add_command(sim)``; also runnable as ``python -m zmqagents.sim.command``.
Exit codes: 0 pass, 128 liveness violated (a crash not detected by every holder, or the join did
not converge; with --dht-keys also: a put not stored, a get before the crash that missed, fewer than
99.9 % of the gets after the crash found, or an operation that waited on a hard timeout after a peer
answered), 129 correctness violated (a healthy node declared dead and never revived; with --dht-keys
also: a get that returned a record other than the one put).
"""

from __future__ import annotations

import json
import os
import sys

import click

from .netmodel import parse_duration, parse_latency


def _count_or_percent(text: str, n: int, what: str) -> float:
    """``"50"`` -> 50 nodes, ``"5%"`` -> 5 % of n; returns a node count."""
    t = text.strip()
    try:
        if t.endswith("%"):
            return float(t[:-1]) / 100.0 * n
        return float(t)
    except ValueError:
        raise click.BadParameter(f"{what} must be a node count (50) or a percentage (5%), got {text!r}") from None


def _window(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = (parse_duration(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{what} must be START:END in seconds (e.g. 20:80), got {text!r}") from None
    if b < a:
        raise click.BadParameter(f"{what}: END is before START")
    return a, b


def _workers(text: str, nodes: int, min_delay: float) -> int:
    """--workers: a count, or auto (see its help)."""
    if text == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not min_delay > 0:
            return 1
        return max(1, min(cpus, nodes // 2500))
    try:
        n = int(text)
        if not 1 <= n <= 64:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"must be a count from 1 to 64 or auto, got {text!r}", param_hint="--workers") from None
    if n > 1 and not min_delay > 0:
        raise click.BadParameter("the latency has no smallest delay above 0, so workers could not run apart in "
                                 "virtual time: give one (e.g. lognormal:5ms:0.5:1ms) or use --workers 1",
                                 param_hint="--workers")
    return n


def _ranks(size: int, workers: str, min_delay: float, broadcast: bool) -> int:
    """The workers of a run under mpirun: its ``size`` ranks (--workers may only repeat that)."""
    if broadcast:
        raise click.UsageError("--broadcast runs in one process: the run reads every node's deliveries in one "
                               "place (run it without mpirun)")
    if workers not in ("auto", str(size)):
        raise click.BadParameter(f"under mpirun the {size} ranks are the workers: leave it out (or give {size})",
                                 param_hint="--workers")
    if not min_delay > 0:
        raise click.BadParameter("the latency has no smallest delay above 0, so the ranks could not run apart in "
                                 "virtual time: give one (e.g. lognormal:5ms:0.5:1ms) or run without mpirun",
                                 param_hint="--latency")
    return size


@click.command("sim")
@click.option("--nodes", type=click.IntRange(2, 1_000_000), default=100, show_default=True, help="Simulated nodes.")
@click.option("--seconds", type=click.FloatRange(1.0), default=60.0, show_default=True, help="Virtual seconds to run.")
@click.option("--seed", type=int, default=1, show_default=True, help="Run seed: same seed, same run.")
@click.option("--loss", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True, help="Message loss rate.")
@click.option("--latency", default="lognormal:5ms:0.5", show_default=True,
              help="const:D, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA[:FLOOR] (FLOOR default MEDIAN/5). "
                   "The smallest delay is also how far --workers may run apart.")
@click.option("--profile", type=click.Choice(["lan", "wan", "edge"]), default="lan", show_default=True,
              help="Membership timing profile.")
@click.option("--crash", "crash", default="0", show_default=True, help="Nodes to crash: a count or N%.")
@click.option("--crash-window", default=None, help="START:END (s) of the crashes [default: after joins .. 2/3 of the run].")
@click.option("--pause", default="0", show_default=True,
              help="Nodes to pause (stall: no reads, no timers) --pause-duty of each --pause-period: a count or N%.")
@click.option("--pause-duty", type=click.FloatRange(0.0, 1.0), default=0.9, show_default=True)
@click.option("--pause-period", type=click.FloatRange(0.01), default=1.0, show_default=True)
@click.option("--pause-window", default=None, help="START:END (s) of the pauses [default: seconds/4 for 60 s].")
@click.option("--partition", default=None, metavar="START:END:FRACTION",
              help="Cut FRACTION of the nodes off from the rest between START and END (s).")
@click.option("--warm-start/--full-join", default=None,
              help="Fill most routing tables as if joined and let --join-fraction of them join for real [default above 500 nodes], "
                   "or have every node join via real lookups.")
@click.option("--join-fraction", type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True,
              help="With --warm-start: fraction of nodes that join via real lookups.")
@click.option("--dht-keys", type=click.IntRange(0, 1_000_000), default=0, show_default=True,
              help="Also run the DHT core on every node: put this many records, get each before and after "
                   "--crash (all crashed at one time), one republish interval apart (see above).")
@click.option("--dht-replicas", type=click.IntRange(1, 20), default=3, show_default=True,
              help="With --dht-keys: nodes that hold each record (DhtConfig.replicas).")
@click.option("--broadcast", "broadcast", type=click.FloatRange(0.0, min_open=True), default=None, metavar="RATE",
              help="Also run the broadcast core (Plumtree) on every node and publish RATE messages per second, "
                   "each by a random live node (see zmqagents/sim/broadcast_run.py for the figures).")
@click.option("--topics", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="With --broadcast: each publication goes to one of this many topics or to the mesh-wide one.")
@click.option("--subscribers", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.3, show_default=True,
              help="With --broadcast --topics: fraction of the nodes subscribed to each topic.")
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON report (default: a summary line per metric).")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a PNG of detection and dissemination over time (needs matplotlib).")
@click.option("--workers", default="auto", show_default=True, metavar="N|auto",
              help="Processes to run the simulation on (the same run, whatever N: see zmqagents/sim/parallel.py). "
                   "auto: one per usable CPU, at most one per 2,500 nodes (below that, keeping the workers in "
                   "step costs more than it saves). Under mpirun the MPI ranks are the workers, on one machine or "
                   "many (needs the mpi extra: zmqagents/sim/mpi.py); only rank 0 prints.")
@click.option("--trace", is_flag=True,
              help="Add trace_digest to the report: one digest of every message every node sent (when, to whom, "
                   "whether lost). Two runs with the same digest are the same run, however they were split.")
@click.option("--trace-pair", "trace_pair", multiple=True, metavar="OBSERVER:SUBJECT",
              help="Report the timeline of this pair of node numbers (repeatable, at most 16): what they sent "
                   "each other, the observer's indirect probes of the subject, rumors about the subject it "
                   "heard, what it reported (report pair_trace; zmqagents/sim/pairtrace.py). Changes nothing in the run.")
@click.option("--trace-window", default=None, metavar="START:END", help="With --trace-pair: only entries in this window (s).")
@click.option("--trace-slowest", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="List this many of the slowest revivals after --partition and of the false positives "
                   "(report slowest), to trace them with --trace-pair in a run of the same seed.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def sim(nodes, seconds, seed, loss, latency, profile, crash, crash_window, pause, pause_duty, pause_period,
        pause_window, partition, warm_start, join_fraction, dht_keys, dht_replicas, broadcast, topics, subscribers,
        workers, trace, as_json, plot, trace_pair, trace_window, trace_slowest, quiet):
    """Simulate a mesh of NODES nodes running the real routing and membership cores.

    Prints the seed, runs, and reports join convergence, failure detection times, false
    positives, traffic, wall time and peak RSS. Exit code 0 pass, 128 liveness violated,
    129 correctness violated.

    \b
    With --dht-keys N every node also runs the DHT core (signed records on --dht-replicas nodes):
      1. after the joins (10 s), N keys are put, each by a random live node;
      2. each is got once from a random live node: lookup_success, lookup_rounds_p50/_p99;
      3. the --crash nodes all crash at one time T;
      4. the run waits one republish interval: the DHT's republish_interval is set to
         R = min(600, (seconds - T - W - 15) / 1.1) (214 s in a 300 s run), and the gets
         start 1.1 R + 5 s after T, since republish timers are jittered by +-10 %;
      5. each key is got again from a random surviving node: get_success_after_crash.
    W, the spread of each phase, is 4 % of --seconds within [1, 10] s; dht.timeline_s has the times.
    Exit 128 also if a put was not stored, a get before the crash missed, fewer than 99.9 %
    of the gets after the crash (100 % with no crash) found their record, or an operation
    waited on a hard timeout after a peer answered (dht.waited_hard_timeout); 129 also if a
    get returned a record other than the one put. dht.violations says which.

    \b
    Example (the DHT figure of the overlay issue; its cost: zmqagents/sim/dht_run.py):
      zmqagents sim --nodes 10000 --seconds 300 --seed 1 --dht-keys 1000 --crash 20% --json
    """
    from .broadcast_run import BroadcastRun, BroadcastScenario
    from .dht_run import DhtRun, DhtScenario, timeline
    from .mpi import MpiUnavailable, job
    from .overlay import OverlayScenario, OverlayRun

    try:
        min_delay = parse_latency(latency).min_delay
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--latency") from None
    if broadcast is not None and dht_keys:
        raise click.UsageError("--broadcast does not go with --dht-keys (one workload per run)")
    if broadcast is not None and workers not in ("auto", "1"):
        raise click.UsageError("--broadcast runs in one process: the run reads every node's deliveries in one place")
    try:
        mpi = job()  # None unless mpirun (or another MPI launcher) started this process with 2 ranks or more
    except MpiUnavailable as exc:
        raise click.UsageError(str(exc)) from None
    if mpi is not None:
        n_workers = _ranks(mpi.size, workers, min_delay, broadcast is not None)
    else:
        n_workers = 1 if broadcast is not None else _workers(workers, nodes, min_delay)
    part = None
    if partition is not None:
        bits = partition.split(":")
        try:
            if len(bits) != 3:
                raise ValueError
            part = (parse_duration(bits[0]), parse_duration(bits[1]), float(bits[2]))
            if not 0 < part[2] < 1 or part[1] < part[0]:
                raise ValueError
        except ValueError:
            raise click.BadParameter("must be START:END:FRACTION, e.g. 20:40:0.2", param_hint="--partition") from None
    pairs = []
    for text in trace_pair:
        try:
            i, j = (int(x) for x in text.split(":"))
            if not (0 <= i < nodes and 0 <= j < nodes) or i == j:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"must be OBSERVER:SUBJECT, two different node numbers below {nodes}, "
                                     f"got {text!r}", param_hint="--trace-pair") from None
        pairs.append((i, j))
    if len(pairs) > 16:
        raise click.BadParameter("at most 16 pairs", param_hint="--trace-pair")
    n_crash = round(_count_or_percent(crash, nodes, "--crash"))
    n_pause = _count_or_percent(pause, nodes, "--pause")
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    common = dict(nodes=nodes, seconds=seconds, seed=seed, loss=loss, latency=latency, profile=profile,
                  crash=n_crash, pause_fraction=n_pause / nodes, pause_duty=pause_duty, pause_period=pause_period,
                  pause_window=_window(pause_window, "--pause-window"), partition=part,
                  warm_start=warm_start, join_fraction=join_fraction, progress=0.0 if quiet else 1.0, trace=trace,
                  pair_trace=tuple(pairs), pair_trace_window=_window(trace_window, "--trace-window"),
                  slowest=trace_slowest)
    if dht_keys:
        if crash_window is not None:
            raise click.UsageError("--crash-window does not go with --dht-keys: the DHT run crashes every --crash "
                                   "node at one time, after the first gets (see --help)")
        sc = DhtScenario(**common, keys=dht_keys, replicas=dht_replicas)
        try:
            timeline(sc)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--seconds") from None
    elif broadcast is not None:
        sc = BroadcastScenario(**common, crash_window=_window(crash_window, "--crash-window"), rate=broadcast,
                               topics=topics, subscribers=subscribers)
    else:
        sc = OverlayScenario(**common, crash_window=_window(crash_window, "--crash-window"))
    if mpi is None or mpi.rank == 0:
        click.echo(f"sim: seed {seed}" + (f", {n_workers} MPI ranks" if mpi is not None else
                                          f", {n_workers} workers" if n_workers > 1 else ""), err=True)
    if mpi is not None:
        from .mpi import run_mpi
        got = run_mpi(sc, mpi)
        if isinstance(got, int):  # not rank 0: it prints nothing, and exits as rank 0 does
            sys.exit(got)
        report, run = got
    elif n_workers > 1:
        from .parallel import run_parallel
        report, run = run_parallel(sc, n_workers)
    else:
        if broadcast is not None:
            try:
                run = BroadcastRun(sc)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--seconds") from None
        else:
            run = DhtRun(sc) if dht_keys else OverlayRun(sc)
        report = run.run()
    if plot is not None:
        from .report import plot_run
        plot_run(run, report, plot)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        for key in ("seed", "join_converged_s", "crashes", "detect_first_s", "detect_all_s", "undetected",
                    "false_positives", "unrevived_false_positives", "revived", "msgs_per_node_per_s",
                    "bytes_per_node_per_s", "wall_s", "peak_rss_mb", "exit_code"):
            click.echo(f"{key}: {json.dumps(report[key])}")
        if part is not None:
            for key in ("false_positives_in_partition", "failed_partitioned", "partitioned_unrevived",
                        "declared_after_heal", "partition_revival_s", "partition_healed_s"):
                click.echo(f"{key}: {json.dumps(report[key])}")
        if broadcast is not None:
            for key in ("broadcast_delivery", "broadcast_latency_ms", "broadcast_ldh", "broadcast_rmr",
                        "broadcast_bytes_per_node_per_s", "non_subscriber_payloads"):
                click.echo(f"{key}: {json.dumps(report[key])}")
            g = report["broadcast"]["graph"]
            click.echo(f"broadcast.graph: {json.dumps({k: g[k] for k in ('max_components', 'components_at_end')})}")
        if dht_keys:
            for key in ("lookup_success", "lookup_rounds_p50", "lookup_rounds_p99", "get_success_after_crash"):
                click.echo(f"{key}: {json.dumps(report[key])}")
            d = report["dht"]
            for key in ("puts_stored", "republish_interval_s", "waited_hard_timeout"):
                click.echo(f"dht.{key}: {json.dumps(d[key])}")
    code = report["exit_code"]
    if code:
        why = "correctness violated (a healthy node declared dead, never revived)" if code == 129 else \
            "liveness violated (a crash not detected by every holder, or the join did not converge)"
        click.echo(f"sim: {why}", err=True)
        for v in report.get("dht", {}).get("violations", []):
            click.echo(f"sim: dht {v}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    sim()
