"""The capability registry behind `zmqagents agents ls`: bounded metadata, sharding, and a mesh of real
Nodes where a node serving more names than fit in its entry is described instead."""

from __future__ import annotations

import asyncio

import pytest

from zmqagents.agents import registry
from zmqagents.agents.capability import Capability
from zmqagents.agents.runtime import Agents
from zmqagents.core.tasks import packed_size
from zmqagents.dht import key_for

from helpers.realmesh import close_mesh, quick_detection, start_mesh

pytestmark = pytest.mark.timeout(60)


def test_meta_lists_names_sorted_within_the_budget_and_flags_the_rest():
    assert registry.registry_meta(["b", "a", "a"]) == {"caps": ["a", "b"]}
    many = [f"capability-{i:03d}-" + "x" * 100 for i in range(40)]
    meta = registry.registry_meta(many)
    assert meta["more"] is True and 0 < len(meta["caps"]) < 40 and meta["caps"] == sorted(many)[:len(meta["caps"])]
    assert packed_size(meta) <= registry.META_BUDGET
    assert registry.registry_meta(many, budget=10) == {"caps": [], "more": True}


@pytest.mark.parametrize("meta, names, more", [
    ({"caps": ["a", "b"]}, ["a", "b"], False),
    ({"caps": ["a"], "more": True}, ["a"], True),
    ({"caps": ["a", 7, "bad name", "x" * 200]}, ["a"], True),  # bad names dropped; ask the node itself
    ({"caps": "a"}, [], True),
    (None, [], True),
    ([1, 2], [], True),
])
def test_parse_meta_keeps_only_valid_names(meta, names, more):
    assert registry.parse_meta(meta) == (names, more)


def test_shards_cover_every_node_id():
    keys = registry.all_keys()
    assert len(keys) == registry.SHARDS == len(set(keys))
    assert {registry.shard_key(bytes([b]) + bytes(31)) for b in range(256)} == set(keys)


def test_list_mesh_finds_every_agent_and_describes_one_that_lists_too_much(arun):
    async def main():
        nodes = await start_mesh(4, quick_detection)
        agents = [Agents(n) for n in nodes]
        try:
            async def echo(value, ctx):
                return value

            await agents[1].serve(Capability("upper"), echo)
            await agents[2].serve(Capability("count"), echo)
            await agents[2].serve(Capability("hidden"), echo, publish=False)  # served, not published: not listed
            many = sorted(f"bulk-{i:02d}-" + "y" * 90 for i in range(20))
            for name in many:
                await agents[3].serve(Capability(name), echo)
            for a in agents:
                await asyncio.wait_for(a.wait_listed(), 10)
            found = {e.node_id: e for e in await registry.list_mesh(nodes[0])}
            assert set(found) == {nodes[1].node_id, nodes[2].node_id, nodes[3].node_id}
            assert found[nodes[1].node_id].capabilities == ("upper",)
            assert found[nodes[2].node_id].capabilities == ("count",)
            assert found[nodes[3].node_id].capabilities == tuple(many) and found[nodes[3].node_id].complete
            assert all(e.state == registry.ALIVE and e.rtt > 0 for e in found.values())

            # What membership knows is believed without a probe: a node it calls dead is listed dead
            # (here it is in fact up, which proves no probe overrode the verdict).
            real_state_of = nodes[0].membership.state_of
            nodes[0].membership.state_of = lambda nid: "dead" if nid == nodes[2].node_id else real_state_of(nid)
            try:
                found = {e.node_id: e for e in await registry.list_mesh(nodes[0])}
            finally:
                del nodes[0].membership.state_of
            assert (found[nodes[2].node_id].state, found[nodes[2].node_id].rtt) == (registry.DEAD, None)
            assert found[nodes[2].node_id].capabilities == ("count",)
            assert found[nodes[1].node_id].state == found[nodes[3].node_id].state == registry.ALIVE

            shard = key_for(registry.shard_key(nodes[1].node_id))
            assert shard in nodes[1].dht.core.provided
            agents[1].withdraw("upper")  # nothing left to list: stop refreshing the entry (holders expire it)
            await asyncio.wait_for(agents[1].wait_listed(), 10)
            assert shard not in nodes[1].dht.core.provided
        finally:
            await close_mesh(nodes, agents)

    arun(main())
