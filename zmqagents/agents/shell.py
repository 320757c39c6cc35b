"""Run a shell command per request (``run_command``) or per task (``ShellAgent``).

The command runs in its own process group so a timeout kills everything it
started (pipelines, children), not just the shell. Output is bounded so a
command that floods stdout cannot exhaust the node's memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import dataclass
from typing import Any, Sequence

from .base import AgentError, TaskContext, effective_timeout
from ..errors import Error, InvalidArgument

MAX_OUTPUT = 1 << 20  # bytes of stdout kept (a reply must fit in one envelope)
STDERR_TAIL = 2000  # characters of stderr reported when a command fails


class CommandFailed(Error):
    """The command exited non-zero, was killed, or timed out. ``str()`` says which, with stderr's tail."""


@dataclass(slots=True)
class CommandResult:
    stdout: bytes
    stderr: bytes
    returncode: int


def encode_input(body: Any) -> bytes:
    """Strings go to the command as they are (plus a newline); anything else as one JSON line."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode() if body.endswith("\n") else (body + "\n").encode()
    return (json.dumps(body, ensure_ascii=False) + "\n").encode()


def decode_output(stdout: bytes) -> Any:
    """A reply: the parsed JSON if stdout is one JSON value, otherwise the text without its final newline."""
    text = stdout.decode("utf-8", errors="replace")
    stripped = text.strip()
    if stripped:
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return text[:-1] if text.endswith("\n") else text


async def run_command(command: str, stdin: bytes, *, timeout: float, env: dict[str, str] | None = None) -> CommandResult:
    """Run ``sh -c command``; raise CommandFailed on non-zero exit, signal, or timeout."""
    proc = await spawn(command, {**os.environ, **(env or {})})
    try:
        stdout, stderr = await asyncio.wait_for(_communicate(proc, stdin), timeout)
    except asyncio.TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise CommandFailed(f"command timed out after {timeout:g} s and was killed") from None
    except BaseException:
        _kill_group(proc)
        await proc.wait()
        raise
    code = proc.returncode
    if code != 0:
        tail = stderr.decode("utf-8", errors="replace")[-STDERR_TAIL:].strip()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise CommandFailed(f"command {how}" + (f": {tail}" if tail else ""))
    return CommandResult(stdout, stderr, code)


async def _communicate(proc: asyncio.subprocess.Process, stdin: bytes) -> tuple[bytes, bytes]:
    async def feed() -> None:
        # A command may exit without reading its input; that is its business, not an error.
        # asyncio reports it as a broken pipe, or as RuntimeError once the pipe transport is closed.
        try:
            if not proc.stdin.is_closing():
                proc.stdin.write(stdin)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass
        finally:
            proc.stdin.close()

    async def read(stream: asyncio.StreamReader, limit: int) -> bytes:
        chunks, size = [], 0
        while chunk := await stream.read(65536):
            if size < limit:
                chunks.append(chunk[: limit - size])
            size += len(chunk)  # keep draining so the command never blocks on a full pipe
        if size > limit:
            raise CommandFailed(f"command wrote {size} bytes, more than the {limit}-byte limit")
        return b"".join(chunks)

    _, out, err = await asyncio.gather(feed(), read(proc.stdout, MAX_OUTPUT), read(proc.stderr, MAX_OUTPUT))
    await proc.wait()
    return out, err


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


MAX_CHUNKS = 10_000  # stdout lines streamed as progress per task; later lines only reach the final output
MAX_LINE = 64 * 1024  # longer lines are streamed in pieces of this size
ASK_KEY = "input_required"  # with ask=True, a stdout line {"input_required": PROMPT} asks the caller


def ask_prompt(line: bytes) -> tuple[bool, Any]:
    """(True, PROMPT) if ``line`` is exactly a JSON object ``{"input_required": PROMPT}``, else (False, None)."""
    text = line.strip()
    if not text.startswith(b"{") or ASK_KEY.encode() not in text:
        return False, None
    try:
        obj = json.loads(text)
    except ValueError:
        return False, None
    if isinstance(obj, dict) and len(obj) == 1 and ASK_KEY in obj:
        return True, obj[ASK_KEY]
    return False, None


def answer_line(answer: Any) -> bytes:
    """The caller's answer as the one JSON line an asking command reads (AgentError if it is not JSON)."""
    try:
        return (json.dumps(answer, ensure_ascii=False, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise AgentError(f"the caller's answer cannot be given to the command as JSON ({exc})") from None


class ShellAgent:
    """A shell command as a task agent.

    Per task it runs ``sh -c command`` in its own process group with the task input on stdin
    (one JSON line; with ``stdin="text"`` a string input goes as it is). Each stdout line is
    streamed as a progress chunk while the command runs. The output is stdout as one JSON
    object when it parses as one, else stdout as text (final newline removed). A non-zero exit
    or death by signal fails the task with the tail of stderr; a timeout (``timeout`` or the
    task's deadline, whichever is sooner) or a cancel kills the whole process group. stdout and
    stderr are bounded (``max_output`` bytes each): a command that floods them is killed and the
    task fails. The command's environment gets ZMQAGENTS_TASK_ID, ZMQAGENTS_CAPABILITY and
    ZMQAGENTS_FROM (the caller's node id).

    With ``ask=True`` the command may ask its caller for more input mid-task: a stdout line that
    is exactly the JSON object ``{"input_required": PROMPT}`` (at most 64 KiB) puts the task in
    input-required with PROMPT, and the caller's answer is written to the command's stdin as one
    JSON line. stdin then stays open after the input line until the command exits, so the command
    reads its input as the first line (``read -r input``), not up to end of file, and each answer as
    the next line. Such lines are neither progress nor part of the output. The timeout covers the
    time spent waiting for answers. Without ``ask`` those lines are ordinary output, and stdin
    ends after the input as before.
    """

    def __init__(self, command: str, *, timeout: float | None = 300.0, stdin: str = "json",
                 env: dict[str, str] | None = None, max_output: int = MAX_OUTPUT, cwd: str | None = None,
                 ask: bool = False):
        if stdin not in ("json", "text"):
            raise InvalidArgument('stdin must be "json" or "text"')
        if ask and stdin != "json":
            raise InvalidArgument('ask=True needs stdin="json": the input and each answer are one JSON line each')
        self.ask = ask
        self.command = command
        self.timeout = timeout
        self.stdin = stdin
        self.env = dict(env or {})
        self.max_output = max_output
        self.cwd = cwd

    def __repr__(self) -> str:
        return f"ShellAgent({self.command!r})"

    def _input_bytes(self, value: Any) -> bytes:
        if self.stdin == "text":
            return encode_input(value)
        return (json.dumps(value, ensure_ascii=False) + "\n").encode()

    async def __call__(self, value: Any, ctx: TaskContext) -> Any:
        env = {**os.environ, **self.env, "ZMQAGENTS_TASK_ID": ctx.task_id, "ZMQAGENTS_CAPABILITY": ctx.capability,
               "ZMQAGENTS_FROM": ctx.caller}
        proc = await spawn(self.command, env, self.cwd)
        limit = effective_timeout(self.timeout, ctx.timeout)
        try:
            out, err = await asyncio.wait_for(self._talk(proc, self._input_bytes(value), ctx), limit)
        except asyncio.TimeoutError:
            raise AgentError(f"command timed out after {limit:g} s; its process group was killed") from None
        finally:
            if proc.returncode is None:  # timed out, flooded or canceled while it runs
                await reap(proc)
        code = proc.returncode
        if code != 0:
            tail = err.decode("utf-8", errors="replace")[-STDERR_TAIL:].strip()
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise AgentError(f"command {how}" + (f": {tail}" if tail else ""))
        text = out.decode("utf-8", errors="replace")
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                parsed = json.loads(stripped)
                if isinstance(parsed, dict):
                    return parsed
            except ValueError:
                pass
        return text[:-1] if text.endswith("\n") else text

    async def _talk(self, proc: asyncio.subprocess.Process, data: bytes, ctx: TaskContext) -> tuple[bytes, bytes]:
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()  # ask mode: lines for stdin after the input

        async def feed() -> None:
            # The only writer of stdin: the input, then (ask mode) each answer, until stdout ends.
            try:
                item: bytes | None = data
                while item is not None:
                    if not proc.stdin.is_closing():
                        proc.stdin.write(item)
                        await proc.stdin.drain()
                    item = await answers.get() if self.ask else None
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass  # the command need not read its input (or an answer, once it exited)
            finally:
                proc.stdin.close()

        async def stream_stdout() -> bytes:
            kept, size, pending, chunks = [], 0, b"", 0
            try:
                while block := await proc.stdout.read(65536):
                    size += len(block)
                    if size > self.max_output:
                        raise AgentError(f"command wrote more than {self.max_output} bytes to stdout; it was killed")
                    pending += block
                    *lines, pending = pending.split(b"\n")
                    pieces = []
                    while len(pending) >= MAX_LINE:
                        pieces.append(pending[:MAX_LINE])
                        pending = pending[MAX_LINE:]
                    for line in lines:
                        asked, prompt = ask_prompt(line) if self.ask else (False, None)
                        if asked:  # stdout waits (unread) while the caller answers
                            answers.put_nowait(answer_line(await ctx.ask(prompt)))
                            continue
                        kept.append(line + b"\n")
                        if chunks < MAX_CHUNKS:
                            chunks += 1
                            ctx.progress(line.decode("utf-8", errors="replace"))
                    for piece in pieces:
                        kept.append(piece)
                        if chunks < MAX_CHUNKS:
                            chunks += 1
                            ctx.progress(piece.decode("utf-8", errors="replace"))
            finally:
                answers.put_nowait(None)  # stdout ended (or we stop): nothing more goes to stdin
            if pending:
                kept.append(pending)
                if chunks < MAX_CHUNKS:
                    ctx.progress(pending.decode("utf-8", errors="replace"))
            return b"".join(kept)

        async def keep_stderr() -> bytes:
            tail, size = b"", 0
            while block := await proc.stderr.read(65536):
                size += len(block)
                if size > self.max_output:
                    raise AgentError(f"command wrote more than {self.max_output} bytes to stderr; it was killed")
                tail = (tail + block)[-STDERR_TAIL * 4:]
            return tail

        parts = [asyncio.ensure_future(f) for f in (feed(), stream_stdout(), keep_stderr())]
        try:
            _, out, err = await asyncio.gather(*parts)
        except BaseException:
            for part in parts:  # a flood, a timeout or a cancel: stop reading; the caller kills the group
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            raise
        await proc.wait()
        return out, err


async def reap(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Kill the command's process group and wait for it.

    The pipes are drained to their end: asyncio (3.11) reports the exit only once every pipe is
    closed, and a pipe nobody reads stays paused and never sees its end.
    """
    _kill_group(proc)

    async def drain(stream: asyncio.StreamReader | None) -> None:
        if stream is not None:
            while await stream.read(65536):
                pass

    try:
        await asyncio.wait_for(asyncio.gather(drain(proc.stdout), drain(proc.stderr), proc.wait()), grace)
    except asyncio.TimeoutError:
        # Something outside the group (it called setsid) holds the pipes open; the command is dead.
        pass


async def spawn(command: str | Sequence[str], env: dict[str, str], cwd: str | None = None) -> asyncio.subprocess.Process:
    """``sh -c command`` (a string) or the program and its arguments (a list, no shell) in a new
    session (its own process group), pipes on stdin/stdout/stderr. Kill it with :func:`reap`.

    A cancel that lands while the process is being created would otherwise leave it running
    with nobody holding it: the spawn finishes under a shield, then the group is killed.
    """
    pipes = dict(stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                 start_new_session=True, env=env, cwd=cwd)
    starting = asyncio.ensure_future(asyncio.create_subprocess_shell(command, **pipes) if isinstance(command, str)
                                     else asyncio.create_subprocess_exec(*command, **pipes))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        try:
            proc = await starting
        except Exception:
            raise asyncio.CancelledError from None
        await reap(proc)
        raise
