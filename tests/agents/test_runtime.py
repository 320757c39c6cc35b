"""Tasks between real Nodes (tcp loopback, CURVE on): providers found through DHT provider records,
shell and coroutine agents, busy failover, provider death, allow lists, schemas, cancel."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from zmqagents.agents.base import AgentError
from zmqagents.agents.capability import Capability, InvalidInput
from zmqagents.agents.runtime import NO_ON_INPUT, Agents, DirectLookup, NoAnswer
from zmqagents.agents.shell import ShellAgent
from zmqagents.core import tasks as T

from helpers.realmesh import close_mesh, quick_detection, start_mesh

pytestmark = pytest.mark.timeout(60)


def test_shell_and_coroutine_agents_found_through_the_dht(arun):
    async def main():
        nodes = await start_mesh(4, quick_detection)
        agents = [Agents(n) for n in nodes]
        try:
            await agents[1].serve(Capability("upper", max_concurrency=2),
                                  ShellAgent("tr a-z A-Z; echo done", stdin="text"))

            async def count(value, ctx):
                for i in range(3):
                    ctx.progress(i)
                return {"n": len(value["text"])}

            await agents[2].serve(Capability("count", input_schema={"type": "object", "required": ["text"]}), count)
            chunks = []
            done = await agents[3].request("upper", "hello\nworld", on_progress=chunks.append)
            assert done.state == T.COMPLETED and done.output == "HELLO\nWORLD\ndone"
            assert done.provider == nodes[1].node_id
            assert [c.data for c in chunks] == ["HELLO", "WORLD", "done"]
            assert [c.seq for c in chunks] == [2, 3, 4]

            done = await agents[0].request("count", {"text": "four"}, stream=False)
            assert done.output == {"n": 4}

            # the input schema is checked before anything is sent
            with pytest.raises(InvalidInput, match="missing required property 'text'"):
                await agents[0].request("count", {"txt": "x"})
            assert agents[2].provider.stats["received"] == 1

            done = await agents[0].request("nobody-offers-this", 1)
            assert done.state == T.REJECTED and done.error["code"] == T.E_NO_PROVIDER
        finally:
            await close_mesh(nodes, agents)

    arun(main(), timeout=50)


def test_busy_providers_route_elsewhere_then_wait_for_room(arun):
    async def main():
        nodes = await start_mesh(3, quick_detection)
        agents = [Agents(n) for n in nodes]
        gate = asyncio.Event()

        async def slow(value, ctx):
            await gate.wait()
            return value

        try:
            for a in agents[:2]:
                await a.serve(Capability("slow", max_concurrency=1), slow)
            caller = agents[2]
            first = asyncio.ensure_future(caller.request("slow", 1))
            second = asyncio.ensure_future(caller.request("slow", 2))
            third = asyncio.ensure_future(caller.request("slow", 3))
            await asyncio.sleep(1.0)
            gate.set()
            results = await asyncio.gather(first, second, third)
            # two slots in the mesh: the third task found both full (busy, never ran), waited, then ran
            assert [r.state for r in results] == [T.COMPLETED] * 3 and [r.output for r in results] == [1, 2, 3]
            assert caller.caller.stats["busy_waits"] >= 1 and max(r.attempts for r in results) >= 3
            assert {r.provider for r in results} == {nodes[0].node_id, nodes[1].node_id}
            assert agents[0].provider.stats["busy"] + agents[1].provider.stats["busy"] >= 2
        finally:
            await close_mesh(nodes, agents)

    arun(main(), timeout=50)


def test_provider_death_fails_a_plain_task_and_moves_an_idempotent_one(arun, tmp_path):
    async def main():
        nodes = await start_mesh(4, quick_detection)
        agents = [Agents(n) for n in nodes]
        runs = tmp_path / "runs"
        try:
            for a in agents[1:3]:
                await a.serve(Capability("work"), ShellAgent(f"echo run >> {runs}; sleep 30"))
            caller = agents[3]
            cands = await caller.candidates("work")
            assert len(cands) == 2
            plain_id, plain = await caller.submit(T.TaskSpec("work", 1), candidates=cands)
            idem_id, idem = await caller.submit(T.TaskSpec("work", 2, idempotent=True), candidates=cands)
            while not runs.exists() or runs.read_text().count("run") < 2:
                await asyncio.sleep(0.05)
            # kill the provider of the plain task (it leaves: membership reports it at once)
            victim = next(i for i in (1, 2) if caller.caller._calls[plain_id].provider == nodes[i].node_id)
            idem_at_victim = caller.caller._calls[idem_id].provider == nodes[victim].node_id
            await nodes[victim].close()  # first, so it cannot tell anyone: as good as dead to the caller
            await agents[victim].close()
            res = await asyncio.wait_for(plain, 10)
            assert res.state == T.FAILED and res.error["code"] == T.E_PROVIDER_GONE and res.maybe_ran
            if idem_at_victim:
                while caller.caller.state_of(idem_id) == T.SUBMITTED and caller.stats["reroutes"] == 0:
                    await asyncio.sleep(0.05)
                assert caller.stats["reroutes"] == 1
            caller.cancel(idem_id)
            assert (await idem).state == T.CANCELED
            # the plain task ran once in all (never re-sent); the idempotent one at most twice
            assert runs.read_text().count("run") == 2 + (1 if idem_at_victim else 0)
        finally:
            await close_mesh([n for n in nodes if n.running], [a for i, a in enumerate(agents)])

    arun(main(), timeout=50)


def test_allow_list_and_direct_lookup_and_cancel(arun, tmp_path):
    async def main():
        nodes = await start_mesh(3, quick_detection)
        pidfile = tmp_path / "pid"
        agents = [Agents(nodes[0]), Agents(nodes[1]), Agents(nodes[2], lookup=DirectLookup(nodes[2], [nodes[0].contact]))]
        try:
            await agents[0].serve(Capability("secret", allow=frozenset({nodes[1].node_id})), ShellAgent("echo ok"),
                                  publish=False)
            await agents[0].serve(Capability("sleep"), ShellAgent(f"sleep 30 & echo $! > {pidfile}; wait"), publish=False)
            done = await agents[2].request("secret", 1)
            assert done.state == T.REJECTED and done.error["code"] == T.E_DENIED
            assert "allow list" in done.error["msg"]

            task = asyncio.ensure_future(agents[2].request("sleep", None))
            while not pidfile.exists() or not pidfile.read_text().strip():
                await asyncio.sleep(0.05)
            pid = int(pidfile.read_text())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
                assert time.monotonic() < deadline, "the canceled task's process group still runs"
                await asyncio.sleep(0.05)
            while agents[0].provider.active():
                await asyncio.sleep(0.05)
            assert agents[0].provider.stats["canceled"] == 1
        finally:
            await close_mesh(nodes, agents)

    arun(main(), timeout=50)


def test_agent_failure_and_deadline(arun):
    async def main():
        nodes = await start_mesh(2, quick_detection)
        agents = [Agents(n) for n in nodes]

        async def broken(value, ctx):
            raise AgentError("no model loaded")

        async def stuck(value, ctx):
            await asyncio.sleep(60)

        try:
            await agents[0].serve(Capability("broken"), broken)
            await agents[0].serve(Capability("stuck"), stuck)
            done = await agents[1].request("broken", 1)
            assert done.state == T.FAILED and done.error == {"code": T.E_AGENT, "msg": "no model loaded"}
            start = time.monotonic()
            done = await agents[1].request("stuck", 1, deadline=0.5)
            assert done.state == T.FAILED and done.error["code"] == T.E_DEADLINE
            assert time.monotonic() - start < 2
            while agents[0].provider.active():
                await asyncio.sleep(0.02)
            assert not agents[0]._running
        finally:
            await close_mesh(nodes, agents)

    arun(main(), timeout=50)


def test_agents_ask_their_caller_mid_task(arun):
    async def main():
        nodes = await start_mesh(2, quick_detection)
        agents = [Agents(n) for n in nodes]

        async def greet(value, ctx):
            ctx.progress("thinking")
            name = await ctx.ask({"q": "name?", "for": value})
            ctx.progress("got it")
            title = await ctx.ask("title?")
            return f"hello {title} {name}"

        prompts = []

        async def on_input(prompt):
            prompts.append(prompt)
            return {"name?": "Ann"}.get(prompt["q"]) if isinstance(prompt, dict) else "Dr"

        try:
            await agents[0].serve(Capability("greet"), greet)
            await agents[0].serve(Capability("asker"), ShellAgent(
                'read -r x; echo \'{"input_required": "more?"}\'; read -r y; echo "{\\"x\\": $x, \\"y\\": $y}"', ask=True))
            chunks = []
            done = await agents[1].request("greet", 7, on_input=on_input, on_progress=chunks.append)
            assert done.state == T.COMPLETED and done.output == "hello Dr Ann", done
            assert prompts == [{"q": "name?", "for": 7}, "title?"]
            assert [c.data for c in chunks] == ["thinking", "got it"]
            assert agents[0].stats["questions"] == 2 and agents[0].stats["answers"] == 2
            assert agents[1].stats["answered"] == 2

            async def fixed(prompt):
                return [1, 2]

            done = await agents[1].request("asker", {"a": 1}, on_input=fixed)
            assert done.state == T.COMPLETED and done.output == {"x": {"a": 1}, "y": [1, 2]}, done
        finally:
            await close_mesh(nodes, agents)

    arun(main(), timeout=50)


def test_a_question_nobody_answers_cancels_the_task_and_the_deadline_still_holds(arun, tmp_path):
    async def main():
        nodes = await start_mesh(2, quick_detection)
        agents = [Agents(n) for n in nodes]
        pidfile = tmp_path / "pid"
        stopped = []

        async def asks(value, ctx):
            try:
                return await ctx.ask("anyone?")
            except asyncio.CancelledError:
                stopped.append(value)
                raise

        try:
            await agents[0].serve(Capability("asks"), asks)
            await agents[0].serve(Capability("shell-asks"), ShellAgent(
                f'sleep 30 & echo $! > {pidfile}; echo \'{{"input_required": "?"}}\'; read -r a; wait', ask=True))
            caller = agents[1]
            done = await caller.request("asks", 1)  # no on_input
            assert done.state == T.CANCELED and done.error == {"code": T.E_CANCELED, "msg": NO_ON_INPUT}

            async def refuse(prompt):
                raise NoAnswer("not telling")

            async def broken(prompt):
                raise KeyError(prompt)

            async def too_big(prompt):
                return "x" * (T.CallerConfig().max_input_bytes + 1)

            done = await caller.request("asks", 2, on_input=refuse)
            assert done.state == T.CANCELED and done.error["msg"] == "not telling"
            done = await caller.request("asks", 3, on_input=broken)
            assert done.state == T.CANCELED and done.error["msg"].startswith("the caller could not answer") \
                and "KeyError" in done.error["msg"]
            done = await caller.request("asks", 4, on_input=too_big)
            assert done.state == T.CANCELED and "exceeds" in done.error["msg"]

            answering = []

            async def slow(prompt):
                try:
                    await asyncio.sleep(30)
                finally:
                    answering.append("stopped")

            start = time.monotonic()
            done = await caller.request("asks", 5, on_input=slow, deadline=0.5)
            assert done.state == T.FAILED and done.error["code"] == T.E_DEADLINE
            assert time.monotonic() - start < 3
            done = await caller.request("shell-asks", 6, on_input=slow, deadline=0.5)
            assert done.state == T.FAILED and done.error["code"] == T.E_DEADLINE
            deadline = time.monotonic() + 5
            while agents[0].provider.active() or agents[0]._running:
                assert time.monotonic() < deadline, "a task waiting for input outlived its deadline at the provider"
                await asyncio.sleep(0.02)
            pid = int(pidfile.read_text())
            while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
                assert time.monotonic() < deadline, "the asking command's process group still runs"
                await asyncio.sleep(0.02)
            assert stopped == [1, 2, 3, 4, 5] and answering == ["stopped", "stopped"] and not caller._answering
            assert caller.stats["unanswered"] == 4 and agents[0].provider.stats["input_required"] == 6
        finally:
            await close_mesh(nodes, agents)

    arun(main(), timeout=50)


def test_a_provider_that_shuts_down_cancels_its_tasks_at_once(arun):
    async def main():
        nodes = await start_mesh(3, quick_detection)
        agents = [Agents(n) for n in nodes]

        async def stuck(value, ctx):
            await asyncio.sleep(60)

        try:
            await agents[0].serve(Capability("stuck"), stuck)
            await agents[1].serve(Capability("quick"), lambda value, ctx: asyncio.sleep(0, value))
            caller = agents[2]
            plain = asyncio.ensure_future(caller.request("stuck", 1))
            while not agents[0]._running:
                await asyncio.sleep(0.02)
            start = time.monotonic()
            await agents[0].close()
            done = await asyncio.wait_for(plain, 5)
            assert done.state == T.CANCELED and done.error == {"code": T.E_PROVIDER_STOPPED,
                                                               "msg": "the provider is shutting down"}
            assert time.monotonic() - start < 3 and done.maybe_ran
        finally:
            await close_mesh(nodes, agents[1:])

    arun(main(), timeout=50)
