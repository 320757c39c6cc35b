"""Unit tests of the iterative lookup state machine (zmqagents.core.lookup), on a fake clock.

The synthetic networks here answer queries from precomputed k-bucket views: no envelopes, no
RoutingCore (tests/core/test_routing.py drives whole cores through a dispatcher).
"""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqagents.core.lookup import LOOKUP_STAT_KEYS, MAX_ENDPOINT_LEN, Lookup, contact_fields
from zmqagents.identity import Contact, node_id_of

K = 20


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


class Space:
    """``n`` nodes with random keys. Each node's view is what a full k-bucket table would hold had it met
    every node (the first k of each bucket in a random order), built lazily when the node is asked."""

    def __init__(self, n: int, seed: int, k: int = K):
        rng = random.Random(seed)
        self.rng = rng
        self.k = k
        self.pks = [rng.randbytes(32) for _ in range(n)]
        self.ids = [node_id_of(pk) for pk in self.pks]
        self.ints = [_int(i) for i in self.ids]
        self.index = {nid: j for j, nid in enumerate(self.ids)}
        self._views: dict[int, list[int]] = {}

    def contact(self, j: int) -> list:
        return [self.pks[j], f"sim://{j}"]

    def view(self, j: int) -> list[int]:
        v = self._views.get(j)
        if v is None:
            me = self.ints[j]
            order = list(range(len(self.ids)))
            random.Random(j).shuffle(order)
            buckets: dict[int, list[int]] = {}
            for o in order:
                i = (self.ints[o] ^ me).bit_length() - 1
                if i >= 0:
                    b = buckets.setdefault(i, [])
                    if len(b) < self.k:
                        b.append(o)
            v = self._views[j] = [o for b in buckets.values() for o in b]
        return v

    def answer(self, j: int, target: bytes, exclude: int | None = None) -> list[list]:
        t = _int(target)
        best = sorted((o for o in self.view(j) if o != exclude), key=lambda o: self.ints[o] ^ t)[: self.k]
        return [self.contact(o) for o in best]

    def truth(self, target: bytes, alive: list[int], k: int | None = None) -> list[bytes]:
        t = _int(target)
        return [self.ids[o] for o in sorted(alive, key=lambda o: self.ints[o] ^ t)[: k or self.k]]


def drive(space: Space, src: int, target: bytes, *, dead: frozenset = frozenset(), late_after: float = 0.25,
          timeout: float = 2.0, latency=(0.005, 0.05), rng: random.Random | None = None, **kw) -> Lookup:
    """Run one lookup to its end on a fake clock: live peers answer after a random one-way delay each
    way; dead ones never answer and their hard timeout fires after ``timeout``."""
    rng = rng or random.Random(0)
    lk = Lookup(target, space.answer(src, target), self_id=space.ids[src], late_after=late_after, **kw)
    heap: list = []
    seq = 0
    now = 0.0

    def send(now: float) -> None:
        nonlocal seq
        qs = lk.next_queries(now)
        assert not qs or lk.waiting <= lk.alpha  # a query is only sent while fewer than alpha are waited for
        for c in qs:
            j = space.index[node_id_of(c.public_key)]
            seq += 1
            if j in dead:
                heapq.heappush(heap, (now + timeout, seq, j, None))
            else:
                rtt = rng.uniform(*latency) + rng.uniform(*latency)
                heapq.heappush(heap, (now + rtt, seq, j, space.answer(j, target, exclude=src)))

    send(now)
    while not lk.done:
        t_late = lk.next_timer()
        if heap and (t_late is None or heap[0][0] <= t_late):
            now, _, j, answer = heapq.heappop(heap)
            if answer is None:
                lk.on_timeout(space.ids[j], now)
            else:
                lk.on_response(space.ids[j], answer, now)
        elif t_late is not None:
            now = t_late
        else:
            raise AssertionError("lookup not done, but nothing is pending")
        send(now)
    return lk


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


# -- contacts ---------------------------------------------------------------------------------

def test_contact_fields_accepts_the_three_forms_and_refuses_garbage():
    pk = b"k" * 32
    assert contact_fields([pk, "tcp://h:1"]) == (pk, "tcp://h:1")
    assert contact_fields((pk, "tcp://h:1", "future field")) == (pk, "tcp://h:1")
    assert contact_fields(Contact(pk, "tcp://h:1")) == (pk, "tcp://h:1")
    for bad in ([pk], [pk[:31], "e"], [pk + b"x", "e"], [pk, ""], [pk, b"e"], [pk, "e" * (MAX_ENDPOINT_LEN + 1)],
                ["x" * 32, "e"], [None, None], None, 7, "str", {"pk": pk}, [bytearray(pk), "e"]):
        assert contact_fields(bad) is None, bad


# -- the state machine on scripted answers ----------------------------------------------------------

def _line(n: int, target: bytes) -> list[list]:
    """n contacts sorted by distance to target."""
    rng = random.Random(7)
    cs = [[rng.randbytes(32), f"sim://{i}"] for i in range(n)]
    t = _int(target)
    cs.sort(key=lambda c: _int(node_id_of(c[0])) ^ t)
    return cs


def test_asks_alpha_closest_first_and_stops_once_the_k_closest_answered():
    target = bytes(32)
    cs = _line(8, target)
    lk = Lookup(target, list(reversed(cs)), k=3, alpha=2, late_after=1.0)
    q = lk.next_queries(0.0)
    assert [c.public_key for c in q] == [cs[0][0], cs[1][0]]
    assert lk.next_queries(0.0) == []  # alpha in flight
    lk.on_response(node_id_of(cs[0][0]), [], 0.1)
    q = lk.next_queries(0.1)
    assert [c.public_key for c in q] == [cs[2][0]]
    lk.on_response(node_id_of(cs[1][0]), [], 0.2)
    assert lk.next_queries(0.2) == []  # the window (3 closest) is all asked: nothing more to ask
    assert not lk.done
    lk.on_response(node_id_of(cs[2][0]), [], 0.3)
    assert lk.done and lk.ok
    assert lk.queries == 3  # the 5 farther candidates were never asked
    assert [c.public_key for c in lk.result()] == [c[0] for c in cs[:3]]
    assert lk.duration == pytest.approx(0.3)


def test_stop_at_target_ends_as_soon_as_the_target_answers():
    cs = _line(8, bytes(32))
    target = node_id_of(cs[3][0])  # a node's own id: it is the closest candidate to itself
    t = _int(target)
    cs.sort(key=lambda c: _int(node_id_of(c[0])) ^ t)
    assert node_id_of(cs[0][0]) == target
    for stop in (True, False):
        lk = Lookup(target, cs, k=3, alpha=2, late_after=1.0, stop_at_target=stop)
        q = lk.next_queries(0.0)
        # The target itself is asked first; looking for it alone, nothing else while it is waited for.
        assert [c.public_key for c in q] == ([cs[0][0]] if stop else [cs[0][0], cs[1][0]])
        lk.on_response(target, [], 0.05)
        if stop:
            assert lk.done and lk.ok and lk.queries == 1
            assert lk.result_ids() == [target]
            assert lk.next_queries(0.05) == []
            assert lk.on_response(node_id_of(cs[1][0]), [], 0.06) is False  # the result is final
        else:
            assert not lk.done  # a full lookup waits for the k closest
            lk.on_response(node_id_of(cs[1][0]), [], 0.06)
            lk.next_queries(0.06)
            lk.on_response(node_id_of(cs[2][0]), [], 0.07)
            assert lk.done and lk.ok and lk.result_ids() == [node_id_of(c[0]) for c in cs[:3]]
    # Other peers' answers do not end it, however close their ids.
    lk = Lookup(target, cs[1:], k=3, alpha=3, late_after=1.0, stop_at_target=True)
    lk.next_queries(0.0)
    lk.on_response(node_id_of(cs[1][0]), [cs[0]], 0.05)  # referred to the target
    assert not lk.done
    assert [c.public_key for c in lk.next_queries(0.05)] == [cs[0][0]]
    lk.on_response(node_id_of(cs[2][0]), [], 0.06)
    assert lk.next_queries(0.06) == []  # a slot is free, but the target is waited for
    lk.on_response(target, [], 0.1)
    assert lk.done and lk.ok and target in lk.result_ids()


def test_a_silent_target_is_waited_for_alone_only_until_it_is_late():
    cs = _line(8, bytes(32))
    target = node_id_of(cs[3][0])
    t = _int(target)
    cs.sort(key=lambda c: _int(node_id_of(c[0])) ^ t)
    lk = Lookup(target, cs, k=3, alpha=3, late_after=0.5, stop_at_target=True)
    assert [c.public_key for c in lk.next_queries(0.0)] == [cs[0][0]]
    assert lk.next_timer() == pytest.approx(0.5)
    assert lk.next_queries(0.49) == []
    q = lk.next_queries(0.5)  # late: the others are asked, alpha of them
    assert [c.public_key for c in q] == [c[0] for c in cs[1:4]] and lk.state_of(target) == "late"
    lk.on_response(target, [], 0.6)  # a late answer still ends it
    assert lk.done and lk.ok


def test_a_silent_peer_stops_being_waited_for_after_late_after():
    target = bytes(32)
    cs = _line(6, target)
    lk = Lookup(target, cs, k=3, alpha=3, late_after=0.2, late_factor=10.0)
    q = lk.next_queries(0.0)
    assert len(q) == 3
    silent = node_id_of(cs[0][0])
    lk.on_response(node_id_of(cs[1][0]), [], 0.05)
    lk.on_response(node_id_of(cs[2][0]), [], 0.06)
    assert lk.next_timer() == pytest.approx(0.2)  # min(late_after, 10 x 0.06)
    assert not lk.done  # cs[0] is still in the window, and not yet late
    assert lk.next_queries(0.19) == []
    q = lk.next_queries(0.2)  # cs[0] is late: it leaves the window, cs[3] enters it
    assert lk.state_of(silent) == "late"
    assert [c.public_key for c in q] == [cs[3][0]]
    lk.on_response(node_id_of(cs[3][0]), [], 0.25)
    assert lk.done and lk.ok and lk.late == 1
    assert lk.finished == pytest.approx(0.25)  # never waited for the hard timeout of cs[0]
    assert silent not in lk.result_ids()
    # A late answer after the end changes nothing: the result is final.
    assert lk.on_response(silent, [], 0.3) is False
    assert silent not in lk.result_ids()


def test_once_others_answered_silence_is_judged_against_their_rtt():
    target = bytes(32)
    cs = _line(6, target)
    nid = [node_id_of(c[0]) for c in cs]
    lk = Lookup(target, cs, k=3, alpha=3, late_after=1.0, late_factor=3.0, late_min=0.01)
    lk.next_queries(0.0)  # asks cs0, cs1, cs2
    assert lk.next_timer() == pytest.approx(1.0)  # nothing answered yet: late_after
    lk.on_response(nid[1], [], 0.02)
    assert lk.late_limit() == pytest.approx(0.06)  # 3 x the slowest answer so far
    assert lk.next_timer() == pytest.approx(0.06)
    q = lk.next_queries(lk.next_timer())  # cs0 and cs2 turn late; cs3 and cs4 are asked instead
    assert [c.public_key for c in q] == [cs[3][0], cs[4][0]]
    assert lk.state_of(nid[0]) == lk.state_of(nid[2]) == "late" and lk.late == 2
    lk.on_response(nid[4], [], 0.08)
    # A slower answer raises the limit: cs0 and cs2 (asked at 0) are waited for again, up to 3 x 0.05.
    lk.on_response(nid[3], [], 0.11)
    assert lk.late_limit() == pytest.approx(0.15)
    assert lk.state_of(nid[0]) == lk.state_of(nid[2]) == "waiting"
    assert not lk.done
    assert lk.next_timer() == pytest.approx(0.15)
    lk.next_queries(lk.next_timer())
    assert lk.done and lk.ok
    assert lk.result_ids() == [nid[1], nid[3], nid[4]]
    assert lk.finished == pytest.approx(0.15)  # the silent ones cost 0.15 s, not the 1 s late_after


def test_a_late_answer_before_the_end_is_used():
    target = bytes(32)
    cs = _line(6, target)
    lk = Lookup(target, cs[:3], k=3, alpha=1, late_after=0.1)
    first = lk.next_queries(0.0)[0]
    lk.next_queries(0.1)  # first is late; the second closest is asked
    assert lk.state_of(node_id_of(first.public_key)) == "late"
    lk.on_response(node_id_of(first.public_key), [cs[5]], 0.15)  # late, but useful
    assert lk.state_of(node_id_of(first.public_key)) == "answered"
    assert lk.state_of(node_id_of(cs[5][0])) == "fresh"


def test_while_nobody_answered_late_queries_are_all_there_is_to_wait_for():
    target = bytes(32)
    cs = _line(2, target)
    lk = Lookup(target, cs, k=2, alpha=3, late_after=0.3)
    assert len(lk.next_queries(0.0)) == 2
    assert lk.next_queries(0.3) == []  # both late, nobody else to ask
    assert not lk.done and lk.late == 2 and lk.next_timer() is None  # the caller's hard timeouts decide
    lk.on_response(node_id_of(cs[1][0]), [], 0.9)
    assert lk.done and lk.ok and lk.result_ids() == [node_id_of(cs[1][0])]


def test_every_peer_failing_ends_the_lookup_not_ok():
    target = bytes(32)
    cs = _line(4, target)
    lk = Lookup(target, cs, k=3, alpha=3)
    while not lk.done:
        for c in lk.next_queries(0.0):
            lk.on_timeout(node_id_of(c.public_key), 1.0)
    assert not lk.ok and lk.result() == [] and lk.failures == 4


def test_no_contacts_ends_at_once():
    lk = Lookup(bytes(32), [])
    assert lk.next_queries(0.0) == []
    assert lk.done and not lk.ok


def test_self_and_garbage_and_duplicates_are_counted_and_skipped():
    target = bytes(32)
    me = b"m" * 32
    cs = _line(3, target)
    lk = Lookup(target, cs[:1], k=3, self_id=node_id_of(me), max_per_response=100)
    (q,) = lk.next_queries(0.0)
    good = [b"g" * 32, "sim://g"]
    answer = [
        [me, "sim://me"],  # ourselves
        good, good,  # a duplicate within one answer
        cs[0],  # the answering peer itself: already known
        [b"short", "e"], [b"x" * 32, 5], [b"y" * 32, ""], [b"z" * 32, "e" * 300], ["x" * 32, "e"],
        None, 42, "text", {"a": 1}, [b"w" * 32], [],
    ]
    lk.on_response(node_id_of(q.public_key), answer, 0.1)
    s = lk.stats
    assert s["contacts_self"] == 1
    assert s["contacts_duplicate"] == 1
    assert s["contacts_known"] == 1
    assert s["contacts_bad"] == 11
    assert s["contacts_accepted"] == 1
    assert len(lk) == 2
    assert lk.on_response(node_id_of(q.public_key), [], 0.2) is False  # answered twice
    assert lk.on_response(b"n" * 32, [], 0.2) is False  # never asked
    assert s["responses_unexpected"] == 2


def test_a_response_that_is_not_a_list_counts_as_an_empty_answer():
    target = bytes(32)
    lk = Lookup(target, _line(2, target), k=2)
    for c, garbage in zip(lk.next_queries(0.0), ({"nodes": 1}, b"\x00" * 10)):
        lk.on_response(node_id_of(c.public_key), garbage, 0.1)
    assert lk.stats["responses_malformed"] == 2
    assert lk.done and lk.ok


def test_a_flood_of_contacts_is_capped_per_answer_and_in_total():
    target = bytes(32)
    rng = random.Random(3)
    lk = Lookup(target, _line(1, target), k=K, max_queries=30)
    (q,) = lk.next_queries(0.0)
    flood = [[rng.randbytes(32), "sim://f"] for _ in range(10_000)]
    lk.on_response(node_id_of(q.public_key), flood, 0.1)
    assert lk.stats["contacts_truncated"] == 1
    assert lk.stats["contacts_accepted"] == K
    # Keep flooding from every peer asked: candidates and queries stay bounded.
    now = 0.1
    while not lk.done:
        now += 0.01
        for c in lk.next_queries(now):
            lk.on_response(node_id_of(c.public_key), [[rng.randbytes(32), "sim://f"] for _ in range(500)], now)
        assert len(lk) <= lk.max_candidates
    assert lk.queries <= 30
    assert len(lk.result()) <= K


def test_candidate_bound_keeps_the_closest():
    target = bytes(32)
    cs = _line(40, target)
    lk = Lookup(target, cs[20:], k=4, alpha=1, max_candidates=10, max_queries=50, max_per_response=20)
    assert len(lk) == 10 and lk.stats["candidates_dropped"] == 10
    (q,) = lk.next_queries(0.0)
    lk.on_response(node_id_of(q.public_key), cs[:20], 0.1)  # closer ones evict the farther never-asked ones
    ids = lk._by_id
    assert all(node_id_of(c[0]) in ids for c in cs[:9])
    assert len(lk) == 10


def test_hops_count_the_chain_of_referrals():
    target = bytes(32)
    cs = _line(6, target)
    # Each peer only knows the next closer one: a chain of 6 hops from the farthest.
    lk = Lookup(target, [cs[5]], k=1, alpha=1)
    now = 0.0
    nxt = {node_id_of(cs[i][0]): [cs[i - 1]] if i else [] for i in range(6)}
    while not lk.done:
        for c in lk.next_queries(now):
            now += 0.01
            lk.on_response(node_id_of(c.public_key), nxt[node_id_of(c.public_key)], now)
    assert lk.ok and lk.rounds == 6 and lk.hops == 6
    assert lk.result_ids() == [node_id_of(cs[0][0])]


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        Lookup(b"short", [])
    with pytest.raises(ValueError):
        Lookup(bytes(32), [], k=0)


# -- synthetic networks ---------------------------------------------------------------------------

def test_converges_to_the_true_k_closest():
    space = Space(1000, seed=1)
    rng = random.Random(2)
    rounds = []
    for _ in range(50):
        src = rng.randrange(1000)
        target = rng.randbytes(32)
        lk = drive(space, src, target, rng=rng)
        assert lk.ok
        assert lk.result_ids() == space.truth(target, [o for o in range(1000) if o != src])
        rounds.append(lk.rounds)
    assert pct(rounds, 0.5) <= 4 and max(rounds) <= 6


def test_dead_peers_never_cost_a_hard_timeout():
    """20% of the nodes are dead. Once others answered, no lookup waits for a dead peer's hard timeout:
    a silent query stops counting after late_after (a few RTTs). Compare: the ``kademlia`` package waits
    a full 5 s round timeout in 23-50% of its lookups in the same situation."""
    space = Space(1000, seed=3)
    rng = random.Random(4)
    dead = frozenset(rng.sample(range(1000), 200))
    alive = [o for o in range(1000) if o not in dead]
    timeout = 2.0
    durations, recall = [], []
    for _ in range(50):
        src = rng.choice(alive)
        target = rng.randbytes(32)
        lk = drive(space, src, target, dead=dead, timeout=timeout, late_after=0.25, rng=rng)
        assert lk.ok
        durations.append(lk.duration)
        truth = space.truth(target, [o for o in alive if o != src])
        got = lk.result_ids()
        assert got[0] == truth[0]  # the closest live node is always found
        recall.append(len(set(got) & set(truth)) / len(truth))
    assert max(durations) < timeout
    assert sum(recall) / len(recall) > 0.85


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_interleaving_keeps_the_invariants(data):
    """Random answers (good, garbage, floods), timeouts, late deadlines and clock jumps in any order."""
    space = Space(300, seed=data.draw(st.integers(0, 3)))
    rng = random.Random(data.draw(st.integers(0, 1 << 30)))
    k = data.draw(st.integers(1, 8))
    alpha = data.draw(st.integers(1, 4))
    max_queries = data.draw(st.integers(1, 40))
    target = rng.randbytes(32)
    lk = Lookup(target, space.answer(0, target), k=k, alpha=alpha, self_id=space.ids[0], late_after=0.3,
                max_queries=max_queries)
    now = 0.0
    asked: list[bytes] = []
    for _ in range(data.draw(st.integers(0, 80))):
        action = data.draw(st.sampled_from(["tick", "answer", "garbage", "timeout", "flood"]))
        if action == "tick":
            now += data.draw(st.floats(0, 0.5))
        elif asked:
            nid = asked[data.draw(st.integers(0, len(asked) - 1))]
            if action == "answer":
                j = space.index.get(nid)  # (peers learned from floods are not in the space)
                lk.on_response(nid, [] if j is None else space.answer(j, target), now)
            elif action == "garbage":
                lk.on_response(nid, data.draw(st.lists(st.one_of(st.none(), st.integers(), st.binary(),
                                                                 st.lists(st.binary(), max_size=3)),
                                                       max_size=5)), now)
            elif action == "timeout":
                lk.on_timeout(nid, now)
            else:
                lk.on_response(nid, [[rng.randbytes(32), "f"] for _ in range(200)], now)
        qs = lk.next_queries(now)
        asked += [node_id_of(c.public_key) for c in qs]
        assert not qs or lk.waiting <= alpha
        assert lk.queries <= max_queries
        assert len(lk) <= lk.max_candidates
        assert set(lk.stats) >= set(LOOKUP_STAT_KEYS)
        res = lk.result_ids()
        assert len(res) <= k
        assert res == sorted(res, key=lambda n: _int(n) ^ _int(target))
        assert space.ids[0] not in res
    # Settling every outstanding query always ends the lookup.
    for _ in range(max_queries + 2):
        if lk.done:
            break
        for nid in asked:
            lk.on_timeout(nid, now)
        asked = [node_id_of(c.public_key) for c in lk.next_queries(now)]
    assert lk.done


# -- the dial budget ------------------------------------------------------------------------------

def test_a_dial_budget_asks_linked_candidates_freely_and_skips_unlinked_ones_past_it():
    space = Space(300, seed=11)
    target = space.ids[0]
    linked = set(space.ids[::3])  # a third of the nodes hold a connection to us
    calls: list[bytes] = []

    def is_linked(nid: bytes) -> bool:
        calls.append(nid)
        return nid in linked

    lk = drive(space, 1, target, linked=is_linked, max_dials=2, k=8, alpha=3)
    assert lk.done and calls
    asked = [nid for nid in space.ids if lk.state_of(nid) in ("answered", "failed", "waiting", "late")]
    unlinked_asked = [nid for nid in asked if nid not in linked]
    assert lk.dials == len(unlinked_asked) <= 2
    skipped = [nid for nid in space.ids if lk.state_of(nid) == "skipped"]
    assert skipped and all(nid not in linked for nid in skipped)
    assert lk.stats["candidates_unlinked_skipped"] == len(skipped)
    assert lk.ok and lk.result_ids() and all(nid not in skipped for nid in lk.result_ids())
    # without a budget the same lookup dials whatever its window needs
    free = drive(space, 1, target, k=8, alpha=3)
    assert free.dials == 0 and sum(1 for nid in space.ids if free.state_of(nid) == "answered"
                                   and nid not in linked) > 2


def test_a_zero_budget_with_nothing_linked_ends_without_asking_anyone():
    space = Space(50, seed=12)
    lk = Lookup(space.ids[0], space.answer(1, space.ids[0]), self_id=space.ids[1], linked=lambda nid: False,
                max_dials=0)
    assert lk.next_queries(0.0) == []
    assert lk.done and not lk.ok and lk.queries == 0


def test_linked_and_max_dials_go_together():
    from zmqagents.errors import InvalidArgument

    for kw in ({"linked": lambda nid: True}, {"max_dials": 3}, {"linked": lambda nid: True, "max_dials": -1}):
        with pytest.raises(InvalidArgument):
            Lookup(b"t" * 32, [], **kw)


def test_skipped_candidates_make_room_for_closer_ones_like_fresh_ones():
    rng = random.Random(5)
    target = rng.randbytes(32)
    pks = sorted((rng.randbytes(32) for _ in range(50)), key=lambda pk: _int(node_id_of(pk)) ^ _int(target))
    closer, skipped, linked = pks[0:3], pks[5:8], pks[8]
    lk = Lookup(target, [[pk, "e"] for pk in skipped + [linked]], k=4, alpha=1, max_candidates=4,
                linked=lambda nid: nid == node_id_of(linked), max_dials=0)
    assert [c.public_key for c in lk.next_queries(0.0)] == [linked]
    assert all(lk.state_of(node_id_of(pk)) == "skipped" for pk in skipped)
    lk.on_response(node_id_of(linked), [[pk, "e"] for pk in closer], 0.1)
    assert lk.stats["contacts_accepted"] == 3 and lk.stats["candidates_dropped"] == 3
    assert all(lk.state_of(node_id_of(pk)) is None for pk in skipped)  # evicted for the closer ones
    assert all(lk.state_of(node_id_of(pk)) == "skipped" for pk in closer)  # the budget is 0: not asked either
    assert lk.done and lk.ok and lk.result_ids() == [node_id_of(linked)]
