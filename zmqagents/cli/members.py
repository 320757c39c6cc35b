"""``zmqagents members``: every member a node knows, as ``serf members`` lists them.

Read from a running sidecar (``--socket``, or the default path when one listens there) or from
any node through its contact (``--to``: its routing table only). The columns follow Serf's
(name, address, status, tags) with what a SWIM member adds: incarnation, round-trip time and how
long ago it was last heard. Filters select rows after they were checked (``nodeview.py``).
"""

from __future__ import annotations

import fnmatch
import sys
from typing import Any

import click

from .common import Failure, emit, run_main
from .exits import EXIT_OK

STATES = ("alive", "suspect", "unprobed", "dead", "left")


def source_options(f):
    """--socket / --to / --key / --timeout: where `top` and `members` read the node."""
    f = click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.1, max=300),
                     help="Seconds to wait for each answer.")(f)
    f = click.option("--key", type=click.Path(dir_okay=False),
                     help="With --to: key file of the temporary node that asks (default: a throwaway identity).")(f)
    f = click.option("--to", "to", metavar="CONTACT",
                     help="Ask this node (PUBLICKEY@ENDPOINT or @FILE) instead of a sidecar: its routing "
                          "table only (traffic and queues are shown by its own sidecar).")(f)
    f = click.option("--socket", "socket_path", type=click.Path(dir_okay=False), envvar="ZMQAGENTS_LOCAL_API_PATH",
                     help="Local API socket of the sidecar to read (default: the sidecar's default path; "
                          "env: ZMQAGENTS_LOCAL_API_PATH).")(f)
    return f


def resolve_source(ctx: click.Context, socket_path: str | None, to: str | None):
    """(socket path or None, contact text or None): exactly one of them, or a usage error."""
    from .common import sidecar_socket

    if to is None and ctx.params.get("key") is not None:
        raise click.UsageError("--key is the key of the node that asks with --to: give --to CONTACT too")
    if to is not None:
        if ctx.get_parameter_source("socket_path") == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("give --socket or --to, not both")
        return None, to
    if socket_path is not None:
        from ..sidecar.localsocket import sidecar_listening

        if not sidecar_listening(socket_path):
            raise Failure(f"no sidecar is listening on {socket_path}: start one (`zmqagents node --config FILE`), "
                          "or ask a node with --to CONTACT")
    path = sidecar_socket(ctx, socket_path, False)
    if path is None:
        from ..sidecar.config import LocalApiSection

        raise click.UsageError(f"no sidecar listens at {LocalApiSection().path}: name its socket with --socket "
                               "PATH, or ask a node with --to CONTACT")
    return path, None


def matches(row: dict[str, Any], states: set[str], names: tuple[str, ...]) -> bool:
    """Whether a member row passes --state (any of) and --name (any glob, on node id or contact)."""
    if states and row["state"] not in states:
        return False
    if names:
        fields = (row["node_id"], row["contact"] or "")
        return any(fnmatch.fnmatchcase(f, pattern) for pattern in names for f in fields)
    return True


def member_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table: one header line, one line per row (strings were checked printable)."""
    out = [f"{'NODE':14} {'ADDRESS':24} {'STATE':9} {'INC':>5} {'RTT ms':>8} {'AGE s':>7}  TAGS"]
    for row in rows:
        address = row["contact"].split("@", 1)[1] if row["contact"] else "-"
        rtt = "-" if row["rtt_ms"] is None else f"{row['rtt_ms']:.2f}"
        age = "-" if row["age_s"] is None else f"{row['age_s']:.1f}"
        out.append(f"{row['node_id'][:12]:14} {address:24} {row['state']:9} {row['incarnation']:>5} {rtt:>8} "
                   f"{age:>7}  {','.join(row['tags']) or '-'}")
    return out


@click.command()
@source_options
@click.option("--state", "states", multiple=True, metavar="STATE[,STATE]",
              help=f"Only members in these states (repeatable or comma-separated: {', '.join(STATES)}).")
@click.option("--name", "names", multiple=True, metavar="PATTERN",
              help="Only members whose node id or contact matches this glob (repeatable), e.g. 'ab12*' or '*:7100'.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per member instead of a table.")
@click.pass_context
def members(ctx: click.Context, socket_path, to, key, timeout, states, names, as_json) -> None:
    """List every member a node knows: alive, suspect, not yet probed, dead and left.

    \b
    Columns: NODE (id prefix), ADDRESS (its endpoint), STATE, INC (incarnation), RTT ms
    (probe round trip), AGE s (since last heard directly; - outside the routing table), TAGS
    (the groups of its fleet certificate). Through a sidecar, dead and departed members it
    still remembers are listed too; through --to, the node's routing table.

    \b
      zmqagents members --state alive,suspect
      zmqagents members --to @seed.contact --json | jq -r .contact
    """
    from .nodeview import ViewError, open_source

    wanted = {s.strip() for text in states for s in text.split(",") if s.strip()}
    unknown = wanted - set(STATES)
    if unknown:
        raise click.BadParameter(f"unknown state(s) {', '.join(sorted(unknown))}: use {', '.join(STATES)}",
                                 param_hint="--state")
    path, contact = resolve_source(ctx, socket_path, to)

    async def main() -> int:
        try:
            source = await open_source(path, contact, key, timeout)
            try:
                rows, total = await source.members()
            finally:
                await source.close()
        except ViewError as exc:
            raise Failure(str(exc), exc.code) from None
        shown = [row for row in rows if matches(row, wanted, names)]
        if as_json:
            for row in shown:
                emit(row)
        else:
            for line in member_lines(shown):
                click.echo(line)
        if total > len(rows):
            click.echo(f"note: the node knows {total} members; its answer carried the first {len(rows)}", err=True)
        return EXIT_OK

    sys.exit(run_main(main()))


COMMANDS = (members,)
