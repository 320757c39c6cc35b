"""Metrics of the agent runtime and of relays on the admin endpoint (real nodes, real HTTP scrapes)."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from zmqagents.agents.capability import Capability
from zmqagents.agents.runtime import Agents, DirectLookup
from zmqagents.core.relay import RelayConfig
from zmqagents.node import Node, NodeConfig
from zmqagents.sidecar.runtime_metrics import AgentsMetrics, RelayMetrics, serve_admin


async def scrape(address: str) -> dict[tuple[str, tuple], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            assert resp.status == 200
            return resp.read().decode()
    text = await asyncio.get_running_loop().run_in_executor(None, get)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_tasks_by_state_queue_depth_outcomes_and_run_time_histogram(arun):
    async def main():
        async with Node() as provider, Node(peers=[provider.contact]) as caller:
            served = Agents(provider)
            calling = Agents(caller, lookup=DirectLookup(caller, [provider.contact]))
            release = asyncio.Event()

            async def slow(value, ctx):
                await release.wait()
                await asyncio.sleep(0.2)
                return value

            await served.serve(Capability("slow", max_concurrency=1, queue=5), slow, publish=False)
            admin = await serve_admin(provider, "127.0.0.1:0", [AgentsMetrics(served)])
            try:
                runs = [asyncio.ensure_future(calling.request("slow", i)) for i in range(3)]
                for _ in range(200):
                    m = await scrape(admin.address)
                    if m[("zmqagents_tasks_queued", ())] == 2:
                        break
                    await asyncio.sleep(0.05)
                assert m[("zmqagents_tasks", (("state", "working"),))] == 1
                assert m[("zmqagents_tasks", (("state", "submitted"),))] == 2  # waiting for the slot
                assert m[("zmqagents_tasks_queued", ())] == 2
                release.set()
                done = await asyncio.wait_for(asyncio.gather(*runs), 20)
                assert [d.state for d in done] == ["completed"] * 3
                m = await scrape(admin.address)
                assert m[("zmqagents_task_runs_total", (("outcome", "completed"),))] == 3
                assert m[("zmqagents_task_duration_seconds_count", ())] == 3
                assert m[("zmqagents_task_duration_seconds_bucket", (("le", "0.01"),))] == 0  # each >= 0.2 s
                assert m[("zmqagents_task_duration_seconds_bucket", (("le", "+Inf"),))] == 3
                assert m[("zmqagents_task_duration_seconds_sum", ())] >= 0.6
                assert m[("zmqagents_tasks_queued", ())] == 0
                assert m[("zmqagents_task_runtime_events_total", (("outcome", "started"),))] == 3
            finally:
                await admin.close()
                await calling.close()
                await served.close()

    arun(main())


def test_relay_clients_and_events(arun):
    async def main():
        fast = RelayConfig(keepalive=0.2, dead_after=0.6, expire=1.0)
        async with Node(config=NodeConfig(serve_relay=True, relay=fast)) as relay:
            admin = await serve_admin(relay, "127.0.0.1:0", [RelayMetrics(relay)])
            try:
                edge = Node(config=NodeConfig(outbound_only=True, relays=[relay.contact], relay=fast))
                async with edge:
                    for _ in range(100):
                        m = await scrape(admin.address)
                        if m[("zmqagents_relay_clients", ())] == 1:
                            break
                        await asyncio.sleep(0.05)
                    assert m[("zmqagents_relay_clients", ())] == 1
                    assert m[("zmqagents_relay_events_total", (("outcome", "registered"),))] >= 1
                    # the node's own metrics are there too
                    assert any(name == "zmqagents_node_info" and ("node_id", relay.node_id.hex()) in labels
                               for name, labels in m)
            finally:
                await admin.close()

    arun(main())


# -- the commands' --admin flag, with real processes --------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

CLI = [sys.executable, "-m", "zmqagents.cli"]


def _start(*args: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(CLI + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise AssertionError(f"{args[0]} exited: {proc.stderr.read()[-2000:]}")
    return proc, json.loads(line)


def _http(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.timeout(90)
def test_agent_relay_and_node_commands_serve_metrics_and_health_with_admin(tmp_path):
    procs = []
    try:
        agent, hello = _start("agent", "--capability", "upper", "--stdin", "text", "--exec", "tr a-z A-Z",
                              "--admin", "127.0.0.1:0")
        procs.append(agent)
        address = hello["admin"]
        assert _http(address, "/livez")[0] == 200 and _http(address, "/readyz")[0] == 200
        before = _samples(_http(address, "/metrics")[1])
        assert before[("zmqagents_tasks", (("state", "working"),))] == 0
        assert before[("zmqagents_task_duration_seconds_count", ())] == 0
        run = subprocess.run(CLI + ["task", "upper", '"hello"', "--bootstrap", hello["contact"]],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout)["output"].strip() == "HELLO"
        after = _samples(_http(address, "/metrics")[1])
        assert after[("zmqagents_task_runs_total", (("outcome", "completed"),))] == 1
        assert after[("zmqagents_task_duration_seconds_count", ())] == 1
        assert after[("zmqagents_transport_received_messages_total", ())] > 0  # the node's own metrics too

        relay, hello = _start("relay", "--admin", "127.0.0.1:0")
        procs.append(relay)
        metrics = _samples(_http(hello["admin"], "/metrics")[1])
        assert metrics[("zmqagents_relay_clients", ())] == 0
        assert ("zmqagents_relay_events_total", (("outcome", "registered"),)) in metrics
        assert _http(hello["admin"], "/readyz")[0] == 200

        node, hello = _start("node", "--admin", "127.0.0.1:0")
        procs.append(node)
        assert _http(hello["admin"], "/readyz")[0] == 200
        assert "zmqagents_inbox_messages" in _http(hello["admin"], "/metrics")[1]

        config = tmp_path / "c.toml"  # the sidecar: --admin is [admin] enabled + listen
        config.write_text(f'[node]\nkey = "{tmp_path / "k.key"}"\n[local_api]\nenabled = false\n'
                          '[mdns]\nenabled = false\n')
        sidecar, hello = _start("node", "--config", str(config), "--admin", "127.0.0.1:0")
        procs.append(sidecar)
        assert _http(hello["admin"], "/readyz")[0] == 200

        bad = subprocess.run(CLI + ["relay", "--admin", "nonsense"], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
        taken = hello["admin"]
        busy = subprocess.run(CLI + ["node", "--admin", taken], capture_output=True, text=True, timeout=30)
        assert busy.returncode == 1 and "cannot listen" in busy.stderr
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
