"""The admin endpoint's dashboard (/ui, sidecar/dashboard.py) over real HTTP on a real mesh: the page and
its assets, the status and graph JSON (the crawl of a 6-node mesh), odd paths and methods counted, crawls
bounded however often the page is polled, and nothing imported until /ui is asked for.
(The page itself, in a real browser: tests/sidecar/test_dashboard_browser.py.)"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from zmqagents.sidecar.admin import AdminServer
from zmqagents.sidecar.dashboard import ASSETS

from helpers.realmesh import close_mesh, start_mesh

UI = Path(__file__).resolve().parents[2] / "zmqagents" / "sidecar" / "ui"


async def http(address: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def get(address: str, path: str):
    return http(address, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def settled(nodes, n: int) -> None:
    for _ in range(100):
        if all(len(node.peers()) == n - 1 for node in nodes):
            return
        await asyncio.sleep(0.05)


def test_ui_serves_the_page_status_and_the_crawled_mesh(arun):
    async def main():
        nodes = await start_mesh(6)
        await settled(nodes, 6)
        admin = AdminServer(nodes[0], "127.0.0.1:0")
        await admin.start()
        try:
            status, headers, page = await get(admin.address, "/ui")
            assert status == 200 and headers["Content-Type"].startswith("text/html")
            for src in re.findall(rb'(?:src|href)="([^"]+)"', page):
                status, headers, body = await get(admin.address, src.decode())
                assert status == 200 and body and int(headers["Content-Length"]) == len(body), src
            assert (await get(admin.address, "/ui/"))[2] == page

            status, headers, body = await get(admin.address, "/ui/api/status")
            assert status == 200 and headers["Content-Type"] == "application/json"
            s = json.loads(body)
            assert s["node_id"] == nodes[0].node_id.hex() and s["contact"] == str(nodes[0].contact)
            assert {p["node_id"] for p in s["peers"]} == {n.node_id.hex() for n in nodes[1:]}
            assert s["gauges"]["peers"] == 5 and s["counters"]["messages_in"] > 0

            # the first graph answer comes at once: this node and its own table, while the crawl runs
            first = json.loads((await get(admin.address, "/ui/api/graph"))[2])
            assert first["crawling"] is True and len(first["nodes"]) == 6
            assert [n["state"] for n in first["nodes"]].count("answered") == 1
            for _ in range(100):
                graph = json.loads((await get(admin.address, "/ui/api/graph"))[2])
                if not graph["crawling"]:
                    break
                await asyncio.sleep(0.05)
            assert {n["id"] for n in graph["nodes"]} == {n.node_id.hex() for n in nodes}
            assert all(n["state"] == "answered" for n in graph["nodes"])
            assert [n["local"] for n in graph["nodes"]].count(True) == 1
            assert len(graph["edges"]) == 30  # everyone lists everyone else
            assert graph["crawl"]["messages_sent"] == 10  # 5 tables, 5 describes: its own table is read, not asked
            assert graph["age_s"] is not None
            # polled again and again within the refresh interval: no new crawl, no new message
            for _ in range(20):
                again = json.loads((await get(admin.address, "/ui/api/graph"))[2])
                assert again["crawling"] is False
            assert admin.stats["not_found"] == 0 and admin.stats["bad_request"] == 0
        finally:
            await admin.close()
            await close_mesh(nodes)

    arun(main(), timeout=60)


def test_odd_paths_and_methods_under_ui_get_clear_errors_and_are_counted(arun):
    async def main():
        nodes = await start_mesh(1)
        admin = AdminServer(nodes[0], "127.0.0.1:0")
        await admin.start()
        try:
            for path in ("/ui/../metrics", "/ui/%2e%2e/setup.cfg", "/ui/api", "/ui/api/graph/x", "/ui/index.html",
                         "/ui//graph.js", "/ui/graph.js/", "/ui/" + "a" * 4000, "/uix", "/ui/\x7f"):
                status, _, body = await get(admin.address, path)
                assert status == 404 and body.endswith(b"\n"), path
            assert admin.stats["not_found"] == 10
            for method in ("POST", "PUT", "DELETE", "OPTIONS"):
                status, _, body = await http(admin.address, f"{method} /ui HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".encode())
                assert status == 405 and body == b"only GET and HEAD\n"
            status, headers, body = await http(admin.address, b"HEAD /ui/graph.js HTTP/1.1\r\n\r\n")
            assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
            assert admin.stats["bad_request"] == 4
            assert (await get(admin.address, "/ui/api/status"))[0] == 200  # still serving
            assert (await get(admin.address, "/livez"))[0] == 200
        finally:
            await admin.close()
            await close_mesh(nodes)

    arun(main(), timeout=30)


def test_assets_are_shipped_files_with_no_outside_reference():
    names = {name for name, _ in ASSETS.values()}
    assert names == {p.name for p in UI.iterdir()}  # every file is served, and served from the package
    for name in names:
        text = (UI / name).read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), name  # no CDN, no outside fetch
        assert "//cdn" not in text and "@import" not in text, name


def test_the_dashboard_is_imported_only_when_ui_is_first_asked_for():
    code = textwrap.dedent("""
        import asyncio, json, sys, urllib.request
        from zmqagents.node import Node
        from zmqagents.sidecar.admin import AdminServer

        def fetch(address, path):
            with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
                return resp.status

        async def main():
            async with Node() as node:
                admin = AdminServer(node, "127.0.0.1:0")
                await admin.start()
                loop = asyncio.get_running_loop()
                seen = {}
                for path in ("/metrics", "/livez", "/readyz", "/ui"):
                    assert await loop.run_in_executor(None, fetch, admin.address, path) == 200
                    seen[path] = "zmqagents.sidecar.dashboard" in sys.modules
                await admin.close()
                return seen

        print(json.dumps(asyncio.run(main())))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"/metrics": False, "/livez": False, "/readyz": False, "/ui": True}


def test_a_crawl_answered_with_garbage_is_drawn_so_and_counted_in_the_metrics(arun):
    async def main():
        nodes = await start_mesh(4)
        await settled(nodes, 4)
        nodes[2].peers = lambda: {"not": "a table"}  # answers zmqagents.peers with garbage
        nodes[3].peers = lambda: [{"node_id": "ab" * 32, "contact": "junk", "state": "alive"}] * 50
        admin = AdminServer(nodes[0], "127.0.0.1:0")
        await admin.start()
        try:
            assert b"zmqagents_dashboard_events_total" not in admin.metrics()  # no dashboard before /ui
            for _ in range(100):
                graph = json.loads((await get(admin.address, "/ui/api/graph"))[2])
                if not graph["crawling"]:
                    break
                await asyncio.sleep(0.05)
            states = {n["id"]: n["state"] for n in graph["nodes"]}
            assert states[nodes[2].node_id.hex()] == "bad_answer"
            assert states[nodes[3].node_id.hex()] == "answered" and states[nodes[1].node_id.hex()] == "answered"
            assert graph["crawl"]["bad_answers"] == 1 and graph["crawl"]["bad_entries"] == 50
            metrics = admin.metrics().decode()
            assert 'zmqagents_dashboard_events_total{outcome="bad_answers"} 1.0' in metrics
            assert 'zmqagents_dashboard_events_total{outcome="bad_entries"} 50.0' in metrics
            assert 'zmqagents_dashboard_events_total{outcome="crawls"} 1.0' in metrics
        finally:
            for node in nodes[2:]:
                del node.peers
            await admin.close()
            await close_mesh(nodes)

    arun(main(), timeout=60)
