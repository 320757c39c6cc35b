"""The broadcast core (Plumtree) alone: trees, repair, and every kind of bad input it must refuse.

Cores are wired by tests/helpers/fakenet.py (a fake clock, random latency, real envelopes through
encode/decode); signers are real Ed25519 keys.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from zmqagents.core.broadcast import Broadcast, BroadcastConfig, Delivered, Gap, PublishError
from zmqagents.core.broadcast_wire import GRAFT, IHAVE, MSG, PRUNE, WANT, make_message, message_id
from zmqagents.envelope import Envelope
from zmqagents.identity import Identity

from helpers.fakenet import CoreMesh


def ident(i: int, tag: str = "n") -> Identity:
    return Identity.from_seed(hashlib.sha256(f"bcast-test/{tag}/{i}".encode()).digest())


def make_mesh(n: int, degree: int = 4, seed: int = 1, config: BroadcastConfig | None = None,
              latency=(0.002, 0.01)) -> tuple[CoreMesh, list[Broadcast]]:
    rng = random.Random(seed)
    ids = [ident(i) for i in range(n)]
    cores = [Broadcast(x.node_id, x, 1000, random.Random(i), config) for i, x in enumerate(ids)]
    # a ring (connected) plus random chords: symmetric enough to look like a table sample
    for i, c in enumerate(cores):
        peers = {cores[(i + 1) % n].node_id, cores[(i - 1) % n].node_id}
        while len(peers) < min(degree, n - 1):
            j = rng.randrange(n)
            if j != i:
                peers.add(cores[j].node_id)
        c.set_sample(peers, 0.0)
    return CoreMesh(cores, seed=seed, latency=latency, wire=True), cores


def delivered(mesh: CoreMesh) -> list[tuple[bytes, Delivered]]:
    return [(nid, ev) for nid, _t, ev in mesh.events if type(ev) is Delivered]


def publish(mesh: CoreMesh, core: Broadcast, topic: str, data) -> object:
    return mesh.call(core, lambda c: c.publish(topic, data, mesh.now))


def test_every_node_delivers_each_message_once_and_the_tree_prunes_to_low_redundancy():
    mesh, cores = make_mesh(40)
    for k in range(20):
        publish(mesh, cores[k % 7], "", {"n": k})
        mesh.run(mesh.now + 0.5)
    got = delivered(mesh)
    assert len(got) == 40 * 20
    assert len({(nid, ev.id) for nid, ev in got}) == len(got)  # at most once
    # the first message floods every link; after the prunes one tree carries them: payloads received
    # per node per message fall to about one
    before = sum(c.stats["payloads_received"] for c in cores)
    for k in range(10):
        publish(mesh, cores[k], "", k)
        mesh.run(mesh.now + 0.5)
    per_delivery = (sum(c.stats["payloads_received"] for c in cores) - before) / (39 * 10)
    assert per_delivery < 1.2, per_delivery
    assert len(delivered(mesh)) == 40 * 30


class DropPushes:
    """A node whose incoming payloads are lost until ``until`` (its eager links drop them)."""

    def __init__(self, core: Broadcast, until: float):
        self.core, self.until, self.dropped = core, until, 0
        self.node_id = core.node_id
        self.tick, self.next_timer = core.tick, core.next_timer
        self.take_outgoing, self.take_events = core.take_outgoing, core.take_events

    def receive(self, env, now):
        if env.type == MSG and now < self.until:
            self.dropped += 1
            return
        self.core.receive(env, now)


def test_lost_pushes_are_repaired_from_an_announcement_and_a_crashed_node_is_routed_around():
    mesh, cores = make_mesh(30)
    for k in range(5):
        publish(mesh, cores[0], "", k)
        mesh.run(mesh.now + 0.5)
    victim = cores[17]
    proxy = DropPushes(victim, mesh.now + 0.06)
    mesh.nodes[victim.node_id] = proxy
    before = len(delivered(mesh))
    publish(mesh, cores[0], "", "lost")
    mesh.run(mesh.now + 1.0)
    assert proxy.dropped >= 1 and victim.stats["grafts_sent"] >= 1
    assert len(delivered(mesh)) - before == 30
    mesh.nodes[victim.node_id] = victim
    # crash three nodes: their subtrees are grafted onto the lazy links
    for c in cores[10:13]:
        mesh.dead.add(c.node_id)
    before = len(delivered(mesh))
    publish(mesh, cores[0], "", "after")
    mesh.run(mesh.now + 2.0)
    assert len(delivered(mesh)) - before == 27


def test_topic_payloads_reach_every_subscriber_and_only_the_nodes_that_forward_them():
    mesh, cores = make_mesh(40)
    for k in range(10):  # the tree forms on mesh-wide messages
        publish(mesh, cores[k], "", k)
        mesh.run(mesh.now + 0.5)
    subs = {c.node_id for c in cores[::5]}
    for c in cores[::5]:
        mesh.call(c, lambda c: c.subscribe("weather"))
    mesh.run(mesh.now + 10.0)  # declarations travel the tree
    for k in range(3):  # the first topic payloads still meet a few declarations on their way
        publish(mesh, cores[1], "weather", -k)
        mesh.run(mesh.now + 1.0)
    before = {c.node_id: dict(c.stats) for c in cores}
    for k in range(10):
        publish(mesh, cores[1], "weather", k)
        mesh.run(mesh.now + 0.5)
    got = [nid for nid, ev in delivered(mesh) if ev.topic == "weather"]
    assert len(got) == 13 * len(subs) and set(got) == subs  # once each, to subscribers only

    def delta(c, key):
        return c.stats[key] - before[c.node_id][key]
    assert sum(delta(c, "unwanted_payloads") for c in cores) == 0
    got_payloads = [c for c in cores if delta(c, "payloads_received") and c.node_id not in subs]
    # every non-subscriber that received the topic passed it on (it sits between subscribers) ...
    assert all(delta(c, "pushed") > 0 for c in got_payloads)
    # ... and the others, subscribing to nothing, got none of it
    idle = [c for c in cores if not delta(c, "payloads_received") and c is not cores[1]]
    assert idle and sum(delta(c, "filtered") for c in cores) > 0
    # a new subscriber among them hears the topic once its declaration has travelled
    late = idle[0]
    mesh.call(late, lambda c: c.subscribe("weather"))
    mesh.run(mesh.now + 5.0)
    publish(mesh, cores[1], "weather", "late")
    mesh.run(mesh.now + 1.0)
    assert {nid for nid, ev in delivered(mesh) if ev.data == "late"} == subs | {late.node_id}
    # and one that unsubscribes stops getting its payloads (it forwards for no one)
    mesh.call(late, lambda c: c.unsubscribe("weather"))
    mesh.run(mesh.now + 5.0)
    n = late.stats["payloads_received"]
    publish(mesh, cores[1], "weather", "after")
    mesh.run(mesh.now + 1.0)
    assert late.stats["payloads_received"] == n or late.stats["pushed"] > 0


@pytest.mark.parametrize("body", [None, 5, {}, {"t": 5}, {"t": [1]}, {"t": ["x" * 129]}])
def test_malformed_topic_declarations_are_counted(body):
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0))
    core.receive(Envelope(random.randbytes(16), ident(1).node_id, WANT, body), 0.0)
    assert core.stats["malformed"] == 1 and core.stats["wants_received"] == 0


def test_an_oversize_or_stormy_topic_declaration_is_bounded_and_counted():
    cfg = BroadcastConfig(max_want_topics=4, max_inbound=2)
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0), cfg)
    peer = ident(1).node_id
    core.receive(Envelope(random.randbytes(16), peer, WANT, {"t": [f"t{i}" for i in range(100)]}), 0.0)
    assert core.stats["want_over"] == 1 and core.state_size()["interest_topics"] == 0  # read as "every topic"
    for i in range(1000):  # a storm from one peer: each replaces the last, nothing accumulates
        core.receive(Envelope(random.randbytes(16), peer, WANT, {"t": [f"s{i}"]}), 0.0)
    assert core.state_size()["interest_topics"] == 1
    for i in range(2, 10):  # from peers that are not neighbours: at most max_inbound are heard
        core.receive(Envelope(random.randbytes(16), ident(i).node_id, WANT, {"t": ["a", "b"]}), 0.0)
    assert core.stats["inbound_full"] == 7 and core.state_size()["interest_topics"] == 1 + 2
    # an honest origin's message is still delivered, and pushed to the declaring peer if it wants it
    m = make_message(ident(20), 1, 1, "", "hello")
    core.receive(Envelope(random.randbytes(16), ident(21).node_id, MSG, {"m": m.to_wire(), "h": 1}), 0.0)
    assert [e.data for e in core.take_events() if type(e) is Delivered] == ["hello"]


def test_a_forged_signature_is_refused_and_counted_and_the_genuine_message_still_arrives():
    mesh, cores = make_mesh(10)
    origin = ident(99, "origin")
    good = make_message(origin, 5, 1, "", "genuine")
    forged = dict(good.to_wire(), d="forged")  # same id (same origin, epoch, seq, topic), wrong signature
    target = cores[3]
    target.receive(Envelope(b"\x01" * 16, cores[4].node_id, MSG, {"m": forged, "h": 1}), 0.0)
    assert target.stats["bad_signature"] == 1
    assert target.take_events() == []
    target.receive(Envelope(b"\x02" * 16, cores[4].node_id, MSG, {"m": good.to_wire(), "h": 1}), 0.0)
    evs = target.take_events()
    assert [(e.data, e.seq) for e in evs] == [("genuine", 1)]
    # a forged copy arriving after the genuine one is dropped by id, before any verification
    target.receive(Envelope(b"\x03" * 16, cores[5].node_id, MSG, {"m": forged, "h": 1}), 0.0)
    assert target.stats["bad_signature"] == 1 and target.stats["duplicates"] == 1


def test_duplicates_are_dropped_before_verifying(monkeypatch):
    import zmqagents.core.broadcast as mod
    calls = []
    real = mod.verify_claimed

    def counting(c, limit):
        calls.append(c.id)
        return real(c, limit)
    monkeypatch.setattr(mod, "verify_claimed", counting)
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0))
    m = make_message(ident(1), 1, 1, "", "x")
    for k in range(5):
        core.receive(Envelope(bytes([k]) * 16, ident(2 + k).node_id, MSG, {"m": m.to_wire(), "h": 1}), 0.0)
    assert calls == [m.id]
    assert core.stats["duplicates"] == 4 and core.stats["delivered"] == 1


def test_replays_and_old_epochs_are_refused_as_stale():
    cfg = BroadcastConfig(window=8, max_seen=4)
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0), cfg)
    o = ident(1)
    src = ident(2).node_id

    def send(epoch, seq):
        m = make_message(o, epoch, seq, "", seq)
        core.receive(Envelope(random.randbytes(16), src, MSG, {"m": m.to_wire(), "h": 1}), 0.0)

    for s in range(1, 21):
        send(10, s)
    assert core.stats["delivered"] == 20
    send(10, 3)  # below the window (and long out of the 4-entry seen cache): a replay
    send(9, 50)  # an older epoch
    send(10, 18)  # inside the window, already accepted (out of the seen cache too)
    assert core.stats["stale"] == 2 and core.stats["duplicates"] == 1 and core.stats["delivered"] == 20
    send(11, 1)  # a restarted origin: newer epoch, numbering starts again
    assert core.stats["delivered"] == 21


def test_gap_is_reported_after_the_repair_window_unless_filled():
    cfg = BroadcastConfig(gap_report_after=1.0)
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0), cfg)
    o = ident(1)
    src = ident(2).node_id
    for s in (1, 2, 5, 6, 4):  # 3 never comes, 4 comes late
        m = make_message(o, 7, s, "", s)
        core.receive(Envelope(random.randbytes(16), src, MSG, {"m": m.to_wire(), "h": 1}), 0.1)
    core.tick(0.5)
    assert not [e for e in core.take_events() if type(e) is Gap]
    t = core.next_timer()
    assert t is not None and t <= 1.2
    core.tick(1.2)
    gaps = [e for e in core.take_events() if type(e) is Gap]
    assert [(g.epoch, g.missing) for g in gaps] == [(7, (3,))]
    assert gaps[0].origin == o.node_id


def test_ihave_flood_for_ids_never_sent_is_bounded_counted_and_given_up():
    cfg = BroadcastConfig(max_missing=100, max_ihave_queue=50)
    mesh, cores = make_mesh(10, config=cfg)
    target = cores[0]
    attacker = ident(77, "attacker").node_id
    for k in range(10):
        ids = [[random.randbytes(16), 1] for _ in range(400)]
        target.receive(Envelope(random.randbytes(16), attacker, IHAVE, {"i": ids}), mesh.now)
    st = target.stats
    assert st["ihave_ignored"] == 10 * (400 - cfg.max_ihave_ids)
    assert len(target._missing) <= 50  # one peer opens at most max_ihave_queue entries
    assert st["missing_full"] > 0
    mesh.flush(target)
    mesh.run(mesh.now + 2.0)
    assert len(target._missing) == 0 and st["graft_gave_up"] == 50
    # an honest origin's messages still reach everyone
    publish(mesh, cores[5], "", "hello")
    mesh.run(mesh.now + 1.0)
    assert sum(1 for _nid, ev in delivered(mesh) if ev.data == "hello") == 10


def test_grafts_for_unknown_ids_and_graft_storms_are_refused_and_counted():
    cfg = BroadcastConfig(graft_rate=10.0, graft_burst=10.0)
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0), cfg)
    m = core.publish("", b"x" * 100, 0.0)
    core.take_outgoing()
    peer = ident(5).node_id
    core.receive(Envelope(random.randbytes(16), peer, GRAFT, {"i": [random.randbytes(16) for _ in range(20)]}), 0.0)
    assert core.stats["graft_unknown"] == 20 and core.take_outgoing() == []
    for _ in range(50):
        core.receive(Envelope(random.randbytes(16), peer, GRAFT, {"i": [m.id]}), 0.0)
    sent = [e for e in core.take_outgoing() if e.type == MSG]
    assert len(sent) == 10 and core.stats["graft_over_rate"] == 40


def test_prune_storm_moves_only_the_sender_to_lazy():
    mesh, cores = make_mesh(8)
    c = cores[0]
    p = next(iter(c.eager))
    for _ in range(1000):
        c.receive(Envelope(random.randbytes(16), p, PRUNE, None), 0.0)
    assert p in c.lazy and p not in c.eager and c.stats["prunes_received"] == 1000
    assert len(c.eager) + len(c.lazy) == len(c.sample)


def test_oversize_is_refused_at_the_publisher_and_counted_in_transit():
    cfg = BroadcastConfig(max_message_bytes=1000)
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0), cfg)
    with pytest.raises(PublishError) as exc:
        core.publish("", b"x" * 2000, 0.0)
    assert exc.value.reason == "oversize"
    big = make_message(ident(1), 1, 1, "", b"x" * 2000)
    core.receive(Envelope(random.randbytes(16), ident(2).node_id, MSG, {"m": big.to_wire(), "h": 1}), 0.0)
    assert core.stats["oversize"] == 1 and core.take_events() == []


def test_an_origin_over_its_rate_is_refused_and_another_origin_is_unaffected():
    cfg = BroadcastConfig(origin_rate=10.0, origin_burst=10.0)
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0), cfg)
    flood, honest = ident(1), ident(2)
    src = ident(3).node_id
    for s in range(1, 101):
        m = make_message(flood, 1, s, "", s)
        core.receive(Envelope(random.randbytes(16), src, MSG, {"m": m.to_wire(), "h": 1}), 0.0)
        if s % 10 == 0:
            h = make_message(honest, 1, s // 10, "", s)
            core.receive(Envelope(random.randbytes(16), src, MSG, {"m": h.to_wire(), "h": 1}), 0.0)
    got = [e for e in core.take_events() if type(e) is Delivered]
    assert sum(1 for e in got if e.origin == flood.node_id) == 10
    assert sum(1 for e in got if e.origin == honest.node_id) == 10
    assert core.stats["over_rate"] == 90
    with pytest.raises(PublishError):  # our own origin is held to the same limit
        for _ in range(11):
            core.publish("", 1, 0.0)


@pytest.mark.parametrize("body", [None, 5, {"m": {}, "h": 1}, {"m": {"o": b"x"}, "h": 1}, {"h": 0},
                                  {"m": {"o": b"\0" * 32, "e": -1, "s": 1, "t": "", "d": 1, "sig": b"\0" * 64}, "h": 1},
                                  {"m": {"o": b"\0" * 32, "e": 1, "s": 1, "t": "x" * 129, "d": 1, "sig": b"\0" * 64}, "h": 1}])
def test_malformed_payloads_are_counted(body):
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0))
    core.receive(Envelope(random.randbytes(16), ident(1).node_id, MSG, body), 0.0)
    assert core.stats["malformed"] == 1 and core.take_events() == []


def test_inbound_neighbours_are_bounded_and_expire():
    cfg = BroadcastConfig(max_inbound=3, inbound_ttl=10.0)
    core = Broadcast(ident(0).node_id, ident(0), 1, random.Random(0), cfg)
    for i in range(1, 6):
        core.receive(Envelope(random.randbytes(16), ident(i).node_id, IHAVE, {"i": []}), 0.0)
    assert len(core.inbound) == 3 and core.stats["inbound_full"] == 2
    assert core.neighbours() == set(core.inbound)
    core.tick(11.0)
    t = core.next_timer()
    while t is not None and t <= 12.0:
        core.tick(t)
        t = core.next_timer()
    assert core.inbound == {} and core.neighbours() == set()


def test_message_id_is_what_the_spec_says():
    o = b"\x11" * 32
    want = hashlib.sha256(b"zmqagents/bcast-id/v1\x00" + o + (7).to_bytes(8, "big") + (9).to_bytes(8, "big")
                          + "t".encode()).digest()[:16]
    assert message_id(o, 7, 9, "t") == want


def test_the_table_sample_is_stable_and_strongly_connected():
    from zmqagents.core.broadcast_sample import PeerSample
    from zmqagents.core.routing_table import RoutingTable
    rng = random.Random(3)
    n = 150
    keys = [hashlib.sha256(b"k%d" % i).digest() for i in range(n)]
    ids = [hashlib.sha256(k).digest() for k in keys]
    tables = []
    for i in range(n):
        t = RoutingTable(ids[i], k=8)
        for j in rng.sample(range(n), n):
            if j != i:
                t.add(ids[j], keys[j], f"tcp://10.0.{j // 256}.{j % 256}:7000", 0.0)
        tables.append(t)
    samplers = [PeerSample(ids[i], random.Random(i), per_bucket=1, near=2) for i in range(n)]
    picks = [s.pick(t) for s, t in zip(samplers, tables)]
    assert all(len(p) <= 2 + len(t.bucket_sizes()) for p, t in zip(picks, tables))
    index = {nid: i for i, nid in enumerate(ids)}
    out = [{index[x] for x in p} for p in picks]
    inn: list[set[int]] = [set() for _ in range(n)]
    for i, ps in enumerate(out):
        for j in ps:
            inn[j].add(i)

    def reach(adj) -> int:
        seen, stack = {0}, [0]
        while stack:
            for y in adj[stack.pop()]:
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
        return len(seen)
    assert reach(out) == n and reach(inn) == n  # strongly connected along sampled links alone
    # touching contacts (what every message does) changes nothing; only a contact leaving does
    for i in range(n):
        for e in list(tables[i])[:5]:
            tables[i].touch(e.node_id, 1.0)
    assert [s.pick(t) for s, t in zip(samplers, tables)] == picks
    gone = next(iter(picks[0]))
    tables[0].remove(gone)
    assert gone not in samplers[0].pick(tables[0])


def test_a_new_sample_member_is_told_so_and_the_link_is_refreshed_while_idle():
    cfg = BroadcastConfig(link_refresh=40.0, inbound_ttl=120.0)
    a, b = ident(1), ident(2)
    ca = Broadcast(a.node_id, a, 1, random.Random(0), cfg)
    cb = Broadcast(b.node_id, b, 1, random.Random(1), cfg)
    ca.set_sample({b.node_id}, 0.0)
    out = ca.take_outgoing()
    assert [(e.type, e.dst, e.body) for e in out] == [(IHAVE, b.node_id, {"i": []})]
    cb.receive(out[0], 0.0)
    assert a.node_id in cb.inbound and cb.neighbours() == {a.node_id}  # b now pushes/announces to a too
    now = 0.0
    sent_at = [0.0]
    for _ in range(40):  # 400 idle seconds: refreshes (and the topic declarations, which count as traffic too)
        now = ca.next_timer()
        ca.tick(now)
        for e in ca.take_outgoing():
            sent_at.append(now)
            cb.receive(e, now)
        while (t := cb.next_timer()) is not None and t <= now:
            cb.tick(t)
        if now >= 400.0:
            break
    assert now >= 400.0 and a.node_id in cb.inbound  # b never let the link expire
    assert max(y - x for x, y in zip(sent_at, sent_at[1:])) <= 40.0 + cfg.want_delay


def test_an_announcement_over_a_much_shorter_path_regrafts_the_tree():
    me, parent, short = ident(0), ident(1), ident(2)
    core = Broadcast(me.node_id, me, 1, random.Random(0), BroadcastConfig(optimization_threshold=4))  # our copy: 10 hops
    core.set_sample({parent.node_id, short.node_id}, 0.0)
    core.take_outgoing()
    m = make_message(ident(9), 1, 1, "", "x")
    core.receive(Envelope(random.randbytes(16), parent.node_id, MSG, {"m": m.to_wire(), "h": 10}), 0.0)
    core.take_outgoing()
    core.receive(Envelope(random.randbytes(16), short.node_id, IHAVE, {"i": [[m.id, 7]]}), 0.01)
    assert core.take_outgoing() == []  # 7 + 4 > 10: not worth a change
    core.receive(Envelope(random.randbytes(16), short.node_id, IHAVE, {"i": [[m.id, 6]]}), 0.02)
    out = {(e.type, e.dst) for e in core.take_outgoing()}
    assert out == {(GRAFT, short.node_id), (PRUNE, parent.node_id)}
    assert short.node_id in core.eager and parent.node_id in core.lazy and core.stats["optimized"] == 1
    core.receive(Envelope(random.randbytes(16), short.node_id, IHAVE, {"i": [[m.id, 1]]}), 0.03)
    assert core.take_outgoing() == []  # once per message


def test_announcements_go_to_at_most_lazy_fanout_neighbours_per_batch():
    cfg = BroadcastConfig(lazy_fanout=3)
    me = ident(0)
    core = Broadcast(me.node_id, me, 1, random.Random(0), cfg)
    peers = [ident(i).node_id for i in range(1, 21)]
    core.set_sample(set(peers), 0.0)
    for p in peers:
        core.receive(Envelope(random.randbytes(16), p, PRUNE, None), 0.0)  # all lazy
    core.tick(core.next_timer())  # the topic declarations to the new neighbours go first
    assert {e.type for e in core.take_outgoing()} == {IHAVE, WANT}
    for k in range(5):
        core.publish("", k, 0.0)
    core.tick(core.next_timer())
    out = core.take_outgoing()
    assert len(out) == 3 and {e.type for e in out} == {IHAVE}
    assert all(len(e.body["i"]) == 5 for e in out)  # one envelope per chosen peer carries the whole batch


def _stream_with_a_hole(topic: str) -> tuple[Broadcast, Identity, list]:
    """A core with one peer, ``sender``, which forwards messages 1 and 4 of a stream on ``topic`` (2 and 3
    are lost on the way and no one announces them)."""
    me, sender, origin = ident(0), ident(1), ident(2)
    core = Broadcast(me.node_id, me, 1, random.Random(0))
    core.set_sample({sender.node_id}, 0.0)
    core.take_outgoing()
    msgs = [make_message(origin, 5, s, topic, s) for s in range(1, 5)]
    core.receive(_env(sender, MSG, {"m": msgs[0].to_wire(), "h": 1}), 0.0)
    core.receive(_env(sender, MSG, {"m": msgs[3].to_wire(), "h": 1}), 0.01)
    return core, sender, msgs


def test_a_hole_in_a_stream_is_pulled_from_the_sender_of_the_next_message():
    core, sender, msgs = _stream_with_a_hole("")
    assert core.stats["gap_pulls"] == 2
    core.take_outgoing()
    grafts = [e for e in _run_timers(core, 0.2) if e.type == GRAFT]
    assert len(grafts) == 1 and grafts[0].dst == sender.node_id
    assert set(grafts[0].body["i"]) == {msgs[1].id, msgs[2].id}
    # the sender answers: both delivered, once
    for m in msgs[1:3]:
        core.receive(_env(sender, MSG, {"m": m.to_wire(), "h": 1}), 0.2)
    assert sorted(e.seq for e in core.take_events() if type(e) is Delivered) == [1, 2, 3, 4]


def test_a_hole_in_a_topic_stream_we_only_forward_is_not_pulled():
    # a forwarder off a topic's path for a while sees its stream jump when it is on the path again: nothing was
    # lost, and pulling the hole fetched payloads no one here needed (sim: most of the non-subscribers' payloads)
    core, _, _ = _stream_with_a_hole("T")
    assert core.stats["gap_pulls"] == 0 and core.state_size()["missing"] == 0
    assert [e for e in _run_timers(core, 1.0) if e.type == GRAFT] == []
    assert core.take_events() == []  # not subscribed: nothing delivered, no gap reported


def test_a_peer_we_have_no_room_for_is_told_our_own_topics_once_per_change():
    # b samples us and pushes, but our inbound neighbours are full: it is no neighbour, so it was never told
    # (or kept what we told it when it was one: "every topic", for a forwarder), and pushed us every topic
    me, a, b, c, origin = ident(0), ident(1), ident(2), ident(3), ident(4)
    core = Broadcast(me.node_id, me, 1, random.Random(0), BroadcastConfig(max_inbound=1))
    core.subscribe("mine")
    core.set_sample({b.node_id, c.node_id}, 0.0)
    _run_timers(core, 1.0)  # b and c are eager; c declared nothing (every topic), so b was told every topic
    core.set_sample({c.node_id}, 2.0)  # b leaves the sample
    core.receive(_env(a, IHAVE, {"i": []}), 2.0)  # a fills the one inbound slot
    core.take_outgoing()
    m = make_message(origin, 5, 1, "other", "x")
    core.receive(_env(b, MSG, {"m": m.to_wire(), "h": 1}), 2.1)
    assert core.stats["inbound_full"] == 1 and b.node_id not in core.neighbours()
    wants = [(e.dst, e.body) for e in core.take_outgoing() if e.type == WANT]
    assert wants == [(b.node_id, {"t": ["mine"]})]
    m2 = make_message(origin, 5, 2, "other", "y")
    core.receive(_env(b, MSG, {"m": m2.to_wire(), "h": 1}), 2.2)
    core.receive(_env(b, IHAVE, {"i": []}), 2.3)
    assert [e for e in core.take_outgoing() if e.type == WANT] == []  # told once
    core.subscribe("more")
    core.receive(_env(b, IHAVE, {"i": []}), 2.4)
    wants = [(e.dst, e.body) for e in core.take_outgoing() if e.type == WANT]
    assert wants == [(b.node_id, {"t": ["mine", "more"]})]


def test_declarations_follow_a_change_at_once_but_a_flipping_neighbour_gets_at_most_one_per_interval():
    me, a, b = ident(0), ident(1), ident(2)
    core = Broadcast(me.node_id, me, 1, random.Random(0))
    cfg = core.config
    core.set_sample({a.node_id, b.node_id}, 0.0)
    _run_timers(core, 1.0)
    # a quiet spell, then a wants "x": b (eager) is told want_delay later, not a batching period later
    core.receive(_env(a, WANT, {"t": ["x"]}), 2.0)
    assert core.next_timer() == pytest.approx(2.0 + cfg.want_delay)
    out = _run_timers(core, 2.0 + cfg.want_delay)
    assert [(e.dst, e.body) for e in out if e.type == WANT] == [(b.node_id, {"t": ["x"]})]
    # a changes its declaration every 10 ms for 2 s: b hears of it at most once per want_interval
    told_b = []
    t = 3.0
    for k in range(200):
        core.receive(_env(a, WANT, {"t": [f"y{k}"]}), t)
        t += 0.01
        told_b += [e for e in _run_timers(core, t) if e.type == WANT and e.dst == b.node_id]
    assert 2.0 / cfg.want_interval - 2 <= len(told_b) <= 2.0 / cfg.want_interval + 1


def test_a_neighbour_that_pushes_a_topic_we_declared_against_is_told_again():
    # declarations go once and unreliably: one lost made the neighbour push us the topic for good
    me, p, origin = ident(0), ident(1), ident(2)
    core = Broadcast(me.node_id, me, 1, random.Random(0))
    core.set_sample({p.node_id}, 0.0)
    out = _run_timers(core, 1.0)
    assert [(e.dst, e.body) for e in out if e.type == WANT] == [(p.node_id, {"t": []})]  # (lost on the way)
    core.receive(_env(p, MSG, {"m": make_message(origin, 5, 1, "", "x").to_wire(), "h": 1}), 2.0)
    assert core.stats["wants_repeated"] == 0  # the mesh-wide topic is always wanted
    for s in (1, 2):
        core.receive(_env(p, MSG, {"m": make_message(origin, 5, s, "T", s).to_wire(), "h": 1}), 2.0 + s / 100)
    assert core.stats["unwanted_payloads"] == 2 and core.stats["wants_repeated"] == 1
    out = _run_timers(core, 3.0)
    assert [(e.dst, e.body) for e in out if e.type == WANT] == [(p.node_id, {"t": []})]  # once, both payloads


def _env(src: Identity, typ: str, body) -> Envelope:
    return Envelope(random.randbytes(16), src.node_id, typ, body)


def _run_timers(core: Broadcast, until: float) -> list[Envelope]:
    out = []
    t = core.next_timer()
    while t is not None and t <= until:
        core.tick(t)
        out += core.take_outgoing()
        t = core.next_timer()
    return out


def test_a_late_eager_copy_is_fetched_without_reshaping_the_tree_and_a_broken_path_is_regrafted():
    me, parent, other, origin = ident(0), ident(1), ident(2), ident(3)
    core = Broadcast(me.node_id, me, 1, random.Random(0))
    core.set_sample({parent.node_id, other.node_id}, 0.0)
    core.receive(_env(other, PRUNE, None), 0.0)  # parent eager, other lazy
    core.take_outgoing()
    cfg = core.config
    m1, m2, m3 = (make_message(origin, 5, s, "", s) for s in (1, 2, 3))
    # m1 is announced by the lazy neighbour before the parent's push: no graft yet, nothing counted late
    core.receive(_env(other, IHAVE, {"i": [[m1.id, 2]]}), 0.0)
    core.receive(_env(parent, MSG, {"m": m1.to_wire(), "h": 3}), 0.01)
    assert core.stats["grafts_late"] == 0 and [e for e in _run_timers(core, 0.2) if e.type == GRAFT] == []
    # m2: the parent's push is late, the graft fires and only fetches ("r"): the link to other stays lazy
    core.receive(_env(other, IHAVE, {"i": [[m2.id, 2]]}), 1.0)
    out = [e for e in _run_timers(core, 1.0 + cfg.graft_timeout) if e.type == GRAFT]
    assert [(e.dst, e.body) for e in out] == [(other.node_id, {"i": [m2.id], "r": True})]
    assert other.node_id in core.lazy and core.stats["tree_grafts"] == 0
    core.receive(_env(other, MSG, {"m": m2.to_wire(), "h": 2}), 1.1)  # the repair
    core.take_outgoing()
    core.receive(_env(parent, MSG, {"m": m2.to_wire(), "h": 3}), 1.2)  # the eager copy, late: no prune
    assert [e.type for e in core.take_outgoing()] == [] and parent.node_id in core.eager
    assert core.stats["grafts_late"] == 1 and core.stats["prunes_sent"] == 0
    # m3: the parent's copy is still missing a graft timeout after the repair: slow, not yet broken (a loaded
    # parent's copies come hundreds of ms late; re-grafting for each made real trees flap)
    core.receive(_env(other, IHAVE, {"i": [[m3.id, 2]]}), 2.0)
    _run_timers(core, 2.0 + cfg.graft_timeout)
    core.receive(_env(other, MSG, {"m": m3.to_wire(), "h": 2}), 2.1)
    core.take_outgoing()
    assert cfg.tree_graft_after > cfg.graft_timeout
    assert [e for e in _run_timers(core, 2.1 + cfg.graft_timeout) if e.type == GRAFT] == []
    # ... and it never comes: tree_graft_after after the repair, the repairer is grafted into the tree
    out = [e for e in _run_timers(core, 2.1 + cfg.tree_graft_after) if e.type == GRAFT]
    assert [(e.dst, e.body) for e in out] == [(other.node_id, {"i": []})]  # a plain graft: push to me
    assert other.node_id in core.eager and core.stats["tree_grafts"] == 1


def test_a_repair_only_graft_is_answered_without_making_the_asker_eager():
    me, asker = ident(0), ident(1)
    core = Broadcast(me.node_id, me, 1, random.Random(0))
    core.set_sample({asker.node_id}, 0.0)
    core.receive(_env(asker, PRUNE, None), 0.0)
    m = core.publish("", "x", 0.0)
    core.take_outgoing()
    core.receive(_env(asker, GRAFT, {"i": [m.id], "r": True}), 0.1)
    assert [(e.type, e.dst) for e in core.take_outgoing()] == [(MSG, asker.node_id)]
    assert asker.node_id in core.lazy
    core.receive(_env(asker, GRAFT, {"i": []}), 0.2)
    assert asker.node_id in core.eager


def test_what_a_neighbour_wants_outlives_a_dropped_link_and_a_new_neighbour_is_always_told():
    # b declared it wants no topic; a's table sample then drops b, and b (which still samples a) comes back
    # as an inbound peer. a used to forget b's declaration with the link, and pushed b every topic for good.
    me, b, origin = ident(0), ident(1), ident(2)
    core = Broadcast(me.node_id, me, 1, random.Random(0))
    core.set_sample({b.node_id}, 0.0)
    core.receive(_env(b, WANT, {"t": []}), 0.0)
    core.set_sample(set(), 1.0)
    assert b.node_id not in core.neighbours()
    core.receive(_env(b, IHAVE, {"i": []}), 2.0)  # back, inbound (lazy)
    m = make_message(origin, 5, 1, "T", "x")
    core.receive(_env(b, MSG, {"m": m.to_wire(), "h": 1}), 2.1)  # a first copy from it: b is eager again
    assert b.node_id in core.eager and core.stats["filtered"] == 0
    m2 = make_message(origin, 5, 2, "T", "y")
    core.receive(_env(ident(3), MSG, {"m": m2.to_wire(), "h": 1}), 2.2)
    pushed = [e for e in core.take_outgoing() if e.type == MSG and e.dst == b.node_id]
    assert pushed == [] and core.stats["filtered"] == 1  # still wants none: not pushed
    # a neighbour never told anything is told, even "every topic" (it may have restarted, or forgotten)
    fresh = Broadcast(me.node_id, me, 1, random.Random(0))
    fresh.subscribe("T")
    fresh.set_sample({b.node_id, ident(4).node_id}, 0.0)
    fresh.receive(_env(ident(4), WANT, {"t": None}), 0.0)
    fresh.take_outgoing()
    fresh.tick(fresh.next_timer())
    wants = {e.dst: e.body for e in fresh.take_outgoing() if e.type == WANT}
    assert wants == {b.node_id: {"t": None}, ident(4).node_id: {"t": None}}  # each wants what the other does
