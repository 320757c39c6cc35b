"""Many Nodes on one ZeroMQ context (transport/context.py): one I/O thread and one ZAP handler for all."""

from __future__ import annotations

import asyncio
import os

import pytest
import zmq

from zmqagents.errors import InvalidArgument
from zmqagents.identity import Identity
from zmqagents.node import Node, NodeConfig, RequestTimeout
from zmqagents.transport.context import SocketContext

from helpers.peers import curve_dealer

pytestmark = pytest.mark.timeout(60)


def _os_threads() -> int:
    """Threads of this process, libzmq's included (Python's threading module sees only its own)."""
    return len(os.listdir("/proc/self/task"))


def test_nodes_sharing_a_context_talk_over_curve_and_keep_one_io_thread(arun):
    async def main():
        threads_before = _os_threads()
        shared = SocketContext(max_sockets=4096)
        nodes = [Node(context=shared, config=NodeConfig(leave_timeout=0)) for _ in range(4)]
        try:
            for n in nodes:
                n.on_request(lambda body, msg: {"echo": body})
                await n.start()
            assert shared.users == 4 and shared.zap is not None
            assert all(n.transport.zap is shared.zap for n in nodes)
            for a in nodes:
                for b in nodes:
                    if a is not b:
                        assert await a.request(b.contact, a.node_id.hex()[:8], timeout=5) == {"echo": a.node_id.hex()[:8]}
            # every connection was authenticated by the one shared ZAP handler
            assert shared.zap.stats["zap_accepted"] >= 6
            assert shared.zap.stats["zap_refused"] == 0
            assert shared.ctx.get(zmq.MAX_SOCKETS) == 4096
            # one context: its I/O thread and its reaper, whatever the number of nodes (a context each: 8)
            assert _os_threads() - threads_before == 2
        finally:
            await asyncio.gather(*(n.close(leave=False) for n in nodes))
        assert shared.users == 0
        shared.close()
        assert shared.ctx.closed

    arun(main())


def test_a_shared_context_still_refuses_plaintext_and_wrong_keys(arun):
    """The shared ZAP handler admits only CURVE; a link that claims another node's key is dropped by
    the node it reaches (binding.py), as with a context of its own."""
    async def main():
        shared = SocketContext()
        a, b = Node(context=shared), Node(context=shared)
        ctx = zmq.Context()
        try:
            await a.start()
            await b.start()
            plain = ctx.socket(zmq.DEALER)
            plain.linger = 0
            plain.connect(a.contact.endpoint)
            # Never a blocking send: libzmq drops the pipe of a link whose handshake failed, and a DEALER
            # with no pipe blocks in send for ever (a 60 s hang in CI). The connection alone shows the
            # refusal: the server reads the NULL greeting whatever we send.
            try:
                plain.send(b"not curve", zmq.NOBLOCK)
            except zmq.Again:
                pass
            mallory, victim = Identity.generate(), Identity.generate()
            forged = curve_dealer(ctx, a.contact, key=mallory, routing_id=victim.public_key + bytes(16))
            forged.send(b"\x00\x00\x00\x01\x80")
            drops = a.transport.drops

            def refused_plaintext() -> int:
                # libzmq's NULL client may close on reading the CURVE greeting before the server read its
                # mechanism: then the refusal shows as an aborted handshake (see tests/node/test_hostile.py)
                return drops.get("plaintext", 0) + drops.get("handshake_aborted", 0)

            for _ in range(100):
                if drops.get("identity_mismatch") and refused_plaintext():
                    break
                await asyncio.sleep(0.05)
            assert drops.get("identity_mismatch") == 1
            assert refused_plaintext() >= 1
            assert b.transport.drops.get("identity_mismatch") is None  # counted by the node it reached only
        finally:
            ctx.destroy(linger=0)
            await asyncio.gather(a.close(leave=False), b.close(leave=False))
            shared.close()

    arun(main())


def test_a_context_is_for_one_event_loop_and_a_fleet_node_needs_its_own():
    shared, own = SocketContext(), SocketContext()
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        shared.attach(first, secure=True)
        with pytest.raises(InvalidArgument, match="one event loop"):
            shared.attach(second, secure=True)
        with pytest.raises(InvalidArgument, match="fleet node"):
            shared.attach(first, secure=True, admit_subscriber=lambda key: True)
        shared.detach()
        assert shared.users == 0
        shared.attach(second, secure=True)  # nobody attached any more: another loop may take it
        zap = shared.zap
        shared.detach()
        assert shared.zap is zap  # the handler lives as long as the context
        own.attach(second, secure=True, admit_subscriber=lambda key: True)  # alone: fine
        with pytest.raises(InvalidArgument, match="fleet node"):
            own.attach(second, secure=True)
        own.detach()
    finally:
        shared.close()
        own.close()
        first.close()
        second.close()


def test_a_node_out_of_sockets_counts_the_drop_and_keeps_sending_what_it_can(arun):
    """A context (or process) out of sockets or fds: opening a connection fails with EMFILE. The frame is
    dropped and counted (``no_socket``, the delivery core retransmits it), never an exception out of the
    transport's write burst that would lose the other frames of that burst."""
    async def main():
        cramped = SocketContext(max_sockets=20)  # ZAP 1 + 6 per node (ROUTER, XPUB, 2 monitors x 2): 19
        config = NodeConfig(leave_timeout=0)
        a, b, c = (Node(context=cramped, config=config) for _ in range(3))
        try:
            for n in (a, b, c):
                n.on_request(lambda body, msg: body)
                await n.start()
            assert await a.request(b.contact, "to b", timeout=5) == "to b"  # the 20th socket: A's DEALER to B
            with pytest.raises(RequestTimeout):
                await a.request(c.contact, "to c", timeout=1.5)  # no socket left for a DEALER to C
            assert a.transport.drops.get("no_socket", 0) >= 1
            assert await a.request(b.contact, "still", timeout=5) == "still"  # A works on over what it has
        finally:
            await asyncio.gather(*(n.close(leave=False) for n in (a, b, c)))
            cramped.close()

    arun(main())
