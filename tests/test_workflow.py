"""Workflow files: checked before anything runs (cycles, references, types), then run on real nodes."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys

import pytest
from test_cli import server, zmqa

from zmqagents.agents.capability import Capability
from zmqagents.agents.runtime import Agents
from zmqagents.agents.workflow import WorkflowError, parse, resolve, run
from zmqagents.agents.shell import ShellAgent
from zmqagents.node import Node

pytestmark = pytest.mark.timeout(90)


def wf(*steps: dict) -> dict:
    return {"name": "t", "steps": list(steps)}


@pytest.mark.parametrize("doc, message", [
    ([], "a workflow is a table"),
    ({"steps": []}, "non-empty array"),
    (wf({"name": "a", "agent": "capability:x", "depends_on": ["b"]}, {"name": "b", "agent": "capability:x", "depends_on": ["a"]}),
     "cycle: a -> b -> a"),
    (wf({"name": "a", "agent": "capability:x", "input": "${steps.c.output}"}, {"name": "b", "agent": "capability:x"},
        {"name": "c", "agent": "capability:x", "input": {"v": "${steps.b.output.v}"}, "depends_on": ["a"]}),
     "cycle: a -> c -> a"),
    (wf({"name": "a", "agent": "capability:x", "input": "${steps.nope.output}"}), "names no step 'nope'"),
    (wf({"name": "a", "agent": "capability:x", "input": "${steps.a.output}"}), "names the step itself"),
    (wf({"name": "a", "agent": "capability:x", "input": "${outputs.a}"}), "bad reference"),
    (wf({"name": "a", "agent": "capability:x", "input": "${input..x}"}), "malformed reference"),
    (wf({"name": "a", "agent": "capability:x", "depends_on": ["z"]}), "depends_on names no step 'z'"),
    (wf({"name": "a", "agent": "tag:fast"}), "needs a capability"),
    (wf({"name": "a", "agent": "role:x"}), "unknown selector kind"),
    (wf({"name": "a", "agent": "node:xyz", }), "needs a hex node id"),
    (wf({"name": "a", "agent": "capability:x", "retries": "2"}), "'retries' must be an integer"),
    (wf({"name": "a", "agent": "capability:x", "timeout": 0}), "'timeout' must be a positive"),
    (wf({"name": "a", "agent": "capability:x", "colour": 1}), "unknown key"),
    (wf({"name": "a b", "agent": "capability:x"}), "'name' must be"),
    (wf({"name": "a", "agent": "capability:x"}, {"name": "a", "agent": "capability:x"}), "used twice"),
])
def test_invalid_workflows_are_caught_before_running(doc, message):
    with pytest.raises(WorkflowError, match=message.replace("(", r"\(")):
        parse(doc)


def test_references_imply_dependencies_and_resolve():
    w = parse(wf({"name": "b", "agent": "capability:x", "input": {"t": "${steps.a.output.text}", "n": "${input.n}"}},
                 {"name": "a", "agent": ["capability:x", "tag:t", "node:abcd"]}))
    assert w.order == ["a", "b"] and w.steps["b"].depends_on == ("a",)
    assert w.steps["a"].tags == ("t",) and w.steps["a"].nodes == ("abcd",)
    ctx = {"input": {"n": 3}, "steps": {"a": {"output": {"text": "hi", "list": [1, 2]}}}}
    assert resolve({"t": "${steps.a.output.text}", "n": "${input.n}", "s": "n=${input.n} ${steps.a.output.list}"}, ctx) == \
        {"t": "hi", "n": 3, "s": "n=3 [1, 2]"}
    with pytest.raises(WorkflowError, match="does not resolve"):
        resolve("${steps.a.output.missing}", ctx)


def py(code: str) -> ShellAgent:
    script = f"import json, sys\nx = json.load(sys.stdin)\n{code}\nprint(json.dumps(out))"
    return ShellAgent(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}", timeout=20)


def test_parallel_branches_retries_and_skips_on_real_nodes(arun, tmp_path):
    async def main():
        seed = Node()
        await seed.start()
        nodes = [seed] + [Node(bootstrap=[seed.contact]) for _ in range(2)]
        for n in nodes[1:]:
            await n.start()
        agents = [Agents(n) for n in nodes]
        flaky = tmp_path / "flaky"
        try:
            await agents[1].serve(Capability("words", tags=("text",)), py('out = {"words": x["text"].split()}'))
            await agents[2].serve(Capability("count"), py('out = {"n": len(x["items"])}'))
            await agents[2].serve(Capability("upper"), py('out = {"items": [w.upper() for w in x["items"]]}'))
            await agents[1].serve(Capability("join"), py('out = {"text": " ".join(x["a"]) + " (" + str(x["n"]) + ")"}'))
            await agents[2].serve(Capability("flaky"), ShellAgent(
                f"if [ -e {flaky} ]; then echo '{{\"ok\": true}}'; else touch {flaky}; exit 1; fi"))
            await agents[2].serve(Capability("broken"), ShellAgent("exit 3"))
            w = parse(wf(
                {"name": "split", "agent": ["capability:words", "tag:text"], "input": {"text": "${input.text}"}},
                {"name": "count", "agent": "capability:count", "input": {"items": "${steps.split.output.words}"}},
                {"name": "shout", "agent": "capability:upper", "input": {"items": "${steps.split.output.words}"}},
                {"name": "join", "agent": "capability:join",
                 "input": {"a": "${steps.shout.output.items}", "n": "${steps.count.output.n}"}},
                {"name": "retry", "agent": "capability:flaky", "retries": 1},
                {"name": "bad", "agent": "capability:broken"},
                {"name": "after_bad", "agent": "capability:count", "input": {"items": "${steps.bad.output.x}"}},
            ))
            results = await run(agents[0], w, {"text": "a mesh of agents"})
            assert results["join"].output == {"text": "A MESH OF AGENTS (4)"}
            assert results["count"].started_ms < results["shout"].started_ms + results["shout"].elapsed_ms  # in parallel
            assert results["retry"].state == "completed" and results["retry"].attempts == 2
            assert results["bad"].state == "failed" and results["bad"].error["code"] == "agent-error"
            assert results["after_bad"].state == "skipped" and "bad did not complete" in results["after_bad"].error["msg"]
            assert results["split"].provider == nodes[1].node_id.hex()
        finally:
            for a in agents:
                await a.close()
            await asyncio.gather(*(n.close() for n in nodes))

    arun(main(), timeout=80)


def test_workflow_cli(tmp_path):
    flow = tmp_path / "flow.toml"
    flow.write_text('name = "demo"\n[[steps]]\nname = "up"\nagent = "capability:upper"\ninput = "${input}"\n'
                    '[[steps]]\nname = "again"\nagent = "capability:upper"\ninput = "${steps.up.output} twice"\n')
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(wf({"name": "a", "agent": "capability:x", "depends_on": ["a"]})))
    with server(tmp_path, "agent", "--capability", "upper", "--stdin", "text", "--exec", "tr a-z A-Z") as (seed, _):
        res = zmqa("workflow", "run", str(flow), "--input", '"hi"', "--bootstrap", seed, "--json", timeout=60)
        assert res.returncode == 0, res.stderr
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        assert [(r["step"], r["state"], r["output"]) for r in rows] == [("up", "completed", "HI"), ("again", "completed", "HI TWICE")]
        res = zmqa("workflow", "run", str(bad), "--bootstrap", seed)
        assert res.returncode == 2 and "cycle: a -> a" in res.stderr
