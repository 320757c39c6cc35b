"""Collaboration patterns on real Nodes (tcp loopback, CURVE) with shell agents as the workers."""

from __future__ import annotations

import asyncio
import shlex
import sys

import pytest

from zmqagents.agents.capability import Capability
from zmqagents.agents.collab import CollabError, debate, map_reduce, parallel, sequential, vote
from zmqagents.agents.runtime import Agents
from zmqagents.agents.shell import ShellAgent
from zmqagents.core import tasks as T
from zmqagents.node import Node

pytestmark = pytest.mark.timeout(90)


def py(code: str) -> ShellAgent:
    """A shell agent running a Python snippet that reads the input JSON as ``x`` and prints ``out``
    (a string as text, anything else as JSON: a shell agent's output is a JSON object or text)."""
    script = (f"import json, sys\nx = json.load(sys.stdin)\n{code}\n"
              "print(out if isinstance(out, str) else json.dumps(out))")
    return ShellAgent(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}", timeout=20)


async def mesh(n: int) -> tuple[list[Node], list[Agents]]:
    seed = Node()
    await seed.start()
    nodes = [seed]
    for _ in range(n - 1):
        node = Node(bootstrap=[seed.contact])
        await node.start()
        nodes.append(node)
    return nodes, [Agents(node) for node in nodes]


async def close(nodes, agents) -> None:
    for a in agents:
        await a.close()
    await asyncio.gather(*(n.close() for n in nodes))


def test_sequential_parallel_and_map_reduce(arun):
    async def main():
        nodes, agents = await mesh(3)
        try:
            await agents[1].serve(Capability("add1"), py('out = {"n": x["n"] + 1}'))
            await agents[2].serve(Capability("double"), py('out = {"n": x["n"] * 2}'))
            await agents[1].serve(Capability("length"), py('out = {"n": len(x)}'))
            await agents[2].serve(Capability("sum"), py('out = {"n": sum(i["n"] for i in x)}'))
            await agents[2].serve(Capability("fail"), ShellAgent("echo nope >&2; exit 1"))
            caller = agents[0]

            assert await sequential(caller, ["add1", "add1", "double"], {"n": 1}) == {"n": 6}
            with pytest.raises(CollabError, match=r"step 2 \(fail\): failed \(agent-error: command exited with status 1: nope\)"):
                await sequential(caller, ["add1", "fail", "double"], {"n": 1})

            results = await parallel(caller, "add1", [{"n": i} for i in range(6)], limit=3)
            assert [r.output for r in results] == [{"n": i + 1} for i in range(6)]

            words = ["mesh", "of", "agents", "talking"]
            assert await map_reduce(caller, "length", "sum", words) == {"n": sum(map(len, words))}
        finally:
            await close(nodes, agents)

    arun(main(), timeout=80)


def test_vote_across_distinct_providers_and_quorum(arun):
    async def main():
        nodes, agents = await mesh(5)
        try:
            await agents[1].serve(Capability("answer"), py('out = {"a": 42}'))
            await agents[2].serve(Capability("answer"), py('out = {"a": 42}'))
            await agents[3].serve(Capability("answer"), py('out = {"a": 41}'))
            result = await vote(agents[0], "answer", {"q": "meaning"}, n=3)
            assert result.output == {"a": 42} and result.votes == 2 and result.voters == 3
            assert len({d.provider for d in result.outcomes}) == 3  # three different providers voted
            with pytest.raises(CollabError, match="no quorum"):
                await vote(agents[0], "answer", {"q": "meaning"}, n=3, quorum=3)
            with pytest.raises(CollabError, match="needs 4 providers"):
                await vote(agents[0], "answer", {"q": "meaning"}, n=4)
        finally:
            await close(nodes, agents)

    arun(main(), timeout=80)


def test_debate_rounds_then_judge(arun):
    async def main():
        nodes, agents = await mesh(3)
        try:
            await agents[1].serve(Capability("pro"), py('out = f"pro r{x[\'round\']} after {len(x[\'transcript\'])} turns"'))
            await agents[2].serve(Capability("con"), py('out = f"con r{x[\'round\']} after {len(x[\'transcript\'])} turns"'))
            await agents[2].serve(Capability("judge"),
                                  py('out = {"winner": x["transcript"][-1]["speaker"], "turns": len(x["transcript"])}'))
            result = await debate(agents[0], ["pro", "con"], "judge", "tabs or spaces?", rounds=2)
            assert [t["said"] for t in result["transcript"]] == [
                "pro r1 after 0 turns", "con r1 after 1 turns", "pro r2 after 2 turns", "con r2 after 3 turns"]
            assert result["verdict"] == {"winner": "con", "turns": 4}
            with pytest.raises(ValueError):
                await debate(agents[0], ["pro"], "judge", "q", rounds=0)
        finally:
            await close(nodes, agents)

    arun(main(), timeout=80)
