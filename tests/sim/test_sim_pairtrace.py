"""Per-pair traces of an overlay run (zmqagents/sim/pairtrace.py): they explain a revival after a
partition, change nothing in the run, and stay bounded."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from zmqagents.sim import overlay
from zmqagents.sim.command import sim
from zmqagents.sim.overlay import OverlayScenario


def _scenario(**kw) -> OverlayScenario:
    base = dict(nodes=40, seconds=32.0, seed=2, loss=0.01, partition=(8.0, 20.0, 0.25), trace=True)
    base.update(kw)
    return OverlayScenario(**base)


@pytest.fixture(scope="module")
def listed():
    return overlay.run(_scenario(slowest=3))


def test_the_slowest_revivals_are_listed_and_listing_them_changes_nothing(listed):
    plain = overlay.run(_scenario())
    assert plain["trace_digest"] == listed["trace_digest"]
    assert "slowest" not in plain and "pair_trace" not in plain
    slow = listed["slowest"]["revivals"]
    assert len(slow) == 3
    assert [s["revival_s"] for s in slow] == sorted((s["revival_s"] for s in slow), reverse=True)
    assert slow[0]["revival_s"] == pytest.approx(listed["partition_revival_s"]["p100"], abs=1e-3)
    assert all(s["sides"][0] != s["sides"][1] for s in slow)
    assert listed["slowest"]["false_positives"] == []  # none in this run


def test_a_traced_pair_shows_its_burial_the_checks_after_the_heal_and_its_revival(listed):
    slow = listed["slowest"]["revivals"][0]
    i, j = slow["observer"], slow["subject"]
    r = overlay.run(_scenario(pair_trace=((i, j),)))
    assert r["trace_digest"] == listed["trace_digest"]  # the same run, traced
    (t,) = r["pair_trace"]
    assert (t["observer"], t["subject"]) == (i, j) and t["dropped"] == 0
    lines = t["timeline"]
    assert [e[0] for e in lines] == sorted(e[0] for e in lines)
    failed = [e[0] for e in lines if e[1].startswith("i reports Failed")]
    assert failed and failed[0] == pytest.approx(slow["declared_at"], abs=1e-3)
    alive = [e[0] for e in lines if e[0] > failed[0] and e[1].startswith(("i reports Alive", "i reports TableAdded"))]
    assert alive and alive[0] == pytest.approx(slow["revived_at"], abs=1e-3)
    heal = 20.0
    # Probes cut by the partition, then the checks after the heal that revived it, answered by j.
    assert any(e[2] == "cut" and e[1].startswith("i>j") for e in lines if e[0] < heal)
    answered = [e for e in lines if heal <= e[0] <= alive[0] and e[1].startswith("j>i ack")
                and e[2].startswith("delivered")]
    checks = [e for e in lines if heal <= e[0] <= alive[0] and e[1].startswith("i>j ping check")]
    assert len(checks) >= 2 and len(answered) >= 2
    assert t["first_heard_across"]["at"] >= heal


def test_traces_are_bounded():
    r = overlay.run(_scenario(seconds=22.0, pair_trace=((0, 1), (1, 0)), pair_trace_limit=5, trace=False))
    for t in r["pair_trace"]:
        assert len(t["timeline"]) <= 5
    assert sum(t["dropped"] for t in r["pair_trace"]) > 0
    w = overlay.run(_scenario(seconds=22.0, pair_trace=((0, 1),), pair_trace_window=(10.0, 12.0), trace=False))
    assert all(10.0 <= e[0] <= 12.0 for e in w["pair_trace"][0]["timeline"])


def test_the_command_refuses_a_bad_pair():
    for bad in ("3", "3:3", "3:40", "a:b"):
        res = CliRunner().invoke(sim, ["--nodes", "40", "--seconds", "5", "--trace-pair", bad])
        assert res.exit_code == 2, bad
        assert "--trace-pair" in res.output
