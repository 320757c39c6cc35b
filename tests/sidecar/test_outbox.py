"""The outbox service in-process: real Nodes on loopback, a real spool on disk."""

from __future__ import annotations

import asyncio
import os
import socket

from zmqagents.core.delivery import DeliveryConfig
from zmqagents.envelope import Envelope
from zmqagents.identity import Contact, Identity
from zmqagents.node import Node, NodeConfig
from zmqagents.sidecar.outbox import Outbox
from zmqagents.sidecar.spool import Spool, SpoolConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fast() -> NodeConfig:
    return NodeConfig(delivery=DeliveryConfig(rto_initial=0.05, rto_max=0.2, max_retries=3))


async def drain(node: Node, n: int, timeout: float = 10) -> list:
    return [await node.receive(timeout=timeout) for _ in range(n)]


async def settle(outbox: Outbox, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while outbox.status()["queued"] and loop.time() < end:
        await asyncio.sleep(0.02)


def test_messages_accepted_while_the_peer_is_down_survive_a_restart_and_arrive_once(arun, tmp_path):
    async def main():
        me, peer_id = Identity.generate(), Identity.generate()
        port = free_port()
        contact = Contact(peer_id.public_key, f"tcp://127.0.0.1:{port}")
        spool = SpoolConfig(str(tmp_path / "spool"), fsync="batch")
        async with Node(me, config=fast()) as node:
            outbox = Outbox(node, spool, retry_delay=0.1, retry_max=0.3)
            await outbox.start()
            ids = [os.urandom(16) for _ in range(300)]
            assert outbox.accept([(contact.node_id, contact, {"n": i}, mid) for i, mid in enumerate(ids)]) \
                == [None] * 300
            end = asyncio.get_running_loop().time() + 15
            while not outbox.status()["inflight"] and asyncio.get_running_loop().time() < end:
                await asyncio.sleep(0)  # the outbox feeds the node on the next loop turn
            first_window = outbox.status()["inflight"]
            assert first_window > 1
            # The peer is down: the first window's messages fail (after the delivery core's retries, so
            # wait for it by event, not by a fixed sleep that a loaded box outruns), back off, stay spooled.
            while outbox.status()["send_failures"] < first_window and asyncio.get_running_loop().time() < end:
                await asyncio.sleep(0.02)
            assert outbox.status()["send_failures"] >= first_window
            for _ in range(10):  # from then on, one message at a time probes the peer
                status = outbox.status()
                assert status["queued"] == 300 and status["inflight"] <= 1
                await asyncio.sleep(0.05)
            await outbox.close(0)
        async with Node(peer_id, listen=f"tcp://127.0.0.1:{port}") as peer:
            async with Node(me, config=fast()) as node:  # the sidecar restarted
                outbox = Outbox(node, spool, retry_delay=0.1, retry_max=0.3)
                await outbox.start()
                got = await drain(peer, 300)
                assert [m.body["n"] for m in got] == list(range(300))
                assert [m.id for m in got] == ids
                await settle(outbox)
                assert outbox.status()["queued"] == 0 and outbox.status()["delivered"] == 300
                await asyncio.sleep(0.3)
                assert peer._inbox.qsize() == 0  # nothing twice
                await outbox.close(1)
        assert not list((tmp_path / "spool").glob("*.seg")) or Spool(spool).undone_count == 0

    arun(main(), timeout=40)


def test_messages_delivered_before_a_crash_but_not_marked_done_are_not_delivered_again(arun, tmp_path):
    """The crash window: the destination got the messages, the acknowledgements never made it
    to the spool. On restart they are re-sent under their ids and the receiver drops them."""
    async def main():
        me = Identity.generate()
        spool_cfg = SpoolConfig(str(tmp_path / "spool"), fsync="never")
        async with Node() as peer:
            ids = [os.urandom(16) for _ in range(100)]
            async with Node(me, peers=[peer.contact]) as node:
                for i, mid in enumerate(ids[:60]):  # these 60 reached the peer before the "crash"
                    await node.send(peer.node_id, {"n": i}, msg_id=mid)
                await node.flush(timeout=5)
            spool = Spool(spool_cfg, node_id=me.node_id)  # ...but all 100 were still in the spool
            spool.append([Envelope(mid, me.node_id, "msg", {"n": i}, peer.node_id, extra={"to": str(peer.contact)})
                          for i, mid in enumerate(ids)])
            spool.close()
            assert [m.body["n"] for m in await drain(peer, 60)] == list(range(60))
            async with Node(me) as node:
                outbox = Outbox(node, spool_cfg)
                await outbox.start()
                got = await drain(peer, 40)
                assert [m.body["n"] for m in got] == list(range(60, 100))
                await settle(outbox)
                assert outbox.status()["delivered"] == 100  # the 60 duplicates were acknowledged too
                await asyncio.sleep(0.3)
                assert peer._inbox.qsize() == 0
                assert peer.delivery.stats["duplicates"] >= 60
                await outbox.close(0)

    arun(main(), timeout=30)


def test_a_client_resending_the_same_id_gets_it_delivered_once(arun, tmp_path):
    async def main():
        async with Node() as peer:
            async with Node(config=fast()) as node:
                outbox = Outbox(node, SpoolConfig(str(tmp_path / "spool")))
                await outbox.start()
                mid = os.urandom(16)
                outbox.accept([(peer.node_id, peer.contact, "once", mid)])
                outbox.accept([(peer.node_id, peer.contact, "once", mid)])  # no answer came: the client retried
                outbox.accept([(peer.node_id, peer.contact, "next", os.urandom(16))])
                got = await drain(peer, 2)
                assert [m.body for m in got] == ["once", "next"]
                await settle(outbox)
                assert outbox.status()["queued"] == 0
                await asyncio.sleep(0.3)
                assert peer._inbox.qsize() == 0
                await outbox.close(0)

    arun(main())


def test_a_burst_that_does_not_fit_accepts_what_fits_and_says_which(arun, tmp_path):
    async def main():
        nobody = Identity.generate()
        async with Node(config=fast()) as node:
            outbox = Outbox(node, SpoolConfig(str(tmp_path / "spool"), max_bytes=2 * (64 << 10)))
            await outbox.start()
            burst = [(nobody.node_id, None, "x" * 1000, os.urandom(16)) for _ in range(200)]
            burst.insert(3, (nobody.node_id, None, {1: "int keys cannot be spooled"}, os.urandom(16)))
            results = outbox.accept(burst)
            kinds = [type(r).__name__ for r in results]
            assert kinds[:3] == ["NoneType"] * 3 and kinds[3] == "MalformedEnvelope"
            assert "SpoolFull" in kinds and kinds.count("NoneType") == outbox.status()["queued"]
            assert outbox.stats["refused"] == len(burst) - outbox.status()["queued"]
            await outbox.close(0)

    arun(main())


def test_a_destination_named_by_id_alone_waits_until_reachable_and_its_contact_is_kept(arun, tmp_path):
    """A node id with no known contact waits (counted) until the peer is reachable; once the
    contact is known it is stored with each record, so a restarted sidecar still reaches it."""
    async def main():
        me = Identity.generate()
        spool = SpoolConfig(str(tmp_path / "spool"))
        # A fixed endpoint, as a sidecar's config gives it: `far` answers a restarted node at the
        # address it last knew (a restart on another port is not noticed until membership says so).
        listen = f"tcp://127.0.0.1:{free_port()}"
        async with Node() as far:
            async with Node(me, listen=listen, config=fast()) as node:
                outbox = Outbox(node, spool, retry_delay=0.1, retry_max=0.2)
                await outbox.start()
                assert outbox.accept([(far.node_id, None, "first", os.urandom(16))]) == [None]
                await asyncio.sleep(0.3)
                assert outbox.stats["unknown_destination"] >= 1 and outbox.status()["queued"] == 1
                await far.send(node.contact, "hello")  # now it is reachable (over its own connection)
                assert (await far.receive(timeout=10)).body == "first"
                await settle(outbox)
                node.transport.add_contact(far.contact)  # e.g. learnt from the routing table
                outbox.accept([(far.node_id, None, "after restart", os.urandom(16))])
                await outbox.close(0)  # nothing more is sent: the sidecar "dies" here
            async with Node(me, listen=listen, config=fast()) as node:  # fresh: no contacts, no mesh
                outbox = Outbox(node, spool)
                await outbox.start()
                assert (await far.receive(timeout=10)).body == "after restart"
                await settle(outbox)
                assert outbox.status()["queued"] == 0
                await outbox.close(0)
            await asyncio.sleep(0.2)
            assert far._inbox.qsize() == 0

    arun(main(), timeout=40)


def test_a_record_damaged_on_disk_after_it_was_accepted_is_dropped_loudly_and_the_rest_flows(arun, tmp_path, caplog):
    async def main():
        peer_id = Identity.generate()
        port = free_port()
        contact = Contact(peer_id.public_key, f"tcp://127.0.0.1:{port}")
        async with Node(config=fast()) as node:
            outbox = Outbox(node, SpoolConfig(str(tmp_path / "spool")), retry_delay=0.1, retry_max=0.2)
            await outbox.start()
            outbox.accept([(contact.node_id, contact, {"n": i}, os.urandom(16)) for i in range(5)])
            await asyncio.sleep(0.6)  # the peer is down: one probe in flight, the rest wait on disk
            (segment,) = (tmp_path / "spool").glob("*.seg")
            data = bytearray(segment.read_bytes())
            data[-20] ^= 0xFF  # a bad sector under the last record
            segment.write_bytes(bytes(data))
            async with Node(peer_id, listen=f"tcp://127.0.0.1:{port}") as peer:
                got = [(await peer.receive(timeout=10)).body["n"] for _ in range(4)]
                assert got == [0, 1, 2, 3]
                await settle(outbox)
                assert outbox.status()["queued"] == 0 and outbox.stats["unreadable"] == 1
            await outbox.close(0)
        assert "that message is dropped" in caplog.text

    arun(main(), timeout=30)
