"""Unit tests of the Kademlia routing table and protocol core (zmqagents.core.routing_table, .routing), on a
fake clock.

No sockets: RoutingCores exchange envelopes through the fake network of tests/helpers/fakenet.py, with
per-message latency. The lookup state machine alone is tested in tests/core/test_lookup.py.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqagents.core.routing import FIND_NODE, NODES, Introduced, Joined, LookupDone, RoutingConfig, RoutingCore
from zmqagents.core.routing_table import ADDED, CACHED, IGNORED, REPLACED, UPDATED, RoutingTable, bucket_index, distance
from zmqagents.envelope import Envelope, decode
from zmqagents.identity import Contact, node_id_of

from helpers.fakenet import CoreMesh, LinkedCoreMesh

K = 20


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def keys(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def keys_in_bucket(self_id: bytes, i: int, n: int, seed: int = 0) -> list[bytes]:
    """n random public keys whose node ids fall in bucket i of self_id (i close to 255: cheap to find)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        pk = rng.randbytes(32)
        if bucket_index(self_id, node_id_of(pk)) == i:
            out.append(pk)
    return out


def check_table(t: RoutingTable) -> None:
    """Structural invariants of a table."""
    seen = set()
    n = 0
    for i, size in t.bucket_sizes().items():
        assert 0 < size <= t.k
        for e in t.bucket(i):
            assert t.bucket_index(e.node_id) == i
            assert e.node_id == node_id_of(e.public_key)
            assert e.node_id not in seen
            seen.add(e.node_id)
            n += 1
        reps = t.replacements_of(i)
        assert len(reps) <= t.replacements
        for e in reps:
            assert t.bucket_index(e.node_id) == i and e.node_id not in seen
    for i in range(256):
        assert len(t.replacements_of(i)) <= t.replacements
    assert n == len(t) == len(list(t))
    assert t.node_id not in seen


# -- XOR space ----------------------------------------------------------------------------------

def test_distance_and_bucket_index():
    a = bytes(range(32))
    assert distance(a, a) == 0 and bucket_index(a, a) == -1
    for i in range(256):
        b = (_int(a) ^ (1 << i)).to_bytes(32, "big")
        assert bucket_index(a, b) == i
        assert distance(a, b) == distance(b, a) == 1 << i
        # Lower bits do not change the bucket.
        c = (_int(b) ^ ((1 << i) - 1)).to_bytes(32, "big")
        assert bucket_index(a, c) == i
    t = RoutingTable(a)
    assert t.bucket_index(a) == -1


def test_random_id_in_bucket_falls_in_that_bucket():
    rng = random.Random(1)
    t = RoutingTable(rng.randbytes(32))
    for i in list(range(0, 256, 7)) + [0, 1, 255]:
        for _ in range(5):
            nid = t.random_id_in_bucket(i, rng)
            assert len(nid) == 32 and t.bucket_index(nid) == i
    with pytest.raises(ValueError):
        t.random_id_in_bucket(256, rng)
    with pytest.raises(ValueError):
        t.random_id_in_bucket(-1, rng)


# -- the table ------------------------------------------------------------------------------------

def test_full_bucket_sends_newcomers_to_a_bounded_replacement_cache():
    me = node_id_of(b"me" * 16)
    t = RoutingTable(me, k=4, replacements=2)
    pks = keys_in_bucket(me, 255, 8)
    for j, pk in enumerate(pks[:4]):
        assert t.update(Contact(pk, f"sim://{j}"), float(j)) == ADDED
    assert t.update(Contact(pks[4], "sim://4"), 4.0) == CACHED
    # The least recently seen contact is recorded for a liveness check.
    assert [e.node_id for e in t.take_checks()] == [node_id_of(pks[0])]
    assert t.take_checks() == []  # drained
    for j in (5, 6, 7):
        assert t.update(Contact(pks[j], f"sim://{j}"), float(j)) == CACHED
    assert len(t) == 4
    assert [e.public_key for e in t.replacements_of(255)] == [pks[6], pks[7]]  # the oldest was dropped
    assert t.stats["table_cache_dropped"] == 2
    assert [e.public_key for e in t.bucket(255)] == pks[:4]
    check_table(t)


def test_update_moves_to_most_recently_seen_and_keeps_metadata():
    me = node_id_of(b"me" * 16)
    t = RoutingTable(me, k=4)
    pks = keys_in_bucket(me, 255, 3)
    for j, pk in enumerate(pks):
        t.update(Contact(pk, f"sim://{j}"), float(j))
    assert t.update(Contact(pks[0], "sim://moved"), 10.0, rtt=0.1) == UPDATED
    assert [e.public_key for e in t.bucket(255)] == [pks[1], pks[2], pks[0]]
    e = t.get(node_id_of(pks[0]))
    assert (e.last_seen, e.rtt, e.endpoint) == (10.0, 0.1, "sim://moved")
    t.update(Contact(pks[0], "sim://moved"), 11.0, rtt=0.2)
    assert e.rtt == pytest.approx(0.1 + 0.125 * 0.1)  # smoothed
    assert t.touch(node_id_of(pks[1]), 12.0)
    assert [e.public_key for e in t.bucket(255)][-1] == pks[1]
    assert not t.touch(node_id_of(b"x" * 32), 12.0)  # an id alone never adds a contact
    assert len(t) == 3
    assert t.update(Contact(b"me" * 16, "sim://me"), 1.0) == IGNORED
    assert len(t) == 3
    entries = {e.node_id: e for e in t}
    assert set(entries) == {node_id_of(pk) for pk in pks}
    assert all(e.last_seen >= 1.0 for e in entries.values())


def test_remove_promotes_the_freshest_replacement():
    me = node_id_of(b"me" * 16)
    t = RoutingTable(me, k=3, replacements=3)
    pks = keys_in_bucket(me, 255, 6)
    for j, pk in enumerate(pks):
        t.update(Contact(pk, f"sim://{j}"), float(j))
    assert t.remove(node_id_of(pks[1]))
    assert len(t) == 3
    bucket = [e.public_key for e in t.bucket(255)]
    assert bucket[0] == pks[5]  # promoted, first in line to be checked
    assert set(bucket) == {pks[0], pks[2], pks[5]}
    assert t.remove(node_id_of(pks[3]))  # from the replacement cache
    assert [e.public_key for e in t.replacements_of(255)] == [pks[4]]
    assert not t.remove(node_id_of(b"q" * 32))
    check_table(t)
    # Without replacements a removal shrinks the bucket; an empty bucket disappears.
    for e in list(t):
        t.remove(e.node_id)
    assert len(t) == 1 and t.bucket_sizes() == {255: 1}
    t.remove(next(iter(t)).node_id)
    assert len(t) == 0 and t.bucket_sizes() == {} and t.nearest_bucket() is None


def test_mark_failed_replaces_at_once_when_a_replacement_exists_else_after_stale_after():
    me = node_id_of(b"me" * 16)
    t = RoutingTable(me, k=2, replacements=1, stale_after=3)
    pks = keys_in_bucket(me, 255, 4)
    for j, pk in enumerate(pks[:3]):
        t.update(Contact(pk, f"sim://{j}"), float(j))
    a, b = node_id_of(pks[0]), node_id_of(pks[1])
    assert t.mark_failed(a)  # pks[2] waits in the cache: promoted
    assert a not in t and node_id_of(pks[2]) in t
    # No replacement left: b stays (a stale contact beats an empty bucket) until stale_after failures.
    assert not t.mark_failed(b) and t.get(b).fails == 1
    assert [e.node_id for e in t.take_checks()] == [b]
    t.touch(b, 5.0)
    assert t.get(b).fails == 0  # seen alive again: the count restarts
    assert not t.mark_failed(b) and not t.mark_failed(b)
    assert t.mark_failed(b)
    assert b not in t and len(t) == 1


def test_a_contact_that_failed_loses_its_place_to_a_newcomer():
    me = node_id_of(b"me" * 16)
    t = RoutingTable(me, k=2, replacements=2)
    pks = keys_in_bucket(me, 255, 3)
    t.update(Contact(pks[0], "a"), 0.0)
    t.update(Contact(pks[1], "b"), 1.0)
    t.mark_failed(node_id_of(pks[1]))
    assert t.update(Contact(pks[2], "c"), 2.0) == REPLACED
    assert [e.public_key for e in t.bucket(255)] == [pks[0], pks[2]]
    assert t.replacements_of(255) == []
    check_table(t)


def test_checks_are_bounded_and_skip_contacts_already_gone():
    me = node_id_of(b"me" * 16)
    t = RoutingTable(me, k=1, replacements=1, max_checks=3)
    pks = [pk for pk in keys(400, 5) if t.bucket_index(node_id_of(pk)) >= 240][:40]
    for j, pk in enumerate(pks):
        t.update(Contact(pk, "x"), float(j))
        t.update(Contact(pks[0], "x"), float(j))  # keep refreshing one
    checks = t.take_checks()
    assert len(checks) <= 3
    assert t.stats["table_checks_dropped"] > 0
    for e in checks:
        assert t.get(e.node_id) is e


def test_buckets_needing_refresh():
    me = node_id_of(b"me" * 16)
    t = RoutingTable(me)
    assert t.buckets_needing_refresh(0.0, 10.0) == []
    near = keys_in_bucket(me, 250, 1)[0]
    t.update(Contact(near, "x"), 0.0)
    assert t.nearest_bucket() == 250
    assert t.buckets_needing_refresh(0.0, 10.0) == list(range(250, 256))
    t.touch_bucket(252, 0.0)
    assert t.buckets_needing_refresh(5.0, 10.0) == [250, 251, 253, 254, 255]
    assert t.buckets_needing_refresh(10.0, 10.0) == list(range(250, 256))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        RoutingTable(b"short")
    with pytest.raises(ValueError):
        RoutingTable(bytes(32), k=0)
    t = RoutingTable(bytes(32))
    with pytest.raises(ValueError):
        t.update(Contact(b"short", "x"), 0.0)
    with pytest.raises(ValueError):
        RoutingConfig(k=0)
    with pytest.raises(ValueError):
        RoutingConfig(late_max=5.0, query_timeout=2.0)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 1 << 30), st.integers(1, 20), st.integers(0, 600), st.integers(0, 40),
       st.sampled_from(["random", "self", "member", "near"]), st.booleans(), st.booleans())
def test_closest_matches_brute_force(seed, k, n_contacts, n, target_kind, skip_failed, use_exclude):
    rng = random.Random(seed)
    me = rng.randbytes(32)
    t = RoutingTable(me, k=k, replacements=2)
    for j in range(n_contacts):
        t.update(Contact(rng.randbytes(32), f"sim://{j}"), float(j))
    members = list(t)
    for e in members[::3]:
        e.fails = 1  # as mark_failed would (without removing)
    if target_kind == "self":
        target = me
    elif target_kind == "member" and members:
        target = rng.choice(members).node_id
    elif target_kind == "near":
        target = (_int(me) ^ rng.getrandbits(rng.randrange(1, 20))).to_bytes(32, "big")
    else:
        target = rng.randbytes(32)
    exclude = rng.choice(members).node_id if use_exclude and members else None
    got = t.closest(target, n, exclude=exclude, skip_failed=skip_failed)
    want = sorted((e for e in members if e.node_id != exclude and not (skip_failed and e.fails)),
                  key=lambda e: _int(e.node_id) ^ _int(target))[:n]
    assert got == want
    check_table(t)


def test_table_memory_per_200_contacts():
    """Rough per-table memory (bytes) with ~200 contacts, as a 10,000-node simulation would hold."""
    rng = random.Random(9)
    pks = [rng.randbytes(32) for _ in range(6000)]
    ids = [node_id_of(pk) for pk in pks]
    eps = [f"tcp://10.1.{j // 250}.{j % 250}:7000" for j in range(6000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tables = []
        for m in range(5):
            t = RoutingTable(rng.randbytes(32))
            for j in range(6000):
                t.add(ids[j], pks[j], eps[j], float(j), 0.001 * j)
            tables.append(t)
        per_table = (tracemalloc.get_traced_memory()[0] - before) / 5
    finally:
        tracemalloc.stop()
    sizes = [len(t) for t in tables]
    caches = [sum(len(t.replacements_of(i)) for i in range(256)) for t in tables]
    print(f"\ntable memory: {per_table / 1024:.1f} KiB per table of {sum(sizes) / 5:.0f} contacts "
          f"+ {sum(caches) / 5:.0f} replacements (keys, endpoints, ids shared)")
    assert 150 <= sizes[0] <= 260
    assert per_table < 80 * 1024


# -- the protocol core ------------------------------------------------------------------------------

def core(i: int, config: RoutingConfig | None = None, seed: int = 0) -> RoutingCore:
    pk = random.Random(f"{seed}/{i}").randbytes(32)
    return RoutingCore(Contact(pk, f"sim://{i}"), random.Random(seed * 100003 + i), config)


def env(src: RoutingCore, dst: RoutingCore | bytes | None, typ: str, body, *, re: bytes | None = None,
        mid: bytes | None = None) -> Envelope:
    dst_id = dst.node_id if isinstance(dst, RoutingCore) else dst
    return Envelope(mid or random.randbytes(16), src.node_id, typ, body, dst_id, 0, re=re)


def fill(c: RoutingCore, n: int, seed: int = 1, now: float = 0.0) -> list[Contact]:
    rng = random.Random(seed)
    out = [Contact(rng.randbytes(32), f"sim://f{j}") for j in range(n)]
    for x in out:
        c.observe(x, now)
    return out


def test_find_node_is_answered_with_the_k_closest_and_the_asker_is_added():
    a, b = core(1), core(2)
    fill(a, 300)
    target = random.Random(5).randbytes(32)
    req = env(b, a, FIND_NODE, {"target": target, "from": [b.contact.public_key, b.contact.endpoint]})
    a.receive(req, 1.0)
    (rep,) = a.take_outgoing()
    assert rep.type == NODES and rep.dst == b.node_id and rep.src == a.node_id
    assert rep.re == req.id and rep.seq is None and rep.ep is None and rep.ts == 1000
    want = [[e.public_key, e.endpoint] for e in a.table.closest(target, K, exclude=b.node_id)]
    assert rep.body == {"nodes": want} and len(want) == K
    assert a.table.get(b.node_id) is not None  # the asker advertised itself: added
    # On the wire: the answer encodes and decodes to the same thing.
    assert decode(rep.encode()).body == rep.body


def test_find_node_from_a_key_that_is_not_the_senders_does_not_enter_the_table():
    a, b, c = core(1), core(2), core(3)
    req = env(b, a, FIND_NODE, {"target": bytes(32), "from": [c.contact.public_key, "sim://evil"]})
    a.receive(req, 1.0)
    assert a.stats["from_mismatch"] == 1
    assert len(a.table) == 0
    assert len(a.take_outgoing()) == 1  # still answered


def test_a_sender_naming_a_new_endpoint_for_itself_is_reported_and_hearsay_is_not():
    """Introduced is what lets the node switch its connection to a peer that restarted on another port;
    only the peer's own FIND_NODE may trigger it, never a contact listed by someone else."""
    a, b, c = core(1), core(2), core(3)
    pk = b.contact.public_key

    def ask(sender: RoutingCore, frm: list) -> list:
        a.receive(env(sender, a, FIND_NODE, {"target": bytes(32), "from": frm}), 1.0)
        a.take_outgoing()
        return a.take_events()

    assert ask(b, [pk, "sim://2"]) == [Introduced(Contact(pk, "sim://2"))]  # new to the table
    assert ask(b, [pk, "sim://2"]) == []  # nothing new: no event on the common path
    assert ask(b, [pk, "sim://2b"]) == [Introduced(Contact(pk, "sim://2b"))]  # restarted elsewhere
    assert a.table.get(b.node_id).endpoint == "sim://2b"
    assert ask(c, [pk, "sim://evil"]) == []  # c cannot speak for b
    assert a.table.get(b.node_id).endpoint == "sim://2b"
    # An answer listing b at another endpoint is hearsay: the table keeps b's own word, no event.
    a.observe(c.contact, 1.0)
    a.lookup(bytes(32), 1.0)
    (q,) = [e for e in a.take_outgoing() if e.dst == c.node_id]
    a.take_events()
    a.receive(env(c, a, NODES, {"nodes": [[pk, "sim://stale"]]}, re=q.id), 1.5)
    assert a.stats["unmatched"] == 0 and a.stats["malformed"] == 0  # the answer was taken in
    assert not [e for e in a.take_events() if isinstance(e, Introduced)]
    assert a.table.get(b.node_id).endpoint == "sim://2b"


def test_garbage_requests_are_counted_and_never_raise():
    a, b = core(1), core(2)
    fill(a, 50)
    before = len(a.table)
    bodies = [None, 1, "x", [], b"raw", {}, {"target": b"short"}, {"target": 5}, {"target": "0" * 32},
              {"target": bytes(33)}]
    for body in bodies:
        a.receive(env(b, a, FIND_NODE, body), 1.0)
    assert a.stats["malformed"] == len(bodies)
    a.receive(env(b, a, FIND_NODE, {"target": bytes(32), "from": ["garbage"]}), 1.0)
    a.receive(env(b, a, FIND_NODE, {"target": bytes(32), "from": [b"k" * 32, 7]}), 1.0)
    assert a.stats["contacts_bad"] == 2
    assert len(a.take_outgoing()) == 2  # answered anyway: the request itself is fine
    a.receive(env(b, b"\x01" * 32, FIND_NODE, {"target": bytes(32)}), 1.0)
    assert a.stats["misdirected"] == 1
    a.receive(env(a, a, FIND_NODE, {"target": bytes(32)}), 1.0)
    assert a.stats["from_self"] == 1
    bad_src = Envelope(b"i" * 16, b"short", FIND_NODE, {"target": bytes(32)})
    a.receive(bad_src, 1.0)
    a.receive(env(b, a, "something.else", None), 1.0)
    assert a.stats["other_types"] == 1
    assert a.take_outgoing() == []
    assert len(a.table) == before
    check_table(a.table)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([FIND_NODE, NODES, "kad.other"]),
       st.one_of(st.none(), st.integers(), st.binary(max_size=40), st.text(max_size=5),
                 st.dictionaries(st.sampled_from(["target", "from", "nodes", "x"]),
                                 st.one_of(st.none(), st.integers(), st.binary(min_size=30, max_size=34),
                                           st.lists(st.one_of(st.binary(min_size=31, max_size=33), st.text(max_size=3),
                                                              st.lists(st.one_of(st.binary(min_size=32, max_size=32),
                                                                                 st.text(max_size=4), st.integers()),
                                                                       max_size=3)),
                                                    max_size=30)),
                                 max_size=3)),
       st.booleans())
def test_fuzzed_envelopes_never_raise_or_corrupt_the_table(typ, body, match_rpc):
    a, b = core(1), core(2)
    a.observe(b.contact, 0.0)
    fill(a, 40)
    re = None
    if match_rpc:
        a.lookup(random.Random(1).randbytes(32), 0.0)
        out = [e for e in a.take_outgoing() if e.dst == b.node_id]
        re = out[0].id if out else None
    src = b
    e = env(src, a, typ, body, re=re)
    a.receive(e, 0.5)
    a.tick(5.0)
    a.take_outgoing()
    a.take_events()
    check_table(a.table)
    assert len(a.table) <= 41


def lookup_against(a: RoutingCore, peer: RoutingCore, target: bytes, now: float = 1.0) -> Envelope:
    """Start a lookup on ``a`` whose table holds only ``peer``; return the FIND_NODE sent to it."""
    a.observe(peer.contact, 0.0)
    a.lookup(target, now)
    (q,) = a.take_outgoing()
    assert q.type == FIND_NODE and q.dst == peer.node_id and q.body["target"] == target
    assert q.body["from"] == [a.contact.public_key, a.contact.endpoint]
    assert q.seq is None and q.ep is None and q.ts == int(now * 1000)
    assert a.contact_for(peer.node_id) == peer.contact
    return q


def test_garbage_and_flooded_answers_are_counted_capped_and_never_enter_the_table():
    a, b = core(1), core(2)
    target = random.Random(3).randbytes(32)
    q = lookup_against(a, b, target)
    rng = random.Random(4)
    flood = [[rng.randbytes(32), f"sim://x{j}"] for j in range(5000)]
    junk = [[a.contact.public_key, "sim://me"], flood[0], [b"bad", "x"], None, 3, [b"k" * 32, None]]
    a.receive(env(b, a, NODES, {"nodes": junk + flood}, re=q.id), 1.1)
    s = a.stats
    assert s["contacts_truncated"] == 1
    assert s["contacts_self"] == 1 and s["contacts_duplicate"] == 1 and s["contacts_bad"] == 4
    assert s["contacts_accepted"] == K - 6  # 20 read: 6 junk entries, flood[0] again, 13 new
    # Contacts listed in an answer are candidates, never table entries: only b (who answered) is there.
    assert [e.node_id for e in a.table] == [b.node_id]
    assert a.table.get(b.node_id).rtt == pytest.approx(0.1)
    queries = a.take_outgoing()
    assert len(queries) == 3 and all(e.type == FIND_NODE for e in queries)
    # Every address a query went to is known to the driver, though not in the table.
    assert all(a.contact_for(e.dst) is not None for e in queries)
    check_table(a.table)


def test_unmatched_spoofed_and_duplicate_answers_are_dropped():
    a, b, c = core(1), core(2), core(3)
    q = lookup_against(a, b, bytes(32))
    a.receive(env(b, a, NODES, {"nodes": []}, re=b"r" * 16), 1.1)  # never asked
    a.receive(env(c, a, NODES, {"nodes": []}, re=q.id), 1.1)  # asked of b, answered by c
    a.receive(env(b, a, NODES, {"nodes": []}), 1.1)  # no re at all
    assert a.stats["unmatched"] == 3
    assert len(a.table) == 1 and a.table.get(c.node_id) is None
    a.receive(env(b, a, NODES, {"nodes": []}, re=q.id), 1.2)
    (done,) = [e for e in a.take_events() if isinstance(e, LookupDone)]
    assert done.ok and [x.public_key for x in done.contacts] == [b.contact.public_key]
    a.receive(env(b, a, NODES, {"nodes": []}, re=q.id), 1.3)  # the same answer again
    assert a.stats["unmatched"] == 4


def test_a_malformed_answer_fails_the_query_and_does_not_refresh_the_peer():
    a, b = core(1), core(2)
    q = lookup_against(a, b, bytes(32))
    a.receive(env(b, a, NODES, {"nodes": "not a list"}, re=q.id), 1.5)
    assert a.stats["malformed"] == 1
    (done,) = [e for e in a.take_events() if isinstance(e, LookupDone)]
    assert not done.ok and done.contacts == [] and done.reason == "failed"
    assert a.table.get(b.node_id).last_seen == 0.0


def test_a_dead_peer_times_out_and_is_marked_failed():
    cfg = RoutingConfig(query_timeout=2.0)
    a, b = core(1, cfg), core(2, cfg)
    lookup_against(a, b, bytes(32), now=0.0)
    assert a.next_timer() == pytest.approx(cfg.late_initial)
    a.tick(cfg.late_initial)  # late, but nobody else to ask or to wait for: the lookup waits on
    assert a.take_events() == []
    assert a.next_timer() == pytest.approx(2.0)  # the hard timeout
    a.tick(2.0)
    (done,) = [e for e in a.take_events() if isinstance(e, LookupDone)]
    assert not done.ok and done.late == 1 and done.failures == 1 and done.duration == pytest.approx(2.0)
    assert a.stats["rpc_timeouts"] == 1
    assert a.table.get(b.node_id).fails == 1
    assert a.contact_for(b.node_id) == b.contact  # still in the table
    assert [e.node_id for e in a.take_checks()] == [b.node_id]


def test_a_slow_only_peer_is_still_heard():
    """Nobody else to ask: a peer slower than the late limit is waited for up to the hard timeout."""
    a, b = core(1), core(2)
    q = lookup_against(a, b, bytes(32), now=0.0)
    a.tick(a.next_timer())
    a.receive(env(b, a, NODES, {"nodes": []}, re=q.id), 0.9)
    (done,) = [e for e in a.take_events() if isinstance(e, LookupDone)]
    assert done.ok and [c.public_key for c in done.contacts] == [b.contact.public_key]


def test_lookups_share_a_target_queue_and_refuse_beyond_the_bound():
    cfg = RoutingConfig(max_lookups=1, max_queued_lookups=1)
    a, b = core(1, cfg), core(2, cfg)
    a.observe(b.contact, 0.0)
    t1, t2, t3 = (bytes([x]) * 32 for x in (1, 2, 3))
    l1 = a.lookup(t1, 0.0)
    assert a.lookup(t1, 0.0) == l1 and a.stats["lookups_merged"] == 1
    l2 = a.lookup(t2, 0.0)
    l3 = a.lookup(t3, 0.0)
    assert len({l1, l2, l3}) == 3
    assert a.stats["lookups_queued"] == 1 and a.stats["lookups_refused"] == 1
    (busy,) = a.take_events()
    assert busy.lookup_id == l3 and not busy.ok and busy.reason == "busy"
    (q1,) = a.take_outgoing()
    a.receive(env(b, a, NODES, {"nodes": []}, re=q1.id), 0.1)
    (d1,) = a.take_events()
    assert d1.lookup_id == l1 and d1.ok
    (q2,) = a.take_outgoing()  # the queued lookup started
    assert q2.body["target"] == t2
    with pytest.raises(ValueError):
        a.lookup(b"short", 0.0)


def test_join_without_any_contact_reports_failure():
    a = core(1)
    lid = a.join([], 0.0)
    done, joined = a.take_events()
    assert isinstance(done, LookupDone) and done.lookup_id == lid and done.purpose == "join"
    assert not done.ok and done.reason == "no_contacts"
    assert joined == Joined(False, 0, 0)
    with pytest.raises(ValueError):
        a.join([["not a contact"]], 0.0)


def test_the_join_lookup_asks_join_alpha_at_once_other_lookups_alpha():
    for join_alpha in (10, 3):  # 3 is the default
        a, boot = core(1, RoutingConfig(join_alpha=join_alpha)), core(2)
        a.join([boot.contact], 0.0)
        (q,) = a.take_outgoing()
        listed = [[x.public_key, x.endpoint] for x in fill(core(3), 20)]
        a.receive(env(boot, a, NODES, {"nodes": listed}, re=q.id), 0.01)
        assert len(a.take_outgoing()) == join_alpha  # the bootstrap answered: join_alpha in flight
        fill(a, 30, seed=5, now=0.02)
        a.lookup(bytes(32), 0.02)
        assert len(a.take_outgoing()) == a.config.alpha  # an ordinary lookup: alpha
    with pytest.raises(ValueError):
        RoutingConfig(join_alpha=0)


def test_a_node_that_does_not_advertise_itself_never_enters_tables():
    a, b = core(1), core(2)
    quiet = RoutingCore(Contact(b"q" * 32, "sim://q"), random.Random(3), advertise=False)
    quiet.observe(a.contact, 0.0)
    quiet.lookup(bytes(32), 0.0)
    (q,) = quiet.take_outgoing()
    assert "from" not in q.body
    a.receive(q, 0.1)
    assert len(a.table) == 0
    assert a.contact_for(quiet.node_id) is None  # the transport answers on the inbound connection
    (rep,) = a.take_outgoing()
    assert rep.dst == quiet.node_id


def test_stale_buckets_are_refreshed_on_the_refresh_timer():
    cfg = RoutingConfig(refresh_check=10.0, refresh_interval=100.0)
    a = core(1, cfg)
    fill(a, 300)
    near = a.table.nearest_bucket()
    a.lookup(a.table.random_id_in_bucket(255, random.Random(1)), 0.0)
    now = 0.0
    targets = []
    while now < 20.0:
        now = a.next_timer()
        a.tick(now)
        targets += [e.body["target"] for e in a.take_outgoing() if e.type == FIND_NODE]
        a.take_events()
    refreshed = {a.table.bucket_index(t) for t in targets}
    assert refreshed == set(range(near, 256))  # every bucket from the closest neighbour out
    assert a.stats["refreshes"] == 255 - near  # bucket 255 was touched by the first lookup
    before = a.stats["refreshes"]
    while now < 60.0:  # within refresh_interval of the refresh: nothing more
        now = a.next_timer()
        a.tick(now)
        a.take_outgoing()
        a.take_events()
    assert a.stats["refreshes"] == before
    while now < 130.0:
        now = a.next_timer()
        a.tick(now)
        a.take_outgoing()
        a.take_events()
    assert a.stats["refreshes"] > before


def test_a_joins_bucket_refreshes_stop_at_join_refresh_k_and_the_hourly_ones_at_k():
    cfg = RoutingConfig(refresh_check=10.0, refresh_interval=100.0, join_refresh_k=4)
    n = 60
    cores = [core(i, cfg, seed=9) for i in range(n)]
    mesh = Mesh(cores, seed=3)
    for i in range(1, n):
        boot = cores[mesh.rng.randrange(i)].contact
        mesh.now = i * 0.02
        mesh.call(cores[i], lambda c: c.join([boot], mesh.now))
        mesh.run(mesh.now)
    mesh.run(5.0)
    at_join = [ev for _, ev in mesh.done() if ev.purpose == "refresh"]
    assert at_join and all(ev.ok for ev in at_join)
    assert max(len(ev.contacts) for ev in at_join) == 4  # done once the 4 closest answered
    mesh.events.clear()
    mesh.run(130.0)  # the refresh timer: buckets untouched for refresh_interval get the full window
    hourly = [ev for _, ev in mesh.done() if ev.purpose == "refresh"]
    assert hourly and max(len(ev.contacts) for ev in hourly) > 4


def test_a_node_whose_table_stays_short_looks_itself_up_again():
    cores = [core(i, seed=5) for i in range(6)]
    mesh = Mesh(cores, seed=2)
    for i in range(1, 6):
        mesh.call(cores[i], lambda c: c.join([cores[0].contact], mesh.now))
    mesh.run(30.0)
    joined = mesh.done(Joined)
    assert len(joined) == 5 and all(ev.ok for _, ev in joined)  # reported once per join() call
    for c in cores:
        assert len(c.table) == 5  # everyone knows everyone
    # Fewer than k contacts: the self-lookup is repeated with a doubling delay (2, 4, 8, 16 s...).
    assert all(2 <= c.stats["rejoins"] <= 5 for c in cores[1:])
    mesh.run(300.0)
    rejoins = [c.stats["rejoins"] for c in cores]
    mesh.run(600.0)
    # ... until the delay reaches refresh_check (60 s): then about once per check.
    assert all(4 <= c.stats["rejoins"] - r <= 6 for c, r in zip(cores, rejoins))


class Mesh(CoreMesh):
    """RoutingCores wired through tests/helpers/fakenet.py's fake network."""

    def done(self, kind=LookupDone) -> list[tuple[bytes, object]]:
        return [(nid, ev) for nid, _, ev in self.events if isinstance(ev, kind)]


def truth(target: bytes, ids, k: int = K) -> list[bytes]:
    t = _int(target)
    return sorted(ids, key=lambda n: _int(n) ^ t)[:k]


def run_lookups(mesh: Mesh, n: int, rng: random.Random, alive: list[bytes]) -> list[tuple[bytes, LookupDone]]:
    mesh.events.clear()
    started = set()
    for _ in range(n):
        src = mesh.nodes[rng.choice(alive)]
        lid = mesh.call(src, lambda c: c.lookup(rng.randbytes(32), mesh.now))
        started.add((src.node_id, lid))
    mesh.run(mesh.now + 10.0)
    res = [(nid, ev) for nid, ev in mesh.done() if (nid, ev.lookup_id) in started]
    assert len(res) == n
    return res


def summarize(res, alive: list[bytes]) -> dict:
    exact = recall = first = 0.0
    for nid, ev in res:
        want = truth(ev.target, [x for x in alive if x != nid])
        got = [node_id_of(c.public_key) for c in ev.contacts]
        exact += got == want
        recall += len(set(got) & set(want)) / len(want)
        first += bool(got) and got[0] == want[0]
    rounds = sorted(ev.rounds for _, ev in res)
    durations = sorted(ev.duration for _, ev in res)
    n = len(res)
    return {
        "lookups": n, "ok": sum(ev.ok for _, ev in res) / n, "exact_k_closest": exact / n, "recall": recall / n,
        "closest_found": first / n, "rounds_p50": rounds[n // 2], "rounds_p99": rounds[min(n - 1, int(n * 0.99))],
        "duration_p50": durations[n // 2], "duration_max": durations[-1],
        "queries_avg": sum(ev.queries for _, ev in res) / n,
    }


def test_nodes_joining_one_by_one_build_tables_that_find_the_true_k_closest():
    n = 80
    cores = [core(i, seed=11) for i in range(n)]
    mesh = Mesh(cores, seed=1, wire=True)
    for i in range(1, n):
        boot = cores[mesh.rng.randrange(i)].contact
        mesh.now = i * 0.02
        mesh.call(cores[i], lambda c: c.join([boot], mesh.now))
        mesh.run(mesh.now)
    mesh.run(mesh.now + 10.0)
    joined = [ev for _, ev in mesh.done(Joined)]
    assert len(joined) == n - 1 and all(j.ok for j in joined)
    assert min(len(c.table) for c in cores) >= K
    for c in cores:
        check_table(c.table)
    ids = [c.node_id for c in cores]
    res = run_lookups(mesh, 60, random.Random(2), ids)
    s = summarize(res, ids)
    print(f"\njoin of {n} nodes: {mesh.messages / n:.0f} messages per node; lookups: {s}")
    assert s["ok"] == 1.0 and s["exact_k_closest"] == 1.0


@pytest.fixture(scope="module")
def mesh500():
    """500 cores whose tables already hold what they would after meeting every node (warm start via observe)."""
    n = 500
    cores = [core(i, seed=21) for i in range(n)]
    rng = random.Random(3)
    contacts = [c.contact for c in cores]
    for c in cores:
        order = contacts[:]
        rng.shuffle(order)
        for x in order:
            c.observe(x, 0.0)
    return Mesh(cores, seed=4)


def test_lookups_in_a_500_node_mesh_find_the_true_k_closest(mesh500):
    ids = list(mesh500.nodes)
    res = run_lookups(mesh500, 200, random.Random(5), ids)
    s = summarize(res, ids)
    print(f"\n500 nodes, all alive: {s}")
    assert s["ok"] == 1.0 and s["exact_k_closest"] == 1.0
    assert s["rounds_p99"] <= 4


def test_find_returns_once_the_node_answers_and_only_shares_compatible_lookups(mesh500):
    ids = list(mesh500.nodes)
    rng = random.Random(8)
    mesh500.events.clear()
    started = {}
    for _ in range(100):
        src, tgt = rng.sample(ids, 2)
        lid = mesh500.call(mesh500.nodes[src], lambda c: c.lookup(tgt, mesh500.now, find=True))
        started[(src, lid)] = tgt
    mesh500.run(mesh500.now + 10.0)
    res = [ev for nid, ev in mesh500.done() if (nid, ev.lookup_id) in started]
    assert len(res) == 100
    assert all(ev.ok and ev.target in [node_id_of(c.public_key) for c in ev.contacts] for ev in res)
    full = summarize(run_lookups(mesh500, 100, random.Random(9), ids), ids)
    found_q = sum(ev.queries for ev in res) / len(res)
    print(f"\nfind: {found_q:.1f} queries per lookup, full lookups: {full['queries_avg']:.1f}")
    assert found_q < full["queries_avg"] / 3
    # A find shares a running full lookup of the same id; a full lookup never shares a find.
    a = mesh500.nodes[ids[0]]
    l_full = a.lookup(ids[1], mesh500.now)
    assert a.lookup(ids[1], mesh500.now, find=True) == l_full
    l_find = a.lookup(ids[2], mesh500.now, find=True)
    assert a.lookup(ids[2], mesh500.now, find=True) == l_find
    assert a.lookup(ids[2], mesh500.now) != l_find
    mesh500.flush(a)
    mesh500.run(mesh500.now + 10.0)


def test_with_20_percent_dead_no_lookup_waits_a_full_timeout(mesh500):
    """The ``kademlia`` package (k=20, alpha=3) makes 23-50% of its lookups wait a full 5 s timeout once
    20% of nodes are stopped. Here a silent peer stops counting after the late deadline (srtt + 4 rttvar,
    a few RTTs), so no lookup takes anywhere near the hard timeout."""
    ids = list(mesh500.nodes)
    rng = random.Random(6)
    dead = set(rng.sample(ids, len(ids) // 5))
    alive = [x for x in ids if x not in dead]
    mesh500.dead = dead
    timeout = next(iter(mesh500.nodes.values())).config.query_timeout
    try:
        first = summarize(run_lookups(mesh500, 200, rng, alive), alive)
        again = summarize(run_lookups(mesh500, 200, rng, alive), alive)  # tables have learned who failed
    finally:
        mesh500.dead = set()
    print(f"\n500 nodes, 20% dead (first batch): {first}\n500 nodes, 20% dead (second batch): {again}")
    for s in (first, again):
        assert s["ok"] == 1.0
        assert s["duration_max"] < timeout
        assert s["closest_found"] >= 0.99
    assert first["recall"] > 0.85 and again["recall"] > 0.95



class LinkedMesh(LinkedCoreMesh, Mesh):
    """A Mesh whose cores are told which nodes they hold a connection to (tests/helpers/fakenet.py)."""


def test_a_joins_bucket_refreshes_open_at_most_join_refresh_dials_new_connections_each():
    """With ``linked`` set, each refresh that ends a join asks at most join_refresh_dials nodes it holds no
    connection to and skips the rest; the join's self-lookup is not limited, and every join still ends
    with a table that finds the true k closest."""
    n = 80
    runs = {}
    for dials in (1, None):
        cfg = RoutingConfig(join_refresh_dials=dials or 0)
        cores = [core(i, cfg, seed=9) for i in range(n)]
        mesh = LinkedMesh(cores, seed=3) if dials is not None else Mesh(cores, seed=3)
        for i in range(1, n):
            boot = cores[mesh.rng.randrange(i)].contact
            mesh.now = i * 0.02
            mesh.call(cores[i], lambda c: c.join([boot], mesh.now))
            mesh.run(mesh.now)
        mesh.run(mesh.now + 10.0)
        refreshes = [ev for _, ev in mesh.done() if ev.purpose == "refresh"]
        joins = [ev for _, ev in mesh.done() if ev.purpose == "join"]
        assert refreshes and joins and all(ev.ok for ev in joins)
        runs[dials] = (refreshes, joins, cores, mesh)
    limited, _, cores, mesh = runs[1]
    assert max(ev.dials for ev in limited) == 1 and all(ev.dials <= 1 for ev in limited)
    assert sum(c.stats["candidates_unlinked_skipped"] for c in cores) > 0
    free = runs[None][0]
    assert all(ev.dials == 0 for ev in free)  # no linked callable: nothing counted, nothing limited
    assert sum(ev.queries for ev in limited) < sum(ev.queries for ev in free)
    res = summarize(run_lookups(mesh, 100, random.Random(4), [c.node_id for c in cores]),
                    [c.node_id for c in cores])
    assert res["ok"] == 1.0 and res["closest_found"] == 1.0 and res["recall"] > 0.95
