"""The overlay simulation: real routing + membership cores together, detection, determinism, exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zmqagents.sim import overlay
from zmqagents.sim.command import sim
from zmqagents.sim.overlay import OverlayScenario, exit_code

VOLATILE = ("wall_s", "peak_rss_mb", "build_wall_s", "join_check_wall_s", "exit_code")


def _small(**kw) -> OverlayScenario:
    base = dict(nodes=60, seconds=40.0, seed=7, loss=0.01, crash=2)
    base.update(kw)
    return OverlayScenario(**base)


@pytest.fixture(scope="module")
def smoke():
    return overlay.run(_small())


def test_small_mesh_joins_detects_every_crash_without_false_positives(smoke):
    r = smoke
    assert r["join"]["joiners"] == 59 and r["join"]["joined_ok"] == 59
    assert r["join_converged_s"] is not None
    assert r["crashes"] == 2
    assert r["undetected"] == 0
    assert r["detect_all_s"]["n"] == 2
    assert r["detect_all_s"]["p100"] < 30
    assert r["false_positives"] == 0 and r["unrevived_false_positives"] == 0
    assert r["msgs_per_node_per_s"] > 0 and r["bytes_per_node_per_s"] > 0
    assert r["exit_code"] == 0


def test_same_seed_same_metrics(smoke):
    again = overlay.run(_small())
    strip = lambda r: {k: v for k, v in r.items() if k not in VOLATILE}  # noqa: E731
    assert json.dumps(strip(again), sort_keys=True) == json.dumps(strip(smoke), sort_keys=True)


def test_same_seed_same_report_across_processes():
    """Separate processes hash bytes differently (PYTHONHASHSEED): the report must not depend on it."""
    import os
    import subprocess
    import sys

    reports = []
    for hash_seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-m", "zmqagents.sim.command", "--nodes", "200", "--seconds", "30",
                              "--seed", "3", "--crash", "3", "--loss", "0.01", "--json", "--quiet"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        reports.append(json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True))
    assert reports[0] == reports[1]


def test_two_workers_run_the_same_run_as_one():
    """The parallel simulator (zmqagents/sim/parallel.py) splits the nodes over forked workers that
    run in lockstep windows of the smallest network delay; the run must be the very same: every
    node's sends (trace digest) and every metric, with joins, crashes, pauses and a partition."""
    from zmqagents.sim.parallel import run_parallel

    sc = OverlayScenario(nodes=240, seconds=30.0, seed=5, loss=0.02, crash=4, crash_window=(9.0, 14.0),
                         warm_start=True, join_fraction=0.05, pause_fraction=0.03, pause_window=(5.0, 12.0),
                         partition=(15.0, 19.0, 0.2), trace=True)
    one = overlay.run(sc)
    two, merged = run_parallel(sc, 2)
    volatile = VOLATILE + ("workers", "parallel")
    strip = lambda r: json.dumps({k: v for k, v in r.items() if k not in volatile}, sort_keys=True)  # noqa: E731
    assert one["trace_digest"] and one["trace_digest"] == two["trace_digest"]
    assert strip(one) == strip(two)
    assert two["workers"] == 2 and two["parallel"]["windows"] > 1000
    assert one["crashes"] == 4 and one["join"]["joined_ok"] == 12 and one["failed_partitioned"] > 0
    assert sorted(merged.crashed_at) == sorted(merged.detected)  # the plot's view of the merged parts


def test_a_failing_worker_ends_the_run_with_its_traceback(monkeypatch):
    from zmqagents.sim import parallel

    real = overlay.OverlayRun.counts

    def broken(self):
        if self.worker == 1:
            raise RuntimeError("worker one breaks")
        return real(self)

    monkeypatch.setattr(overlay.OverlayRun, "counts", broken)  # the forked workers inherit it
    with pytest.raises(parallel.WorkerFailed, match="worker one breaks|closed its link"):
        parallel.run_parallel(_small(nodes=40, seconds=5.0, crash=0), 2)


def test_workers_flag():
    bad = CliRunner().invoke(sim, ["--nodes", "30", "--workers", "two"])
    assert bad.exit_code == 2 and "--workers" in bad.output
    flat = CliRunner().invoke(sim, ["--nodes", "30", "--workers", "2", "--latency", "uniform:0ms:5ms"])
    assert flat.exit_code == 2 and "smallest delay" in flat.output
    res = CliRunner().invoke(sim, ["--nodes", "30", "--seconds", "30", "--seed", "1", "--crash", "1",
                                   "--crash-window", "8:10", "--workers", "2", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    out = res.stdout if hasattr(res, "stdout") else res.output
    report = json.loads(out[out.index("{"):])
    assert report["workers"] == 2 and report["undetected"] == 0


def test_warm_start_with_real_joiners():
    r = overlay.run(OverlayScenario(nodes=120, seconds=30.0, seed=2, loss=0.01, crash=1, warm_start=True,
                                    join_fraction=0.05, crash_window=(8.0, 10.0)))
    assert r["scenario"]["warm_start"] is True
    assert r["join"]["joiners"] == 6 and r["join"]["joined_ok"] == 6
    assert r["join_converged_s"] is not None
    assert r["undetected"] == 0 and r["false_positives"] == 0
    assert r["exit_code"] == 0


def test_exit_code_rules():
    base = {"unrevived_false_positives": 0, "undetected": 0, "join": {"joiners": 3}, "join_converged_s": 1.0}
    assert exit_code(base) == 0
    assert exit_code({**base, "undetected": 1}) == 128
    assert exit_code({**base, "join_converged_s": None}) == 128
    assert exit_code({**base, "undetected": 1, "unrevived_false_positives": 1}) == 129


def test_command_passes_with_json():
    res = CliRunner().invoke(sim, ["--nodes", "30", "--seconds", "30", "--seed", "1", "--crash", "1", "--crash-window", "8:10", "--json",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    out = res.stdout if hasattr(res, "stdout") else res.output
    report = json.loads(out[out.index("{"):])
    assert report["seed"] == 1 and report["crashes"] == 1 and report["undetected"] == 0


def test_command_liveness_violation_exits_128():
    # Crashes at the very end of the run cannot be detected in time: liveness is violated.
    res = CliRunner().invoke(sim, ["--nodes", "30", "--seconds", "20", "--seed", "1", "--crash", "2",
                                   "--crash-window", "19.5:19.9", "--quiet"])
    assert res.exit_code == 128, res.output


def test_command_rejects_bad_flags():
    res = CliRunner().invoke(sim, ["--nodes", "10", "--crash", "lots"])
    assert res.exit_code == 2
    res = CliRunner().invoke(sim, ["--nodes", "10", "--partition", "5:1:0.5"])
    assert res.exit_code == 2


def test_partition_reports_are_not_false_positives():
    r = overlay.run(OverlayScenario(nodes=40, seconds=45.0, seed=2, loss=0.01, partition=(8.0, 20.0, 0.25)))
    assert r["failed_partitioned"] > 0
    assert r["revived_partitioned"] > 0
    assert r["false_positives"] == 0 and r["exit_code"] == 0


def test_a_healed_partition_revives_every_pair_within_about_one_sync_interval():
    """30 % of 150 nodes cut off for 30 s, 1 % loss: every (observer, subject across the cut) pair
    declared dead is held alive again by every observer soon after the heal. Each pair's time runs from
    the heal, or from its declaration if a suspicion begun while cut off concluded later. The aim of
    issue 12 is one sync interval; the mechanism gives four periods (protocols/membership.md 10): a
    node hears from across the cut within a period of the heal and then checks every dead member at
    once, the probation takes two periods, and a lost check is retried at its deadline (half a
    second), a lost first check a period after it was sent.
    Before 216a371, 3 pairs stayed dead to the end: syncs due 50-100 s later, set while the LHM was
    high, and lost confirming checks that waited for a one-tombstone-per-sync round-robin. Before the
    heal retries p100 was 12.4 s: a lost check waited for the next sync, or a late answer restarted
    the probation. Before queued checks started as soon as a probe slot freed, and checks failed at
    the direct-ack deadline rather than a period after they were sent, p100 was 7.5 s (traced with
    zmqagents sim --trace-pair: a node's ~45 checks after the heal went out 8 per gossip interval, and
    each lost check or answer cost a period)."""
    from zmqagents.core.membership import MembershipConfig

    r = overlay.run(OverlayScenario(nodes=150, seconds=70.0, seed=1, loss=0.01, partition=(10.0, 40.0, 0.3)))
    cfg = MembershipConfig.profile("lan")
    assert r["failed_partitioned"] > 1000
    assert r["partitioned_unrevived"] == 0
    assert r["revived_partitioned"] >= r["failed_partitioned"]
    assert r["partition_revival_s"]["p100"] <= 4 * cfg.probe_interval < cfg.sync_interval
    # Timed from the heal alone (a pair declared after the heal counts from the heal): the aim.
    assert r["partition_healed_s"]["n"] == r["partition_revival_s"]["n"]
    assert r["partition_healed_s"]["p100"] <= cfg.sync_interval
    assert r["unrevived_false_positives"] == 0 and r["exit_code"] == 0


def test_a_mass_crash_is_detected_by_every_holder_within_30_s():
    """20 % of 400 nodes crash at once (1 % loss): every holder of every crashed node declares it within
    30 s, and nobody healthy is declared (issue 17's mass-crash aim, smaller). Before sweeps after mass
    burials (protocols/membership.md 4.3.1), 8 holder/crash pairs were still undetected 35 s after the
    crash (exit 128) and the slowest detected pair took 31.4 s."""
    r = overlay.run(OverlayScenario(nodes=400, seconds=55.0, seed=1, loss=0.01, crash=80, crash_window=(20.0, 20.01)))
    assert r["crashes"] == 80 and r["undetected"] == 0 and r["false_positives"] == 0
    assert r["detect_all_s"]["n"] == 80 and r["detect_all_s"]["p100"] <= 30.0
    assert r["exit_code"] == 0
