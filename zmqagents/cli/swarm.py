"""``zmqagents swarm``: N real nodes in this process (or P processes) for a load test; ``swarm collect``.

The logic lives in zmqagents/swarm/; this module turns flags into a Plan, runs it, prints the report.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import click

from .common import Failure, contacts_of, run_main, stdout_gone
from .context import mesh_option, resolve_mesh
from .exits import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE

WORKLOADS = ("idle", "requests", "tasks", "publish")

SWARM_HELP = """Run N real nodes in this process for a load test, and print one JSON report.

\b
Real nodes: real sockets, CURVE on every link, the node every other
command runs. All of a process's nodes share one ZeroMQ context (one
I/O thread) and one event loop; --procs P runs P such processes and
merges their reports. The nodes found a mesh of their own (the first
node is the seed), or join the one named by --mesh (else ZMQAGENTS_MESH,
else the current context; --new-mesh ignores those two).

\b
Then, for --seconds, a workload at --rate per node per second:
  idle      nothing but the mesh's own upkeep (probes, gossip)
  requests  node.request() to a node from the caller's routing table,
            which sends the --size byte body back
  tasks     every node serves capability swarm.echo (found through the
            DHT); callers run it through the task protocol
  publish   every node subscribes to topic "swarm"; publications go
            over the mesh's broadcast tree
and a fault plan: --kill F and --pause F (F: 10% of this process's
nodes, or a count: 3) --at T seconds into the workload, a pause lasting
--for S. Kills are crashes to the peers (no leave); the report says
when this process's surviving nodes noticed them.

\b
The report (stdout; progress goes to stderr): joined, join_s_p50/p99/max,
request_ms_p50/p99 (task_ms, publish_ms), delivery, detect_s_p50/p99/max,
rss_mb_per_node, cpu_percent_per_node, msgs_per_node_per_s,
bytes_per_node_per_s, links_per_node, fds, fd_limit; "how" says how
each is measured, "raw" holds what `zmqagents swarm collect` merges.
SIGINT/SIGTERM stop the run: the report of what was measured is still
printed ("interrupted": true), then the exit status is 130/143.

\b
Examples:
  zmqagents swarm --nodes 50 --workload requests --seconds 20
  zmqagents swarm --nodes 200 --procs 2 --kill 5% --at 10 --seconds 40
  zmqagents swarm --nodes 100 --mesh @seed.contact --workload publish \\
      --rate 0.2 --json > pod-1.json
  zmqagents swarm collect pod-*.json

\b
Memory and descriptors: a node alone costs ~0.1 MB and 8-9 fds; each
connection ~60 KB and 3 fds (both ends in-process). A node closes an
outgoing connection idle for --link-idle seconds (default 30), but
membership gossip goes to random members, so in a busy mesh a node
still holds one to most contacts it talked to within that time. The soft fd limit is raised
to the hard one (and higher when running as root).

\b
Exit status: 0 the run completed (whatever it measured), 2 bad flags,
8 the first node could not join the mesh named, 1 a process failed,
130/143 interrupted (report printed).
"""


def _progress(text: str) -> None:
    import logging

    if logging.getLogger().isEnabledFor(logging.WARNING):
        click.echo(f"swarm[{os.getpid()}]: {text}", err=True)


def _print(report: dict, one_line: bool) -> None:
    text = json.dumps(report, separators=(",", ":")) if one_line else json.dumps(report, indent=2)
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_gone()


@click.group("swarm", invoke_without_command=True, help=SWARM_HELP, no_args_is_help=False,
             context_settings={"max_content_width": 100})
@click.option("--nodes", type=int, default=10, show_default=True, help="Nodes in all (over every --procs).")
@click.option("--procs", type=int, default=1, show_default=True, help="Processes to spread the nodes over.")
@mesh_option("Contact (or @FILE) of a node of the mesh to join (repeatable); none: the swarm founds its own.")
@click.option("--new-mesh", is_flag=True, help="Found an own mesh even if ZMQAGENTS_MESH or a context names one.")
@click.option("--workload", type=click.Choice(WORKLOADS), default="idle", show_default=True)
@click.option("--rate", type=float, default=1.0, show_default=True, help="Operations per node per second.")
@click.option("--size", type=int, default=100, show_default=True, help="Payload bytes per operation.")
@click.option("--seconds", type=float, default=30.0, show_default=True, help="Length of the workload.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds per request or task.")
@click.option("--kill", "kill", metavar="F", help="Kill F of the nodes at --at: a percentage (10%) or a count (3).")
@click.option("--pause", "pause", metavar="F", help="Pause F of the nodes at --at for --for seconds.")
@click.option("--at", "at", type=float, metavar="T", help="Seconds into the workload for --kill/--pause.")
@click.option("--for", "pause_for", type=float, default=5.0, show_default=True, metavar="S", help="Length of a pause.")
@click.option("--detect-timeout", type=float, default=30.0, show_default=True,
              help="Seconds after a kill to wait for every holder to notice it.")
@click.option("--join-concurrency", type=int, default=16, show_default=True,
              help="Joins in flight at once, in all (split over --procs, at least 1 each).")
@click.option("--join-timeout", type=float, default=30.0, show_default=True, help="Seconds a join may take.")
@click.option("--settle", type=float, default=2.0, show_default=True,
              help="Seconds between the last join and the idle figures and workload.")
@click.option("--listen", default="tcp://127.0.0.1:0", show_default=True,
              help="Where every node binds (port 0) and what it advertises: in a pod, tcp://$(POD_IP):0.")
@click.option("--seed", type=int, help="Random seed for victims and targets (default: random).")
@click.option("--link-idle", type=float, metavar="S",
              help="Close a node's outgoing connection after S seconds without traffic (0: never); "
                   "default: the node's (link_idle_timeout).")
@click.option("--json", "one_line", is_flag=True, help="The report on one line (for collect and jq); default indented.")
@click.option("--start-at", type=float, metavar="UNIXTIME",
              help="Start the workload at this wall-clock time (once joined): pods started at different "
                   "times then load the mesh together.")
@click.option("--seed-file", type=click.Path(dir_okay=False), hidden=True)
@click.option("--barrier", type=click.Path(file_okay=False), hidden=True)
@click.pass_context
def swarm(ctx: click.Context, nodes: int, procs: int, bootstrap: tuple[str, ...], new_mesh: bool, workload: str,
          rate: float, size: int, seconds: float, timeout: float, kill: str | None, pause: str | None,
          at: float | None, pause_for: float, detect_timeout: float, join_concurrency: int, join_timeout: float,
          settle: float, listen: str, seed: int | None, link_idle: float | None, start_at: float | None, one_line: bool, seed_file: str | None,
          barrier: str | None) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from ..errors import InvalidArgument
    from ..swarm.plan import Amount, Plan

    try:
        plan = Plan(nodes=nodes, workload=workload, seconds=seconds, rate=rate, size=size, timeout=timeout,
                    kill=Amount.parse(kill, "--kill") if kill else None,
                    pause=Amount.parse(pause, "--pause") if pause else None, at=at, pause_for=pause_for,
                    detect_timeout=detect_timeout, join_concurrency=join_concurrency, join_timeout=join_timeout,
                    settle=settle, listen=listen, seed=seed, link_idle=link_idle)
        if procs < 1:
            raise InvalidArgument(f"--procs {procs}: at least 1")
        if procs > nodes:
            raise InvalidArgument(f"--procs {procs} is more than --nodes {nodes}")
        try:
            Plan(**{**plan.__dict__, "nodes": nodes // procs, "faults": {}}).check()  # the smallest process's share
        except InvalidArgument as exc:
            if procs == 1:
                raise
            raise InvalidArgument(f"{exc} (each of the {procs} processes runs at least {nodes // procs} nodes, "
                                  "and its fault plan applies to those)") from None
    except InvalidArgument as exc:
        raise click.UsageError(str(exc)) from None
    mesh_texts = list(bootstrap) if bootstrap else [] if new_mesh else list(resolve_mesh(()))
    contacts = contacts_of(mesh_texts, hint="--mesh")
    params = {"nodes": nodes, "procs": procs, "workload": workload, "rate": rate, "size": size, "seconds": seconds,
              "timeout": timeout, "kill": kill, "pause": pause, "at": at, "for": pause_for if pause else None,
              "mesh": [str(c) for c in contacts] or None, "listen": listen, "seed": seed,
              "join_concurrency": join_concurrency, "settle": settle, "link_idle": link_idle}
    if procs == 1:
        code = run_main(_one_process(plan, contacts, params, Path(seed_file) if seed_file else None, one_line,
                                     _gate(start_at, barrier)))
    else:
        code = run_main(_many_processes(ctx, procs, nodes, mesh_texts, params, one_line))
    ctx.exit(code)


def _gate(start_at: float | None, barrier: str | None):
    """What the run waits for before its workload (and, with a barrier, before closing), or None."""
    if start_at is None and barrier is None:
        return None
    from ..swarm.procs import FileBarrier

    files = FileBarrier(Path(barrier)) if barrier else None

    async def gate(phase: str) -> None:
        if phase == "ready" and start_at is not None:
            wait = start_at - time.time()
            if wait > 0:
                _progress(f"starting the workload at {start_at:.0f} (in {wait:.0f} s)")
                await asyncio.sleep(wait)
        if files is not None:
            await files(phase)
    return gate


async def _one_process(plan, contacts, params, seed_file, one_line, gate) -> int:
    from ..sidecar.memory import Trimmer
    from ..swarm.runner import Swarm

    # As in the sidecar: what malloc frees (joins' transient buffers, the libzmq buffers of connections
    # closed when idle) goes back to the OS instead of staying resident in its free lists. 50 nodes with
    # links closing every 5 s held 145 MB, 112 MB once trimmed.
    trimmer = Trimmer()
    trimmer.start()
    swarm_ = Swarm(plan, contacts, progress=_progress, seed_file=seed_file, params=params, gate=gate)
    task = asyncio.get_running_loop().create_task(swarm_.run())
    try:
        report = await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()  # the swarm reports what it measured, then closes its nodes
        _print(await task, one_line)
        raise
    finally:
        trimmer.stop()
    _print(report, one_line)
    if contacts and not report["joined"]:
        click.echo("error: no node could join the mesh named (is the contact right, and reachable from here?)",
                   err=True)
        return EXIT_UNREACHABLE
    return EXIT_OK


async def _many_processes(ctx: click.Context, procs: int, nodes: int, mesh_texts: list[str], params: dict,
                          one_line: bool) -> int:
    from ..swarm.procs import ProcsError, run_procs

    passed = _passed_args(ctx)

    def child_args(index: int, count: int, extra: list[str]) -> list[str]:
        args = [*passed, "--nodes", str(count), "--procs", "1", "--json", "--new-mesh", *extra,
                f"--join-concurrency={max(1, params['join_concurrency'] // procs)}"]
        if "--mesh" not in extra:
            args += [f"--mesh={m}" for m in mesh_texts]
        if params["seed"] is not None:
            args += ["--seed", str(params["seed"] + index)]
        return args

    def interrupted(report: dict) -> None:
        report["params"] = params
        _print(report, one_line)

    try:
        report, failed = await run_procs(procs, nodes, child_args, mesh_texts, _progress, interrupted)
    except ProcsError as exc:
        raise Failure(str(exc)) from None
    report["params"] = params
    _print(report, one_line)
    return EXIT_FAILED if failed else EXIT_OK


def _passed_args(ctx: click.Context) -> list[str]:
    """The workload and plan flags as given, for the children (nodes, procs, mesh, seed set per child)."""
    from click.core import ParameterSource

    skip = {"nodes", "procs", "bootstrap", "new_mesh", "seed", "one_line", "seed_file", "barrier", "join_concurrency"}
    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in skip or param.name not in ctx.params:
            continue
        if ctx.get_parameter_source(param.name) in (ParameterSource.DEFAULT, None):
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            if value:
                args.append(param.opts[0])
        elif value is not None:
            args.append(f"{param.opts[0]}={value}")
    return args


@swarm.command("collect")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "one_line", is_flag=True, help="The summary on one line; default indented.")
def collect(files: tuple[str, ...], one_line: bool) -> None:
    """Merge swarm reports (pods' logs, --json files; FILES or - for stdin, the default) into one.

    Each input holds one report, or any lines of which those that are
    swarm reports (one JSON object per line) count: a pod's log can be
    passed as it is. Counts and sums are added, distributions merged
    bucket by bucket (so p99 is over every sample of every report), and
    the summary is computed again from the sums.

    \b
      kubectl logs -l app=swarm --tail=1 | zmqagents swarm collect
      zmqagents swarm collect pod-*.json

    Exit status: 0 merged, 2 an input that cannot be read or merged,
    3 no report in the inputs.
    """
    from ..errors import InvalidArgument
    from ..swarm.report import merge, read_reports

    texts = []
    for name in files or ("-",):
        if name == "-":
            texts.append(("stdin", sys.stdin.read()))
            continue
        try:
            texts.append((name, Path(name).read_text()))
        except (OSError, UnicodeDecodeError) as exc:
            raise Failure(f"cannot read {name}: {exc}", EXIT_USAGE) from None
    try:
        reports, sources = read_reports(texts)
        if not reports:
            raise Failure("no zmqagents swarm report in the input", EXIT_NOT_FOUND)
        merged = merge(reports, sources=sources)
    except InvalidArgument as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    merged["sources"] = sources
    _print(merged, one_line)


COMMANDS = (swarm,)
