"""The public Node over real CURVE-encrypted ZeroMQ sockets on tcp loopback."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from zmqagents.core.delivery import DeliveryConfig
from zmqagents.identity import Identity
from zmqagents.node import (
    Node,
    NodeConfig,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    SendError,
    UnknownPeer,
)


def fast_config(**delivery) -> NodeConfig:
    """Short retransmit timers so failure paths finish in well under a second."""
    return NodeConfig(delivery=DeliveryConfig(rto_initial=0.05, rto_max=0.2, max_retries=3, **delivery))


def test_request_reply_sync_and_async_handlers_and_errors(arun):
    async def main():
        async with Node() as server, Node(peers=[server.contact]) as client:
            server.on_request(lambda body, msg: {"echo": body, "from": msg.src})
            assert await client.request(server.node_id, "hi", timeout=5) == {"echo": "hi", "from": client.node_id}

            async def slow(body, msg):
                await asyncio.sleep(0.01)
                if body == "boom":
                    raise ValueError("bad input")
                return body * 2

            server.on_request(slow)
            assert await asyncio.gather(*(client.request(server.node_id, i, timeout=5) for i in range(20))) == [
                i * 2 for i in range(20)
            ]
            with pytest.raises(RemoteError) as err:
                await client.request(server.node_id, "boom", timeout=5)
            assert err.value.body == {"error": "bad input", "type": "ValueError"}

    arun(main())


def test_send_is_exactly_once_and_in_order(arun):
    async def main():
        async with Node() as server, Node(peers=[server.contact]) as a, Node(peers=[server.contact]) as b:
            for i in range(2000):
                await a.send(server.node_id, {"n": i})
                await b.send(server.node_id, {"n": i})
            await asyncio.gather(a.flush(timeout=10), b.flush(timeout=10))
            got: dict[bytes, list[int]] = {a.node_id: [], b.node_id: []}
            for _ in range(4000):
                msg = await server.receive(timeout=5)
                got[msg.src].append(msg.body["n"])
            assert got[a.node_id] == list(range(2000))
            assert got[b.node_id] == list(range(2000))
            with pytest.raises(asyncio.TimeoutError):
                await server.receive(timeout=0.2)  # nothing delivered twice

    arun(main())


def test_send_many_is_exactly_once_and_in_order_past_the_window(arun):
    async def main():
        config = NodeConfig(delivery=DeliveryConfig(window=64))
        async with Node(config=config) as server, Node(peers=[server.contact], config=config) as a:
            ids = await a.send_many(server.node_id, [{"n": i} for i in range(500)])  # waits for room 7 times
            assert len(set(ids)) == 500
            await a.send(server.node_id, {"n": 500})  # a single send goes on after the batch, in order
            await a.flush(timeout=10)
            got = [(await server.receive(timeout=5)) for _ in range(501)]
            assert [m.body["n"] for m in got] == list(range(501))
            assert [m.id for m in got[:500]] == ids
            with pytest.raises(asyncio.TimeoutError):
                await server.receive(timeout=0.2)  # nothing delivered twice

    arun(main())


def test_server_can_send_back_to_a_client_that_only_connected_out(arun):
    async def main():
        async with Node() as server, Node(peers=[server.contact]) as client:
            # The server has no contact for the client's inbox endpoint... except via hello;
            # forget it so the only path is the client's own connection (as behind NAT).
            server.transport._contacts.clear()
            server.transport.dealers.close(client.node_id)
            await server.send(client.node_id, "over your connection")
            assert (await client.receive(timeout=5)).body == "over your connection"

    arun(main())


def test_full_inbox_pushes_back_without_losing_messages(arun):
    async def main():
        config = NodeConfig(inbox_limit=50, inbox_share=1.0)  # one sender may fill it (shares: test_hostile_memory)
        async with Node(config=config) as server, Node(peers=[server.contact]) as client:
            for i in range(300):
                await client.send(server.node_id, i)
            await asyncio.sleep(0.3)
            assert server.stats["inbox_refused"] > 0  # the bound was really hit
            assert server.inbox_size[0] == 50
            got = [(await server.receive(timeout=10)).body for _ in range(300)]
            assert got == list(range(300))
            await client.flush(timeout=10)

    arun(main(), timeout=40)


def test_a_drained_inbox_asks_the_refused_sender_to_resend_at_once(arun):
    """The inbox refuses the client's messages until the application reads (a restarted sidecar whose
    local API was not up yet: bench/chaos.py, seed 35). The refused message reached no core, so no ack
    told the client anything, and it waited for its backed-off timer. Now the first read that makes
    room again acks the client's stream (a window update), and the client resends its floor at once."""
    async def main():
        config = NodeConfig(inbox_limit=50, inbox_share=1.0)
        async with Node(config=config) as server, Node(peers=[server.contact]) as client:
            for i in range(300):
                await client.send(server.node_id, i)
            await asyncio.sleep(1.0)  # the floor's copies are refused; its timer backs off
            assert server.stats["inbox_refused"] > 0 and server.inbox_size[0] == 50
            assert server.stats["window_updates"] == 0
            got = [(await server.receive(timeout=10)).body for _ in range(300)]
            assert got == list(range(300))
            assert server.stats["window_updates"] > 0
            assert client.delivery.stats["floor_resends"] > 0  # on the window updates (or membership's word)
            await client.flush(timeout=10)

    arun(main(), timeout=40)


def test_unknown_peer_timeout_and_unreachable(arun):
    async def main():
        async with Node(config=fast_config()) as client:
            with pytest.raises(UnknownPeer):
                await client.send(os.urandom(32), "x")
            with pytest.raises(UnknownPeer):
                await client.send("not-hex", "x")
            # A contact whose node is not running: every retransmit goes unanswered.
            ghost = Identity.generate().contact("tcp://127.0.0.1:9")
            with pytest.raises(PeerUnreachable):
                await client.request(ghost, "anyone?", timeout=30)
            await client.send(ghost, "lost")
            with pytest.raises(SendError) as err:
                await client.flush(timeout=10)
            assert len(err.value.failures) == 1
        async with Node() as server, Node(peers=[server.contact]) as client:
            async def never(body, msg):
                await asyncio.sleep(60)

            server.on_request(never)
            with pytest.raises(RequestTimeout):
                await client.request(server.node_id, "wait", timeout=0.3)

    arun(main())


def test_no_handler_gives_a_clear_remote_error(arun):
    async def main():
        async with Node() as server, Node(peers=[server.contact]) as client:
            with pytest.raises(RemoteError, match="serves no requests"):
                await client.request(server.node_id, 1, timeout=5)

    arun(main())


def test_publish_subscribe_one_hop_with_prefix_filter(arun):
    async def main():
        async with Node() as publisher, Node(peers=[publisher.contact]) as subscriber:
            stream = subscriber.subscribe("news/", one_hop=True)
            first = asyncio.ensure_future(stream.__anext__())
            assert await publisher.wait_for_subscriber("news/today", 5)
            await publisher.publish("sport/today", "not for us", one_hop=True)
            await publisher.publish("news/today", {"headline": 1}, one_hop=True)
            msg = await asyncio.wait_for(first, 5)
            assert (msg.topic, msg.body, msg.src) == (b"news/today", {"headline": 1}, publisher.node_id)
            await stream.aclose()

    arun(main())


def test_peer_restart_with_same_key_keeps_working(arun):
    async def main():
        server_id = Identity.generate()
        server = Node(server_id, listen="tcp://127.0.0.1:0")
        await server.start()
        endpoint = server.transport.endpoint
        server.on_request(lambda body, msg: "first")
        async with Node(peers=[server.contact]) as client:
            assert await client.request(server.node_id, 1, timeout=5) == "first"
            await server.close()
            restarted = Node(server_id, listen=endpoint)
            await restarted.start()
            restarted.on_request(lambda body, msg: "second")
            try:
                assert await client.request(server_id.node_id, 2, timeout=10) == "second"
                await client.send(server_id.node_id, "after restart")
                assert (await restarted.receive(timeout=10)).body == "after restart"
            finally:
                await restarted.close()

    arun(main(), timeout=40)


def test_close_leaks_no_threads_or_file_descriptors(arun):
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def cycle():
        async with Node() as server, Node(peers=[server.contact]) as client:
            server.on_request(lambda body, msg: body)
            await client.request(server.node_id, 1, timeout=5)
            stream = client.subscribe("t")
            task = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0.05)
        await asyncio.wait_for(task, 2)  # close() ends subscriptions instead of leaving them hanging

    with pytest.raises(StopAsyncIteration):
        arun(cycle())
    threads, before = threading.active_count(), fds()
    for _ in range(3):
        with pytest.raises(StopAsyncIteration):
            arun(cycle())
    assert threading.active_count() <= threads
    assert fds() <= before


def test_replayed_envelopes_and_reused_ids_are_delivered_once(arun):
    """An authenticated peer that resends a captured envelope, or reuses a message id under a new
    sequence number, gets each id delivered to the application once; the stream does not stall."""
    import zmq

    from zmqagents.envelope import Envelope
    from helpers.peers import curve_dealer

    async def main():
        async with Node() as node:
            alice = Identity.generate()
            ctx = zmq.Context()
            try:
                sock = curve_dealer(ctx, node.contact, key=alice, routing_id=alice.public_key)

                def env(mid: bytes, seq: int, body: str) -> bytes:
                    return Envelope(id=mid, src=alice.node_id, dst=node.node_id, type="msg", body=body,
                                    seq=seq, ep=7).encode()

                first, reused, fresh = os.urandom(16), os.urandom(16), os.urandom(16)
                for frame in (env(first, 1, "a"), env(first, 1, "a"), env(reused, 2, "b"), env(reused, 3, "b-again"),
                              env(fresh, 4, "c")):
                    sock.send(frame)
                got = [(await node.receive(timeout=5)).body for _ in range(3)]
                assert got == ["a", "b", "c"]
                with pytest.raises(asyncio.TimeoutError):
                    await node.receive(timeout=0.3)
                assert node.delivery.stats["duplicates"] == 2
            finally:
                ctx.destroy(linger=0)

    arun(main())


def test_nodes_join_through_one_bootstrap_and_find_each_other(arun):
    """Twelve real nodes join through the first one; then every node's lookup of every other node's id
    returns that node first, and the routing tables hold what the lookups learned."""

    async def main():
        seed = Node()
        await seed.start()
        nodes = [seed]
        try:
            for _ in range(11):
                node = Node(bootstrap=[seed.contact])
                await node.start()
                nodes.append(node)
            for node in nodes:
                for other in nodes:
                    if other is node:
                        continue
                    found = await node.lookup(other.node_id, timeout=10)
                    assert found and found[0].node_id == other.node_id
            assert all(len(n.peers()) >= 5 for n in nodes)
            entry = nodes[3].peers()[0]
            assert set(entry) == {"node_id", "contact", "state", "incarnation", "rtt_ms", "last_seen", "fails"}
        finally:
            await asyncio.gather(*(node.close() for node in nodes))

    arun(main(), timeout=60)


def test_sub_sockets_exist_only_while_the_application_subscribes(arun):
    """Each SUB costs a CURVE connection on both ends, so an idle neighbour holds none."""

    async def main():
        async with Node() as a, Node(peers=[a.contact]) as b:
            assert a.neighbours() == [b.node_id] and len(a.transport._subs) == len(b.transport._subs) == 0
            stream = b.subscribe("x", one_hop=True)
            first = asyncio.ensure_future(stream.__anext__())
            assert await a.wait_for_subscriber("x", 5)
            assert len(b.transport._subs) == 1
            await a.publish("x", 1, one_hop=True)
            assert (await asyncio.wait_for(first, 5)).body == 1
            await stream.aclose()
            assert len(b.transport._subs) == 0

    arun(main())


def _fast_membership() -> NodeConfig:
    """LAN defaults scaled down so a crash is confirmed within a few seconds of test time."""
    from zmqagents.core.membership import MembershipConfig

    return NodeConfig(membership=MembershipConfig(probe_interval=0.3, probe_timeout=0.1, suspicion_min=0.6,
                                                  suspicion_max=1.5, gossip_interval=0.1, sync_interval=2.0))


def test_a_killed_node_is_reported_failed_and_a_closed_one_left(arun, tmp_path):
    """A real node process killed with SIGKILL is confirmed failed by every node that held it;
    a node that closes announces its leave and is reported "left", never "failed"."""
    import signal
    import subprocess
    import sys
    import time as _time

    async def main():
        seed = Node(config=_fast_membership())
        await seed.start()
        nodes = [seed]
        contact_file = tmp_path / "victim.contact"
        victim = subprocess.Popen(
            [sys.executable, "-m", "zmqagents.cli", "node", "--bootstrap", str(seed.contact),
             "--contact-file", str(contact_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(3):
                node = Node(config=_fast_membership(), bootstrap=[seed.contact])
                await node.start()
                nodes.append(node)
            deadline = _time.monotonic() + 15
            while not contact_file.exists():
                assert _time.monotonic() < deadline and victim.poll() is None
                await asyncio.sleep(0.05)
            from zmqagents.identity import Contact
            victim_id = Contact.parse(contact_file.read_text()).node_id
            for node in nodes:  # everyone learns of the victim (a lookup of its id reaches it)
                assert (await node.lookup(victim_id, timeout=10))[0].node_id == victim_id
            await asyncio.sleep(1.5)  # a reconcile: membership now probes the victim
            holders = [n for n in nodes if victim_id in n.membership]
            assert holders, "nobody probes the victim"
            streams = [n.events() for n in holders]
            waits = [asyncio.ensure_future(_first(s, "failed", victim_id)) for s in streams]
            await asyncio.sleep(0.05)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=5)
            events = await asyncio.wait_for(asyncio.gather(*waits), 20)
            assert all(e.kind == "failed" for e in events)
            assert all(victim_id not in {bytes.fromhex(p["node_id"]) for p in n.peers()} for n in holders)

            # Graceful leave: the others report "left" for it, and nobody ever reports a live node failed.
            leaver = nodes.pop()
            watchers = [n for n in nodes if leaver.node_id in n.membership]
            left = [asyncio.ensure_future(_first(n.events(), "left", leaver.node_id, forbid="failed"))
                    for n in watchers]
            await asyncio.sleep(0.05)
            await leaver.close()
            assert all(e.kind == "left" for e in await asyncio.wait_for(asyncio.gather(*left), 10))
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
            for node in nodes:
                await node.close()

    arun(main(), timeout=90)


async def _first(stream, kind: str, node_id: bytes, forbid: str | None = None):
    async for event in stream:
        if event.node_id == node_id:
            assert event.kind != forbid, f"{event.peer} was reported {forbid}"
            if event.kind == kind:
                await stream.aclose()
                return event


def test_a_client_that_is_not_a_member_stays_out_of_the_servers_table(arun):
    async def main():
        async with Node() as server:
            server.on_request(lambda body, msg: body)
            async with Node(peers=[server.contact], config=NodeConfig(member=False)) as client:
                assert await client.request(server.node_id, 1, timeout=5) == 1
                assert client.node_id not in {bytes.fromhex(p["node_id"]) for p in server.peers()}
            async with Node(peers=[server.contact]) as member:
                assert member.node_id in {bytes.fromhex(p["node_id"]) for p in server.peers()}

    arun(main())


def test_confirmed_sends_are_reported_settled_and_caller_ids_are_kept(arun):
    async def main():
        async with Node() as server, Node(peers=[server.contact], config=fast_config()) as client:
            settled: list[tuple] = []
            client.on_settled(lambda mid, dst, reason: settled.append((mid, dst, reason)))
            ids = [os.urandom(16) for _ in range(50)]
            for i, mid in enumerate(ids):
                assert await client.send(server.node_id, i, msg_id=mid, confirm=True) == mid
            await client.flush(timeout=5)
            assert settled == [(mid, server.node_id, None) for mid in ids]
            got = [await server.receive(timeout=5) for _ in range(50)]
            assert [m.id for m in got] == ids
            # a re-send under an id already delivered is acknowledged but not delivered again
            await client.send(server.node_id, "again", msg_id=ids[0], confirm=True)
            await client.flush(timeout=5)
            assert settled[-1] == (ids[0], server.node_id, None)
            with pytest.raises(asyncio.TimeoutError):
                await server.receive(timeout=0.2)
            # a failure reaches the callbacks too
            dead = Identity.generate()
            from zmqagents.identity import Contact
            lost = await client.send(Contact(dead.public_key, "tcp://127.0.0.1:9"), "x", confirm=True)
            with pytest.raises(SendError):
                await client.flush(timeout=10)
            assert settled[-1] == (lost, dead.node_id, "unreachable")

    arun(main())


# -- a peer restarted with the same key on another endpoint ------------------------------------------
# B talked to A, so B holds a DEALER to A's old endpoint. A closes; a new Node with A's identity starts
# on a fresh port and speaks to B. B must answer it at once, well before membership (seconds of
# probing and suspicion) would declare the old A dead. The bound below is under the default probe
# interval plus suspicion timeout, so a fix that waits for failure detection cannot pass.
REJOIN_BOUND = 2.0


async def _b_talked_to_a(a_id: Identity, **b_kwargs) -> tuple[Node, Node]:
    a = Node(a_id)
    await a.start()
    a.on_request(lambda body, msg: "old")
    b = Node(**b_kwargs)
    await b.start()
    b.on_request(lambda body, msg: {"b": body})
    assert await b.request(a.contact, "hi", timeout=5) == "old"  # B now holds a DEALER to A's endpoint
    assert a.node_id in b.transport.dealers
    return a, b


@pytest.mark.parametrize("how", ["plain", "hello", "bootstrap"])
def test_a_peer_restarted_on_another_port_is_answered_at_once(arun, how):
    async def main():
        a_id = Identity.generate()
        a, b = await _b_talked_to_a(a_id)
        old_endpoint = a.transport.endpoint
        a.config.member = False  # a crash, not a leave: no "left" rumor tells B to drop its connection
        await a.close()
        kwargs = {"peers": [b.contact]} if how == "hello" else {"bootstrap": [b.contact]} if how == "bootstrap" else {}
        a2 = Node(a_id, **kwargs)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(a2.start(), REJOIN_BOUND)
            assert a2.transport.endpoint != old_endpoint
            if how == "hello":
                assert b.node_id in a2.neighbours()  # B answered the hello
            if how == "bootstrap":
                assert any(p["node_id"] == b.node_id.hex() for p in a2.peers())  # B answered the join lookup
            assert await a2.request(b.contact, "again", timeout=REJOIN_BOUND) == {"b": "again"}
            await a2.send(b.node_id, "note")
            await asyncio.wait_for(a2.flush(), REJOIN_BOUND)
            assert (await b.receive(timeout=REJOIN_BOUND)).body == "note"
            assert loop.time() - started < 2 * REJOIN_BOUND
            # B can also start a conversation with the new A (not only answer it).
            a2.on_request(lambda body, msg: "new")
            assert await b.request(a_id.node_id, "you?", timeout=REJOIN_BOUND) == "new"
            if how != "plain":
                # A's own word named its new endpoint: B's address book follows it.
                assert b.transport._contacts[a_id.node_id].endpoint == a2.transport.endpoint
        finally:
            await a2.close()
            await b.close()

    arun(main(), timeout=30)


def test_a_passed_transport_config_is_honoured_and_never_modified(arun, tmp_path):
    """Node's listen/secure keywords override config.transport only when given: a TransportConfig passed
    in is what the node binds, and the caller's NodeConfig (one config shared by several nodes) is left
    as it was, whether the keywords are given or not."""
    from zmqagents.transport.config import TransportConfig

    async def main():
        endpoint = f"ipc://{tmp_path}/inbox"
        shared = NodeConfig(transport=TransportConfig(listen=endpoint, secure=False))
        async with Node(config=shared) as a:
            assert a.contact.endpoint == endpoint  # the passed listen, not the keyword's default
            assert a.config.transport.secure is False
            assert (shared.transport.listen, shared.transport.secure) == (endpoint, False)
            async with Node(listen="tcp://127.0.0.1:0", secure=True, config=shared) as b:
                assert b.contact.endpoint.startswith("tcp://127.0.0.1:") and b.config.transport.secure
                # The keywords went into b's own copy: the shared object and a's view are untouched.
                assert (shared.transport.listen, shared.transport.secure) == (endpoint, False)
                assert a.config.transport.listen == endpoint
            a.on_request(lambda body, msg: body + 1)
            async with Node(secure=False, peers=[a.contact]) as c:  # a really listens there, without CURVE
                assert await c.request(a.node_id, 1, timeout=5) == 2

    arun(main())


def test_node_provides_the_protocol_the_layers_above_are_written_against(arun):
    """agents/, the local API and the outbox take a NodeAPI (zmqagents/shell/api.py): Node has every member."""
    from zmqagents.shell.api import NodeAPI

    async def main():
        async with Node() as node:
            assert isinstance(node, NodeAPI)
            assert abs(node.now() - time.time()) < 1  # its one clock reads as Unix time

    arun(main())
