"""`zmqagents agent --preset` and `zmqagents collab` as a shell user runs them: real processes, real pipes.

The presets run against stand-ins (an executable speaking Claude Code's stream-json, a local
server speaking Ollama's OpenAI-compatible API); the collaboration modes against shell agents.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers.cli import server, zmqa
from helpers.standins import CLAUDE, stand_in

pytestmark = pytest.mark.timeout(120)


def py(code: str) -> str:
    """A shell agent command: Python reading the input JSON as ``x``, printing ``out`` as JSON."""
    script = f"import json, sys\nx = json.load(sys.stdin)\n{code}\nprint(json.dumps(out))"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_agent_preset_claude_code_from_the_shell(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAUDE_BIN", stand_in(tmp_path, "claude", CLAUDE))
    with server(tmp_path, "agent", "--preset", "claude-code", "--arg", "--max-turns", "--arg", "2") as (seed, _):
        res = zmqa("task", "claude-code", "--bootstrap", seed, "--stream", input='{"prompt": "fix it"}\n"crash"\n',
                   timeout=60)
        assert res.returncode == 4, res.stderr  # the second line failed
        rows = lines(res.stdout)
        progress = [r["progress"] for r in rows if "progress" in r]
        assert progress[0] == "Looking at it." and progress[1]["event"] == "tool_use"
        done = [r for r in rows if "state" in r]
        assert done[0]["state"] == "completed" and done[0]["output"]["text"] == "Done: fix it --max-turns 2"
        assert done[1]["state"] == "failed" and "claude: something broke" in done[1]["error"]["msg"]
        # the preset's schema is published and enforced before sending: a number is not a prompt
        res = zmqa("task", "claude-code", "--bootstrap", seed, "42", timeout=60)
        assert res.returncode == 4 and lines(res.stdout)[0]["state"] == "invalid"


class _Ollama(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = f"{body['model']} says hi to {body['messages'][-1]['content']}"
        data = (f"data: {json.dumps({'choices': [{'delta': {'content': text}, 'finish_reason': 'stop'}]})}\n\n"
                "data: [DONE]\n\n")
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


def test_agent_preset_ollama_and_bad_presets(tmp_path, monkeypatch):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ollama)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    presets = tmp_path / "mine.toml"
    presets.write_text('[local]\nextends = "ollama"\ncapability = "local-chat"\nmodel = "tiny"\n')
    try:
        with server(tmp_path, "agent", "--preset", "local", "--preset-file", str(presets)) as (seed, _):
            res = zmqa("task", "local-chat", "--bootstrap", seed, input='"Ann"\n{"prompt": "Bo"}\n', timeout=60)
            assert res.returncode == 0, res.stderr
            assert [r["output"]["text"] for r in lines(res.stdout)] == ["tiny says hi to Ann", "tiny says hi to Bo"]
    finally:
        httpd.shutdown()
        httpd.server_close()
    for args, message in [
        (["--preset", "nope"], "no preset 'nope'"),
        (["--preset", "ollama", "--exec", "cat"], "give --exec COMMAND or --preset NAME"),
        (["--exec", "cat", "--capability", "x", "--model", "m"], "--model goes with --preset"),
        (["--preset", "codex", "--base-url", "http://x"], "--base-url is for the openai and anthropic kinds"),
        (["--preset", "ollama", "--input-schema", '{"type": "string", "unevaluatedProperties": false}'],
         "'unevaluatedProperties'"),
    ]:
        res = zmqa("agent", *args, timeout=30)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)


def test_collab_modes_from_the_shell(tmp_path):
    with ExitStack() as stack:
        seed, _ = stack.enter_context(server(tmp_path, "agent", "--capability", "add1", "--exec",
                                             py('out = {"n": x["n"] + 1}'), name="s"))
        for i, (cap, code) in enumerate([
            ("double", 'out = {"n": x["n"] * 2}'), ("length", "out = {'n': len(x)}"),
            ("sum", 'out = {"n": sum(i["n"] for i in x)}'), ("answer", 'out = {"a": 42}'), ("answer", 'out = {"a": 42}'),
            ("answer", 'out = {"a": 7}'), ("pro", 'out = {"r": x["round"]}'), ("judge", 'out = {"turns": len(x["transcript"])}'),
            ("fail", "raise SystemExit('nope')"),
        ]):
            stack.enter_context(server(tmp_path, "agent", "--capability", cap, "--exec", py(code), "--bootstrap", seed,
                                       name=f"a{i}"))

        def collab(*args, input=None):
            return zmqa("collab", *args, "--bootstrap", seed, input=input, timeout=60)

        res = collab("sequential", "add1", "double", input='{"n": 1}\n{"n": 5}\nnot json\n')
        assert res.returncode == 4, res.stderr  # the invalid line
        assert [(r["state"], r.get("output")) for r in lines(res.stdout)] == [
            ("completed", {"n": 4}), ("completed", {"n": 12}), ("invalid", None)]

        res = collab("parallel", "add1", "--limit", "2", input='[{"n": 1}, {"n": 2}, {"n": 3}]\n')
        assert res.returncode == 0 and lines(res.stdout)[0]["output"] == [{"n": 2}, {"n": 3}, {"n": 4}]

        res = collab("map-reduce", "length", "sum", "--input", '["ab", "cde", ""]')
        assert res.returncode == 0 and lines(res.stdout)[0]["output"] == {"n": 5}

        res = collab("vote", "answer", "--voters", "3", input='"q"\n')
        assert res.returncode == 0 and lines(res.stdout)[0]["output"] == {"output": {"a": 42}, "votes": 2, "voters": 3}
        res = collab("vote", "answer", "--voters", "3", "--quorum", "3", input='"q"\n')
        assert res.returncode == 4 and "no quorum" in lines(res.stdout)[0]["error"]["msg"]

        res = collab("debate", "--debater", "pro", "--judge", "judge", "--rounds", "3", input='"tabs?"\n')
        assert res.returncode == 0 and lines(res.stdout)[0]["output"]["verdict"] == {"turns": 3}

        res = collab("sequential", "add1", "fail", input='{"n": 1}\n')
        assert res.returncode == 4 and lines(res.stdout)[0]["state"] == "failed"
        assert "step 2 (fail)" in lines(res.stdout)[0]["error"]["msg"]

        res = collab("sequential", "add1", "nobody-serves-this", input='{"n": 1}\n')
        assert res.returncode == 3 and "no provider offers 'nobody-serves-this'" in res.stderr

        res = collab("vote", "answer", "--voters", "2", "--quorum", "3", input='"q"\n')
        assert res.returncode == 2 and "'quorum' cannot exceed 'voters'" in res.stderr
