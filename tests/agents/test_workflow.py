"""Workflow files: checked before anything runs (cycles, references, types), then run on real nodes."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from contextlib import ExitStack

import pytest
from helpers.cli import server, zmqa

from zmqagents.agents.capability import Capability
from zmqagents.agents.runtime import Agents
from zmqagents.agents.workflow import WorkflowError, parse, resolve, run
from zmqagents.agents.workflow_check import UNKNOWN, Schemas, check, file_schemas
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


def test_every_problem_in_the_file_is_reported_at_once():
    with pytest.raises(WorkflowError) as caught:
        parse({"name": 3, "schemas": {"x": {"output": {"type": "text"}}, "y": []}, "steps": [
            {"name": "a", "agent": "role:x", "retries": -1},
            {"name": "b", "agent": "capability:x", "input": "${steps.zz.output} ${nope.x}", "depends_on": ["a", "q"]},
            {"name": "b", "agent": "capability:x"},
            "not a step",
        ]})
    assert caught.value.problems == [
        "'name' must be a string",
        "schemas.x.output: #/type: unknown type 'text' (one of null, boolean, integer, number, string, array, object)",
        "schemas.y: must be a table with 'input' and/or 'output' (JSON schemas)",
        "step 'a': unknown selector kind 'role' (capability, tag, node)",
        "step 'a': needs a capability:NAME selector (tag and node only narrow its providers)",
        "step 'a': 'retries' must be an integer 0..100",
        "step 3: the name 'b' is used twice",
        "step 4: must be a table/object",
        "step 'b': reference ${steps.zz.output} names no step 'zz'",
        "step 'b': bad reference ${nope.x} (use ${input.FIELD} or ${steps.NAME.output.FIELD})",
        "step 'b': depends_on names no step 'q'",
    ]  # 'a' has problems of its own, so b's dependency on it is not reported as missing


WORDS_OUT = {"type": "object", "required": ["n", "words"], "additionalProperties": False,
             "properties": {"n": {"type": "integer"}, "words": {"type": "array", "items": {"type": "string"}}}}
SUM_IN = {"type": "object", "required": ["count"], "additionalProperties": False,
          "properties": {"count": {"type": "integer"}, "label": {"type": "string"}, "first": {"type": "string"}}}


def typed(*steps: dict, given=UNKNOWN, **schemas: Schemas) -> list[str]:
    w = parse(wf(*steps))
    return [str(p) for p in check(w, {name: schemas.get(name, Schemas()) for name in w.steps}, given)]


SPLIT = {"name": "split", "agent": "capability:words", "input": {"text": "${input.text}"}}


@pytest.mark.parametrize("total_input, problems", [
    ({"count": "${steps.split.output.n}", "label": "n=${steps.split.output.n}", "first": "${steps.split.output.words.0}"}, []),
    ({"count": "${steps.split.output.words}"}, [
        "step 'total', input /count: ${steps.split.output.words}: array where integer is expected "
        "(the output schema of 'words' against the input schema of 'sum')"]),
    ({"count": "${steps.split.output.n}", "first": "${steps.split.output.n}"}, [
        "step 'total', input /first: ${steps.split.output.n}: integer where string is expected "
        "(the output schema of 'words' against the input schema of 'sum')"]),
    ({"count": "${steps.split.output.total}"}, [
        "step 'total': ${steps.split.output.total}: the output of step 'split' ('words') has no field 'total' "
        "(its schema allows only: n, words)"]),
    ({"count": "${steps.split.output.n.value}"}, [
        "step 'total': ${steps.split.output.n.value}: the output of step 'split' ('words'), field n, is integer: "
        "it has no field 'value'"]),
    ({"count": "n=${steps.split.output.n}"}, [
        "step 'total', input /count: text 'n=${steps.split.output.n}' where integer is expected (the input schema of 'sum')"]),
    ({"count": 3, "colour": "red", "label": 4}, [
        "step 'total', input /colour: property not allowed (the input schema of 'sum')",
        "step 'total', input /label: expected string, got integer (the input schema of 'sum')"]),
    ({"label": "${steps.split.output.words}"}, [
        "step 'total', input (whole): missing required property 'count' (the input schema of 'sum')",
        "step 'total', input /label: ${steps.split.output.words}: array where string is expected "
        "(the output schema of 'words' against the input schema of 'sum')"]),
    ("${steps.split.output.n}", [
        "step 'total', input (whole): ${steps.split.output.n}: integer where object is expected "
        "(the output schema of 'words' against the input schema of 'sum')"]),
])
def test_step_inputs_are_checked_against_the_schemas(total_input, problems):
    total = {"name": "total", "agent": "capability:sum", "input": total_input}
    assert typed(SPLIT, total, split=Schemas(output=WORDS_OUT), total=Schemas(input=SUM_IN)) == problems


def test_unknown_schemas_raise_no_alarm():
    total = {"name": "total", "agent": "capability:sum", "input": {"count": "${steps.split.output.total}", "x": 1}}
    assert typed(SPLIT, total) == []  # neither schema known
    assert typed(SPLIT, total, split=Schemas(output={"type": "object", "properties": {"n": {"type": "integer"}}}),
                 total=Schemas(input={"type": "object"})) == []  # open objects: 'total' and 'x' may be fine
    assert typed(SPLIT, {**total, "input": {"count": "${steps.split.output.total}"}},
                 total=Schemas(input=SUM_IN)) == []  # the source's output schema is unknown


def test_workflow_input_is_checked_once_known():
    split = Schemas(input={"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}})
    assert typed(SPLIT, split=split) == []  # no input given: ${input.text} is not checked
    assert typed(SPLIT, split=split, given={"text": 5}) == [
        "step 'split', input /text: expected string, got integer (the input schema of 'words')"]
    assert typed(SPLIT, split=split, given={"txt": "a"}) == [
        "step 'split': ${input.text}: does not resolve in the workflow's input (no 'text' there)"]
    assert typed(SPLIT, split=split, given={"text": "a b"}) == []


def test_schemas_declared_in_the_file_are_used_when_providers_publish_none():
    w = parse({"steps": [SPLIT, {"name": "total", "agent": "capability:sum", "input": {"count": "${steps.split.output.n}"}}],
               "schemas": {"words": {"output": {"type": "object", "properties": {"n": {"type": "string"}}}},
                           "sum": {"input": SUM_IN}}})
    assert [str(p) for p in check(w, file_schemas(w))] == [
        "step 'total', input /count: ${steps.split.output.n}: string where integer is expected "
        "(the output schema of 'words' against the input schema of 'sum')"]


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
        assert res.returncode == 7 and "cycle: a -> a" in res.stderr


def logging_agent(log, code: str) -> str:
    """A shell agent command that first appends its capability to ``log`` (proof that it ran)."""
    script = (f"import json, os, sys\nopen({str(log)!r}, 'a').write(os.environ['ZMQAGENTS_CAPABILITY'] + '\\n')\n"
              f"x = json.load(sys.stdin)\n{code}\nprint(json.dumps(out))")
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"


def test_type_errors_are_refused_before_any_agent_runs(tmp_path):
    ran = tmp_path / "ran.log"
    text_in = json.dumps({"type": "object", "required": ["text"], "additionalProperties": False,
                          "properties": {"text": {"type": "string"}}})
    count_out = json.dumps({"type": "object", "required": ["n"], "additionalProperties": False,
                            "properties": {"n": {"type": "integer"}}})
    repeat_in = json.dumps({"type": "object", "required": ["times", "text"],
                            "properties": {"times": {"type": "integer"}, "text": {"type": "string"}}})
    bad = tmp_path / "bad.toml"
    bad.write_text('''
[[steps]]
name = "count"
agent = "capability:count"
input = {text = "${input.text}"}

[[steps]]
name = "again"
agent = "capability:repeat"
input = {times = "${steps.count.output.n}", text = "${steps.count.output.text}"}

[[steps]]
name = "shout"
agent = "capability:shout"
input = {text = "${steps.count.output.n}"}

[[steps]]
name = "greet"
agent = "capability:shout"
input = {text = "hi", loud = true}

[[steps]]
name = "plain"
agent = "capability:plain"

[[steps]]
name = "more"
agent = "capability:repeat"
input = {times = "${steps.plain.output.n}", text = "x"}

[schemas.plain]
output = {type = "object", properties = {n = {type = "string"}}}

[schemas.repeat]
input = {type = "object", properties = {times = {type = "integer"}}}

[schemas.count]
output = {type = "object"}  # open: the provider's own (closed) schema takes precedence on the mesh
''')
    good = tmp_path / "good.toml"
    good.write_text('''
[[steps]]
name = "count"
agent = "capability:count"
input = {text = "${input.text}"}

[[steps]]
name = "again"
agent = "capability:repeat"
input = {times = "${steps.count.output.n}", text = "${input.text}"}
''')
    with ExitStack() as stack:
        seed, _ = stack.enter_context(server(tmp_path, "agent", "--capability", "count", "--input-schema", text_in,
                                             "--output-schema", count_out,
                                             "--exec", logging_agent(ran, 'out = {"n": len(x["text"])}'), name="a"))
        boot = ["--bootstrap", seed]
        for name, cap, args, code in (
                ("b", "repeat", ["--input-schema", repeat_in], 'out = {"text": x["text"] * x["times"]}'),
                ("c", "shout", ["--input-schema", text_in, "--output-schema", text_in], 'out = {"text": x["text"].upper()}'),
                ("d", "plain", [], 'out = {"n": "3"}')):
            stack.enter_context(server(tmp_path, "agent", "--capability", cap, *args, "--exec", logging_agent(ran, code),
                                       *boot, name=name))
        expected = [
            "step 'again': ${steps.count.output.text}: the output of step 'count' ('count') has no field 'text' "
            "(its schema allows only: n)",
            "step 'shout', input /text: ${steps.count.output.n}: integer where string is expected "
            "(the output schema of 'count' against the input schema of 'shout')",
            "step 'greet', input /loud: property not allowed (the input schema of 'shout')",
            "step 'more', input /times: ${steps.plain.output.n}: string where integer is expected "
            "(the output schema of 'plain' against the input schema of 'repeat')",
        ]
        res = zmqa("workflow", "run", str(bad), "--input", '{"text": "abc"}', *boot, timeout=60)
        assert res.returncode == 7, res.stderr
        assert sorted(line[len("error: "):] for line in res.stderr.splitlines()[:-1]) == sorted(expected)
        assert res.stderr.splitlines()[-1].endswith("4 problem(s); nothing ran") and res.stdout == ""
        assert not ran.exists()  # not even the steps without a problem ran

        res = zmqa("workflow", "check", str(bad), "--input", '{"text": "abc"}', *boot, "--json", timeout=60)
        assert res.returncode == 7, res.stderr
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        assert sorted(str(r["step"]) for r in rows) == ["again", "greet", "more", "shout"]
        assert {"step": "shout", "at": "/text", "ref": "${steps.count.output.n}",
                "problem": "integer where string is expected (the output schema of 'count' against the input schema "
                           "of 'shout')"} in rows
        assert "every step has a provider" in res.stderr
        offline = zmqa("workflow", "check", str(bad))  # no mesh: only the file's [schemas] are known (open 'count')
        assert offline.returncode == 7 and offline.stdout.splitlines() == [expected[3]], offline.stderr
        assert "checking with the file's [schemas] only" in offline.stderr
        assert not ran.exists()

        res = zmqa("workflow", "run", str(good), "--input", '{"text": 5}', *boot, timeout=60)  # input fails count's schema
        assert res.returncode == 7 and "step 'count', input /text: expected string, got integer" in res.stderr
        res = zmqa("workflow", "check", str(good), *boot, timeout=60)
        assert res.returncode == 0 and res.stdout == "", res.stderr
        res = zmqa("workflow", "run", str(good), "--input", '{"text": "ab"}', *boot, "--json", timeout=60)
        assert res.returncode == 0, res.stderr
        assert [json.loads(line)["output"] for line in res.stdout.splitlines()] == [{"n": 2}, {"text": "abab"}]
        assert ran.read_text().split() == ["count", "repeat"]
