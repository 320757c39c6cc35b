"""Discrete-event simulator that drives the same sans-IO cores as a real node.

One heap of timed events and a virtual clock. A simulated node holds one or
more cores that share the sans-IO shape (:class:`Core`); the simulator
delivers envelopes to them, ticks them when their timers are due and carries
what they send across a :class:`~zmqagents.sim.netmodel.Network`. Events the
cores report go to an ``on_event(node, event, now)`` handler, which may call
back into that node's cores (send a reply, a next message...).

Built to scale to thousands of nodes in one process:

* envelopes travel as objects (cores never mutate an envelope once handed
  out); they are encoded only when ``count_bytes`` asks for a byte count;
* each node has at most one live timer event in the heap: the earliest
  ``next_timer()`` of its cores. Re-arming earlier supersedes it and the
  superseded event is discarded in O(1) when popped (its number no longer
  matches the node's);
* no threads, no wall clock: everything random comes from the run's seed, so
  a run is a pure function of (seed, scenario).
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import math
import random
import struct
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

from ..envelope import Envelope
from .netmodel import Latency, Network
from ..errors import InvalidArgument


class Core(Protocol):
    """What the simulator needs from a sans-IO protocol core."""

    def receive(self, env: Envelope, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def next_timer(self) -> float | None: ...
    def take_outgoing(self) -> list[Envelope]: ...
    def take_events(self) -> list: ...


CoreFactory = Callable[[bytes, random.Random], Sequence[Core]]
EventHandler = Callable[["SimNode", object, float], None]
Router = Callable[[Envelope], Core]

_DELIVER, _TIMER, _CALL = 0, 1, 2
# Heap numbers: a node's events are (index << _NODE_SHIFT | its counter << 1 | is_timer), so they never
# collide and sort by node; scenario calls are numbered from -_CALL_BASE, before any node's event at
# the same instant.
_NODE_SHIFT = 40
_CALL_BASE = 1 << 62
_TRACE = struct.Struct(">dBII")


@contextmanager
def bulk_build() -> Iterator[None]:
    """Around building a large simulation: no cyclic garbage collection, and what was built is frozen.

    A build allocates millions of long-lived objects (member records, table entries) and no garbage
    cycles; the collector would rescan the growing heap again and again (a third of the build time
    at 10,000 nodes), and once more as the objects age through its generations. So it is off while
    building, and on the way out everything built is moved out of its generations (``gc.freeze``)
    before it is turned back on. Run the simulation inside :func:`frozen_heap`, which unfreezes
    when the run ends (frozen objects are still freed by reference counting, not their cycles).
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Around a run: what exists when it starts (the built mesh) stays out of the collector's
    generations (``gc.freeze``), so collections during the run scan only what the run allocates,
    and they come less often (the run's garbage is almost all freed by reference counting: envelopes,
    rumor lists). Everything is unfrozen and the thresholds restored when the run ends."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def sim_node_id(index: int) -> bytes:
    """The node id the simulator gives node number ``index`` unless told otherwise."""
    return hashlib.sha256(b"zmqagents-sim-node/%d" % index).digest()


class SimNode:
    """One simulated node: its cores, whether it is up, and its single pending timer event.

    In a parallel run (see :mod:`zmqagents.sim.parallel`) every worker knows every node, but only
    the nodes it *owns* (``local``) have cores; messages to the others leave through its outbox.
    """

    __slots__ = ("id", "index", "factory", "cores", "route", "on_event", "up", "incarnation", "local",
                 "net_rng", "seq", "trace", "_timer_n", "_timer_at")

    def __init__(self, node_id: bytes, index: int, factory: CoreFactory, route: Router | None,
                 on_event: EventHandler | None, local: bool = True):
        self.id = node_id
        self.index = index
        self.factory = factory
        self.cores: list[Core] = []
        self.route = route
        self.on_event = on_event
        self.up = True
        self.incarnation = 0
        self.local = local
        self.net_rng: random.Random | None = None  # the fate of what this node sends (made on first send)
        self.seq = 0  # numbers this node's heap events: the run's order depends only on the node
        self.trace = None  # blake2b of what this node sent, when tracing
        self._timer_n = -1  # number of the live timer event in the heap, -1 if none
        self._timer_at = 0.0

    def __repr__(self) -> str:
        return f"SimNode({self.index}, {self.id.hex()[:12]}, {'up' if self.up else 'down'})"


@dataclass
class SimReport:
    """What one run did, counted in envelopes on the simulated network (data, acks, fwds alike):
    ``sent`` by cores, ``delivered`` to a live node, ``dropped_*`` by cause. ``bytes_sent`` (encoded
    size of everything sent) is None unless byte counting was on, ``trace_digest`` unless tracing."""

    seed: int
    virtual_time: float
    events: int
    sent: int
    delivered: int
    dropped_loss: int
    dropped_partition: int
    dropped_crashed: int
    dropped_unknown: int
    stale_timers: int
    bytes_sent: int | None
    trace_digest: str | None

    @property
    def dropped(self) -> int:
        return self.dropped_loss + self.dropped_partition + self.dropped_crashed + self.dropped_unknown


class Simulator:
    """A seeded discrete-event run over a simulated network.

    Build it, ``add_node`` for each node, schedule scenario actions with ``at``
    (sends, ``partition``/``heal``, ``crash``/``restart``), then ``run``.

    The order of events depends only on the nodes, never on how many processes run them: ties in
    virtual time are broken by numbers each node draws from its own counter (scenario calls first,
    in the order they were scheduled), and what happens to a message on the network is drawn from
    its sender's own random stream. So a run split over workers (``worker``/``owner_of``, driven by
    :func:`zmqagents.sim.parallel.run_parallel`) is the same run as in one process.
    """

    def __init__(self, seed: int, *, latency: str | Latency = "const:10ms", loss: float = 0.0,
                 count_bytes: bool = False, trace: bool = False, on_event: EventHandler | None = None,
                 sample_every: int = 0, worker: int = 0, owner_of: Callable[[bytes], int] | None = None):
        self.seed = seed
        self.net = Network(latency, loss)
        self.now = 0.0
        self.on_event = on_event
        self.nodes: list[SimNode] = []
        self._by_id: dict[bytes, SimNode] = {}
        self._heap: list[tuple] = []
        self._calls = 0  # scenario calls scheduled so far: their heap numbers, below every node's
        self.worker = worker
        self.owner_of = owner_of
        self.outbox: dict[int, list] = {}  # worker -> messages for its nodes, sent since the last exchange
        self._count_bytes = count_bytes
        self._tracing = trace
        # Called with (now, sender index, destination index, envelope, delay or None if dropped) for
        # every message sent to a known node, when set: a run's own instrument (sim/pairtrace.py).
        # It must only read: drawing from a random stream or calling into a core would change the run.
        self.tap: Callable[[float, int, int, Envelope, float | None], None] | None = None
        self.events = 0
        self.sent = 0
        self.delivered = 0
        self.dropped_crashed = 0
        self.dropped_unknown = 0
        self.stale_timers = 0
        self.bytes_sent = 0
        # Traffic accounting: messages sent per envelope type, and (sample_every > 0) the encoded size of
        # the messages whose id falls in one residue class of sample_every (one in sample_every on
        # average; chosen by id so the sample does not depend on the order of sends), which estimates
        # bytes without encoding everything. ``window`` (start, end) counts the same for the messages
        # sent inside it (e.g. an idle period).
        self.by_type: Counter = Counter()
        self.sample_every = max(0, sample_every)
        self.sampled_bytes = 0
        self.sampled = 0
        self.window: tuple[float, float] | None = None
        self.window_sent = 0
        self.window_bytes = 0
        self.window_sampled = 0

    def rng(self, label: str) -> random.Random:
        """An independent random stream for ``label``, fixed by the run's seed."""
        return random.Random(f"{self.seed}/{label}")

    # -- building the scenario -----------------------------------------------------------

    def add_node(self, factory: CoreFactory, *, node_id: bytes | None = None, route: Router | None = None,
                 on_event: EventHandler | None = None) -> SimNode:
        """Add a node whose cores are ``factory(node_id, rng)``; ``route(env)`` picks the core for an
        incoming envelope (default: the first core). ``on_event`` overrides the simulator's handler.
        A node another worker owns is registered without cores (the factory is not called)."""
        index = len(self.nodes)
        nid = sim_node_id(index) if node_id is None else node_id
        if nid in self._by_id:
            raise InvalidArgument(f"node id {nid.hex()[:12]} is already in the simulation")
        local = self.owner_of is None or self.owner_of(nid) == self.worker
        node = SimNode(nid, index, factory, route, on_event, local)
        if local:
            node.cores = list(factory(nid, self.rng(f"node/{index}/0")))
        self.nodes.append(node)
        self._by_id[nid] = node
        self._arm(node)
        return node

    def node(self, node_id: bytes) -> SimNode:
        return self._by_id[node_id]

    def at(self, t: float, fn: Callable[[float], None], node: SimNode | None = None) -> None:
        """Run ``fn(now)`` at virtual time ``t``; if it touches ``node``'s cores, name the node so its
        output is sent and its timers re-armed afterwards. A call for a node another worker owns is
        not run here (it still takes its number, so calls keep the same order in every worker)."""
        n = self._calls - _CALL_BASE
        self._calls += 1
        if node is not None and not node.local:
            return
        heapq.heappush(self._heap, (t, n, _CALL, node, fn))

    def flush(self, node: SimNode) -> None:
        """Send what ``node``'s cores queued and re-arm its timer (after calling them outside a callback)."""
        if not node.up or not node.local:
            return
        now = self.now
        handler = node.on_event or self.on_event
        send = self._send
        while True:
            # Sending never calls back into a core; handling an event may (a reply, a table change),
            # so only a pass that handled events needs another pass.
            handled = False
            for core in node.cores:
                out = core.take_outgoing()
                if out:
                    for env in out:
                        send(node, env)
                events = core.take_events()
                if events and handler is not None:
                    handled = True
                    for ev in events:
                        handler(node, ev, now)
            if not handled:
                break
        self._arm(node)

    def partition(self, *groups: Sequence[bytes]) -> None:
        """Split the network into groups of node ids; nodes named in no group form one more group."""
        self.net.partition([self._by_id[nid].index for nid in group] for group in groups)

    def heal(self) -> None:
        self.net.heal()

    def crash(self, node_id: bytes) -> None:
        """Stop a node: it loses its timers, and messages arriving while it is down are dropped."""
        node = self._by_id[node_id]
        node.up = False
        node._timer_n = -1

    def restart(self, node_id: bytes) -> None:
        """Bring a node back with fresh cores from its factory (all protocol state lost, new randomness)."""
        node = self._by_id[node_id]
        node.incarnation += 1
        node.up = True
        if node.local:
            node.cores = list(node.factory(node.id, self.rng(f"node/{node.index}/{node.incarnation}")))
            self._arm(node)

    # -- running ---------------------------------------------------------------------------

    def run(self, until: float | None = None, max_events: int | None = None) -> SimReport:
        """Process events in time order until the heap is empty, virtual time passes ``until``, or
        ``max_events`` were processed. The clock ends at ``until`` if given and reached."""
        self.process_before(math.inf if until is None else math.nextafter(until, math.inf),
                      -1 if max_events is None else max_events)
        if until is not None and (not self._heap or self._heap[0][0] > until) and until > self.now:
            self.now = until
        return self.report()

    def next_time(self) -> float:
        """Virtual time of the earliest event waiting here (inf if none)."""
        return self._heap[0][0] if self._heap else math.inf

    def inject(self, messages: list) -> None:
        """Messages another worker sent to nodes owned here: ``(arrival, number, dst index, envelope)``."""
        push = heapq.heappush
        heap = self._heap
        nodes = self.nodes
        for t, n, dst, env in messages:
            push(heap, (t, n, _DELIVER, nodes[dst], env))

    def take_outbox(self) -> dict[int, list]:
        out = self.outbox
        self.outbox = {}
        return out

    def process_before(self, end: float, budget: int = -1) -> None:
        """Process the events before virtual time ``end`` (at most ``budget`` of them, -1: no limit): one
        window of a parallel run (sim/parallel.py), or the whole of :meth:`run`."""
        heap = self._heap
        pop = heapq.heappop
        while heap and budget:
            if heap[0][0] >= end:
                break
            t, n, kind, node, payload = pop(heap)
            self.now = t
            self.events += 1
            budget -= 1
            if kind == _DELIVER:
                if not node.up:
                    self.dropped_crashed += 1
                    continue
                self.delivered += 1
                (node.route(payload) if node.route is not None else node.cores[0]).receive(payload, t)
                self.flush(node)
            elif kind == _TIMER:
                if n != node._timer_n:
                    self.stale_timers += 1
                    continue
                node._timer_n = -1
                cores = node.cores
                if len(cores) == 1:
                    # A live timer event is at exactly the core's earliest deadline (any change re-arms).
                    cores[0].tick(t)
                    self.flush(node)
                    continue
                ticked = False
                for core in cores:
                    due = core.next_timer()
                    if due is not None and due <= t:
                        core.tick(t)
                        ticked = True
                if ticked:
                    self.flush(node)
                else:
                    self._arm(node)  # the timers it was armed for were cancelled since
            else:
                payload(t)
                if node is not None:
                    self.flush(node)
                elif self.worker:
                    self.events -= 1  # a scenario-wide call runs in every worker: counted by the first

    def report(self) -> SimReport:
        return SimReport(
            seed=self.seed,
            virtual_time=self.now,
            events=self.events,
            sent=self.sent,
            delivered=self.delivered,
            dropped_loss=self.net.dropped_loss,
            dropped_partition=self.net.dropped_partition,
            dropped_crashed=self.dropped_crashed,
            dropped_unknown=self.dropped_unknown,
            stale_timers=self.stale_timers,
            bytes_sent=self.bytes_sent if self._count_bytes else None,
            trace_digest=combine_traces(self.traces()) if self._tracing else None,
        )

    def traces(self) -> dict[int, bytes]:
        """Per sending node (by index): the digest of what it sent, when tracing."""
        return {node.index: node.trace.digest() for node in self.nodes if node.trace is not None}

    # -- internals -------------------------------------------------------------------------

    def _send(self, node: SimNode, env: Envelope) -> None:
        self.sent += 1
        self.by_type[env.type] += 1
        w = self.window
        inside = w is not None and w[0] <= self.now < w[1]
        if inside:
            self.window_sent += 1
        k = self.sample_every
        if k and int.from_bytes(env.id[-4:], "big") % k == 0:
            n = len(env.encode())
            self.sampled_bytes += n
            self.sampled += 1
            if inside:
                self.window_bytes += n
                self.window_sampled += 1
        if self._count_bytes:
            self.bytes_sent += len(env.encode())
        dst = self._by_id.get(env.dst)
        if dst is None:
            self.dropped_unknown += 1
            return
        rng = node.net_rng
        if rng is None:
            rng = node.net_rng = self.rng(f"net/{node.index}")
        delay = self.net.delay(node.index, dst.index, rng)
        if self.tap is not None:
            self.tap(self.now, node.index, dst.index, env, delay)
        if self._tracing:
            if node.trace is None:
                node.trace = hashlib.blake2b(digest_size=16)
            node.trace.update(_TRACE.pack(self.now, delay is not None, node.index, dst.index) + env.id)
        if delay is not None:
            n = node.seq
            node.seq = n + 1
            key = (node.index << _NODE_SHIFT) | (n << 1)
            if dst.local:
                heapq.heappush(self._heap, (self.now + delay, key, _DELIVER, dst, env))
            else:
                w = self.owner_of(dst.id)
                box = self.outbox.get(w)
                if box is None:
                    box = self.outbox[w] = []
                box.append((self.now + delay, key, dst.index, env))

    def _arm(self, node: SimNode) -> None:
        """Keep one heap event at exactly the earliest timer of the node's cores.

        Any change re-arms, later as well as earlier, and no timer at all disarms: the old event
        becomes stale (skipped by its sequence number), so a node whose timers were cancelled or
        postponed is not woken for nothing.
        """
        if not node.up or not node.local:
            return
        t = None
        for core in node.cores:
            due = core.next_timer()
            if due is not None and (t is None or due < t):
                t = due
        if t is None:
            node._timer_n = -1
            return
        if node._timer_n >= 0 and node._timer_at == t:
            return
        if t < self.now:
            t = self.now
        n = node.seq
        node.seq = n + 1
        node._timer_n = key = (node.index << _NODE_SHIFT) | (n << 1) | 1
        node._timer_at = t
        heapq.heappush(self._heap, (t, key, _TIMER, node, None))


def combine_traces(traces: dict[int, bytes]) -> str:
    """One digest of a whole run from its nodes' own (by node index, so workers' parts combine)."""
    h = hashlib.blake2b(digest_size=16)
    for index in sorted(traces):
        h.update(index.to_bytes(4, "big") + traces[index])
    return h.hexdigest()
