"""deploy/k8s: the Kubernetes manifests of the load test, checked offline (there is no cluster here).

Every object of every overlay, as kustomize renders it (tools/kustomize_lite.py; `kubectl kustomize`
where installed gives the same objects, checked below), validates against the Kubernetes API schemas
bundled in the pinned ``kubernetes-validate`` (strict: an unknown field fails), for the oldest
version the manifests need (1.29: ``backoffLimitPerIndex`` on by default) and the newest bundled.
Then what the schemas cannot see: the seed's stable name and the ports its command line, Service
and probes agree on, the swarm Job's shape and the way its pods find the seed, the resources of
every container, the one capability, no key anywhere, and each `zmqagents` command line parsed by
the real CLI. test_k8s_pods.py runs those command lines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import kubernetes_validate
import pytest
import yaml

from zmqagents.cli.app import cli

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tools") not in sys.path:
    sys.path.append(str(ROOT / "tools"))

import k8s_local as kubelet  # noqa: E402  (tools/k8s_local.py: what the kubelet makes of a container)
from kustomize_lite import Unsupported, merge, pod_specs, render  # noqa: E402  (tools/kustomize_lite.py)
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/10k", "overlays/10k-netem"]
VERSIONS = ["1.29", "1.37"]  # the oldest the manifests need, the newest kubernetes-validate bundles
POD_IP = "10.1.2.3"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / request.param)


def _key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def test_every_object_is_valid_for_the_kubernetes_api(rendered):
    name, objects = rendered
    assert sorted(_key(o) for o in objects) == sorted(
        [("Namespace", "zmqagents-load"), ("Service", "seed"), ("StatefulSet", "seed"), ("Job", "swarm"),
         ("ConfigMap", "swarm-params"), ("ConfigMap", "seed-contact")]
        + ([("ConfigMap", "netem-params")] if "netem" in name else []))
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "zmqagents-load"


def test_every_reference_resolves_in_the_pods_namespace(rendered):
    """A ConfigMap the pods read (envFrom, volumes) exists in their namespace; every mount names a volume."""
    _, objects = rendered
    maps = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "ConfigMap"}
    for workload in (o for o in objects if o["kind"] in ("StatefulSet", "Job")):
        namespace, spec = workload["metadata"]["namespace"], workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        wanted = [v["configMap"]["name"] for v in volumes.values() if "configMap" in v]
        for container in _containers(spec):
            wanted += [source["configMapRef"]["name"] for source in container.get("envFrom", [])]
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes.keys()
        assert {(namespace, name) for name in wanted} <= maps


def test_the_validator_rejects_what_the_api_server_would():
    job = kubelet.workload(render(K8S / "base"), "Job", "swarm")
    typo = merge(job, {"spec": {"template": {"spec": {"containers": [{"name": "swarm", "resourcez": {}}]}}}})
    with pytest.raises(kubernetes_validate.ValidationError, match="resourcez"):
        kubernetes_validate.validate(typo, "1.37", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="backoffLimitPerIndex"):
        kubernetes_validate.validate(job, "1.27", strict=True)  # before the field existed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_renderer_here_agrees_with_kubectl_kustomize(overlay):
    """tools/kustomize_lite.py implements only what these files use; kubectl's kustomize is the reference."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the renderer is not compared with kustomize")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    real = sorted((o for o in yaml.safe_load_all(out.stdout) if o), key=_key)
    assert sorted(render(K8S / overlay), key=_key) == real


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(Unsupported, match="namePrefix"):
        render(tmp_path)
    with pytest.raises(Unsupported, match="ports"):
        merge({"ports": [{"containerPort": 1}]}, {"ports": [{"containerPort": 2}]})
    merged = merge({"containers": [{"name": "a", "args": ["x"], "image": "i"}, {"name": "b"}]},
                   {"containers": [{"name": "c"}, {"name": "a", "args": ["y"]}]})
    assert merged == {"containers": [{"name": "c"}, {"name": "a", "args": ["y"], "image": "i"}, {"name": "b"}]}


def _option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_the_seed_has_a_stable_name_and_its_ports_agree(rendered):
    _, objects = rendered
    service = kubelet.workload(objects, "Service", "seed")
    seed = kubelet.workload(objects, "StatefulSet", "seed")
    pod = seed["spec"]["template"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert seed["spec"]["serviceName"] == "seed" and seed["spec"]["replicas"] >= 1  # DNS: seed-0.seed
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert seed["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

    container = kubelet.container(pod["spec"], "seed")
    env = kubelet.environment(container, kubelet.configmaps(objects), POD_IP)
    args = [kubelet.expand(a, env) for a in container["args"]]
    assert _option(args, "--listen") == f"tcp://{POD_IP}:7000"  # its contact names the pod's address
    assert _option(args, "--admin") == f"{POD_IP}:9464"
    # A plain node: a throwaway key made when it starts, nothing on disk (each of these makes it a sidecar,
    # which keeps a key file and a spool)
    assert not {"--key", "--config", "--set", "--mdns", "--no-mdns"} & set(args)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"mesh": 7000, "admin": 9464}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} == {"admin"}
    assert (probes["startupProbe"]["path"], probes["livenessProbe"]["path"], probes["readinessProbe"]["path"]) == (
        "/livez", "/livez", "/readyz")


def test_the_swarm_is_an_indexed_job_whose_pods_find_the_seed(rendered):
    _, objects = rendered
    job = kubelet.workload(objects, "Job", "swarm")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] >= 1
    assert spec["backoffLimitPerIndex"] == 0 and "maxFailedIndexes" not in spec  # a failed pod stops no other
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert spec["template"]["metadata"]["labels"]["app"] == "zmqagents-swarm"  # the runbook's kubectl logs -l

    # The init container reads the seed's contact from the seed's admin endpoint, by the seed's DNS name,
    # into the volume where the swarm's --bootstrap reads it.
    service = kubelet.workload(objects, "Service", "seed")
    fetch = kubelet.container(pod, "seed-contact")
    url = urlsplit(fetch["command"][2])
    assert fetch["command"][:2] == ["python", "/opt/seed-contact/seed_contact.py"]
    assert url.hostname == f"seed-0.{service['metadata']['name']}" and url.path == "/ui/api/status"
    assert url.port == {p["name"]: p["port"] for p in service["spec"]["ports"]}["admin"]
    script = {m["name"]: m["mountPath"] for m in fetch["volumeMounts"]}["seed-contact"]
    assert "seed_contact.py" in kubelet.configmaps(objects)["seed-contact"] and fetch["command"][1].startswith(script)
    swarm = kubelet.container(pod, "swarm")
    env = kubelet.environment(swarm, kubelet.configmaps(objects), POD_IP)
    args = [kubelet.expand(a, env) for a in swarm["args"]]
    contact_file = fetch["command"][3]
    assert _option(args, "--mesh") == "@" + contact_file
    fetch_mounts = {m["mountPath"]: m["name"] for m in fetch["volumeMounts"]}
    swarm_mounts = {m["mountPath"]: m["name"] for m in swarm["volumeMounts"]}
    directory = str(Path(contact_file).parent)
    assert fetch_mounts[directory] == swarm_mounts[directory] == "contacts"
    assert {v["name"]: v for v in pod["volumes"]}["contacts"]["emptyDir"]
    assert args[0] == "swarm" and "--key" not in args and "--json" in args
    assert re.fullmatch(rf"tcp://{re.escape(POD_IP)}:0", _option(args, "--listen"))


def test_every_container_has_requests_and_limits(rendered):
    _, objects = rendered
    for spec in pod_specs(objects):
        for container in _containers(spec):
            resources = container["resources"]
            for what in ("cpu", "memory"):
                request, limit = _quantity(resources["requests"][what]), _quantity(resources["limits"][what])
                assert 0 < request <= limit, f"{container['name']} {what}: {request} > {limit}"


def test_the_10k_overlay_runs_ten_thousand_nodes():
    objects = render(K8S / "overlays" / "10k")
    spec = kubelet.workload(objects, "Job", "swarm")["spec"]
    nodes = int(kubelet.configmaps(objects)["swarm-params"]["NODES"])
    assert spec["completions"] * nodes >= 10_000
    base = kubelet.configmaps(render(K8S / "base"))["swarm-params"]
    assert int(base["NODES"]) * kubelet.workload(render(K8S / "base"), "Job", "swarm")["spec"]["completions"] <= 200


def _quantity(text: str | int) -> float:
    """A Kubernetes quantity (cpu: 250m, 2; memory: 128Mi, 2Gi) as a number of cores or bytes."""
    text = str(text)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_only_the_netem_init_container_holds_a_capability(rendered):
    name, objects = rendered
    netem = []
    for spec in pod_specs(objects):
        assert not spec.get("hostNetwork") and spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        for container in _containers(spec):
            context = container["securityContext"]
            assert context["capabilities"]["drop"] == ["ALL"] and context["allowPrivilegeEscalation"] is False
            assert not context.get("privileged") and context["readOnlyRootFilesystem"] is True
            if container["name"] == "netem":
                netem.append(container)
                assert context["capabilities"]["add"] == ["NET_ADMIN"] and context["runAsUser"] == 0
            else:
                assert "add" not in context["capabilities"] and "runAsUser" not in context
    assert len(netem) == (2 if "netem" in name else 0)  # the seed's pod and the swarm's
    for container in netem:
        env = kubelet.environment(container, kubelet.configmaps(objects), POD_IP)
        assert kubelet.argv(container, env) == ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                                                "delay", "25ms", "5ms", "loss", "0%"]


def test_no_key_is_baked_into_the_image_or_the_manifests(rendered):
    _, objects = rendered
    assert not [o for o in objects if o["kind"] == "Secret"]
    for spec in pod_specs(objects):
        for container in _containers(spec):
            assert not [w for w in container.get("args", []) + container["command"] if "--key" in w or w.endswith(".key")]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert ".key" not in dockerfile and "keygen" not in dockerfile


def test_the_images_are_the_dockerfiles_targets(rendered):
    """`zmqagents` is the Dockerfile's default (last) stage, `zmqagents-netem` its netem stage (README's build lines)."""
    _, objects = rendered
    images = {c["image"].split(":")[0] for spec in pod_specs(objects) for c in _containers(spec)}
    assert images <= {"zmqagents", "zmqagents-netem"}
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", (ROOT / "Dockerfile").read_text(), re.M)
    assert stages[-1][1] == "" and ("python:3.11-slim", "netem") in stages
    netem_stage = (ROOT / "Dockerfile").read_text().split("AS netem", 1)[1].split("\nFROM ", 1)[0]
    assert "iproute2" in netem_stage


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("workload", [("StatefulSet", "seed", "seed"), ("Job", "swarm", "swarm")])
def test_each_zmqagents_command_line_parses(overlay, workload):
    """The args of each container that runs `zmqagents` are accepted by the real CLI after the kubelet's
    $(VAR) expansion. The seed's goes through a sh wrapper that raises the open-file limit first
    (`zmqagents swarm` raises its own)."""
    objects = render(K8S / overlay)
    kind, name, container_name = workload
    container = kubelet.container(kubelet.workload(objects, kind, name)["spec"]["template"]["spec"], container_name)
    if name == "seed":
        assert container["command"][:2] == ["sh", "-c"] and container["command"][3] == "zmqagents"
        assert container["command"][2].endswith('exec zmqagents "$@"')
    else:
        assert container["command"] == ["zmqagents"]
    env = kubelet.environment(container, kubelet.configmaps(objects), POD_IP)
    args = [kubelet.expand(a, env) for a in container["args"]]
    assert not [a for a in args if "$(" in a], f"unexpanded variable in {args}"
    command = cli.get_command(None, args[0])
    with command.make_context(args[0], list(args[1:])) as ctx:  # click.UsageError on a bad option
        assert isinstance(ctx, click.Context)
