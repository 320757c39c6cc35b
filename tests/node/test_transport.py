"""The ZeroMQ shell over real CURVE sockets on loopback: who may speak for which node id."""

from __future__ import annotations

import asyncio
import os
import struct
import time

import msgpack
import zmq

from zmqagents.envelope import Envelope, decode
from zmqagents.identity import Identity
from zmqagents.transport.binding import dealer_routing_id
from zmqagents.transport.config import TransportConfig
from zmqagents.transport.mesh import Transport
from zmqagents.transport.receiving import READ_BATCH
from zmqagents.transport.sockio import MORE_NOBLOCK, NOBLOCK, readable

from helpers.peers import curve_dealer


def _env(src: bytes, dst: bytes, body=b"x") -> Envelope:
    return Envelope(id=os.urandom(16), src=src, dst=dst, type="msg", body=body)


async def _collect(server: Transport, sent, frames: list, settle: float = 0.3) -> None:
    for parts in frames:
        sent.send_multipart(parts) if isinstance(parts, list) else sent.send(parts)
    await asyncio.sleep(settle)


def _server(received: list, **cfg) -> Transport:
    t = Transport(Identity.generate(), TransportConfig(**cfg), on_batch=received.extend, on_publication=lambda t, e: None)
    t.start()
    return t


def test_honest_peer_is_accepted_and_impostors_are_dropped(arun):
    async def main():
        received: list[Envelope] = []
        server = _server(received)
        alice, bob = Identity.generate(), Identity.generate()
        ctx = zmq.Context()
        try:
            honest = curve_dealer(ctx, server.contact(), key=alice, routing_id=alice.public_key)
            # Alice's CURVE key, but claiming to be Bob: the routing id does not match the key.
            impostor = curve_dealer(ctx, server.contact(), key=alice, routing_id=bob.public_key)
            # Alice's own connection, but an envelope that claims Bob as its source.
            honest.send(_env(alice.node_id, server.identity.node_id, b"good").encode())
            impostor.send(_env(bob.node_id, server.identity.node_id, b"forged").encode())
            honest.send(_env(bob.node_id, server.identity.node_id, b"forged-src").encode())
            await asyncio.sleep(0.5)
            assert [e.body for e in received] == [b"good"]
            assert all(e.src == alice.node_id for e in received)
            assert server.drops.get("identity_mismatch") == 1
            assert server.drops.get("src_mismatch") == 1
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())


def test_only_an_unguessable_routing_id_is_answered_over_its_connection(arun):
    """A DEALER's routing id is its key and 16 random bytes. The key alone (the form of older nodes) is
    accepted but never answered over: anyone who knows the key could hold that id once the peer's
    connection is gone. Any other length is refused and counted."""

    async def main():
        received: list[Envelope] = []
        server = _server(received)
        me = server.identity.node_id
        alice, bob = Identity.generate(), Identity.generate()
        ctx = zmq.Context()
        try:
            old = curve_dealer(ctx, server.contact(), key=alice, routing_id=alice.public_key)
            new = curve_dealer(ctx, server.contact(), key=bob, routing_id=dealer_routing_id(bob.public_key))
            odd = curve_dealer(ctx, server.contact(), key=bob, routing_id=bob.public_key + b"short")
            old.send(_env(alice.node_id, me, b"old").encode())
            new.send(_env(bob.node_id, me, b"new").encode())
            odd.send(_env(bob.node_id, me, b"odd").encode())
            await asyncio.sleep(0.5)
            assert sorted(e.body for e in received) == [b"new", b"old"]
            assert server.drops == {"bad_routing_id": 1}
            assert server.public_key_of(bob.node_id) == bob.public_key
            server.send(_env(me, alice.node_id, b"to-old"))
            server.send(_env(me, bob.node_id, b"to-new"))
            await asyncio.sleep(0.3)
            assert not old.poll(0)  # nothing over the guessable id; no contact either, so no route
            assert server.drops == {"bad_routing_id": 1, "no_route": 1}
            assert decode(new.recv(NOBLOCK)).body == b"to-new"
            assert not odd.poll(0)
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())


def test_garbage_truncated_oversize_and_multipart_are_counted_not_fatal(arun):
    async def main():
        received: list[Envelope] = []
        server = _server(received, max_message_size=4096)
        alice = Identity.generate()
        ctx = zmq.Context()
        try:
            sock = curve_dealer(ctx, server.contact(), key=alice, routing_id=alice.public_key)
            good = _env(alice.node_id, server.identity.node_id, b"after").encode()
            payload = msgpack.packb({"v": 1, "id": b"short", "src": alice.node_id, "t": "msg"})
            sock.send(b"\x00\x01")  # shorter than the length prefix
            sock.send(struct.pack(">I", 100) + b"abc")  # truncated
            sock.send(struct.pack(">I", 1 << 30) + b"abc")  # announces 1 GiB
            sock.send(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")  # not msgpack
            sock.send(struct.pack(">I", len(payload)) + payload)  # wrong field size
            sock.send_multipart([good, good])  # extra frame
            sock.send(good)
            # One link keeps its order: once the last frame is in, every bad one before it was read (waited
            # for by event: a fixed 0.5 s was outrun on a loaded box)
            for _ in range(200):
                if received:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)  # and nothing else follows it
            assert [e.body for e in received] == [b"after"]
            assert server.drops == {
                "TruncatedEnvelope": 2,
                "OversizeEnvelope": 1,
                "MalformedEnvelope": 2,
                "multipart": 1,
            }
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())


def test_allowlist_drops_unlisted_nodes(arun):
    async def main():
        received: list[Envelope] = []
        alice, mallory = Identity.generate(), Identity.generate()
        server = Transport(
            Identity.generate(), TransportConfig(), on_batch=received.extend, on_publication=lambda t, e: None,
            allow=frozenset({alice.node_id}),
        )
        server.start()
        ctx = zmq.Context()
        try:
            a = curve_dealer(ctx, server.contact(), key=alice, routing_id=alice.public_key)
            m = curve_dealer(ctx, server.contact(), key=mallory, routing_id=mallory.public_key)
            a.send(_env(alice.node_id, server.identity.node_id, b"a").encode())
            m.send(_env(mallory.node_id, server.identity.node_id, b"m").encode())
            await asyncio.sleep(0.5)
            assert [e.body for e in received] == [b"a"]
            assert server.drops == {"not_allowed": 1}
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())


def test_plaintext_client_cannot_reach_a_secure_node(arun):
    async def main():
        received: list[Envelope] = []
        server = _server(received)
        alice = Identity.generate()
        ctx = zmq.Context()
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.setsockopt(zmq.ROUTING_ID, alice.public_key)
            sock.connect(server.endpoint)
            sock.send(_env(alice.node_id, server.identity.node_id).encode())
            await asyncio.sleep(0.5)
            assert received == []
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())



def test_a_node_connected_to_our_inbox_is_answered_there_before_our_dealer(arun):
    """Our DEALER to a node may point at an endpoint it left (it restarted elsewhere); its own
    authenticated connection to our inbox cannot. When that connection is gone, the DEALER is used."""

    async def main():
        received: list[Envelope] = []
        server = _server(received)
        me = server.identity.node_id
        peer_id = Identity.generate()
        ctx = zmq.Context()
        left = ctx.socket(zmq.ROUTER)  # the endpoint the peer left: bound, never answers a handshake
        left.linger = 0
        port = left.bind_to_random_port("tcp://127.0.0.1")

        async def replies(sock: zmq.Socket) -> list:
            await asyncio.sleep(0.3)
            out = []
            while sock.poll(0):
                out.append(decode(sock.recv()).body)
            return out

        try:
            client = curve_dealer(ctx, server.contact(), key=peer_id, routing_id=dealer_routing_id(peer_id.public_key))
            client.send(_env(peer_id.node_id, me, b"hi").encode())
            await asyncio.sleep(0.3)
            assert [e.body for e in received] == [b"hi"]
            server.add_contact(peer_id.contact(f"tcp://127.0.0.1:{port}"))  # a stale address
            server.send(_env(me, peer_id.node_id, b"one"))
            assert await replies(client) == [b"one"]
            assert server.dealer_count == 0  # no DEALER was needed
            server._inbound.clear()  # as if the connection had not been seen: the DEALER to the stale address
            server.send(_env(me, peer_id.node_id, b"lost"))
            await asyncio.sleep(0.1)
            assert server.dealer_count == 1
            client.send(_env(peer_id.node_id, me, b"again").encode())
            await asyncio.sleep(0.3)
            server.send(_env(me, peer_id.node_id, b"two"))
            assert await replies(client) == [b"two"]  # the open DEALER did not take it
            client.close(linger=0)
            await asyncio.sleep(0.3)
            server.send(_env(me, peer_id.node_id, b"three"))
            await asyncio.sleep(0.1)
            assert peer_id.node_id not in server._inbound  # the gone connection was noticed; the DEALER took it
            assert server.drops.get("no_route") is None
            # What the node says about itself moves its contact; nothing is added for a node we never knew.
            assert server.relocate(peer_id.contact(f"tcp://127.0.0.1:{port}")) is False
            assert server.relocate(peer_id.contact("tcp://127.0.0.1:1")) is True
            assert server.dealer_count == 0
            stranger = Identity.generate()
            assert server.relocate(stranger.contact("tcp://127.0.0.1:2")) is False
            assert not server.known(stranger.node_id)
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())


def test_readable_follows_the_queue_of_a_real_socket():
    """Drains stop when ``readable`` says no instead of on a raised zmq.Again: it must be true exactly
    while a message waits, for single frames and for a multipart message read part by part."""
    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.ROUTER)
        server.linger = 0
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = ctx.socket(zmq.DEALER)
        client.linger = 0
        client.connect(f"tcp://127.0.0.1:{port}")
        assert not readable(server)
        client.send(b"one")
        client.send_multipart([b"two", b"parts"])
        assert server.poll(2000)
        assert readable(server)
        assert server.recv_multipart(NOBLOCK)[1:] == [b"one"]
        assert readable(server)
        rid = server.recv(NOBLOCK)
        assert readable(server)  # the rest of a multipart message counts as waiting
        assert server.recv(NOBLOCK) == b"two" and server.recv(NOBLOCK) == b"parts"
        assert not readable(server)
        server.send(rid, MORE_NOBLOCK)
        server.send(b"back", NOBLOCK)
        assert client.poll(2000) and readable(client)
        assert client.recv(NOBLOCK) == b"back"
        assert not readable(client)
    finally:
        ctx.destroy(linger=0)


def test_a_burst_over_one_read_batch_arrives_whole_and_in_order(arun):
    """More than READ_BATCH messages waiting at once: the inbox takes them in batches over several loop
    turns, none lost or reordered, and a DEALER reply burst likewise."""

    async def main():
        received: list[Envelope] = []
        server = _server(received)
        me = server.identity.node_id
        peer = Identity.generate()
        ctx = zmq.Context()
        ctx.setsockopt(zmq.SNDHWM, 10_000)
        count = READ_BATCH * 2 + 7
        try:
            client = curve_dealer(ctx, server.contact(), key=peer, routing_id=dealer_routing_id(peer.public_key))
            client.send(_env(peer.node_id, me, b"hello").encode())
            for _ in range(100):  # the handshake needs the loop (ZAP): wait for it before the burst
                if received:
                    break
                await asyncio.sleep(0.05)
            assert [e.body for e in received] == [b"hello"]
            received.clear()
            for i in range(count):  # all written before the loop runs again, so all wait at once
                client.send(_env(peer.node_id, me, i.to_bytes(4, "big")).encode(), NOBLOCK)
            for _ in range(100):
                if len(received) == count:
                    break
                await asyncio.sleep(0.05)
            assert [int.from_bytes(e.body, "big") for e in received] == list(range(count))
            assert server.stats["frames_in"] == count + 1 and not server.drops
            for i in range(count):  # back over the client's own connection (two sends per frame)
                server.send(_env(me, peer.node_id, i.to_bytes(4, "big")))
            got = []
            for _ in range(100):  # bounded wait (5 s): a loaded box may take longer than one sleep
                while client.poll(0):
                    got.append(int.from_bytes(decode(client.recv()).body, "big"))
                if len(got) >= count:
                    break
                await asyncio.sleep(0.05)
            assert got == list(range(count))
            assert server.stats["frames_out"] == count and not server.drops
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())


def test_a_forgotten_peer_gets_no_frame_of_its_dead_stream(arun):
    """Issue 12, the transport half: membership forgets B (declared dead) while frames of A's old
    stream to B are still queued for this loop turn's writes. B restarts on the same endpoint with
    the same key and dials A. No frame queued before the forget may reach the restarted B: neither
    from the queue nor over a connection opened for it that keeps retrying in the background and
    connects once B is back."""

    async def main():
        a_got: list[Envelope] = []
        b_got: list[Envelope] = []
        # Reconnect every 50 ms without back-off: a background DEALER would connect soon after B is up.
        a = _server(a_got, reconnect_ivl_ms=50, reconnect_ivl_max_ms=50)
        me = a.identity.node_id
        b_key = Identity.generate()
        probe = zmq.Context().socket(zmq.ROUTER)
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.close(linger=0)
        probe.context.term()
        endpoint = f"tcp://127.0.0.1:{port}"
        a.add_contact(b_key.contact(endpoint))
        b = None
        try:
            for i in range(3):  # the old stream's frames, handed over by the delivery core ...
                a.send(_env(me, b_key.node_id, b"old-%d" % i))
            assert a.outbox_size == 3
            a.forget(b_key.node_id)  # ... and, in the same loop turn, B is declared dead
            assert a.outbox_size == 0
            assert a.drops.get("forgotten") == 3
            await asyncio.sleep(0.2)  # the flush ran
            assert a.dealer_count == 0  # nothing is left connecting to B's address in the background
            b = Transport(b_key, TransportConfig(listen=endpoint), on_batch=b_got.extend,
                          on_publication=lambda t, e: None)
            b.start()  # B restarted, same key, same endpoint
            b.add_contact(a.identity.contact(a.endpoint))
            b.send(_env(b_key.node_id, me, b"hello"))  # and dials A
            for _ in range(100):
                if a_got:
                    break
                await asyncio.sleep(0.02)
            assert [e.body for e in a_got] == [b"hello"]
            a.send(_env(me, b_key.node_id, b"new"))  # the new stream, over B's own connection
            await asyncio.sleep(1.0)  # 20 reconnect intervals: a late connection would have delivered by now
            assert [e.body for e in b_got] == [b"new"]
        finally:
            if b is not None:
                b.close()
            a.close()

    arun(main())


def test_the_exported_inbox_refusals_cover_every_decode_error_and_refused_link():
    """INBOX_REFUSALS is exported at 0 from the start (sidecar/admin.py): it must name every reason the
    decoder and the link monitor can produce, or that series would only appear after its first event."""
    from zmqagents.envelope import EnvelopeError
    from zmqagents.transport.linkwatch import MECHANISM_MISMATCH, refusal
    from zmqagents.transport.droplog import INBOX_REFUSALS

    decode_errors = {cls.__name__ for cls in EnvelopeError.__subclasses__()} - {"BadSignature"}  # verify only
    links = {refusal(int(event), value)[0] for event, value in (
        (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, MECHANISM_MISMATCH), (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x11000001),
        (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400), (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 104))}
    assert decode_errors and links == {"plaintext", "handshake_failed", "handshake_refused", "handshake_aborted"}
    assert decode_errors | links <= set(INBOX_REFUSALS)
    assert len(set(INBOX_REFUSALS)) == len(INBOX_REFUSALS)


def test_a_refused_send_on_the_inbox_does_not_swallow_what_arrives_meanwhile(arun):
    """A send on a ZeroMQ socket processes its pending commands, which resets its edge-triggered FD.
    When the peer's connection is gone (EHOSTUNREACH, a restarted sidecar under a new routing id),
    the refused send must not leave what its new connection brought unread: nothing else would
    wake the inbox (found by test_kill_9_mid_stream_to_a_live_peer_neither_loses_nor_duplicates)."""
    import time

    from zmqagents.transport.binding import ROUTING_ID_SIZE

    async def main():
        received: list[Envelope] = []
        server = _server(received)
        me = server.identity.node_id
        peer = Identity.generate()
        ctx = zmq.Context()
        try:
            first = curve_dealer(ctx, server.contact(), key=peer, routing_id=peer.public_key + os.urandom(16))
            assert len(peer.public_key) + 16 == ROUTING_ID_SIZE
            first.send(_env(peer.node_id, me, b"before").encode())
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.02)
            assert [e.body for e in received] == [b"before"]
            first.close(linger=0)  # the peer dies ...
            await asyncio.sleep(0.3)
            second = curve_dealer(ctx, server.contact(), key=peer, routing_id=peer.public_key + os.urandom(16))
            await asyncio.sleep(0.3)  # ... and comes back on a new connection (handshake done by the loop)
            second.send(_env(peer.node_id, me, b"after").encode())
            time.sleep(0.2)  # it is in the inbox's queue, and the loop has not looked yet
            server.send(_env(me, peer.node_id, b"ack"))  # to the gone connection: EHOSTUNREACH
            server._flush()  # this loop turn's writes, before the loop polls the inbox's FD
            await asyncio.sleep(1.0)  # no other traffic: only the flush's re-check can find "after"
            assert [e.body for e in received] == [b"before", b"after"]
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())


def test_libzmq_reads_ahead_only_a_few_messages_per_connection_while_the_loop_is_busy(arun):
    """libzmq bounds what it reads ahead on a connection in messages, and a message may hold up to the
    size limit (or an ~18 KB shared receive buffer for a small one), so the inbox lets it read only
    ``recv_hwm`` ahead: the rest waits in the sender's queue and TCP. With the loop busy (nothing is
    drained), a raw sender gets only its own queue, the kernel's buffers and that read-ahead accepted.
    With the old read-ahead (10,000) the sender got well over 10,000 frames of 4 KiB accepted."""

    async def main():
        server = _server([], secure=False, recv_hwm=8)
        ctx = zmq.Context()
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndhwm = 100
            sock.sndbuf = 65536  # the kernel's buffers, bounded on our side...
            sock.setsockopt(zmq.ROUTING_ID, dealer_routing_id(Identity.generate().public_key))
            sock.connect(server.endpoint)
            await asyncio.sleep(0.2)  # connected; from here on the loop does not run until the end
            frame = os.urandom(4096)
            accepted, stuck_since = 0, None
            deadline = time.monotonic() + 5
            while accepted < 20_000 and time.monotonic() < deadline:
                try:
                    sock.send(frame, NOBLOCK)
                    accepted += 1
                    stuck_since = None
                except zmq.Again:
                    now = time.monotonic()
                    stuck_since = stuck_since or now
                    if now - stuck_since > 0.5:  # full for half a second: libzmq stopped reading
                        break
                    time.sleep(0.005)
            # sender queue 100 + read-ahead 8 + one being decoded + what the two kernels buffer
            # (loopback autotuning: a few MB at most, i.e. a few hundred 4 KiB frames)
            assert accepted < 2_500, accepted
            assert server.router.rcvhwm == 8
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main())
