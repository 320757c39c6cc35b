"""`zmqagents mesh graph` against a real mesh (CURVE, loopback, one process of nodes, the CLI in its own):
every format, capabilities, and a node that answers with garbage or an invented, huge table."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess

import pytest

from zmqagents.agents.capability import Capability
from zmqagents.agents.runtime import Agents
from zmqagents.agents.shell import ShellAgent
from zmqagents.identity import Contact, Identity

from helpers.cli import CLI
from helpers.realmesh import close_mesh, start_mesh


async def cli(*args: str, timeout: float = 60) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(*CLI, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out, err.decode()


async def mesh_with_an_agent(n: int):
    nodes = await start_mesh(n)
    agents = Agents(nodes[2])
    await agents.serve(Capability("upper"), ShellAgent("tr a-z A-Z"))
    # every node should know every other before we crawl (a 6-node mesh converges in well under a second)
    for _ in range(100):
        if all(len(node.peers()) == n - 1 for node in nodes):
            break
        await asyncio.sleep(0.05)
    return nodes, agents


def test_mesh_graph_json_and_dot_draw_every_node_with_its_capabilities(arun, tmp_path):
    async def main():
        nodes, agents = await mesh_with_an_agent(6)
        try:
            status, out, err = await cli("mesh", "graph", "--mesh", str(nodes[0].contact), "--format", "json")
            assert status == 0, err
            graph = json.loads(out)
            ids = {node.node_id.hex() for node in nodes}
            assert {n["id"] for n in graph["nodes"]} == ids
            assert all(n["state"] == "answered" for n in graph["nodes"])
            caps = {n["id"]: n["capabilities"] for n in graph["nodes"]}
            assert caps[nodes[2].node_id.hex()] == ["upper"]
            assert caps[nodes[0].node_id.hex()] == []
            edges = {(e["from"], e["to"]) for e in graph["edges"]}
            assert (nodes[0].node_id.hex(), nodes[5].node_id.hex()) in edges
            assert all(e["state"] in ("alive", "suspect", "unprobed") for e in graph["edges"])
            assert graph["crawl"]["messages_sent"] == 12  # a table and a describe per node
            assert "6 nodes (6 answered" in err

            status, out, err = await cli("mesh", "graph", "--mesh", str(nodes[3].contact), "--format", "dot",
                                         "--no-capabilities", "-o", str(tmp_path / "mesh.dot"))
            assert status == 0 and out == b"", err
            dot = (tmp_path / "mesh.dot").read_text()
            assert dot.startswith("graph mesh {") and dot.rstrip().endswith("}")
            for node in nodes:
                assert f'"{node.node_id.hex()}" [label="{node.node_id.hex()[:8]}' in dot
            assert dot.count(" -- ") == 15  # a full mesh of 6: one edge per pair
        finally:
            await close_mesh(nodes, [agents])

    arun(main(), timeout=90)


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz's dot is not installed (.ci/run installs it: apt-get install graphviz)")
def test_mesh_graph_png_and_html(arun, tmp_path):
    async def main():
        nodes = await start_mesh(3)
        try:
            png = tmp_path / "mesh.png"
            status, _, err = await cli("mesh", "graph", "--mesh", str(nodes[1].contact), "--format", "png",
                                       "-o", str(png))
            assert status == 0, err
            data = png.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
            assert width > 100 and height > 100

            status, out, err = await cli("mesh", "graph", "--mesh", str(nodes[1].contact), "--format", "html")
            assert status == 0, err
            page = out.decode()
            assert page.startswith("<!DOCTYPE html>") and "MeshGraph.draw" in page
            assert "<script src" not in page and "<link" not in page  # self-contained
            for node in nodes:
                assert node.node_id.hex() in page
        finally:
            await close_mesh(nodes)

    arun(main(), timeout=90)


def test_a_node_answering_garbage_or_a_huge_invented_table_keeps_the_crawl_bounded_and_counted(arun):
    async def main():
        nodes = await start_mesh(4)
        rng = random.Random(7)
        invented = [str(Identity.from_seed(rng.randbytes(32)).contact(f"tcp://127.0.0.1:{1 + i}")) for i in range(3000)]
        huge = [{"node_id": Identity.from_seed(b"x" * 32).node_id.hex(), "contact": "junk", "state": "alive"}] * 10
        huge += [{"node_id": Contact.parse(c).node_id.hex(), "contact": c, "state": "alive", "rtt_ms": 1.0}
                 for c in invented]
        # nodes[1] answers zmqagents.peers with 1,210 rows, 1,200 of them invented nodes; nodes[3] with 3,010,
        # more values than an envelope may hold (16,384): that answer never leaves it, so it is unreachable
        nodes[1].peers = lambda: huge[:1210]
        nodes[3].peers = lambda: huge
        nodes[2].peers = lambda: {"surprise": [1, 2, 3]}  # and this one with something that is not a table
        try:
            status, out, err = await cli("mesh", "graph", "--mesh", str(nodes[0].contact), "--max-nodes", "12",
                                         "--ask-timeout", "0.5", "--rate", "200", "--parallel", "16",
                                         "--no-capabilities", "--timeout", "30")
            assert status == 0, err
            graph = json.loads(out)
            c = graph["crawl"]
            assert len(graph["nodes"]) == 12 == c["nodes_found"]
            states = {n["id"]: n["state"] for n in graph["nodes"]}
            assert states[nodes[2].node_id.hex()] == "bad_answer"
            assert states[nodes[1].node_id.hex()] == "answered"
            assert c["bad_answers"] == 1
            assert states[nodes[3].node_id.hex()] == "unreachable"
            assert c["tables_truncated"] == 1 and c["entries_truncated"] == 1210 - 512
            assert c["bad_entries"] == 10
            assert c["beyond_max_nodes"] > 400
            assert c["unreachable"] >= 1  # invented nodes at ports nobody listens on
            assert c["messages_sent"] <= 12
            assert "warning: 10 table entries did not check out" in err
        finally:
            for node in nodes[1:]:
                del node.peers
            await close_mesh(nodes)

    arun(main(), timeout=90)


def test_mesh_graph_usage_and_an_unreachable_seed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ZMQAGENTS_MESH", "ZMQAGENTS_CONTEXT")}
    env["ZMQAGENTS_CONTEXTS"] = str(tmp_path / "none.json")  # no context to fall back on

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60, env=env)

    done = run("mesh", "graph")
    assert done.returncode == 2 and "--mesh" in done.stderr
    done = run("mesh", "graph", "--mesh", "nonsense")
    assert done.returncode == 2
    dead = Identity.generate().contact("tcp://127.0.0.1:9")
    done = run("mesh", "graph", "--mesh", str(dead), "--ask-timeout", "0.3")
    assert done.returncode == 8 and "no --mesh node answered" in done.stderr and done.stdout == ""


def _graph(n: int, listed: int) -> dict:
    """A graph as a crawl gives it: ``n`` nodes, each listing the next ``listed`` (RTT 1.5 ms)."""
    rng = random.Random(3)
    ids = [Identity.from_seed(rng.randbytes(32)).node_id.hex() for _ in range(n)]
    nodes = [{"id": i, "contact": f"k@tcp://127.0.0.1:{7000 + k}", "state": "answered", "local": k == 0,
              "table_size": listed, "capabilities": ["upper"] if k == 1 else [], "seen": {}} for k, i in enumerate(ids)]
    edges = [{"from": ids[k], "to": ids[(k + j) % n], "state": "suspect" if j == 2 else "alive", "rtt_ms": 1.5}
             for k in range(n) for j in range(1, listed + 1)]
    return {"nodes": nodes, "edges": edges, "crawl": {}}


def test_dot_labels_rtts_on_small_pictures_and_keeps_large_ones_readable(monkeypatch):
    from zmqagents.cli.mesh_render import RenderError, to_dot, to_png

    small = to_dot(_graph(6, 2))
    assert small.count(" -- ") == 12 and small.count('label="1.5 ms"') == 12
    assert 'style="dashed"' in small and 'penwidth="3"' in small and "upper" in small
    large = to_dot(_graph(60, 10))  # 600 pairs: labels would only hide the edges
    assert large.count(" -- ") == 600 and 'label="1.5 ms"' not in large and large.count('tooltip="1.5 ms"') == 600
    assert 'edge [color="#90a4ae50"' in large
    tricky = _graph(2, 1)
    tricky["nodes"][0]["contact"] = 'k@ipc:///tmp/a"b\\c'  # quotes and backslashes stay inside the string
    assert 'tooltip="k@ipc:///tmp/a\\"b\\\\c (answered)"' in to_dot(tricky)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RenderError, match="apt-get install graphviz"):
        to_png(small)
