"""How `zmqagents task` runs its lines: :class:`TaskRun` keeps --parallel tasks in flight on this
command's node, prints their results and picks the exit status. ``zmqagents collab`` and the sidecar
path (``sidecar_tasks.py``) subclass it, so all three share the pipeline, the signals and the statuses.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click

from .common import StdoutClosed, emit, jsonable, parse_body
from .exits import (
    EXIT_CANCELED, EXIT_NOT_FOUND, EXIT_OK, EXIT_REJECTED, EXIT_SOME_FAILED, EXIT_TIMEOUT, EXIT_UNREACHABLE,
)
from .lines import BAD, run_lines, stdin_values, terminal_hint


class TaskRun:
    """One `zmqagents task` invocation: reads lines, keeps --parallel tasks in flight, prints results.

    ``zmqagents collab`` runs its patterns through a subclass: it names the capabilities it needs
    (:meth:`capabilities`), runs one line in ``_one`` and counts each outcome with :meth:`record`, so
    both commands share the pipeline, the signals and the exit statuses.
    """

    def __init__(self, node, capability: str, lookup, config, opts: dict):
        from ..agents.runtime import Agents, DirectLookup

        self.node = node
        self.direct = isinstance(lookup, DirectLookup)
        self.agents = Agents(node, lookup=lookup, caller=config)
        self._lines_init(capability, opts)

    def _lines_init(self, capability: str, opts: dict) -> None:
        """What every run keeps, whatever runs its tasks (this node, or a sidecar: cli/sidecar_tasks.py)."""
        self.capability = capability
        self.opts = opts
        self.inflight: dict[bytes, int] = {}
        self.task_of: dict[int, bytes] = {}  # line number -> task id, while the task runs
        self.counts = {"completed": 0, "failed": 0, "timeout": 0, "rejected": 0, "canceled": 0, "invalid": 0,
                       "no_provider": 0, "unreachable": 0}
        self.total = 0
        self.tty = sys.stderr.isatty()
        self._bar_at = 0.0
        self.stdout_closed = False  # a progress callback found stdout closed (and canceled the run)
        self._run_task: asyncio.Task | None = None

    async def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        await self.agents.close()

    async def cancel_all(self) -> None:
        """After a signal: every unfinished task is canceled at its provider before we exit."""
        self.agents.cancel_all("the caller was interrupted")
        try:
            await self.node.flush(timeout=2.0)  # let the cancels reach the providers
        except Exception:
            pass

    async def run(self, body: str | None) -> int:
        from ..agents.capability import CapabilityError

        self._run_task = asyncio.current_task()

        for capability in self.capabilities():
            try:
                candidates = await self.agents.candidates(capability)
            except Exception as exc:
                click.echo(f"error: the mesh did not answer the lookup for providers of {capability!r} "
                           f"(unreachable): {exc}", err=True)
                return EXIT_UNREACHABLE
            if not candidates:
                if not self.direct and not self.node.peers():
                    click.echo("error: no mesh node answered (unreachable); check --mesh: is that node running?",
                               err=True)
                    return EXIT_UNREACHABLE
                click.echo(f"error: no provider offers {capability!r}", err=True)
                return EXIT_NOT_FOUND
        # each task looks again (cached for a few seconds): providers come and go
        if body is not None:
            values = [(1, parse_body(body))]
            await self._pipeline(aiter_items(values))
        else:
            terminal_hint()
            await self._pipeline(stdin_values())
        return self._exit_code()

    def capabilities(self) -> list[str]:
        """The capabilities a line needs: without a provider of each, nothing runs (exit 3)."""
        return [self.capability]

    def record(self, state: str, error: dict | None) -> None:
        """Count one line's outcome for the summary and the exit status."""
        from ..core import tasks as T

        code = (error or {}).get("code")
        if state == T.COMPLETED:
            self.counts["completed"] += 1
        elif state == "invalid":
            self.counts["invalid"] += 1
        elif code == T.E_NO_PROVIDER:
            self.counts["no_provider"] += 1
        elif code in (T.E_TIMEOUT, T.E_DEADLINE):
            self.counts["timeout"] += 1
        elif state == T.FAILED:
            self.counts["failed"] += 1
        elif state == T.REJECTED:
            self.counts["rejected"] += 1
        else:
            self.counts["canceled"] += 1

    async def _pipeline(self, values) -> None:
        """Keep --parallel tasks in flight; print in input order (or as they finish with --unordered).

        On a signal every running task is canceled rather than awaited (``_one`` then tells its
        provider to stop it) and each started line gets a canceled result."""
        await run_lines(values, self._one, self.opts["parallel"], ordered=not self.opts["unordered"],
                        show=self._print, canceled=self._canceled)

    def _canceled(self, number: int) -> dict:
        """The result line of a task cut short by a signal."""
        self.counts["canceled"] += 1
        task_id = self.task_of.pop(number, None)
        return {"line": number, "task": task_id.hex() if task_id else None, "state": "canceled",
                "error": {"code": "interrupted", "msg": "the caller was interrupted"}}

    async def _one(self, number: int, value: Any) -> dict:
        from ..core import tasks as T
        from ..core.tasks import TaskSpec, TaskTooLarge
        from ..agents.capability import CapabilityError

        self.total += 1
        if value is BAD:
            self.counts["invalid"] += 1
            return {"line": number, "state": "invalid", "error": {"code": "bad-input", "msg": "not a JSON value"}}
        spec = TaskSpec(self.capability, value, idempotent=self.opts["idempotent"], priority=self.opts["priority"],
                        deadline=self.opts["timeout"], idle_timeout=self.opts["idle_timeout"], stream=self.opts["stream"])
        on_progress = None
        if self.opts["stream"]:
            def on_progress(p, number=number):
                try:
                    self._print({"line": number, "task": p.task_id.hex(), "seq": p.seq, "progress": p.data},
                                bar=False)
                except StdoutClosed:  # a callback cannot raise it to the run: cancel the run instead
                    if not self.stdout_closed and self._run_task is not None:
                        self.stdout_closed = True
                        self._run_task.cancel()
        ids: list[bytes] = []  # the task id, for the answer command's environment (known before any question)

        async def on_input(prompt: Any) -> Any:
            return await self._answer(prompt, number, ids[0])

        try:
            task_id, done = await self.agents.submit(spec, validate=self.opts["validate"], on_progress=on_progress,
                                                     on_input=on_input)
            ids.append(task_id)
        except (CapabilityError, TaskTooLarge, ValueError) as exc:
            self.counts["invalid"] += 1
            click.echo(f"line {number}: {exc}", err=True)
            return {"line": number, "state": "invalid", "error": {"code": "bad-input", "msg": str(exc)}}
        self.inflight[task_id] = number
        self.task_of[number] = task_id  # until its result exists: a signal's canceled line names it
        try:
            res = await done
        except asyncio.CancelledError:
            self.agents.cancel(task_id, "the caller was interrupted")  # tell the provider to stop it
            raise
        finally:
            self.inflight.pop(task_id, None)
        self.task_of.pop(number, None)
        out = {"line": number, "task": res.task_id.hex(), "state": res.state}
        self.record(res.state, res.error)
        if res.state == T.COMPLETED:
            out["output"] = res.output
        else:
            out["error"] = res.error
            if res.maybe_ran:
                out["maybe_ran"] = True
        out["provider"] = res.provider.hex() if res.provider else None
        out["attempts"] = res.attempts
        out["ms"] = round(res.elapsed * 1000, 3)
        if res.lost_updates:
            out["lost_updates"] = res.lost_updates
        return out

    async def _answer(self, prompt: Any, number: int, task_id: bytes) -> Any:
        """The answer to a task's question from --answer-exec; NoAnswer (the task is canceled) without one."""
        from ..agents.runtime import NoAnswer
        from ..agents.shell import CommandFailed, decode_output, run_command

        shown = json.dumps(jsonable(prompt), ensure_ascii=False)
        command = self.opts["answer_exec"]
        if command is None:
            raise NoAnswer(f"input required ({shown[:200]}); pass --answer-exec CMD to answer it")
        env = {"ZMQAGENTS_TASK_ID": task_id.hex(), "ZMQAGENTS_CAPABILITY": self.capability, "ZMQAGENTS_LINE": str(number)}
        try:
            res = await run_command(command, (shown + "\n").encode(), timeout=self.opts["answer_timeout"], env=env)
        except CommandFailed as exc:
            raise NoAnswer(f"input required ({shown[:200]}); --answer-exec gave no answer: {exc}") from None
        return decode_output(res.stdout)

    def _print(self, obj: dict, *, bar: bool = True) -> None:
        emit(obj)
        if self.tty and bar:
            now = time.monotonic()
            if now - self._bar_at >= 0.1:
                self._bar_at = now
                c = self.counts
                done = sum(c.values())
                sys.stderr.write(f"\r\033[K{done}/{self.total} done  {c['completed']} ok  "
                                 f"{done - c['completed']} not ok  {len(self.inflight)} running")
                sys.stderr.flush()

    def _exit_code(self) -> int:
        c = self.counts
        bad = sum(v for k, v in c.items() if k != "completed")
        if bad:
            click.echo("error: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items() if v and k != "completed")
                       + f" of {self.total} task(s)", err=True)
        if c["no_provider"]:
            return EXIT_NOT_FOUND
        if c["unreachable"]:
            return EXIT_UNREACHABLE
        if c["failed"] or c["invalid"]:
            return EXIT_SOME_FAILED
        if c["timeout"]:
            return EXIT_TIMEOUT
        if c["rejected"]:
            return EXIT_REJECTED
        if c["canceled"]:
            return EXIT_CANCELED
        return EXIT_OK


async def aiter_items(items):
    for item in items:
        yield item
