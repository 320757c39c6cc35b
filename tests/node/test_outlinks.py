"""Outgoing links over real CURVE sockets: idle ones close, at most max_dealers stay open, and a
closed one costs nothing but a reconnect (transport/outlinks.py, core/linkpool.py)."""

from __future__ import annotations

import asyncio
import os
import time

from zmqagents.envelope import Envelope
from zmqagents.identity import Identity
from zmqagents.transport.config import TransportConfig
from zmqagents.transport.context import SocketContext
from zmqagents.transport.mesh import Transport

IDLE = 0.4  # s: short, so the tests are quick; every wait below is bounded by a deadline


class Peer:
    def __init__(self, ctx: SocketContext, **cfg):
        self.got: list[Envelope] = []
        self.t = Transport(Identity.generate(), TransportConfig(**cfg), on_batch=self.got.extend,
                           on_publication=lambda topic, env: None, context=ctx)
        self.t.start()
        self.id = self.t.identity.node_id

    def send(self, to: "Peer", body: bytes) -> None:
        self.t.send(Envelope(id=os.urandom(16), src=self.id, dst=to.id, type="msg", body=body))

    def bodies(self) -> list[bytes]:
        return [env.body for env in self.got]


async def until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def peers(n: int, **cfg) -> tuple[SocketContext, list[Peer]]:
    ctx = SocketContext(max_sockets=256)
    return ctx, [Peer(ctx, **cfg) for _ in range(n)]


def close(ctx: SocketContext, ps: list[Peer]) -> None:
    for p in ps:
        p.t.close()
    ctx.close()


def test_an_idle_link_closes_and_both_sides_still_reach_each_other_after(arun):
    async def main():
        ctx, (a, b) = await peers(2, link_idle_timeout=IDLE)
        try:
            a.t.add_contact(b.t.contact())
            b.t.contact_for = lambda node_id: a.t.contact() if node_id == a.id else None
            a.send(b, b"1")
            await until(lambda: b.bodies() == [b"1"])
            b.send(a, b"2")  # back over a's DEALER: b holds a's connection, and no contact of a
            await until(lambda: a.bodies() == [b"2"])
            assert a.t.dealer_count == 1 and b.t.dealer_count == 0
            began = time.monotonic()
            await until(lambda: a.t.dealer_count == 0)
            # closed no sooner than the idle timeout, and not much later (a sweep comes every IDLE/8)
            assert time.monotonic() - began >= IDLE * 0.9
            assert a.t.stats["dealers_idle_closed"] == 1
            await asyncio.sleep(0.1)  # libzmq tears b's end of the connection down
            # b's answer finds a's connection gone, and dials a at the contact its cores know
            b.send(a, b"3")
            await until(lambda: a.bodies() == [b"2", b"3"])
            assert b.t.dealer_count == 1
            # and a answers over b's new connection, opening nothing
            a.send(b, b"4")
            await until(lambda: b.bodies() == [b"1", b"4"])
            assert a.t.stats["dealers_opened"] == 1
            assert not a.t.drops and not b.t.drops
        finally:
            close(ctx, [a, b])

    arun(main())


def test_a_link_closed_while_idle_reopens_on_the_next_send(arun):
    async def main():
        ctx, (a, b) = await peers(2, link_idle_timeout=IDLE)
        try:
            a.t.add_contact(b.t.contact())
            a.send(b, b"1")
            await until(lambda: a.t.stats["dealers_idle_closed"] == 1)
            b.t.forget(a.id)  # b never answers over a's old connection: a's DEALER must carry the next
            a.send(b, b"2")
            await until(lambda: b.bodies() == [b"1", b"2"])
            assert a.t.dealer_count == 1 and a.t.stats["dealers_opened"] == 2
            assert not a.t.drops
        finally:
            close(ctx, [a, b])

    arun(main())


def test_traffic_either_way_keeps_a_link_open(arun):
    """Frames read from a link count as its use: a's DEALER carries only b's messages to a for
    three idle timeouts and stays open; it closes once they stop."""

    async def main():
        ctx, (a, b) = await peers(2, link_idle_timeout=IDLE)
        try:
            a.t.add_contact(b.t.contact())
            a.send(b, b"hello")
            await until(lambda: b.bodies() == [b"hello"])
            sent = 0
            stop = time.monotonic() + 3 * IDLE
            while time.monotonic() < stop:
                b.send(a, b"%d" % sent)
                sent += 1
                await asyncio.sleep(IDLE / 4)
            await until(lambda: len(a.got) == sent)
            assert a.t.dealer_count == 1 and a.t.stats["dealers_idle_closed"] == 0
            assert b.t.dealer_count == 0  # every one of them went over a's connection
            await until(lambda: a.t.dealer_count == 0)
        finally:
            close(ctx, [a, b])

    arun(main())


def test_at_most_max_dealers_stay_open_the_least_recently_used_closed_first(arun):
    async def main():
        ctx, ps = await peers(4, link_idle_timeout=0, max_dealers=2)
        a, b, c, d = ps
        try:
            for p in (b, c, d):
                a.t.add_contact(p.t.contact())
            for p in (b, c):
                a.send(p, b"x")
                await until(lambda p=p: p.bodies() == [b"x"])
            a.send(b, b"y")  # b is now used more recently than c
            await until(lambda: b.bodies() == [b"x", b"y"])
            a.send(d, b"x")
            await until(lambda: d.bodies() == [b"x"])
            assert a.t.dealer_count == 2 and a.t.stats["dealers_evicted"] == 1
            assert a.t.connected(b.id) and a.t.connected(d.id) and c.id not in a.t.dealers
            await asyncio.sleep(2 * IDLE)  # link_idle_timeout 0: nothing closes for idleness
            assert a.t.dealer_count == 2 and a.t.stats["dealers_idle_closed"] == 0
        finally:
            close(ctx, ps)

    arun(main())
