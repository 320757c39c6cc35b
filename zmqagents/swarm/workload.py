"""The workloads a swarm drives: idle, requests, tasks, publish.

One pacer for all of them (:class:`Driver`): every TICK it adds ``rate x live nodes x elapsed`` to
what is due and starts that many operations, each from a live node drawn at random, as its own
asyncio task. Nothing runs per node between operations. Operations in flight are bounded
(IN_FLIGHT_PER_NODE x live nodes): over the bound an operation is not started and is counted
(``skipped_busy``), so a mesh that cannot keep up shows as skipped work and latency, not as a
process that runs out of memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..node import Node, NodeError, RemoteError
from .crowd import ECHO, Crowd
from .plan import Plan
from .report import Tally

log = logging.getLogger(__name__)

TICK = 0.01  # s between pacer turns
IN_FLIGHT_PER_NODE = 8
TOPIC = "swarm"
DRAIN_S = 2.0  # publish: s after the last publication for the last receipts to arrive


class Driver:
    """Paces operations at ``plan.rate`` per live node per second; subclasses say what one is."""

    def __init__(self, crowd: Crowd, plan: Plan, tally: Tally):
        self.crowd = crowd
        self.plan = plan
        self.tally = tally
        self.payload = b"x" * plan.size
        self._in_flight: set[asyncio.Task] = set()

    async def prepare(self) -> None:
        """Before the measured window (serve a capability, subscribe)."""

    async def run(self, until: float) -> None:
        """Start operations at the planned rate until ``until`` (loop.time())."""
        loop = asyncio.get_running_loop()
        due = 0.0
        last = loop.time()
        while (now := loop.time()) < until:
            live = self.crowd.live()
            due += self.plan.rate * len(live) * (now - last)
            last = now
            bound = IN_FLIGHT_PER_NODE * max(1, len(live))
            while due >= 1 and live:
                due -= 1
                if len(self._in_flight) >= bound:
                    self.tally.add("skipped_busy")
                    continue
                task = loop.create_task(self.one(self.crowd.rng.choice(live)))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            await asyncio.sleep(min(TICK, max(0.0, until - loop.time())))

    async def one(self, node: Node) -> None:
        """One operation from ``node``."""

    async def finish(self) -> None:
        """After the window: wait for what is in flight (each is bounded by ``plan.timeout``)."""
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    def cancel(self) -> None:
        for task in list(self._in_flight):
            task.cancel()


class Idle(Driver):
    async def run(self, until: float) -> None:
        await asyncio.sleep(max(0.0, until - asyncio.get_running_loop().time()))


class Requests(Driver):
    """``node.request`` to a node drawn from the caller's routing table; the reply is the body back.

    A target that serves no requests (a plain ``zmqagents node`` seed, say) answers NoHandler: it is
    counted (``requests_no_handler``) and never drawn again, and the request is not counted as sent."""

    def __init__(self, crowd: Crowd, plan: Plan, tally: Tally):
        super().__init__(crowd, plan, tally)
        self.not_serving: set[bytes] = set()

    async def one(self, node: Node) -> None:
        targets = [c for c in self.crowd.targets(node) if c.node_id not in self.not_serving]
        if not targets:
            self.tally.add("skipped_no_target")
            return
        target = self.crowd.rng.choice(targets)
        started = time.perf_counter()
        try:
            await node.request(target, self.payload, timeout=self.plan.timeout)
        except RemoteError as exc:
            if isinstance(exc.body, dict) and exc.body.get("type") == "NoHandler":
                self.not_serving.add(target.node_id)
                self.tally.add("requests_no_handler")
                return
            self.tally.add("requests_sent")
            self.tally.add("requests_failed")
            return
        except NodeError as exc:  # timed out, unreachable, node closed
            self.tally.add("requests_sent")
            self.tally.add("requests_failed")
            log.debug("request from %s failed: %s", node.node_id.hex()[:8], exc)
            return
        self.tally.add("requests_sent")
        self.tally.add("requests_ok")
        self.tally.observe("request_ms", (time.perf_counter() - started) * 1000)


class Tasks(Driver):
    """Every node serves capability ``swarm.echo`` (published in the DHT) through the agent runtime;
    callers run it with ``Agents.request``: provider lookup, scoring, the task protocol, failover."""

    def __init__(self, crowd: Crowd, plan: Plan, tally: Tally):
        super().__init__(crowd, plan, tally)
        self.agents: dict[bytes, Any] = {}

    async def prepare(self) -> None:
        from ..agents.capability import Capability
        from ..agents.runtime import Agents

        async def echo_agent(value: Any, ctx: Any) -> Any:
            return value

        capability = Capability(ECHO, description="zmqagents swarm: returns its input", max_concurrency=64)

        async def serve(node: Node) -> None:
            agents = self.agents[node.node_id] = Agents(node)
            try:
                await agents.serve(capability, echo_agent, timeout=self.plan.timeout * 2)
            except Exception as exc:  # the DHT store may time out under load: served, not yet listed
                self.tally.add("tasks_provide_failed")
                log.debug("provide failed: %s", exc)

        slots = asyncio.Semaphore(self.plan.join_concurrency)

        async def bounded(node: Node) -> None:
            async with slots:
                await serve(node)

        await asyncio.gather(*(bounded(n) for n in self.crowd.live()))

    async def one(self, node: Node) -> None:
        agents = self.agents.get(node.node_id)
        if agents is None:
            return
        started = time.perf_counter()
        try:
            done = await agents.request(ECHO, self.payload.decode(), deadline=self.plan.timeout, idempotent=True)
        except Exception as exc:  # no provider found, node closed
            self.tally.add("tasks_sent")
            self.tally.add("tasks_failed")
            log.debug("task failed: %s", exc)
            return
        self.tally.add("tasks_sent")
        if done.state == "completed":
            self.tally.add("tasks_ok")
            self.tally.observe("task_ms", (time.perf_counter() - started) * 1000)
        else:
            self.tally.add("tasks_failed")

    async def finish(self) -> None:
        await super().finish()
        await asyncio.gather(*(a.close(flush=0.5) for a in self.agents.values()), return_exceptions=True)


class Publish(Driver):
    """``node.publish`` on topic ``swarm`` (the mesh broadcast tree); every node subscribes.

    Delivery counts this process's publications received by this process's other nodes, against
    those nodes alive and subscribed when each was published; publications of other processes are
    counted apart (``publications_received_foreign``)."""

    def __init__(self, crowd: Crowd, plan: Plan, tally: Tally):
        super().__init__(crowd, plan, tally)
        self._readers: list[asyncio.Task] = []
        self._subscribed: set[bytes] = set()

    async def prepare(self) -> None:
        for node in self.crowd.live():
            self._readers.append(asyncio.get_running_loop().create_task(self._read(node)))
        await asyncio.sleep(self.plan.settle)  # each reader subscribes on its first step; let the mesh learn of it

    async def _read(self, node: Node) -> None:
        run_id = self.crowd.run_id
        tally = self.tally
        subscription = node.subscribe(TOPIC)
        self._subscribed.add(node.node_id)
        try:
            async for message in subscription:
                if message.src == node.node_id:
                    continue  # its own publication, handed back locally: not a delivery
                body = message.body
                if isinstance(body, dict) and body.get("run") == run_id:
                    tally.add("publications_received")
                    sent = body.get("t")
                    if isinstance(sent, float):
                        tally.observe("publish_ms", (time.time() - sent) * 1000)
                else:
                    tally.add("publications_received_foreign")
        finally:
            self._subscribed.discard(node.node_id)

    async def one(self, node: Node) -> None:
        nodes = self.crowd.nodes
        receivers = sum(1 for i in self.crowd.alive_indexes()
                        if nodes[i].node_id in self._subscribed and nodes[i] is not node)
        try:
            await node.publish(TOPIC, {"run": self.crowd.run_id, "t": time.time(), "p": self.payload})
        except (ValueError, NodeError) as exc:  # over the node's publication rate, or closed
            self.tally.add("publications_refused")
            log.debug("publish refused: %s", exc)
            return
        self.tally.add("publications")
        self.tally.add("publications_expected", receivers)

    async def finish(self) -> None:
        await super().finish()
        await asyncio.sleep(DRAIN_S)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


DRIVERS: dict[str, type[Driver]] = {"idle": Idle, "requests": Requests, "tasks": Tasks, "publish": Publish}
