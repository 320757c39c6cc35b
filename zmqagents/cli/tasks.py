"""``zmqagents task``: run a capability on the mesh for each JSON line on stdin, results in order."""

from __future__ import annotations

import asyncio
import sys

import click

from .agents import lookup_for
from .common import (
    SIDECAR_HELP, StdoutClosed, contacts_of, make_node, node_options, run_main, sidecar_options, sidecar_socket,
)
from .context import mesh_option, resolve_mesh
from .exits import EXIT_UNREACHABLE
from .taskrun import TaskRun

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


@click.command(epilog=TASK_EXIT_HELP + "\n" + SIDECAR_HELP + "  (here: --to, --answer-exec, --accept-timeout, --max-attempts)\n")
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
@sidecar_options
@click.pass_context
def task(ctx, key, listen, insecure, capability, body, bootstrap, to, parallel, timeout, idle_timeout, accept_timeout,
         stream, unordered, idempotent, priority, max_attempts, no_validate, answer_exec, answer_timeout, socket_path,
         direct) -> None:
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
    opts = dict(timeout=timeout, idle_timeout=idle_timeout, stream=stream, unordered=unordered, idempotent=idempotent,
                priority=priority, validate=not no_validate, parallel=parallel, answer_exec=answer_exec,
                answer_timeout=answer_timeout)
    path = sidecar_socket(ctx, socket_path, direct, own=("to", "answer_exec", "accept_timeout", "max_attempts"))
    if path is not None:
        from .sidecar_tasks import task_via_sidecar

        task_via_sidecar(path, capability, body, opts)
    bootstrap = bootstrap if to else resolve_mesh(bootstrap)
    if not bootstrap and not to:
        raise click.UsageError("say where the providers are: --mesh CONTACT (find them in the DHT; or a context, "
                               "see `zmqagents help context`) or --to CONTACT")
    from ..core.tasks import CallerConfig

    n = make_node(key, listen, [], insecure, None, contacts_of(bootstrap, hint="--mesh"))
    config = CallerConfig(accept_timeout=accept_timeout, max_attempts=max_attempts)
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


COMMANDS = (task,)
