"""deploy/k8s: the pods' command lines, run on this machine as the kubelet would start them.

Each test takes a container from the rendered manifests (helpers/kustomize.py), builds its
environment and expands its command line as the kubelet does (helpers/kubelet.py), maps its volume
mounts to directories and the seed's DNS name to an address, and runs it: real processes on
loopback addresses of their own (127.X.Y.Z, one per "pod", so the manifests' fixed ports cannot
collide with anything else on the box). Every process is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import kubelet
from helpers.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
if str(ROOT / "tools") not in sys.path:
    sys.path.append(str(ROOT / "tools"))

import netlab  # noqa: E402  (tools/netlab.py)

# The venv's `zmqagents` and `python` first, as they are first on the image's PATH.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "PYTHONUNBUFFERED": "1"}


def pod_address() -> str:
    """A loopback address of its own for one pod (Linux answers on all of 127.0.0.0/8)."""
    rng = random.Random(os.getpid() * 1000 + time.monotonic_ns())
    return f"127.{rng.randrange(64, 250)}.{rng.randrange(1, 250)}.{rng.randrange(2, 250)}"


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(K8S / "base")


def seed_argv(objects: list[dict], address: str) -> list[str]:
    spec = kubelet.workload(objects, "StatefulSet", "seed")["spec"]["template"]["spec"]
    container = kubelet.container(spec, "seed")
    return kubelet.argv(container, kubelet.environment(container, kubelet.configmaps(objects), address))


@contextmanager
def seed_pod(objects: list[dict], address: str):
    """The seed container's command line, running; yields (process, its first line: the contact)."""
    proc = subprocess.Popen(seed_argv(objects, address), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the seed printed nothing in 30 s"
        line = proc.stdout.readline()
        assert line, f"the seed exited {proc.wait()}: {proc.stderr.read().decode()[-2000:]}"
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def init_container(objects: list[dict], tmp_path: Path, seed_address: str) -> tuple[list[str], Path]:
    """The swarm pod's seed-contact init container: its command line with the ConfigMap volume and
    the contacts volume as directories here and seed-0.seed resolving to ``seed_address``."""
    spec = kubelet.workload(objects, "Job", "swarm")["spec"]["template"]["spec"]
    container = kubelet.container(spec, "seed-contact")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {}
    for mount in container["volumeMounts"]:
        directory = tmp_path / mount["name"]
        directory.mkdir(exist_ok=True)
        source = volumes[mount["name"]]
        if "configMap" in source:
            for key, text in kubelet.configmaps(objects)[source["configMap"]["name"]].items():
                (directory / key).write_text(text)
        mounts[mount["mountPath"]] = directory
    env = kubelet.environment(container, kubelet.configmaps(objects), pod_address())
    words = kubelet.localize(kubelet.argv(container, env), mounts, {"seed-0.seed": seed_address})
    return words, tmp_path / "contacts"


@pytest.mark.timeout(90)
def test_the_seed_runs_as_its_container_says_and_answers_its_probes(base):
    address = pod_address()
    with seed_pod(base, address) as (proc, hello):
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
        assert "zmqagents" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends; the grace period is 30 s
        assert proc.wait(timeout=30) == 0


@pytest.mark.timeout(90)
def test_the_init_container_waits_for_the_seed_then_writes_its_contact(base, tmp_path):
    address = pod_address()
    words, contacts = init_container(base, tmp_path, address)
    assert words[:2] == ["python", str(tmp_path / "seed-contact" / "seed_contact.py")]
    init = subprocess.Popen(words, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        time.sleep(1.5)  # the swarm pod starts first: the seed is not there yet
        assert init.poll() is None and not (contacts / "seed.contact").exists()
        with seed_pod(base, address) as (_, hello):
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
    words, contacts = init_container(base, tmp_path, pod_address())  # nobody listens there
    words[words.index("--timeout") + 1] = "2"
    out = subprocess.run(words, capture_output=True, text=True, env=ENV, timeout=20)
    assert out.returncode == 1 and "no contact from http://" in out.stderr and "in 2 s" in out.stderr
    assert not list(contacts.iterdir())


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
    spec = kubelet.workload(objects, "Job", "swarm")["spec"]["template"]["spec"]
    container = kubelet.container(spec, "netem")
    words = kubelet.argv(container, kubelet.environment(container, kubelet.configmaps(objects), pod_address()))
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
