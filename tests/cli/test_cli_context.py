"""One way to name the mesh (issue 16, item 2) and the shell reference (item 7): --mesh with the old
flag names as hidden aliases, contexts and ZMQAGENTS_MESH, unreachable vs not offered, `help`, and
the README's shell pipeline run as written. Real processes and sockets; every wait bounded."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from helpers.cli import CLI, server

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"


def run(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 40):
    return subprocess.run(CLI + list(args), input=input, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def dead_contact(tmp_path: Path) -> str:
    """A well-formed contact nobody answers at (a fresh key, a port nothing listens on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pub = json.loads(run("keygen", str(tmp_path / "dead.key")).stdout)["public_key"]
    return f"{pub}@tcp://127.0.0.1:{port}"


def test_contexts_name_the_mesh_once(tmp_path):
    env = {"ZMQAGENTS_CONTEXTS": str(tmp_path / "contexts.json")}
    with server(tmp_path, "agent", "--capability", "upper", "--stdin", "text", "--exec", "tr a-z A-Z") as (seed, _):
        assert run("task", "upper", env=env, input='"a"\n').returncode == 2  # no mesh anywhere: usage error
        added = run("context", "add", "lab", "--mesh", seed, env=env)
        assert added.returncode == 0, added.stderr
        assert lines(added.stdout)[0]["current"] is True  # the first context becomes current
        assert (tmp_path / "contexts.json").stat().st_mode & 0o777 == 0o600
        stored = json.loads((tmp_path / "contexts.json").read_text())["contexts"]["lab"]["mesh"]
        assert stored == ["@" + str((tmp_path / "server.contact").resolve())]  # @FILE kept, made absolute

        res = run("task", "upper", env=env, input='"a"\n"b"\n')  # no --mesh: the current context
        assert res.returncode == 0, res.stderr
        assert [o["output"] for o in lines(res.stdout)] == ["A", "B"]

        assert run("context", "add", "void", "--mesh", dead_contact(tmp_path), env=env).returncode == 0
        listed = {o["context"]: o["current"] for o in lines(run("context", "ls", env=env).stdout)}
        assert listed == {"lab": True, "void": False}
        assert run("context", "use", "void", env=env).returncode == 0
        # ZMQAGENTS_CONTEXT picks a context for one command; ZMQAGENTS_MESH names the mesh outright
        picked = run("task", "upper", env={**env, "ZMQAGENTS_CONTEXT": "lab"}, input='"c"\n')
        assert picked.returncode == 0 and lines(picked.stdout)[0]["output"] == "C", picked.stderr
        direct = run("task", "upper", env={**env, "ZMQAGENTS_MESH": seed}, input='"d"\n')
        assert direct.returncode == 0 and lines(direct.stdout)[0]["output"] == "D", direct.stderr
        flag = run("dht", "put", "k", "v", "--mesh", seed, env=env)  # a flag beats the context (void)
        assert flag.returncode == 0, flag.stderr
        assert run("context", "use", "nope", env=env).returncode == 2
        unknown = run("task", "upper", env={**env, "ZMQAGENTS_CONTEXT": "nope"}, input='"x"\n')
        assert unknown.returncode == 2 and "no context named 'nope'" in unknown.stderr


def test_the_old_flag_names_still_work_and_only_the_new_ones_are_shown(tmp_path):
    with ExitStack() as stack:
        seed, _ = stack.enter_context(server(tmp_path, "agent", "--capability", "upper", "--stdin", "text",
                                             "--exec", "tr a-z A-Z", "--max-concurrency", "2", "--timeout", "30"))
        old = run("task", "upper", "--bootstrap", seed, input='"a"\n')
        new = run("task", "upper", "--mesh", seed, input='"b"\n')
        assert old.returncode == new.returncode == 0, old.stderr + new.stderr
    for command, shown, hidden in ((["task"], "--mesh", "--bootstrap"), (["agent"], "--parallel", "--max-concurrency"),
                                   (["agent"], "--exec-timeout", "--timeout"), (["reply"], "--parallel", "--concurrency"),
                                   (["node"], "--mesh", "--bootstrap"), (["dht", "get"], "--mesh", "--bootstrap"),
                                   (["node"], "--mesh", "--peer"), (["agent"], "--mesh", "--peer"),
                                   (["reply"], "--mesh", "--peer"), (["peers"], "--mesh", "--to"),
                                   (["publish"], "--one-hop", "--to"), (["subscribe"], "--one-hop", "--to")):
        text = run(*command, "--help").stdout
        assert shown in text and hidden not in text, (command, text)


def test_unreachable_and_not_offered_have_different_exit_codes(tmp_path):
    dead = dead_contact(tmp_path)
    began = time.monotonic()
    to = run("task", "upper", "--to", dead, "--accept-timeout", "2", input='"a"\n')
    assert to.returncode == 8 and "unreachable" in to.stderr, to.stderr
    assert time.monotonic() - began < 15
    mesh = run("task", "upper", "--mesh", dead, input='"a"\n', timeout=90)
    assert mesh.returncode == 8 and "unreachable" in mesh.stderr, mesh.stderr
    with server(tmp_path, "agent", "--capability", "upper", "--exec", "cat") as (seed, _):
        assert run("task", "other", "--mesh", seed, input='"a"\n').returncode == 3  # answered: nobody offers it
        assert run("task", "other", "--to", seed, input='"a"\n').returncode == 3


def test_help_topics():
    assert run("help").returncode == 0
    ctx = run("help", "context")
    assert ctx.returncode == 0 and "ZMQAGENTS_MESH" in ctx.stdout and "context add" in ctx.stdout
    presets = run("help", "presets", env={"XDG_CONFIG_HOME": "/nonexistent"})
    assert presets.returncode == 0, presets.stderr
    for name in ("claude-code", "codex", "openai", "ollama", "anthropic"):
        assert name in presets.stdout
    assert run("help", "nonsense").returncode == 2


def readme_pipeline() -> str:
    text = README.read_text()
    match = re.search(r"<!-- tested: tests/cli/test_cli_context.py -->\s*```sh\n(.*?)```", text, re.S)
    assert match, "README lost its tested shell pipeline"
    return match.group(1)


@pytest.mark.timeout(180)
def test_the_readme_shell_pipeline_runs_as_written(tmp_path):
    """The block is run by bash as it stands in the README, with `zmqagents` on PATH and its
    /tmp/seed.contact pointed at this test's directory; its output is what the comments promise."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "zmqagents"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m zmqagents.cli \"$@\"\n")
    shim.chmod(0o755)
    script = readme_pipeline().replace("/tmp/seed.contact", str(tmp_path / "seed.contact"))
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "ZMQAGENTS_CONTEXTS": str(tmp_path / "ctx.json")}
    proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + script], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid_file in tmp_path.glob("*.pid"):  # the agents the block started in the background
            try:
                os.kill(int(pid_file.read_text()), 15)
            except (ProcessLookupError, ValueError):
                pass
    assert proc.returncode == 0, err
    said = out.splitlines()
    assert json.loads(said[0])["context"] == "demo"  # `context add` says what it stored
    assert said[1:] == ["ALPHA", "BETA", "GAMMA", "X", "Y"], out
