"""The benchmarks run end to end and print one well-formed JSON object.

These run each benchmark under ``bench/`` with ``--quick``
as subprocesses, exactly as a user would. They check that each exits 0 and
that its JSON holds the documented keys with sane values (positive rates,
correctness checks true). They never assert on speed or size: benchmarks are
measured, not timed tests, and a busy CI machine must not fail them.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.slow


def _run(script: str, *args: str, timeout: float = 45) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"{script} did not print one JSON object on stdout:\n{proc.stdout[:2000]}")
    assert isinstance(out, dict)
    return out


def _positive(out: dict, *keys: str) -> None:
    for key in keys:
        value = out[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{key} = {value!r}"


@pytest.mark.timeout(60)
def test_throughput_quick_reports_rates_latencies_and_correctness():
    out = _run("throughput.py", "--quick")
    _positive(
        out,
        "oneway_msgs_per_s", "raw_oneway_msgs_per_s", "oneway_ratio",
        "rr_msgs_per_s", "raw_rr_msgs_per_s", "rr_ratio",
        "pingpong_p50_us", "pingpong_p99_us", "raw_pingpong_p50_us", "raw_pingpong_p99_us",
    )
    assert out["pingpong_p50_us"] <= out["pingpong_p99_us"]
    assert out["raw_pingpong_p50_us"] <= out["raw_pingpong_p99_us"]
    for key in ("oneway_correct", "raw_oneway_correct", "rr_correct", "raw_rr_correct",
                "pingpong_correct", "raw_pingpong_correct"):
        assert out[key] is True, key
    params = out["params"]
    assert params["quick"] is True and params["repeats"] >= 1 and params["window"] >= 1
    assert params["messages"] > 0 and params["body_bytes"] == 100
    env = out["env"]
    for key in ("python", "pyzmq", "libzmq", "uvloop_used"):
        assert key in env
    assert set(out["targets"]) == {"oneway_ratio_ge_0.5", "pingpong_p50_le_150us", "pingpong_p99_le_400us"}


@pytest.mark.timeout(120)
def test_compare_runs_an_older_commit_and_this_one_side_by_side():
    # HEAD stands for "an older commit": what is exported is its committed tree, run with its own package.
    out = _run("throughput.py", "--compare", "HEAD", "--quick", "--repeats", "1", timeout=110)
    assert out["benchmark"] == "throughput-compare" and out["rounds"] == 1 and out["params"]["quick"] is True
    ref = out["ref"]
    assert ref["name"] == "HEAD" and len(ref["commit"]) == 12
    for side in (out, ref):  # the keys throughput.py prints, for each commit
        _positive(side, "oneway_msgs_per_s", "raw_oneway_msgs_per_s", "oneway_ratio", "rr_msgs_per_s",
                  "rr_ratio", "pingpong_p50_us", "pingpong_p50_ratio")
        assert side["oneway_cpu_us_per_msg"]["client"] > 0
    assert out["new_over_ref"]["oneway_msgs_per_s"] == round(out["oneway_msgs_per_s"] / ref["oneway_msgs_per_s"], 3)
    assert out["new_over_ref"]["pingpong_p50_us"] == round(ref["pingpong_p50_us"] / out["pingpong_p50_us"], 3)
    assert len(out["per_round"]["ref"]["oneway_ratio"]) == len(out["per_round"]["new"]["oneway_ratio"]) == 1


@pytest.mark.timeout(60)
def test_footprint_quick_reports_memory_cpu_and_traffic():
    out = _run("footprint.py", "--quick", "--peers", "5")
    assert out["peers"] == 5
    _positive(out, "idle_rss_mb", "rss_mb_before_peers", "raw_rss_mb", "window_s")
    for key in ("idle_cpu_percent", "idle_bytes_per_s"):
        assert isinstance(out[key], (int, float)) and out[key] >= 0, key
    # sanity, not a budget: an idle Python process is between a few MB and a few hundred
    assert 5 < out["idle_rss_mb"] < 500
    assert out["idle_cpu_percent"] <= 100 * (out["env"]["cpus"] or 1)
    node = out["node"]
    assert node["neighbours"] == 5
    assert node["sub_sockets"] == 0  # an idle node subscribes to nothing, so it holds no SUB sockets
    assert set(out["targets"]) == {"idle_rss_le_32mb", "idle_cpu_le_0.1pct"}


@pytest.mark.timeout(90)
def test_footprint_sidecar_quick_measures_the_real_sidecar_process():
    out = _run("footprint.py", "--sidecar", "--quick", "--peers", "3", timeout=80)
    assert out["benchmark"] == "footprint_sidecar"
    _positive(out, "rss_mb_default_0", "rss_mb_all_3", "startup_s")
    assert 5 < out["rss_mb_default_0"] < 500 and out["idle_cpu_percent"] >= 0
    assert [r["config"] + "_" + str(r["peers"]) for r in out["runs"]] == ["default_0", "all_3"]
    assert all(isinstance(r["services"], list) for r in out["runs"])
    assert out["params"]["mdns_possible"] == (out["params"]["network_namespace"] is not None)
    # the default config's inbox is on loopback, where [mdns] enabled = "auto" leaves discovery off; "all" forces it
    default, everything = out["runs"]
    assert set(out["kb_per_peer"]) == {"all_3"} and out["raw_kb_per_connection"] > 0
    assert out["raw_zap_kb_per_connection"] > 0
    assert "mdns" not in default["services"] and "local_api" in default["services"]
    assert ("mdns" in everything["services"]) == out["params"]["mdns_possible"]


@pytest.mark.timeout(90)
def test_footprint_sidecar_runs_measures_only_the_named_runs():
    out = _run("footprint.py", "--sidecar", "--quick", "--runs", "ui_2", timeout=80)
    assert [r["config"] + "_" + str(r["peers"]) for r in out["runs"]] == ["ui_2"]
    assert "admin" in out["runs"][0]["services"] and out["rss_mb_ui_2"] > 5
    assert out["runs"][0]["ui_crawl"]["nodes"] == 3  # the dashboard was opened and crawled the sidecar and its 2 peers
    assert out["startup_s"] is None  # default_0, where it is measured, did not run
    bad = subprocess.run([sys.executable, str(BENCH / "footprint.py"), "--sidecar", "--runs", "most_100"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "most_100" in bad.stderr


@pytest.mark.timeout(60)
def test_overlay_quick_reports_join_detection_and_idle_cost():
    out = _run("overlay.py", "--quick", timeout=55)
    assert out["nodes"] == 20
    _positive(out, "join_all_findable_s", "detect_all_s_p50", "detect_all_s_max", "rss_mb_per_process")
    assert out["detect_all_s_p50"] <= out["detect_all_s_max"]
    assert out["undetected"] == 0
    assert out["holders_per_kill"] and all(h > 0 for h in out["holders_per_kill"])
    for key in ("false_positives", "idle_bytes_per_node_per_s", "cpu_percent_per_node"):
        assert isinstance(out[key], (int, float)) and out[key] >= 0, key
    assert sum(out["nodes_per_process"]) == 20 - 1 - out["params"]["victims"]
    assert out["connections_per_join"] >= 1 and out["find_node_per_join"] >= 1  # a joining node dials the seed at least
    assert out["findable_check_dials"] >= 0 and out["findable_check_forwarded"] >= 0
    phases = out["connections_per_node"]
    assert list(phases) == ["all_started", "all_findable", "end_of_idle_window"]
    for key in ("dealers", "inbound", "find_node", "forwarded"):
        assert phases["all_started"][key]["mean"] <= phases["end_of_idle_window"][key]["mean"], key
    serf = out["serf"]
    for key in ("join_beaten", "detect_beaten", "idle_bytes_beaten"):
        assert isinstance(serf[key], bool), key
    assert out["params"]["quick"] is True


@pytest.mark.timeout(120)
def test_outbox_quick_kill_9_delivers_everything_exactly_once():
    out = _run("outbox.py", "--quick", timeout=110)
    assert out["ok"] is True
    assert out["messages"] == out["accepted"] == out["delivered"] == out["queued_before_kill"] > 0
    assert out["duplicates"] == 0 and out["missing"] == 0 and out["unexpected"] == 0
    assert out["killed_by_signal"] == 9 and out["queued_after_restart"] == out["messages"]
    _positive(out, "seconds", "restart_s", "accept_msgs_per_s", "spool_append_per_s")
    # the inbound case: the receiving sidecar killed holding them, the application gets each once
    assert out["inbound_ok"] is True
    assert out["inbound_accepted"] == out["inbound_restored"] == out["inbound_delivered"] == out["messages"]
    assert out["inbound_duplicates"] == 0 and out["inbound_missing"] == 0
    _positive(out, "inbound_seconds")


@pytest.mark.timeout(60)
def test_relay_quick_reports_direct_relayed_and_sealed_routes():
    out = _run("relay.py", "--quick", timeout=55)
    for route in ("direct", "relayed", "sealed"):
        _positive(out, f"{route}_rr_msgs_per_s", f"{route}_pingpong_p50_us", f"{route}_pingpong_p99_us")
    _positive(out, "relayed_ratio", "sealed_ratio", "relay_cpu_us_per_request")
    assert out["relayed_client_relay_stats"]["unwrapped"] > 0 and out["sealed_client_relay_stats"]["opened"] > 0
    assert out["relay_stats"]["forwarded"] > 0 and out["relay_stats"]["registered"] == 1
    _positive(out, "failover_first_request_s", "failover_pingpong_p50_us")
    assert out["failover_misses"] >= 1  # the killed relay was counted by the client
    assert out["params"]["quick"] is True


@pytest.mark.timeout(90)
def test_dht_quick_reports_put_get_before_and_after_a_kill():
    out = _run("dht.py", "--quick", timeout=85)
    assert out["nodes"] == 12 and out["keys"] == 60 and out["killed_nodes"] == 2
    for key in ("put_success", "get_success", "get_success_after_kill"):
        assert 0 < out[key] <= 1, key
    _positive(out, "put_p50_ms", "put_p99_ms", "get_p50_ms", "get_p99_ms", "get_p50_ms_after_kill",
              "get_p99_ms_after_kill", "raw_rtt_p50_ms", "get_p50_raw_rtts")
    assert out["get_p50_ms"] <= out["get_p99_ms"] and out["get_p50_ms_after_kill"] <= out["get_p99_ms_after_kill"]
    assert out["get_wrong_value"] == 0
    assert out["puts"]["n"] == 60 and out["gets"]["n"] == out["gets_after_kill"]["n"] == out["puts"]["ok"]
    assert isinstance(out["gets_over_hard_timeout_after_kill"], int)
    assert out["params"]["quick"] is True


def test_tasks_quick_reports_rates_and_failover_checks():
    out = _run("tasks.py", "--quick", timeout=120)
    assert out["bench"] == "tasks" and out["params"]["quick"] is True
    assert out["tasks_per_s"] > 0 and 0 < out["task_p50_ms"] <= out["task_p99_ms"]
    assert out["providers_killed"] == 3 and out["failover_tasks"] == 600
    assert out["lost_tasks"] == 0 and out["duplicate_runs"] == 0
    assert out["raw_rr_msgs_per_s"] > 0 and out["tasks_ratio"] == round(out["tasks_per_s"] / out["raw_rr_msgs_per_s"], 4)
    assert out["completed"] + out["failed_maybe_ran"] + out["failed_other"] + out["rejected"] == 600
    assert out["never_ran"] >= 0


@pytest.mark.timeout(120)
def test_chaos_quick_runs_one_round_of_faults_and_accounts_for_every_message():
    tools = str(BENCH.parent / "tools")
    if tools not in sys.path:
        sys.path.append(tools)
    import netlab

    why = netlab.unavailable()
    if why:
        pytest.skip(why)
    out = _run("chaos.py", "--quick", timeout=110)
    assert out["rounds"] == 1 and out["faults"] == ["kill_b", "cut_ab", "kill_relay"]
    assert out["stalls"] == 0 and out["missing"] == 0 and out["unexpected_duplicates"] == 0
    assert out["accepted"] == out["delivered"] > 0 and out["refused"] == 0 and out["failed_rounds"] == []
    assert isinstance(out["slow_rounds"], list)  # a passing round slower than 5 s to recover is listed (and kept)
    assert out["unrecovered_faults"] == 0 and out["recovery_s"]["n"] == 3
    assert 0 <= out["recovery_s"]["p50"] <= out["recovery_s"]["p99"] <= out["recovery_s"]["max"]
    assert out["catch_up_s"]["n"] == 3 and 0 <= out["catch_up_s"]["p50"] <= out["catch_up_s"]["max"]
    assert set(out["rss_mb"]) == {"a", "b", "c", "relay"} and all(v > 0 for v in out["rss_mb"].values())


@pytest.mark.timeout(90)
def test_fleet_quick_reports_the_check_cost_and_both_joins():
    out = _run("fleet.py", "--quick", timeout=85)
    assert out["nodes"] == 8 and [r["mode"] for r in out["runs"]] == ["open", "fleet"]
    _positive(out, "cert_check_us_p50", "cert_check_us_p99", "ed25519_verify_us_p50", "cert_check_vs_verify",
              "join_open_s", "join_fleet_s", "join_fleet_vs_open", "start_open_s", "start_fleet_s")
    # a fleet node admits each peer it talks to once, and no more peers than there are
    assert out["cert_check_us_p50"] <= out["cert_check_us_p99"]
    assert 0 < out["fleet_admissions_per_node"] <= out["nodes"] - 1
    assert out["fleet_uncertified_drops"] == 0


@pytest.mark.timeout(180)
def test_hostile_quick_reports_memory_and_latency_under_attack():
    out = _run("hostile.py", "--quick", timeout=170)
    assert out["benchmark"] == "hostile"
    for key in ("hostile_peak_rss_mb", "rss_after_drain_mb", "idle_rss_mb", "rss_after_attack_mb"):
        assert out[key] > 0, key
    assert out["idle_rss_mb"] <= out["hostile_peak_rss_mb"]
    for key in ("peak_rss_mb_attack", "peak_rss_mb_backlog", "peak_rss_mb_flood"):  # each phase's own peak, within the run's
        assert 0 < out[key] <= out["hostile_peak_rss_mb"], key
    for key in ("honest_p50_ms", "honest_p50_ms_during_attack", "honest_p50_ms_during_flood"):
        p99 = key.replace("p50", "p99")
        assert 0 < out[key] <= out[p99], key
    assert out["honest_requests"]["flood"] > 0 and out["honest_requests"]["alone"] > 0
    assert out["flood_sent_per_s"] > 0 and 0 < out["flood_accepted_per_s"] <= out["flood_sent_per_s"]
    assert out["attack_sent"]["attacker"] > 0
    assert out["drops"].get("rate_bytes", 0) > 0  # the memory attackers were over their limits, and refused


@pytest.mark.timeout(180)
def test_cli_pipes_quick_measures_exit_times_for_request_and_task():
    out = _run("cli_pipes.py", "--quick", timeout=170)
    assert out["bench"] == "cli_pipes" and out["params"]["quick"] is True and out["params"]["lines"] == 20
    for kind in ("request", "task"):
        assert 0 <= out[f"{kind}_last_answer_to_exit_s"] <= out[f"{kind}_last_answer_to_exit_max_s"]
        # the one SIGTERM run exited 143 with a canceled line per input line (else it counts as not ok)
        assert out[f"{kind}_sigterm_runs_ok"] == 1 and out[f"{kind}_sigterm_to_exit_s"] >= 0
    assert out["task_one_line_wall_s"] > 0 and out["params"]["one_line"] == 3
    assert out["package"].startswith(str(BENCH.parent))  # this tree was measured, not an installed copy


@pytest.mark.timeout(210)
def test_broadcast_quick_reports_delivery_latency_redundancy_and_a_kill_mid_stream():
    out = _run("broadcast.py", "--quick", timeout=200)
    assert out["benchmark"] == "broadcast" and out["nodes"] == 16 and out["subscribers"] == 5
    for key in ("delivery", "topic_delivery", "latency_ms_p50", "latency_ms_max", "rmr", "non_subscriber_payloads",
                "publish_rate_sustained", "cpu_us_per_delivery"):
        assert key in out, key
    assert 0 < out["delivery"] <= 1 and 0 < out["topic_delivery"] <= 1
    assert 0 < out["latency_ms_p50"] <= out["latency_ms_max"]
    assert out["after_kill"]["targets"] == 16 - 1 - 2 and out["after_kill"]["delivery"] > 0
    assert out["kill_stream"]["targets"] == 16 - 1 - 2 and out["kill_stream"]["delivery"] > 0
    for key in ("topic_delivery", "latency_ms_p50", "latency_ms_max", "rmr", "non_subscriber_payloads",
                "publish_rate_sustained", "cpu_us_per_delivery"):
        assert key in out["after_kill"], key
    assert out["non_subscriber_payloads"] <= out["payloads_to_non_subscribers"]
    assert all(p["duplicates_to_app"] == 0 for p in out["phases"])  # at most once to the application
    assert isinstance(out["aims"]["delivery_1"], bool)
    # the busiest node process's CPU (several nodes share it), in cores: says when latency was queueing
    assert 0 < out["busiest_process_cores"] < 4 and out["nodes_per_worker_process"] >= 2


@pytest.mark.timeout(120)
def test_mesh_graph_quick_crawls_every_node_through_the_cli_and_the_dashboard():
    out = _run("mesh_graph.py", "--quick", timeout=110)
    assert out["benchmark"] == "mesh_graph" and out["nodes"] == 12
    for run in ("crawl", "crawl_unthrottled"):
        c = out[run]
        assert c["nodes_found"] == 12 and c["nodes_missed"] == 0 and c["answered"] == 12, run
        assert c["messages_sent"] == 24 and c["messages_per_node"] == 2.0, run  # a table and a describe each
        assert 0 < c["seconds"] <= c["wall_seconds"], run
    assert out["crawl"]["seconds"] >= out["crawl"]["rate_floor_seconds"] > 0  # the rate limit binds
    d = out["dashboard"]
    assert d["nodes_found"] == 12 and d["messages_sent"] == 22  # its own table is read, not asked
    assert d["rss_mb_before_ui"] > 0 and d["rss_mb_after_ui_page"] > 0 and d["rss_mb_after_ui_crawl"] > 0


@pytest.mark.timeout(200)
def test_cli_sidecar_compares_task_through_a_sidecar_with_a_direct_one():
    out = _run("cli_sidecar.py", "--runs", "2", timeout=190)
    assert out["bench"] == "cli_sidecar" and out["runs"] == 2
    for via in ("sidecar", "direct"):  # each run printed the completed result, else the bench failed
        assert 0 < out[f"task_{via}_p50_s"] <= out[f"task_{via}_max_s"]
    assert out["speedup"] == round(out["task_direct_p50_s"] / out["task_sidecar_p50_s"], 2)
    assert 0 < out["python_start_s"] and len(out["loadavg_before"]) == 3


@pytest.mark.timeout(150)
def test_k8s_pods_quick_runs_the_seed_and_two_swarm_pods_and_collects_their_reports():
    out = _run("k8s_pods.py", "--quick", timeout=120)
    assert out["pods"] == 2 and out["nodes_per_pod"] == 5 and out["seed"]["exit"] == 0
    for pod in out["per_pod"]:
        assert pod["exit"] == 0 and pod["report"]["joined"] == 5, pod
        _positive(pod, "rss_mb_peak", "fds_peak", "cpu_s")
    assert out["summary"]["nodes"] == out["summary"]["joined"] == 10 and out["summary"]["reports"] == 2
    _positive(out, "pod_rss_mb_peak_max", "pod_fds_peak_max")


@pytest.mark.timeout(300)
def test_sim_mpi_quick_runs_one_scenario_three_ways_with_the_same_report():
    if shutil.which("mpirun") is None:
        pytest.fail("mpirun is missing: install MPICH (Debian: apt-get install mpich libmpich-dev; .ci/run does)")
    out = _run("sim_mpi.py", "--quick", timeout=280)
    assert out["same_report"] is True and out["same_trace"] is True
    for way in ("single", "fork", "mpi"):
        _positive(out[way], "wall_s", "peak_rss_mb")
    for way in ("fork", "mpi"):
        assert len(out[way]["peak_rss_mb_per_worker"]) == 2 and out[way]["windows"] > 1000
        _positive(out[way], "swap_ms_per_window")
    _positive(out, "mpi_over_fork_wall", "mpi_over_fork_swap_ms")


def test_swarm_quick_reports_the_issue_figures_and_the_cost_of_a_link():
    out = _run("swarm.py", "--quick", timeout=90)
    assert out["nodes"] == 8 and out["procs"] == 1
    _positive(out, "rss_mb_per_node", "join_s_p99", "request_ms_p99", "links_per_node")
    assert out["delivery"] == 1.0
    assert out["raw_pyzmq"]["kb_per_connection_both_ends"] > 0
    explained = out["rss_per_node_explained"]
    assert 0 < explained["links_mb"] and explained["links_share"] > 0
    assert isinstance(out["aim_met"], bool) and out["aim_mb_per_node"] == 0.5
    limits = out["limits"]
    assert limits["fds_per_process"] <= limits["fd_limit_per_process"]
    assert out["swarm"]["report"] == "zmqagents swarm"
    assert "uptime" in out["env"] and out["params"]["quick"] is True
