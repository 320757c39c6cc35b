"""deploy/k8s: the pods' command lines, run on this machine as the kubelet would start them.

tools/k8s_local.py takes each container from the rendered manifests, builds its environment and
expands its command line as the kubelet does, maps its volume mounts to directories and the seed's DNS
name to an address, and runs it: real processes on loopback addresses of their own (127.X.Y.Z, one
per "pod", so the manifests' fixed ports cannot collide with anything else on the box). Every
process is stopped by its PID.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
if str(ROOT / "tools") not in sys.path:
    sys.path.append(str(ROOT / "tools"))

import k8s_local  # noqa: E402  (tools/k8s_local.py)
import netlab  # noqa: E402  (tools/netlab.py)
from kustomize_lite import render  # noqa: E402  (tools/kustomize_lite.py)


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(K8S / "base")


@pytest.mark.timeout(90)
def test_the_seed_runs_as_its_container_says_and_answers_its_probes(base, tmp_path):
    with k8s_local.LocalCluster(base, tmp_path) as cluster:
        proc, hello = cluster.start_seed()
        address = cluster.hosts["seed-0.seed"]
        assert hello["contact"].endswith(f"@tcp://{address}:7000")
        assert hello["admin"] == f"{address}:9464"
        for path, body in (("/livez", b"ok\n"), ("/readyz", b"ready\n")):  # the probes, as the kubelet sends them
            with urllib.request.urlopen(f"http://{address}:9464{path}", timeout=5) as answer:
                assert answer.status == 200 and answer.read() == body
        # The sh wrapper raised the soft open-file limit to the hard one, then exec'd zmqagents (same PID).
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        [row] = [line for line in limits.splitlines() if line.startswith("Max open files")]
        soft, hard = row.split()[3:5]
        assert soft == hard, row
        assert b"zmqagents" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert not list((tmp_path / "seed-0" / "tmp").iterdir())  # a plain node: nothing written
        assert cluster.stop(proc, grace=30) == 0  # SIGTERM, as the kubelet sends it; the grace period is 30 s


@pytest.mark.timeout(90)
def test_the_init_container_waits_for_the_seed_then_writes_its_contact(base, tmp_path):
    with k8s_local.LocalCluster(base, tmp_path) as cluster:
        address = k8s_local.pod_address(cluster.rng)
        cluster.hosts["seed-0.seed"] = address  # where the seed will be; it is not there yet
        words, env = cluster.init_command(0)
        contacts = tmp_path / "swarm-0" / "contacts"
        assert words[:2] == ["python", str(tmp_path / "swarm-0" / "seed-contact" / "seed_contact.py")]
        assert words[2] == f"http://{address}:9464/ui/api/status"
        init = subprocess.Popen(words, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            time.sleep(1.5)  # the swarm pod starts first: no seed yet
            assert init.poll() is None and not (contacts / "seed.contact").exists()
            _, hello = cluster.start_seed(address=address)
            out, err = init.communicate(timeout=30)
            assert init.returncode == 0, err
            assert (contacts / "seed.contact").read_text() == hello["contact"] + "\n"
            assert json.loads(out) == {"contact": hello["contact"], "file": str(contacts / "seed.contact")}
        finally:
            if init.poll() is None:
                init.kill()
                init.wait()


@pytest.mark.timeout(30)
def test_the_init_container_gives_up_with_the_reason(base, tmp_path):
    with k8s_local.LocalCluster(base, tmp_path) as cluster:
        cluster.hosts["seed-0.seed"] = k8s_local.pod_address(cluster.rng)  # nobody listens there
        words, env = cluster.init_command(0)
        words[words.index("--timeout") + 1] = "2"
        out = subprocess.run(words, capture_output=True, text=True, env=env, timeout=20)
        assert out.returncode == 1 and "no contact from http://" in out.stderr and "in 2 s" in out.stderr
        assert not list((tmp_path / "swarm-0" / "contacts").iterdir())


@pytest.mark.timeout(150)
def test_two_swarm_pods_join_through_the_seed_and_their_logs_collect_into_one_summary(base, tmp_path):
    """The base overlay's seed and two pods of its swarm Job (4 nodes each, 3 s of requests), then the
    runbook's collect step over their logs as `kubectl logs` prints them (stderr and stdout)."""
    with k8s_local.LocalCluster(base, tmp_path, {"NODES": "4", "SWARM_SECONDS": "3"}) as cluster:
        _, hello = cluster.start_seed()
        pods = [cluster.start_swarm_pod(index) for index in range(2)]
        assert [pod.wait(timeout=90) for pod in pods] == [0, 0]
    logs = []
    for index in range(2):
        stdout = (tmp_path / f"swarm-{index}" / "log").read_text()
        report = json.loads(stdout.splitlines()[-1])
        assert report["nodes"] == report["joined"] == 4 and report["params"]["mesh"] == [hello["contact"]]
        assert report["params"]["listen"].startswith("tcp://127.") and report["fds"] < report["fd_limit"]
        assert report["requests_ok"] > 0, report
        logs.append((tmp_path / f"swarm-{index}" / "stderr").read_text() + stdout)
    out = subprocess.run([sys.executable, "-m", "zmqagents.cli", "swarm", "collect", "-"], input="".join(logs),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["nodes"] == summary["joined"] == 8 and summary["reports"] == 2
    assert summary["requests_sent"] == sum(json.loads(log.splitlines()[-1])["requests_sent"] for log in logs)


@pytest.mark.timeout(60)
def test_the_netem_init_container_command_is_accepted_by_tc():
    """The netem component's init container, run in a network namespace with an eth0 of its own (a
    pod's namespace as the kubelet makes it, short of the veth). tc parses the arguments in user space
    first and then asks the kernel for the netem qdisc: a kernel without sch_netem (this box's, at the
    time of writing) refuses the kind, and then only the command line was checked, not the delay."""
    why = netlab.unavailable()
    if why:
        pytest.skip(why)
    objects = render(K8S / "overlays" / "10k-netem")
    spec = k8s_local.workload(objects, "Job", "swarm")["spec"]["template"]["spec"]
    container = k8s_local.container(spec, "netem")
    words = k8s_local.argv(container, k8s_local.environment(container, k8s_local.configmaps(objects), "10.1.2.3"))
    with netlab.Lab() as lab:
        pod = lab.host("pod")
        pod.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")  # both ends in the namespace
        pod.ip("link", "set", "eth0", "up")
        out = subprocess.run(pod.wrap(words), capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            shown = pod.tc("qdisc", "show", "dev", "eth0").stdout
            assert "netem" in shown and "delay 25ms  5ms" in shown.replace("25.0ms", "25ms"), shown
        else:
            assert "Specified qdisc kind is unknown" in out.stderr, out.stderr  # the kernel's no, not tc's
