"""Agent presets against stand-ins that speak the real tools' documented input and output.

Claude Code and Codex are replaced by small executables that check the argument vector the real
CLIs document (print mode with stream-json; exec --json with the prompt on stdin), read the prompt
from stdin and print the documented JSON lines. The HTTP presets talk to a server on 127.0.0.1
that answers as the chat completions and Messages APIs stream; a proxy on 127.0.0.1 (CONNECT
tunnel and absolute-form forwarding) stands between them for the proxy tests. No network, no keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from urllib.parse import urlsplit

import pytest

from zmqagents.agents import presets
from zmqagents.agents.base import AgentError, TaskContext
from zmqagents.agents.presets import PresetError

from helpers.standins import CLAUDE, CODEX, stand_in

pytestmark = pytest.mark.timeout(60)

def ctx(chunks: list | None = None, timeout: float | None = None) -> TaskContext:
    return TaskContext("ab" * 8, "cap", timeout=timeout,
                       progress=(chunks.append if chunks is not None else (lambda c: None)))


def builtin(name: str, **changes) -> presets.Preset:
    return presets.load(include_user=False)[name].with_overrides(**changes)


def test_claude_code_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAUDE_BIN", stand_in(tmp_path, "claude", CLAUDE))
    p = builtin("claude-code", args=("--max-turns", "3"))
    cap = p.to_capability()
    assert cap.name == "claude-code" and cap.input_schema == presets.PROMPT_SCHEMA
    agent = p.agent()
    chunks: list = []
    out = asyncio.run(agent({"prompt": "fix the bug"}, ctx(chunks)))
    assert out == {"text": "Done: fix the bug --max-turns 3", "session_id": "s-1", "cost_usd": 0.0123,
                   "usage": {"input_tokens": 10, "output_tokens": 5}, "turns": 2, "duration_ms": 1500,
                   "model": "claude-test"}
    # the 5 MiB tool-result line was skipped, not held; text and tool use streamed in order
    assert chunks == ["Looking at it.", {"event": "tool_use", "name": "Bash", "input": '{"command": "ls"}'},
                      "Done: fix the bug"]
    with pytest.raises(AgentError, match=r"exited with status 1: Claude Code reported error_max_turns"):
        asyncio.run(agent("fail", ctx()))
    with pytest.raises(AgentError, match="exited with status 2: claude: something broke"):
        asyncio.run(agent("crash", ctx()))


def test_codex_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEX_BIN", stand_in(tmp_path, "codex", CODEX))
    p = builtin("codex", model="gpt-5-codex")
    agent = p.agent()
    assert agent.argv[-4:] == ["--json", "--model", "gpt-5-codex", "-"]
    chunks: list = []
    out = asyncio.run(agent("list files", ctx(chunks)))
    assert out == {"text": "Codex did: list files", "thread_id": "th-1",
                   "usage": {"input_tokens": 20, "cached_input_tokens": 0, "output_tokens": 6}}
    assert chunks == [{"event": "command", "command": "bash -lc ls"},
                      {"event": "command_done", "command": "bash -lc ls", "exit_code": 0}, "Codex did: list files"]
    with pytest.raises(AgentError, match="Codex: stream disconnected before completion"):
        asyncio.run(agent("fail", ctx()))


def test_command_preset_missing_binary_and_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAUDE_BIN", str(tmp_path / "no-such-claude"))
    with pytest.raises(AgentError, match="was not found"):
        asyncio.run(builtin("claude-code").agent()("hi", ctx()))
    slow = stand_in(tmp_path, "slow", "import time, sys\nsys.stdin.read()\nprint('{}', flush=True)\ntime.sleep(60)\n")
    monkeypatch.setenv("CLAUDE_BIN", slow)
    with pytest.raises(AgentError, match=r"did not finish within 0.5 s; its process group was killed"):
        asyncio.run(builtin("claude-code").agent()("hi", ctx(timeout=0.5)))


# -- HTTP presets -------------------------------------------------------------------------------


class FakeAPI:
    """Answers POSTs like the chat completions API (path .../chat/completions) or the Messages API
    (.../v1/messages), streamed. ``script`` holds statuses to answer first (429, 503: with
    Retry-After 0), then every request succeeds. Absolute-form request targets are accepted (a
    proxy forwarding http)."""

    def __init__(self, script=(), tls=None):
        self.script = list(script)
        self.requests: list[dict] = []
        self.tls = tls

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def serve(self, reader, writer):
        try:
            line = (await reader.readline()).decode()
            headers = {}
            while (h := await reader.readline()) not in (b"\r\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            method, target, _ = line.split(" ", 2)
            self.requests.append({"target": target, "headers": headers, "body": body})
            if self.script:
                status = self.script.pop(0)
                doc = json.dumps({"error": {"message": f"try later ({status})"}}).encode()
                writer.write(f"HTTP/1.1 {status} X\r\nRetry-After: 0\r\nContent-Length: {len(doc)}\r\n\r\n".encode() + doc)
                return
            path = urlsplit(target).path
            words = ["Hi", " there"]
            if path.endswith("/v1/messages"):
                events = [("message_start", {"type": "message_start", "message": {"model": body["model"], "usage": {"input_tokens": 3}}})]
                events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": w}}) for w in words]
                events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                              "usage": {"output_tokens": 2}}), ("message_stop", {"type": "message_stop"})]
                text = "".join(f"event: {n}\ndata: {json.dumps(d)}\n\n" for n, d in events)
            else:
                chunks = [{"model": body["model"], "choices": [{"delta": {"content": w}, "finish_reason": None}]} for w in words]
                chunks.append({"choices": [{"delta": {}, "finish_reason": "stop"}]})
                text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + text.encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class Proxy:
    """An HTTP proxy on 127.0.0.1: CONNECT tunnels, and absolute-form requests forwarded as they are.
    Every upstream connection goes to 127.0.0.1 at the port asked for."""

    def __init__(self):
        self.seen: list[tuple[str, str, str | None]] = []  # (method, target, Proxy-Authorization)

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://u%40x:p%3Aw@127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def serve(self, reader, writer):
        try:
            head = [(await reader.readline())]
            while head[-1] not in (b"\r\n", b""):
                head.append(await reader.readline())
            method, target, _ = head[0].decode().split(" ", 2)
            auth = next((h.decode().split(":", 1)[1].strip() for h in head[1:]
                         if h.lower().startswith(b"proxy-authorization:")), None)
            self.seen.append((method, target, auth))
            port = int(target.rsplit(":", 1)[1]) if method == "CONNECT" else urlsplit(target).port
            up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_w.write(b"".join(head))

            async def pipe(src, dst):
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                finally:
                    dst.close()

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)
        finally:
            writer.close()


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", ["openai", "ollama", "anthropic"])
def test_http_presets_stream_and_retry(name, monkeypatch, no_proxy_env):
    monkeypatch.setenv("TEST_KEY", "sk-secret")

    async def main():
        async with FakeAPI(script=[429, 503]) as api:
            url = f"http://127.0.0.1:{api.port}"
            if name == "ollama":
                monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{api.port}")  # host:port, as Ollama's own CLI takes it
                p = builtin(name)
            else:
                p = builtin(name, base_url=url + ("/v1" if name == "openai" else ""), api_key_env="TEST_KEY",
                            model="m-1")
            chunks: list = []
            out = await p.agent()({"system": "be brief", "prompt": "hello"}, ctx(chunks))
            return out, chunks, api.requests

    out, chunks, requests = asyncio.run(main())
    assert chunks == ["Hi", " there"] and out["text"] == "Hi there" and out["stop"] in ("stop", "end_turn")
    assert len(requests) == 3  # 429, 503, then the answer
    req = requests[-1]
    if name == "anthropic":
        assert req["target"] == "/v1/messages" and req["headers"]["x-api-key"] == "sk-secret"
        assert req["body"]["max_tokens"] == 4096 and req["body"]["system"] == "be brief"
    else:
        assert req["target"] == "/v1/chat/completions"
        assert req["body"]["messages"][0] == {"role": "system", "content": "be brief"}
        if name == "ollama":
            assert "authorization" not in req["headers"] and req["body"]["model"] == "llama3.2"
        else:
            assert req["headers"]["authorization"] == "Bearer sk-secret" and req["body"]["model"] == "m-1"


def test_retries_give_up_with_the_last_answer(no_proxy_env):
    async def main():
        async with FakeAPI(script=[503] * 5) as api:
            agent = builtin("openai", base_url=f"http://127.0.0.1:{api.port}/v1", api_key_env="", retries=2).agent()
            with pytest.raises(AgentError, match=r"answered HTTP 503: try later \(503\) \(3 attempts\)"):
                await agent("hi", ctx())
            return len(api.requests)

    assert asyncio.run(main()) == 3


def test_http_through_a_proxy(monkeypatch, no_proxy_env):
    async def main():
        async with FakeAPI() as api, Proxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            agent = builtin("openai", base_url=f"http://api.test:{api.port}/v1", api_key_env="").agent()
            out = await agent("hi", ctx())
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # exempt: straight to the server
            direct = builtin("openai", base_url=f"http://127.0.0.1:{api.port}/v1", api_key_env="").agent()
            await direct("hi", ctx())
            return out, proxy.seen, api.requests

    out, seen, requests = asyncio.run(main())
    assert out["text"] == "Hi there"
    assert len(seen) == 1 and seen[0][0] == "POST" and seen[0][1].startswith("http://api.test:")
    assert seen[0][2] == "Basic dUB4OnA6dw=="  # u@x:p:w from the proxy URL's percent-encoded userinfo
    assert requests[0]["target"].startswith("http://api.test:") and requests[1]["target"] == "/v1/chat/completions"
    assert "proxy-authorization" in requests[0]["headers"] and "proxy-authorization" not in requests[1]["headers"]


def test_https_through_a_connect_tunnel(tmp_path, monkeypatch, no_proxy_env):
    import ssl

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=30)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the throwaway certificate, as a user trusts a private CA

    async def main():
        async with FakeAPI(tls=tls) as api, Proxy() as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            agent = builtin("anthropic", base_url=f"https://localhost:{api.port}", api_key_env="").agent()
            out = await agent("hi", ctx())
            return out, proxy.seen, api.requests

    out, seen, requests = asyncio.run(main())
    assert out["text"] == "Hi there"
    (method, target, auth), = seen
    assert (method, target) == ("CONNECT", f"localhost:{requests[0]['headers']['host'].rsplit(':', 1)[1]}")
    assert auth == "Basic dUB4OnA6dw==" and "proxy-authorization" not in requests[0]["headers"]  # not sent to the origin


# -- presets as data --------------------------------------------------------------------------------


def test_user_presets_extend_and_override(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "zmqagents").mkdir()
    (tmp_path / "zmqagents" / "presets.toml").write_text(
        '[vllm]\nextends = "openai"\nbase_url = "http://10.0.0.5:8000/v1"\nmodel = "qwen"\napi_key_env = ""\n'
        'capability = "chat-qwen"\n\n[openai]\nkind = "openai"\ncapability = "gpt"\nmodel = "x"\n')
    extra = tmp_path / "more.toml"
    extra.write_text('[review]\nextends = "vllm"\ncapability = "review"\noptions = {temperature = 0}\n'
                     'input_schema = {type = "string", maxLength = 100}\n')
    ps = presets.load([extra])
    assert ps["vllm"].capability == "chat-qwen" and ps["vllm"].base_url == "http://10.0.0.5:8000/v1"
    assert ps["openai"].capability == "gpt" and ps["openai"].source.endswith("presets.toml")
    review = ps["review"]
    assert (review.kind, review.model, review.options) == ("openai", "qwen", {"temperature": 0})
    assert review.to_capability().input_schema == {"type": "string", "maxLength": 100}
    assert "review" in presets.table(ps) and "shipped" in presets.table(ps)


@pytest.mark.parametrize("text, message", [
    ('[a]\nkind = "gpt"\ncapability = "x"\n', "kind must be one of"),
    ('[a]\nkind = "openai"\n', "capability (the name it serves) is missing"),
    ('[a]\nkind = "openai"\ncapability = "x"\nmodle = "y"\n', "unknown key(s) modle"),
    ('[a]\nextends = "b"\n[b]\nextends = "a"\n', "extends loops"),
    ('[a]\nextends = "zzz"\n', "extends names no preset 'zzz'"),
    ('[a]\nkind = "openai"\ncapability = "x"\ntimeout = -1\n', "timeout must be a positive number"),
    ('[a]\nkind = "openai"\ncapability = "x"\ninput_schema = {type = "string", format2 = 1}\n', "'format2'"),
    ('a = 1\n', "must be a table"),
    ('[a\n', "not valid TOML"),
])
def test_bad_preset_files_say_where(tmp_path, text, message):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(PresetError, match=__import__("re").escape(message)) as info:
        presets.load([f], include_user=False)
    assert str(f) in str(info.value)


def test_unset_variable_without_default_is_an_error():
    p = builtin("openai", model="${ZMQAGENTS_TEST_UNSET_MODEL}")
    with pytest.raises(PresetError, match=r"model reads \$\{ZMQAGENTS_TEST_UNSET_MODEL\}, which is not set"):
        p.agent(env={})
