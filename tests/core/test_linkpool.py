"""The outgoing-link policy: which links close, and when (core/linkpool.py)."""

import random

import pytest

from zmqagents.core.linkpool import LinkPool, LinkPoolConfig
from zmqagents.errors import InvalidArgument

A, B, C, D = b"a" * 32, b"b" * 32, b"c" * 32, b"d" * 32


def pool(idle=10.0, max_links=3, sweep_every=0.125):
    return LinkPool(LinkPoolConfig(idle_timeout=idle, max_links=max_links, sweep_every=sweep_every))


def test_a_link_closes_after_idle_timeout_without_traffic_and_not_a_moment_before():
    p = pool()
    p.opened(A, 0.0)
    assert p.idle(9.999) == []
    assert A in p
    assert p.idle(10.0) == [A]
    assert A not in p and len(p) == 0


def test_traffic_either_way_keeps_a_link_open():
    p = pool()
    p.opened(A, 0.0)
    p.opened(B, 1.0)
    p.used(A, 8.0)  # a frame sent or read on A
    assert p.idle(11.0) == [B]
    assert p.idle(17.9) == []
    assert p.idle(18.0) == [A]


def test_idle_links_come_out_oldest_first_and_only_those():
    p = pool(max_links=10)
    for i, peer in enumerate((A, B, C, D)):
        p.opened(peer, float(i))
    p.used(A, 5.0)  # A is now the most recently used
    assert p.idle(12.5) == [B, C]
    assert [peer for peer in (A, B, C, D) if peer in p] == [A, D]


def test_full_pool_makes_room_by_closing_the_least_recently_used():
    p = pool(max_links=3)
    p.opened(A, 0.0)
    p.opened(B, 1.0)
    p.opened(C, 2.0)
    p.used(A, 3.0)
    assert p.make_room() == [B]
    assert len(p) == 2
    p.opened(D, 4.0)
    assert p.make_room() == [C]


def test_room_is_free_below_the_bound():
    p = pool(max_links=3)
    p.opened(A, 0.0)
    p.opened(B, 0.0)
    assert p.make_room() == []
    assert len(p) == 2


def test_a_closed_link_is_forgotten_and_later_use_of_it_is_ignored():
    p = pool()
    p.opened(A, 0.0)
    p.closed(A)
    p.closed(A)  # twice is harmless
    p.used(A, 1.0)  # a frame read from it in the same loop turn: not a new link
    assert A not in p
    assert p.idle(100.0) == []
    assert p.next_sweep(0.0) is None


def test_reopened_link_starts_a_fresh_idle_period():
    p = pool()
    p.opened(A, 0.0)
    assert p.idle(10.0) == [A]
    p.opened(A, 12.0)
    assert p.idle(21.9) == []
    assert p.idle(22.0) == [A]


def test_next_sweep_is_when_the_oldest_goes_idle_but_not_sooner_than_a_fraction_of_the_timeout():
    p = pool(idle=8.0, sweep_every=0.25)
    assert p.next_sweep(0.0) is None  # nothing open: no timer
    p.opened(A, 0.0)
    p.opened(B, 3.0)
    assert p.next_sweep(3.0) == 8.0  # A goes idle at 8
    assert p.idle(8.0) == [A]
    # B goes idle at 11, but the sweep just ran at 8: not before 8 + 0.25 x 8 = 10 either way
    assert p.next_sweep(8.0) == 11.0
    p.opened(C, 8.5)
    assert p.idle(11.0) == [B]
    assert p.next_sweep(11.0) == 16.5
    p.used(C, 11.0)
    # C goes idle at 19 now, later than the floor of 13
    assert p.next_sweep(11.0) == 19.0
    # a sweep that found nothing: the floor keeps the next one from firing in a loop
    q = pool(idle=8.0, sweep_every=0.25)
    q.opened(A, 0.0)
    assert q.next_sweep(7.99) == 7.99 + 2.0


def test_idle_timeout_zero_never_closes_for_idleness_but_the_bound_holds():
    p = pool(idle=0.0, max_links=2)
    p.opened(A, 0.0)
    p.opened(B, 0.0)
    assert p.idle(1e9) == []
    assert p.next_sweep(0.0) is None
    assert p.make_room() == [A]


def test_the_pool_never_holds_more_than_its_bound_and_keeps_the_most_recently_used():
    """Random opens and uses against a plain model: after every step the pool holds the
    ``max_links`` peers used last among those opened, and idle() returns exactly the stale ones."""
    rng = random.Random(7)
    peers = [bytes([i]) * 32 for i in range(12)]
    p = pool(idle=5.0, max_links=4)
    model: dict[bytes, float] = {}
    now = 0.0
    for _ in range(2000):
        now += rng.choice((0.01, 0.1, 0.5, 1.0, 3.0))  # strictly later: no ties in the model's order
        peer = rng.choice(peers)
        step = rng.random()
        if step < 0.4:
            if peer in model:
                p.used(peer, now)
                model[peer] = now
            else:
                victims = p.make_room()
                expected = sorted(model, key=model.__getitem__)[:max(0, len(model) - 3)]
                assert victims == expected
                for v in victims:
                    del model[v]
                p.opened(peer, now)
                model[peer] = now
        elif step < 0.7:
            p.used(peer, now)
            if peer in model:
                model[peer] = now
        elif step < 0.8:
            p.closed(peer)
            model.pop(peer, None)
        else:
            stale = sorted((at, q) for q, at in model.items() if now - at >= 5.0)
            assert p.idle(now) == [q for _, q in stale]
            for _, q in stale:
                del model[q]
        assert len(p) == len(model) <= 4
        assert all(q in p for q in model)


@pytest.mark.parametrize("kwargs", [
    {"idle_timeout": -1.0}, {"idle_timeout": float("nan")}, {"max_links": 0},
    {"sweep_every": 0.0}, {"sweep_every": 1.5},
])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InvalidArgument):
        LinkPoolConfig(**kwargs)
