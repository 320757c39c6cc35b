"""Node.pause / resume: a node that stalls as a stopped process does (zmqagents swarm --pause)."""

from __future__ import annotations

import asyncio

import pytest

from zmqagents.node import Node, RequestTimeout

from helpers.realmesh import close_mesh, quick_detection, start_mesh

pytestmark = pytest.mark.timeout(60)


def test_a_paused_node_answers_nothing_then_everything_after_resume(arun):
    async def main():
        a, b = await start_mesh(2, quick_detection)
        try:
            a.on_request(lambda body, msg: {"echo": body})
            assert await b.request(a.contact, 1, timeout=5) == {"echo": 1}
            a.pause()
            a.pause()  # twice is once
            timer_before = a.loop.timer_at
            assert timer_before is None  # no timer armed while paused
            late = asyncio.ensure_future(b.request(a.contact, 2, timeout=8))
            with pytest.raises(RequestTimeout):
                await b.request(a.contact, 3, timeout=1.0)
            assert not late.done()
            frames = a.transport.stats["frames_in"]
            await asyncio.sleep(0.5)
            assert a.transport.stats["frames_in"] == frames  # nothing read while paused
            a.resume()
            # what waited in libzmq meanwhile is read: the earlier request is answered within its timeout
            assert await late == {"echo": 2}
            assert a.loop.timer_at is not None  # ticking again
            assert await b.request(a.contact, 4, timeout=5) == {"echo": 4}
        finally:
            await close_mesh([a, b])

    arun(main())


def test_a_long_pause_is_seen_as_a_failure_and_the_node_refutes_it_on_resume(arun):
    async def main():
        nodes = await start_mesh(3, quick_detection)
        a, b, c = nodes
        events: list = []

        async def watch(node: Node) -> None:
            async for ev in node.events():
                events.append((node.node_id, ev.kind, ev.node_id))

        watchers = [asyncio.ensure_future(watch(n)) for n in (b, c)]
        try:
            await asyncio.sleep(0.5)
            a.pause()
            for _ in range(100):
                if any(kind in ("suspect", "failed") and subject == a.node_id for _, kind, subject in events):
                    break
                await asyncio.sleep(0.1)
            assert any(kind in ("suspect", "failed") and subject == a.node_id for _, kind, subject in events)
            a.resume()
            a.on_request(lambda body, msg: "back")
            assert await b.request(a.contact, None, timeout=5) == "back"
        finally:
            for w in watchers:
                w.cancel()
            await close_mesh(nodes)

    arun(main())
