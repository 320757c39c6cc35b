"""The broadcast simulation (zmqagents.sim.broadcast_run, `zmqagents sim --broadcast`): routing + membership +
broadcast cores, publications under loss, crashes and a partition."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zmqagents.sim.broadcast_run import BroadcastRun, BroadcastScenario
from zmqagents.sim.command import sim

KEYS = ("broadcast_delivery", "broadcast_latency_ms", "broadcast_ldh", "broadcast_rmr",
        "broadcast_bytes_per_node_per_s", "non_subscriber_payloads")


@pytest.mark.timeout(120)
def test_every_live_subscriber_gets_every_publication_under_loss_and_crashes():
    sc = BroadcastScenario(nodes=120, seconds=30.0, seed=5, loss=0.01, crash=6, rate=4.0, topics=2,
                           subscribers=0.3, crash_window=(12.0, 20.0))
    r = BroadcastRun(sc).run()
    b = r["broadcast"]
    assert r["crashes"] == 6 and b["publications"] > 40
    assert b["broadcast_delivery"] == 1.0 and b["topic_delivery"] == 1.0, b
    assert b["broadcast_latency_ms"]["max"] < 500
    assert b["graph"]["max_components"] == 1
    # non-subscribers between subscribers forward topic payloads; the others get them only while a
    # declaration of interest is on its way (here: tree changes after losses and crashes)
    assert b["payloads_to_non_subscribers"] > 0
    assert b["non_subscriber_payloads"] < b["payloads_to_non_subscribers"] / 2
    st = b["stats"]
    assert st.get("bad_signature", 0) == 0 and st.get("malformed", 0) == 0
    assert b["state"]["neighbours"]["max"] <= 2 * 64


@pytest.mark.timeout(120)
def test_the_graph_is_one_component_again_after_a_partition_heals():
    sc = BroadcastScenario(nodes=100, seconds=45.0, seed=2, rate=2.0, partition=(12.0, 20.0, 0.3),
                           graph_check=2.0)
    r = BroadcastRun(sc).run()
    b = r["broadcast"]
    during = [c for c in b["graph"]["series"] if c["partitioned"]]
    assert during and all(c["components"] >= 2 for c in during)  # the cut really cuts
    assert b["graph"]["components_at_end"] == 1
    assert b["pairs_across_partition"] > 0 and b["pairs_in_partition"] > 0
    # publications before the cut and after the heal: within seconds of the heal (membership revives the
    # other side's contacts, the samples take them back) every live node is reached again
    assert b["broadcast_delivery"] >= 0.99
    g = b["graph"]
    assert g["last_incomplete_after_heal_s"] is None or g["last_incomplete_after_heal_s"] < 10.0, g


@pytest.mark.timeout(120)
def test_cli_flags_and_json_keys():
    res = CliRunner().invoke(sim, ["--nodes", "60", "--seconds", "20", "--broadcast", "2", "--topics", "1",
                                   "--subscribers", "0.5", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    for k in KEYS:
        assert k in report
    assert set(report["broadcast_bytes_per_node_per_s"]) == {"payload", "control"}
    assert set(report["broadcast_latency_ms"]) == {"p50", "p99", "max"}
    res = CliRunner().invoke(sim, ["--nodes", "60", "--seconds", "8", "--broadcast", "2"])
    assert res.exit_code != 0 and "too short" in res.output
