"""The admin endpoint: Prometheus metrics and health checks over HTTP, for operators.

    GET /metrics  the node's counters and gauges in the Prometheus text format
    GET /livez    200 while the process and its event loop run (the answer comes from the loop)
    GET /readyz   200 when the inbox is bound, the node has joined (or runs alone by config)
                  and every sidecar service says it is ready; 503 with the failing checks otherwise
    GET /ui       a web dashboard of the node and the mesh it can see (sidecar/dashboard.py,
                  imported on the first /ui request only)

It listens on 127.0.0.1 by default: metrics say who we talk to and how much, so exposing them
further is the operator's explicit choice (``[admin] listen``).

Why a small asyncio server on the node's own loop rather than prometheus_client's threaded
``start_http_server``: a scrape then runs between two loop callbacks, so it reads the protocol
cores' ``stats`` dicts and queues in a consistent state with no lock, and the sidecar keeps one
thread. The server speaks just enough HTTP/1.1 for scrapers and probes (GET/HEAD, one request
per connection), with bounded request size, read time and connections.

Why a collector that reads at scrape time: the hot path already counts everything in plain dicts
(``stats`` of the transport, the cores and the services). The collector turns them into metric
families when scraped, so metrics cost nothing between scrapes. The families and the text format
come from :mod:`.exposition` (a page of code), not prometheus_client: importing that library
(and the ``ssl`` it imports) cost the sidecar about 5 MB of RSS for a format we can write ourselves.

Naming follows Prometheus conventions: ``zmqagents_`` prefix, base units (bytes, seconds),
counters end in ``_total``, and no label takes per-peer values (label values come from fixed
sets of reasons, states and kinds).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from . import views
from .exposition import CONTENT_TYPE, MetricFamily, info, process_families, render
from .exposition import counter as metric_counter, gauge as metric_gauge
from ..errors import Error

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9464"
MAX_HEAD = 8192  # bytes of request line + headers
READ_TIMEOUT = 5.0  # s a client may take to send its request
MAX_CONNECTIONS = 16  # served at once; more are closed unanswered (and counted)


class AdminError(Error):
    """The admin endpoint cannot start (bad listen address, port taken)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into (host, port); AdminError if malformed."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise AdminError(f"admin listen address {listen!r} must be HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def dht_core(node: "Node"):
    """Hook: the node's DHT core (records, providers, ``stats``), or None before start / without a DHT."""
    return getattr(getattr(node, "dht", None), "core", None)


def tasks_by_state(node: "Node") -> Mapping[str, int] | None:
    """Hook: tasks per A2A state (submitted, working, ...), or None while the node runs no tasks."""
    tasks = getattr(node, "tasks", None)
    counts = getattr(tasks, "counts_by_state", None)
    return None if counts is None else counts()


class NodeCollector:
    """Reads the node (and its services) into metric families when scraped."""

    def __init__(self, node: "Node", services: Callable[[], Iterable[Any]], admin_stats: dict[str, int]):
        self.node = node
        self.services = services
        self.admin_stats = admin_stats

    def collect(self) -> Iterator[MetricFamily]:
        node = self.node
        transport = node.transport
        t = transport.stats
        d = node.delivery.stats

        def counter(name: str, doc: str, value: float) -> MetricFamily:
            return metric_counter(f"zmqagents_{name}", doc, value)

        def gauge(name: str, doc: str, value: float) -> MetricFamily:
            return metric_gauge(f"zmqagents_{name}", doc, value)

        yield info("zmqagents_node", "This node's identity and software version.",
                   {"node_id": node.node_id.hex(), "version": _version()})

        # -- traffic ---------------------------------------------------------------------
        yield counter("transport_received_messages_total", "Envelopes read from sockets.", t["frames_in"])
        yield counter("transport_sent_messages_total", "Envelopes written to sockets.", t["frames_out"])
        yield counter("transport_received_bytes_total", "Envelope bytes read from sockets.", t["bytes_in"])
        yield counter("transport_sent_bytes_total", "Envelope bytes written to sockets.", t["bytes_out"])
        yield counter("publications_received_total", "Publications received from neighbours.", t["publications_in"])
        yield counter("publications_sent_total", "Publications sent.", t["publications_out"])
        yield counter("messages_submitted_total", "Messages, requests and replies handed to reliable delivery.",
                      d["sent"])
        yield counter("messages_delivered_total", "Messages and requests delivered to this node's application, "
                      "exactly once.", d["delivered"])
        yield counter("retransmits_total", "Envelopes sent again because no ack came in time.", d["retransmits"])
        yield counter("duplicates_total", "Envelopes received again and not redelivered.", d["duplicates"])
        failed = metric_counter("zmqagents_requests_failed", "Requests that got no reply, by reason.",
                                labels=["reason"])
        failed.add_metric(["timeout"], d["requests_timed_out"])
        failed.add_metric(["unreachable"], d["requests_failed"])
        yield failed
        yield counter("send_failures_total", "Messages given up after every retransmit.", d["send_failed"])
        yield counter("handler_errors_total", "Requests whose handler raised.", node.stats["handler_errors"])

        # -- drops by reason (fixed reason names from the code, never peer-chosen text) -----
        drops = metric_counter("zmqagents_dropped_messages",
                               "Messages dropped, by the layer that dropped them and why.",
                               labels=["layer", "reason"])
        for layer, reason, n in views.drops(node):
            drops.add_metric([layer, reason], n)
        yield drops

        # -- queues ------------------------------------------------------------------------
        inbox_messages, inbox_bytes = node.inbox_size
        yield gauge("inbox_messages", "Messages waiting for the application.", inbox_messages)
        yield gauge("inbox_bytes", "Memory the messages waiting for the application hold (Envelope.cost).",
                    inbox_bytes)
        reorder_messages, reorder_bytes = node.delivery.buffered()
        yield gauge("reorder_buffer_messages", "Messages received out of order, waiting for the ones before them.",
                    reorder_messages)
        yield gauge("reorder_buffer_bytes", "Memory those messages hold (Envelope.cost).", reorder_bytes)
        yield gauge("unacked_messages", "Messages sent and not yet acknowledged.", node.delivery.pending())
        yield gauge("delivery_stalled_peers", "Peers that answer but have acknowledged none of our messages to "
                    "them for longer than the stall bound (the stream is reopened meanwhile).",
                    node.delivery.stalled_peers)
        yield counter("delivery_stalls_total", "Streams found stalled by the delivery watchdog.", d["stalls"])
        yield counter("delivery_stream_reopens_total", "Streams renumbered onto a new epoch (a stall, or a "
                      "receiver holding a newer epoch of ours).", d["stream_reopens"])
        yield gauge("transport_outbox_messages", "Envelopes waiting for this loop turn's socket writes.",
                    transport.outbox_size)
        yield gauge("transport_read_backlog_bytes", "Frames read off the inbox and waiting to be decoded, in bytes "
                    "(bounded: the transport's read_backlog_bytes and a quarter more for small frames).",
                    transport.backlog_bytes)
        yield gauge("handlers_running", "Request handlers running now.", node.handlers_running)
        yield gauge("subscription_queue_messages", "Publications waiting for subscribers.",
                    node.subscription_backlog)

        # -- peers and connections -----------------------------------------------------------
        if node.routing is not None:
            states = {"alive": 0, "suspect": 0, "unprobed": 0}
            membership = node.membership
            for entry in node.routing.table:
                state = membership.state_of(entry.node_id) or "unprobed"
                states[state] = states.get(state, 0) + 1
            peers = metric_gauge("zmqagents_peers", "Routing-table contacts by membership state.",
                                 labels=["state"])
            for state, n in states.items():
                peers.add_metric([state], n)
            yield peers
            yield counter("membership_failures_total", "Peers declared dead.", membership.stats["declared_dead"])
            yield counter("lookups_total", "Iterative lookups started.", node.routing.stats["lookups_started"])
        yield gauge("neighbours", "Nodes that completed a hello with this one.", len(node.neighbours()))
        if transport.fleet is not None:
            yield gauge("fleet_admitted_peers", "Peers whose fleet certificate this node accepted (and that have "
                        "not expired).", len(transport.fleet.admission))
            yield counter("fleet_subscribers_cut_total", "Times this node closed every connection to its XPUB to "
                          "cut off revoked subscribers (the others reconnect).", t["subscribers_cut"])
        conns = metric_gauge("zmqagents_connections", "Open ZeroMQ links by kind.", labels=["kind"])
        conns.add_metric(["outgoing"], transport.dealer_count)
        conns.add_metric(["inbound"], transport.inbound_count)
        conns.add_metric(["subscription"], transport.subscription_count)
        yield conns
        links = metric_counter("zmqagents_transport_links",
                               "Links to this node's inbox and XPUB, by event. Links libzmq closes for a frame over "
                               "the size limit, or for bytes that are not ZMTP, show only as closed (libzmq 4.3 "
                               "gives no reason); refused handshakes are also dropped_messages_total reasons.",
                                    labels=["event"])
        for event in ("accepted", "authenticated", "closed"):
            links.add_metric([event], t[f"links_{event}"])
        yield links

        # -- the DHT store, and a hook for tasks (present once the node has them) ---------------
        dht = dht_core(node)
        if dht is not None:
            yield gauge("dht_records", "Records held in this node's DHT store.", dht.records)
            yield gauge("dht_provider_entries", "Provider entries held in this node's DHT store.",
                        dht.provider_entries)
            yield gauge("dht_store_bytes", "Bytes of records and provider entries held.", dht.store_bytes)
            refused = metric_counter("zmqagents_dht_refused_records",
                                     "Records and provider entries the store refused, by reason.",
                                     labels=["reason"])
            for key, n in dht.stats.items():
                if key.startswith("refused_"):
                    refused.add_metric([key[len("refused_"):]], n)
            yield refused
        tasks = tasks_by_state(node)
        if tasks is not None:
            fam = metric_gauge("zmqagents_tasks", "Tasks by state.", labels=["state"])
            for state, n in sorted(tasks.items()):
                fam.add_metric([state], n)
            yield fam

        # -- services --------------------------------------------------------------------------
        for service in self.services():
            families = getattr(service, "metric_families", None)  # a source with metrics of its own
            if families is not None:
                yield from families()
            stats = getattr(service, "stats", None)
            kind = getattr(service, "metric_name", None)
            if not stats or not kind:
                continue
            fam = metric_counter(f"zmqagents_{kind}_events", f"{kind} service events by outcome.",
                                 labels=["outcome"])
            for outcome, n in stats.items():
                fam.add_metric([outcome], n)
            yield fam
            pending = getattr(service, "pending", None)
            if isinstance(pending, int):
                yield gauge(f"{kind}_pending", f"Items the {kind} service has waiting.", pending)
        admin = metric_counter("zmqagents_admin_requests", "Admin endpoint requests by outcome.",
                               labels=["outcome"])
        for outcome, n in self.admin_stats.items():
            admin.add_metric([outcome], n)
        yield admin


class AdminServer:
    """Serve /metrics, /livez and /readyz for ``node`` on ``listen``. A sidecar service.

    ``services`` returns the sidecar's services: their ``ready()`` gates /readyz and their
    ``stats`` become metrics. ``expect_peers``: the node was given bootstrap contacts, so it is
    ready only once its routing table holds someone (a node alone by config is ready at once).
    ``checks``: more named readiness conditions (the sidecar adds "not stopping").
    """

    metric_name = "admin"

    def __init__(self, node: "Node", listen: str = DEFAULT_LISTEN, *,
                 services: Callable[[], Iterable[Any]] = tuple, expect_peers: bool = False,
                 checks: Mapping[str, Callable[[], bool]] | None = None):
        self.node = node
        self.listen = listen
        self.services = services
        self.expect_peers = expect_peers
        self.checks = dict(checks or {})
        self.stats: dict[str, int] = {"ok": 0, "not_found": 0, "bad_request": 0, "busy": 0}
        self._ready = False
        self.address = ""
        self._server: asyncio.base_events.Server | None = None
        self._collector: NodeCollector | None = None
        self._connections = 0
        self._dashboard = None  # sidecar/dashboard.py's Dashboard, once /ui is first asked for

    async def start(self) -> None:
        host, port = parse_listen(self.listen)
        self._collector = NodeCollector(self.node, self._metric_sources, self.stats)
        try:
            sock = _listening_socket(host, port)
        except OSError as exc:
            raise AdminError(f"cannot listen on {self.listen} for the admin endpoint: {exc.strerror}") from None
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)
        sock = self._server.sockets[0].getsockname()
        self.address = f"[{sock[0]}]:{sock[1]}" if ":" in sock[0] else f"{sock[0]}:{sock[1]}"
        self._ready = True
        log.info("admin endpoint on http://%s (/metrics, /livez, /readyz)", self.address)

    def ready(self) -> bool:
        return self._ready

    def _metric_sources(self) -> list[Any]:
        """The services whose stats become metrics, and the dashboard once /ui was asked for (its crawls)."""
        sources = [s for s in self.services() if s is not self]
        return sources if self._dashboard is None else [*sources, self._dashboard]

    def metrics(self) -> bytes:
        """The node's metrics and the process's (``process_*``), in the Prometheus text format."""
        assert self._collector is not None, "start() first"
        return render([*self._collector.collect(), *process_families()])

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Stop serving (``drain_timeout`` is part of the service protocol; scrapes need no drain)."""
        self._ready = False
        if self._dashboard is not None:
            await self._dashboard.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # -- health ------------------------------------------------------------------------------

    def failing_checks(self) -> list[str]:
        """Names of the readiness checks that fail now (empty: ready)."""
        node = self.node
        failing = []
        if not node.running or not node.transport.endpoint:
            failing.append("inbox")
        elif self.expect_peers and len(node.routing.table) == 0:
            failing.append("joined")
        for service in self.services():
            ready = getattr(service, "ready", None)
            if service is not self and ready is not None and not ready():
                failing.append(getattr(service, "metric_name", type(service).__name__))
        failing += [name for name, ok in self.checks.items() if not ok()]
        return failing

    # -- HTTP --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            self.stats["busy"] += 1
            writer.close()
            return
        self._connections += 1
        try:
            status, ctype, body, head_only = await self._answer(reader)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode("latin-1")
            writer.write(head if head_only else head + body)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            pass  # the client went away or stalled; nothing to tell it
        finally:
            self._connections -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes, bool]:
        """(status line, content type, body, whether to send the head only) for one request."""
        head_only = False
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            self.stats["bad_request"] += 1
            return "431 Request Header Fields Too Large", "text/plain", b"request head too large\n", head_only
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            self.stats["bad_request"] += 1
            return "400 Bad Request", "text/plain", b"incomplete request\n", head_only
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.stats["bad_request"] += 1
            return "400 Bad Request", "text/plain", b"expected: GET /metrics HTTP/1.1\n", head_only
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self.stats["bad_request"] += 1
            return "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n", head_only
        head_only = method == b"HEAD"
        if target == b"/metrics":
            # The classic text format: every scraper reads it (Prometheus asks for it as a fallback
            # in its Accept header), so OpenMetrics is not offered.
            self.stats["ok"] += 1
            return "200 OK", CONTENT_TYPE, self.metrics(), head_only
        if target == b"/livez":
            self.stats["ok"] += 1
            return "200 OK", "text/plain", b"ok\n", head_only
        if target == b"/readyz":
            self.stats["ok"] += 1
            failing = self.failing_checks()
            if failing:
                return "503 Service Unavailable", "text/plain", ("not ready: " + ", ".join(failing) + "\n").encode(), head_only
            return "200 OK", "text/plain", b"ready\n", head_only
        if target == b"/ui" or target.startswith(b"/ui/"):
            status, ctype, body = await self._ui(target)
            self.stats["ok" if status.startswith("200") else "not_found"] += 1
            return status, ctype, body, head_only
        self.stats["not_found"] += 1
        return "404 Not Found", "text/plain", b"try /metrics, /livez, /readyz or /ui\n", head_only

    async def _ui(self, target: bytes) -> tuple[str, str, bytes]:
        """The web dashboard (sidecar/dashboard.py), imported and built on its first request only."""
        if self._dashboard is None:
            from .dashboard import Dashboard

            self._dashboard = Dashboard(self.node)
        return await self._dashboard.answer(target.decode("latin-1"))


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket. Made here rather than by start_server(host, port): uvloop
    resolves a host in libuv's thread pool, which would start 4 threads that then idle for the
    life of the process. A name (not an address) is resolved once, synchronously."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not _is_address(host):
        family, _, _, _, (host, *_) = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(MAX_CONNECTIONS)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _is_address(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            continue
    return False


def _version() -> str:
    from .. import __version__

    return __version__


def create(sidecar) -> AdminServer:
    """The sidecar's factory (``[admin] enabled``): no IO here, :meth:`AdminServer.start` does it."""
    return AdminServer(
        sidecar.node, sidecar.config.admin.listen,
        services=lambda: list(sidecar.services.values()),
        expect_peers=bool(sidecar.config.node.bootstrap),
        checks={"stopping": lambda: not sidecar.stopping},
    )
