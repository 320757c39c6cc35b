"""Hostile peers against a real node, over real CURVE sockets on loopback.

Each attacker is a hand-made ZeroMQ client written from ``protocols/`` alone: it authenticates
with its own key (CURVE makes anything else impossible) and then lies about everything it
chooses itself: its routing id, its envelopes, their sizes, its handshake. Every test checks that
the node survives, counts what it refused, and keeps serving an honest peer.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import zmq

from zmqagents.envelope import Envelope, decode
from zmqagents.identity import Contact, Identity
from zmqagents.node import Node

from helpers.peers import curve_dealer

ANSWER_BOUND = 2.0  # s an honest request may take on a loaded 2-core box


async def _frames_for(sock: zmq.Socket, seconds: float) -> list[bytes]:
    """Everything ``sock`` receives within ``seconds`` (polled, so the loop keeps running)."""
    got: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        try:
            got.append(sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            await asyncio.sleep(0.02)
    return got


def _claims(victim: Identity) -> list[bytes]:
    """Routing ids an attacker who knows the victim's public key can claim: the key alone (what
    nodes used before), and the key followed by a guess of the 16 bytes only the victim knows."""
    return [victim.public_key, victim.public_key + bytes(16)]


@pytest.mark.parametrize("when", ["before", "during", "after"])
@pytest.mark.parametrize("claim", [0, 1], ids=["key", "key+guess"])
def test_a_peer_claiming_anothers_routing_id_gets_nothing_and_the_victim_keeps_working(arun, when, claim):
    """The attacker holds its own CURVE key and claims the victim's routing id, before, during and
    after the victim's traffic. It must receive nothing meant for the victim (replies, acks, messages
    the server starts), and the victim's requests must be answered during and after the attack."""

    async def main():
        server, victim = Node(), Node()
        await server.start()
        await victim.start()
        release = asyncio.Event()

        async def handler(body, msg):
            if body == "slow":
                await release.wait()  # the reply is sent while the attacker is connected
            return {"echo": body}

        server.on_request(handler)
        victim.on_request(lambda body, msg: "victim here")
        ctx = zmq.Context()
        mallory = Identity.generate()
        attackers: list[zmq.Socket] = []

        def attack() -> zmq.Socket:
            sock = curve_dealer(ctx, server.contact, key=mallory, routing_id=_claims(victim.identity)[claim])
            attackers.append(sock)
            return sock

        try:
            if when == "before":
                attack()
                await asyncio.sleep(0.3)  # connected and handed the routing id, if it could be
            assert await victim.request(server.contact, "hi", timeout=ANSWER_BOUND) == {"echo": "hi"}
            if when == "during":
                slow = asyncio.ensure_future(victim.request(server.contact, "slow", timeout=3 * ANSWER_BOUND))
                await asyncio.sleep(0.2)
                attack()
                await asyncio.sleep(0.3)
                release.set()
                assert await slow == {"echo": "slow"}
            if when == "after":
                attack()
                await asyncio.sleep(0.3)
            release.set()
            # While the attacker is connected: the victim is answered, and the server can reach it.
            assert await victim.request(server.contact, "again", timeout=ANSWER_BOUND) == {"echo": "again"}
            assert await server.request(victim.node_id, "you?", timeout=ANSWER_BOUND) == "victim here"
            # The attacker also speaks, as the victim and as itself: both refused and counted.
            for src in (victim.node_id, mallory.node_id):
                attackers[0].send(Envelope(id=os.urandom(16), src=src, dst=server.node_id, type="req",
                                           body="forged").encode())
            assert await _frames_for(attackers[0], 0.5) == []
            assert server.transport.drops.get("identity_mismatch") == 2
            # After the attacker leaves, the victim's connection still works.
            attackers[0].close(linger=0)
            await asyncio.sleep(0.2)
            assert await victim.request(server.contact, "after", timeout=ANSWER_BOUND) == {"echo": "after"}
            assert await server.request(victim.node_id, "still?", timeout=ANSWER_BOUND) == "victim here"
        finally:
            ctx.destroy(linger=0)
            await victim.close()
            await server.close()

    arun(main(), timeout=30)


def _dropped(node: Node) -> dict[tuple[str, str], float]:
    """``zmqagents_dropped_messages_total`` as the admin endpoint exports it: {(layer, reason): value}."""
    from zmqagents.sidecar.admin import NodeCollector

    for family in NodeCollector(node, lambda: [], {}).collect():
        if family.name == "zmqagents_dropped_messages":
            return {(labels["layer"], labels["reason"]): value for name, labels, value in family.samples
                    if name.endswith("_total")}
    raise AssertionError("no zmqagents_dropped_messages family")


async def _until(check, seconds: float = ANSWER_BOUND) -> None:
    """Wait (bounded) until ``check()`` holds; monitor events arrive asynchronously."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_refused_links_are_counted_and_exported_and_the_node_keeps_serving(arun):
    """Plaintext, a CURVE handshake with the wrong server key, bytes that are not ZMTP, a link dropped
    mid-handshake: libzmq refuses each before a message exists. Each is counted from the socket
    monitor, exported under zmqagents_dropped_messages_total, and an honest peer is still answered."""
    import socket

    async def main():
        server, honest = Node(), Node()
        await server.start()
        await honest.start()
        server.on_request(lambda body, msg: body)
        host, port = server.transport.endpoint[len("tcp://"):].rsplit(":", 1)
        ctx = zmq.Context()
        try:
            # A plaintext (NULL mechanism) ZMTP 3.0 greeting, written by hand and left open: libzmq's own
            # NULL client closes as soon as it reads our CURVE greeting, sometimes before ours has read its
            # mechanism (then it is a handshake_aborted instead).
            plain = socket.create_connection((host, int(port)))
            plain.sendall(b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31))
            stranger = Identity.generate()
            wrong_key = ctx.socket(zmq.DEALER)
            wrong_key.linger = 0
            wrong_key.curve_secretkey, wrong_key.curve_publickey = stranger.curve_secret, stranger.curve_public
            wrong_key.curve_serverkey = stranger.curve_public  # not the server's key
            wrong_key.connect(server.transport.endpoint)
            try:  # never a blocking send: libzmq may drop the pipe of the failed handshake first
                wrong_key.send(b"hello?", zmq.NOBLOCK)
            except zmq.Again:
                pass
            drops = server.transport.drops
            await _until(lambda: drops.get("plaintext", 0) >= 1 and drops.get("handshake_failed", 0) >= 1)
            plain.close()
            wrong_key.close(linger=0)
            accepted = server.transport.stats["links_accepted"]
            closed = server.transport.stats["links_closed"]
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not ZMTP: libzmq closes it
                await _until(lambda: server.transport.stats["links_closed"] > closed)
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(b"\xff" + bytes(8) + b"\x7f\x03")  # half a ZMTP greeting, then gone
            await _until(lambda: drops.get("handshake_aborted", 0) >= 1)
            assert server.transport.stats["links_accepted"] >= accepted + 2
            exported = _dropped(server)
            for reason in ("plaintext", "handshake_failed", "handshake_aborted"):
                assert exported[("transport", reason)] == drops[reason] >= 1, reason
            assert await honest.request(server.contact, "still there?", timeout=ANSWER_BOUND) == "still there?"
        finally:
            ctx.destroy(linger=0)
            await honest.close()
            await server.close()

    arun(main(), timeout=30)


def test_oversize_frames_are_refused_and_the_honest_peer_keeps_working(arun):
    """A frame just over the envelope limit reaches the decoder (OversizeEnvelope); one far over libzmq's
    ZMQ_MAXMSGSIZE makes libzmq cut the link (only visible as a closed link). The attacker's DEALER
    reconnects; the node stays up and answers an honest peer."""
    from zmqagents.node import NodeConfig
    from zmqagents.transport.binding import dealer_routing_id

    async def main():
        config = NodeConfig()
        config.transport.max_message_size = 64 * 1024
        server, honest = Node(config=config), Node()
        await server.start()
        await honest.start()
        server.on_request(lambda body, msg: body)
        mallory = Identity.generate()
        ctx = zmq.Context()
        try:
            sock = curve_dealer(ctx, server.contact, key=mallory, routing_id=dealer_routing_id(mallory.public_key))
            def envelope(body_size: int) -> bytes:
                return Envelope(id=os.urandom(16), src=mallory.node_id, dst=server.node_id, type="msg",
                                body=bytes(body_size)).encode(max_size=1 << 20)

            limit = config.transport.max_message_size
            # 30 bytes over the envelope limit: under libzmq's (limit + 4 + 64), so the decoder sees it.
            sock.send(envelope(limit + 30 - (len(envelope(limit)) - 4 - limit)))
            drops = server.transport.drops
            await _until(lambda: drops.get("OversizeEnvelope", 0) == 1)
            assert server.transport.stats["links_closed"] == 0
            sock.send(bytes(1 << 20))  # 1 MiB: libzmq cuts the link on the frame header
            await _until(lambda: server.transport.stats["links_closed"] >= 1)
            assert await honest.request(server.contact, "fine?", timeout=ANSWER_BOUND) == "fine?"
            # The attacker's DEALER reconnects by itself; its next valid envelope passes the transport.
            frames, refused = server.transport.stats["frames_in"], dict(drops)
            sock.send(envelope(10))
            await _until(lambda: server.transport.stats["frames_in"] > frames)
            assert drops == refused
        finally:
            ctx.destroy(linger=0)
            await honest.close()
            await server.close()

    arun(main(), timeout=30)


def test_an_epoch_outside_63_bits_is_refused_and_not_acked(arun):
    """protocols/delivery.md 3: an epoch is 0 <= ep < 2^63. A reliable message with ep 2^63 or 2^64 - 1 is
    malformed: dropped before delivery (not acked, not delivered), counted, and the same peer's next
    message with a valid epoch is delivered and acked."""
    import msgpack

    from zmqagents.transport.binding import dealer_routing_id

    async def main():
        server = Node()
        await server.start()
        mallory = Identity.generate()
        ctx = zmq.Context()
        try:
            sock = curve_dealer(ctx, server.contact, key=mallory, routing_id=dealer_routing_id(mallory.public_key))

            def frame(ep: int, body: str) -> bytes:  # packed by hand: our encoder refuses such an epoch
                payload = msgpack.packb({"v": 1, "id": os.urandom(16), "src": mallory.node_id, "t": "msg",
                                         "dst": server.node_id, "b": body, "seq": 1, "ep": ep}, use_bin_type=True)
                return len(payload).to_bytes(4, "big") + payload

            sock.send(frame(2**63, "too big"))
            sock.send(frame(2**64 - 1, "far too big"))
            await _until(lambda: server.transport.drops.get("MalformedEnvelope", 0) == 2)
            assert await _frames_for(sock, 0.3) == []  # no ack for what was refused
            sock.send(frame(2**63 - 1, "fine"))
            assert (await server.receive(timeout=ANSWER_BOUND)).body == "fine"
            answers = [decode(f) for f in await _frames_for(sock, 0.5)]
            assert any(a.type == "ack" or a.ack for a in answers), "the valid message was not acked"
            assert _dropped(server)[("transport", "MalformedEnvelope")] == 2
        finally:
            ctx.destroy(linger=0)
            await server.close()

    arun(main(), timeout=30)


def _libzmq_counter_starts(count: int) -> list[int]:
    """The first ``count`` values libzmq 4.3.5's ``generate_random()`` gives when nobody seeded the C
    library's ``rand()`` (libzmq defines ``seed_random()`` but never calls it): glibc's default seed is 1.
    Each ROUTER (and REP, built on it) starts its counter of assigned routing ids at one of them."""
    import subprocess
    import sys

    script = ("import ctypes; c = ctypes.CDLL(None); c.srand(1); "
              f"print([c.rand() for _ in range({2 * count})])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    r = [int(x) for x in out.stdout.strip()[1:-1].split(",")]
    return [((r[2 * i + 1] << 31) | r[2 * i]) & 0xFFFFFFFF for i in range(count)]


def test_a_routing_id_squatting_libzmqs_next_assigned_id_cannot_crash_a_node(arun):
    """libzmq 4.3.5 gives a peer that sends no routing id the next value of a counter (a zero byte and 4
    counter bytes), without checking that no peer chose that id itself; if one did, libzmq aborts the
    process (zmq_assert in add_out_pipe). Unseeded, the counter starts where it starts in every process,
    so two connections could crash any node. The transport seeds it from the OS; here the attacker squats
    the ids of the unseeded start, then connects without a routing id, and the node process survives."""
    import struct

    from helpers.nodeproc import NodeProc

    async def main():
        node = NodeProc()
        honest = Node()
        ctx = zmq.Context()
        try:
            await honest.start()
            target = node.hello["contact"]
            mallory = Identity.generate()
            at = Contact.parse(target)
            squats = [curve_dealer(ctx, at, key=mallory, routing_id=b"\x00" + struct.pack(">I", (start + k) & 0xFFFFFFFF))
                      for start in _libzmq_counter_starts(8) for k in range(3)]
            await asyncio.sleep(1.5)  # every squatter handshaken
            plain = [curve_dealer(ctx, at, key=mallory, routing_id=None)  # libzmq assigns the next counter value
                     for _ in range(3)]
            for sock in plain:
                sock.send(b"no routing id")
            await asyncio.sleep(1.5)
            assert node.proc.poll() is None, f"the node died: {node.proc.stderr.read().decode()[-500:]}"
            assert await honest.request(target, "alive?", timeout=ANSWER_BOUND) == {"echo": "alive?"}
            assert len(squats) == 24 and len(plain) == 3  # all kept open until now
        finally:
            ctx.destroy(linger=0)
            await honest.close()
            node.stop()

    arun(main(), timeout=40)


class _Rebinder:
    """A TCP relay between a DEALER and a node's inbox that can forget the DEALER's side, as a NAT that
    drops its mapping does: the DEALER sees its connection reset and reconnects (through the relay,
    over a new upstream connection), while the node's end of the old connection stays open."""

    def __init__(self, upstream: str):
        self.host, port = upstream[len("tcp://"):].rsplit(":", 1)
        self.port = int(port)
        self.server: asyncio.base_events.Server | None = None
        self.clients: list[asyncio.StreamWriter] = []
        self.stale: list[asyncio.StreamWriter] = []  # upstream writers kept open, never closed

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.clients.append(writer)
        self.stale.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def forget_clients(self) -> None:
        """Reset the DEALER's side of every connection; leave the node's side open and silent."""
        for writer in self.clients:
            writer.transport.abort()
        self.clients.clear()

    async def close(self) -> None:
        for writer in self.clients + self.stale:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()


def test_a_dealer_that_reconnects_over_a_stale_connection_is_answered_at_once(arun):
    """Why the inbox keeps ROUTER_HANDOVER on: a DEALER whose path lost its state (a NAT mapping) reconnects
    with its own routing id while the node still holds the old, half-open connection. Handover gives the id
    to the new connection at once; without it libzmq would ignore the new connection (a duplicate id) until
    TCP gave up on the old one, and the peer would go unanswered. Only the DEALER that drew the id's random
    bytes can present it again, so handover gives an attacker nothing (the tests above)."""

    async def main():
        server, peer = Node(), Node()
        await server.start()
        await peer.start()
        server.on_request(lambda body, msg: body)
        rebinder = _Rebinder(server.transport.endpoint)
        try:
            via = Contact.parse(f"{str(server.contact).split('@', 1)[0]}@{await rebinder.start()}")
            assert await peer.request(via, "first", timeout=ANSWER_BOUND) == "first"
            rebinder.forget_clients()
            await asyncio.sleep(0.3)  # the DEALER notices and reconnects (reconnect_ivl 100 ms)
            assert len(rebinder.stale) == 2  # a second upstream connection, the first still open
            for i in range(3):
                assert await peer.request(via, f"after {i}", timeout=ANSWER_BOUND) == f"after {i}"
            assert server.transport.drops.get("bad_routing_id") is None
        finally:
            await rebinder.close()
            await peer.close()
            await server.close()

    arun(main(), timeout=30)
