"""Collaboration patterns on real Nodes (tcp loopback, CURVE) with shell agents as the workers."""

from __future__ import annotations

import shlex
import sys

import pytest

from zmqagents.agents.capability import Capability
from zmqagents.agents.collab import CollabError, debate, map_reduce, parallel, sequential, vote
from zmqagents.agents.runtime import Agents
from zmqagents.agents.shell import ShellAgent
from zmqagents.core import tasks as T

from helpers.realmesh import close_mesh, start_mesh

pytestmark = pytest.mark.timeout(90)


def py(code: str) -> ShellAgent:
    """A shell agent running a Python snippet that reads the input JSON as ``x`` and prints ``out``
    (a string as text, anything else as JSON: a shell agent's output is a JSON object or text)."""
    script = (f"import json, sys\nx = json.load(sys.stdin)\n{code}\n"
              "print(out if isinstance(out, str) else json.dumps(out))")
    return ShellAgent(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}", timeout=20)


def test_sequential_parallel_and_map_reduce(arun):
    async def main():
        nodes = await start_mesh(3)
        agents = [Agents(node) for node in nodes]
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
            await close_mesh(nodes, agents)

    arun(main(), timeout=80)


def test_vote_across_distinct_providers_and_quorum(arun):
    async def main():
        nodes = await start_mesh(5)
        agents = [Agents(node) for node in nodes]
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
            await close_mesh(nodes, agents)

    arun(main(), timeout=80)


def test_debate_rounds_then_judge(arun):
    async def main():
        nodes = await start_mesh(3)
        agents = [Agents(node) for node in nodes]
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
            await close_mesh(nodes, agents)

    arun(main(), timeout=80)


def test_each_mode_is_a_workflow_step(arun):
    from zmqagents.agents.workflow import parse, run
    from zmqagents.agents.workflow_check import check, gather_schemas

    n_out = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    n_in = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}

    async def main():
        nodes = await start_mesh(4)
        agents = [Agents(node) for node in nodes]
        try:
            for a in agents[1:]:
                await a.serve(Capability("answer"), py('out = {"a": 42}'))
            await agents[1].serve(Capability("add1", input_schema=n_in, output_schema=n_out), py('out = {"n": x["n"] + 1}'))
            await agents[2].serve(Capability("double", input_schema=n_in, output_schema=n_out), py('out = {"n": x["n"] * 2}'))
            await agents[1].serve(Capability("length"), py('out = {"n": len(x)}'))
            await agents[2].serve(Capability("sum"), py('out = {"n": sum(i["n"] for i in x)}'))
            await agents[3].serve(Capability("pro"), py('out = "yes r" + str(x["round"])'))
            await agents[3].serve(Capability("judge"), py('out = {"turns": len(x["transcript"])}'))
            await agents[3].serve(Capability("fail"), ShellAgent("echo nope >&2; exit 1"))
            wf = parse({"steps": [
                {"name": "chain", "mode": "sequential", "chain": ["capability:add1", "capability:double"],
                 "input": {"n": "${input.n}"}},
                {"name": "fan", "mode": "parallel", "agent": "capability:add1", "limit": 2,
                 "input": [{"n": 1}, {"n": "${steps.chain.output.n}"}]},
                {"name": "mr", "mode": "map-reduce", "agent": "capability:length", "reduce": "capability:sum",
                 "input": ["ab", "cde"]},
                {"name": "poll", "mode": "vote", "agent": "capability:answer", "voters": 3, "quorum": 3},
                {"name": "talk", "mode": "debate", "debaters": ["capability:pro"], "judge": "capability:judge",
                 "rounds": 3, "input": "${steps.poll.output.output.a}"},
                {"name": "broken", "mode": "sequential", "chain": ["capability:add1", "capability:fail"],
                 "input": {"n": 1}, "retries": 1},
                {"name": "scalar", "mode": "parallel", "agent": "capability:add1", "input": {"n": 1}},
            ]})
            problems = check(wf, await gather_schemas(agents[0], wf), {"n": 2})  # composed schemas: an array of add1's
            assert [str(p) for p in problems] == [
                "step 'scalar', input (whole): expected array, got object (the input schema of 'add1')"]
            results = await run(agents[0], wf, {"n": 2})
            states = {name: r.state for name, r in results.items()}
            assert states == {"chain": "completed", "fan": "completed", "mr": "completed", "poll": "completed",
                              "talk": "completed", "broken": "failed", "scalar": "failed"}
            assert results["chain"].output == {"n": 6}
            assert results["fan"].output == [{"n": 2}, {"n": 7}]
            assert results["mr"].output == {"n": 5}
            assert results["poll"].output == {"output": {"a": 42}, "votes": 3, "voters": 3}
            assert results["talk"].output["verdict"] == {"turns": 3}
            assert results["talk"].output["transcript"][0] == {"round": 1, "speaker": "pro", "said": "yes r1"}
            assert results["broken"].attempts == 2 and results["broken"].error["code"] == "agent-error"
            assert "step 2 (fail)" in results["broken"].error["msg"]
            assert "needs an array input" in results["scalar"].error["msg"]
        finally:
            await close_mesh(nodes, agents)

    arun(main(), timeout=80)


def test_collaboration_steps_are_checked_before_running():
    from zmqagents.agents.workflow import WorkflowError, parse
    from zmqagents.agents.workflow_check import Schemas, check, file_schemas

    for step, message in [
        ({"mode": "chat", "agent": "capability:x"}, "'mode' must be one of"),
        ({"mode": "sequential", "agent": "capability:x"}, "'agent' does not apply to mode 'sequential'"),
        ({"mode": "sequential", "chain": []}, "'chain' must be a non-empty array"),
        ({"mode": "map-reduce", "agent": "capability:x"}, "mode 'map-reduce' needs 'reduce'"),
        ({"mode": "vote", "agent": "capability:x", "voters": 2, "quorum": 3}, "'quorum' cannot exceed 'voters'"),
        ({"mode": "debate", "debaters": ["pro"], "judge": "capability:j"}, "'debaters' must be a capability:NAME"),
        ({"mode": "parallel", "agent": ["capability:x", "tag:gpu"]}, "only narrow a plain task step"),
        ({"agent": "capability:x", "rounds": 2}, "'rounds' does not apply to mode 'task'"),
    ]:
        with pytest.raises(WorkflowError, match=__import__("re").escape(message)):
            parse({"steps": [{"name": "s", **step}]})

    # types across the pattern's hand-overs and into the step's composed output
    wf = parse({"schemas": {
        "count": {"output": {"type": "object", "properties": {"n": {"type": "integer"}}}},
        "shout": {"input": {"type": "object", "properties": {"n": {"type": "string"}}}},
        "judge": {"output": {"type": "object", "properties": {"winner": {"type": "string"}}, "additionalProperties": False}},
    }, "steps": [
        {"name": "a", "mode": "sequential", "chain": ["capability:count", "capability:shout"]},
        {"name": "d", "mode": "debate", "debaters": ["capability:count"], "judge": "capability:judge"},
        {"name": "e", "agent": "capability:shout", "input": {"n": "${steps.d.output.verdict.loser}"}},
        {"name": "f", "agent": "capability:shout", "input": {"n": "${steps.d.output.verdikt}"}},
    ]})
    problems = [str(p) for p in check(wf, file_schemas(wf))]
    assert problems == [
        "step 'a': 'count' hands 'shout' what it cannot take: integer where string is expected (at /n)",
        "step 'e': ${steps.d.output.verdict.loser}: the output of step 'd' ('judge'), field verdict, has no field "
        "'loser' (its schema allows only: winner)",
        "step 'f': ${steps.d.output.verdikt}: the output of step 'd' ('judge') has no field 'verdikt' "
        "(its schema allows only: transcript, verdict)",
    ]
    assert isinstance(file_schemas(wf)["a"], Schemas)
