"""Real Nodes on loopback for the node and agent tests: CURVE on, real sockets, one process.

The node, DHT, runtime, registry and collaboration tests all start a small mesh the same way (a
first node, the others joining through it) and close it the same way; this is that one way.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from zmqagents.core.membership import MembershipConfig
from zmqagents.node import Node, NodeConfig


def quick_detection() -> NodeConfig:
    """A node that notices a dead peer within a couple of seconds and leaves quickly (the agent tests'
    provider deaths and failovers)."""
    return NodeConfig(membership=MembershipConfig(probe_interval=0.3, probe_timeout=0.1, suspicion_min=0.6,
                                                  suspicion_max=1.5, gossip_interval=0.1), leave_timeout=0.2)


async def start_mesh(n: int, config: Callable[[], NodeConfig] | None = None) -> list[Node]:
    """``n`` started Nodes: the first, then ``n - 1`` bootstrapping through it, one after another.
    ``config()`` makes each node's own NodeConfig (None: the defaults)."""
    seed = Node(config=config() if config else None)
    await seed.start()
    nodes = [seed]
    for _ in range(n - 1):
        node = Node(config=config() if config else None, bootstrap=[seed.contact])
        await node.start()
        nodes.append(node)
    return nodes


async def close_mesh(nodes: list[Node], agents=()) -> None:
    """Close the agent runtimes first (they leave their tasks), then every node at once."""
    for a in agents:
        await a.close()
    await asyncio.gather(*(n.close() for n in nodes))
