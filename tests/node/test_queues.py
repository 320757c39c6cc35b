"""BoundedQueue: the inbox's and the subscriptions' queue, bounded in count and bytes, with per-sender shares."""

from __future__ import annotations

import asyncio

import pytest

from zmqagents.queues import BoundedQueue

A, B = b"a" * 32, b"b" * 32


def test_count_bytes_and_shares_are_each_enforced():
    q: BoundedQueue[int] = BoundedQueue(limit=4, max_bytes=1000, share=0.5)
    assert q.refuses(A, 10) is None
    q.put(1, A, 10)
    q.put(2, A, 10)
    assert q.refuses(A, 10) == "peer_share"  # A holds half the places
    assert q.refuses(B, 10) is None  # B still gets in
    q.put(3, B, 400)
    assert q.refuses(B, 200) == "peer_share_bytes"  # 400 + 200 > half of 1000
    assert q.refuses(B, 10) is None
    q.put(4, B, 10)
    assert q.refuses(B, 1) == "queue_full"
    assert (len(q), q.bytes, q.held_by(A), q.held_by(B)) == (4, 430, (2, 20), (2, 410))
    assert q.get_nowait() == (1, A, 10)
    assert q.refuses(A, 600) == "queue_bytes"  # 420 + 600 > 1000
    assert q.refuses(A, 10, need=2) == "queue_full"  # 3 + 2 > 4
    assert q.refuses(A, 10, held=(1, 0)) == "queue_full"  # what is on its way counts as queued


def test_what_is_larger_than_a_bound_is_not_refused_for_ever():
    q: BoundedQueue[str] = BoundedQueue(limit=2, max_bytes=100, share=0.5)
    assert q.refuses(A, 10_000) is None  # an empty queue takes anything
    q.put("big", A, 10_000)
    assert q.refuses(B, 1) == "queue_bytes"
    q.get_nowait()
    assert (len(q), q.bytes, q.held_by(A)) == (0, 0, (0, 0))


def test_unget_puts_back_at_the_head_and_counts_again(arun):
    async def main():
        q: BoundedQueue[int] = BoundedQueue(limit=3, max_bytes=100)
        for i in range(3):
            q.put(i, A, 1)
        item, src, cost = await q.get()
        assert item == 0 and q.refuses(A, 1) is None
        q.unget(item, src, cost)
        assert q.refuses(A, 1) == "queue_full"
        assert [(await q.get())[0] for _ in range(3)] == [0, 1, 2]

    arun(main())


def test_get_waits_wakes_one_consumer_per_item_and_a_cancelled_wait_takes_nothing(arun):
    async def main():
        q: BoundedQueue[int] = BoundedQueue(limit=10, max_bytes=100)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.get(), 0.05)
        first, second = asyncio.ensure_future(q.get()), asyncio.ensure_future(q.get())
        await asyncio.sleep(0)
        q.put(7, A, 1)
        await asyncio.sleep(0.01)
        assert first.done() != second.done()
        q.put(8, B, 1)
        got = sorted([(await first)[0], (await second)[0]])
        assert got == [7, 8] and len(q) == 0 and q.bytes == 0

    arun(main())


def test_bad_bounds_are_refused():
    for args in ((0, 10, 0.5), (10, 0, 0.5), (10, 10, 0), (10, 10, 1.5)):
        with pytest.raises(ValueError):
            BoundedQueue(*args)


def test_a_fair_queue_takes_one_sender_after_the_other_each_in_order(arun):
    from zmqagents.queues import FairQueue

    async def main():
        q: FairQueue[str] = FairQueue(limit=100, max_bytes=10_000, share=1.0)
        for i in range(5):
            q.put(f"a{i}", A, 10)  # a flooder's backlog
        q.put("b0", B, 10)
        q.put("b1", B, 10)
        assert q.get_nowait() == ("a0", A, 10)
        assert q.get_nowait() == ("b0", B, 10)  # B's first waits for one of A's, not for all of them
        assert q.get_nowait() == ("a1", A, 10)
        item = await q.get()
        assert item == ("b1", B, 10)
        q.unget(*item)  # put back: taken next again, B first in turn
        assert [q.get_nowait()[0] for _ in range(4)] == ["b1", "a2", "a3", "a4"]
        assert (len(q), q.bytes, q.held_by(A), q.held_by(B)) == (0, 0, (0, 0), (0, 0))
        with pytest.raises(IndexError):
            q.get_nowait()

    arun(main())
