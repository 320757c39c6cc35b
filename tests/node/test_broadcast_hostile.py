"""A hostile broadcast peer over real links (CURVE, tcp loopback): protocols/broadcast.md 7 end to end.

Mallory holds a key of her own, connects a raw DEALER to one member's inbox (the victim) and speaks
the broadcast envelopes written from the spec alone: forged and replayed messages, oversize and
over-rate publications, announcements of ids never sent, grafts for ids not held, graft and prune
storms. Each is refused, bounded and counted by the victim, and an honest publisher's stream still
reaches every subscriber (the victim included) exactly once and in full. The sans-IO rules behind
each refusal are tested one by one in tests/core/test_broadcast.py; this is the same over sockets,
through the transport, the node's loop and its queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import zmq

from zmqagents.core.broadcast_wire import GRAFT, IHAVE, MSG, PRUNE, make_message, message_id
from zmqagents.envelope import Envelope
from zmqagents.identity import Identity
from zmqagents.transport.binding import dealer_routing_id

from helpers.peers import curve_dealer
from helpers.realmesh import close_mesh, start_mesh

TOPIC = "news"
BOUND = 15.0  # seconds any effect of Mallory's input may take to show


class Mallory:
    """A raw DEALER into ``victim``'s inbox, authenticated as her own key; counts what comes back."""

    def __init__(self, ctx: zmq.Context, victim):
        self.key = Identity.generate()
        self.victim = victim
        self.sock = curve_dealer(ctx, victim.contact, key=self.key, routing_id=dealer_routing_id(self.key.public_key))
        self.got: dict[str, int] = {}
        self.epoch = int(time.time() * 1000)

    def send(self, typ: str, body) -> None:
        self.sock.send(Envelope(id=os.urandom(16), src=self.key.node_id, dst=self.victim.node_id, type=typ,
                                body=body).encode(max_size=1 << 20))

    def publish(self, seq: int, data, *, topic: str = TOPIC, epoch: int | None = None) -> dict:
        """A message she really signed (as its origin), sent to the victim; its wire form."""
        wire = make_message(self.key, self.epoch if epoch is None else epoch, seq, topic, data).to_wire()
        self.send(MSG, {"m": wire, "h": 1})
        return wire

    def drain(self) -> dict[str, int]:
        """Count the frames the victim sent back (by envelope type)."""
        while self.sock.poll(0):
            frame = self.sock.recv()
            typ = msgpack.unpackb(frame[4:], raw=False).get("t")
            self.got[typ] = self.got.get(typ, 0) + 1
        return self.got


async def _until(check, seconds: float = BOUND) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _honest_stream_arrives(publisher, streams: list, count: int) -> None:
    """``publisher`` publishes ``count`` on TOPIC; every stream gets each exactly once (deliveries are not
    ordered: a repaired one may come after its successors, protocols/broadcast.md 5)."""
    first = (await publisher.publish(TOPIC, {"i": 0}))
    for i in range(1, count):
        await publisher.publish(TOPIC, {"i": i})
        await asyncio.sleep(0.01)
    for stream in streams:
        got = []
        while len(got) < count:
            m = await asyncio.wait_for(stream.__anext__(), BOUND)
            if m.src == publisher.node_id:
                got.append((m.seq, m.body["i"]))
        assert sorted(got) == [(first + i, i) for i in range(count)]


@contextlib.asynccontextmanager
async def _attacked_mesh() -> AsyncIterator[tuple[Any, Any, Any, Mallory]]:
    """A 4-node mesh (seed, publisher, victim, another subscriber) and Mallory linked to the victim."""
    nodes = await start_mesh(4)
    ctx = zmq.Context()
    try:
        _seed, publisher, victim, other = nodes
        yield publisher, victim, other, Mallory(ctx, victim)
    finally:
        ctx.destroy(linger=0)
        await close_mesh(nodes)


def test_forged_replayed_oversize_and_over_rate_publications_are_refused_and_honest_delivery_goes_on(arun):
    async def main():
        async with _attacked_mesh() as (publisher, victim, other, mallory):
            streams = [victim.subscribe(TOPIC), other.subscribe(TOPIC)]
            core = victim.core.broadcast
            st = core.stats
            pub_key, pub_epoch = publisher.identity.public_key, publisher.core.broadcast.epoch

            # A forged message in the publisher's name, carrying the id of its next genuine one.
            forged = {"o": pub_key, "e": pub_epoch, "s": 1, "t": TOPIC, "d": "forged", "sig": os.urandom(64)}
            mallory.send(MSG, {"m": forged, "h": 1})
            await _until(lambda: st["bad_signature"] == 1)
            # ... it left no trace: the genuine seq 1 is delivered to the victim and the other subscriber.
            await _honest_stream_arrives(publisher, streams, 1)

            # Her own message, then its replay, a re-sequenced copy (same signature) and an older epoch.
            delivered = st["delivered"]
            wire = mallory.publish(1, "m1")
            await _until(lambda: st["delivered"] == delivered + 1)
            mallory.send(MSG, {"m": wire, "h": 1})
            mallory.send(MSG, {"m": {**wire, "s": 2}, "h": 1})
            mallory.publish(7, "old epoch", epoch=mallory.epoch - 1)
            await _until(lambda: st["duplicates"] >= 1 and st["bad_signature"] == 2 and st["stale"] == 1)
            await _until(lambda: mallory.drain().get(PRUNE, 0) >= 1)  # the duplicate was answered with a prune
            mine = []
            while len(mine) < 1:
                m = await asyncio.wait_for(streams[0].__anext__(), BOUND)
                if m.src == mallory.key.node_id:
                    mine.append(m.body)
            assert mine == ["m1"]  # once, however often it came

            # Oversize: 70,000 bytes of data (the limit is 65,536 signed bytes; the transport would take 1 MiB).
            mallory.publish(2, bytes(70_000))
            await _until(lambda: st["oversize"] == 1)

            # Over-rate: 600 of her messages at once, on a topic nobody reads (the victim forwards what it accepts).
            prunes, t0 = st["prunes_received"], time.monotonic()
            for seq in range(10, 610):
                mallory.publish(seq, seq, topic="flood")
            mallory.send(PRUNE, None)  # her link is read in order: once this is counted, all 600 were judged
            await _until(lambda: st["prunes_received"] > prunes)
            took = time.monotonic() - t0
            accepted = 600 - st["over_rate"]
            cfg = core.config
            assert st["over_rate"] >= 600 - (cfg.origin_burst + cfg.origin_rate * took)  # her bucket was not empty
            assert accepted <= cfg.origin_burst + cfg.origin_rate * took

            # None of it reached the other subscriber's application, and the honest stream goes on in full.
            await _honest_stream_arrives(publisher, streams, 20)
            assert other.core.broadcast.stats["bad_signature"] == 0  # refused where it came in, not forwarded
            assert victim.stats["broadcast_dropped"] == 0

    arun(main(), timeout=90)


def test_announcement_floods_unknown_grafts_and_graft_prune_storms_are_bounded_and_honest_delivery_goes_on(arun):
    async def main():
        async with _attacked_mesh() as (publisher, victim, other, mallory):
            streams = [victim.subscribe(TOPIC), other.subscribe(TOPIC)]
            core = victim.core.broadcast
            st = core.stats
            cfg = core.config

            # 20 announcements of 256 ids each, none of which she ever sends: at most max_ihave_queue (1,024)
            # wait for a graft, the rest are counted full; each one waited for is grafted from her, then given up.
            for _ in range(20):
                mallory.send(IHAVE, {"i": [[os.urandom(16), 1] for _ in range(256)]})
            await _until(lambda: st["ihave_received"] == 20 * 256)
            waited = 20 * 256 - st["missing_full"]
            assert 0 < waited <= cfg.max_ihave_queue and core.state_size()["missing"] <= cfg.max_ihave_queue
            await _until(lambda: st["graft_gave_up"] == waited and core.state_size()["missing"] == 0)
            grafts = mallory.drain().get(GRAFT, 0)
            assert 1 <= grafts <= 20  # ids due at once share a graft: at most one per announcement that opened some

            # Grafts for ids the victim never held: counted, nothing sent back.
            before = dict(mallory.drain())
            for _ in range(10):
                mallory.send(GRAFT, {"i": [os.urandom(16) for _ in range(256)]})
            await _until(lambda: st["graft_unknown"] == 2560)
            await asyncio.sleep(0.2)
            assert mallory.drain().get(MSG, 0) == before.get(MSG, 0)

            # A graft storm for 30 ids the victim does hold: answered at most graft_burst + graft_rate per s.
            delivered = st["delivered"]
            first = await publisher.publish(TOPIC, {"i": -1})
            for i in range(29):
                await publisher.publish(TOPIC, {"i": -1})
            pub_key, pub_epoch = publisher.identity.public_key, publisher.core.broadcast.epoch
            held = [message_id(pub_key, pub_epoch, first + i, TOPIC) for i in range(30)]
            await _until(lambda: st["delivered"] == delivered + 30)  # accepted, so in its repair cache
            answered0, t0 = st["graft_answered"], time.monotonic()
            for _ in range(100):
                mallory.send(GRAFT, {"i": held})
            await _until(lambda: st["graft_answered"] - answered0 + st["graft_over_rate"] >= 3000)
            took = time.monotonic() - t0
            answered = st["graft_answered"] - answered0
            assert st["graft_over_rate"] > 0 and answered <= cfg.graft_burst + cfg.graft_rate * took

            # PRUNE and empty-GRAFT storms: each only moves her link between lazy and eager.
            neighbours = core.state_size()["neighbours"]
            for _ in range(500):
                mallory.send(PRUNE, None)
                mallory.send(GRAFT, {"i": []})
            await _until(lambda: st["prunes_received"] >= 500 and st["grafts_received"] >= 100 + 10 + 500)
            assert core.state_size()["neighbours"] == neighbours

            # Drop what the 30 publications above left in the streams, then an honest stream arrives in full.
            for stream in streams:
                for _ in range(30):
                    assert (await asyncio.wait_for(stream.__anext__(), BOUND)).body == {"i": -1}
            await _honest_stream_arrives(publisher, streams, 20)

    arun(main(), timeout=120)
