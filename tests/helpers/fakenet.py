"""A fake network for unit tests of the sans-IO protocol cores: no sockets, a fake clock.

``CoreMesh`` wires objects that speak the cores' driving interface (``node_id``, ``receive(env, now)``,
``tick(now)``, ``next_timer()``, ``take_outgoing()``, ``take_events()``: a RoutingCore, or a test's
routing + DHT pair) through one heap of timed deliveries with a random one-way latency, the way
node.py drives the cores over sockets. tests/core/test_routing.py and tests/core/test_dht.py subclass it for their
own queries on the events.
"""

from __future__ import annotations

import heapq
import random

from zmqagents.envelope import decode


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
