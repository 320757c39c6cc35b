"""Mesh-wide broadcast and topics on real Nodes (CURVE, tcp loopback): the broadcast core driven by the node."""

from __future__ import annotations

import asyncio

import pytest

from zmqagents.core.broadcast import BroadcastConfig
from zmqagents.node import Node, NodeConfig

from helpers.realmesh import close_mesh, start_mesh


async def _next(stream, timeout: float = 10.0):
    return await asyncio.wait_for(stream.__anext__(), timeout)


def test_publications_reach_subscribers_that_are_not_neighbours_of_the_publisher(arun):
    async def main():
        nodes = await start_mesh(8)
        try:
            publisher, sub, other = nodes[1], nodes[2], nodes[3]
            assert publisher.node_id not in sub.neighbours()  # they only share the seed
            weather = sub.subscribe("weather")
            first = asyncio.ensure_future(_next(weather))
            everywhere = [n.subscribe("") for n in nodes if n is not publisher]
            await asyncio.sleep(0.2)
            seq = await publisher.publish("weather", {"rain": True})
            msg = await first
            assert (msg.src, msg.topic, msg.seq, msg.body, msg.type) == (publisher.node_id, b"weather", seq, {"rain": True},
                                                                         "bcast")
            await publisher.broadcast("all stop")
            got = await asyncio.gather(*(_next(s) for s in everywhere))
            assert {(m.src, m.body, m.topic) for m in got} == {(publisher.node_id, "all stop", b"")}
            # a node not on "weather" did not deliver it (it only forwarded it)
            assert other.core.broadcast.stats["delivered"] == 1  # the mesh-wide one
            # the one-hop form stays reachable explicitly
            one_hop = sub.subscribe("x", one_hop=True)
            nxt = asyncio.ensure_future(_next(one_hop))
            await sub.introduce(publisher.contact)
            assert await publisher.wait_for_subscriber("x", 5)
            await publisher.publish("x", 1, one_hop=True)
            assert (await nxt).type == "pub"
            for s in [weather, one_hop, *everywhere]:
                await s.aclose()
        finally:
            await close_mesh(nodes)

    arun(main())


def test_a_slow_subscriber_loses_its_oldest_and_counts_them_while_others_get_everything(arun):
    async def main():
        nodes = await start_mesh(3)
        try:
            pub, slow, fast = nodes
            slow.config.subscription_queue = 3  # its subscriptions hold 3 publications
            slow_stream = slow.subscribe("t")
            fast_stream = fast.subscribe("t")
            fast_first = asyncio.ensure_future(_next(fast_stream))  # the slow one does not read yet
            await asyncio.sleep(0.2)
            for i in range(10):
                await pub.publish("t", i)
            got = [(await fast_first).body] + [(await _next(fast_stream)).body for _ in range(9)]
            assert got == list(range(10))
            await asyncio.sleep(0.2)  # the slow reader reads only now: its queue held the last 3
            assert [(await _next(slow_stream)).body for _ in range(3)] == [7, 8, 9]
            assert slow.stats["broadcast_dropped"] == 7
            await slow_stream.aclose()
            await fast_stream.aclose()
        finally:
            await close_mesh(nodes)

    arun(main())


def test_an_oversize_publication_is_refused_with_a_clear_error(arun):
    async def main():
        async with Node(config=NodeConfig(broadcast=BroadcastConfig(max_message_bytes=1000))) as node:
            with pytest.raises(ValueError, match="oversize"):
                await node.publish("t", "x" * 2000)

    arun(main())
