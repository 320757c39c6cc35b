"""What the Dockerfile does, without docker (no engine here): `pip install .` into a fresh venv,
then the installed `zmqagents node --config` with the example config, as an unprivileged user."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "scripts" / "node.example.toml"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_pip_install_into_a_fresh_venv_runs_the_sidecar_as_a_non_root_user():
    # Not under pytest's tmp_path: its parents are private to root, and the sidecar runs as nobody.
    base = Path(tempfile.mkdtemp(prefix="zmqagents-install-"))
    try:
        base.chmod(0o755)
        venv = base / "venv"
        had_build = (ROOT / "build").exists()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                             capture_output=True, text=True, timeout=170)
        assert pip.returncode == 0, pip.stderr[-2000:]
        if not had_build:
            shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' in-tree build directory

        state, runtime = base / "state", base / "run"
        for d in (state, runtime):
            d.mkdir(mode=0o700)
            os.chown(d, 65534, 65534)
        config = base / "node.toml"
        shutil.copy(EXAMPLE, config)  # what the image copies to /etc/zmqagents/node.toml
        config.chmod(0o644)
        env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "STATE_DIRECTORY": str(state), "RUNTIME_DIRECTORY": str(runtime),
               "ZMQAGENTS_NODE_LISTEN": "tcp://127.0.0.1:0", "ZMQAGENTS_MDNS_ENABLED": "false",
               "ZMQAGENTS_NODE_CONTACT_FILE": str(runtime / "contact"), "HOME": "/nonexistent"}
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []

        check = subprocess.run(drop + [str(venv / "bin" / "zmqagents"), "config", "check", str(config), "--json"],
                               capture_output=True, text=True, env=env, timeout=30, cwd=base)
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout)["config"]["node"]["key"] == str(state / "node.key")

        proc = subprocess.Popen(drop + [str(venv / "bin" / "zmqagents"), "node", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=base)
        try:
            deadline = time.monotonic() + 20
            while not (runtime / "contact").exists():
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the installed sidecar did not start"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        key = state / "node.key"
        assert key.stat().st_uid == (65534 if drop else os.geteuid()) and key.stat().st_mode & 0o777 == 0o600
        logs = [json.loads(line) for line in err.splitlines()]  # the example config logs JSON
        assert any(line["msg"].startswith("created a new node key") for line in logs)
        assert json.loads(out.splitlines()[0])["contact"] == (runtime / "contact").read_text().strip()
        installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import zmqagents, sys; print(zmqagents.__file__)"],
                                   capture_output=True, text=True, timeout=30, cwd=base).stdout
        assert installed.startswith(str(venv))  # the installed copy ran, not the source tree
    finally:
        shutil.rmtree(base, ignore_errors=True)
