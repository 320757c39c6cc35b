"""The nodes of one swarm process and what has been done to them (joined, killed, paused).

Workloads draw their callers from :meth:`Crowd.live` (joined, neither killed nor paused); the fault
plan moves nodes out of it. Every node answers the swarm's requests (``ECHO``), whatever the
workload, so the nodes of other processes and pods can draw it as a target.
"""

from __future__ import annotations

import random
import time
from typing import Any

from ..node import Message, Node

ECHO = "swarm.echo"  # the capability of the tasks workload; requests are answered by every node


def echo(body: Any, message: Message) -> Any:
    """Every swarm node's request handler: the body back, so a reply is as large as its request."""
    return body


class Crowd:
    """``nodes[0]`` is this process's first node (the founder of an own mesh, or the first to join)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.nodes: list[Node] = []
        self.joined: set[int] = set()  # indexes
        self.killed: dict[int, float] = {}  # index -> when (time.monotonic())
        self.paused: set[int] = set()
        self.run_id = rng.getrandbits(64).to_bytes(8, "big").hex()  # marks this process's publications

    def add(self, node: Node) -> int:
        node.on_request(echo)
        self.nodes.append(node)
        return len(self.nodes) - 1

    def live(self) -> list[Node]:
        """Joined (or founding) nodes that are neither killed nor paused."""
        return [self.nodes[i] for i in sorted(self.joined) if i not in self.killed and i not in self.paused]

    def alive_indexes(self) -> list[int]:
        """Nodes not killed (paused ones included)."""
        return [i for i in range(len(self.nodes)) if i not in self.killed]

    def local_ids(self) -> dict[bytes, int]:
        return {n.node_id: i for i, n in enumerate(self.nodes)}

    def kill(self, index: int) -> float:
        self.killed[index] = time.monotonic()
        return self.killed[index]

    def targets(self, node: Node) -> list:
        """Contacts in ``node``'s routing table: where its requests go (nodes of this process or any other)."""
        assert node.routing is not None
        return [entry.contact for entry in node.routing.table]
