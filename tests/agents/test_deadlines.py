"""Deadlines on the wire, with real nodes over CURVE-encrypted tcp loopback: a request or a task
whose caller's deadline passed while it waited at the node is not run, is counted, and is answered
(protocols/delivery.md §8.2, protocols/tasks.md §4)."""

from __future__ import annotations

import asyncio
import os
import time

import zmq
import zmq.asyncio

from zmqagents.agents.capability import Capability
from zmqagents.agents.runtime import Agents
from zmqagents.core import tasks as T
from zmqagents.envelope import Envelope, decode
from zmqagents.identity import Identity
from zmqagents.node import EXPIRED, Node, NodeConfig, RequestTimeout

from helpers.peers import curve_dealer


def test_a_request_that_waited_for_a_handler_past_its_deadline_is_not_run(arun):
    async def main():
        ran: list[str] = []

        async def handler(body, msg):
            ran.append(body)
            await asyncio.sleep(0.6 if body == "slow" else 0)
            return body

        async with Node(config=NodeConfig(max_handlers=1)) as server, Node(peers=[server.contact]) as client:
            server.on_request(handler)
            slow = asyncio.ensure_future(client.request(server.node_id, "slow", timeout=5))
            await asyncio.sleep(0.05)  # "slow" holds the only handler slot
            started = time.monotonic()
            late = asyncio.ensure_future(client.request(server.node_id, "late", timeout=0.3))
            patient = asyncio.ensure_future(client.request(server.node_id, "patient", timeout=5))
            try:
                await late
            except RequestTimeout:
                pass
            else:
                raise AssertionError("the late request got an answer")
            assert time.monotonic() - started < 0.55  # the caller gave up on time, before the slot freed
            assert await slow == "slow" and await patient == "patient"
            assert ran == ["slow", "patient"]  # "late" waited for the slot past its deadline: never run
            assert server.stats["requests_expired"] == 1
            assert server.stats["handler_errors"] == 0
            # The refusal was answered; the caller had stopped listening, so its core counts the answer.
            for _ in range(100):
                if client.delivery.stats["replies_unmatched"]:
                    break
                await asyncio.sleep(0.01)
            assert client.delivery.stats["replies_unmatched"] == 1

    arun(main())


class RawClient:
    """A client written from the specs only: a DEALER whose routing id is its public key and 16 random
    bytes (protocols/node.md, "Connections"), speaking
    reliable delivery by hand (one stream, epoch 7). It does not ack, so the node retransmits to it."""

    def __init__(self, node: Node):
        self.me = Identity.generate()
        self.node_id = node.node_id
        self.ctx = zmq.asyncio.Context()
        self.sock = curve_dealer(self.ctx, node.contact, key=self.me, routing_id=self.me.public_key + os.urandom(16))
        self.seq = 0

    def send(self, type: str, body, *, ttl: int = 0) -> bytes:
        self.seq += 1
        mid = os.urandom(16)
        env = Envelope(id=mid, src=self.me.node_id, dst=self.node_id, type=type, body=body, seq=self.seq, ep=7,
                       ts=int(time.time() * 1000), ttl=ttl)
        self.sock.send(env.encode())
        return mid

    async def wait_for(self, match, timeout: float = 5.0) -> Envelope:
        """The first envelope from the node that ``match`` accepts (retransmitted copies included)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "nothing matching arrived"
            env = decode(await asyncio.wait_for(self.sock.recv(), left))
            if match(env):
                return env

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def test_a_third_party_requester_still_listening_reads_why_its_request_was_not_run(arun):
    """The requester's ttl (200 ms) ran out while its request waited behind a 0.5 s handler; it is
    still listening (its own timeout is longer), so it reads the refusal: an ``err`` reply naming it."""
    async def main():
        ran: list[str] = []

        async def handler(body, msg):
            ran.append(body)
            await asyncio.sleep(0.5)
            return body

        async with Node(config=NodeConfig(max_handlers=1)) as server:
            server.on_request(handler)
            client = RawClient(server)
            try:
                first = client.send("req", "first", ttl=5000)
                second = client.send("req", "second", ttl=200)
                refusal = await client.wait_for(lambda env: env.re == second)
                assert refusal.type == "err"
                assert refusal.body["type"] == EXPIRED and "not run" in refusal.body["error"]
                answer = await client.wait_for(lambda env: env.re == first)
                assert (answer.type, answer.body) == ("rep", "first")
            finally:
                client.close()
            assert ran == ["first"]
            assert server.stats["requests_expired"] == 1

    arun(main())


def test_a_queued_task_whose_caller_gave_up_is_not_run(arun):
    """A caller (written from protocols/tasks.md) submits a long task, then one with a 300 ms ttl that
    must wait in the provider's queue; it never cancels (it crashed, say). The provider fails the
    second at its deadline without running it and tells the caller, who reads it if still there."""
    async def main():
        ran: list[str] = []

        async def agent(value, ctx):
            ran.append(value)
            await asyncio.sleep(0.8)
            return value

        async with Node() as server:
            agents = Agents(server)
            await agents.serve(Capability("work", max_concurrency=1, queue=1), agent, publish=False)
            client = RawClient(server)
            try:
                long_id, late_id = b"L" * 16, b"S" * 16
                client.send(T.SUBMIT, {"id": long_id, "cap": "work", "in": "long"})
                client.send(T.SUBMIT, {"id": late_id, "cap": "work", "in": "late", "ttl": 300})
                started = time.monotonic()

                def late(state):
                    return lambda env: (env.type == T.STATUS and env.body["id"] == late_id
                                        and env.body["state"] == state)

                await client.wait_for(late(T.SUBMITTED))  # admitted into the wait queue
                failed = await client.wait_for(late(T.FAILED))
                assert time.monotonic() - started < 0.7  # at its deadline, before the slot freed
                assert failed.body["err"]["code"] == T.E_DEADLINE and "not run" in failed.body["err"]["msg"]
                done = await client.wait_for(lambda env: env.type == T.STATUS and env.body["id"] == long_id
                                             and env.body["state"] == T.COMPLETED)
                assert done.body["out"] == "long"
            finally:
                client.close()
                await agents.close()
            assert ran == ["long"]
            assert agents.provider.stats["expired"] == 1

    arun(main())
