"""Fake networks for unit tests of the sans-IO protocol cores: no sockets, a fake clock.

``DirectNet`` hands every envelope to its destination at once (no latency): the delivery and task
cores' tests, which decide themselves what is lost, held back or reordered. ``CoreMesh`` adds
one-way latency and a clock that runs the cores' timers, for the routing, DHT and broadcast cores.

``CoreMesh`` wires objects that speak the cores' driving interface (``node_id``, ``receive(env, now)``,
``tick(now)``, ``next_timer()``, ``take_outgoing()``, ``take_events()``: a RoutingCore, or a test's
routing + DHT pair) through one heap of timed deliveries with a random one-way latency, the way
node.py drives the cores over sockets. tests/core/test_routing.py and tests/core/test_dht.py subclass it for their
own queries on the events.
"""

from __future__ import annotations

import heapq
import random

from typing import Callable

from zmqagents.envelope import Envelope, decode


class DirectNet:
    """Cores (anything with ``node_id`` and the sans-IO driving interface) that pass envelopes to each
    other at once, on a fake clock (``now``).

    ``reported`` maps each node id to the events its core reported, in order; ``wire`` lists every
    envelope sent. ``drop(env)`` returning True keeps an envelope from its destination (a test that
    wants it later keeps it itself); an envelope to a node not in the net is lost. ``encode=True``
    passes what is delivered through encode/decode, as a real peer would get it.
    """

    def __init__(self, cores=(), *, encode: bool = False):
        self.cores: dict[bytes, object] = {}
        self.reported: dict[bytes, list] = {}
        self.wire: list[Envelope] = []
        self.now = 0.0
        self.drop: Callable[[Envelope], bool] = lambda env: False
        self.encode = encode
        for core in cores:
            self.add(core)

    def add(self, core) -> None:
        self.cores[core.node_id] = core
        self.reported.setdefault(core.node_id, [])

    def deliver(self, env: Envelope) -> None:
        """Hand ``env`` to its destination now (nothing if it is not in the net)."""
        core = self.cores.get(env.dst)
        if core is None:
            return
        if self.encode:
            env = decode(env.encode())
        core.receive(env, self.now)

    def flush(self) -> None:
        """Move what the cores send until none has anything left, collecting their events."""
        moved = True
        while moved:
            moved = False
            for nid, core in list(self.cores.items()):
                self.reported[nid] += core.take_events()
                for env in core.take_outgoing():
                    moved = True
                    self.wire.append(env)
                    if not self.drop(env):
                        self.deliver(env)
                self.reported[nid] += core.take_events()

    def advance(self, until: float) -> None:
        """Move the clock to ``until``, running every timer due on the way, each at its time."""
        self.flush()
        while True:
            due = [t for t in (c.next_timer() for c in self.cores.values()) if t is not None and t <= until]
            if not due:
                break
            self.now = max(self.now, min(due))
            for core in list(self.cores.values()):
                t = core.next_timer()
                if t is not None and t <= self.now:
                    core.tick(self.now)
            self.flush()
        self.now = until


class CoreMesh:
    """Nodes wired through a heap of timed deliveries (one-way latency uniform in ``latency``).

    ``wire=True`` sends every envelope through encode/decode, so the cores also see what a peer would.
    Envelopes to a node in ``dead`` (or not in the mesh) are counted in ``messages`` and dropped.
    """

    def __init__(self, nodes: list, seed: int = 0, latency=(0.005, 0.05), wire: bool = False,
                 start: float = 0.0):
        self.nodes = {n.node_id: n for n in nodes}
        self.rng = random.Random(seed)
        self.latency = latency
        self.wire = wire
        self.dead: set[bytes] = set()
        self.now = start
        self.heap: list = []
        self.seq = 0
        self.events: list[tuple[bytes, float, object]] = []
        self.messages = 0

    def flush(self, n) -> None:
        """Schedule what ``n`` has to send, record its events, and schedule its next timer."""
        for e in n.take_outgoing():
            self.messages += 1
            if e.dst in self.dead or e.dst not in self.nodes:
                continue
            if self.wire:
                e = decode(e.encode())
            self.seq += 1
            heapq.heappush(self.heap, (self.now + self.rng.uniform(*self.latency), self.seq, e.dst, e))
        for ev in n.take_events():
            self.events.append((n.node_id, self.now, ev))
        t = n.next_timer()
        if t is not None:
            self.seq += 1
            heapq.heappush(self.heap, (max(t, self.now), self.seq, n.node_id, None))

    def run(self, until: float) -> None:
        """Deliver messages and fire timers in time order up to ``until``; the clock ends at ``until``."""
        heap = self.heap
        while heap and heap[0][0] <= until:
            t, _, nid, e = heapq.heappop(heap)
            if nid in self.dead:
                continue
            self.now = t
            n = self.nodes[nid]
            if e is not None:
                n.receive(e, t)
                self.flush(n)
            else:
                nt = n.next_timer()
                if nt is not None and nt <= t:
                    n.tick(t)
                    self.flush(n)
        self.now = max(self.now, until)

    def call(self, n, fn) -> object:
        """``fn(n)`` (e.g. start a lookup), then send what it queued; returns what ``fn`` returned."""
        r = fn(n)
        self.flush(n)
        return r


class LinkedCoreMesh(CoreMesh):
    """A CoreMesh whose cores are told which nodes they hold a connection to (their ``linked``): any node
    they sent an envelope to or received one from, as a connection opens both ways with the first message.
    ``links`` maps each node id to the ids it is connected to; ``opened`` counts connections opened."""

    def __init__(self, nodes: list, **kw):
        super().__init__(nodes, **kw)
        self.links: dict[bytes, set[bytes]] = {n.node_id: set() for n in nodes}
        self.opened = 0
        for n in nodes:
            n.linked = self.links[n.node_id].__contains__
            n.take_outgoing = self._recording(n, n.take_outgoing)

    def _recording(self, n, take):
        def take_outgoing():
            out = take()
            mine = self.links[n.node_id]
            for e in out:
                if e.dst not in mine:
                    self.opened += 1
                    mine.add(e.dst)
                if e.dst in self.links:
                    self.links[e.dst].add(n.node_id)
            return out
        return take_outgoing
