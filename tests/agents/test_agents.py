"""Agent adapters: ShellAgent on real processes; the HTTP LLM agents against a local server speaking their APIs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import pytest

from zmqagents.agents.base import AgentError, TaskContext
from zmqagents.agents.llm import AnthropicAgent, OpenAIChatAgent
from zmqagents.agents.shell import ShellAgent

pytestmark = pytest.mark.timeout(30)


def ctx(chunks: list | None = None, **kw) -> TaskContext:
    sink = chunks if chunks is not None else []
    return TaskContext(task_id=kw.pop("task_id", "ab" * 16), capability=kw.pop("capability", "cap"),
                       caller=kw.pop("caller", "cd" * 32), progress=sink.append, **kw)


def run(coro):
    return asyncio.run(coro)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_dead(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


# -- ShellAgent --------------------------------------------------------------------------------------


def test_shell_json_in_json_object_out():
    assert run(ShellAgent("cat")({"a": [1, "x"]}, ctx())) == {"a": [1, "x"]}


def test_shell_stdout_lines_stream_as_progress_and_text_is_the_output():
    chunks: list = []
    out = run(ShellAgent("printf 'one\\ntwo\\nthree'")(None, ctx(chunks)))
    assert chunks == ["one", "two", "three"] and out == "one\ntwo\nthree"
    chunks.clear()
    assert run(ShellAgent("echo 42")(None, ctx(chunks))) == "42"  # only an object is parsed as JSON
    assert chunks == ["42"]


def test_shell_text_stdin_and_environment():
    agent = ShellAgent('tr a-z A-Z; echo "$ZMQAGENTS_TASK_ID $ZMQAGENTS_CAPABILITY $ZMQAGENTS_FROM"', stdin="text")
    out = run(agent("hello", ctx(task_id="t1", capability="upper", caller="c1")))
    assert out == "HELLO\nt1 upper c1"


def test_shell_non_zero_exit_fails_with_the_stderr_tail():
    agent = ShellAgent("echo partial; echo 'line one' >&2; echo 'it broke' >&2; exit 3")
    with pytest.raises(AgentError, match=r"exited with status 3: line one\nit broke$"):
        run(agent(None, ctx()))


def test_shell_death_by_signal_is_reported():
    with pytest.raises(AgentError, match="killed by signal 9"):
        run(ShellAgent("kill -9 $$")(None, ctx()))


def test_shell_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    agent = ShellAgent(f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.5)
    start = time.monotonic()
    with pytest.raises(AgentError, match="timed out after 0.5 s"):
        run(agent(None, ctx()))
    assert time.monotonic() - start < 3
    assert wait_dead(int(pidfile.read_text()))


def test_shell_task_deadline_is_a_timeout_too():
    with pytest.raises(AgentError, match="timed out after 0.3 s"):
        run(ShellAgent("sleep 5", timeout=60)(None, ctx(timeout=0.3)))


def test_shell_cancel_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"

    async def main():
        task = asyncio.ensure_future(ShellAgent(f"sleep 30 & echo $! > {pidfile}; wait")(None, ctx()))
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert wait_dead(int(pidfile.read_text()))


def test_shell_flood_is_killed_and_bounded():
    chunks: list = []
    with pytest.raises(AgentError, match="more than 100000 bytes to stdout"):
        run(ShellAgent("yes", max_output=100_000)(None, ctx(chunks)))
    assert 0 < len(chunks) <= 100_000 // 2


def test_shell_long_lines_stream_in_pieces_and_a_command_may_ignore_stdin():
    chunks: list = []
    out = run(ShellAgent("head -c 150000 /dev/zero | tr '\\0' x")("x" * 200_000, ctx(chunks)))
    assert [len(c) for c in chunks] == [65536, 65536, 150000 - 2 * 65536] and len(out) == 150000


# an asking command: reads its input as the first stdin line, asks twice, answers on the next lines
ASKER = """read -r input
echo "start $input"
echo '{"input_required": {"q": "name?"}}'
read -r name
echo '{"input_required": "age?"}'
read -r age
echo "hello $name, $age"
"""


def answering(answers: list, asked: list):
    async def ask(prompt):
        asked.append(prompt)
        return answers.pop(0)
    return ask


def test_shell_ask_puts_questions_to_the_caller_and_answers_arrive_on_stdin():
    chunks: list = []
    asked: list = []
    out = run(ShellAgent(ASKER, ask=True)({"n": 1}, ctx(chunks, ask=answering(["Ann", 42], asked))))
    assert asked == [{"q": "name?"}, "age?"]
    assert out == 'start {"n": 1}\nhello "Ann", 42'  # the ask lines are neither output nor progress
    assert chunks == ['start {"n": 1}', 'hello "Ann", 42']


def test_shell_ask_lines_are_plain_output_without_ask_mode_and_stdin_still_ends():
    agent = ShellAgent("""cat >/dev/null; echo '{"input_required": "x?"}'""")
    assert run(agent(1, ctx(ask=answering([], [])))) == {"input_required": "x?"}
    near_misses = """echo '{"input_required": "x", "more": 1}'; echo '{"input_required"'; echo '["input_required"]'"""
    chunks: list = []
    run(ShellAgent(near_misses, ask=True)(1, ctx(chunks, ask=answering([], []))))
    assert len(chunks) == 3  # not exactly {"input_required": PROMPT}: ordinary lines


def test_shell_ask_errors_are_clear():
    with pytest.raises(ValueError, match='ask=True needs stdin="json"'):
        ShellAgent("cat", ask=True, stdin="text")
    with pytest.raises(AgentError, match="cannot ask its caller"):  # no runtime behind the context
        run(ShellAgent(ASKER, ask=True)(1, ctx()))
    with pytest.raises(AgentError, match="cannot be given to the command as JSON"):
        run(ShellAgent(ASKER, ask=True)(1, ctx(ask=answering([b"\xff bytes"], []))))


def test_shell_timeout_while_waiting_for_an_answer_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"

    async def never(prompt):
        await asyncio.sleep(60)

    agent = ShellAgent(f"""sleep 30 & echo $! > {pidfile}; echo '{{"input_required": "?"}}'; read -r a; wait""",
                       ask=True, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(AgentError, match="timed out after 0.5 s"):
        run(agent(None, ctx(ask=never)))
    assert time.monotonic() - start < 3
    assert wait_dead(int(pidfile.read_text()))


def test_shell_ask_mode_keeps_the_flood_bound():
    async def ok(prompt):
        return "go"

    with pytest.raises(AgentError, match="more than 100000 bytes to stdout"):
        run(ShellAgent("""echo '{"input_required": 1}'; read -r a; yes""", ask=True, max_output=100_000)(None, ctx(ask=ok)))


# -- a local server speaking the chat completions and Messages APIs -------------------------------------


class FakeLLM:
    """An HTTP/1.1 server on 127.0.0.1 that answers like the OpenAI and Anthropic streaming APIs.

    The request's ``model`` picks the behaviour: "ok", "chunked" (Transfer-Encoding: chunked),
    "slow" (0.2 s between events), "hang" (headers, one event, then nothing), "cut" (the stream
    stops before its end marker), "e500"/"e401"/"e429" (an error status with a JSON error),
    "inband" (an error event inside the stream).
    """

    WORDS = ["Hello", ",", " world", "!"]

    def __init__(self):
        self.requests: list[dict] = []
        self.server: asyncio.AbstractServer | None = None
        self.url = ""
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc):
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            request_line = (await reader.readline()).decode()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            method, path, _ = request_line.split(" ", 2)
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            anthropic = path.endswith("/messages")
            await self._answer(writer, body["model"], anthropic)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _events(self, anthropic: bool, model: str) -> list[str]:
        if anthropic:
            ev = [("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": f"claude-{model}",
                                                                         "usage": {"input_tokens": 7, "output_tokens": 0}}}),
                  ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                  ("ping", {"type": "ping"})]
            ev += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": w}}) for w in self.WORDS]
            if model == "inband":
                ev.insert(4, ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            ev += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
                   ("message_stop", {"type": "message_stop"})]
            return [f"event: {name}\ndata: {json.dumps(doc)}\n\n" for name, doc in ev]
        ev = [{"id": "c1", "model": f"gpt-{model}", "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
        ev += [{"id": "c1", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in self.WORDS]
        if model == "inband":
            ev.insert(2, {"error": {"message": "model crashed"}})
        ev += [{"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
        return [": keep-alive\n\n"] + [f"data: {json.dumps(doc)}\n\n" for doc in ev] + ["data: [DONE]\n\n"]

    async def _answer(self, writer: asyncio.StreamWriter, model: str, anthropic: bool) -> None:
        if model.startswith("e"):
            status = int(model[1:])
            doc = {"error": {"message": f"failure {status} for key {self.requests[-1]['headers'].get('authorization', '')}"
                                        f"{self.requests[-1]['headers'].get('x-api-key', '')}"}}
            body = json.dumps(doc).encode()
            writer.write(f"HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            return
        events = self._events(anthropic, model)
        chunked = model == "chunked"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     + (b"Transfer-Encoding: chunked\r\n" if chunked else b"") + b"\r\n")
        if model == "hang":
            writer.write(events[0].encode())
            await writer.drain()
            await asyncio.sleep(3600)
        if model == "cut":
            events = events[:3]
        for text in events:
            data = text.encode()
            if chunked:  # split each event across two chunks to exercise de-chunking
                half = len(data) // 2
                for part in (data[:half], data[half:]):
                    writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            else:
                writer.write(data)
            await writer.drain()
            if model == "slow":
                await asyncio.sleep(0.2)
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()


@pytest.fixture
def secret(monkeypatch):
    value = "sk-test-" + os.urandom(8).hex()
    monkeypatch.setenv("TEST_LLM_KEY", value)
    return value


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("model", ["ok", "chunked", "slow"])
def test_llm_stream(kind, model, secret):
    async def main():
        async with FakeLLM() as srv:
            if kind == "openai":
                agent = OpenAIChatAgent(model, base_url=srv.url + "/v1", api_key_env="TEST_LLM_KEY",
                                        options={"temperature": 0}, idle_timeout=2)
            else:
                agent = AnthropicAgent(model, base_url=srv.url, api_key_env="TEST_LLM_KEY", max_tokens=50, idle_timeout=2)
            chunks: list = []
            out = await agent({"system": "Be brief.", "prompt": "Say hello"}, ctx(chunks))
            return out, chunks, srv.requests

    out, chunks, requests = run(main())
    assert chunks == FakeLLM.WORDS and out["text"] == "Hello, world!"
    (req,) = requests
    assert req["method"] == "POST"
    if kind == "openai":
        assert req["path"] == "/v1/chat/completions" and req["headers"]["authorization"] == f"Bearer {secret}"
        assert req["body"] == {"temperature": 0, "model": model, "stream": True, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]}
        assert out["model"] == f"gpt-{model}" and out["stop"] == "stop"
    else:
        assert req["path"] == "/v1/messages" and req["headers"]["x-api-key"] == secret
        assert req["headers"]["anthropic-version"] == "2023-06-01"
        assert req["body"] == {"max_tokens": 50, "model": model, "stream": True, "system": "Be brief.",
                               "messages": [{"role": "user", "content": "Say hello"}]}
        assert out["model"] == f"claude-{model}" and out["stop"] == "end_turn"
        assert out["usage"] == {"input_tokens": 7, "output_tokens": 4}


def make(kind: str, model: str, url: str, **kw):
    kw.update(retries=1, backoff=0.01)  # 429 and 5xx are tried twice, quickly (tests/agents/test_presets.py: retries)
    if kind == "openai":
        return OpenAIChatAgent(model, base_url=url + "/v1", api_key_env="TEST_LLM_KEY", **kw)
    return AnthropicAgent(model, base_url=url, api_key_env="TEST_LLM_KEY", **kw)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("model, message", [
    ("e500", "answered HTTP 500: failure 500"),
    ("e401", "answered HTTP 401: failure 401"),
    ("e429", "answered HTTP 429: failure 429"),
    ("cut", "the stream ended before"),
    ("inband", "error: (model crashed|Overloaded)"),
    ("hang", r"sent nothing for 0.5 s \(idle timeout\)"),
])
def test_llm_errors_are_clear_and_never_show_the_key(kind, model, message, secret, caplog):
    caplog.set_level(logging.DEBUG)

    async def main():
        async with FakeLLM() as srv:
            agent = make(kind, model, srv.url, idle_timeout=0.5)
            start = time.monotonic()
            with pytest.raises(AgentError) as info:
                await agent("hi", ctx())
            return info.value, time.monotonic() - start, agent

    err, took, agent = run(main())
    assert __import__("re").search(message, str(err))
    assert secret not in str(err) and secret not in caplog.text and secret not in repr(agent)
    if model.startswith("e"):
        assert "***" in str(err)  # the server echoed the key: scrubbed
    assert took < 5


def test_llm_overall_timeout_and_cancel_close_the_connection():
    async def main():
        async with FakeLLM() as srv:
            agent = OpenAIChatAgent("slow", base_url=srv.url, api_key_env=None, idle_timeout=5)
            with pytest.raises(AgentError, match="did not finish within 0.3 s"):
                await agent("hi", ctx(timeout=0.3))
            task = asyncio.ensure_future(OpenAIChatAgent("hang", base_url=srv.url, api_key_env=None)("hi", ctx()))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert "authorization" not in srv.requests[0]["headers"]  # no key configured: no header

    run(main())


def test_llm_connection_refused_and_bad_url():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(AgentError, match=r"could not connect to 127.0.0.1.* \(3 attempts\)"):
            await OpenAIChatAgent("m", base_url=f"http://127.0.0.1:{port}", api_key_env=None, retries=2,
                                  backoff=0.01)("hi", ctx())
        with pytest.raises(AgentError, match="must be http"):
            await OpenAIChatAgent("m", base_url="ftp://x", api_key_env=None)("hi", ctx())

    run(main())


@pytest.mark.parametrize("value, expected", [
    ("hi", [{"role": "user", "content": "hi"}]),
    ({"text": "t"}, [{"role": "user", "content": "t"}]),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
    ({"n": 1}, [{"role": "user", "content": '{"n": 1}'}]),
])
def test_llm_input_shapes(value, expected):
    from zmqagents.agents.llm import _messages
    assert _messages(value)[1] == expected


@pytest.mark.parametrize("value", [{"messages": []}, {"messages": [{"role": "user"}]}, {"system": 3, "text": "x"}])
def test_llm_bad_input_shapes(value):
    from zmqagents.agents.llm import _messages
    with pytest.raises(AgentError):
        _messages(value)
