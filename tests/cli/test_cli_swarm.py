"""`zmqagents swarm` and `zmqagents swarm collect` run as a shell user (or a Kubernetes pod) runs them."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time

import pytest

from helpers.cli import CLI, server, zmqa

pytestmark = pytest.mark.timeout(120)


def _report(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout  # --json: exactly one line on stdout
    report = json.loads(lines[0])
    assert report["report"] == "zmqagents swarm"
    return report


def test_two_processes_and_their_merged_report(tmp_path):
    run = zmqa("swarm", "--nodes", "6", "--procs", "2", "--workload", "requests", "--rate", "3", "--seconds", "3",
               "--settle", "0.5", "--json", timeout=90)
    assert run.returncode == 0, run.stderr
    r = _report(run.stdout)
    assert r["nodes"] == 6 and r["procs"] == 2 and r["reports"] == 2
    assert r["joined"] == 6 and r["delivery"] == 1.0
    assert r["requests_sent"] >= 20
    assert r["params"]["procs"] == 2
    assert "joined 3/3" in run.stderr  # each process's progress, on stderr


def test_the_pod_command_line_joins_a_seed_node_that_serves_no_requests(tmp_path):
    """The Kubernetes runbook's pod: `zmqagents swarm --nodes M --bootstrap SEED --workload requests ...`, the
    seed a plain `zmqagents node` (no request handler: it is drawn as a target once, then left out)."""
    with server(tmp_path, "node", name="seed") as (seed, _proc):
        run = zmqa("swarm", "--nodes", "4", "--bootstrap", seed, "--workload", "requests", "--rate", "4",
                   "--seconds", "3", "--settle", "0.5", "--json", timeout=90)
    assert run.returncode == 0, run.stderr
    r = _report(run.stdout)
    assert r["joined"] == 4 and r["join_s_p50"] is not None  # every node joined through the seed
    assert r["delivery"] == 1.0  # the seed's NoHandler answers are counted apart, not as failures
    assert r["params"]["mesh"] and r["params"]["mesh"][0].endswith(seed_endpoint(seed))


def seed_endpoint(text: str) -> str:
    from pathlib import Path

    return Path(text[1:]).read_text().strip().split("@", 1)[1]


def test_an_unreachable_mesh_exits_8_with_a_report(tmp_path):
    from zmqagents.identity import Identity

    nobody = str(Identity.generate().contact("tcp://127.0.0.1:9"))  # discard port: nothing listens
    run = zmqa("swarm", "--nodes", "2", "--mesh", nobody, "--seconds", "1", "--join-timeout", "1.5",
               "--settle", "0", "--json", timeout=60)
    assert run.returncode == 8, run.stderr
    assert _report(run.stdout)["joined"] == 0
    assert "could not join" in run.stderr or "did not join" in run.stderr


def test_collect_merges_reports_from_files_and_stdin(tmp_path):
    runs = [zmqa("swarm", "--nodes", "3", "--workload", "requests", "--rate", "2", "--seconds", "2", "--settle", "0.3",
                 "--seed", str(i), "--json", timeout=60) for i in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    one, two = (_report(run.stdout) for run in runs)
    (tmp_path / "pod-0.log").write_text("swarm[1]: joined 3/3\n" + runs[0].stdout)  # a pod's log, as it is
    (tmp_path / "pod-1.json").write_text(json.dumps(two, indent=2))
    merged = zmqa("swarm", "collect", str(tmp_path / "pod-0.log"), str(tmp_path / "pod-1.json"), "--json")
    assert merged.returncode == 0, merged.stderr
    m = _report(merged.stdout)
    assert m["nodes"] == 6 and m["reports"] == 2
    assert m["requests_sent"] == one["requests_sent"] + two["requests_sent"]
    assert m["raw"]["hists"]["request_ms"]["count"] == one["requests_ok"] + two["requests_ok"]
    assert m["sources"] == [f"{tmp_path / 'pod-0.log'}:2", str(tmp_path / "pod-1.json")]
    piped = zmqa("swarm", "collect", "--json", input=runs[0].stdout + runs[1].stdout)
    assert piped.returncode == 0, piped.stderr
    assert _report(piped.stdout)["requests_sent"] == m["requests_sent"]


@pytest.mark.parametrize("args, code, says", [
    (["collect", "/nonexistent/pod.json"], 2, "cannot read"),
    (["collect", "-"], 3, "no zmqagents swarm report"),
])
def test_collect_errors(args, code, says):
    run = zmqa("swarm", *args, input="just a log line\n")
    assert run.returncode == code, run.stderr
    assert says in run.stderr and run.stdout == ""


@pytest.mark.parametrize("args, says", [
    (["--kill", "10%"], "--at"),
    (["--kill", "200%", "--at", "1"], "at most 100"),
    (["--kill", "3", "--pause", "2", "--at", "1", "--nodes", "5"], "leave at least one node"),
    (["--at", "3"], "--kill F or --pause F"),
    (["--workload", "flood"], "flood"),
    (["--procs", "3", "--nodes", "2"], "more than --nodes"),
    (["--listen", "tcp://127.0.0.1:7000", "--nodes", "2"], "port 0"),
    (["--mesh", "not-a-contact"], "--mesh"),
    (["--rate", "-1"], "--rate"),
])
def test_bad_flags_exit_2_naming_the_problem(args, says):
    run = zmqa("swarm", *args)
    assert run.returncode == 2, run.stderr
    assert says in run.stderr and run.stdout == ""


def _wait_for_stderr(proc: subprocess.Popen, text: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert proc.poll() is None, seen
        assert time.monotonic() < deadline, seen
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            seen += proc.stderr.readline()
    return seen


@pytest.mark.parametrize("procs, sig, code", [(1, signal.SIGTERM, 143), (2, signal.SIGINT, 130)])
def test_a_signal_stops_the_run_and_still_prints_the_report(procs, sig, code):
    proc = subprocess.Popen(CLI + ["swarm", "--nodes", "4", "--procs", str(procs), "--workload", "requests",
                                   "--seconds", "120", "--settle", "0.2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_stderr(proc, "workload for", 60)
        if procs == 2:
            _wait_for_stderr(proc, "workload for", 60)  # both processes
        time.sleep(1.0)
        started = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert time.monotonic() - started < 20
    r = _report(out)
    assert r["interrupted"] and r["nodes"] == 4 and r["requests_sent"] >= 1
    assert r["window_s"] is not None and r["window_s"] < 60


def test_a_process_out_of_file_descriptors_reports_the_nodes_it_could_start():
    import resource

    def few_fds() -> None:  # a hard limit the swarm cannot raise
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    run = subprocess.run(CLI + ["swarm", "--nodes", "60", "--seconds", "1", "--settle", "0.2", "--json"],
                         capture_output=True, text=True, timeout=120, preexec_fn=few_fds)
    assert run.returncode == 0, run.stderr
    r = _report(run.stdout)
    assert r["nodes_planned"] == 60 and 1 < r["nodes"] < 60
    assert r["start_failed"] == 60 - r["nodes"]
    assert r["fd_limit"] == 200
    assert "file descriptors: the limit is 200" in run.stderr  # warned before it started
    assert "cannot start more nodes" in run.stderr


def test_a_signal_while_nodes_join_closes_every_node_and_reports_the_phase():
    proc = subprocess.Popen(CLI + ["swarm", "--nodes", "200", "--join-concurrency", "2", "--seconds", "5", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_stderr(proc, "joined", 60)  # the first progress line: nodes are starting and joining
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)  # no node left half-started holds the context open
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    r = _report(out)
    assert r["interrupted"] and r["phase"] == "joining"
    assert 1 < r["nodes"] < 200 and r["window_s"] is None
