"""The asyncio side of a mesh crawl (core/crawl.py): send the core's asks through a node, report back.

Used by ``zmqagents mesh graph`` (a short-lived client node asking from the seeds it is given)
and by the admin dashboard (a mesh member starting from its own routing table). Each ask is one
reliable request: ``zmqagents.peers`` for a table, ``task.describe`` for capabilities; an error
answer to ``task.describe`` means the node serves none (a node without agents has no handler
for it). Whatever comes back goes to the core unread: the core decides what to believe.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..core.crawl import DESCRIBE, PEERS, Ask, Crawl, CrawlLimits
from ..identity import Contact
from .api import NodeAPI
from .types import PEERS as PEERS_TYPE, NodeError, RemoteError

log = logging.getLogger(__name__)

DESCRIBE_TYPE = "task.describe"  # protocols/tasks.md 3.1 (agents/capability.py names it too; agents is above us)


async def crawl(node: NodeAPI, seeds: list[Contact], limits: CrawlLimits | None = None, *,
                local: bool = False, ask_timeout: float = 3.0, deadline: float = 60.0) -> Crawl:
    """Crawl from ``seeds`` (and, with ``local``, from ``node``'s own table) through ``node``.

    Returns the finished (or, after ``deadline`` seconds, stopped) :class:`Crawl`; its ``graph()``
    is the picture. Never raises for what the mesh answers: failures are in the crawl's stats.
    """
    state = Crawl(limits, now=node.now())
    if local:
        state.local(str(node.contact), node.peers(), [] if state.limits.capabilities else None)
    for contact in seeds:
        if contact.node_id != node.node_id:
            state.seed(str(contact))
    running: set[asyncio.Task[None]] = set()
    end = node.now() + deadline
    try:
        while not state.done and node.now() < end:
            now = node.now()
            for ask in state.next_asks(now):
                running.add(asyncio.create_task(_one(node, state, ask, ask_timeout)))
            wake = state.next_timer(now)
            wait = end - now if wake is None else min(end, wake) - now
            if running:
                finished, _ = await asyncio.wait(running, timeout=max(0.0, wait),
                                                 return_when=asyncio.FIRST_COMPLETED)
                running -= finished
            elif wake is not None:
                await asyncio.sleep(max(0.0, wait))
            else:
                break
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        state.stop(node.now())
    return state


async def _one(node: NodeAPI, state: Crawl, ask: Ask, timeout: float) -> None:
    kind = PEERS_TYPE if ask.what == PEERS else DESCRIBE_TYPE
    try:
        body: Any = await node.request(Contact.parse(ask.contact), None, timeout=timeout, type=kind)
    except RemoteError:  # it answered, with an error instead of what was asked
        if ask.what == DESCRIBE:
            state.serves_nothing(ask, node.now())  # no handler for task.describe: no agents there
        else:
            state.answered(ask, None, node.now())  # not a table: counted as a bad answer
        return
    except (NodeError, ValueError, OSError) as exc:  # no answer in time, unreachable, an endpoint zmq refuses
        log.debug("crawl: %s did not answer %s: %s", ask.node_id.hex()[:12], ask.what, exc)
        state.failed(ask, node.now())
        return
    state.answered(ask, body, node.now())
