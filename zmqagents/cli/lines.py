"""JSON lines in, result lines out: how every command that reads stdin behaves in a pipe.

* stdin is read without a thread when it is a pipe or a terminal, so a signal never waits for a
  line that may never come (a thread blocked in ``read`` would hold up the interpreter's exit);
  files and /dev/null, which never block for long, are read in a thread.
* A terminal on stdin gets a one-line hint on stderr (the command is waiting for input).
* :func:`run_lines` keeps at most ``parallel`` lines in flight, in input order or as they finish;
  on a signal or a closed stdout it cancels what is in flight and, for a signal, prints a
  ``canceled`` result for every line that had started and has no result yet.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
import sys
from typing import Any, AsyncIterator, Awaitable, Callable

import click

from .common import StdoutClosed

MAX_LINE = 64 << 20  # bytes in one input line; a longer line is reported and skipped
REORDER = 1024  # results that finished before an earlier line's may wait this many lines to be printed

BAD = object()  # stands for an input line that is not a JSON value (already reported on stderr)

Line = tuple[int, Any]


def terminal_hint(what: str = "one JSON value per line") -> None:
    """Say on stderr that the command waits for input when stdin is a terminal (nothing is typed yet)."""
    if sys.stdin.isatty():
        click.echo(f"reading {what} from the terminal; end with Ctrl-D (or pass BODY)", err=True)


async def read_lines() -> AsyncIterator[bytes]:
    """Yield stdin lines (with their newline) until end of file, without blocking the event loop."""
    fd = sys.stdin.fileno()
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd)):
        async for line in _read_stream(fd):
            yield line
        return
    loop = asyncio.get_running_loop()
    reader = sys.stdin.buffer
    while line := await loop.run_in_executor(None, reader.readline):
        yield line


async def _read_stream(fd: int) -> AsyncIterator[bytes]:
    """Lines from a pipe, socket or terminal through the event loop. The loop makes the file
    description non-blocking, which a terminal shares with the shell: the flags are put back."""
    loop = asyncio.get_running_loop()
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than MAX_LINE: readline dropped it
                yield b"\0"  # not JSON: reported as a bad line, so the numbering stays right
                continue
            if not line:
                return
            yield line
    finally:
        transport.close()
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


async def stdin_values() -> AsyncIterator[Line]:
    """Yield (line number, JSON value) for each stdin line; a bad line is reported on stderr and yields BAD."""
    number = 0
    async for line in read_lines():
        number += 1
        yield number, parse_line(line, number)


def parse_line(line: bytes, number: int) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        click.echo(f"line {number}: not UTF-8; skipped", err=True)
        return BAD
    if not text.strip():
        click.echo(f"line {number}: empty; skipped", err=True)
        return BAD
    try:
        return json.loads(text)
    except ValueError as exc:
        click.echo(f"line {number}: invalid JSON ({exc}); skipped", err=True)
        return BAD


async def run_lines(values: AsyncIterator[Line], one: Callable[[int, Any], Awaitable[dict]], parallel: int, *,
                    ordered: bool, show: Callable[[dict], None], canceled: Callable[[int], dict]) -> None:
    """Run ``one(number, value)`` for each line with at most ``parallel`` running at once, and
    ``show`` each result: in input order (``ordered``) or as they finish.

    A slot is freed when its line finishes, not when it is printed, so one slow line does not
    stall the others; finished results then wait for it, at most ``parallel + REORDER`` lines
    started and not printed (a bound on memory). On cancellation (a signal) every running line
    is canceled and ``show(canceled(number))`` reports each started line that has no result yet,
    in input order; then the cancellation goes on. If ``show`` finds stdout closed, the running
    lines are canceled and StdoutClosed goes on.
    """
    running = asyncio.Semaphore(parallel)
    window = asyncio.Semaphore(parallel + REORDER)
    started: dict[int, asyncio.Future] = {}  # line number -> its run, until its result is shown
    results: asyncio.Queue = asyncio.Queue()  # (number, run) in start order, or finish order; None ends

    async def run_one(number: int, value: Any) -> dict:
        try:
            return await one(number, value)
        finally:
            running.release()

    async def feed() -> None:
        async for number, value in values:
            await window.acquire()
            await running.acquire()
            run = asyncio.ensure_future(run_one(number, value))
            started[number] = run
            if ordered:
                results.put_nowait((number, run))
            else:
                run.add_done_callback(lambda run, number=number: results.put_nowait((number, run)))
        if started:
            await asyncio.wait(list(started.values()))  # (the done callbacks above run before this returns)
        results.put_nowait(None)

    async def printer() -> None:
        while (item := await results.get()) is not None:
            number, run = item
            result = await run
            show(result)
            del started[number]
            window.release()

    feeding = asyncio.ensure_future(feed())
    printing = asyncio.ensure_future(printer())
    try:
        await asyncio.wait({feeding, printing}, return_when=asyncio.FIRST_EXCEPTION)
        for step in (feeding, printing):
            if step.done():
                step.result()
        await printing
    except BaseException as exc:
        for step in (feeding, printing, *started.values()):
            step.cancel()
        await asyncio.gather(feeding, printing, *started.values(), return_exceptions=True)
        if isinstance(exc, asyncio.CancelledError):
            try:
                for number in sorted(started):  # a line that finished still shows its own result
                    run = started[number]
                    finished = run.done() and not run.cancelled() and run.exception() is None
                    show(run.result() if finished else canceled(number))
            except StdoutClosed:
                pass
        raise
