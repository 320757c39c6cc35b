"""sim/report.py and sim/scenario.py: what the membership, overlay and DHT runs share."""

from __future__ import annotations

from types import SimpleNamespace

from zmqagents.sim.dht_run import DhtScenario
from zmqagents.sim.membership_run import Scenario
from zmqagents.sim.overlay import OverlayScenario
from zmqagents.sim.report import counted_holders, detection, percentile, summary


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(10, 0, -1)]  # unsorted on purpose
    assert percentile(values, 0.5) == 5.0
    assert percentile(values, 0.9) == 9.0
    assert percentile(values, 0.99) == 10.0
    assert percentile(values, 1.0) == 10.0
    assert percentile([], 0.5) is None
    assert summary([0.12345]) == {"n": 1, "p50": 0.123, "p90": 0.123, "p99": 0.123, "p100": 0.123}


def test_detection_counts_only_holders_that_reported_or_still_run():
    run = SimpleNamespace(
        up=[False, True, True, False, False, True],
        crashed_at={0: 10.0, 4: 20.0},
        # node 3 held node 0 but crashed itself before noticing: neither a detection nor a miss
        holders={0: {1, 2, 3}, 4: {1, 5}},
        detected={0: {1: 12.0, 2: 15.0}, 4: {1: 21.0}},  # node 5 never reported node 4
    )
    assert sorted(counted_holders(run, 0)) == [1, 2]
    d = detection(run)
    assert d["detect_first_s"]["n"] == 2 and d["detect_first_s"]["p100"] == 2.0
    assert d["detect_all_s"] == summary([5.0])  # node 4's crash was not seen by all: no entry
    assert d["detect_holder_s"]["n"] == 3
    assert d["undetected"] == 1


def test_scenarios_keep_their_own_defaults():
    # The membership run's defaults predate `zmqagents sim`; both are relied on (tests, protocols/membership.md).
    m, o, d = Scenario(), OverlayScenario(), DhtScenario()
    assert (m.seconds, m.loss, o.seconds, o.loss, d.seconds, d.loss) == (120.0, 0.01, 60.0, 0.0, 60.0, 0.0)
    assert m.pause_span() == (30.0, 90.0) and o.pause_span() == (15.0, 75.0)
    assert Scenario(pause_window=(1.0, 2.0)).pause_span() == (1.0, 2.0)
    assert not hasattr(o, "pause_timers_first") and not hasattr(m, "join_window")
