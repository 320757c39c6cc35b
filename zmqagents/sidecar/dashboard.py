"""The admin endpoint's web dashboard (``/ui``): this node, its rates and peers, and the mesh it can see.

    GET /ui, /ui/           the page (sidecar/ui/index.html), which loads:
    GET /ui/style.css, /ui/graph.js, /ui/dashboard.js
    GET /ui/api/status      JSON: this node (id, contact, version), its counters and gauges (the page
                            turns counter deltas into rates), its routing table (as zmqagents.peers)
    GET /ui/api/graph       JSON: the part of the mesh this node can crawl ({"nodes", "edges", "crawl"},
                            core/crawl.py), plus "crawling" and "age_s"

Why this shape: the page is four static files shipped in the package (no CDN, no build step, no
framework) that poll two JSON answers, so the admin server stays the small HTTP/1.1 responder it
is (one request per connection) and needs no websocket or new dependency. This module is imported
by the admin server on the first ``/ui`` request only: a sidecar whose dashboard nobody opens
pays nothing for it, not even the import.

The crawl starts from this node's own table and asks the nodes it meets (``zmqagents.peers``,
``task.describe``) through the node, bounded and rate-limited by :class:`CrawlLimits`. It runs in
the background, one at a time, at most once every ``refresh`` seconds however many pages poll:
a flood of GETs cannot make the node flood the mesh. A graph request answers at once with the
last finished crawl (the node's own table before the first one finishes).
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..core.crawl import Crawl, CrawlLimits
from ..shell.crawling import crawl

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

ASSETS = {  # path -> (file under sidecar/ui, content type); nothing else is served
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/": ("index.html", "text/html; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
    "/ui/graph.js": ("graph.js", "text/javascript; charset=utf-8"),
    "/ui/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}
JSON = "application/json"
REFRESH = 10.0  # s between two crawls at most
CRAWL_LIMITS = CrawlLimits(max_nodes=200, in_flight=8, rate=20.0)
CRAWL_DEADLINE = 30.0  # s one crawl may take; what it has not reached by then stays "unvisited"


def asset(name: str) -> bytes:
    """A file of the dashboard, as shipped in the package (sidecar/ui/NAME)."""
    return resources.files(__package__).joinpath("ui", name).read_bytes()


COUNTED = ("answered", "unreachable", "bad_answers", "bad_entries", "entries_truncated", "beyond_max_nodes",
           "bad_capabilities")  # what each crawl met, summed into Dashboard.stats


class Dashboard:
    """Answers ``/ui`` requests for ``node``; owns the background crawl and its cached graph."""

    metric_name = "dashboard"

    def __init__(self, node: "Node", *, limits: CrawlLimits = CRAWL_LIMITS, refresh: float = REFRESH,
                 deadline: float = CRAWL_DEADLINE):
        self.node = node
        self.limits = limits
        self.refresh = refresh
        self.deadline = deadline
        # crawls, their requests, and what they met (the crawl core's counters, summed over crawls):
        # exported as zmqagents_dashboard_events_total{outcome} once the dashboard exists
        self.stats = {"crawls": 0, "crawl_messages": 0, **dict.fromkeys(COUNTED, 0)}
        self._assets: dict[str, bytes] = {}
        self._graph: bytes | None = None  # the last crawl's graph, as JSON
        self._crawled_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def answer(self, target: str) -> tuple[str, str, bytes]:
        """(status line, content type, body) for GET ``target``; 404 for anything not listed above."""
        if target in ASSETS:
            name, ctype = ASSETS[target]
            if name not in self._assets:
                self._assets[name] = asset(name)
            return "200 OK", ctype, self._assets[name]
        if target == "/ui/api/status":
            return "200 OK", JSON, _dumps(self.status())
        if target == "/ui/api/graph":
            return "200 OK", JSON, self.graph()
        return "404 Not Found", "text/plain", b"the dashboard is at /ui (its data: /ui/api/status, /ui/api/graph)\n"

    def status(self) -> dict[str, Any]:
        """This node: who, its counters (the page derives rates), gauges and routing table. Read through
        sidecar/views.py, as /metrics and `zmqagents top` read it, so the three agree."""
        from .. import __version__
        from . import views

        node = self.node
        counters = views.traffic(node)
        counters["drops"] = sum(n for _, _, n in views.drops(node))
        queues = views.queues(node)
        peers = node.peers() if node.routing is not None else []
        gauges = {"peers": len(peers), "neighbours": views.connections(node)["neighbours"],
                  "inbox_messages": queues["inbox_messages"], "unacked_messages": queues["unacked_messages"]}
        return {"node_id": node.node_id.hex(), "contact": str(node.contact), "version": __version__,
                "running": node.running, "time": node.now(), "counters": counters, "gauges": gauges,
                "peers": peers}

    def graph(self) -> bytes:
        """The last crawl's graph as JSON (starting a new crawl in the background when it is stale)."""
        now = self.node.now()
        running = self._task is not None and not self._task.done()
        if not running and (self._crawled_at is None or now - self._crawled_at >= self.refresh):
            self._task = asyncio.get_running_loop().create_task(self._crawl())
            running = True
        graph = self._graph
        if graph is None:  # before the first crawl ends: this node and its own table
            first = Crawl(self.limits, now=now)
            first.local(str(self.node.contact), self.node.peers() if self.node.routing is not None else [])
            first.stop(now)
            graph = _encode(first)
        age = None if self._crawled_at is None else round(now - self._crawled_at, 1)
        # the graph is encoded once per crawl; each answer only puts these two keys in front of it
        return _dumps({"crawling": running, "age_s": age})[:-1] + b"," + graph[1:]

    async def _crawl(self) -> None:
        try:
            done = await crawl(self.node, [], self.limits, local=True, deadline=self.deadline)
        except Exception:  # a bug here must not take the admin endpoint down; the page shows the old graph
            log.exception("dashboard crawl failed")
            self._crawled_at = self.node.now()
            return
        self.stats["crawls"] += 1
        self.stats["crawl_messages"] += done.messages_sent
        for key in COUNTED:
            self.stats[key] += done.stats[key]
        self._graph = _encode(done)
        self._crawled_at = self.node.now()

    async def close(self) -> None:
        """Stop a crawl in progress (the admin server closes)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None


def _encode(done: Crawl) -> bytes:
    """The graph of a crawl as JSON, encoded one edge at a time. Why: a crawl of 100 nodes has ~5,000
    edges; as dicts they take ~3x their JSON, and json.dumps of them all at once more again while it
    runs. The dashboard keeps the bytes (~200 an edge) until the next crawl, and only those."""
    edges = b",".join(_dumps(edge) for edge in done.edges())
    return (b'{"nodes":' + _dumps(done.nodes()) + b',"edges":[' + edges + b'],"crawl":' + _dumps(done.summary())
            + b"}")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
