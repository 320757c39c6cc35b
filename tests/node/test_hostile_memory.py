"""A real node under hostile-but-valid traffic: what peers make it hold stays bounded in bytes,
refusals are counted, and an honest peer is still served. Real sockets (CURVE), real processes.

The attackers are written from protocols/ only: a raw pyzmq DEALER with its own key, sending
well-formed, correctly sequenced envelopes shaped to cost the receiver as much as the limits let
through (bench/hostile.py builds them; this module drives them against a node in this process,
so the node's queues can be looked at directly).
"""

from __future__ import annotations

import asyncio
import os
import time

import msgpack
import pytest
import zmq

from zmqagents.core.delivery_config import DeliveryConfig
from zmqagents.core.ratelimit import RateLimitConfig
from zmqagents.envelope import DEFAULT_MAX_SIZE, DEFAULT_MAX_VALUES, HEADER, Envelope
from zmqagents.identity import Identity
from zmqagents.node import PEERS, Node, NodeConfig
from zmqagents.transport.binding import dealer_routing_id
from zmqagents.transport.config import TransportConfig
from zmqagents.transport.mesh import Transport

from helpers.peers import curve_dealer


def frame(src: bytes, dst: bytes, seq: int, ep: int, body: bytes) -> bytes:
    head = msgpack.packb({"v": 1, "id": os.urandom(16), "src": src, "t": "msg", "dst": dst, "seq": seq, "ep": ep},
                         use_bin_type=True)
    payload = bytes([head[0] + 1]) + head[1:] + msgpack.packb("b") + body
    return HEADER.pack(len(payload)) + payload


class Attacker:
    """One hostile identity: its own CURVE key, its own routing id, raw frames."""

    def __init__(self, ctx: zmq.Context, node: Node):
        self.ident = Identity.generate()
        self.dst = node.node_id
        self.sock = curve_dealer(ctx, node.contact, key=self.ident, routing_id=self.ident.public_key)
        self.seq = 1

    def send(self, body: bytes, *, seq: int | None = None, ep: int = 7) -> None:
        self.sock.send(frame(self.ident.node_id, self.dst, self.seq if seq is None else seq, ep, body))
        if seq is None:
            self.seq += 1


MANY_VALUES = msgpack.packb([{} for _ in range(DEFAULT_MAX_VALUES - 17)])  # as many empty maps as allowed
WIDE = msgpack.packb("a" * (DEFAULT_MAX_SIZE - 1024) + "\U0001F600")  # ~4 MiB decoded


async def settle(node: Node, seconds: float) -> None:
    """Let the node read what was sent (the sends are asynchronous)."""
    await asyncio.sleep(seconds)


def test_what_hostile_peers_make_a_node_hold_stays_within_its_byte_bounds(arun):
    async def main():
        # Rate limits out of the way: this is about the queues' bounds.
        config = NodeConfig(inbox_bytes=4 << 20)
        config.transport.rate_limit = RateLimitConfig(messages=1e6, message_burst=1e6, bytes=1e12, byte_burst=1e12)
        ctx = zmq.Context()
        async with Node(config=config) as node:
            attackers = [Attacker(ctx, node) for _ in range(6)]
            await asyncio.sleep(0.3)  # handshakes
            for _ in range(12):
                attackers[0].send(MANY_VALUES)  # in order: into the inbox
                attackers[1].send(WIDE)
                attackers[2].send(MANY_VALUES, seq=attackers[2].seq + 1)  # past a gap: reorder buffer
                attackers[2].seq += 1
                attackers[3].send(WIDE, seq=attackers[3].seq + 1)
                attackers[3].seq += 1
            for _ in range(30):
                await settle(node, 0.1)
            count, held = node.inbox_size
            buffered, buffered_bytes = node.delivery.buffered()
            # The inbox: its byte bound, except that a sender holding nothing may bring one message of any size.
            assert held <= config.inbox_bytes + 4.5 * 2**20, held
            assert buffered_bytes <= node.delivery.config.reorder_bytes_total + 4.5 * 2**20, buffered_bytes
            assert node.stats["inbox_bytes_refused"] + node.stats["inbox_share_refused"] > 0
            assert node.delivery.stats["reorder_bytes_full"] > 0
            # An honest peer is still answered, and the refused messages were only deferred: once the
            # application reads, the in-order attackers' messages come through, in order.
            async with Node(peers=[node.contact]) as honest:
                assert isinstance(await honest.request(node.node_id, None, type=PEERS, timeout=10), list)
            got = []
            while node.inbox_size[0]:
                got.append(await node.receive(timeout=1))
            assert got and all(m.src in (attackers[0].ident.node_id, attackers[1].ident.node_id) for m in got)
            for a in attackers:
                a.sock.close()
        ctx.term()

    arun(main(), timeout=60)


def test_a_flooding_peer_is_held_to_its_rate_counted_and_the_others_are_served(arun):
    async def main():
        config = NodeConfig()
        config.transport.rate_limit = RateLimitConfig(messages=500, message_burst=500, bytes=1e9, byte_burst=1e9)
        ctx = zmq.Context()
        async with Node(config=config) as node:
            flooder = Attacker(ctx, node)
            await asyncio.sleep(0.3)
            body = msgpack.packb("x" * 100)
            for i in range(3000):  # each the first of a newer stream: none waits behind a refused one
                flooder.send(body, seq=1, ep=1000 + i)
            async with Node(peers=[node.contact]) as honest:
                for _ in range(5):
                    await honest.send(node.node_id, "honest")
                await honest.flush(timeout=10)
                from_flooder = from_honest = 0
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while loop.time() < deadline:  # until the node has read all 3,000 (a busy box is slow)
                    while node.inbox_size[0]:
                        msg = await node.receive(timeout=1)
                        from_honest += msg.src == honest.node_id
                        from_flooder += msg.src == flooder.ident.node_id
                    if node.transport.drops.get("rate_messages", 0) + from_flooder >= 3000:
                        break
                    await asyncio.sleep(0.05)
            assert from_honest == 5
            assert 0 < from_flooder < 3000
            assert node.transport.drops["rate_messages"] == 3000 - from_flooder
            assert node.transport.limiter.stats["refused_messages"] == 3000 - from_flooder
            flooder.sock.close()
        ctx.term()

    arun(main(), timeout=60)


@pytest.mark.parametrize("shape", ["values", "wide"])
def test_expensive_envelopes_are_charged_what_they_cost(arun, shape):
    # A peer within its bytes/s by wire size but not by decoded size is held to the decoded size.
    async def main():
        config = NodeConfig()
        config.transport.rate_limit = RateLimitConfig(bytes=2 << 20, byte_burst=2 << 20)
        ctx = zmq.Context()
        async with Node(config=config) as node:
            attacker = Attacker(ctx, node)
            await asyncio.sleep(0.3)
            for _ in range(20):
                attacker.send(MANY_VALUES if shape == "values" else WIDE)
            await asyncio.sleep(1.0)
            assert node.transport.drops.get("rate_bytes", 0) > 0
            assert node.transport.limiter.stats["charged_bytes"] > 0
            attacker.sock.close()
        ctx.term()

    arun(main(), timeout=60)


def test_many_peers_of_large_frames_against_a_slow_node_wait_in_a_byte_bounded_backlog(arun):
    """libzmq reads each connection ahead of the node (8 messages of up to the size limit each), so
    while the node is slow, N peers sending maximum-size frames could make it hold 9 MiB each. The inbox
    now empties libzmq every turn into its read backlog, bounded in bytes whatever the number of peers:
    what does not fit is refused unacknowledged and counted, every frame sent is either handed on or
    counted, and a small frame from an honest peer still gets through."""

    async def main():
        received: list[Envelope] = []
        backlog_peak = [0]

        def slow_node(batch: list[Envelope]) -> None:  # a busy node: 30 ms a batch
            received.extend(batch)
            backlog_peak[0] = max(backlog_peak[0], server.backlog_bytes)
            time.sleep(0.03)

        config = TransportConfig(read_backlog_bytes=4 << 20)
        server = Transport(Identity.generate(), config, on_batch=slow_node, on_publication=lambda t, e: None)
        server.start()
        me = server.identity.node_id
        ctx = zmq.Context()
        try:
            keys = [Identity.generate() for _ in range(8)]
            socks = [curve_dealer(ctx, server.contact(), key=k, routing_id=dealer_routing_id(k.public_key))
                     for k in keys]
            honest_key = Identity.generate()
            honest = curve_dealer(ctx, server.contact(), key=honest_key,
                                  routing_id=dealer_routing_id(honest_key.public_key))
            await asyncio.sleep(0.3)  # handshakes
            big = os.urandom(DEFAULT_MAX_SIZE - 1024)
            sent = 0
            for _ in range(6):
                for key, sock in zip(keys, socks):
                    sock.send(Envelope(id=os.urandom(16), src=key.node_id, dst=me, type="msg", body=big).encode())
                    sent += 1
            honest.send(Envelope(id=os.urandom(16), src=honest_key.node_id, dst=me, type="msg", body=b"hi").encode())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            refusals = ("backlog_full", "backlog_peer_share", "rate_bytes", "rate_messages")
            while loop.time() < deadline:
                await asyncio.sleep(0.1)
                big_in = sum(1 for e in received if e.body == big)
                if big_in + sum(server.drops.get(r, 0) for r in refusals) >= sent:
                    break
            assert big_in + sum(server.drops.get(r, 0) for r in refusals) == sent
            assert server.drops.get("backlog_full", 0) + server.drops.get("backlog_peer_share", 0) > 0
            assert backlog_peak[0] <= config.read_backlog_bytes + config.read_backlog_bytes // 4, backlog_peak
            assert [e.body for e in received if e.src == honest_key.node_id] == [b"hi"]
            assert server.backlog_bytes == 0
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main(), timeout=60)


def test_a_request_is_answered_before_another_peers_messages_in_its_batch_are_stored(arun):
    # Storing direct messages may block the loop (a sidecar's inbox fsyncs them before their acks
    # leave): a request from another peer decoded in the same batch must not wait for that store.
    # The inbox notes, as each message is stored, how many frames had been written to the asker.
    from zmqagents.queues import BoundedQueue

    class NotingInbox(BoundedQueue):
        def __init__(self, *args):
            super().__init__(*args)
            self.written_to_asker: list[int] = []

        def put(self, item, sender, cost):
            self.written_to_asker.append(node.transport.peer_traffic.of(asker.node_id)[2])
            super().put(item, sender, cost)

    async def main():
        nonlocal node, asker
        config = NodeConfig()
        inbox = NotingInbox(config.inbox_limit, config.inbox_bytes, config.inbox_share)
        ctx = zmq.Context()
        async with Node(config=config, inbox=inbox) as node:
            storer = Attacker(ctx, node)
            asker = Identity.generate()
            asking = curve_dealer(ctx, node.contact, key=asker, routing_id=dealer_routing_id(asker.public_key))
            await asyncio.sleep(0.3)  # handshakes
            body = msgpack.packb("x" * 100)
            for _ in range(10):
                storer.send(body)
            asking.send(Envelope(os.urandom(16), asker.node_id, PEERS, None, dst=node.node_id, seq=1, ep=7).encode())
            time.sleep(0.5)  # holds the node's loop: both peers' frames wait in libzmq, to be read in one batch
            for _ in range(100):
                if asking.poll(0) and len(inbox.written_to_asker) == 10:
                    break
                await asyncio.sleep(0.1)
            assert asking.poll(0), "the request was not answered"
            assert inbox.written_to_asker == [1] * 10, inbox.written_to_asker
            storer.sock.close()
            asking.close()
        ctx.term()

    node = asker = None
    arun(main(), timeout=60)


def test_the_application_takes_an_honest_peers_message_before_a_flooders_backlog(arun):
    # The inbox hands out one sender's message after the other's: a flooder's thousands waiting
    # there do not stand between the application and an honest peer's message.
    async def main():
        ctx = zmq.Context()
        async with Node() as node:
            flooder = Attacker(ctx, node)
            await asyncio.sleep(0.3)  # handshake
            body = msgpack.packb("x" * 100)
            for _ in range(300):
                flooder.send(body)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while node.inbox_size[0] < 300 and loop.time() < deadline:
                await asyncio.sleep(0.05)
            assert node.inbox_size[0] == 300
            async with Node(peers=[node.contact]) as honest:
                await honest.send(node.node_id, "honest")
                await honest.flush(timeout=10)
                first = [await node.receive(timeout=5) for _ in range(2)]
                assert honest.node_id in [m.src for m in first]
                rest = [await node.receive(timeout=5) for _ in range(299)]
                assert [m.src for m in first + rest].count(flooder.ident.node_id) == 300
            flooder.sock.close()
        ctx.term()

    arun(main(), timeout=60)


def test_what_a_peer_that_never_reads_makes_the_node_queue_for_it_stops_at_the_send_mark(arun):
    """libzmq queues frames for a connection up to its send mark, counted in messages, and a peer that
    stops reading decides how many: one that asks and never reads had the replies and their
    retransmissions pile up to 10,000 per connection (bench/hostile.py --shapes ...,ask). The mark is
    now twice the delivery window: frames beyond it are refused, counted (send_hwm), sent again later."""

    async def main():
        config = TransportConfig()
        server = Transport(Identity.generate(), config, on_batch=lambda batch: None, on_publication=lambda t, e: None)
        server.start()
        ctx = zmq.Context()
        try:
            key = Identity.generate()
            # reads nothing: one message of receive queue and a 4 KiB socket buffer, so what we write waits on our side
            sock = curve_dealer(ctx, server.contact(), key=key, routing_id=dealer_routing_id(key.public_key),
                                options={zmq.RCVHWM: 1, zmq.RCVBUF: 4096})
            sock.send(Envelope(id=os.urandom(16), src=key.node_id, dst=server.identity.node_id, type="msg",
                               body=b"hello").encode())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not server.connected(key.node_id) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            assert server.connected(key.node_id)  # answered over its own connection to our inbox
            body = os.urandom(4096)
            sent = 6000  # 24 MiB: what one connection could be made to hold at 10,000, refused past the mark now
            for i in range(sent):
                server.send(Envelope(id=os.urandom(16), src=server.identity.node_id, dst=key.node_id, type="msg",
                                     body=body))
                if i % 256 == 255:
                    await asyncio.sleep(0)  # the loop turn's burst of writes
            await asyncio.sleep(0.3)
            refused = server.drops.get("send_hwm", 0)
            assert refused > 0
            # what libzmq took: the mark, plus what the kernel's socket buffers and libzmq's encoder hold
            # (tcp_wmem's 4 MiB at most: 1,000 of these frames)
            assert sent - refused <= config.hwm + 1000, (sent, refused)
            assert config.hwm <= 2 * DeliveryConfig().window
        finally:
            ctx.destroy(linger=0)
            server.close()

    arun(main(), timeout=60)
