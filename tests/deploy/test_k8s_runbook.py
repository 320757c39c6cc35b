"""README, "Load test on Kubernetes": the runbook names what deploy/k8s really holds.

Its own-overlay step, run by bash in a copy of deploy/k8s, writes an overlay that renders and puts
the images where the pods take them; the names its kubectl commands
use (namespace, labels, container, job, StatefulSet, admin port) are the manifests' names; every
path under deploy/k8s it mentions exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
if str(ROOT / "tools") not in sys.path:
    sys.path.append(str(ROOT / "tools"))

import k8s_local  # noqa: E402  (tools/k8s_local.py)
from kustomize_lite import pod_specs, render  # noqa: E402  (tools/kustomize_lite.py)


def _runbook() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Load test on Kubernetes")
    end = readme.index("\n## ", start + 1)
    assert readme.index("## Quick start") < start < readme.index("## Use it from a shell")  # after the quick start
    return readme[start:end]


def test_the_own_overlay_of_the_runbook_renders_with_the_images_it_names(tmp_path):
    """Step 2's commands (mkdir, cat <<YAML) run by bash in a copy of the repository's deploy/k8s,
    with REGISTRY and TAG set as step 1 sets them; then the overlay they wrote is rendered."""
    text = _runbook()
    commands = re.search(r"mkdir -p deploy/k8s/overlays/mine\n.*?\nYAML\n", text, re.S).group(0)
    shutil.copytree(K8S, tmp_path / "deploy" / "k8s")
    before = int(time.time())
    done = subprocess.run(["bash", "-euc", commands], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "REGISTRY": "registry.test:5000/lt", "TAG": "abc123"})
    assert done.returncode == 0, done.stderr
    mine = tmp_path / "deploy" / "k8s" / "overlays" / "mine"
    objects = render(mine)
    images = sorted({c["image"] for spec in pod_specs(objects) for c in spec["containers"] + spec.get("initContainers", [])})
    assert images == ["registry.test:5000/lt/zmqagents:abc123"]  # ../10k has no netem: its name matches nothing
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in render(K8S / "overlays" / "10k"))
    job = k8s_local.workload(objects, "Job", "swarm")
    assert job["spec"]["completions"] * int(k8s_local.configmaps(objects)["swarm-params"]["NODES"]) == 10_000
    start_at = int(k8s_local.configmaps(objects)["swarm-params"]["START_AT"])  # computed by the shell
    assert before + 900 <= start_at <= int(time.time()) + 900


def test_the_runbooks_commands_use_the_manifests_names():
    text = _runbook()
    objects = render(K8S / "base")
    job = k8s_local.workload(objects, "Job", "swarm")
    seed = k8s_local.workload(objects, "StatefulSet", "seed")
    namespace = job["metadata"]["namespace"]
    assert text.count("kubectl -n ") == text.count(f"kubectl -n {namespace} ")
    assert f"/namespaces/{namespace}/pods/{seed['metadata']['name']}-0:9464/proxy/metrics" in text
    assert f"-l app={job['spec']['template']['metadata']['labels']['app']} -c swarm --tail=-1" in text
    assert "get job swarm" in text and "statefulset/seed" in text and "patch job swarm" in text
    assert f"kubectl delete namespace\n{namespace}" in text or f"kubectl delete namespace {namespace}" in text
    for path in set(re.findall(r"deploy/k8s/[\w./-]+", text)):
        assert (ROOT / path.rstrip(".")).exists() or "/mine" in path, path
    for name in re.findall(r"`((?:base|overlays|components)/[\w./-]+)`", text):
        assert (K8S / name).exists(), name
