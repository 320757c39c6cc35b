"""The DHT simulation run (zmqagents.sim.dht_run, `zmqagents sim --dht-keys`): real routing + membership + DHT cores, puts and gets around a crash."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zmqagents.sim import dht_run
from zmqagents.sim.command import sim
from zmqagents.sim.dht_run import DhtScenario, exit_code, timeline, violations

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


def test_command_rejects_dht_flags_that_do_not_fit():
    res = CliRunner().invoke(sim, ["--nodes", "20", "--seconds", "20", "--dht-keys", "5"])
    assert res.exit_code == 2 and "--seconds" in res.output
    res = CliRunner().invoke(sim, ["--nodes", "20", "--seconds", "60", "--dht-keys", "5", "--crash-window", "10:20"])
    assert res.exit_code == 2 and "--crash-window" in res.output
    res = CliRunner().invoke(sim, ["--nodes", "20", "--dht-keys", "-1"])
    assert res.exit_code == 2
