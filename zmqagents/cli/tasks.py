"""``zmqagents task``: run a capability on the mesh for each JSON line on stdin, results in order."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click

from .agents import lookup_for
from .common import StdoutClosed, contacts_of, emit, jsonable, make_node, node_options, parse_body, run_main
from .context import mesh_option, resolve_mesh
from .exits import (
    EXIT_CANCELED, EXIT_NOT_FOUND, EXIT_OK, EXIT_REJECTED, EXIT_SOME_FAILED, EXIT_TIMEOUT, EXIT_UNREACHABLE,
)
from .lines import BAD, run_lines, stdin_values, terminal_hint

TASK_EXIT_HELP = """\b
Exit codes (the first that applies):
  130  interrupted by SIGINT (in-flight tasks were canceled first)
  143  terminated by SIGTERM (likewise)
  141  stdout was closed (| head): in-flight tasks were canceled
  3    no provider offers the capability
  8    unreachable: no mesh node (--mesh, the context), or none of the --to
       nodes, answered
  4    some task failed, or some input line was invalid (bad JSON, schema)
  124  some task timed out (--timeout, --idle-timeout, or a silent provider)
  5    some task was rejected by every provider tried (busy, denied)
  6    some task was canceled (it asked for input and nothing answered it,
       or its provider shut down)
  0    every task completed
  2    usage error
"""


@click.command(epilog=TASK_EXIT_HELP)
@node_options
@click.argument("capability")
@click.argument("body", required=False)
@mesh_option(help="Contact of a node in the mesh; providers are found in the DHT through it.")
@click.option("--to", "to", multiple=True, help="Contact of a provider to use directly instead of the DHT (repeatable).")
@click.option("--parallel", default=8, show_default=True, type=click.IntRange(1, 4096), help="Tasks in flight at once.")
@click.option("--timeout", type=click.FloatRange(min=0.001), help="Deadline per task in seconds (none by default).")
@click.option("--idle-timeout", type=click.FloatRange(min=0.001), help="Fail a task whose provider sends nothing for this long (LLM streams are slow: be generous).")
@click.option("--accept-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001), help="Seconds a provider has to acknowledge a task.")
@click.option("--stream", is_flag=True, help='Also print progress chunks as {"line", "task", "seq", "progress"} lines as they arrive.')
@click.option("--unordered", is_flag=True, help="Print results as they finish instead of in input order.")
@click.option("--idempotent", is_flag=True, help="Tasks may run twice: a task whose provider died or went silent is sent to another.")
@click.option("--priority", default=0, show_default=True, type=click.IntRange(0, 9), help="Priority in providers' wait queues (9 first).")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1, 100), help="Providers tried per task.")
@click.option("--no-validate", is_flag=True, help="Do not check input against the capability's input schema before sending.")
@click.option("--answer-exec", metavar="CMD",
              help="Answer a task that asks for input: CMD gets the prompt as one JSON line on stdin; its stdout is "
                   "the answer (JSON if it parses, else text). Without it such a task is canceled.")
@click.option("--answer-timeout", default=300.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds --answer-exec may take; then it is killed and the task canceled.")
def task(key, listen, insecure, capability, body, bootstrap, to, parallel, timeout, idle_timeout, accept_timeout,
         stream, unordered, idempotent, priority, max_attempts, no_validate, answer_exec, answer_timeout) -> None:
    """Run CAPABILITY on the mesh for BODY, or for each JSON line on stdin.

    \b
    One JSON result per input line on stdout, in input order (unless --unordered):
      {"line": N, "task": ID, "state": "completed", "output": ..., "provider": ID, "attempts": 1, "ms": 12.3}
      {"line": N, "task": ID, "state": "failed", "error": {"code": ..., "msg": ...}, ...}
    A line that is not JSON, or does not match the capability's input schema, is
    reported as {"line": N, "state": "invalid", "error": ...} (and on stderr); the
    other lines still run. A progress bar goes to stderr when it is a terminal.

    \b
    A task may ask for more input mid-task (state input-required). With
    --answer-exec CMD, CMD runs per question with the prompt as one JSON line on
    stdin (env: ZMQAGENTS_TASK_ID, ZMQAGENTS_CAPABILITY, ZMQAGENTS_LINE), and
    its stdout is sent back as the answer. A non-zero exit, a timeout, or no
    --answer-exec at all cancels the task with the reason in its result line
    (state canceled, exit 6).
      ... | zmqagents task greet --mesh @seed.contact --answer-exec 'echo Ann'

    \b
    Example:
      jq -c '.[]' docs.json | zmqagents task summarize --mesh @seed.contact --parallel 8 | jq -r .output.text
    """
    bootstrap = bootstrap if to else resolve_mesh(bootstrap)
    if not bootstrap and not to:
        raise click.UsageError("say where the providers are: --mesh CONTACT (find them in the DHT; or a context, "
                               "see `zmqagents help context`) or --to CONTACT")
    from ..core.tasks import CallerConfig

    n = make_node(key, listen, [], insecure, None, contacts_of(bootstrap, hint="--mesh"))
    config = CallerConfig(accept_timeout=accept_timeout, max_attempts=max_attempts)
    opts = dict(timeout=timeout, idle_timeout=idle_timeout, stream=stream, unordered=unordered, idempotent=idempotent,
                priority=priority, validate=not no_validate, parallel=parallel, answer_exec=answer_exec,
                answer_timeout=answer_timeout)
    sys.exit(run_task(n, capability, body, to, config, opts))


def run_task(n, capability: str, body: str | None, to, config, opts, *, runner: type | None = None) -> int:
    """Run the lines of stdin (or BODY) through ``runner`` (default TaskRun: one task per line) on node ``n``;
    SIGINT/SIGTERM cancel what is in flight (each started line gets a canceled result). The exit status."""
    async def main() -> int:
        from ..agents.runtime import DirectLookup

        async with n:
            lookup = lookup_for(n, ())  # the DHT
            if to:  # unreachable (exit 8) is not "offers nothing" (exit 3): ask them first
                answering = await _answering(n, contacts_of(to, hint="--to"), config.accept_timeout)
                if not answering:
                    click.echo("error: none of the --to nodes answered (unreachable)", err=True)
                    return EXIT_UNREACHABLE
                lookup = DirectLookup(n, answering)
            run_ = (runner or TaskRun)(n, capability, lookup, config, opts)
            try:
                return await run_.run(body)
            except (asyncio.CancelledError, StdoutClosed):  # a signal, or `| head` has what it wanted
                await run_.cancel_all()
                if run_.stdout_closed:  # found by a progress line: it canceled the run to stop it
                    raise StdoutClosed() from None
                raise
            finally:
                await run_.close()

    return run_main(main())


async def _answering(node, contacts: list, timeout: float) -> list:
    """The contacts that say what they serve within ``timeout``; each silent one is named on stderr."""
    from ..agents.capability import describe

    answers = await asyncio.gather(*(describe(node, c, timeout=timeout) for c in contacts), return_exceptions=True)
    for contact, answer in zip(contacts, answers):
        if isinstance(answer, BaseException):
            click.echo(f"warning: {contact.node_id.hex()[:12]} did not answer: {answer or type(answer).__name__}",
                       err=True)
    return [c for c, answer in zip(contacts, answers) if not isinstance(answer, BaseException)]


class TaskRun:
    """One `zmqagents task` invocation: reads lines, keeps --parallel tasks in flight, prints results.

    ``zmqagents collab`` runs its patterns through a subclass: it names the capabilities it needs
    (:meth:`capabilities`), runs one line in ``_one`` and counts each outcome with :meth:`record`, so
    both commands share the pipeline, the signals and the exit statuses.
    """

    def __init__(self, node, capability: str, lookup, config, opts: dict):
        from ..agents.runtime import Agents, DirectLookup

        self.node = node
        self.capability = capability
        self.opts = opts
        self.direct = isinstance(lookup, DirectLookup)
        self.agents = Agents(node, lookup=lookup, caller=config)
        self.inflight: dict[bytes, int] = {}
        self.task_of: dict[int, bytes] = {}  # line number -> task id, while the task runs
        self.counts = {"completed": 0, "failed": 0, "timeout": 0, "rejected": 0, "canceled": 0, "invalid": 0,
                       "no_provider": 0}
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
            await self._pipeline(_aiter(values))
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
        if c["failed"] or c["invalid"]:
            return EXIT_SOME_FAILED
        if c["timeout"]:
            return EXIT_TIMEOUT
        if c["rejected"]:
            return EXIT_REJECTED
        if c["canceled"]:
            return EXIT_CANCELED
        return EXIT_OK


async def _aiter(items):
    for item in items:
        yield item




COMMANDS = (task,)
