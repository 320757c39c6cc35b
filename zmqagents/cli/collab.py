"""``zmqagents collab sequential|parallel|map-reduce|vote|debate``: a collaboration pattern per input line.

Each subcommand builds the workflow step of its mode (agents/workflow.py: the same keys, the same
checks) and runs it for every JSON line on stdin (or the --input value) through the ``task`` command's pipeline
(cli/tasks.py: --parallel lines in flight, results in input order, SIGINT/SIGTERM cancel what is in
flight), so the result lines and exit statuses are those of ``zmqagents task``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from .common import contacts_of, make_node, node_options
from .context import mesh_option, resolve_mesh
from .lines import BAD
from .taskrun import TaskRun
from .tasks import TASK_EXIT_HELP, run_task

RESULT_HELP = """\b
One JSON result per input line on stdout, in input order (unless --unordered):
  {"line": N, "state": "completed", "output": ..., "ms": 12.3}
  {"line": N, "state": "failed", "error": {"code": ..., "msg": ...}, "ms": ...}
A task the pattern needed that did not complete gives its state (failed,
rejected, canceled) and error to the line. A line that is not JSON, or does
not fit the first capability's input schema, is {"line": N, "state":
"invalid", ...}; the other lines still run.
"""


def _mesh_options(f):
    f = click.option("--unordered", is_flag=True, help="Print results as they finish instead of in input order.")(f)
    f = click.option("--idempotent", is_flag=True, help="Tasks may run twice (a silent provider's task goes to another).")(f)
    f = click.option("--timeout", type=click.FloatRange(min=0.001), help="Deadline of each task in seconds (none by default).")(f)
    f = click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 4096),
                     help="Input lines in flight at once.")(f)
    f = click.option("--accept-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001),
                     help="Seconds a provider has to acknowledge a task.")(f)
    f = click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1, 100),
                     help="Providers tried per task.")(f)
    f = click.option("--to", "to", multiple=True, help="Contact of a provider to use directly instead of the DHT (repeatable).")(f)
    f = mesh_option(help="Contact of a node in the mesh; providers are found in the DHT through it.")(f)
    f = click.option("--input", "body", metavar="JSON", help="Run once for this value instead of each stdin line.")(f)
    return node_options(f)


@click.group("collab", epilog=TASK_EXIT_HELP)
def collab_group() -> None:
    """Run a collaboration pattern over capabilities in the mesh, once per JSON line.

    \b
    sequential CAP...        the value goes through each capability in turn
    parallel CAP             a line is an array: CAP on every item, the outputs as an array
    map-reduce MAP REDUCE    a line is an array: MAP on every item, REDUCE on their outputs
    vote CAP                 the same input to --voters distinct providers; the majority wins
    debate --debater A ...   debaters answer in turn for --rounds rounds; --judge decides

    \b
    Each is also a workflow step kind (mode = "sequential", ...; see `zmqagents
    workflow run --help` and zmqagents/agents/workflow.py).
    """


@collab_group.command("sequential", epilog=RESULT_HELP + "\n" + TASK_EXIT_HELP)
@click.argument("capabilities", nargs=-1, required=True)
@_mesh_options
def collab_sequential(capabilities, **kw) -> None:
    """Pass each line's value through CAPABILITIES in order; the last output is the result.

    \b
    Example:
      jq -c '.[]' drafts.json | zmqagents collab sequential proofread shorten --mesh @seed.contact
    """
    _run({"mode": "sequential", "chain": [f"capability:{c}" for c in capabilities]}, kw)


@collab_group.command("parallel", epilog=RESULT_HELP + "\n" + TASK_EXIT_HELP)
@click.argument("capability")
@click.option("--limit", default=8, show_default=True, type=click.IntRange(1, 4096), help="Tasks in flight per line.")
@_mesh_options
def collab_parallel(capability, limit, **kw) -> None:
    """Each line is an array: CAPABILITY on every item, at most --limit at once; the result is the
    array of outputs (the line fails if any task does)."""
    _run({"mode": "parallel", "agent": f"capability:{capability}", "limit": limit}, kw)


@collab_group.command("map-reduce", epilog=RESULT_HELP + "\n" + TASK_EXIT_HELP)
@click.argument("map_capability", metavar="MAP")
@click.argument("reduce_capability", metavar="REDUCE")
@click.option("--limit", default=8, show_default=True, type=click.IntRange(1, 4096), help="Map tasks in flight per line.")
@_mesh_options
def collab_map_reduce(map_capability, reduce_capability, limit, **kw) -> None:
    """Each line is an array: MAP on every item, then REDUCE on the array of their outputs.

    \b
    Example:
      echo '["a long text", "another"]' | zmqagents collab map-reduce summarize merge --mesh @seed.contact
    """
    _run({"mode": "map-reduce", "agent": f"capability:{map_capability}", "reduce": f"capability:{reduce_capability}",
          "limit": limit}, kw)


@collab_group.command("vote", epilog=RESULT_HELP + "\n" + TASK_EXIT_HELP)
@click.argument("capability")
@click.option("--voters", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Distinct providers asked (fewer in the mesh: the line fails).")
@click.option("--quorum", type=click.IntRange(1, 100), help="Outputs that must agree (default: a majority of --voters).")
@_mesh_options
def collab_vote(capability, voters, quorum, **kw) -> None:
    """Ask --voters distinct providers of CAPABILITY; the result is {"output", "votes", "voters"} for the
    most common output, if at least --quorum agree (else the line fails)."""
    step: dict[str, Any] = {"mode": "vote", "agent": f"capability:{capability}", "voters": voters}
    if quorum is not None:
        step["quorum"] = quorum
    _run(step, kw)


@collab_group.command("debate", epilog=RESULT_HELP + "\n" + TASK_EXIT_HELP)
@click.option("--debater", "debaters", multiple=True, required=True, help="A capability that argues (repeatable, in turn).")
@click.option("--judge", required=True, help="The capability that gives the verdict on the transcript.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1, 100), help="Rounds of turns.")
@_mesh_options
def collab_debate(debaters, judge, rounds, **kw) -> None:
    """Each line is a question. Debaters get {"question", "round", "transcript"} in turn for --rounds
    rounds; the judge gets {"question", "transcript"}; the result is {"verdict", "transcript"}."""
    _run({"mode": "debate", "debaters": [f"capability:{d}" for d in debaters], "judge": f"capability:{judge}",
          "rounds": rounds}, kw)


def _run(raw: dict, kw: dict) -> None:
    from ..agents.workflow import WorkflowError, parse
    from ..core.tasks import CallerConfig

    if not kw["to"]:
        kw["bootstrap"] = resolve_mesh(kw["bootstrap"])
    if not kw["bootstrap"] and not kw["to"]:
        raise click.UsageError("say where the providers are: --mesh CONTACT (find them in the DHT; or a context, "
                               "see `zmqagents help context`) or --to CONTACT")
    raw = {"name": "collab", **raw, "idempotent": kw["idempotent"]}
    if kw["timeout"] is not None:
        raw["timeout"] = kw["timeout"]
    try:
        (step,) = parse({"steps": [raw]}).steps.values()
    except WorkflowError as exc:
        raise click.UsageError("; ".join(p.removeprefix("step 'collab': ") for p in exc.problems)) from None
    n = make_node(kw["key"], kw["listen"], [], kw["insecure"], None, contacts_of(kw["bootstrap"], hint="--mesh"))
    config = CallerConfig(accept_timeout=kw["accept_timeout"], max_attempts=kw["max_attempts"])
    opts = dict(timeout=kw["timeout"], idle_timeout=None, stream=False, unordered=kw["unordered"],
                idempotent=kw["idempotent"], priority=0, validate=True, parallel=kw["parallel"], answer_exec=None,
                answer_timeout=1.0, step=step)
    sys.exit(run_task(n, step.capability, kw["body"], kw["to"], config, opts, runner=CollabRun))


class CollabRun(TaskRun):
    """A line runs the step's pattern (agents/workflow.run_collab) instead of one task."""

    def capabilities(self) -> list[str]:
        return self.opts["step"].capabilities()

    async def _one(self, number: int, value: Any) -> dict:
        from ..agents.workflow import run_collab
        from ..core import tasks as T

        self.total += 1
        if value is BAD:
            self.record("invalid", None)
            return {"line": number, "state": "invalid", "error": {"code": "bad-input", "msg": "not a JSON value"}}
        began = time.perf_counter()
        state, output, error = await run_collab(self.agents, self.opts["step"], value)
        if state != T.COMPLETED and (error or {}).get("code") == "bad-input":
            state = "invalid"
            click.echo(f"line {number}: {error['msg']}", err=True)
        self.record(state, error)
        out: dict[str, Any] = {"line": number, "state": state}
        if state == T.COMPLETED:
            out["output"] = output
        else:
            out["error"] = error
        out["ms"] = round((time.perf_counter() - began) * 1000, 3)
        return out


COMMANDS = [collab_group]
