"""Run a shell command as a request handler: body on stdin, stdout is the reply.

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
from typing import Any

MAX_OUTPUT = 1 << 20  # bytes of stdout kept (a reply must fit in one envelope)
STDERR_TAIL = 2000  # characters of stderr reported when a command fails


class CommandFailed(Exception):
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
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
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
