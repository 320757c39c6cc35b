"""``zmqagents workflow run|check``: workflow files whose steps run as tasks across the mesh."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .agents import lookup_for
from .common import contacts_of, emit, make_node, node_options, parse_body, run_main
from .context import mesh_option, resolve_mesh
from .exits import EXIT_OK, EXIT_SOME_FAILED, EXIT_WORKFLOW_INVALID

@click.group("workflow")
def workflow_group() -> None:
    """Check and run workflow files: steps with dependencies, run as tasks across the mesh."""


WORKFLOW_CHECKS_HELP = """\b
Checks (all before any task runs; every problem is printed, not just the first):
  the file: keys and types, step names, selectors, depends_on, ${...}
    references, the optional [schemas.CAPABILITY] input/output tables, cycles
  types: each ${steps.A.output.F} against A's output schema (can it have F?)
    and against the step's input schema where it lands (do the types fit?);
    literal inputs and ${input...} (once the input is known) against the
    input schema. Schemas come from the first provider matching the step's
    selectors (task.describe), else from the file's [schemas] table. Where a
    schema is unknown nothing is said: no provider yet, none published, an
    open object.
"""


def _load_workflow(path: str):
    """The checked workflow file, or exit EXIT_WORKFLOW_INVALID printing every problem."""
    from ..agents.workflow import WorkflowError, load

    try:
        return load(path)
    except WorkflowError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(f"error: {path}: {len(exc.problems)} problem(s); nothing ran", err=True)
        sys.exit(EXIT_WORKFLOW_INVALID)


@workflow_group.command("run", epilog=WORKFLOW_CHECKS_HELP + """
\b
Exit codes:
  0  every step completed
  4  some step failed, was rejected or skipped
  7  the workflow failed its checks (each problem on stderr); nothing ran
  2  usage error
""")
@node_options
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_text", help="The workflow's input (JSON), read by ${input...} references.")
@mesh_option(help="Contact of a node in the mesh (providers are found in the DHT).")
@click.option("--to", "to", multiple=True, help="Contact of a provider to use directly instead (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per step instead of a table.")
def workflow_run(key, listen, insecure, path, input_text, bootstrap, to, as_json) -> None:
    """Run the workflow in PATH (TOML or JSON; see zmqagents/agents/workflow.py for the format).

    The file and the step inputs are checked first (see Checks below): a workflow that fails
    exits 7, printing every problem, before any task runs. Then each step runs as soon as its
    dependencies completed; per-step state and timing are printed when all are done.
    """
    wf = _load_workflow(path)
    bootstrap = bootstrap if to else resolve_mesh(bootstrap)
    if not bootstrap and not to:
        raise click.UsageError("say where the providers are: --mesh CONTACT (or a context, see "
                               "`zmqagents help context`) or --to CONTACT")
    value = parse_body(input_text) if input_text is not None else None
    n = make_node(key, listen, [], insecure, None, contacts_of(bootstrap, hint="--mesh"))

    async def main() -> int:
        from ..agents.runtime import Agents
        from ..agents.workflow import run as run_workflow
        from ..agents.workflow_check import check, gather_schemas

        async with n:
            agents = Agents(n, lookup=lookup_for(n, to))
            try:
                problems = check(wf, await gather_schemas(agents, wf), value)
                if problems:
                    for problem in problems:
                        click.echo(f"error: {problem}", err=True)
                    click.echo(f"error: {path}: {len(problems)} problem(s); nothing ran", err=True)
                    return EXIT_WORKFLOW_INVALID
                results = await run_workflow(agents, wf, value)
            finally:
                await agents.close()
        ok = all(r.state == "completed" for r in results.values())
        for r in results.values():
            if as_json:
                emit(r.to_json())
            else:
                detail = json.dumps(r.output, ensure_ascii=False) if r.state == "completed" else (r.error or {}).get("msg", "")
                click.echo(f"{r.name:20} {r.state:10} {r.started_ms:9.1f} ms +{r.elapsed_ms:8.1f} ms  {detail[:100]}")
        if not ok:
            click.echo(f"error: {sum(r.state != 'completed' for r in results.values())} of {len(results)} step(s) "
                       f"did not complete", err=True)
        return EXIT_OK if ok else EXIT_SOME_FAILED

    sys.exit(run_main(main()))


@workflow_group.command("check", epilog=WORKFLOW_CHECKS_HELP + """
\b
Exit codes:
  0  no problem found
  7  the workflow failed its checks (each problem on stdout)
  2  usage error
""")
@node_options
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_text", help="The workflow's input (JSON): ${input...} references are checked with it.")
@mesh_option(help="Contact of a node in the mesh: fetch the capabilities' schemas from their providers.")
@click.option("--to", "to", multiple=True, help="Contact of a provider to ask for schemas directly instead (repeatable).")
@click.option("--json", "as_json", is_flag=True, help='One JSON object per problem: {"step", "at", "ref", "problem"}.')
def workflow_check(key, listen, insecure, path, input_text, bootstrap, to, as_json) -> None:
    """Check the workflow in PATH as `workflow run` would, without running anything.

    \b
    The capabilities' schemas are published by their providers, so to check
    types against them say where the mesh is (--mesh or --to). Without
    either, only the file itself and the schemas its [schemas] table declares
    are checked. A summary goes to stderr: how many steps had a provider and
    known schemas (unknown ones are not checked).

    \b
    Example:
      zmqagents workflow check flow.toml --mesh @/tmp/seed.contact --input '{"text": "hi"}'
    """
    from ..agents.workflow_check import UNKNOWN, file_schemas, gather_schemas

    wf = _load_workflow(path)
    value = parse_body(input_text) if input_text is not None else UNKNOWN
    bootstrap = bootstrap if to else resolve_mesh(bootstrap)
    if not bootstrap and not to:
        click.echo("note: no --mesh/--to: checking with the file's [schemas] only", err=True)
        sys.exit(_report_check(path, wf, file_schemas(wf), value, as_json, asked_mesh=False))
    n = make_node(key, listen, [], insecure, None, contacts_of(bootstrap, hint="--mesh"))

    async def main() -> int:
        from ..agents.runtime import Agents

        async with n:
            agents = Agents(n, lookup=lookup_for(n, to))
            try:
                schemas = await gather_schemas(agents, wf)
            finally:
                await agents.close()
        return _report_check(path, wf, schemas, value, as_json, asked_mesh=True)

    sys.exit(run_main(main()))


def _report_check(path: str, wf, schemas: dict, value: Any, as_json: bool, *, asked_mesh: bool) -> int:
    """Print every problem (stdout) and a summary of what could be checked (stderr); the exit code."""
    from ..agents.workflow_check import UNKNOWN, check

    problems = check(wf, schemas, value)
    for problem in problems:
        if as_json:
            emit(problem.to_json())
        else:
            click.echo(str(problem))
    steps = len(wf.steps)
    known = (f"input schema known for {sum(s.input is not None for s in schemas.values())}/{steps} step(s), "
             f"output schema for {sum(s.output is not None for s in schemas.values())}/{steps}")
    if asked_mesh:
        missing = [name for name, s in schemas.items() if not s.provider_found]
        known += f"; no provider found for {', '.join(missing)}" if missing else "; every step has a provider"
    if value is UNKNOWN:
        known += "; ${input...} not checked (no --input)"
    click.echo(f"{path}: {len(problems)} problem(s); {known}", err=True)
    return EXIT_WORKFLOW_INVALID if problems else EXIT_OK


COMMANDS = (workflow_group,)
