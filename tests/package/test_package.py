"""The package root: its exports, the one exception root, and the README's Python blocks run as written."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import zmqagents

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _modules():
    for info in pkgutil.walk_packages(zmqagents.__path__, "zmqagents."):
        yield importlib.import_module(info.name)


def test_root_exports_resolve_lazily():
    code = ("import sys, zmqagents.envelope\n"
            "assert 'zmq' not in sys.modules and 'asyncio' not in sys.modules, 'the root imported too much'\n"
            "from zmqagents import *\n"
            "import zmqagents\n"
            "print(sorted(n for n in zmqagents.__all__ if getattr(zmqagents, n) is None))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    from zmqagents import Agents, Capability, Error, Node, TaskDone  # noqa: F401  (the issue's example)
    from zmqagents import node  # a submodule is still a submodule
    assert node.Node is Node
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        zmqagents.Nope  # noqa: B018


def test_every_exception_class_derives_from_error():
    strays = set()
    for module in _modules():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and not issubclass(obj, Warning)
                    and obj.__module__ == module.__name__ and not issubclass(obj, zmqagents.Error)):
                strays.add(f"{module.__name__}.{name}")
    assert strays == set(), "exceptions outside zmqagents.Error"
    # builtin bases kept: callers catching ValueError/TimeoutError still do
    from zmqagents.agents.schema import SchemaError
    from zmqagents.dht import DhtTimeout
    from zmqagents.envelope import MalformedEnvelope
    assert issubclass(SchemaError, ValueError) and issubclass(DhtTimeout, TimeoutError)
    assert issubclass(MalformedEnvelope, ValueError) and issubclass(zmqagents.InvalidArgument, ValueError)


def test_argument_errors_are_package_errors():
    from zmqagents.agents.shell import ShellAgent
    from zmqagents.queues import BoundedQueue

    with pytest.raises(zmqagents.Error, match="stdin must be"):
        ShellAgent("true", stdin="xml")
    with pytest.raises(zmqagents.InvalidArgument):
        BoundedQueue(limit=0, max_bytes=1)


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


class _Ollama(BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions as Ollama's OpenAI-compatible API streams."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["stream"] is True
        events = [{"model": body["model"], "choices": [{"delta": {"content": w}, "finish_reason": None}]}
                  for w in ("Hi", "!")]
        events.append({"choices": [{"delta": {}, "finish_reason": "stop"}]})
        data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def ollama():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ollama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PYTHON_BLOCKS = blocks("python")


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 4


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs_verbatim(index, tmp_path, ollama):
    code = PYTHON_BLOCKS[index]
    script = tmp_path / f"readme_{index}.py"
    script.write_text(code)
    env = {**os.environ, "OLLAMA_HOST": ollama, "XDG_CONFIG_HOME": str(tmp_path),  # a user's Ollama, no presets file
           "NO_PROXY": "127.0.0.1"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, f"README python block {index + 1}:\n{code}\n--- stderr:\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    if "load_presets" in code:
        assert out.stdout.splitlines()[-1] == "completed Hi!"
    if "HELLO" in code:
        assert "completed HELLO" in out.stdout and "InvalidInput" in out.stdout


def test_readme_toml_blocks_parse():
    found = blocks("toml")
    assert found
    for text in found:
        tomllib.loads(text)
