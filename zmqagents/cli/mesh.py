"""``zmqagents mesh graph``: crawl the mesh's routing tables and draw them (JSON, dot, PNG, HTML).

The crawl itself is core/crawl.py (what to ask, what to believe, the bounds) driven by
shell/crawling.py; the formats are cli/mesh_render.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import Failure, contacts_of, make_node, node_options, run_main
from .context import mesh_option, resolve_mesh
from .exits import EXIT_OK, EXIT_UNREACHABLE

GRAPH_EXIT_HELP = """\b
Exit codes:
  0  the graph was written (nodes that did not answer are in it, marked)
  8  unreachable: no --mesh node answered (nothing was written)
  1  the picture could not be made (--format png without Graphviz)
  2  usage error
"""


@click.group("mesh")
def mesh_group() -> None:
    """Look at the mesh as a whole."""


@mesh_group.command("graph", epilog=GRAPH_EXIT_HELP)
@node_options
@mesh_option(help="Contact (or @FILE) of a node to start the crawl from (repeatable; default: the context).")
@click.option("--max-nodes", default=200, show_default=True, type=click.IntRange(1, 10_000),
              help="Stop adding nodes after this many (the rest of the mesh is left out, and counted).")
@click.option("--format", "fmt", type=click.Choice(["json", "dot", "png", "html"]), default="json", show_default=True,
              help="json: {nodes, edges, crawl}; dot: Graphviz text; png: drawn by Graphviz's dot (must be "
                   "installed); html: one self-contained page.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file (default: stdout; png needs it on a terminal).")
@click.option("--rate", default=20.0, show_default=True, type=click.FloatRange(0.1, 10_000),
              help="Requests a second the crawl sends at most.")
@click.option("--parallel", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Requests waiting for an answer at once, at most.")
@click.option("--ask-timeout", default=3.0, show_default=True, type=click.FloatRange(0.05, 600),
              help="Seconds a node has to answer one request.")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds the whole crawl may take; nodes not reached by then are marked unvisited.")
@click.option("--no-capabilities", is_flag=True, help="Do not ask each node what it serves (one request per node less).")
def mesh_graph(key, listen, insecure, bootstrap, max_nodes, fmt, output, rate, parallel, ask_timeout, timeout,
               no_capabilities) -> None:
    """Crawl the mesh from --mesh and print it as a graph.

    \b
    Each node reached is asked for its routing table (zmqagents.peers) and,
    unless --no-capabilities, what it serves (task.describe); the nodes its
    table names are asked next, breadth first, at most --rate requests a
    second and --parallel at once, up to --max-nodes nodes. Nodes are
    "answered", "unreachable", "bad_answer" (answered with something that is
    not a table) or "unvisited" (not asked, or not answered before --timeout
    ended the crawl: --max-nodes and --timeout bound it); edges
    are table entries with the lister's view (state, RTT). A summary goes to
    stderr; table entries that did not check out are counted, not drawn.

    \b
    Example:
      zmqagents mesh graph --mesh @/tmp/seed.contact --format html -o mesh.html
      zmqagents mesh graph --format dot | dot -Tsvg > mesh.svg
    """
    from ..core.crawl import CrawlLimits
    from .mesh_render import RenderError, render

    bootstrap = resolve_mesh(bootstrap)
    if not bootstrap:
        raise click.UsageError("say where to start: --mesh CONTACT (or a context, see `zmqagents help context`)")
    seeds = contacts_of(bootstrap, hint="--mesh")
    if fmt == "png" and output is None and sys.stdout.isatty():
        raise click.UsageError("--format png writes binary data: name a file with -o FILE (or redirect stdout)")
    limits = CrawlLimits(max_nodes=max_nodes, rate=rate, in_flight=parallel, burst=float(parallel),
                         capabilities=not no_capabilities)
    n = make_node(key, listen, [], insecure)

    async def main() -> int:
        from ..shell.crawling import crawl

        async with n:
            done = await crawl(n, seeds, limits, ask_timeout=ask_timeout, deadline=timeout)
        graph = done.graph()
        c = graph["crawl"]
        click.echo(f"mesh graph: {c['nodes_found']} nodes ({c['answered']} answered, {c['unreachable']} unreachable, "
                   f"{c['bad_answers']} bad answers), {len(graph['edges'])} table entries, {c['messages_sent']} "
                   f"requests in {c['seconds']} s", err=True)
        for stat, what in (("bad_entries", "table entries did not check out"),
                           ("beyond_max_nodes", "entries named nodes beyond --max-nodes"),
                           ("entries_truncated", "entries were cut from oversized tables"),
                           ("bad_capabilities", "capability records did not check out")):
            if c[stat]:
                click.echo(f"warning: {c[stat]} {what}", err=True)
        if not c["answered"] and not c["bad_answers"]:
            click.echo("error: no --mesh node answered", err=True)
            return EXIT_UNREACHABLE
        try:
            data = render(graph, fmt)
        except RenderError as exc:
            raise Failure(str(exc)) from None
        if output:
            Path(output).write_bytes(data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return EXIT_OK

    sys.exit(run_main(main()))


COMMANDS = (mesh_group,)
