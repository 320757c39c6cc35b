"""The admin dashboard (/ui) in a real headless Chromium: a 6-node mesh, the page of one node, the graph
drawn with every node once the crawl has reached them, the live panels filled, and a screenshot kept as
a test artefact (its path is printed; $ZMQAGENTS_TEST_ARTEFACTS or ./test-artefacts). Then the page
`zmqagents mesh graph --format html` writes for the same mesh, opened from its file: six nodes drawn.

Skips only where no Chromium is installed (.ci/run installs Debian's chromium package)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from zmqagents.sidecar.admin import AdminServer

from helpers import browser
from helpers.cli import CLI
from helpers.realmesh import close_mesh, start_mesh

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(os.environ.get("ZMQAGENTS_TEST_ARTEFACTS", ROOT / "test-artefacts"))
DRAWN = "JSON.stringify([...document.querySelectorAll('#mesh g.node')].map(g => [g.dataset.id, g.dataset.state]))"


@pytest.mark.timeout(120)
def test_the_dashboard_draws_a_six_node_mesh_in_a_real_browser(arun, tmp_path, capsys, record_property):
    why = browser.unavailable()
    if why:
        pytest.skip(why)
    shot = ARTEFACTS / "dashboard-6-nodes.png"

    async def main():
        nodes = await start_mesh(6)
        for _ in range(100):  # everyone knows everyone: the crawl from node 0 then reaches all six
            if all(len(n.peers()) == 5 for n in nodes):
                break
            await asyncio.sleep(0.05)
        admin = AdminServer(nodes[0], "127.0.0.1:0")
        await admin.start()
        page_file = tmp_path / "mesh.html"  # the same mesh from `zmqagents mesh graph --format html`
        proc = await asyncio.create_subprocess_exec(*CLI, "mesh", "graph", "--mesh", str(nodes[4].contact),
                                                    "--format", "html", "-o", str(page_file),
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()

        def look() -> dict:
            with browser.Chromium(tmp_path / "profile") as page:
                page.open(f"http://{admin.address}/ui")
                page.wait_for(f"(() => {{ const d = {DRAWN}; return JSON.parse(d).length === 6 && "
                              "JSON.parse(d).every(([_, s]) => s === 'answered'); })()", timeout=60)
                # the live panels: the peers table, and rates once two status polls have come in
                page.wait_for("document.querySelectorAll('#peers tr').length === 5 && "
                              "[...document.querySelectorAll('#rates td.num')].some(td => /^[0-9.,]+$/.test(td.textContent))",
                              timeout=30)
                seen = {"drawn": json.loads(page.evaluate(DRAWN)),
                        "links": int(page.evaluate("document.getElementById('mesh').dataset.linksDrawn")),
                        "local": page.evaluate("[...document.querySelectorAll('#mesh g.node.local')].map(g => g.dataset.id)"),
                        "node_id": page.evaluate("document.getElementById('node-id').textContent"),
                        "error": page.evaluate("document.getElementById('error').textContent"),
                        "labels": page.evaluate("[...document.querySelectorAll('#mesh g.node text')].map(t => t.textContent)")}
                page.screenshot(shot)
                # the exported page, opened from its file with no server behind it
                page.open(page_file.as_uri())
                page.wait_for(f"JSON.parse({DRAWN}).length === 6", timeout=30)
                seen["exported"] = json.loads(page.evaluate(DRAWN))
                page.screenshot(ARTEFACTS / "mesh-graph-6-nodes-html.png")
                return seen

        try:
            return await asyncio.to_thread(look), [n.node_id.hex() for n in nodes]
        finally:
            await admin.close()
            await close_mesh(nodes)

    seen, ids = arun(main(), timeout=110)
    record_property("screenshot", str(shot))
    with capsys.disabled():  # shown whatever the capture mode, even with -q
        print(f"\ndashboard screenshot: {shot} (and {ARTEFACTS / 'mesh-graph-6-nodes-html.png'})")
    assert sorted(i for i, _ in seen["drawn"]) == sorted(ids)
    assert seen["links"] == 15  # a full mesh of six: one line per pair
    assert seen["local"] == [ids[0]] and seen["node_id"] == ids[0]
    assert seen["error"] == ""
    assert sorted(seen["exported"]) == sorted([i, "answered"] for i in ids)
    assert sorted(label[:8] for label in seen["labels"]) == sorted(i[:8] for i in ids)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
