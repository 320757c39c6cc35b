"""Coding agents driven through their command-line tools: Claude Code and Codex.

Both tools run one task non-interactively and report what they do as JSON lines on stdout:

* Claude Code in print mode, ``claude -p --output-format stream-json --verbose``: the prompt on
  stdin; lines of ``type`` ``system`` (init), ``assistant`` (a message whose ``content`` holds
  ``text`` and ``tool_use`` blocks), ``user`` (tool results) and, last, ``result`` (``subtype``,
  ``is_error``, ``result`` text, ``session_id``, ``total_cost_usd``, ``usage``, ``num_turns``).
* Codex, ``codex exec --json -`` (``-``: the prompt on stdin): ``thread.started``,
  ``turn.started``, ``item.started``/``item.updated``/``item.completed`` (items of type
  ``agent_message``, ``reasoning``, ``command_execution``, ``file_change``, ...), then
  ``turn.completed`` (``usage``) or ``turn.failed`` (``error.message``); ``error`` for a stream
  failure.

:class:`JsonLinesAgent` runs such a tool per task (no shell: the program and its arguments, in its
own process group, killed with the group on timeout or cancel), feeds each stdout line to the
tool's reader, streams what the reader makes of it as task progress (text as strings, tool activity
as small objects), and returns the reader's result: ``{"text", ...}``. A line that is not JSON is
ignored (tools print banners); a line over :data:`MAX_EVENT_LINE` bytes is skipped (a tool result
echoing a large file), never held whole. A non-zero exit, or a stream that ends without its
final event, fails the task with the tool's own error message or the tail of its stderr.

What the tools may do on the machine (edit files, run commands) is theirs to configure: the
presets pass no permission flags, so Claude Code asks and is refused in print mode, and Codex runs
in its default read-only sandbox. Add flags with ``args`` (a preset file, or ``--arg``).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Sequence

from .base import AgentError, TaskContext, effective_timeout
from .shell import MAX_CHUNKS, STDERR_TAIL, reap, spawn
from ..errors import InvalidArgument

MAX_EVENT_LINE = 4 << 20  # bytes of one JSON line kept for parsing; longer ones are skipped
MAX_TEXT = 900 * 1024  # characters of the final text: it must fit a task result
MAX_SHOWN = 2000  # characters of a tool's input or command shown in a progress chunk


def prompt_of(value: Any) -> str:
    """The prompt a task input stands for: a string, an object's ``prompt`` or ``text``, else its JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("prompt", "text"):
            if isinstance(value.get(key), str):
                return value[key]
    return json.dumps(value, ensure_ascii=False)


def _short(value: Any) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


class ClaudeCodeEvents:
    """Reads Claude Code's stream-json lines: progress out of assistant messages, the output out of
    the result line."""

    tool = "claude"

    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None
        self.error: str | None = None
        self.model: str | None = None

    def feed(self, event: dict) -> list[Any]:
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init" and isinstance(event.get("model"), str):
            self.model = event["model"]
        elif kind == "assistant":
            message = event.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            chunks: list[Any] = []
            for block in content if isinstance(content, list) else ():
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
                    chunks.append(block["text"])
                elif block.get("type") == "tool_use":
                    chunks.append({"event": "tool_use", "name": str(block.get("name", "?")),
                                   "input": _short(block.get("input"))})
            return chunks
        elif kind == "result":
            text = event.get("result")
            if event.get("is_error") or event.get("subtype") not in (None, "success"):
                self.error = f"Claude Code reported {event.get('subtype') or 'an error'}" + (
                    f": {text[:500]}" if isinstance(text, str) and text else "")
                return []
            if not isinstance(text, str):
                self.error = "Claude Code's result line carries no result text"
                return []
            if len(text) > MAX_TEXT:
                self.error = f"Claude Code's result is longer than {MAX_TEXT} characters"
                return []
            self.final = {"text": text}
            for ours, theirs in (("session_id", "session_id"), ("cost_usd", "total_cost_usd"), ("usage", "usage"),
                                 ("turns", "num_turns"), ("duration_ms", "duration_ms")):
                if event.get(theirs) is not None:
                    self.final[ours] = event[theirs]
            if self.model:
                self.final["model"] = self.model
        return []

    def result(self) -> dict:
        if self.error:
            raise AgentError(self.error)
        if self.final is None:
            raise AgentError("Claude Code's output ended without a result line")
        return self.final


class CodexEvents:
    """Reads ``codex exec --json`` lines: agent messages as text progress, commands and file changes
    as tool progress; the output is the last agent message."""

    tool = "codex"

    def __init__(self) -> None:
        self.text: str | None = None
        self.thread: str | None = None
        self.usage: dict | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, event: dict) -> list[Any]:
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.thread = event["thread_id"]
        elif kind == "turn.completed":
            self.done = True
            if isinstance(event.get("usage"), dict):
                self.usage = event["usage"]
        elif kind == "turn.failed":
            err = event.get("error")
            self.error = "Codex: " + str(err.get("message") if isinstance(err, dict) else err)[:500]
        elif kind == "error":
            self.error = "Codex: " + str(event.get("message", "error"))[:500]
        elif kind in ("item.started", "item.completed"):
            item = event.get("item")
            if not isinstance(item, dict):
                return []
            itype = item.get("type")
            if kind == "item.completed" and itype == "agent_message" and isinstance(item.get("text"), str):
                if len(item["text"]) > MAX_TEXT:
                    self.error = f"Codex wrote a message longer than {MAX_TEXT} characters"
                    return []
                self.text = item["text"]
                return [item["text"]]
            if kind == "item.started" and itype == "command_execution":
                return [{"event": "command", "command": _short(item.get("command"))}]
            if kind == "item.completed" and itype == "command_execution":
                return [{"event": "command_done", "command": _short(item.get("command")),
                         "exit_code": item.get("exit_code")}]
            if kind == "item.completed" and itype == "file_change":
                return [{"event": "file_change", "changes": _short(item.get("changes"))}]
        return []

    def result(self) -> dict:
        if self.error:
            raise AgentError(self.error)
        if not self.done:
            raise AgentError("Codex's output ended without turn.completed")
        out: dict[str, Any] = {"text": self.text or ""}
        if self.thread:
            out["thread_id"] = self.thread
        if self.usage:
            out["usage"] = self.usage
        return out


class JsonLinesAgent:
    """A command-line tool that takes the prompt on stdin and reports JSON lines, as a task agent."""

    def __init__(self, argv: Sequence[str], reader: type, *, timeout: float | None = 1800.0,
                 env: dict[str, str] | None = None, cwd: str | None = None):
        if not argv:
            raise InvalidArgument("argv names the program to run")
        self.argv = list(argv)
        self.reader = reader
        self.timeout = timeout
        self.env = dict(env or {})
        self.cwd = cwd

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.argv!r})"

    async def __call__(self, value: Any, ctx: TaskContext) -> Any:
        env = {**os.environ, **self.env, "ZMQAGENTS_TASK_ID": ctx.task_id, "ZMQAGENTS_CAPABILITY": ctx.capability,
               "ZMQAGENTS_FROM": ctx.caller}
        try:
            proc = await spawn(self.argv, env, self.cwd)
        except FileNotFoundError:
            raise AgentError(f"{self.argv[0]!r} was not found (is it installed and on PATH?)") from None
        except PermissionError:
            raise AgentError(f"{self.argv[0]!r} is not executable") from None
        limit = effective_timeout(self.timeout, ctx.timeout)
        reader = self.reader()
        try:
            err = await asyncio.wait_for(self._talk(proc, prompt_of(value), reader, ctx), limit)
        except asyncio.TimeoutError:
            raise AgentError(f"{self.argv[0]} did not finish within {limit:g} s; its process group was killed") from None
        finally:
            if proc.returncode is None:
                await reap(proc)
        if proc.returncode != 0:
            tail = err.decode("utf-8", errors="replace")[-STDERR_TAIL:].strip()
            how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with status {proc.returncode}"
            said = reader.error or tail
            raise AgentError(f"{self.argv[0]} {how}" + (f": {said}" if said else ""))
        return reader.result()

    async def _talk(self, proc: asyncio.subprocess.Process, prompt: str, reader, ctx: TaskContext) -> bytes:
        async def feed() -> None:
            try:
                proc.stdin.write(prompt.encode() + (b"" if prompt.endswith("\n") else b"\n"))
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass
            finally:
                proc.stdin.close()

        async def events() -> None:
            pending, skipping, chunks = b"", False, 0
            while block := await proc.stdout.read(65536):
                pending += block
                *lines, pending = pending.split(b"\n")
                if skipping and lines:
                    lines, skipping = lines[1:], False  # the rest of the oversize line
                for line in lines:
                    chunks = self._line(line, reader, ctx, chunks)
                if len(pending) > MAX_EVENT_LINE:
                    pending, skipping = b"", True
            if pending and not skipping:
                self._line(pending, reader, ctx, chunks)

        async def stderr_tail() -> bytes:
            tail = b""
            while block := await proc.stderr.read(65536):
                tail = (tail + block)[-STDERR_TAIL * 4:]
            return tail

        parts = [asyncio.ensure_future(f) for f in (feed(), events(), stderr_tail())]
        try:
            _, _, err = await asyncio.gather(*parts)
        except BaseException:
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            raise
        await proc.wait()
        return err

    @staticmethod
    def _line(line: bytes, reader, ctx: TaskContext, chunks: int) -> int:
        text = line.strip()
        if not text.startswith(b"{"):
            return chunks  # a banner or a blank line
        try:
            event = json.loads(text)
        except ValueError:
            return chunks
        if not isinstance(event, dict):
            return chunks
        for chunk in reader.feed(event):
            if chunks < MAX_CHUNKS:
                chunks += 1
                ctx.progress(chunk)
        return chunks


def claude_code(model: str | None = None, *, command: str = "claude", args: Sequence[str] = (),
                timeout: float | None = 1800.0, env: dict[str, str] | None = None, cwd: str | None = None) -> JsonLinesAgent:
    """Claude Code in print mode with streamed JSON output, one run per task."""
    argv = [command, "-p", "--output-format", "stream-json", "--verbose"]
    if model:
        argv += ["--model", model]
    return JsonLinesAgent(argv + list(args), ClaudeCodeEvents, timeout=timeout, env=env, cwd=cwd)


def codex(model: str | None = None, *, command: str = "codex", args: Sequence[str] = (),
          timeout: float | None = 1800.0, env: dict[str, str] | None = None, cwd: str | None = None) -> JsonLinesAgent:
    """``codex exec`` with JSON-lines output, the prompt on stdin, one run per task."""
    argv = [command, "exec", "--json"]
    if model:
        argv += ["--model", model]
    return JsonLinesAgent(argv + list(args) + ["-"], CodexEvents, timeout=timeout, env=env, cwd=cwd)
