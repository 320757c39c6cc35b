"""The DHT simulation run (zmqagents.sim.dht_run, `zmqagents sim --dht-keys`): real routing + membership + DHT cores, puts and gets around a crash."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zmqagents.sim import dht_run
from zmqagents.sim.command import sim
from zmqagents.sim.dht_run import DhtScenario, exit_code, timeline, violations
from zmqagents.sim.parallel import run_parallel

VOLATILE = ("wall_s", "peak_rss_mb", "build_wall_s", "join_check_wall_s", "exit_code")


def _small(**kw) -> DhtScenario:
    base = dict(nodes=200, seconds=60.0, seed=3, keys=50, crash=10, warm_start=True, join_fraction=0.03)
    base.update(kw)
    return DhtScenario(**base)


@pytest.fixture(scope="module")
def smoke():
    return dht_run.run(_small())


@pytest.mark.timeout(60)
def test_puts_and_gets_succeed_around_a_crash(smoke):
    r = smoke
    d = r["dht"]
    assert d["keys"] == 50 and d["puts_stored"] == 50 and d["puts_failed"] == {} and d["puts_unfinished"] == 0
    assert sum(d["put_replicas"].values()) == 50
    assert r["crashes"] == 10
    for phase in ("gets_before", "gets_after"):
        g = d[phase]
        assert g["attempted"] == 50
        assert g["found"] == 50 and g["wrong_record"] == 0 and g["unfinished"] == 0, g
        assert g["get_ms"]["p100"] < 2000  # no get waited for a 2 s hard timeout
    assert r["lookup_success"] == 1.0 and r["get_success_after_crash"] == 1.0
    assert 1 <= r["lookup_rounds_p50"] <= 3 and r["lookup_rounds_p50"] <= r["lookup_rounds_p99"]
    assert d["waited_hard_timeout"] == 0
    # the timeline puts the crash between the two rounds of gets, one republish interval (+10 % jitter) apart
    tl = d["timeline_s"]
    assert tl["gets_before"][1] < tl["crash_at"] < tl["gets_after"][0]
    assert tl["gets_after"][0] - tl["crash_at"] >= 1.1 * d["republish_interval_s"]
    assert d["stats"]["republished"] >= 50  # every publisher re-stored its record at least once
    assert d["holders"]["at_crash"]["keys_lost"] == 0
    assert d["violations"] == [] and r["exit_code"] == 0


@pytest.mark.timeout(60)
def test_same_seed_same_report(smoke):
    again = dht_run.run(_small())
    strip = lambda r: {k: v for k, v in r.items() if k not in VOLATILE}  # noqa: E731
    for r in (again, smoke):
        for h in r["dht"]["holders"].values():
            h.pop("scan_wall_s", None)
    assert json.dumps(strip(again), sort_keys=True) == json.dumps(strip(smoke), sort_keys=True)


@pytest.mark.timeout(120)
def test_two_workers_run_the_same_dht_run_as_one(smoke):
    """The DHT run on the parallel workers (zmqagents/sim/parallel.py): every worker draws the same
    publishers and getters and the owner of each runs the operation; the merged report is the one
    process's, field for field, and every node sent the same messages (trace digest)."""
    sc = lambda: _small(trace=True, loss=0.01, pause_fraction=0.02, pause_window=(12.0, 40.0))  # noqa: E731
    one = dht_run.run(sc())
    two, _merged = run_parallel(sc(), 2)
    volatile = VOLATILE + ("workers", "parallel")
    for r in (one, two):
        for h in r["dht"]["holders"].values():
            h.pop("scan_wall_s")
    strip = lambda r: json.dumps({k: v for k, v in r.items() if k not in volatile}, sort_keys=True)  # noqa: E731
    assert one["trace_digest"] and one["trace_digest"] == two["trace_digest"]
    assert strip(one) == strip(two)
    assert two["workers"] == 2 and two["parallel"]["windows"] > 1000
    assert one["paused_nodes"] == 4 and one["crashes"] == 10
    assert one["dht"]["puts_stored"] == 50 and one["dht"]["gets_after"]["attempted"] == 50


def test_a_get_counts_only_if_its_key_was_stored_before_it_started():
    # (key, start, outcome, reason, local, rounds, ms): what a worker records of each get it ran
    gets = [(0, 20.0, "found", None, False, 2, 12.0), (1, 20.0, "found", None, True, 0, 0.1),
            (2, 20.0, "not_found", None, False, 3, 30.0), (3, 20.0, None, None, False, None, 0.0),
            (4, 20.0, "failed", "timeout", False, None, 2000.0),
            (5, 20.0, "found", None, False, 1, 5.0),  # its put finished at 20.0: after the get started
            (6, 20.0, "not_found", None, False, 1, 5.0)]  # never stored
    ph = dht_run._Phase(gets, {0: 12.0, 1: 12.0, 2: 12.0, 3: 12.0, 4: 12.0, 5: 20.0})
    r = ph.report()
    assert (r["attempted"], r["found"], r["local"], r["not_found"], r["unfinished"]) == (5, 2, 1, 1, 1)
    assert r["failed"] == {"timeout": 1} and r["rounds"]["n"] == 2 and r["get_ms"]["n"] == 4
    assert ph.success() == 0.4


def test_losing_every_replica_is_a_liveness_failure():
    # One replica per key and most nodes crashing: keys whose only holder and publisher died are gone.
    r = dht_run.run(_small(nodes=60, keys=30, crash=30, replicas=1, seconds=50.0, warm_start=False))
    d = r["dht"]
    lost = d["holders"]["at_crash"]["keys_lost"]
    assert lost > 0
    assert r["get_success_after_crash"] <= 1 - lost / d["puts_stored"]
    assert any("get_success_after_crash" in v for v in d["violations"])
    assert r["exit_code"] == 128


def _report(**dht) -> dict:
    g = {"wrong_record": 0}
    base = {"unrevived_false_positives": 0, "undetected": 0, "join": {"joiners": 3}, "join_converged_s": 1.0,
            "crashes": 2, "lookup_success": 1.0, "get_success_after_crash": 1.0,
            "dht": {"keys": 10, "puts_stored": 10, "gets_before": dict(g), "gets_after": dict(g),
                    "waited_hard_timeout": 0}}
    base["dht"].update(dht)
    return base


def _code(r: dict) -> int:
    r["dht"]["violations"] = violations(r)
    return exit_code(r)


def test_exit_code_rules():
    assert _code(_report()) == 0
    assert _code({**_report(), "get_success_after_crash": 0.999}) == 0
    assert _code({**_report(), "get_success_after_crash": 0.998}) == 128
    assert _code({**_report(), "crashes": 0, "get_success_after_crash": 0.999}) == 128  # nothing crashed: all
    assert _code({**_report(), "lookup_success": 0.99}) == 128
    assert _code(_report(puts_stored=9)) == 128
    assert _code(_report(waited_hard_timeout=1)) == 128
    assert _code({**_report(), "undetected": 1}) == 128  # the overlay's rules still hold
    assert _code(_report(gets_after={"wrong_record": 1})) == 129
    assert _code({**_report(waited_hard_timeout=1), "unrevived_false_positives": 1}) == 129


def test_timeline_fills_the_run_and_refuses_too_short_runs():
    tl = timeline(DhtScenario(seconds=300.0))
    assert tl.puts == (10.0, 20.0) and tl.gets_before == (25.0, 35.0) and tl.crash_at == 40.0
    assert tl.republish == pytest.approx(235 / 1.1)
    assert tl.gets_after[0] == pytest.approx(40 + 235 + 5) and tl.gets_after[1] + 5 <= 300
    with pytest.raises(ValueError, match="--seconds"):
        timeline(DhtScenario(seconds=30.0))


@pytest.mark.timeout(60)
def test_command_with_dht_keys_prints_the_figures():
    res = CliRunner().invoke(sim, ["--nodes", "40", "--seconds", "50", "--seed", "2", "--dht-keys", "10",
                                   "--crash", "10%", "--quiet", "--json"])
    assert res.exit_code in (0, 128), res.output
    out = res.stdout if hasattr(res, "stdout") else res.output
    report = json.loads(out[out.index("{"):])
    for key in ("lookup_success", "lookup_rounds_p50", "lookup_rounds_p99", "get_success_after_crash",
                "wall_s", "peak_rss_mb"):
        assert key in report
    assert report["crashes"] == 4 and report["dht"]["keys"] == 10
    assert res.exit_code == report["exit_code"]


@pytest.mark.timeout(60)
def test_command_runs_the_dht_run_on_two_workers():
    res = CliRunner().invoke(sim, ["--nodes", "40", "--seconds", "50", "--seed", "2", "--dht-keys", "10",
                                   "--crash", "10%", "--workers", "2", "--quiet", "--json"])
    assert res.exit_code in (0, 128), res.output
    out = res.stdout if hasattr(res, "stdout") else res.output
    report = json.loads(out[out.index("{"):])
    assert report["workers"] == 2 and report["dht"]["keys"] == 10 and report["dht"]["puts_stored"] == 10
    assert res.exit_code == report["exit_code"]


def test_command_rejects_dht_flags_that_do_not_fit():
    res = CliRunner().invoke(sim, ["--nodes", "20", "--seconds", "20", "--dht-keys", "5"])
    assert res.exit_code == 2 and "--seconds" in res.output
    res = CliRunner().invoke(sim, ["--nodes", "20", "--seconds", "60", "--dht-keys", "5", "--crash-window", "10:20"])
    assert res.exit_code == 2 and "--crash-window" in res.output
    res = CliRunner().invoke(sim, ["--nodes", "20", "--dht-keys", "-1"])
    assert res.exit_code == 2
