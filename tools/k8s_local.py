"""deploy/k8s's pods run as processes on this machine, as the kubelet would start their containers.

For the tests (tests/deploy) and the benchmark (bench/k8s_pods.py) of the Kubernetes load test,
where there is no cluster. From the rendered manifests (tools/kustomize_lite.py) each container gets:

* its environment from ``envFrom`` (ConfigMaps) and ``env`` (values; ``status.podIP`` from the
  downward API), and ``JOB_COMPLETION_INDEX`` in an Indexed Job's pods, as the kubelet sets them;
* its command line, ``command`` + ``args`` with ``$(VAR)`` expanded by Kubernetes' rules (``$$`` is a
  literal ``$``, an undefined variable stays as written);
* its volumes as directories (an ``emptyDir`` empty, a ``configMap`` holding its keys as files), each
  mount path in the command line replaced by the directory;
* a pod address of its own on loopback (127.X.Y.Z: Linux answers on all of 127.0.0.0/8), so the
  manifests' fixed ports collide with nothing else on the machine, and the seed's DNS name
  (``seed-0.seed``) replaced by the seed pod's address, as the cluster's DNS would resolve it.

:class:`LocalCluster` starts the seed, runs a swarm pod's init container and then its main container,
and stops every process it started by its PID.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
SEED_DNS = "seed-0.seed"


def environment(container: dict, configmaps: dict[str, dict[str, str]], pod_ip: str,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The container's variables: ``extra`` (set by the kubelet itself), ``envFrom``, then ``env``
    (which wins), each ``env`` value expanded from the ones before it."""
    env: dict[str, str] = dict(extra or {})
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]  # KeyError: a kind of source not known here
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
    """``command`` + ``args``, expanded (every container of deploy/k8s names its command)."""
    return [expand(word, env) for word in container["command"] + container.get("args", [])]


def localize(words: list[str], mounts: dict[str, Path], hosts: dict[str, str]) -> list[str]:
    """``words`` with each mount path replaced by the directory standing for it and each cluster DNS
    name by its address."""
    # One pass over each word, longest mount first: a directory put in must not be matched again
    # (a mount at /tmp would otherwise rewrite the /tmp/... directory given for /contacts).
    paths = sorted(mounts, key=len, reverse=True)
    mount_re = re.compile(r"(?<![\w/])(" + "|".join(map(re.escape, paths)) + r")(?=/|$)") if paths else None
    out = []
    for word in words:
        if mount_re is not None:
            word = mount_re.sub(lambda m: str(mounts[m.group(1)]), word)
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


def pod_address(rng: random.Random) -> str:
    return f"127.{rng.randrange(64, 250)}.{rng.randrange(1, 250)}.{rng.randrange(2, 250)}"


class LocalCluster:
    """The seed and swarm pods of ``objects`` as processes here, with their files under ``workdir``.
    ``params`` overrides keys of the swarm-params ConfigMap (as an overlay would: NODES, ...)."""

    def __init__(self, objects: list[dict], workdir: Path, params: dict[str, str] | None = None):
        self.objects = objects
        self.maps = configmaps(objects)
        self.maps["swarm-params"] = {**self.maps["swarm-params"], **(params or {})}
        self.workdir = Path(workdir)
        self.rng = random.Random(os.getpid() * 1_000_003 + time.monotonic_ns())
        self.hosts: dict[str, str] = {}
        self.procs: list[subprocess.Popen] = []
        # The venv's `zmqagents` and `python` first, as the image's PATH has them first.
        self.base_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                         "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def pod_spec(self, kind: str, name: str) -> dict:
        return workload(self.objects, kind, name)["spec"]["template"]["spec"]

    def _prepare(self, spec: dict, container_name: str, pod_dir: Path, address: str,
                 extra: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """The container's command line and process environment, its volumes made under ``pod_dir``."""
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        box = container(spec, container_name)
        mounts = {}
        for mount in box.get("volumeMounts", []):
            directory = pod_dir / mount["name"]
            directory.mkdir(parents=True, exist_ok=True)
            source = volumes[mount["name"]]
            if "configMap" in source:
                for key, text in self.maps[source["configMap"]["name"]].items():
                    (directory / key).write_text(text)
            mounts[mount["mountPath"]] = directory
        env = environment(box, self.maps, address, extra)
        return localize(argv(box, env), mounts, self.hosts), {**self.base_env, **env}

    def _spawn(self, words: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
        proc = subprocess.Popen(words, env=env, **popen)
        self.procs.append(proc)
        return proc

    def start_seed(self, timeout: float = 30.0, address: str | None = None) -> tuple[subprocess.Popen, dict]:
        """The seed pod's container, running (at ``address``, else a new one); its first output line
        (contact, admin address)."""
        address = address or pod_address(self.rng)
        self.hosts[SEED_DNS] = address
        words, env = self._prepare(self.pod_spec("StatefulSet", "seed"), "seed", self.workdir / "seed-0", address)
        proc = self._spawn(words, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"the seed printed nothing in {timeout:g} s")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the seed exited {proc.wait()}: {proc.stderr.read().decode()[-2000:]}")
        return proc, json.loads(line)

    def init_command(self, index: int) -> tuple[list[str], dict[str, str]]:
        """Swarm pod ``index``'s init container (seed-contact): command line and environment."""
        spec = self.pod_spec("Job", "swarm")
        return self._prepare(spec, "seed-contact", self.workdir / f"swarm-{index}", pod_address(self.rng),
                             {"JOB_COMPLETION_INDEX": str(index)})

    def start_swarm_pod(self, index: int, init_timeout: float = 60.0, **popen) -> subprocess.Popen:
        """Swarm pod ``index``: its init container run to its end (it must succeed, as the kubelet
        requires), then its main container started (stdout and stderr to files in its directory
        unless ``popen`` says otherwise)."""
        words, env = self.init_command(index)
        done = subprocess.run(words, env=env, capture_output=True, text=True, timeout=init_timeout)
        if done.returncode != 0:
            raise RuntimeError(f"swarm-{index}'s init container exited {done.returncode}: {done.stderr[-2000:]}")
        spec = self.pod_spec("Job", "swarm")
        pod_dir = self.workdir / f"swarm-{index}"
        words, env = self._prepare(spec, "swarm", pod_dir, pod_address(self.rng), {"JOB_COMPLETION_INDEX": str(index)})
        if not popen:
            popen = {"stdout": open(pod_dir / "log", "wb"), "stderr": open(pod_dir / "stderr", "wb")}
        try:
            return self._spawn(words, env, **popen)
        finally:
            for stream in ("stdout", "stderr"):
                if hasattr(popen.get(stream), "close"):
                    popen[stream].close()  # the child holds its own copy

    def stop(self, proc: subprocess.Popen, grace: float = 30.0) -> int:
        """SIGTERM (what the kubelet sends), SIGKILL after ``grace`` s (its terminationGracePeriodSeconds)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc, grace=10.0)
        self.procs.clear()
