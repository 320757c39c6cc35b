"""A crawl of the mesh's routing tables into a graph of nodes and links (sans-IO).

Every node answers ``zmqagents.peers`` with its routing table (``protocols/node.md``), and
``task.describe`` with the capabilities it serves (``protocols/tasks.md`` §3.1). Asking the nodes
we hear of, breadth first from a few seeds, draws the part of the mesh they can see: a node for
each contact met, an edge for each table entry (with the table owner's view of that contact:
membership state and RTT).

Why a core of its own: what the crawl decides (whom to ask next, how fast, what to believe of an
answer, when to stop) is the same for ``zmqagents mesh graph`` and for the admin dashboard, and
it is what a hostile answer must not break. So it lives here, with no IO: the driver
(``shell/crawling.py``) sends the :class:`Ask` s it is given and reports each answer or failure
with the time; the core never waits, reads a clock or touches a socket.

Bounds, all counted in :attr:`Crawl.stats` when they bite:

- at most ``max_nodes`` nodes are kept (asked or not); entries naming further nodes are dropped
  (``beyond_max_nodes``), so a table full of invented ids cannot grow the graph;
- at most ``max_entries`` entries of one table are read (``tables_truncated``, ``entries_truncated``);
- at most ``in_flight`` asks wait for an answer at once, and asks leave at ``rate`` a second
  (a token bucket of ``burst``), so a crawl never floods the mesh it looks at;
- an answer that is not a table is ``bad_answers`` (the node is drawn as ``bad_answer``); an
  entry that does not check out (id not 64 hex, a contact that does not parse or whose key is
  not that id, an unknown state, a bad RTT, the node itself) is ``bad_entries`` and skipped;
- capability names are kept only when they look like names (``bad_capabilities`` otherwise),
  at most ``max_capabilities`` per node.

Memory is thus bounded by ``max_nodes`` × ``max_entries`` edges of fixed size, whatever the
mesh answers (the envelope decoder has already bounded each answer's size and container counts).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..errors import InvalidArgument
from ..identity import MAX_ENDPOINT_LEN, Contact, IdentityError
from .ratelimit import TokenBucket

PEERS = "peers"  # an ask for the node's routing table (zmqagents.peers)
DESCRIBE = "describe"  # an ask for the capabilities it serves (task.describe)

# What the crawl learnt of a node: it answered with a table; it did not answer; it answered with
# something that is not a table; nothing yet (not asked, or its answer had not come when stop() ended
# the crawl at its deadline).
ANSWERED, UNREACHABLE, BAD_ANSWER, UNVISITED = "answered", "unreachable", "bad_answer", "unvisited"
# Membership's view of a contact in a table (protocols/node.md, zmqagents.peers).
ENTRY_STATES = ("alive", "suspect", "unprobed")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
MAX_NODES_CEILING = 10_000  # what one crawl may be asked to hold at most


@dataclass(frozen=True)
class CrawlLimits:
    """How much one crawl may hold and send. The defaults draw a mesh of a couple of hundred nodes
    in seconds while asking no node more than twice and the mesh at most ``rate`` times a second."""

    max_nodes: int = 200
    max_entries: int = 512  # a Kademlia table (k=20) holds this many only in a mesh of ~2**25 nodes
    max_capabilities: int = 32
    in_flight: int = 8
    rate: float = 20.0  # asks a second
    burst: float = 8.0
    capabilities: bool = True  # also ask each node that answered what it serves

    def __post_init__(self) -> None:
        ints = {"max_nodes": (1, MAX_NODES_CEILING), "max_entries": (1, 100_000),
                "max_capabilities": (0, 1024), "in_flight": (1, 1024)}
        for name, (low, high) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgument(f"CrawlLimits.{name} must be an integer from {low} to {high}, got {value!r}")
        for name in ("rate", "burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise InvalidArgument(f"CrawlLimits.{name} must be a positive number, got {value!r}")
        if self.burst < 1:
            raise InvalidArgument("CrawlLimits.burst must be at least 1 (one ask)")


@dataclass(frozen=True)
class Ask:
    """A request the driver sends: ``what`` (PEERS or DESCRIBE) to the node at ``contact``."""

    node_id: bytes
    contact: str
    what: str


@dataclass
class _Node:
    node_id: bytes
    contact: str
    local: bool = False
    state: str = UNVISITED
    table_size: int | None = None
    capabilities: list[str] | None = None
    seen: dict[str, int] = field(default_factory=dict)  # entry state -> tables listing it so


@dataclass(slots=True)
class _Edge:  # one per table entry read: kept small (a crawl of 100 nodes holds ~5,000)
    state: str
    rtt_ms: float | None


class Crawl:
    """One crawl: seed it, then loop ``next_asks(now)`` / ``answered`` or ``failed`` until ``done``."""

    def __init__(self, limits: CrawlLimits | None = None, *, now: float = 0.0):
        self.limits = limits or CrawlLimits()
        self.stats: dict[str, int] = {
            "asked_peers": 0, "asked_describe": 0, "answered": 0, "unreachable": 0, "bad_answers": 0,
            "described": 0, "describe_failed": 0, "bad_entries": 0, "tables_truncated": 0,
            "entries_truncated": 0, "beyond_max_nodes": 0, "bad_capabilities": 0,
        }
        self._nodes: dict[bytes, _Node] = {}
        self._edges: dict[tuple[bytes, bytes], _Edge] = {}
        self._queue: deque[Ask] = deque()
        self._pending: set[tuple[bytes, str]] = set()
        self._bucket = TokenBucket(self.limits.burst, now)
        self.started = now
        self.finished: float | None = None

    # -- what the driver tells it -------------------------------------------------------------

    def seed(self, contact: str) -> bool:
        """Start from ``contact`` (``PUBLICKEY@ENDPOINT``); False if it does not parse or is known."""
        try:
            node_id = Contact.parse(contact).node_id
        except IdentityError:
            return False
        return self._add(node_id, contact.strip())

    def local(self, contact: str, table: Any, capabilities: Any = None) -> None:
        """The crawling node itself, with its own table (read, not asked): the dashboard's root."""
        node_id = Contact.parse(contact).node_id
        self._add(node_id, contact, queue=False)
        node = self._nodes[node_id]
        node.local = True
        self._read_table(node, table)
        if capabilities is not None:
            self._read_capabilities(node, capabilities)

    def next_asks(self, now: float) -> list[Ask]:
        """The asks to send now: as many as the in-flight bound and the rate allow."""
        out = []
        limits = self.limits
        while self._queue and len(self._pending) < limits.in_flight:
            if not self._bucket.take(now, limits.rate, limits.burst):
                break
            ask = self._queue.popleft()
            self._pending.add((ask.node_id, ask.what))
            self.stats["asked_peers" if ask.what == PEERS else "asked_describe"] += 1
            out.append(ask)
        return out

    def next_timer(self, now: float) -> float | None:
        """When asks held back by the rate may leave; None when nothing waits for the rate."""
        if not self._queue or len(self._pending) >= self.limits.in_flight:
            return None
        tokens = self._bucket.refill(now, self.limits.rate, self.limits.burst)
        return now + max(0.0, 1.0 - tokens) / self.limits.rate

    def answered(self, ask: Ask, body: Any, now: float) -> None:
        """``ask`` was answered with ``body`` (anything: it is checked here)."""
        if not self._settle(ask, now):
            return
        node = self._nodes[ask.node_id]
        if ask.what == DESCRIBE:
            self.stats["described"] += 1
            self._read_capabilities(node, body)
        elif not isinstance(body, list):
            self.stats["bad_answers"] += 1
            node.state = BAD_ANSWER
        else:
            self.stats["answered"] += 1
            self._read_table(node, body)
            if self.limits.capabilities:
                self._queue.append(Ask(node.node_id, node.contact, DESCRIBE))
        self._check_done(now)

    def serves_nothing(self, ask: Ask, now: float) -> None:
        """A DESCRIBE ask answered with an error: the node serves no capabilities."""
        if self._settle(ask, now):
            self.stats["described"] += 1
            self._nodes[ask.node_id].capabilities = []
            self._check_done(now)

    def failed(self, ask: Ask, now: float) -> None:
        """``ask`` got no answer (timeout, unreachable)."""
        if not self._settle(ask, now):
            return
        if ask.what == DESCRIBE:
            self.stats["describe_failed"] += 1
        else:
            self.stats["unreachable"] += 1
            self._nodes[ask.node_id].state = UNREACHABLE
        self._check_done(now)

    def stop(self, now: float) -> None:
        """End the crawl now (a deadline): what was not asked stays unvisited."""
        self._queue.clear()
        self._pending.clear()
        if self.finished is None:
            self.finished = now

    @property
    def done(self) -> bool:
        return not self._queue and not self._pending

    @property
    def messages_sent(self) -> int:
        return self.stats["asked_peers"] + self.stats["asked_describe"]

    def graph(self) -> dict[str, Any]:
        """``{"nodes": [...], "edges": [...], "crawl": {...}}``, JSON-ready, nodes in discovery order."""
        return {"nodes": self.nodes(), "edges": list(self.edges()), "crawl": self.summary()}

    def nodes(self) -> list[dict[str, Any]]:
        return [{"id": n.node_id.hex(), "contact": n.contact, "state": n.state, "local": n.local,
                 "table_size": n.table_size, "capabilities": n.capabilities,
                 "seen": {state: n.seen.get(state, 0) for state in ENTRY_STATES}}
                for n in self._nodes.values()]

    def edges(self) -> Iterator[dict[str, Any]]:
        """The edges one at a time, so a caller can encode a large graph without holding them all as dicts."""
        for (a, b), e in self._edges.items():
            yield {"from": a.hex(), "to": b.hex(), "state": e.state, "rtt_ms": e.rtt_ms}

    def summary(self) -> dict[str, Any]:
        """What the crawl did: nodes found, messages sent, seconds, and every counter of :attr:`stats`."""
        end = self.finished
        return {"nodes_found": len(self._nodes), "messages_sent": self.messages_sent,
                "seconds": None if end is None else round(end - self.started, 3), **self.stats}

    # -- inside ---------------------------------------------------------------------------------

    def _add(self, node_id: bytes, contact: str, queue: bool = True) -> bool:
        if node_id in self._nodes:
            return False
        if len(self._nodes) >= self.limits.max_nodes:
            self.stats["beyond_max_nodes"] += 1
            return False
        self._nodes[node_id] = _Node(node_id, contact)
        if queue:
            self._queue.append(Ask(node_id, contact, PEERS))
        return True

    def _settle(self, ask: Ask, now: float) -> bool:
        """Forget ``ask`` as pending; False if it was not (an answer after stop(), or twice)."""
        key = (ask.node_id, ask.what)
        if key not in self._pending:
            return False
        self._pending.discard(key)
        return True

    def _check_done(self, now: float) -> None:
        if self.done and self.finished is None:
            self.finished = now

    def _read_table(self, node: _Node, table: Any) -> None:
        if not isinstance(table, list):
            return
        node.state = ANSWERED
        rows: Iterable[Any] = table
        if len(table) > self.limits.max_entries:
            self.stats["tables_truncated"] += 1
            self.stats["entries_truncated"] += len(table) - self.limits.max_entries
            rows = table[:self.limits.max_entries]
        kept = 0
        for row in rows:
            entry = _entry(row)
            if entry is None or entry[0] == node.node_id:
                self.stats["bad_entries"] += 1
                continue
            peer_id, contact, state, rtt = entry
            if peer_id not in self._nodes and not self._add(peer_id, contact):
                continue
            kept += 1
            peer = self._nodes[peer_id]
            peer_id = peer.node_id  # the one bytes object per node, shared by every edge to it
            if (node.node_id, peer_id) not in self._edges:
                peer.seen[state] = peer.seen.get(state, 0) + 1
            self._edges[(node.node_id, peer_id)] = _Edge(state, rtt)
        node.table_size = kept

    def _read_capabilities(self, node: _Node, records: Any) -> None:
        names: list[str] = []
        for record in records if isinstance(records, list) else ():
            name = record.get("name") if isinstance(record, dict) else None
            if not isinstance(name, str) or not NAME.match(name):
                self.stats["bad_capabilities"] += 1
                continue
            if len(names) >= self.limits.max_capabilities:
                self.stats["bad_capabilities"] += 1
                break
            if name not in names:
                names.append(name)
        if not isinstance(records, list):
            self.stats["bad_capabilities"] += 1
        node.capabilities = names


_STATES = {state: state for state in ENTRY_STATES}  # one str object per state, shared by every edge


def _entry(row: Any) -> tuple[bytes, str, str, float | None] | None:
    """(node id, contact, state, rtt_ms) of one table entry, or None if it does not check out."""
    if not isinstance(row, dict):
        return None
    id_text, contact_text, state, rtt = row.get("node_id"), row.get("contact"), row.get("state"), row.get("rtt_ms")
    if not isinstance(id_text, str) or len(id_text) != 64 or not isinstance(contact_text, str):
        return None
    try:
        node_id = bytes.fromhex(id_text)
        contact = Contact.parse(contact_text)
    except (ValueError, IdentityError):
        return None
    if contact.node_id != node_id or len(contact.endpoint) > MAX_ENDPOINT_LEN or state not in ENTRY_STATES:
        return None
    if rtt is not None and (isinstance(rtt, bool) or not isinstance(rtt, (int, float)) or not 0 <= rtt < math.inf):
        return None
    return node_id, str(contact), _STATES[state], None if rtt is None else round(float(rtt), 3)
