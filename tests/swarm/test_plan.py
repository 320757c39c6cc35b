"""The swarm's plan: every bad combination refused before a socket opens, with the flag named."""

from __future__ import annotations

import pytest

from zmqagents.errors import InvalidArgument
from zmqagents.swarm.plan import Amount, Plan


def test_amounts():
    assert Amount.parse("10%", "--kill").of(8) == 1  # rounds up: a fault never does nothing
    assert Amount.parse("50 %", "--kill").of(9) == 5
    assert Amount.parse("3", "--kill").of(100) == 3
    assert str(Amount.parse("2.5%", "--kill")) == "2.5%"
    for bad in ("0%", "101%", "0", "1.5", "x", "-3", ""):
        with pytest.raises(InvalidArgument, match="--kill"):
            Amount.parse(bad, "--kill")


def test_a_good_plan_counts_its_faults():
    plan = Plan(nodes=20, kill=Amount(percent=10), pause=Amount(count=3), at=5, seconds=10).check()
    assert plan.faults == {"kill": 2, "pause": 3}


@pytest.mark.parametrize("kw, says", [
    ({"nodes": 0}, "--nodes"),
    ({"workload": "flood"}, "--workload"),
    ({"seconds": 0}, "--seconds"),
    ({"rate": -1}, "--rate"),
    ({"size": 10**7}, "--size"),
    ({"kill": Amount(count=1)}, "need --at"),
    ({"at": 3}, "time of a fault"),
    ({"kill": Amount(count=1), "at": 30}, "within the workload"),
    ({"kill": Amount(count=5), "pause": Amount(count=3), "at": 1}, "leave at least one node"),
    ({"listen": "tcp://127.0.0.1:7000"}, "port 0"),
    ({"listen": "udp://x"}, "tcp://HOST:0"),
    ({"join_concurrency": 0}, "--join-concurrency"),
    ({"link_idle": -1}, "--link-idle"),
    ({"link_idle": float("inf")}, "--link-idle"),
])
def test_bad_plans_say_which_flag(kw, says):
    with pytest.raises(InvalidArgument, match=says):
        Plan(**{"nodes": 8, "seconds": 10, **kw}).check()
