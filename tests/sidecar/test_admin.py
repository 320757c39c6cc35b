"""The admin endpoint: /metrics scraped from a real node process, health checks, bad HTTP input,
and that a node without the endpoint never imports prometheus_client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zmqagents.node import Node
from zmqagents.sidecar.admin import DEFAULT_LISTEN, AdminError, AdminServer, parse_listen

from helpers.nodeproc import NodeProc


def _get(address: str, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _scrape(address: str) -> dict:
    status, ctype, text = _get(address, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict, family: str, sample: str, **labels) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"{sample}{labels} not in {family}")


@pytest.fixture
def local_procs():
    started = []
    yield started
    for p in started:
        p.stop()


@pytest.mark.timeout(30)
def test_metrics_from_a_real_node_follow_prometheus_naming_and_move_with_traffic(local_procs):
    server = NodeProc("--admin", "127.0.0.1:0")
    local_procs.append(server)
    address = server.hello["admin"]
    assert address.startswith("127.0.0.1:")
    before = _scrape(address)

    for name, fam in before.items():
        assert name.startswith(("zmqagents_", "process_")), name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), name
        for s in fam.samples:
            assert "peer" not in s.labels and "node" not in s.labels, s  # no per-peer labels
    assert before["zmqagents_transport_received_bytes"].type == "counter"
    assert before["zmqagents_peers"].type == "gauge"
    assert before["zmqagents_inbox_messages"].type == "gauge"
    assert before["process_resident_memory_bytes"].type == "gauge"
    assert before["zmqagents_node_info"].type == "gauge"  # an info metric, as the classic text format shows it
    node_info = before["zmqagents_node_info"].samples[0]
    assert node_info.labels["node_id"] == server.hello["node_id"]
    for family in ("zmqagents_dropped_messages", "zmqagents_requests_failed", "zmqagents_retransmits",
                   "zmqagents_unacked_messages", "zmqagents_connections", "zmqagents_neighbours",
                   "zmqagents_dht_records", "zmqagents_dht_store_bytes", "zmqagents_dht_refused_records"):
        assert family in before, family
    assert _value(before, "zmqagents_dropped_messages", "zmqagents_dropped_messages_total",
                  layer="node", reason="inbox_full") == 0
    for reason in ("identity_mismatch", "bad_routing_id", "plaintext", "handshake_failed", "OversizeEnvelope"):
        assert _value(before, "zmqagents_dropped_messages", "zmqagents_dropped_messages_total",
                      layer="transport", reason=reason) == 0, reason  # there before the first refusal
    assert before["zmqagents_delivery_stalled_peers"].type == "gauge"
    assert _value(before, "zmqagents_delivery_stalled_peers", "zmqagents_delivery_stalled_peers") == 0
    assert _value(before, "zmqagents_delivery_stalls", "zmqagents_delivery_stalls_total") == 0

    client = NodeProc("--bootstrap", server.hello["contact"])
    local_procs.append(client)
    for i in range(5):
        assert client.ask({"cmd": "request", "to": server.hello["node_id"], "body": i}) == {"reply": {"echo": i}}
    after = _scrape(address)
    for family, sample in (
        ("zmqagents_transport_received_messages", "zmqagents_transport_received_messages_total"),
        ("zmqagents_transport_received_bytes", "zmqagents_transport_received_bytes_total"),
        ("zmqagents_transport_sent_bytes", "zmqagents_transport_sent_bytes_total"),
    ):
        assert _value(after, family, sample) > _value(before, family, sample), family
    # the 5 requests reached the application exactly once each (the join's lookups go to routing)
    assert _value(after, "zmqagents_messages_delivered", "zmqagents_messages_delivered_total") == 5
    assert sum(s.value for s in after["zmqagents_peers"].samples) == 1
    assert _value(after, "zmqagents_connections", "zmqagents_connections", kind="inbound") == 1
    assert _value(after, "zmqagents_admin_requests", "zmqagents_admin_requests_total", outcome="ok") >= 1

    assert _get(address, "/livez")[0] == 200
    assert _get(address, "/readyz") == (200, "text/plain", "ready\n")


def test_default_listen_is_loopback_only():
    assert parse_listen(DEFAULT_LISTEN) == ("127.0.0.1", 9464)

    async def main():
        async with Node() as node:
            admin = AdminServer(node, DEFAULT_LISTEN.rsplit(":", 1)[0] + ":0")
            await admin.start()
            try:
                hosts = {s.getsockname()[0] for s in admin._server.sockets}
                assert hosts == {"127.0.0.1"}
            finally:
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 10))


@pytest.mark.parametrize("listen", ["9464", "localhost", ":9464", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_listen_addresses_are_refused_with_a_clear_error(listen):
    with pytest.raises(AdminError, match="HOST:PORT"):
        parse_listen(listen)


async def _raw(address: str, data: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    if not data.endswith(b"\r\n\r\n"):
        writer.write_eof()
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return out


class _Service:
    metric_name = "fake"

    def __init__(self):
        self.up = False
        self.stats = {"seen": 3}
        self.pending = 2

    def ready(self) -> bool:
        return self.up


def test_readiness_and_bad_requests():
    async def main():
        service = _Service()
        async with Node() as node:
            admin = AdminServer(node, "127.0.0.1:0", services=lambda: [service, admin], expect_peers=True)
            await admin.start()
            try:
                get = lambda path: _raw(admin.address, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                ready = await get("/readyz")
                assert ready.startswith(b"HTTP/1.1 503") and b"not ready: joined, fake" in ready
                service.up = True
                assert b"not ready: joined\n" in await get("/readyz")
                admin.expect_peers = False  # alone by configuration
                assert (await get("/readyz")).startswith(b"HTTP/1.1 200")
                assert (await get("/livez")).startswith(b"HTTP/1.1 200")
                head = await _raw(admin.address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # no body
                metrics = (await get("/metrics")).decode()
                assert 'zmqagents_fake_events_total{outcome="seen"} 3.0' in metrics
                assert "zmqagents_fake_pending 2.0" in metrics
                # garbage, oversize, wrong method, unknown path: a status each, and the server lives on
                assert (await _raw(admin.address, b"\x00\xff garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
                assert (await _raw(admin.address, b"GET /metrics")).startswith(b"HTTP/1.1 400")
                big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
                assert (await _raw(admin.address, big)).startswith(b"HTTP/1.1 431")
                assert (await get("/nope")).startswith(b"HTTP/1.1 404")
                post = await _raw(admin.address, b"POST /metrics HTTP/1.1\r\n\r\n")
                assert post.startswith(b"HTTP/1.1 405")
                assert admin.stats["bad_request"] == 4 and admin.stats["not_found"] == 1
                assert (await get("/livez")).startswith(b"HTTP/1.1 200")
            finally:
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 15))


@pytest.mark.parametrize("mdns", [False, "auto"])  # "auto", the default, with the default loopback inbox: off
def test_a_sidecar_without_admin_or_mdns_does_not_import_their_libraries(tmp_path, mdns):
    code = textwrap.dedent(f"""
        import asyncio, json, sys
        import zmqagents.cli.app
        from zmqagents.sidecar.config import Override, load
        from zmqagents.sidecar.daemon import Sidecar

        config = load(None, env={{}}, overrides=[
            Override("node.key", {str(tmp_path / "k")!r}, "test"),
            Override("node.listen", "tcp://127.0.0.1:0", "test"),
            Override("mdns.enabled", {mdns!r}, "test"),
            Override("local_api.enabled", False, "test"),
        ])

        async def main():
            async with Sidecar(config) as sidecar:
                await asyncio.sleep(0.1)
                return list(sidecar.services)

        services = asyncio.run(main())
        print(json.dumps({{"services": services, **{{m: m in sys.modules for m in ("prometheus_client", "zeroconf")}}}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"services": [], "prometheus_client": False, "zeroconf": False}


@pytest.mark.timeout(30)
def test_admin_served_by_the_sidecar_cli(tmp_path):
    import os
    import signal

    from zmqagents.sidecar.config import keys

    cli = [str(__import__("pathlib").Path(sys.executable).with_name("zmqagents")), "node", "--listen",
           "tcp://127.0.0.1:0", "--key", str(tmp_path / "k"), "--no-mdns", "--set", "admin.enabled=true",
           "--set", "admin.listen=127.0.0.1:0"]
    if "local_api.enabled" in keys():
        cli += ["--set", "local_api.enabled=false"]
    p = NodeProc(*cli[1:], program=cli[:1])
    try:
        hello = p.hello
        address = hello["admin"]
        assert address.startswith("127.0.0.1:")
        assert _get(address, "/livez")[0] == 200
        assert _get(address, "/readyz")[0] == 200  # alone by configuration, every service started
        families = _scrape(address)
        assert "zmqagents_transport_received_bytes" in families and "zmqagents_peers" in families
        assert _value(families, "zmqagents_node_info", "zmqagents_node_info")  # present, value 1
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(10) == 0
    finally:
        if p.proc.poll() is None:
            os.kill(p.proc.pid, signal.SIGKILL)
            p.proc.wait()
