"""Real swarms in this process: 8 nodes, real CURVE sockets, one shared context, each workload."""

from __future__ import annotations

import asyncio
import os

import pytest

from zmqagents.core.membership import MembershipConfig
from zmqagents.node import NodeConfig
from zmqagents.swarm.plan import Amount, Plan
from zmqagents.swarm.runner import Swarm

pytestmark = pytest.mark.timeout(90)


def _run(plan: Plan, timeout: float = 60.0) -> dict:
    async def main():
        return await Swarm(plan, []).run()
    return asyncio.run(asyncio.wait_for(main(), timeout))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_requests_swarm_reports_every_figure():
    before = _threads()
    r = _run(Plan(nodes=8, workload="requests", seconds=4, rate=5, settle=0.5, seed=1))
    assert _threads() == before  # every node closed, the one context terminated
    assert r["joined"] == 8 and r["join_failed"] == 0
    assert r["join_s_p50"] is not None and r["join_s_p50"] <= r["join_s_p99"] <= r["join_s_max"] < 30
    assert r["requests_sent"] >= 0.6 * 8 * 5 * 4  # paced at 5/s per node for 4 s (skips show as skipped_busy)
    assert r["delivery"] == 1.0, r
    assert 0 < r["request_ms_p50"] <= r["request_ms_p99"] < 5000
    assert r["rss_mb_per_node"] is not None and 0 < r["rss_mb_per_node"] < 5
    assert r["cpu_percent_per_node"] > 0 and r["msgs_per_node_per_s"] > 5 and r["bytes_per_node_per_s"] > 500
    assert r["links_per_node"] >= 1 and r["fds"] > 8 * 8
    assert r["fd_limit"] >= r["fds"]
    assert set(r["how"]) >= {"rss_mb_per_node", "join_s", "delivery", "detect_s"}
    assert r["raw"]["hists"]["request_ms"]["count"] == r["requests_ok"]


def test_requests_are_all_answered_while_links_close_and_reopen_all_the_time():
    """--link-idle 0.3: most links close between two messages on them, and reopen on the next."""
    r = _run(Plan(nodes=8, workload="requests", seconds=4, rate=2, settle=0.5, seed=4, link_idle=0.3))
    assert r["dealers_idle_closed"] >= 8, r
    assert r["delivery"] == 1.0, r
    assert r["dealers_per_node_end"] is not None and r["fds_per_node_end"] is not None
    assert not (r["transport_drops"] or {}).get("no_route"), r


def test_idle_swarm_sends_only_upkeep():
    r = _run(Plan(nodes=8, workload="idle", seconds=3, settle=0.5))
    assert r["joined"] == 8
    assert "requests_sent" not in r and r["delivery"] is None
    assert 0 < r["msgs_per_node_per_s"] < 50  # probes and gossip only


def test_tasks_swarm_runs_tasks_through_the_dht():
    r = _run(Plan(nodes=8, workload="tasks", seconds=4, rate=1, settle=0.5, seed=2))
    assert r["tasks_sent"] >= 15
    assert r["delivery"] >= 0.9, r
    assert r["task_ms_p50"] is not None


def test_publish_swarm_delivers_to_every_other_node():
    r = _run(Plan(nodes=8, workload="publish", seconds=3, rate=1, settle=1.0, seed=3))
    assert r["publications"] >= 10
    assert r["publications_expected"] == 7 * r["publications"]  # every other node subscribed, none killed
    assert r["delivery"] >= 0.95, r
    assert r["publish_ms_p50"] is not None


def test_kills_are_detected_by_the_holders_and_pauses_are_survived():
    quick = MembershipConfig(probe_interval=0.3, probe_timeout=0.1, suspicion_min=0.6, suspicion_max=1.5,
                             gossip_interval=0.1)
    plan = Plan(nodes=10, workload="requests", seconds=6, rate=2, settle=0.5, seed=4, kill=Amount(count=2),
                pause=Amount(percent=10), at=1, pause_for=1.0, detect_timeout=15)
    r = _run_with_config(plan, lambda: NodeConfig(membership=quick, leave_timeout=0.2))
    assert r["killed"] == 2 and r["paused"] == 1
    assert r["holders"] >= 2 * 7  # 7 survivors besides the paused one hold both victims in a 10-node mesh
    assert r["undetected"] == 0, r
    assert 0 < r["detect_s_p50"] <= r["detect_s_max"] < 15
    assert r["false_positives"] == 0
    assert r["requests_failed"] >= 1  # requests to the victims failed: delivery says so
    assert r["delivery"] < 1.0


def _run_with_config(plan: Plan, config) -> dict:
    async def main():
        return await Swarm(plan, [], config=config).run()
    return asyncio.run(asyncio.wait_for(main(), 80))
