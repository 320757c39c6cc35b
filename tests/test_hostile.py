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

from zmqagents.envelope import Envelope
from zmqagents.identity import Identity, curve_public_of
from zmqagents.node import Node

ANSWER_BOUND = 2.0  # s an honest request may take on a loaded 2-core box


def _attacker(ctx: zmq.Context, target: Node, *, key: Identity, routing_id: bytes) -> zmq.Socket:
    """A DEALER that authenticates with ``key`` and claims ``routing_id`` on ``target``'s inbox."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_secretkey = key.curve_secret
    sock.curve_publickey = key.curve_public
    sock.curve_serverkey = curve_public_of(target.identity.public_key)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(target.transport.endpoint)
    return sock


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
            sock = _attacker(ctx, server, key=mallory, routing_id=_claims(victim.identity)[claim])
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
