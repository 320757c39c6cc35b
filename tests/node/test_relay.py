"""Relaying over real CURVE sockets on loopback: an outbound-only node reached through relays.

Each test builds relays (``serve_relay``), an outbound-only *edge* node registered with them, and an
outside node that knows only the edge node's relayed contact. The network-isolated version of the
same path (network namespaces, relays killed by PID) is in test_relay_netns.py.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from zmqagents.core.delivery import DeliveryConfig
from zmqagents.core.relay import DELIVER, RelayConfig
from zmqagents.envelope import Envelope
from zmqagents.identity import Contact, Identity
from zmqagents.node import Node, NodeConfig, PeerUnreachable, RequestTimeout

FAST_RELAY = RelayConfig(keepalive=0.2, dead_after=0.6, expire=1.0)


def relay_node(**cfg) -> Node:
    return Node(config=NodeConfig(serve_relay=True, relay=RelayConfig(**cfg) if cfg else FAST_RELAY))


def edge_node(relays: list[Node], **kw) -> Node:
    node = Node(config=NodeConfig(outbound_only=True, relays=[r.contact for r in relays], relay=FAST_RELAY, **kw))
    node.on_request(lambda body, msg: {"echo": body, "from": msg.src.hex()})
    return node


async def started(*nodes: Node) -> None:
    for n in nodes:
        await n.start()


async def wait_until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def close_all(*nodes: Node) -> None:
    for n in nodes:
        await n.close()


def test_request_reply_through_a_relay_both_ways_and_failover_to_the_second(arun):
    async def main():
        r1, r2 = relay_node(), relay_node()
        await started(r1, r2)
        edge = edge_node([r1, r2])
        await started(edge)
        outside = Node(peers=[edge.contact])
        try:
            assert edge.contact.relayed and [c.node_id for c in edge.contact.relays] == [r1.node_id, r2.node_id]
            await started(outside)
            await wait_until(lambda: edge.node_id in r1.relay_server and edge.node_id in r2.relay_server)
            reply = await outside.request(edge.node_id, "hi", timeout=5)
            assert reply == {"echo": "hi", "from": outside.node_id.hex()}  # the edge node saw the true sender
            assert r1.relay_server.stats["forwarded"] >= 2 and r2.relay_server.stats["forwarded"] == 0
            # The hello went through too: each side knows the other's contact, the edge node's is relayed.
            assert edge.node_id in outside.neighbours()
            assert any(p["contact"] == str(edge.contact) for p in outside.peers())
            # The edge node can also start a conversation: it answers through the relay it was reached by.
            outside.on_request(lambda body, msg: body * 2)
            assert await edge.request(outside.node_id, 21, timeout=5) == 42
            assert edge.transport.drops == {} and outside.transport.drops == {}

            # Kill the first relay abruptly (no leave): sockets closed, nothing announced.
            r1.loop.halt()  # its timers and keepalives stop
            r1.transport.close()
            for i in range(5):
                assert await outside.request(edge.node_id, i, timeout=5) == {"echo": i, "from": outside.node_id.hex()}
            assert r2.relay_server.stats["forwarded"] >= 10
            assert outside.transport.relaying.stats["rotated"] >= 1  # a retransmit moved to the second relay
            assert outside.transport.relaying.misses.get(r1.node_id, 0) >= 1  # the dead relay is counted
            await wait_until(lambda: edge.relay_client.active() == [r2.node_id])
        finally:
            await close_all(outside, edge, r2)

    arun(main())


def test_sealed_bodies_cross_the_relay_unreadable(arun):
    async def main():
        relay = relay_node()
        await started(relay)
        seen: list[bytes] = []
        receive = relay.relay_server.receive

        def spy(env, now):
            if isinstance(env.body, dict):
                seen.append(env.body.get("e") or env.body.get("box") or b"")
            receive(env, now)

        relay.relay_server.receive = spy
        edge = edge_node([relay])
        await started(edge)
        outside = Node(peers=[edge.contact], config=NodeConfig())
        outside.config.transport.seal_relayed = True
        try:
            await started(outside)
            secret = "attack at dawn " * 4
            assert (await outside.request(edge.node_id, secret, timeout=5))["echo"] == secret
            assert seen and not any(b"attack at dawn" in frame for frame in seen)
            assert outside.transport.relaying.stats["sealed"] >= 2
            assert edge.transport.relaying.stats["opened"] >= 2
            assert edge.transport.relaying.stats["sealed"] >= 1  # the reply is sealed back
        finally:
            await close_all(outside, edge, relay)

    arun(main())


def test_a_tampering_relay_is_refused_and_traffic_moves_to_the_honest_one(arun):
    async def main():
        bad, good = relay_node(), relay_node()
        await started(bad, good)
        forward = bad.relay_server._forward

        def tamper(env, now):
            body = env.body
            if isinstance(body, dict) and isinstance(body.get("e"), bytes):
                frame = bytearray(body["e"])
                frame[-1] ^= 0x01  # flip one bit of the signed envelope
                env.body = {**body, "e": bytes(frame)}
            forward(env, now)

        bad.relay_server._forward = tamper
        edge = edge_node([bad, good])
        await started(edge)
        outside = Node(peers=[edge.contact], config=NodeConfig(delivery=DeliveryConfig(rto_initial=0.05)))
        try:
            await started(outside)
            assert (await outside.request(edge.node_id, "x", timeout=5))["echo"] == "x"
            assert edge.transport.drops.get("relay_bad_signature", 0) + edge.transport.drops.get("relay_malformed", 0) >= 1
            assert good.relay_server.stats["forwarded"] >= 1
        finally:
            await close_all(outside, edge, bad, good)

    arun(main())


def test_a_relay_cannot_forge_a_sender(arun):
    async def main():
        relay = relay_node()
        await started(relay)
        edge = edge_node([relay])
        await started(edge)
        victim = Identity.generate()
        try:
            await wait_until(lambda: edge.node_id in relay.relay_server)

            def deliver(inner: Envelope) -> None:
                frame = inner.encode()
                relay.transport.send(Envelope(id=os.urandom(16), src=relay.node_id, dst=edge.node_id, type=DELIVER,
                                              body={"to": edge.node_id, "e": frame}))

            base = dict(src=victim.node_id, dst=edge.node_id, type="msg", body="forged", seq=0, ep=1)
            deliver(Envelope(id=os.urandom(16), **base))  # unsigned
            signed_by_relay = Envelope(id=os.urandom(16), **base)
            signed_by_relay.pk = relay.identity.public_key  # the relay's key, the victim's id
            signed_by_relay.sig = relay.identity.sign(signed_by_relay.signing_bytes())
            deliver(signed_by_relay)
            honest = Envelope(id=os.urandom(16), **{**base, "body": "original"}).sign(victim)
            honest.body = "altered"  # signed by the victim, changed afterwards
            deliver(honest)
            not_for_edge = Envelope(id=os.urandom(16), **{**base, "dst": relay.node_id}).sign(victim)
            deliver(not_for_edge)
            await wait_until(lambda: sum(edge.transport.drops.values()) >= 4)
            assert edge.transport.drops.get("relay_forged") == 2
            assert edge.transport.drops.get("relay_bad_signature") == 1
            assert edge.transport.drops.get("relay_wrong_dst") == 1
            with pytest.raises(asyncio.TimeoutError):
                await edge.receive(timeout=0.2)  # nothing reached the application
        finally:
            await close_all(edge, relay)

    arun(main())


def test_relay_overload_is_bounded_and_counted(arun):
    async def main():
        relay = relay_node(client_rate=50, client_burst=20, keepalive=0.2, dead_after=0.6)
        await started(relay)
        edge = edge_node([relay])
        await started(edge)
        outside = Node(peers=[edge.contact])
        try:
            await started(outside)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(300):
                await outside.send(edge.node_id, i)
            await asyncio.sleep(0.3)
            elapsed = loop.time() - start
            stats = relay.relay_server.stats
            from_outside = stats["forwarded"]
            assert stats["refused_client_rate"] > 0
            # At most the burst plus the refill since, for the outside sender; the edge node's own
            # traffic (acks, hello) has its own bucket of the same size.
            assert from_outside <= 2 * (20 + 50 * elapsed) + 5
            got = 0
            while True:
                try:
                    await edge.receive(timeout=0.05)
                    got += 1
                except asyncio.TimeoutError:
                    break
            assert 0 < got < 300  # some passed; the rest wait for retransmits, none delivered twice
        finally:
            await close_all(outside, edge, relay)

    arun(main())


def test_unknown_destination_and_not_a_relay_are_refused_and_counted(arun):
    async def main():
        relay = relay_node()
        plain = Node()  # not a relay
        await started(relay, plain)
        outside = Node(config=NodeConfig(delivery=DeliveryConfig(rto_initial=0.05, max_retries=2)))
        try:
            await started(outside)
            nobody = Contact.via(Identity.generate().public_key, [relay.contact])
            with pytest.raises((PeerUnreachable, RequestTimeout)):
                await outside.request(nobody, "x", timeout=2)
            assert relay.relay_server.stats["refused_unknown"] >= 1
            assert outside.stats["relay_refusals_received"] >= 1
            via_plain = Contact.via(Identity.generate().public_key, [plain.contact])
            with pytest.raises((PeerUnreachable, RequestTimeout)):
                await outside.request(via_plain, "x", timeout=2)
            assert plain.stats["relay_not_served"] >= 1
            # An edge node pointed at a node that is not a relay never counts it as up.
            edge = Node(config=NodeConfig(outbound_only=True, relays=[plain.contact], relay=FAST_RELAY))
            await edge.start()
            await asyncio.sleep(0.3)
            assert edge.relay_client.active() == [] and edge.relay_client.stats["answers"] == 0
            await edge.close()
        finally:
            await close_all(outside, relay, plain)

    arun(main())


def test_registration_expires_when_the_client_goes_quiet(arun):
    async def main():
        relay = relay_node()
        await started(relay)
        edge = edge_node([relay])
        await started(edge)
        try:
            await wait_until(lambda: edge.node_id in relay.relay_server)
            edge.loop.halt()  # silence it without a leave: its timers and keepalives stop
            await wait_until(lambda: edge.node_id not in relay.relay_server, timeout=3)
            assert relay.relay_server.stats["expired"] == 1
        finally:
            await close_all(edge, relay)

    arun(main())


def test_outbound_only_needs_relays():
    with pytest.raises(ValueError, match="at least one relay"):
        Node(config=NodeConfig(outbound_only=True))
    with pytest.raises(ValueError, match="outbound-only"):
        Node(config=NodeConfig(relays=[Identity.generate().contact("tcp://127.0.0.1:1")]))


def test_an_edge_node_publishes_its_signed_relay_list_in_the_dht_and_a_squatter_is_refused(arun):
    from zmqagents.node import contact_key

    async def main():
        r1, r2 = relay_node(), relay_node()
        await started(r1, r2)
        plain = [Node(bootstrap=[r1.contact]) for _ in range(3)]
        await started(*plain)
        edge = Node(bootstrap=[r1.contact],
                    config=NodeConfig(outbound_only=True, relays=[r1.contact, r2.contact], relay=FAST_RELAY))
        edge.on_request(lambda body, msg: body)
        await started(edge)  # joins, then publishes its contact
        outside = Node(bootstrap=[plain[0].contact], config=NodeConfig(member=False))
        squatter = Node(bootstrap=[plain[1].contact])
        try:
            await started(outside, squatter)
            # Routing tables hand the relayed contact out like any other (kad.nodes answers, hellos).
            assert any(p["contact"] == str(edge.contact) for n in (r1, *plain) for p in n.peers())
            found = await outside.find_contact(edge.node_id, timeout=5)
            assert found == edge.contact and [r.node_id for r in found.relays] == [r1.node_id, r2.node_id]
            assert await outside.request(edge.node_id, "via the DHT", timeout=5) == "via the DHT"
            # Someone else's record under a node's contact key is never taken as that node's contact.
            victim = Identity.generate()
            fake = Contact.via(victim.public_key, [squatter.contact])
            await squatter.dht.put(contact_key(victim.node_id), {"contact": str(fake)}, timeout=5)
            assert await outside.find_contact(victim.node_id, timeout=5) is None
            assert outside.stats["contact_records_refused"] == 1
            assert not outside.transport.known(victim.node_id)
        finally:
            await close_all(outside, squatter, edge, *plain, r1, r2)

    arun(main(), timeout=40)


def test_cli_outbound_only_without_relay_is_a_usage_error():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "zmqagents.cli", "node", "--outbound-only"], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 2 and "--relay" in run.stderr
    bad = subprocess.run([sys.executable, "-m", "zmqagents.cli", "node", "--outbound-only", "--relay", "nonsense"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--relay" in bad.stderr


def test_a_restarted_relay_gets_the_registration_and_the_hello_again(arun):
    async def main():
        relay = relay_node()
        await started(relay)
        identity, endpoint = relay.identity, relay.transport.endpoint
        edge = edge_node([relay])
        await started(edge)
        again = None
        try:
            await wait_until(lambda: edge.relay_client.active() == [relay.node_id])
            await relay.close()
            await wait_until(lambda: edge.relay_client.active() == [], timeout=3)
            again = Node(identity, listen=endpoint, config=NodeConfig(serve_relay=True, relay=FAST_RELAY))
            await again.start()
            await wait_until(lambda: edge.node_id in again.relay_server, timeout=5)
            await wait_until(lambda: any(p["contact"] == str(edge.contact) for p in again.peers()), timeout=5)
            assert edge.relay_client.active() == [relay.node_id]
        finally:
            await close_all(edge, *([again] if again else []))

    arun(main())


def test_an_edge_node_that_cannot_dial_its_bootstrap_node_joins_through_its_relay(arun, caplog):
    """Issue 12, item 5: the bootstrap contact is one this host cannot dial (here a closed port; the
    namespace version is in test_relay_netns.py). The edge node says so at start, joins through its
    relay (a member of the mesh), and a node that holds only its id finds and reaches it."""
    import socket

    async def main():
        r1 = relay_node()
        await started(r1)
        plain = Node(bootstrap=[r1.contact])
        await started(plain)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        nowhere = Identity.generate().contact(f"tcp://127.0.0.1:{closed.getsockname()[1]}")
        edge = Node(bootstrap=[nowhere], config=NodeConfig(outbound_only=True, relays=[r1.contact], relay=FAST_RELAY,
                                                           join_timeout=5.0))
        edge.on_request(lambda body, msg: body)
        outside = Node(bootstrap=[plain.contact], config=NodeConfig(member=False))
        try:
            with caplog.at_level("WARNING", logger="zmqagents.node"):
                await started(edge)
            assert edge.stats["bootstrap_undialable"] == 1
            assert "cannot dial bootstrap node" in caplog.text and "Joining through its relay" in caplog.text
            assert any(p["node_id"] == r1.node_id.hex() for p in edge.peers())
            await started(outside)
            found = await outside.find_contact(edge.node_id, timeout=5)
            assert found == edge.contact
            assert await outside.request(edge.node_id, "found you", timeout=5) == "found you"
        finally:
            closed.close()
            await close_all(outside, edge, plain, r1)

    arun(main(), timeout=40)


def _relay_drops(node: Node) -> dict[str, float]:
    """``zmqagents_dropped_messages_total{layer="relay"}`` as the admin endpoint exports it, by reason."""
    from zmqagents.sidecar.admin import NodeCollector

    for family in NodeCollector(node, lambda: [], {}).collect():
        if family.name == "zmqagents_dropped_messages":
            return {labels["reason"]: value for _, labels, value in family.samples if labels["layer"] == "relay"}
    raise AssertionError("no zmqagents_dropped_messages family")


def test_a_destination_that_stops_reading_holds_at_most_its_window_and_loses_nothing(arun):
    """A relay holds what it forwards until the destination reads it. The edge node here is a real
    process, stopped (SIGSTOP) while a sender streams to it through the relay: the relay forwards at
    most its window of unacknowledged bytes to it and refuses the rest (counted, unanswered); once the
    edge node runs again it acknowledges what it reads, the window opens, the sender's retransmits go
    through, and every message arrives exactly once."""
    from helpers.nodeproc import NodeProc

    async def main():
        window = 256 << 10
        relay = relay_node(window_bytes=window, ask_after=0.5)
        await started(relay)
        edge = NodeProc("--relay", str(relay.contact))
        sender = None
        try:
            edge_id = bytes.fromhex(edge.hello["node_id"])
            await wait_until(lambda: edge_id in relay.relay_server, timeout=10)
            sender = Node(peers=[Contact.parse(edge.hello["contact"])])
            await started(sender)
            assert (await sender.request(edge_id, "hi", timeout=10)) == {"echo": "hi"}
            os.kill(edge.proc.pid, signal.SIGSTOP)
            bodies = [f"{i:04d}" + "x" * 8000 for i in range(100)]  # ~800 KB: three windows and more
            for body in bodies:
                await sender.send(edge_id, body)
            await asyncio.sleep(2.0)
            server = relay.relay_server
            assert server.stats["refused_window"] > 0
            assert 0 < server.outstanding(edge_id) <= window
            assert _relay_drops(relay)["window"] == server.stats["refused_window"]  # exported as a metric
            os.kill(edge.proc.pid, signal.SIGCONT)
            await sender.flush(timeout=40)  # every message acknowledged by the edge node's delivery
            got = (await asyncio.to_thread(edge.ask, {"cmd": "received"}))["bodies"]
            assert sorted(got) == bodies  # all of them, each once
            assert server.stats["acked_bytes"] > 0
            await wait_until(lambda: server.outstanding(edge_id) <= 64 << 10, timeout=10)
        finally:
            if edge.proc.poll() is None:
                os.kill(edge.proc.pid, signal.SIGCONT)
            edge.stop()
            if sender is not None:
                await sender.close()
            await relay.close()

    arun(main(), timeout=90)
