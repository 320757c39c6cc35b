"""Unit tests of the DHT records/providers core (zmqagents.core.dht), on a fake clock.

No sockets: nodes (a RoutingCore and a DhtCore each, with real Ed25519 identities) exchange envelopes
through the fake network of tests/helpers/fakenet.py with per-message latency, like tests/core/test_routing.py.
Bad input from peers is fed straight into receive(). The simulator test is in tests/sim/test_sim_dht.py.
"""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqagents.core.dht import (
    ADD_PROVIDER,
    FIND_PROVIDERS,
    FIND_VALUE,
    PROVIDERS,
    STORE,
    STORED,
    VALUE,
    DhtConfig,
    DhtCore,
    DhtDone,
    RecordError,
    key_for,
    make_provider,
    make_record,
    parse_provider,
    parse_record,
)
from zmqagents.core.routing import RoutingConfig, RoutingCore
from zmqagents.envelope import Envelope
from zmqagents.identity import Identity

from helpers.fakenet import CoreMesh

T0 = 1_700_000_000.0  # the cores' clock is Unix time


def ident(name) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"dht test {name}".encode()).digest())


class Peer:
    """One node: routing + dht, driven like node.py drives them."""

    def __init__(self, i, cfg: DhtConfig | None = None, rcfg: RoutingConfig | None = None, advertise: bool = True):
        self.identity = ident(i)
        self.contact = self.identity.contact(f"tcp://10.0.{i // 250}.{i % 250 + 1}:7000")
        self.routing = RoutingCore(self.contact, random.Random(i), rcfg, advertise=advertise)
        self.dht = DhtCore(self.routing, self.identity, random.Random(1000 + i), cfg)
        self.node_id = self.routing.node_id

    def receive(self, e: Envelope, now: float) -> None:
        if e.type.startswith("kad."):
            self.routing.receive(e, now)
        elif e.type.startswith("dht."):
            self.dht.receive(e, now)

    def tick(self, now: float) -> None:
        for c in (self.routing, self.dht):
            t = c.next_timer()
            if t is not None and t <= now:
                c.tick(now)

    def next_timer(self):
        ts = [t for t in (self.routing.next_timer(), self.dht.next_timer()) if t is not None]
        return min(ts) if ts else None

    def take_outgoing(self):
        return self.routing.take_outgoing() + self.dht.take_outgoing()

    def take_events(self):
        return self.routing.take_events() + self.dht.take_events()


class Mesh(CoreMesh):
    """Peers wired through tests/helpers/fakenet.py's fake network, from T0, each envelope through the wire format."""

    def __init__(self, peers: list[Peer], seed: int = 0, latency=(0.005, 0.03), wire: bool = True):
        super().__init__(peers, seed, latency, wire, start=T0)

    def done(self, op_id: int, p: Peer) -> DhtDone | None:
        for nid, _, ev in self.events:
            if nid == p.node_id and isinstance(ev, DhtDone) and ev.op_id == op_id:
                return ev
        return None

    def kill(self, nid: bytes) -> None:
        """Crash a node, and let every survivor's liveness layer declare it dead (as SWIM would)."""
        self.dead.add(nid)
        for p in self.nodes.values():
            if p.node_id not in self.dead:
                p.routing.forget(nid)


def build_mesh(n: int, cfg: DhtConfig | None = None, seed: int = 0) -> Mesh:
    peers = [Peer(i, cfg) for i in range(n)]
    mesh = Mesh(peers, seed)
    for j, p in enumerate(peers[1:], 1):
        boot = [peers[random.Random(seed + j).randrange(j)].contact]
        mesh.call(p, lambda q: q.routing.join(boot, mesh.now))
        mesh.run(mesh.now + 0.05)
    mesh.run(mesh.now + 5.0)
    return mesh


def stored_env(src: Peer, dst: Peer, rec_wire, typ=STORE, key="rec") -> Envelope:
    return Envelope(random.randbytes(16), src.node_id, typ, {key: rec_wire}, dst.node_id, 0)


def answer(p: Peer) -> dict:
    out = [e for e in p.dht.take_outgoing() if e.type == STORED]
    assert len(out) == 1, out
    return out[0].body


# -- records -------------------------------------------------------------------------------------------

def test_key_for_hashes_names_and_passes_32_byte_keys():
    assert key_for("alpha") == hashlib.sha256(b"alpha").digest()
    k = bytes(range(32))
    assert key_for(k) == k
    assert key_for(b"short") == hashlib.sha256(b"short").digest()
    with pytest.raises(TypeError):
        key_for(5)


def test_record_round_trip_and_tamper_detection():
    a = ident("a")
    rec = make_record(a, key_for("k"), {"x": [1, 2, "three"]}, 7, int(T0) + 100)
    wire = msgpack.unpackb(msgpack.packb(rec.to_wire(), use_bin_type=True), raw=False)
    back = parse_record(wire)
    assert (back.key, back.value, back.seq, back.expires, back.publisher) == (rec.key, rec.value, 7, rec.expires,
                                                                               a.node_id)
    for field, value in (("v", {"x": [1, 2, "four"]}), ("seq", 8), ("exp", rec.expires + 1), ("k", key_for("j"))):
        bad = dict(wire, **{field: value})
        with pytest.raises(RecordError) as err:
            parse_record(bad)
        assert err.value.reason == "bad_signature"


def test_provider_round_trip_and_binding_to_the_signing_key():
    a, b = ident("a"), ident("b")
    p = make_provider(a, key_for("cap"), "tcp://127.0.0.1:9", int(T0) + 60, {"cost": 1})
    assert parse_provider(p.to_wire()).node_id == a.node_id
    # B signs an entry that names A's contact: the signature does not verify with the named key.
    forged = make_provider(b, key_for("cap"), "tcp://127.0.0.1:9", int(T0) + 60)
    wire = forged.to_wire()
    wire["c"] = [a.public_key, "tcp://127.0.0.1:9"]
    with pytest.raises(RecordError) as err:
        parse_provider(wire)
    assert err.value.reason == "bad_signature"


def two_peers(cfg=None):
    a, b = Peer(1, cfg), Peer(2, cfg)
    return a, b


def test_store_accepts_a_valid_record_and_answers_find_value():
    a, b = two_peers()
    rec = make_record(a.identity, key_for("k"), "v", 1, int(T0) + 100)
    b.dht.receive(stored_env(a, b, rec.to_wire()), T0)
    assert answer(b) == {"ok": True}
    assert b.dht.held(rec.key).value == "v"
    b.dht.receive(Envelope(b"q" * 16, a.node_id, FIND_VALUE, {"key": rec.key}, b.node_id, 0), T0)
    out = b.dht.take_outgoing()
    assert out[0].type == VALUE and out[0].re == b"q" * 16
    assert parse_record(out[0].body["rec"]).value == "v"


def test_bad_records_are_refused_and_counted():
    cfg = DhtConfig(max_record_bytes=512)
    a, b = two_peers(cfg)
    c = ident("c")
    key = key_for("k")
    s = b.dht.stats
    now = T0

    def offer(wire):
        b.dht.receive(stored_env(a, b, wire), now)
        return answer(b)

    # oversize
    assert offer(make_record(a.identity, key, "x" * 600, 1, int(now) + 100).to_wire()) == {"ok": False, "why": "oversize"}
    # expired, and too far in the future
    assert offer(make_record(a.identity, key, "v", 1, int(now) - 1).to_wire())["why"] == "expired"
    far = int(now + cfg.max_ttl + cfg.max_clock_skew) + 5
    assert offer(make_record(a.identity, key, "v", 1, far).to_wire())["why"] == "future"
    # a bad signature, and a signature by a key that is not the claimed publisher's
    wire = make_record(a.identity, key, "v", 1, int(now) + 100).to_wire()
    wire["sig"] = bytes(64)
    assert offer(wire)["why"] == "bad_signature"
    wire = make_record(c, key, "v", 1, int(now) + 100).to_wire()
    wire["pk"] = a.identity.public_key
    assert offer(wire)["why"] == "bad_signature"
    # garbage fields
    good = make_record(a.identity, key, "v", 5, int(now) + 100).to_wire()
    garbage = [None, 5, "rec", [], {}, dict(good, k=b"short"), dict(good, pk=7), dict(good, seq=-1),
               dict(good, seq=True), dict(good, exp="soon"), dict(good, sig=b"x" * 63), dict(good, seq=1 << 64),
               {k: v for k, v in good.items() if k != "v"}]
    for g in garbage:
        assert offer(g)["why"] == "malformed", g
    assert b.dht.records == 0
    # the good one, then an equal-seq conflict, an older seq, and another publisher's record for the key
    assert offer(good) == {"ok": True}
    assert offer(make_record(a.identity, key, "other", 5, int(now) + 100).to_wire())["why"] == "conflict"
    assert offer(make_record(a.identity, key, "older", 4, int(now) + 100).to_wire())["why"] == "stale"
    assert offer(make_record(c, key, "mine", 9, int(now) + 100).to_wire())["why"] == "owner"
    assert b.dht.held(key).value == "v"
    # the same record again is a duplicate; a newer one replaces it; a later expiry of the same value refreshes it
    assert offer(good) == {"ok": True}
    assert offer(make_record(a.identity, key, "v2", 6, int(now) + 100).to_wire()) == {"ok": True}
    assert offer(make_record(a.identity, key, "v2", 6, int(now) + 200).to_wire()) == {"ok": True}
    assert b.dht.held(key).expires == int(now) + 200
    assert (s["refused_oversize"], s["refused_expired"], s["refused_future"], s["refused_bad_signature"],
            s["refused_malformed"], s["refused_conflict"], s["refused_stale"], s["refused_owner"]) == \
           (1, 1, 1, 2, len(garbage), 1, 1, 1)
    assert (s["stored"], s["updated"], s["duplicates"]) == (1, 2, 1)
    # once the held record expires, another publisher may take the key
    later = int(now) + 201
    b.dht.receive(stored_env(a, b, make_record(c, key, "mine", 1, later + 100).to_wire()), later)
    assert answer(b) == {"ok": True}


def test_a_store_flood_from_one_peer_is_bounded_and_counted():
    cfg = DhtConfig(store_rate=10, store_burst=50, max_items=10_000)
    a, b = two_peers(cfg)
    recs = [make_record(a.identity, key_for(f"k{i}"), i, 1, int(T0) + 100).to_wire() for i in range(300)]
    answered = 0
    for w in recs:
        b.dht.receive(stored_env(a, b, w), T0)
        answered += sum(1 for e in b.dht.take_outgoing() if e.type == STORED)
    assert b.dht.records == 50 and answered == 50
    assert b.dht.stats["refused_rate"] == 250
    # the bucket refills at store_rate: one second later, ten more
    for w in recs[:20]:
        b.dht.receive(stored_env(a, b, w), T0 + 1.0)
    assert b.dht.stats["refused_rate"] == 260
    # another peer is not affected by a's flood
    c = Peer(3, cfg)
    b.dht.receive(stored_env(c, b, make_record(c.identity, key_for("c"), 1, 1, int(T0) + 100).to_wire()), T0 + 1.0)
    assert b.dht.held(key_for("c")) is not None


def test_a_full_store_evicts_the_key_farthest_from_us_and_refuses_a_farther_newcomer():
    cfg = DhtConfig(max_items=10)
    a, b = two_peers(cfg)
    me = int.from_bytes(b.node_id, "big")
    keys = [key_for(f"k{i}") for i in range(40)]
    keys.sort(key=lambda k: int.from_bytes(k, "big") ^ me)
    near, far = keys[:10], keys[10:]
    for k in far[:10]:
        b.dht.receive(stored_env(a, b, make_record(a.identity, k, 1, 1, int(T0) + 100).to_wire()), T0)
        assert answer(b) == {"ok": True}
    # ten closer keys push the ten farther ones out, farthest first
    for i, k in enumerate(near):
        b.dht.receive(stored_env(a, b, make_record(a.identity, k, 1, 1, int(T0) + 100).to_wire()), T0)
        assert answer(b) == {"ok": True}
        assert b.dht.held(far[9 - i]) is None
    assert b.dht.records == 10 and b.dht.stats["evicted"] == 10
    # a key farther than everything held is refused
    b.dht.receive(stored_env(a, b, make_record(a.identity, far[-1], 1, 1, int(T0) + 100).to_wire()), T0)
    assert answer(b) == {"ok": False, "why": "full"}
    assert b.dht.stats["refused_full"] == 1
    # the byte bound works the same way
    cfg2 = DhtConfig(max_store_bytes=1000)
    a2, b2 = two_peers(cfg2)
    for i in range(40):
        b2.dht.receive(stored_env(a2, b2, make_record(a2.identity, key_for(f"b{i}"), "x" * 100, 1,
                                                      int(T0) + 100).to_wire()), T0)
        b2.dht.take_outgoing()
    size = make_record(a2.identity, key_for("b0"), "x" * 100, 1, int(T0) + 100).size  # every record's
    assert b2.dht.store_bytes <= 1000 and b2.dht.records == 1000 // size
    assert b2.dht.stats["evicted"] + b2.dht.stats["refused_full"] == 40 - b2.dht.records


def test_expired_items_are_purged_on_the_check_timer():
    cfg = DhtConfig(replicate_check=1.0)
    a, b = two_peers(cfg)
    b.dht.receive(stored_env(a, b, make_record(a.identity, key_for("k"), 1, 1, int(T0) + 5).to_wire()), T0)
    b.dht.receive(stored_env(a, b, make_provider(a.identity, key_for("p"), a.contact.endpoint, int(T0) + 5).to_wire(),
                             ADD_PROVIDER, "prov"), T0)
    assert b.dht.records == 1 and b.dht.provider_entries == 1
    now = T0
    while b.dht.next_timer() is not None and now < T0 + 10:
        now = b.dht.next_timer()
        b.dht.tick(now)
    assert b.dht.records == 0 and b.dht.provider_entries == 0 and b.dht.store_bytes == 0
    assert b.dht.stats["expired"] == 2
    assert b.dht.next_timer() is None  # nothing held, nothing published: no timer


def test_provider_entries_are_bounded_per_key_and_refreshed_by_later_expiry():
    cfg = DhtConfig(max_providers_per_key=3)
    a, b = two_peers(cfg)
    key = key_for("cap")
    provs = [ident(f"p{i}") for i in range(5)]

    def offer(who, exp):
        b.dht.receive(stored_env(a, b, make_provider(who, key, "tcp://127.0.0.1:1", exp).to_wire(), ADD_PROVIDER,
                                 "prov"), T0)
        return answer(b)

    for i in range(3):
        assert offer(provs[i], int(T0) + 100 + i) == {"ok": True}
    # full: a newcomer that outlives the earliest-expiring entry takes its place, else it is refused
    assert offer(provs[3], int(T0) + 50) == {"ok": False, "why": "providers_full"}
    assert offer(provs[3], int(T0) + 500) == {"ok": True}
    held = {p.node_id for p in b.dht.held_providers(key)}
    assert held == {provs[1].node_id, provs[2].node_id, provs[3].node_id}
    # a refresh (later expiry) replaces the provider's entry; an older one is stale
    assert offer(provs[1], int(T0) + 900) == {"ok": True}
    assert offer(provs[1], int(T0) + 800) == {"ok": False, "why": "stale"}
    assert b.dht.provider_entries == 3
    assert b.dht.stats["providers_full"] == 1 and b.dht.stats["evicted"] == 1
    # bad signature
    w = make_provider(provs[4], key, "tcp://127.0.0.1:1", int(T0) + 100).to_wire()
    w["c"] = [provs[0].public_key, "tcp://127.0.0.1:1"]
    b.dht.receive(stored_env(a, b, w, ADD_PROVIDER, "prov"), T0)
    assert answer(b)["why"] == "bad_signature"


def test_a_provider_declared_dead_is_forgotten_by_its_holders():
    a, b = two_peers()
    provs = [ident(f"q{i}") for i in range(3)]
    for i, who in enumerate(provs):
        for name in ("cap1", "cap2"):
            b.dht.receive(stored_env(a, b, make_provider(who, key_for(name), "tcp://127.0.0.1:1",
                                                         int(T0) + 100).to_wire(), ADD_PROVIDER, "prov"), T0)
            assert answer(b) == {"ok": True}
    size = b.dht.store_bytes
    assert b.dht.forget(provs[1].node_id) == 2
    assert b.dht.forget(provs[1].node_id) == 0
    assert {p.node_id for p in b.dht.held_providers(key_for("cap1"))} == {provs[0].node_id, provs[2].node_id}
    assert b.dht.provider_entries == 4 and b.dht.store_bytes == size * 4 // 6
    assert b.dht.stats["providers_forgotten"] == 2
    # A holder that did not hear of the death pushes its copy back (re-replication): refused as stale,
    # so the dead provider is not listed again; an entry the provider signs anew (it was alive) is taken.
    for name in ("cap1", "cap2"):
        b.dht.receive(stored_env(a, b, make_provider(provs[1], key_for(name), "tcp://127.0.0.1:1",
                                                     int(T0) + 100).to_wire(), ADD_PROVIDER, "prov"), T0 + 1)
        assert answer(b) == {"ok": False, "why": "stale"}
    assert provs[1].node_id not in {p.node_id for p in b.dht.held_providers(key_for("cap1"))}
    b.dht.receive(stored_env(a, b, make_provider(provs[1], key_for("cap1"), "tcp://127.0.0.1:1",
                                                 int(T0) + 160).to_wire(), ADD_PROVIDER, "prov"), T0 + 60)
    assert answer(b) == {"ok": True}
    assert provs[1].node_id in {p.node_id for p in b.dht.held_providers(key_for("cap1"))}


@settings(max_examples=150, deadline=None)
@given(typ=st.sampled_from([FIND_VALUE, FIND_PROVIDERS, STORE, ADD_PROVIDER, VALUE, PROVIDERS, STORED, "dht.x"]),
       body=st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=10),
                         lambda ch: st.lists(ch, max_size=4) | st.dictionaries(
                             st.sampled_from(["key", "rec", "prov", "nodes", "provs", "ok", "why", "from", "k", "v",
                                              "pk", "seq", "exp", "sig", "c", "m"]), ch, max_size=5),
                         max_leaves=12))
def test_fuzzed_envelopes_never_raise(typ, body):
    a, b = two_peers()
    b.dht.receive(Envelope(random.randbytes(16), a.node_id, typ, body, b.node_id, 0, re=random.randbytes(16)), T0)
    b.dht.tick(T0 + 100)
    assert b.dht.records == 0


def test_answers_that_nobody_asked_for_are_dropped():
    a, b = two_peers()
    rec = make_record(a.identity, key_for("k"), 1, 1, int(T0) + 100)
    for typ, body in ((VALUE, {"nodes": [], "rec": rec.to_wire()}), (STORED, {"ok": True})):
        b.dht.receive(Envelope(random.randbytes(16), a.node_id, typ, body, b.node_id, 0, re=random.randbytes(16)), T0)
    assert b.dht.stats["unmatched"] == 2 and b.dht.records == 0


# -- operations over a mesh -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mesh60():
    return build_mesh(60)


def run_op(mesh: Mesh, p: Peer, fn, wait: float = 5.0) -> DhtDone:
    oid = mesh.call(p, fn)
    deadline = mesh.now + wait
    while mesh.now < deadline:
        ev = mesh.done(oid, p)
        if ev is not None:
            return ev
        mesh.run(mesh.now + 0.05)
    raise AssertionError("operation did not finish")


def closest_ids(mesh: Mesh, key: bytes, n: int) -> list[bytes]:
    alive = [nid for nid in mesh.nodes if nid not in mesh.dead]
    return sorted(alive, key=lambda nid: int.from_bytes(nid, "big") ^ int.from_bytes(key, "big"))[:n]


def test_put_on_one_node_get_on_another(mesh60):
    peers = list(mesh60.nodes.values())
    key = key_for("greeting")
    done = run_op(mesh60, peers[3], lambda p: p.dht.put(key, {"hello": "world"}, mesh60.now, ttl=600))
    assert done.ok and done.stored == 3, done
    holders = [nid for nid, p in mesh60.nodes.items() if p.dht.held(key) is not None]
    assert sorted(holders) == sorted(closest_ids(mesh60, key, 3))
    got = run_op(mesh60, peers[40], lambda p: p.dht.get(key, mesh60.now))
    assert got.ok and got.record.value == {"hello": "world"} and got.record.publisher == peers[3].node_id
    assert got.rounds <= 3
    missing = run_op(mesh60, peers[41], lambda p: p.dht.get(key_for("nobody put this"), mesh60.now))
    assert missing.ok and missing.record is None and missing.reason == "not_found"


def test_providers_are_found_and_a_provider_that_stops_refreshing_lapses():
    cfg = DhtConfig(provider_ttl=60, republish_interval=20, replicate_check=2)
    mesh = build_mesh(40, cfg, seed=3)
    peers = list(mesh.nodes.values())
    key = key_for("summarize")
    for p in peers[:4]:
        assert run_op(mesh, p, lambda q: q.dht.provide(key, mesh.now, meta={"cost": 1})).ok
    found = run_op(mesh, peers[30], lambda q: q.dht.find_providers(key, mesh.now))
    assert found.ok and {x.node_id for x in found.providers} == {p.node_id for p in peers[:4]}
    assert all(x.meta == {"cost": 1} and x.contact == peers[i].contact
               for x in found.providers for i in range(4) if x.node_id == peers[i].node_id)
    nothing = run_op(mesh, peers[30], lambda q: q.dht.find_providers(key_for("nobody"), mesh.now))
    assert nothing.ok and nothing.providers == []
    # peers[0] stops providing; the others keep refreshing past the entry lifetime
    assert peers[0].dht.unprovide(key)
    mesh.run(mesh.now + 100)
    found = run_op(mesh, peers[31], lambda q: q.dht.find_providers(key, mesh.now))
    assert {x.node_id for x in found.providers} == {p.node_id for p in peers[1:4]}


def test_records_survive_the_death_of_every_holder_and_the_publisher():
    cfg = DhtConfig(replicate_check=2.0, republish_interval=1000, provider_ttl=2000)
    mesh = build_mesh(50, cfg, seed=5)
    peers = list(mesh.nodes.values())
    keys = [key_for(f"key{i}") for i in range(6)]
    publisher = peers[7]
    for i, k in enumerate(keys):
        assert run_op(mesh, publisher, lambda p: p.dht.put(k, i, mesh.now)).ok
    mesh.kill(publisher.node_id)
    original = {k: {nid for nid, p in mesh.nodes.items() if p.dht.held(k) is not None} for k in keys}

    def holders(k):
        return {nid for nid, p in mesh.nodes.items() if nid not in mesh.dead and p.dht.held(k) is not None}

    # Rounds that each kill the closest holder of every key, but never two holders of one key at once, with
    # time (a few replicate_check periods) for re-replication in between, until no original holder is left.
    for _ in range(12):
        if not any(holders(k) & original[k] for k in keys):
            break
        victims: set[bytes] = set()
        for k in keys:
            nid = min(holders(k), key=lambda n: int.from_bytes(n, "big") ^ int.from_bytes(k, "big"))
            if all(len(holders(j) & (victims | {nid})) <= 1 for j in keys):
                victims.add(nid)
        for nid in victims:
            mesh.kill(nid)
        mesh.run(mesh.now + 8.0)
    assert not any(holders(k) & original[k] for k in keys)
    for k in keys:
        assert holders(k) == set(closest_ids(mesh, k, 3)), k.hex()
    reader = next(p for p in peers if p.node_id not in mesh.dead)
    for i, k in enumerate(keys):
        got = run_op(mesh, reader, lambda p: p.dht.get(k, mesh.now))
        assert got.ok and got.record is not None and got.record.value == i
    assert sum(p.dht.stats["replicated"] for p in peers) > 0


def test_gets_never_wait_a_hard_timeout_with_20_percent_dead(mesh60):
    peers = list(mesh60.nodes.values())
    keys = [key_for(f"d{i}") for i in range(10)]
    for i, k in enumerate(keys):
        assert run_op(mesh60, peers[i], lambda p: p.dht.put(k, i, mesh60.now)).ok
    rng = random.Random(9)
    victims = rng.sample([p.node_id for p in peers[10:]], 12)
    mesh60.dead.update(victims)  # nobody knows yet: tables still list them
    try:
        durations = []
        for i, k in enumerate(keys):
            got = run_op(mesh60, peers[i + 10] if peers[i + 10].node_id not in mesh60.dead else peers[i],
                         lambda p: p.dht.get(k, mesh60.now))
            if got.record is None:
                # every holder may be among the dead; then not found is the honest answer
                assert all(nid in mesh60.dead for nid, p in mesh60.nodes.items() if p.dht.held(k) is not None)
            durations.append(got.duration)
        assert max(durations) < RoutingConfig().query_timeout
    finally:
        mesh60.dead.difference_update(victims)


def test_a_node_that_does_not_advertise_itself_stores_nothing_on_itself():
    mesh = build_mesh(20, seed=7)
    client = Peer(99, advertise=False)
    mesh.nodes[client.node_id] = client
    boot = [next(iter(mesh.nodes.values())).contact]
    mesh.call(client, lambda p: p.routing.join(boot, mesh.now))
    mesh.run(mesh.now + 3)
    assert all(client.node_id not in p.routing.table for p in mesh.nodes.values() if p is not client)
    done = run_op(mesh, client, lambda p: p.dht.put(key_for("x"), 1, mesh.now))
    assert done.ok and done.stored == 3 and client.dht.records == 0
    with pytest.raises(ValueError):
        client.dht.provide(key_for("x"), mesh.now)


def test_put_without_any_contact_fails_and_operations_beyond_the_queue_are_busy():
    cfg = DhtConfig(max_ops=1, max_queued_ops=1)
    a = Peer(1, cfg)
    oid = a.dht.put(key_for("k"), 1, T0)
    ev = [e for e in a.dht.take_events() if e.op_id == oid][0]
    assert not ev.ok and ev.reason == "no_contacts"
    with pytest.raises(ValueError):
        a.dht.put(key_for("k"), "x" * 10_000, T0)
    with pytest.raises(ValueError):
        a.dht.put(key_for("k"), 1, T0, ttl=0)
    with pytest.raises(ValueError):
        a.dht.get(b"short", T0)
    # a peer that never answers keeps the first op running: the second waits, the third is refused
    a.routing.observe(Peer(2).contact, T0)
    a.dht.get(key_for("a"), T0)
    a.dht.get(key_for("b"), T0)
    third = a.dht.get(key_for("c"), T0)
    ev = [e for e in a.dht.take_events() if e.op_id == third][0]
    assert not ev.ok and ev.reason == "busy"


def test_a_vouched_record_takes_its_key_from_a_squatter_and_is_never_replaced():
    """Keys an authority vouches for (a fleet's revocation lists: the CA signs them, any member stores them)
    are predictable, so someone may store garbage there first. The store's vouch gives the key to the
    vouched value whoever was first, and nothing unvouched replaces it afterwards, not even from the
    publisher that stored the vouched value."""
    cfg = DhtConfig()
    a, b = two_peers(cfg)
    squatter, honest = ident("squatter"), ident("honest")
    key = key_for("revocation list 1")
    s = b.dht.stats
    now = T0
    b.dht.store.vouch = lambda k, v: k == key and v == b"signed by the CA"

    def offer(identity, value, seq=1, exp=100):
        b.dht.receive(stored_env(a, b, make_record(identity, key, value, seq, int(now) + exp).to_wire()), now)
        return answer(b)

    assert offer(squatter, b"garbage") == {"ok": True}  # first come: nothing vouches for or against it yet
    assert offer(honest, b"signed by the CA") == {"ok": True}
    assert b.dht.held(key).value == b"signed by the CA" and s["vouched_over"] == 1
    assert offer(squatter, b"garbage", seq=9)["why"] == "vouched"  # the squatter cannot take it back
    assert offer(honest, b"garbage", seq=2)["why"] == "vouched"  # nor can its own publisher swap it
    assert offer(squatter, b"signed by the CA")["why"] == "owner"  # another copy of it: held already
    assert offer(honest, b"signed by the CA", exp=200) == {"ok": True}  # its publisher refreshes it
    assert b.dht.held(key).value == b"signed by the CA" and b.dht.held(key).expires == int(now) + 200
    assert (s["refused_vouched"], s["refused_owner"]) == (2, 1)
    # without a vouch, first come first served as before
    other = key_for("another key")
    b.dht.receive(stored_env(a, b, make_record(squatter, other, b"garbage", 1, int(now) + 100).to_wire()), now)
    assert answer(b) == {"ok": True}
    b.dht.receive(stored_env(a, b, make_record(honest, other, b"signed by the CA", 1, int(now) + 100).to_wire()), now)
    assert answer(b)["why"] == "owner"
