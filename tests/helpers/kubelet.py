"""What the kubelet makes of a container spec, for running a pod's command lines on this machine.

The tests of deploy/k8s run each container's command as the kubelet would start it: the
environment from ``env`` and ``envFrom`` (ConfigMaps only; ``status.podIP`` from the downward API),
``$(VAR)`` in ``command`` and ``args`` expanded from it (Kubernetes' rules: ``$$`` is a literal
``$``, an undefined variable stays as written), and the paths of its volume mounts mapped to
directories here. A DNS name of the cluster (``seed-0.seed``) is mapped to the address the test gave
that pod, as the cluster's DNS would.
"""

from __future__ import annotations

import re
from pathlib import Path

REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def environment(container: dict, configmaps: dict[str, dict[str, str]], pod_ip: str) -> dict[str, str]:
    """The container's variables: ``envFrom`` first, then ``env`` (which wins), each expanded in order."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]  # KeyError: a kind of source the tests do not know
        env.update(configmaps[ref["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif var["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP":
            env[var["name"]] = pod_ip
        else:
            raise KeyError(f"env {var['name']}: only values and status.podIP are known here")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` replaced from ``env`` as the kubelet does it."""
    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return REFERENCE.sub(one, text)


def argv(container: dict, env: dict[str, str]) -> list[str]:
    """``command`` + ``args``, expanded (every container here names its command)."""
    return [expand(word, env) for word in container["command"] + container.get("args", [])]


def localize(words: list[str], mounts: dict[str, Path], hosts: dict[str, str]) -> list[str]:
    """``words`` with each mount path replaced by the directory standing for it and each cluster DNS
    name by its address."""
    out = []
    for word in words:
        for mount, directory in mounts.items():
            word = re.sub(rf"(?<![\w/]){re.escape(mount)}(?=/|$)", str(directory), word)
        for name, address in hosts.items():
            word = re.sub(rf"(?<=//){re.escape(name)}(?=[:/])", address, word)
        out.append(word)
    return out


def configmaps(objects: list[dict]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}


def workload(objects: list[dict], kind: str, name: str) -> dict:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container(pod_spec: dict, name: str) -> dict:
    [found] = [c for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []) if c["name"] == name]
    return found
