"""Kademlia routing: the FIND_NODE protocol core (sans-IO).

Free of IO, clocks and global randomness (the wire rules are in ``protocols/routing.md``; Kademlia is
Maymounkov & Mazières, IPTPS 2002). Three modules: the k-bucket table, a node's partial view of the mesh
(:class:`~zmqagents.core.routing_table.RoutingTable`, in ``routing_table.py``); the iterative lookup state
machine (:class:`~zmqagents.core.lookup.Lookup`, in ``lookup.py``); and this one, which owns a table and
runs lookups over the wire:

:class:`RoutingCore` — the protocol: answers ``kad.find_node`` with up to
    ``k`` closest contacts, runs iterative lookups (:class:`~.lookup.Lookup`)
    by sending ``kad.find_node`` envelopes and matching ``kad.nodes`` answers
    by RPC id (the answer's ``re`` is the request's ``id``), joins a mesh
    (bootstrap contacts -> lookup of our own id -> refresh of every bucket
    farther than our closest neighbour) and refreshes stale buckets on a
    timer. Its envelopes are *unsequenced* (no ``seq``/``ep``): they bypass
    the reliable delivery core, because a lookup routes around a lost message
    rather than retransmitting it.

Driving a RoutingCore (the same shape as every core in this package)::

    core = RoutingCore(identity.contact("tcp://10.0.0.5:7000"), random.Random(seed))
    core.join([bootstrap_contact], now)
    core.receive(env, now)          # every envelope whose type starts with "kad." (src authenticated)
    core.observe(env.src, now)      # every other envelope from a peer: evidence it is alive
    core.tick(now)                  # whenever now >= core.next_timer()
    core.take_outgoing()            # envelopes to send; core.contact_for(env.dst) says where
    core.take_events()              # LookupDone, Joined, Introduced
    lid = core.lookup(target, now)  # -> LookupDone(lookup_id=lid, ...) later

Public API (``now``: the caller's monotonic clock in seconds)::

    RoutingCore(contact, rng, config=None, *, advertise=True, identity=None)   # identity: signs kad.fwd
        .node_id, .contact, .table (RoutingTable), .config (RoutingConfig), .stats (dict of counters)
        .join(bootstrap: list[Contact], now) -> lookup id      # emits LookupDone("join") then Joined
        .lookup(target: bytes, now, *, purpose="lookup", find=False) -> lookup id   # emits LookupDone
        .closest(target, n=None) -> list[Contact]                # from the table, no traffic
        .observe(Contact | node_id, now, rtt=None)               # seen alive (an id only refreshes)
        .forget(node_id) -> bool                                 # dead: remove, promote a replacement
        .take_checks() -> list[Entry]                            # contacts to probe (liveness layer)
        .contact_for(node_id) -> Contact | None                  # where to send an outgoing envelope
        .rto -> float, .lookups_running -> int, .advertised -> [key, endpoint] | None, .sample_rtt(rtt)
        .linked = callable(node_id) -> bool   # set by the shell: a connection to it is open (join refreshes
                                              # then open at most join_refresh_dials new ones each, and with
                                              # an identity, lookups for an id ask a node with none through
                                              # the node that listed it: kad.fwd, routing_fwd.py)
        .receive(env, now), .tick(now), .next_timer(), .take_outgoing(), .take_events()
    LookupDone(lookup_id, target, contacts, ok, rounds, hops, queries, failures, late, duration,
               purpose, reason, dials)
    Joined(ok, contacts, refreshes)
    Introduced(contact)      # a FIND_NODE's sender named an endpoint for itself the table did not hold

For a liveness layer (SWIM): probe what take_checks() returns (and whatever else it probes, e.g.
``iter(table)``); report a live peer with observe(), a dead one with forget(). For a simulator:
a node's id must be ``node_id_of(public_key)`` of its contact; tables can be warm-started by
calling observe() with other nodes' contacts instead of running every join.

Everything a peer sends is validated; garbage is counted in ``stats`` and
dropped, never raised. Every bound that is hit is counted too.

Costs (2-core reference machine): answering a FIND_NODE ~18 µs with a ~180-contact table;
handling an answer inside a lookup (20 contacts checked and merged, the next query built) ~30 µs;
joining a 500-node mesh one by one costs each node ~450 messages sent and as many received.
The table's memory: ``routing_table.py``.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, fields
from typing import Any, Callable

from ..envelope import Envelope, EnvelopeError, decode
from ..identity import Contact, Identity, node_id_of
from .lookup import LOOKUP_STAT_KEYS, NODE_ID_LEN, Lookup, contact_fields
from .routing_fwd import FORWARD, MAX_INNER, MAX_ROUTE, forward_body, parse_forward
from .outputs import CoreOutputs
from .routing_table import TABLE_STAT_KEYS, Entry, RoutingTable
from ..errors import InvalidArgument

__all__ = [
    "PREFIX", "FIND_NODE", "NODES", "RoutingConfig", "RoutingCore", "LookupDone", "Joined", "Introduced",
    "addressed_here", "QueryDestinations",
]

PREFIX = "kad."  # every type this core handles starts with it
FIND_NODE = "kad.find_node"
NODES = "kad.nodes"

# Ids of forwarded messages taken lately, remembered so that a replayed query is not verified and signed
# again (its cost to us, ~0.3 ms, against none to the replayer); an older replay costs us that once more.
FWD_SEEN = 1024

STAT_KEYS = TABLE_STAT_KEYS + LOOKUP_STAT_KEYS + (
    "received", "sent", "find_node_received", "find_node_sent", "nodes_sent", "nodes_received",
    "malformed", "misdirected", "from_self", "from_mismatch", "other_types",
    "unmatched", "late_responses", "rpc_timeouts",
    "lookups_started", "lookups_ok", "lookups_failed", "lookups_merged", "lookups_queued", "lookups_refused",
    "refreshes", "joins", "rejoins",
    # kad.fwd (protocols/routing.md 5.6): queries we sent along a route, answers to them, messages we
    # passed on for others, fail notices we sent (no connection to the next hop) and received (the query
    # then went direct), forwarded messages refused (malformed, bad inner envelope or signature) and
    # forwarded queries seen before (a replay costs a verification and a signature: answered once)
    "forwarded_sent", "forwarded_answers", "forwards_passed", "forward_unlinked", "forward_fallbacks",
    "forward_bad", "forward_replayed",
)


@dataclass
class RoutingConfig:
    """Tuning of the routing core. The reasons for each default are in protocols/routing.md."""

    k: int = 20  # bucket size and lookup width: the paper's value; a bucket of 20 all failing at once is unlikely
    alpha: int = 3  # queries in flight per lookup: the paper's value; more buys little latency for more load
    # Queries in flight in a join's lookup of our own id; Node.start() waits for that lookup. With 3 it
    # takes ~8 round trips, with 10 ~3: when joins are bound by round trips (sim, 100 nodes: p50 82 -> 35
    # ms at 5 ms one-way) 10 is much faster. On the 2-core box, where 100 real nodes joining at once are
    # bound by CPU (CURVE handshakes), 10 cost 17 % more join CPU, did not make all_started sooner, and
    # its bursts coincided with a false "failed" in two overloaded runs (protocols/routing.md 6.1).
    # So the default stays alpha; raise it for long-RTT (WAN) meshes.
    join_alpha: int = 3
    # Termination window of the bucket refreshes that end a join (6.1): such a refresh is done once the
    # 8 closest to its random target answered, not the k closest. A join refreshes ~log2(N/k) buckets,
    # and with the full window each asks ~20 nodes: at N=100 most of a join's queries. With 8 (sim,
    # 100 nodes joining, 2 seeds): 96 instead of 171 FIND_NODEs per node, tables of p50 54 instead
    # of 62 contacts, same detection; real nodes (bench/overlay.py, 100 joining at once): a third less
    # join CPU. The hourly refreshes (6.2) keep the full window, so far buckets fill up over time.
    join_refresh_k: int = 8
    # New connections (DEALERs, each a CURVE handshake of ~2 ms of CPU on both ends) one of those join
    # refreshes may open, when the core is told which nodes are linked (RoutingCore.linked): past it, it
    # asks only nodes it already holds a connection to (either way), and skips the others (6.1). The
    # self-lookups of a join and the hourly refreshes are never limited: the k closest must hear of us.
    join_refresh_dials: int = 3
    replacements: int = 8  # replacement cache per full bucket: covers losing 40% of a bucket between refreshes
    query_timeout: float = 2.0  # hard timeout of one FIND_NODE (s): after it the contact counts as failed
    late_initial: float = 0.5  # late limit before any RTT is known (s): above most WAN RTTs; a late peer is not failed
    late_factor: float = 3.0  # in a lookup where peers answered, silence longer than 3x the slowest answer is late
    late_min: float = 0.05  # floor of the late limit (s): above scheduling noise on a loaded host
    late_max: float = 1.0  # ceiling (s): a lookup never waits more than this on one silent peer
    refresh_interval: float = 3600.0  # a bucket no lookup touched for this long is refreshed (the paper's hour)
    refresh_check: float = 60.0  # how often buckets are checked for staleness (s, jittered +/-10%)
    max_lookups: int = 8  # lookups running at once; more are queued
    max_queued_lookups: int = 256  # lookups waiting to start; beyond this a lookup fails at once ("busy")
    max_queries: int = 0  # queries one lookup may send (0 = 10 * k)
    stale_after: int = 5  # consecutive failed RPCs that remove a contact with no replacement (the paper's 5)
    max_checks: int = 64  # contacts recorded for a liveness check, awaiting take_checks()
    max_seeds: int = 16  # bootstrap contacts remembered, to re-join while the table holds fewer than k contacts
    join_retry: float = 2.0  # first re-join (s) while the table holds fewer than k; doubles up to refresh_check

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise InvalidArgument(f"RoutingConfig.{f.name} must be a non-negative number, got {value!r}")
        for name in ("k", "alpha", "join_alpha", "join_refresh_k", "query_timeout", "late_initial", "late_min",
                     "refresh_interval", "refresh_check", "max_lookups", "stale_after"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"RoutingConfig.{name} must be positive")
        if not self.late_min <= self.late_max <= self.query_timeout or self.late_initial > self.late_max:
            raise InvalidArgument("RoutingConfig needs late_min <= late_max <= query_timeout and late_initial <= late_max")
        if self.late_factor < 1:
            raise InvalidArgument("RoutingConfig.late_factor must be at least 1")


@dataclass(slots=True)
class LookupDone:
    """A lookup finished. ``contacts``: the (up to) k closest nodes that answered, closest first.

    ``ok``: it converged (the k closest known candidates all answered). ``rounds``: the deepest hop that
    answered; ``hops``: the hop of the closest node found. ``purpose``: "lookup", "join" or "refresh".
    ``reason``: "" if ok, else "failed" (nobody answered / budget spent), "no_contacts", "busy".
    ``dials``: nodes asked that no connection was open to, counted only for a lookup given a dial budget.
    """

    lookup_id: int
    target: bytes
    contacts: list[Contact]
    ok: bool
    rounds: int = 0
    hops: int = 0
    queries: int = 0
    failures: int = 0
    late: int = 0
    duration: float = 0.0
    purpose: str = "lookup"
    reason: str = ""
    dials: int = 0


@dataclass(slots=True)
class Joined:
    """The join's lookup of our own id finished. ``ok``: someone answered; ``contacts``: table size."""

    ok: bool
    contacts: int
    refreshes: int = 0


@dataclass(slots=True)
class Introduced:
    """A node's FIND_NODE named, in its ``from``, an endpoint for itself that the table did not hold: it is
    new, or it moved (restarted on another port). Its own authenticated word, unlike a contact relayed in
    NODES, so whoever keeps connections may replace an older endpoint for it with this one."""

    contact: Contact


class _Job:
    __slots__ = ("id", "target", "purpose", "lookup", "seeds", "armed", "find", "width", "dials", "routes")

    def __init__(self, lid: int, target: bytes, purpose: str, seeds: list[Any] | None, find: bool = False,
                 width: int | None = None, dials: int | None = None):
        self.id = lid
        self.target = target
        self.purpose = purpose
        self.lookup: Lookup | None = None
        self.seeds = seeds
        self.find = find  # done as soon as the target itself answers (Lookup.stop_at_target)
        self.width = width  # the lookup's termination window (None: k)
        self.dials = dials  # new connections the lookup may open (None: no limit)
        self.armed: float | None = None  # the earliest late deadline in the heap for this job
        # node id -> the route its answer came back along (forwarded queries only; at most max_queries)
        self.routes: dict[bytes, tuple[bytes, ...]] = {}


class _Rpc:
    __slots__ = ("job", "nid", "pk", "ep", "sent", "route")

    def __init__(self, job: _Job, nid: bytes, pk: bytes, ep: str, sent: float, route: tuple[bytes, ...] | None):
        self.job = job
        self.nid = nid
        self.pk = pk
        self.ep = ep
        self.sent = sent
        self.route = route  # the nodes it was forwarded through (kad.fwd), or None if sent direct


def addressed_here(env: Envelope, node_id: bytes, stats: dict[str, int]) -> bool:
    """Whether a core that sends queries should process ``env``: counts it in ``received``, and counts
    (``malformed``, ``from_self``, ``misdirected``) and refuses one whose ``src`` is not a node id, that
    comes from this node, or that is meant for another node. The routing and DHT cores screen alike."""
    stats["received"] += 1
    src = env.src
    if type(src) is not bytes or len(src) != NODE_ID_LEN:
        stats["malformed"] += 1
        return False
    if src == node_id:
        stats["from_self"] += 1
        return False
    if env.dst is not None and env.dst != node_id:
        stats["misdirected"] += 1
        return False
    return True


class QueryDestinations:
    """Where the queries still awaiting an answer went: node id -> (key, endpoint), counted per query.

    A lookup queries candidates that are not in the routing table, so the transport may not know how to
    reach them; a core's ``contact_for()`` looks here first. An entry lives only while a query to that
    node is pending (``release`` on its answer or hard timeout), so it never outgrows the queries in flight.
    """

    __slots__ = ("_dests",)

    def __init__(self) -> None:
        self._dests: dict[bytes, list[Any]] = {}  # node id -> [key, endpoint, pending queries]

    def add(self, nid: bytes, pk: bytes, endpoint: str) -> None:
        """One more query sent to ``nid`` at ``pk``@``endpoint``."""
        d = self._dests.get(nid)
        if d is None:
            self._dests[nid] = [pk, endpoint, 1]
        else:
            d[2] += 1

    def release(self, nid: bytes) -> None:
        """One query to ``nid`` is over (answered or timed out)."""
        d = self._dests.get(nid)
        if d is not None:
            d[2] -= 1
            if d[2] <= 0:
                del self._dests[nid]

    def get(self, nid: bytes) -> Contact | None:
        d = self._dests.get(nid)
        return None if d is None else Contact(d[0], d[1])


class RoutingCore(CoreOutputs):
    """The Kademlia protocol core of one node. Call a method, then drain take_outgoing() and take_events().

    ``contact`` is this node's own contact (its public key fixes the node id); it is sent in every
    FIND_NODE so the peer can add us. Pass ``advertise=False`` for a node that cannot be reached
    (outbound only): it then never enters other nodes' tables.
    ``now`` is any monotonic clock in seconds, the same one for every call.
    """

    def __init__(self, contact: Contact, rng: random.Random, config: RoutingConfig | None = None, *,
                 advertise: bool = True, identity: Identity | None = None):
        f = contact_fields(contact)
        if f is None:
            raise InvalidArgument(f"malformed own contact {contact!r:.80}")
        self.config = cfg = config or RoutingConfig()
        self.contact = contact
        self.node_id: bytes = node_id_of(f[0])
        self._rng = rng
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.table = RoutingTable(self.node_id, cfg.k, replacements=cfg.replacements, stale_after=cfg.stale_after,
                                  max_checks=cfg.max_checks, stats=self.stats)
        self._me = [f[0], f[1]] if advertise else None  # wire form, shared by every FIND_NODE we send
        self._max_queries = cfg.max_queries or 10 * cfg.k
        CoreOutputs.__init__(self)
        self._rpcs: dict[bytes, _Rpc] = {}  # rpc id (= FIND_NODE envelope id) -> pending query
        self._fifo: deque[Any] = deque()  # (hard deadline, rpc id) in send order: every query has the same timeout
        self._late: list[Any] = []  # heap of (late deadline, serial, job): when to re-pump a lookup
        self._serial = 0
        self._dests = QueryDestinations()  # for contact_for()
        self._active: dict[int, _Job] = {}
        self._queue: deque[_Job] = deque()
        self._targets: dict[bytes, _Job] = {}  # target -> running or queued job (duplicates merge)
        self._next_id = 1
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._samples = 0  # RTT samples taken (counted up to 1000)
        self._refresh_at: float | None = None
        self._seeds: list[Contact] = []
        self._joining = 0  # join lookups running or queued
        self._join_pending = False  # join() was called and Joined not yet reported
        self._retry = cfg.join_retry
        self._settle = 0  # self-lookups still to repeat after a join, whatever the table size
        # node id -> whether a connection to it is open (set by the shell that owns the connections);
        # None: unknown, and join refreshes are not limited in the connections they open
        self.linked: Callable[[bytes], bool] | None = None
        # Signs forwarded queries and answers (kad.fwd): with it and ``linked`` set, a query to a node we
        # hold no connection to goes through the node that listed it (protocols/routing.md 5.6).
        if identity is not None and identity.node_id != self.node_id:
            raise InvalidArgument("the identity that signs forwarded messages must be this node's")
        self._identity = identity
        # Ids of the forwarded queries answered lately, so that a replay is not verified and signed again.
        self._fwd_seen: OrderedDict[bytes, None] = OrderedDict()

    # -- application side ----------------------------------------------------------------------

    def join(self, bootstrap: list[Any], now: float) -> int:
        """Join the mesh: look up our own id starting from ``bootstrap`` contacts (plus whatever the table
        holds), then refresh every bucket farther than the closest neighbour found. Emits LookupDone
        (purpose "join") and Joined. Returns the lookup id. The bootstrap contacts are remembered
        (up to max_seeds). The lookup of our own id is repeated once join_retry seconds later (nodes
        that joined at the same time as us were not yet known to anyone), and then again, with the delay
        doubling up to refresh_check, while the table holds fewer than k contacts (a bootstrap that knew
        few nodes, a mesh still forming, every contact lost), so a node does not stay cut off."""
        seeds = []
        for c in bootstrap:
            f = contact_fields(c)
            if f is None:
                raise InvalidArgument(f"malformed bootstrap contact {c!r:.80}")
            seeds.append(Contact(f[0], f[1]))
        self._seeds = seeds[: self.config.max_seeds]
        self.stats["joins"] += 1
        self._join_pending = True
        self._retry = self.config.join_retry
        self._settle = 1
        self._arm_refresh(now)
        return self._submit(self.node_id, now, "join", seeds)

    def lookup(self, target: bytes, now: float, *, purpose: str = "lookup", find: bool = False) -> int:
        """Start an iterative FIND_NODE for ``target``; its result comes as LookupDone with this id.
        A lookup for a target already being looked up shares that lookup (and its id); a ``find`` only
        shares another ``find`` or a full lookup, never the other way round.

        ``find``: look for the node whose id is ``target`` rather than for the k closest to it: done
        (ok) as soon as that node answers, so a node in our table is found in one round trip."""
        if type(target) is not bytes or len(target) != NODE_ID_LEN:
            raise InvalidArgument(f"lookup target must be {NODE_ID_LEN} bytes")
        if self._refresh_at is None:
            self._arm_refresh(now)
        return self._submit(target, now, purpose, None, find)

    def closest(self, target: bytes, n: int | None = None) -> list[Contact]:
        """The n (default k) closest contacts the table holds (no network traffic)."""
        return [e.contact for e in self.table.closest(target, n)]

    def observe(self, who: Contact | bytes, now: float, rtt: float | None = None) -> int | bool:
        """Evidence that a peer is alive: a Contact is added or updated (see RoutingTable.update); a bare
        node id (e.g. the authenticated src of any envelope) only refreshes a contact already known."""
        if type(who) is bytes:
            return self.table.touch(who, now, rtt)
        assert isinstance(who, Contact)
        return self.table.update(who, now, rtt)

    def forget(self, node_id: bytes) -> bool:
        """The liveness layer declared ``node_id`` dead: remove it (its freshest replacement is promoted)."""
        return self.table.remove(node_id)

    def take_checks(self) -> list[Entry]:
        """Contacts the liveness layer should probe (see RoutingTable.take_checks)."""
        return self.table.take_checks()

    def contact_for(self, node_id: bytes) -> Contact | None:
        """Where to send an envelope for ``node_id``: the table's contact, or the one a pending query was
        sent to (lookup candidates are not in the table). None if unknown (e.g. an answer to a peer that
        did not advertise itself: send it back on the connection the request came in on)."""
        c = self._dests.get(node_id)
        if c is not None:
            return c
        e = self.table.find(node_id)
        return None if e is None else e.contact

    @property
    def advertised(self) -> list[Any] | None:
        """Our own contact in wire form ``[key, endpoint]`` as sent in ``from``, or None when the node does
        not advertise itself (outbound only). Other cores that send lookups (``core/dht.py``) send the same."""
        return self._me

    def sample_rtt(self, rtt: float) -> None:
        """Feed the RTT of an answered query made by another core (``core/dht.py``) into the one estimate
        that sets every lookup's late limit (:attr:`rto`)."""
        self._rtt_sample(rtt)

    @property
    def lookups_running(self) -> int:
        return len(self._active)

    @property
    def rto(self) -> float:
        """The current late deadline for a query (s): srtt + 4 * rttvar (RFC 6298's RTO), at least a floor
        that fades with the number of samples, clamped to [late_min, late_max]; late_initial before any."""
        cfg = self.config
        if self._srtt is None:
            return cfg.late_initial
        # A few samples say little about the tail (RFC 6298 floors its RTO at 1 s for this reason): the
        # floor starts at late_initial and fades as samples accumulate (halved after 4, ~0.2x after 16).
        r = max(self._srtt + 4.0 * self._rttvar, cfg.late_initial * 4.0 / (4.0 + self._samples))
        return cfg.late_min if r < cfg.late_min else cfg.late_max if r > cfg.late_max else r

    # -- network side ------------------------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """Process one envelope whose ``src`` the transport authenticated. Bad input is counted, never raised."""
        stats = self.stats
        if not addressed_here(env, self.node_id, stats):
            return
        if self._refresh_at is None:
            self._arm_refresh(now)
        typ = env.type
        if typ == FIND_NODE:
            self._on_find_node(env, now)
        elif typ == NODES:
            self._on_nodes(env, now)
        elif typ == FORWARD:
            self._on_forward(env, now)
        else:
            stats["other_types"] += 1
            self.table.touch(env.src, now)

    def tick(self, now: float) -> None:
        """Fire what is due: hard timeouts of queries, late deadlines of lookups, the bucket refresh."""
        fifo = self._fifo
        rpcs = self._rpcs
        while fifo and fifo[0][0] <= now:
            rpc = rpcs.pop(fifo.popleft()[1], None)
            if rpc is None:
                continue  # answered
            if rpc.route is None:
                self._dests.release(rpc.nid)
            self.stats["rpc_timeouts"] += 1
            self.table.mark_failed(rpc.nid)
            job = rpc.job
            if job.lookup is not None and not job.lookup.done:
                job.lookup.on_timeout(rpc.nid, now)
                self._pump(job, now)
        late = self._late
        while late and late[0][0] <= now:
            t, _, job = heapq.heappop(late)
            if job.armed == t:
                job.armed = None
            if job.lookup is not None and not job.lookup.done:
                self._pump(job, now)
        if self._refresh_at is not None and self._refresh_at <= now:
            self._refresh(now)

    def next_timer(self) -> float | None:
        """When tick() must next run, or None."""
        t = self._refresh_at
        if self._fifo:
            d = self._fifo[0][0]
            if t is None or d < t:
                t = d
        if self._late:
            d = self._late[0][0]
            if t is None or d < t:
                t = d
        return t

    # -- requests from peers -------------------------------------------------------------------------

    def _on_find_node(self, env: Envelope, now: float, back: list[bytes] | None = None,
                      via: bytes | None = None) -> None:
        """Answer a FIND_NODE: over the connection it came on, or, for one forwarded to us (``via`` the node
        that passed it on, ``back`` the rest of the way to the asker), signed and back along its route."""
        stats = self.stats
        stats["find_node_received"] += 1
        body = env.body
        target = body.get("target") if type(body) is dict else None
        if type(target) is not bytes or len(target) != NODE_ID_LEN:
            stats["malformed"] += 1
            return
        src = env.src
        frm = body.get("from")
        f = None if frm is None else contact_fields(frm)
        if via is not None:
            pass  # forwarded: the asker holds no connection to us, so it stays out of the table (5.6)
        elif f is None:
            if frm is not None:
                stats["contacts_bad"] += 1
            self.table.touch(src, now)
        elif node_id_of(f[0]) != src:
            stats["from_mismatch"] += 1  # a key that is not the sender's: it cannot speak for that id
            self.table.touch(src, now)
        else:
            held = self.table.find(src)
            if held is None or held.endpoint != f[1]:
                # The node's own authenticated word names an endpoint we did not hold for it (it is new to
                # us, or it restarted elsewhere): the owner of the connections must stop using the old one.
                self._events.append(Introduced(Contact(f[0], f[1])))
            self.table.add(src, f[0], f[1], now)
        nodes = [[e.public_key, e.endpoint] for e in self.table.closest(target, self.config.k, exclude=src,
                                                                         skip_failed=True)]
        rid = self._rng.getrandbits(128).to_bytes(16, "big")
        ts = int(now * 1000)
        if via is None or back is None:
            self._out.append(Envelope(rid, self.node_id, NODES, {"nodes": nodes}, src, ts, 0, None, None, env.id))
        else:
            # The asker cannot tell who answered but by the signature; "from" is our own word for our
            # endpoint, since the one it was given came from whoever listed us.
            answer = {"nodes": nodes, "from": self._me} if self._me is not None else {"nodes": nodes}
            assert self._identity is not None  # _on_forward hands us a forwarded query only then
            inner = Envelope(rid, self.node_id, NODES, answer, src, ts, re=env.id).sign(self._identity).encode()
            self._out.append(Envelope(rid, self.node_id, FORWARD, forward_body(back, [], inner), via, ts))
            stats["sent"] += 1
        stats["nodes_sent"] += 1
        stats["sent"] += 1

    # -- answers to our queries --------------------------------------------------------------------

    def _on_nodes(self, env: Envelope, now: float, forwarded: bool = False) -> None:
        """An answer to one of our queries: straight from its sender, or (``forwarded``) signed by it."""
        stats = self.stats
        stats["nodes_received"] += 1
        re = env.re
        rpc = self._rpcs.get(re) if type(re) is bytes else None
        if rpc is None or re is None or rpc.nid != env.src:
            stats["unmatched"] += 1  # late past the hard timeout, a duplicate, or never asked of this peer
            if not forwarded:
                self.table.touch(env.src, now)
            return
        del self._rpcs[re]
        if rpc.route is None:
            self._dests.release(rpc.nid)
        job = rpc.job
        lk = job.lookup
        body = env.body
        nodes = body.get("nodes") if type(body) is dict else None
        if type(nodes) is not list:
            stats["malformed"] += 1  # alive but useless: not refreshed in the table, failed in the lookup
            if lk is not None and not lk.done:
                lk.on_failure(rpc.nid, now)
                self._pump(job, now)
            return
        rtt = now - rpc.sent
        self._rtt_sample(rtt)
        endpoint = None
        if forwarded:
            # The lookup's result holds the node's own signed word for its endpoint (5.6), not the hearsay
            # it was asked at; the table takes only nodes that answered over their own connection.
            stats["forwarded_answers"] += 1
            frm = body.get("from")
            f = None if frm is None else contact_fields(frm)
            if f is not None and f[0] == rpc.pk:
                endpoint = f[1]
            elif frm is not None:
                stats["from_mismatch" if f is not None else "contacts_bad"] += 1
            if rpc.route is not None:
                job.routes[rpc.nid] = rpc.route
        else:
            self.table.add(rpc.nid, rpc.pk, rpc.ep, now, rtt)
        if lk is None or lk.done:
            stats["late_responses"] += 1
            return
        lk.on_response(rpc.nid, nodes, now, endpoint)
        self._pump(job, now)

    # -- forwarded messages (kad.fwd, protocols/routing.md 5.6) ---------------------------------------

    def _on_forward(self, env: Envelope, now: float) -> None:
        """Pass a kad.fwd on over a connection we hold, or, if we are its destination, take what it carries."""
        stats = self.stats
        fwd = parse_forward(env)
        if fwd is None:
            stats["forward_bad"] += 1
            return
        src = env.src
        me = self.node_id
        ts = int(now * 1000)
        if me in fwd.to or me in fwd.back:
            stats["forward_bad"] += 1  # a loop
            return
        if fwd.to:
            nxt = fwd.to[0]
            if len(fwd.back) >= MAX_ROUTE or nxt == src:
                stats["forward_bad"] += 1  # too long, or straight back
                return
            linked = self.linked
            if linked is None or not linked(nxt):
                # Never a new connection for someone else's query: the origin asks the node itself.
                stats["forward_unlinked"] += 1
                if not fwd.fail:
                    self._out.append(Envelope(self._rng.getrandbits(128).to_bytes(16, "big"), me, FORWARD,
                                              forward_body(fwd.back, [], None), src, ts, re=env.id))
                    stats["sent"] += 1
                return
            stats["forwards_passed"] += 1
            stats["sent"] += 1
            self._out.append(Envelope(env.id, me, FORWARD, forward_body(fwd.to[1:], [src] + fwd.back, fwd.inner),
                                      nxt, ts, re=env.re))
            return
        if fwd.fail:
            re = env.re  # a bytes value: parse_forward refuses a fail notice without it
            rpc = self._rpcs.get(re) if type(re) is bytes else None
            if rpc is None or rpc.route is None or re is None:
                stats["unmatched"] += 1
                return
            stats["forward_fallbacks"] += 1
            self._fallback(re, rpc, now)
            return
        assert fwd.inner is not None
        if env.id in self._fwd_seen:
            stats["forward_replayed"] += 1  # the id of what it carries (5.6), taken already
            return
        try:
            inner = decode(fwd.inner, max_size=MAX_INNER)
            inner.verify()  # the key in it must own its src: nobody speaks for another node
        except EnvelopeError:
            stats["forward_bad"] += 1
            return
        if inner.dst != me or inner.src == me or inner.id != env.id:
            stats["forward_bad"] += 1
            return
        # Remembered once it verified: a forgery under a genuine message's id cannot shut that one out.
        self._fwd_seen[env.id] = None
        if len(self._fwd_seen) > FWD_SEEN:
            self._fwd_seen.popitem(last=False)
        if inner.type == FIND_NODE and self._identity is not None:
            self._on_find_node(inner, now, fwd.back, src)
        elif inner.type == NODES:
            self._on_nodes(inner, now, forwarded=True)
        else:
            stats["forward_bad"] += 1  # not a routing message, or a query we could not sign an answer to

    def _route_for(self, job: _Job, nid: bytes) -> tuple[bytes, ...] | None:
        """The nodes to forward a query to ``nid`` through: the node that listed it, if we hold a connection
        to it, or the route that node's own answer came back along, plus it, while that stays within
        MAX_ROUTE hops. None: ask ``nid`` directly."""
        lk = job.lookup
        linked = self.linked
        if lk is None or linked is None or self._identity is None:
            return None
        ref = lk.referrer(nid)
        if ref is None:
            return None
        if linked(ref):
            return (ref,)
        r = job.routes.get(ref)
        if r is not None and len(r) < MAX_ROUTE:
            return r + (ref,)
        return None

    def _fallback(self, rid: bytes, rpc: _Rpc, now: float) -> None:
        """A forwarder had no connection onwards: ask the node directly (same RPC id and hard deadline)."""
        rpc.route = None
        job = rpc.job
        self._dests.add(rpc.nid, rpc.pk, rpc.ep)
        body = {"target": job.target, "from": self._me} if self._me is not None else {"target": job.target}
        self._out.append(Envelope(rid, self.node_id, FIND_NODE, body, rpc.nid, int(now * 1000)))
        self.stats["find_node_sent"] += 1
        self.stats["sent"] += 1

    # -- lookups -------------------------------------------------------------------------------------

    def _submit(self, target: bytes, now: float, purpose: str, seeds: list[Any] | None, find: bool = False,
                width: int | None = None, dials: int | None = None) -> int:
        stats = self.stats
        job = self._targets.get(target)
        if job is not None and seeds is None and (find or not job.find):
            stats["lookups_merged"] += 1
            return job.id
        lid = self._next_id
        self._next_id += 1
        job = _Job(lid, target, purpose, seeds, find, width, dials)
        if len(self._active) < self.config.max_lookups or len(self._queue) < self.config.max_queued_lookups:
            self._targets[target] = job
            if purpose == "join":
                self._joining += 1
            if len(self._active) < self.config.max_lookups:
                self._start(job, now)
            else:
                self._queue.append(job)
                stats["lookups_queued"] += 1
        else:
            stats["lookups_refused"] += 1
            self._events.append(LookupDone(lid, target, [], False, purpose=purpose, reason="busy"))
            if purpose == "join":
                self._events.append(Joined(False, len(self.table)))
        return lid

    def _start(self, job: _Job, now: float) -> None:
        cfg = self.config
        self.stats["lookups_started"] += 1
        seeds = self.table.closest(job.target, cfg.k, skip_failed=True)
        if not seeds:
            seeds = self.table.closest(job.target, cfg.k)
        if job.seeds:
            seeds = job.seeds + seeds
        job.seeds = None
        self._active[job.id] = job
        alpha = cfg.join_alpha if job.purpose == "join" else cfg.alpha
        job.lookup = Lookup(job.target, seeds, k=job.width or cfg.k, alpha=alpha, self_id=self.node_id,
                            late_after=self.rto, late_factor=cfg.late_factor, late_min=cfg.late_min,
                            max_queries=self._max_queries, stats=self.stats, stop_at_target=job.find,
                            linked=None if job.dials is None else self.linked, max_dials=job.dials)
        self._pump(job, now)

    def _pump(self, job: _Job, now: float) -> None:
        """Send the queries the lookup wants now; finish it if it is done."""
        lk = job.lookup
        assert lk is not None  # a job is pumped only once its lookup started
        lk.late_after = self.rto
        queries = lk.next_queries(now)
        if queries:
            rng = self._rng
            me = self.node_id
            body = {"target": job.target, "from": self._me} if self._me is not None else {"target": job.target}
            ts = int(now * 1000)
            deadline = now + self.config.query_timeout
            # Only lookups whose answers feed no table are forwarded (5.6): a join's and a refresh's answerers
            # must enter the table, and only a node that answered over its own connection may.
            linked = self.linked if self._identity is not None and job.purpose == "lookup" else None
            for c in queries:
                pk = c.public_key
                nid = node_id_of(pk)
                rid = rng.getrandbits(128).to_bytes(16, "big")
                route = None if linked is None or linked(nid) else self._route_for(job, nid)
                self._rpcs[rid] = _Rpc(job, nid, pk, c.endpoint, now, route)
                self._fifo.append((deadline, rid))
                if route is None:
                    self._dests.add(nid, pk, c.endpoint)
                    self._out.append(Envelope(rid, me, FIND_NODE, body, nid, ts))
                    continue
                assert self._identity is not None
                inner = Envelope(rid, me, FIND_NODE, body, nid, ts).sign(self._identity).encode()
                self._out.append(Envelope(rid, me, FORWARD, forward_body(list(route[1:]) + [nid], [], inner),
                                          route[0], ts))
                self.stats["forwarded_sent"] += 1
            self.stats["find_node_sent"] += len(queries)
            self.stats["sent"] += len(queries)
        if lk.done:
            self._finish(job, now)
            return
        t = lk.next_timer()
        if t is not None and (job.armed is None or t < job.armed):
            job.armed = t
            self._serial += 1
            heapq.heappush(self._late, (t, self._serial, job))

    def _finish(self, job: _Job, now: float) -> None:
        lk = job.lookup
        assert lk is not None
        stats = self.stats
        del self._active[job.id]
        if self._targets.get(job.target) is job:
            del self._targets[job.target]
        self.table.touch_bucket(self.table.bucket_index(job.target), now)
        ok = lk.ok
        stats["lookups_ok" if ok else "lookups_failed"] += 1
        reason = "" if ok else ("no_contacts" if not lk.queries else "failed")
        self._events.append(LookupDone(job.id, job.target, lk.result(), ok, lk.rounds, lk.hops, lk.queries,
                                       lk.failures, lk.late, lk.duration or 0.0, job.purpose, reason, lk.dials))
        if job.purpose == "join":
            self._joining -= 1
            refreshes = self._refresh_far(now) if lk.responses else 0
            if self._join_pending:
                self._join_pending = False
                self._events.append(Joined(lk.responses > 0, len(self.table), refreshes))
            if len(self.table) < self.config.k or self._settle:
                # Too few contacts to be well connected: look again soon (see join()).
                t = now + self._retry * (0.9 + 0.2 * self._rng.random())
                if self._refresh_at is None or t < self._refresh_at:
                    self._refresh_at = t
                self._retry = min(self._retry * 2, self.config.refresh_check)
            else:
                self._retry = self.config.join_retry
        while self._queue and len(self._active) < self.config.max_lookups:
            self._start(self._queue.popleft(), now)

    def _rtt_sample(self, r: float) -> None:
        # RFC 6298 smoothing: srtt gains 1/8 of the error, rttvar 1/4 of its own.
        if r < 0:
            return
        if self._samples < 1000:
            self._samples += 1
        if self._srtt is None:
            self._srtt = r
            self._rttvar = r / 2
        else:
            self._rttvar += 0.25 * (abs(self._srtt - r) - self._rttvar)
            self._srtt += 0.125 * (r - self._srtt)

    # -- join and refresh -------------------------------------------------------------------------

    def _refresh_far(self, now: float) -> int:
        """After a self-lookup: a lookup in every bucket farther than our closest neighbour (that no
        lookup touched within refresh_interval), each done once its join_refresh_k closest answered."""
        near = self.table.nearest_bucket()
        if near is None:
            return 0
        n = 0
        width = min(self.config.join_refresh_k, self.config.k)
        dials = None if self.linked is None else self.config.join_refresh_dials
        for i in self.table.buckets_needing_refresh(now, self.config.refresh_interval):
            if i <= near:
                continue
            self.table.touch_bucket(i, now)
            self._submit(self.table.random_id_in_bucket(i, self._rng), now, "refresh", None, width=width, dials=dials)
            n += 1
        self.stats["refreshes"] += n
        return n

    def _arm_refresh(self, now: float) -> None:
        cfg = self.config
        self._refresh_at = now + cfg.refresh_check * (0.9 + 0.2 * self._rng.random())

    def _refresh(self, now: float) -> None:
        cfg = self.config
        self._arm_refresh(now)
        table = self.table
        if (len(table) < cfg.k or self._settle) and not self._joining and (self._seeds or len(table)):
            self._settle = 0
            self.stats["rejoins"] += 1
            self._submit(self.node_id, now, "join", list(self._seeds))
            return  # its end refreshes the far buckets
        for i in table.buckets_needing_refresh(now, cfg.refresh_interval):
            table.touch_bucket(i, now)
            self._submit(table.random_id_in_bucket(i, self._rng), now, "refresh", None)
            self.stats["refreshes"] += 1
