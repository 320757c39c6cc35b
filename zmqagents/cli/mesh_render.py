"""The formats of ``zmqagents mesh graph``: JSON, Graphviz dot text, a PNG drawn by Graphviz, one HTML page.

PNG: Graphviz's ``dot`` program renders the very dot text this module writes (with the ``neato``
spring layout, which suits a mesh better than dot's layered one). Why Graphviz rather than
matplotlib (the ``plot`` extra): the picture is then the same description an operator gets with
``--format dot``, laid out by a tool made for graphs, and the command keeps no layout code of its
own nor imports numpy and matplotlib (tens of MB) to draw a few hundred circles. It is one
``apt-get install graphviz`` away, and its absence is a clear error that names it.

HTML: one self-contained page (the dashboard's stylesheet and drawing script inlined, the graph as
JSON), that any browser opens from a file, offline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from ..errors import Error
from ..sidecar.dashboard import asset

FORMATS = ("json", "dot", "png", "html")
COLOURS = {"answered": "#2e9d4f", "unreachable": "#c0392b", "bad_answer": "#8e44ad", "unvisited": "#95a5a6"}
DOT_TIMEOUT = 120.0  # s Graphviz may take to lay out and draw
MAX_LABELLED_EDGES = 150


class RenderError(Error):
    """The picture cannot be made here (no Graphviz for PNG, Graphviz failed)."""


def render(graph: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return (json.dumps(graph, ensure_ascii=False) + "\n").encode()
    if fmt == "dot":
        return to_dot(graph).encode()
    if fmt == "png":
        return to_png(to_dot(graph))
    if fmt == "html":
        return to_html(graph).encode()
    raise ValueError(f"unknown format {fmt!r}")


def _quote(text: str) -> str:
    """A dot ID as a double-quoted string (dot's only escape in one is \\")."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: dict[str, Any]) -> str:
    """Plain Graphviz text: an undirected graph, one edge per pair of nodes that list each other
    or one another (an arrow when only one side does), labelled with the best RTT in ms."""
    lines = ["graph mesh {", '  graph [layout=neato, overlap=false, outputorder=edgesfirst];',
             '  node [shape=ellipse, style=filled, fontname="Helvetica", fontsize=10, fontcolor=white];',
             '  edge [color="#90a4ae", fontsize=8, fontname="Helvetica"];']
    known = set()
    for node in graph["nodes"]:
        known.add(node["id"])
        caps = node.get("capabilities") or []
        label = node["id"][:8] + ("\n" + ", ".join(caps[:4]) + (", ..." if len(caps) > 4 else "") if caps else "")
        attrs = {"label": label, "fillcolor": COLOURS.get(node["state"], "#7f8c8d"),
                 "tooltip": f"{node['contact']} ({node['state']})"}
        if node.get("local"):
            attrs["penwidth"] = "3"
        lines.append(f"  {_quote(node['id'])} [{', '.join(f'{k}={_quote(v)}' for k, v in attrs.items())}];")
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for edge in graph["edges"]:
        a, b = edge["from"], edge["to"]
        if a not in known or b not in known:
            continue
        key = (min(a, b), max(a, b))
        pair = pairs.setdefault(key, {"sides": set(), "rtt": None, "suspect": False})
        pair["sides"].add(a)
        pair["suspect"] |= edge["state"] == "suspect"
        if edge.get("rtt_ms") is not None:
            pair["rtt"] = edge["rtt_ms"] if pair["rtt"] is None else min(pair["rtt"], edge["rtt_ms"])
    # RTTs as edge labels while they can be read; on a larger picture they only hide the edges, so
    # there they are tooltips (SVG output shows them on hover)
    rtt_attr = "label" if len(pairs) <= MAX_LABELLED_EDGES else "tooltip"
    if len(pairs) > MAX_LABELLED_EDGES:  # a dense mesh: thin, translucent edges so the nodes stay visible
        lines.insert(4, '  edge [color="#90a4ae50", penwidth=0.5, arrowsize=0.4];')
    for (a, b), pair in pairs.items():
        attrs = {}
        if len(pair["sides"]) == 1:  # only one lists the other: an arrow from the lister
            lister = next(iter(pair["sides"]))
            attrs["dir"] = "forward" if lister == a else "back"
        if pair["rtt"] is not None:
            attrs[rtt_attr] = f"{pair['rtt']:.1f} ms"
        if pair["suspect"]:
            attrs.update(style="dashed", color="#e67e22")
        text = f" [{', '.join(f'{k}={_quote(v)}' for k, v in attrs.items())}]" if attrs else ""
        lines.append(f"  {_quote(a)} -- {_quote(b)}{text};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_png(dot_text: str) -> bytes:
    dot = shutil.which("dot")
    if dot is None:
        raise RenderError("--format png needs Graphviz's `dot` program (apt-get install graphviz); "
                          "or write --format dot and render it elsewhere")
    try:
        done = subprocess.run([dot, "-Tpng"], input=dot_text.encode(), capture_output=True, timeout=DOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RenderError(f"Graphviz took more than {DOT_TIMEOUT:.0f} s to draw the graph") from None
    if done.returncode != 0 or not done.stdout:
        raise RenderError(f"Graphviz failed (exit {done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def to_html(graph: dict[str, Any]) -> str:
    """One page, no external reference: style and script inlined, the graph embedded as JSON."""
    data = json.dumps(graph, ensure_ascii=True).replace("</", "<\\/")  # nothing can close the <script>
    crawl = graph.get("crawl", {})
    title = (f"zmqagents mesh: {len(graph['nodes'])} nodes, {len(graph['edges'])} table entries, "
             f"{crawl.get('messages_sent', 0)} requests")
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<style>
{asset("style.css").decode()}
</style></head>
<body>
<header><h1>zmqagents mesh</h1><span class="sub">{title}</span></header>
<section><div id="legend"></div>
<svg class="mesh" id="mesh" data-nodes-drawn="0" role="img" aria-label="mesh topology"></svg></section>
<script>
{asset("graph.js").decode()}
</script>
<script>
const GRAPH = {data};
MeshGraph.legend(document.getElementById("legend"));
MeshGraph.draw(document.getElementById("mesh"), GRAPH, new Map());
</script>
</body>
</html>
"""
