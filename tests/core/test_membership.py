"""SWIM + Lifeguard membership core: probing, suspicion, refutation, Lifeguard, rumors, anti-entropy, bad input."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqagents.core.membership import (
    ACK, ALIVE, DEAD, GOSSIP, NACK, PING, PING_REQ, SUSPECT, Alive, Failed, Left, Membership,
    MembershipConfig, Refuted, Suspect,
)
from zmqagents.envelope import Envelope
from zmqagents.identity import node_id_of
from zmqagents.sim import Simulator
from zmqagents.sim.membership_run import Scenario, run, sim_contact

CONTACTS = [sim_contact(i) for i in range(64)]
IDS = [node_id_of(c.public_key) for c in CONTACTS]
INDEX = {nid: i for i, nid in enumerate(IDS)}


def _env(src: int, dst: int, typ: str, body) -> Envelope:
    return Envelope(random.randbytes(16), IDS[src], typ, body, IDS[dst])


class _Filter:
    """A core wrapper that drops incoming envelopes the cluster's ``drop`` predicate picks."""

    __slots__ = ("core", "cluster", "index")

    def __init__(self, core, cluster, index):
        self.core = core
        self.cluster = cluster
        self.index = index

    def receive(self, env, now):
        drop = self.cluster.drop
        if drop is not None and drop(env, self.index, now):
            self.cluster.dropped += 1
            return
        self.core.receive(env, now)

    def tick(self, now):
        self.core.tick(now)

    def next_timer(self):
        return self.core.next_timer()

    def take_outgoing(self):
        return self.core.take_outgoing()

    def take_events(self):
        return self.core.take_events()


class Cluster:
    """n simulated nodes, each holding all the others; events recorded as (time, observer, event).

    The owner re-adds a member reported Alive that it no longer holds (as a routing table would)."""

    def __init__(self, n: int, *, seed: int = 1, config: MembershipConfig | None = None, loss: float = 0.0,
                 latency: str = "const:5ms", views: dict | None = None):
        self.config = config or MembershipConfig()
        self.sim = Simulator(seed, latency=latency, loss=loss, on_event=self._on_event)
        self.drop = None
        self.dropped = 0
        self.events: list[tuple[float, int, object]] = []
        self.cores: list[Membership] = []
        for i in range(n):
            view = views[i] if views is not None else [j for j in range(n) if j != i]

            def factory(nid, rng, i=i, view=view):
                core = Membership(CONTACTS[i], rng, self.config)
                for j in view:
                    core.add(CONTACTS[j], 0.0)
                self.cores.append(core)
                return [_Filter(core, self, i)]

            self.sim.add_node(factory, node_id=IDS[i])

    def _on_event(self, node, ev, now):
        self.events.append((now, node.index, ev))
        if type(ev) is Alive:
            core = self.cores[node.index]
            if node_id_of(ev.contact.public_key) not in core:
                core.add(ev.contact, now, ev.incarnation)

    def at(self, t, i, fn):
        """Run fn(core, now) at time t on node i's core (its output is sent)."""
        self.sim.at(t, lambda now: fn(self.cores[i], now), self.sim.nodes[i])

    def crash(self, t, i):
        self.sim.at(t, lambda now: self.sim.crash(IDS[i]))

    def run(self, until):
        return self.sim.run(until=until)

    def of(self, kind, subject: int | None = None, observer: int | None = None):
        out = []
        for t, obs, ev in self.events:
            if type(ev) is not kind or (observer is not None and obs != observer):
                continue
            if subject is not None:
                nid = node_id_of(ev.contact.public_key) if kind is Alive else getattr(ev, "node_id", None)
                if nid != IDS[subject]:
                    continue
            out.append((t, obs, ev))
        return out


def _gossip(src: int, dst: int, rumors) -> Envelope:
    return _env(src, dst, GOSSIP, [0, 0, rumors])


# -- probing --------------------------------------------------------------------------------------------

def test_probe_ack_measures_rtt_and_nobody_is_suspected():
    c = Cluster(3)
    c.run(20.0)
    assert c.of(Suspect) == [] and c.of(Failed) == []
    a = c.cores[0]
    assert a.stats["probes_acked"] >= 8
    assert a.rtt(IDS[1]) == pytest.approx(0.010, abs=1e-6)  # const 5 ms each way
    assert a.rtt(IDS[9]) is None
    members = {nid: (state, inc) for nid, state, inc, rtt in a.members()}
    assert members == {IDS[1]: ("alive", 0), IDS[2]: ("alive", 0)}
    assert a.local_health == 0


def test_ping_req_path_when_the_direct_link_is_lost():
    c = Cluster(3)
    # Nodes 0 and 1 cannot hear each other directly; node 2 can reach both.
    c.drop = lambda env, dst, now: {INDEX[env.src], dst} == {0, 1}
    c.run(30.0)
    assert c.of(Suspect) == [] and c.of(Failed) == []
    assert c.cores[0].stats["probes_indirect_acked"] >= 3
    assert c.cores[2].stats["acks_forwarded"] >= 6
    assert c.cores[0].stats["ping_reqs_sent"] >= 3


def test_crashed_node_is_suspected_then_failed_everywhere():
    cfg = MembershipConfig()
    c = Cluster(8, config=cfg)
    c.crash(5.0, 0)
    c.run(40.0)
    failed = c.of(Failed, subject=0)
    assert sorted(obs for _, obs, _ in failed) == list(range(1, 8))  # each holder, once
    assert c.of(Failed) == failed  # nobody else
    for t, obs, _ in failed:
        first_suspect = min(ts for ts, o, _ in c.of(Suspect, subject=0) if o == obs)
        assert 5.0 < first_suspect < t
    assert max(t for t, _, _ in failed) - 5.0 < 20.0
    assert all(IDS[0] not in core for core in c.cores[1:])
    assert all(core.state_of(IDS[0]) == "dead" for core in c.cores[1:])


# -- suspicion, refutation, incarnations ------------------------------------------------------------------

def test_hearsay_suspicion_is_verified_and_the_suspect_refutes():
    c = Cluster(6)
    c.run(3.0)
    # Node 5 tells everyone that node 0 is suspect (it is not).
    for i in range(1, 5):
        c.at(3.5, i, lambda core, now: core.receive(_gossip(5, INDEX[core.node_id], [[SUSPECT, IDS[0], 0, [IDS[5][:8]]]]), now))
    c.run(15.0)
    assert c.of(Failed) == []
    assert len(c.of(Suspect, subject=0)) == 4
    assert [ev.incarnation for _, _, ev in c.of(Refuted, observer=0)] == [1]
    assert c.cores[0].incarnation == 1
    for i in range(1, 6):
        assert c.cores[i].state_of(IDS[0]) == "alive"
        assert c.cores[i].incarnation_of(IDS[0]) == 1  # learnt from node 0's own messages
    assert len(c.of(Alive, subject=0)) == 4  # each suspicion cleared first-hand


def test_unreachable_node_is_suspected_refutes_and_survives():
    c = Cluster(6, seed=3)
    # Node 0 is cut off for 1.4 s, both ways: long enough to be suspected, not to be declared dead. (Cut
    # off one way only, the messages it still sends show its probers it is alive, and in a cluster this
    # small every prober hears from it within its probe: no suspicion, protocols/membership.md 4.1.)
    c.drop = lambda env, dst, now: (dst == 0 or env.src == IDS[0]) and 10.0 <= now < 11.4
    c.run(30.0)
    assert c.of(Suspect, subject=0), "the blackout should have caused a suspicion"
    assert c.of(Failed) == []
    assert c.cores[0].incarnation >= 1 and c.of(Refuted, observer=0)
    assert all(core.state_of(IDS[0]) == "alive" for core in c.cores[1:])


def test_forged_dead_rumor_about_a_live_node_is_refuted_and_kills_nobody():
    c = Cluster(6)
    c.run(3.0)
    for i in range(1, 5):
        c.at(3.5, i, lambda core, now: core.receive(_gossip(5, INDEX[core.node_id], [[DEAD, IDS[0], 0]]), now))
    c.run(15.0)
    assert c.of(Failed) == []
    assert c.cores[0].incarnation == 1
    assert all(core.state_of(IDS[0]) == "alive" for core in c.cores[1:])
    assert sum(core.stats["verifications"] for core in c.cores) >= 4


def test_stale_incarnations_are_ignored():
    c = Cluster(4)
    c.run(2.0)
    c.at(2.5, 1, lambda core, now: core.receive(_gossip(2, 1, [[SUSPECT, IDS[0], 0, []]]), now))
    c.run(8.0)
    assert c.cores[0].incarnation == 1 and c.cores[1].incarnation_of(IDS[0]) == 1
    before = len(c.of(Suspect))
    stale = c.cores[1].stats["rumors_stale"]
    c.at(8.5, 1, lambda core, now: core.receive(_gossip(3, 1, [[SUSPECT, IDS[0], 0, []], [DEAD, IDS[0], 0]]), now))
    c.run(12.0)
    assert len(c.of(Suspect)) == before  # nothing new
    assert c.cores[1].stats["rumors_stale"] >= stale + 2
    assert c.of(Failed) == []


def test_a_node_cannot_refute_for_another():
    c = Cluster(5)
    c.crash(5.0, 0)
    c.run(7.3)
    h = c.cores[1]
    assert h.state_of(IDS[0]) == "suspect"
    inc = h.incarnation_of(IDS[0])
    # Node 2 claims node 0 refuted at a higher incarnation, and sends a message saying its own
    # incarnation is 99: neither changes what node 1 holds on node 0.
    c.at(7.4, 1, lambda core, now: core.receive(
        _env(2, 1, GOSSIP, [0, 99, [[ALIVE, inc + 5, CONTACTS[0].public_key, CONTACTS[0].endpoint]]]), now))
    c.run(7.5)
    assert h.state_of(IDS[0]) == "suspect" and h.incarnation_of(IDS[0]) == inc
    assert h.incarnation_of(IDS[2]) == 99  # the sender's own claim is about the sender
    assert h.stats["alive_hints"] >= 1
    c.run(30.0)
    assert [obs for _, obs, _ in c.of(Failed, subject=0)].count(1) == 1
    assert c.of(Alive, subject=0) == []


def test_a_suspected_node_tells_the_accusers_it_holds_and_that_clears_their_suspicion():
    """The refutation goes to the accusers it holds directly, not only as a rumor: only a message from
    the suspect clears an accuser's suspicion, and the rumor may never reach it (a partition leaves
    most of the suspect's gossip targets unreachable)."""
    b = Membership(CONTACTS[1], random.Random(3), MembershipConfig(suspicion_min=1000.0, suspicion_max=1000.0))
    b.add(CONTACTS[0], 0.0)
    _drive(b, 5.0, lambda env, now: None)  # node 0 never answers: b's own probe fails, b accuses it
    assert b.state_of(IDS[0]) == "suspect"
    a = Membership(CONTACTS[0], random.Random(1))
    for i in (1, 2, 3):
        a.add(CONTACTS[i], 0.0)
    accusers = [IDS[1][:8], IDS[5][:8]]  # node 5 is not one of a's members: a cannot reach it
    a.receive(_gossip(3, 0, [[SUSPECT, IDS[0], 0, accusers]]), 5.0)
    assert a.incarnation == 1
    direct = [e for e in a.take_outgoing() if e.type == GOSSIP]
    assert [e.dst for e in direct] == [IDS[1]]
    assert direct[0].body[2] == [[ALIVE, 1, CONTACTS[0].public_key, CONTACTS[0].endpoint]]
    assert a.stats["refutations_sent"] == 1
    b.take_events()
    b.receive(direct[0], 5.01)
    assert b.state_of(IDS[0]) == "alive" and b.incarnation_of(IDS[0]) == 1
    assert [type(ev) for ev in b.take_events()] == [Alive]
    # The same suspicion again (stale now) is not answered again.
    a.receive(_gossip(2, 0, [[SUSPECT, IDS[0], 0, accusers]]), 6.0)
    assert not [e for e in a.take_outgoing() if e.type == GOSSIP] and a.stats["refutations_sent"] == 1


def test_self_accusation_and_ack_from_a_stranger_are_dropped():
    a = Membership(CONTACTS[0], random.Random(1))
    a.add(CONTACTS[1], 0.0)
    a.receive(_gossip(1, 0, [[SUSPECT, IDS[1], 0, []], [DEAD, IDS[1], 0]]), 0.1)
    assert a.state_of(IDS[1]) == "alive" and a.stats["self_accusations"] == 2
    a.tick(a.next_timer())
    ping = next(e for e in a.take_outgoing() if e.type == PING)
    a.receive(_env(2, 0, ACK, [ping.body[0], 0]), 0.2)  # node 2 was not asked
    assert a.stats["acks_unexpected"] == 1 and a.stats["probes_acked"] == 0


# -- Lifeguard ------------------------------------------------------------------------------------------

def _drive(core: Membership, until: float, answer) -> list[Envelope]:
    """Run one core alone on its own timers; ``answer(env, now)`` returns envelopes to feed back."""
    sent = []
    while True:
        t = core.next_timer()
        if t is None or t > until:
            return sent
        core.tick(t)
        for env in core.take_outgoing():
            sent.append((t, env))
            for reply in answer(env, t) or ():
                core.receive(reply, t + 0.002)
        core.take_events()


def test_lhm_grows_on_missed_nacks_and_acks_stretches_the_interval_and_shrinks_on_success():
    cfg = MembershipConfig(suspicion_max=1000.0, suspicion_min=1000.0)
    a = Membership(CONTACTS[0], random.Random(7), cfg)
    for i in range(1, 6):
        a.add(CONTACTS[i], 0.0)
    sent = _drive(a, 120.0, lambda env, now: None)  # nobody answers: no acks, no nacks
    assert a.local_health == cfg.lhm_max
    assert a.stats["nacks_missed"] > 0
    pings = [t for t, e in sent if e.type == PING]
    # The first pings are one period apart; once the LHM saturates they are 1 + lhm_max periods apart.
    assert pings[1] - pings[0] == pytest.approx(cfg.probe_interval, abs=0.01)
    late = [b - a_ for a_, b in zip(pings, pings[1:]) if a_ > 70.0]
    assert late and all(g == pytest.approx(cfg.probe_interval * (1 + cfg.lhm_max), abs=0.01) for g in late)
    # Now every member answers: each acked probe lowers the LHM by one.
    acker = lambda env, now: [_env(INDEX[env.dst], 0, ACK, [env.body[0], 0])] if env.type == PING else None
    _drive(a, 300.0, acker)
    assert a.local_health == 0


def test_helpers_nacking_keep_lhm_at_zero():
    a = Membership(CONTACTS[0], random.Random(3))
    for i in range(1, 6):
        a.add(CONTACTS[i], 0.0)
    dead = IDS[1]

    def answer(env, now):
        if env.type == PING and env.dst != dead:
            return [_env(INDEX[env.dst], 0, ACK, [env.body[0], 0])]
        if env.type == PING_REQ:  # the helper tried node 1 and got nothing
            return [_env(INDEX[env.dst], 0, NACK, [env.body[0], 0])]
        return None

    _drive(a, 30.0, answer)
    assert a.local_health == 0
    assert a.stats["nacks_received"] >= 3
    assert a.state_of(dead) in ("suspect", "dead")


def test_a_stalled_node_accuses_nobody():
    a = Membership(CONTACTS[0], random.Random(5))
    for i in range(1, 4):
        a.add(CONTACTS[i], 0.0)
    t = a.next_timer()
    a.tick(t)
    assert [e.type for e in a.take_outgoing()] == [PING]
    # The process was stopped for 5 s: its timers fire late, the ack is still unread.
    a.tick(t + 5.0)
    a.take_outgoing()
    assert a.stats["stalls"] == 1 and a.local_health >= 1
    assert a.stats["probes_inconclusive"] == 1 and a.stats["suspected"] == 0


def test_suspicion_timeout_shrinks_with_independent_confirmations():
    cfg = MembershipConfig(lhm_max=0, indirect_checks=0)
    k = cfg.suspicion_confirmations
    times = {}
    for n_acc in range(k + 1):
        h = Membership(CONTACTS[0], random.Random(1), cfg)
        h.add(CONTACTS[1], 0.0)
        h.add(CONTACTS[2], 0.0)
        accusers = [IDS[10 + a][:8] for a in range(n_acc)]
        h.receive(_gossip(2, 0, [[SUSPECT, IDS[1], 0, accusers]]), 1.0)
        failed_at = None
        answer = lambda env, now: [_env(2, 0, ACK, [env.body[0], 0])] if env.type == PING and env.dst == IDS[2] else None
        t = 1.0
        while failed_at is None and t < 100:
            t = h.next_timer()
            h.tick(t)
            for env in h.take_outgoing():
                for r in answer(env, t) or ():
                    h.receive(r, t)
            for ev in h.take_events():
                if type(ev) is Failed:
                    failed_at = t
        times[n_acc] = failed_at - 1.0
    # Our own failed verification is one more accuser: n_acc + 1 accusers, n_acc confirmations.
    lo, hi = cfg.suspicion_min, cfg.suspicion_max
    for c in range(k + 1):
        expect = max(lo, hi - (hi - lo) * math.log(c + 1) / math.log(k + 1))
        # With no prior accuser, the verification probe itself is what fails: declared at its end.
        assert times[c] == pytest.approx(max(expect, cfg.probe_interval), abs=0.01), (c, times)
    assert times[k] == pytest.approx(lo, abs=0.01)
    assert all(times[c] > times[c + 1] for c in range(k))


# -- leaving ----------------------------------------------------------------------------------------------

def test_graceful_leave_is_left_everywhere_and_never_failed():
    c = Cluster(8, loss=0.01)

    def leave(core, now):
        until = core.leave(now)
        c.sim.at(until, lambda t: c.sim.crash(IDS[3]))

    c.at(6.0, 3, leave)
    c.run(40.0)
    left = c.of(Left, subject=3)
    assert sorted(obs for _, obs, _ in left) == [i for i in range(8) if i != 3]
    assert max(t for t, _, _ in left) < 7.5
    assert c.of(Failed) == []
    assert c.cores[3].leaving


# -- rumors -----------------------------------------------------------------------------------------------

def test_retransmit_limit_grows_with_log_n():
    cfg = MembershipConfig()
    limits = [cfg.transmit_limit(n) for n in (10, 100, 1000, 10_000, 100_000)]
    assert limits == [math.ceil(cfg.retransmit_mult * math.log10(n + 1)) for n in (10, 100, 1000, 10_000, 100_000)]
    assert limits == sorted(limits) and limits[-1] > limits[0]
    for n in (100, 10_000):
        a = Membership(CONTACTS[0], random.Random(1))
        a.add(CONTACTS[1], 0.0)
        a.set_network_size(n)
        a.receive(_gossip(1, 0, [[SUSPECT, IDS[40], 0, []], [DEAD, IDS[41], 0]]), 0.0)
        sent = [r[1] for _ in range(100) for r in a.piggyback(10_000)]
        assert sent.count(IDS[40]) == a.transmit_limit == cfg.transmit_limit(n)
        assert sent.count(IDS[41]) == (a.transmit_limit + 1) // 2  # dead rumors: half (holders decide themselves)
        assert a.pending_rumors == 0


def test_news_about_strangers_is_relayed_once_and_a_flood_of_it_is_bounded():
    """News about nodes we do not hold is relayed (the holders are spread over the mesh), once per news,
    but at most foreign_limit strangers per foreign_window: after a mass crash every node would
    otherwise relay the news of every death, and with one 256-subject memory for all news it forgot
    and re-learned it over and over (protocols/membership.md 5.2)."""
    cfg = MembershipConfig()
    a = Membership(CONTACTS[0], random.Random(1), cfg)
    a.add(CONTACTS[1], 0.0)
    a.receive(_gossip(1, 0, [[SUSPECT, IDS[50], 3, []]]), 0.0)
    assert a.pending_rumors == 1 and a.stats["rumors_foreign"] == 1 and a.stats["rumors_new"] == 1
    a.receive(_gossip(1, 0, [[SUSPECT, IDS[50], 3, []]]), 0.1)
    assert a.pending_rumors == 1 and a.stats["rumors_duplicate"] == 1
    a.receive(_gossip(1, 0, [[DEAD, IDS[50], 3]]), 0.2)  # newer news about a stranger we relay: relayed
    assert a.stats["rumors_new"] == 2 and a.stats["rumors_foreign_dropped"] == 0
    rng = random.Random(2)
    for batch in range(400):
        rumors = [[DEAD, rng.randbytes(32), rng.randrange(10)] for _ in range(cfg.max_rumors_per_message)]
        a.receive(_gossip(1, 0, rumors), 1.0 + batch * 0.01)
    assert a.stats["rumors_new"] == 1 + cfg.foreign_limit  # IDS[50] twice, then one per stranger admitted
    assert a.stats["rumors_foreign_dropped"] == 400 * cfg.max_rumors_per_message - (cfg.foreign_limit - 1)
    assert a.pending_rumors <= cfg.max_rumors
    assert a.stats["rumors_evicted"] == 0 and a.stats["heard_evicted"] == 0
    # The early news is still remembered: a copy of it is a duplicate, not news relayed afresh (with
    # the LRU memory the flood had pushed it out, and it went round again).
    a.receive(_gossip(1, 0, [[DEAD, IDS[50], 3]]), 9.0)
    assert a.stats["rumors_new"] == 1 + cfg.foreign_limit and a.stats["rumors_duplicate"] == 2
    # A window later the slots are free again, one per new stranger.
    t = 1.0 + cfg.foreign_window
    a.receive(_gossip(1, 0, [[DEAD, rng.randbytes(32), 0] for _ in range(4)]), t)
    assert a.stats["rumors_new"] == 1 + cfg.foreign_limit + 4
    a.receive(_gossip(1, 0, [[DEAD, rng.randbytes(32), 0]] * 1000), t)
    assert a.stats["rumors_truncated"] == 1
    assert len(a) == 1 and a.state_of(IDS[1]) == "alive"  # the table itself is untouched


def test_news_about_a_stranger_never_takes_a_queue_slot_from_news_about_members():
    """A full rumor queue evicts its most-sent rumor for news about a member, a tombstone or us, but
    news about a stranger is dropped instead (it is useless to us), and costs no memory."""
    cfg = MembershipConfig(max_rumors=4)
    a = Membership(CONTACTS[0], random.Random(1), cfg)
    for i in range(1, 9):
        a.add(CONTACTS[i], 0.0)
    a.set_network_size(10_000)  # 11 sends per rumor: the verification pings below do not retire any
    a.receive(_gossip(9, 0, [[SUSPECT, IDS[i], 0, [IDS[9][:8]]] for i in range(1, 5)]), 0.0)
    assert a.pending_rumors == 4 and a.stats["rumors_evicted"] == 0
    queued = {r[1] for r in a.piggyback(10_000)}
    assert queued == set(IDS[1:5])
    a.receive(_gossip(9, 0, [[DEAD, IDS[40 + i], 0] for i in range(6)]), 0.1)
    assert a.stats["rumors_foreign_dropped"] == 6 and a.stats["rumors_evicted"] == 0
    assert {r[1] for r in a.piggyback(10_000)} == queued
    a.receive(_gossip(9, 0, [[SUSPECT, IDS[5], 0, [IDS[9][:8]]]]), 0.2)  # news about a member: it makes room
    assert a.stats["rumors_evicted"] == 1 and IDS[5] in {r[1] for r in a.piggyback(10_000)}
    # The dropped news was not remembered: once there is room, a copy of it is relayed.
    for _ in range(20):
        a.piggyback(10_000)
    assert a.pending_rumors == 0
    a.receive(_gossip(9, 0, [[DEAD, IDS[40], 0]]), 0.3)
    assert a.pending_rumors == 1 and a.stats["rumors_foreign_dropped"] == 6


def test_the_news_memory_is_bounded_in_bytes_whatever_the_flood():
    """What a core keeps of the news it heard does not grow with the number of subjects: 20,000
    strangers' news costs no more memory than 2,000 (tracemalloc)."""
    import tracemalloc

    cfg = MembershipConfig()
    a = Membership(CONTACTS[0], random.Random(1), cfg)
    a.add(CONTACTS[1], 0.0)
    rng = random.Random(3)
    floods = [[[DEAD, rng.randbytes(32), 0] for _ in range(cfg.max_rumors_per_message)] for _ in range(625)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, rumors in enumerate(floods[:63]):
            a.receive(_gossip(1, 0, rumors), 1.0 + i * 0.01)
        after_2k = tracemalloc.get_traced_memory()[0]
        for i, rumors in enumerate(floods[63:]):
            a.receive(_gossip(1, 0, rumors), 2.0 + i * 0.01)
        after_20k = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert a.stats["rumors_foreign"] == 625 * cfg.max_rumors_per_message
    assert after_20k - after_2k < 4096
    assert after_2k - base < 64 * 1024


GARBAGE_BODIES = [
    None, "x", 7, b"", [], [1], ["a", 0], [1, -1], [-1, 0], [True, 0], [1, 1 << 40], [1, 0, "no"],
    [1, 0, {"a": 1}], [1, 0, [None, 1, "x", [], [1], [1, 2]]], [1, 0, [[9, 1, 2]]], [1, 0, [[1, b"short", 0]]],
    [1, 0, [[2, IDS[5], -3]]], [1, 0, [[2, IDS[5], 1 << 40]]], [1, 0, [[True, IDS[5], 0]]],
    [1, 0, [[0, 1, b"k" * 31, "tcp://h:1"]]], [1, 0, [[0, 1, b"k" * 32, "e" * 300]]], [1, 0, [[0, 1, b"k" * 32, 5]]],
    [1, 0, [[1, IDS[5], 0, "acc"]]], [1, 0, [[1, IDS[5], 0, [b"x"]]]], [1, 0, [[1, IDS[5], 0, [b"12345678"] * 9]]],
    [1, 0, [[[[[[]]]]]]], [1, 0, [[1, [IDS[5]], 0]]],
]


@pytest.mark.parametrize("typ", [PING, ACK, NACK, PING_REQ, GOSSIP, "swim.other"])
def test_garbage_bodies_are_counted_and_dropped(typ):
    a = Membership(CONTACTS[0], random.Random(1))
    a.add(CONTACTS[1], 0.0)
    for body in GARBAGE_BODIES:
        a.receive(_env(1, 0, typ, body), 0.5)
    a.receive(_env(1, 0, PING_REQ, [1, 0, [], b"k" * 31, "tcp://h:1"]), 0.5)
    a.receive(_env(1, 0, PING_REQ, [1, 0, [], CONTACTS[2].public_key, "tcp://h:1", -5]), 0.5)
    a.receive(_env(1, 0, PING_REQ, [1, 0, [], CONTACTS[0].public_key, "tcp://h:1", 500]), 0.5)  # target: us
    a.receive(Envelope(b"i" * 16, IDS[0], PING, [1, 0]), 0.5)  # from ourselves
    a.receive(Envelope(b"i" * 16, IDS[1], PING, [1, 0], IDS[3]), 0.5)  # not for us
    bad = sum(a.stats[k] for k in ("malformed", "rumors_bad", "rumors_unknown_kind", "unknown_type", "from_self",
                                   "misdirected"))
    assert bad >= len(GARBAGE_BODIES) // 2
    assert len(a) == 1 and a.state_of(IDS[1]) == "alive" and a.pending_rumors == 0
    # It still works.
    a.tick(a.next_timer())
    assert [e.type for e in a.take_outgoing() if e.type == PING]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=6), max_leaves=30),
       st.sampled_from([PING, ACK, NACK, PING_REQ, GOSSIP]))
def test_random_bodies_never_raise(body, typ):
    a = Membership(CONTACTS[0], random.Random(1))
    a.add(CONTACTS[1], 0.0)
    a.receive(_env(1, 0, typ, body), 0.5)
    a.receive(_env(1, 0, typ, [1, 0, [body]]), 0.6)
    a.tick(5.0)
    assert len(a) <= 1


# -- anti-entropy -----------------------------------------------------------------------------------------

def test_anti_entropy_repairs_a_lost_left_rumor():
    cfg = MembershipConfig(sync_interval=3.0)
    c = Cluster(6, config=cfg, seed=2)

    def leave(core, now):
        until = core.leave(now)
        c.sim.at(until, lambda t: c.sim.crash(IDS[5]))

    # Node 1 hears neither node 5's goodbye nor any rumor about it, until t = 9.
    def lost(env, dst, now):
        if dst != 1 or now >= 9.0:
            return False
        if env.src == IDS[5]:
            return True
        rumors = env.body[2] if type(env.body) is list and len(env.body) > 2 else ()
        return any(type(r) is list and IDS[5] in r for r in rumors)

    c.drop = lost
    c.at(5.0, 5, leave)
    c.run(30.0)
    assert c.dropped > 0
    left = c.of(Left, subject=5)
    assert sorted(obs for _, obs, _ in left) == [0, 1, 2, 3, 4]
    late = [t for t, obs, _ in left if obs == 1][0]
    assert 9.0 < late < 9.0 + 1.25 * cfg.sync_interval + 2 * cfg.probe_interval
    assert c.of(Failed) == []


def test_a_sync_answer_carries_the_tombstones_nearest_the_requester():
    """After a mass crash the recent rumors are long gone (sync_horizon), but the target's tombstones
    still tell a straggler which of its members died: those nearest the requester in id space first,
    since a Kademlia view holds the nodes near its owner."""
    cfg = MembershipConfig()
    a = Membership(CONTACTS[0], random.Random(1), cfg)
    for i in range(1, 64):
        a.add(CONTACTS[i], 0.0)
    for i in range(2, 42):  # 40 members buried at t=0
        a._declare(a._members[IDS[i]], DEAD, 0.0)
    a.take_outgoing()
    a.take_events()
    a.receive(_env(1, 0, PING, [7, 0, [], 1]), 100.0)  # node 1's sync, 100 s later: past the horizon
    (ack,) = [e for e in a.take_outgoing() if e.type == ACK]
    rumors = ack.body[2]
    d = int.from_bytes(IDS[1], "big")
    nearest = sorted((IDS[i] for i in range(2, 42)), key=lambda nid: int.from_bytes(nid, "big") ^ d)
    assert [r[1] for r in rumors] == nearest[: cfg.max_rumors_per_message]
    assert all(r[0] == DEAD and r[2] == 0 for r in rumors)
    b = Membership(CONTACTS[1], random.Random(2), cfg)  # and the straggler acts on them: it verifies
    for i in (0, *range(2, 42)):
        b.add(CONTACTS[i], 0.0)
    b.receive(ack, 100.0)
    assert sum(b.state_of(nid) == "suspect" for nid in nearest) == cfg.max_rumors_per_message


def test_healed_partition_converges_within_about_one_sync_interval():
    cfg = MembershipConfig(sync_interval=3.0)
    n = 10
    c = Cluster(n, config=cfg, seed=4)
    left, right = [IDS[i] for i in range(5)], [IDS[i] for i in range(5, n)]
    c.sim.at(5.0, lambda now: c.sim.partition(left, right))
    c.sim.at(35.0, lambda now: c.sim.heal())
    c.run(34.9)
    for i in range(n):  # each side declared (some of) the other dead, and only the other; the LHM rose
        dead = {nid for nid, state, _ in c.cores[i].tombstones() if state == "dead"}
        assert dead and dead <= set(right if i < 5 else left)
    assert all(INDEX[ev.node_id] // 5 != obs // 5 for _, obs, ev in c.of(Failed))
    c.run(35.0 + 1.25 * cfg.sync_interval + 3 * cfg.probe_interval)
    for i in range(n):
        held = {nid for nid, state, _, _ in c.cores[i].members() if state == "alive"}
        assert held == set(IDS[:n]) - {IDS[i]}, f"node {i} holds {len(held)} of {n - 1} alive"
    assert all(INDEX[ev.node_id] // 5 != obs // 5 for _, obs, ev in c.of(Failed))  # no false failure inside a side


# -- the simulation driver --------------------------------------------------------------------------------

def test_sim_smoke_n50_crashes_are_detected_without_false_positives():
    report = run(Scenario(nodes=50, seconds=60, seed=3, loss=0.01, crash=5, crash_window=(10, 30)))
    assert report["crashes"] == 5 and report["undetected"] == 0
    assert report["false_positives"] == 0
    assert report["detect_all_s"]["n"] == 5 and report["detect_all_s"]["p100"] < 30
    assert 1.0 < report["msgs_per_node_s"] < 10.0 and report["bytes_per_node_s"] > 0


def test_sim_smoke_paused_nodes_do_not_get_healthy_nodes_declared_dead():
    report = run(Scenario(nodes=60, seconds=50, seed=2, loss=0.01, pause_fraction=0.1, pause_period=1.0,
                          pause_duty=0.9, pause_window=(10.0, 40.0)))
    assert report["paused_nodes"] == 6
    assert report["healthy_false_positives"] == 0


def test_sim_is_deterministic_by_seed():
    a = run(Scenario(nodes=20, seconds=20, seed=5, crash=2, crash_window=(5, 10)))
    b = run(Scenario(nodes=20, seconds=20, seed=5, crash=2, crash_window=(5, 10)))
    for key in ("wall_s", "peak_rss_mb"):
        a.pop(key)
        b.pop(key)
    assert a == b


def test_a_relay_knows_where_to_send_the_ping_for_a_target_it_does_not_hold():
    """The ping_req carries the target's contact; a relay that never met the target must still be able
    to tell its shell where that ping goes (contact_for), or the indirect check is lost."""
    relay = Membership(CONTACTS[2], random.Random(1))
    relay.add(CONTACTS[0], 0.0)  # the prober; the target (node 1) is unknown to the relay
    assert relay.contact_for(IDS[1]) is None
    target = CONTACTS[1]
    relay.receive(_env(0, 2, "swim.ping_req", [7, 0, [], target.public_key, target.endpoint]), 0.1)
    pings = [e for e in relay.take_outgoing() if e.type == "swim.ping" and e.dst == IDS[1]]
    assert len(pings) == 1
    assert relay.contact_for(IDS[1]) == target
    assert relay.contact_for(IDS[0]) == CONTACTS[0]


def test_indirect_probe_helpers_are_members_heard_from_lately():
    """A member cut off by a partition stays alive in our view until its suspicion runs out; as a
    helper it cannot reach the target. Helpers are picked among the members heard from within the
    last few periods (here 1, 2 and 3, which talk to us every period), so the silent ones 4-11 are
    not asked, whichever target's direct ping was lost."""
    heard = {IDS[1], IDS[2], IDS[3]}
    for seed in range(10):
        a = Membership(CONTACTS[0], random.Random(seed), MembershipConfig(suspicion_max=1000.0, suspicion_min=1000.0))
        for i in range(1, 12):
            a.add(CONTACTS[i], 0.0)

        def answer(env, now):
            out = [_gossip(i, 0, []) for i in (1, 2, 3)]
            if env.type == PING and env.dst in heard:
                out.append(_env(INDEX[env.dst], 0, ACK, [env.body[0], 0]))
            return out

        sent = _drive(a, 30.0, answer)
        asked = [e.dst for _, e in sent if e.type == PING_REQ]
        assert asked and set(asked) <= heard, seed


def test_a_lost_check_after_a_heal_is_retried_within_a_period_not_at_the_next_sync():
    """After a heal (a dead member answered a check), a check lost to 1 % loss used to wait for the
    next sync (10 s later, up to 21 s after the heal at N=2000). Now a failed check is retried once a
    period for a sync interval after a heal is detected. Here the syncs are 60 s apart, so only the
    retry can revive node 5, whose first two checks after the heal are lost."""
    cfg = MembershipConfig(sync_interval=60.0)
    a = Membership(CONTACTS[0], random.Random(2), cfg)
    for i in range(1, 6):
        a.add(CONTACTS[i], 0.0)
    heal = 40.0
    lost = {5: 2}
    events = []

    def answer(env, now):
        j = INDEX[env.dst]
        if env.type == PING and (j <= 3 or now >= heal):
            if j in lost and now >= heal and lost[j] > 0:
                lost[j] -= 1
                return []
            return [_env(j, 0, ACK, [env.body[0], 0])]
        if env.type == PING_REQ:
            return [_env(j, 0, NACK, [env.body[0], 0])]
        return []

    def drive(until):
        while True:
            t = a.next_timer()
            if t is None or t > until:
                return
            a.tick(t)
            for env in a.take_outgoing():
                for reply in answer(env, t):
                    a.receive(reply, t + 0.002)
            events.extend((t, e) for e in a.take_events())

    drive(heal)
    assert {a.state_of(IDS[4]), a.state_of(IDS[5])} == {"dead"}
    a.receive(_env(4, 0, PING, [1, 0]), heal)  # node 4 is back: we check it, it answers, a heal
    events.extend((heal, e) for e in a.take_events())
    for env in a.take_outgoing():
        for reply in answer(env, heal):
            a.receive(reply, heal + 0.002)
    drive(heal + 20.0)
    back = {node_id_of(e.contact.public_key): t for t, e in events if type(e) is Alive and t >= heal}
    assert set(back) == {IDS[4], IDS[5]}
    # two lost checks (a period each) and the two-check probation (2 periods)
    assert back[IDS[5]] - heal <= 5 * cfg.probe_interval + 0.1


def _acker(silent: set[int]):
    """An ``answer`` for _drive: every member acks our pings except those in ``silent`` (crashed)."""
    def answer(env, now):
        j = INDEX[env.dst]
        if env.type != PING or j in silent:
            return ()
        return [Envelope(random.randbytes(16), env.dst, ACK, [env.body[0], 0], IDS[0])]
    return answer


def test_check_pings_carry_only_our_opinion_and_come_half_way_between_syncs():
    """A check of a buried member carries our opinion of it (so it refutes if it is back) and nothing
    from the rumor queue: after a mass crash, checks of the dead took a large share of a node's rumor
    transmissions. Tombstones are checked at each sync and half-way between: a holder that hears
    nothing from across a healed partition finds out within about half an interval."""
    cfg = MembershipConfig()
    a = Membership(CONTACTS[0], random.Random(3), cfg)
    for i in range(1, 10):
        a.add(CONTACTS[i], 0.0)
    a._declare(a._members[IDS[2]], DEAD, 0.0)
    a.take_outgoing()
    sent = _drive(a, 60.0, _acker({2}))
    checks = [(t, env) for t, env in sent if env.dst == IDS[2]]
    assert all(env.type == PING and env.body[2] == [[DEAD, IDS[2], 0]] for _, env in checks)
    assert any(len(env.body) > 2 and [DEAD, IDS[2], 0] in env.body[2] for t, env in sent if env.dst != IDS[2])  # news: elsewhere
    times = [t for t, _ in checks]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 8 and max(gaps) <= 0.5 * 1.25 * cfg.sync_interval + 2 * cfg.probe_interval


def test_a_member_buried_soon_after_a_dead_one_answered_is_checked_a_period_later():
    """Once a buried member answers a check (most likely a partition healed), a member buried after
    that (a suspicion begun while cut off ran out) is checked a period later, not at the next sync."""
    cfg = MembershipConfig(sync_interval=1000.0)  # no sync, no half-way checks in this test
    a = Membership(CONTACTS[0], random.Random(4), cfg)
    for i in range(1, 10):
        a.add(CONTACTS[i], 0.0)
    a._declare(a._members[IDS[2]], DEAD, 0.0)
    _drive(a, 3.0, _acker({2, 3}))
    a.receive(_env(2, 0, PING, [1, 0]), 3.0)  # node 2 is back: we check it (at once: a slot is free), it answers
    checks = [env for env in a.take_outgoing() if env.dst == IDS[2] and env.type == PING]
    assert checks
    for env in checks:
        for reply in _acker({3})(env, 3.0):
            a.receive(reply, 3.002)
    a.take_outgoing()
    _drive(a, 6.0, _acker({3}))
    a._declare(a._members[IDS[3]], DEAD, 6.0)
    a.take_outgoing()
    sent = _drive(a, 6.0 + cfg.probe_interval + 0.5, _acker({3}))
    assert any(env.dst == IDS[3] and env.type == PING and env.body[2] == [[DEAD, IDS[3], 0]] for _, env in sent)


def test_a_storm_of_news_about_strangers_in_trouble_sweeps_every_member_once():
    """News of more than foreign_limit strangers within foreign_window, the last a suspicion (a mass
    crash elsewhere, whose news we relay no further), makes a node sweep its own members: the news
    naming its own dead may never reach it. News that they are alive or dead does not (dead rumors come
    in sync answers long after a storm); nor do suspicions spread out over more than the window."""
    cfg = MembershipConfig()
    rng = random.Random(4)

    def core():
        a = Membership(CONTACTS[0], random.Random(5), cfg)
        for i in range(1, 45):
            a.add(CONTACTS[i], 0.0)
        return a

    a = core()
    a.receive(_gossip(1, 0, [[ALIVE, 1, rng.randbytes(32), "tcp://h:1"] for _ in range(cfg.max_rumors_per_message)]), 1.0)
    a.receive(_gossip(1, 0, [[ALIVE, 1, rng.randbytes(32), "tcp://h:1"] for _ in range(cfg.max_rumors_per_message)]), 1.0)
    a.receive(_gossip(1, 0, [[ALIVE, 1, rng.randbytes(32), "tcp://h:1"] for _ in range(4)]), 1.0)
    assert a.stats["rumors_foreign_dropped"] == 4 and a.stats["sweeps"] == 0
    a.receive(_gossip(1, 0, [[DEAD, rng.randbytes(32), 0]]), 1.1)  # dead rumors (sync answers): no storm
    assert a.stats["rumors_foreign_dropped"] == 5 and a.stats["sweeps"] == 0
    a.receive(_gossip(1, 0, [[SUSPECT, rng.randbytes(32), 0, []]]), 1.1)
    assert a.stats["sweeps"] == 1
    sent = _drive(a, 1.1 + 44 / cfg.sweep_rate * cfg.gossip_interval + 1.0, _acker(set()))
    assert {INDEX[env.dst] for _, env in sent if env.type == PING} == set(range(1, 45))

    b = core()  # the same number of strangers, spread over more than the window: no storm
    step = 2 * cfg.foreign_window / (cfg.foreign_limit + 8)
    for i in range(cfg.foreign_limit + 8):
        b.receive(_gossip(1, 0, [[SUSPECT, rng.randbytes(32), 0, []]]), 1.0 + i * step)
    assert b.stats["rumors_foreign_dropped"] == 0 and b.stats["sweeps"] == 0


def test_burying_many_members_at_once_sweeps_every_member_once():
    """After sweep_burials burials within one sync interval (a mass crash), every alive member is probed
    within members / sweep_rate gossip intervals, not in its round-robin turn; once per sweep_cooldown."""
    cfg = MembershipConfig()
    a = Membership(CONTACTS[0], random.Random(5), cfg)
    for i in range(1, 45):
        a.add(CONTACTS[i], 0.0)
    dead = set(range(1, 1 + cfg.sweep_burials))
    _drive(a, 10.0, _acker(dead))
    for j in dead:
        a._declare(a._members[IDS[j]], DEAD, 10.0)
    assert a.stats["sweeps"] == 1
    alive = set(range(1, 45)) - dead
    span = len(alive) / cfg.sweep_rate * cfg.gossip_interval
    sent = _drive(a, 10.0 + span + 1.0, _acker(dead))
    assert {INDEX[env.dst] for _, env in sent if env.type == PING} >= alive
    assert a.stats["sweep_probes"] >= len(alive) - 2  # a few came in their round-robin turn instead
    more = list(alive)[:cfg.sweep_burials]
    for j in more:  # more burials within the cooldown: no second sweep
        a._declare(a._members[IDS[j]], DEAD, 20.0)
    assert a.stats["sweeps"] == 1


# -- pacing inbound probes (membership_pace.py, protocols/membership.md 4.5) ----------------------------

def test_inbound_pace_counts_distinct_probers_within_its_window():
    from zmqagents.core.membership_pace import InboundPace

    p = InboundPace(budget=4, max_pace=3, period=1.0)  # window 2 x 3 periods = 6 s
    for i in range(4):
        p.heard(IDS[i], 0.0)
    assert p.pace(0.0) == 0  # at the budget: no pacing
    p.heard(IDS[0], 1.0)  # the same prober again counts once
    assert p.pace(1.0) == 0 and len(p) == 4
    for i in range(4, 9):
        p.heard(IDS[i], 2.0)
    assert p.pace(2.0) == 3  # ceil(9 / 4)
    for i in range(9, 30):
        p.heard(IDS[i], 2.0)
    assert p.pace(2.0) == 3  # capped at max_pace
    assert p.pace(6.5) == 3 and len(p) == 27  # the three last heard at 0.0 are out of the window ...
    assert p.pace(8.5) == 0 and len(p) == 0  # ... and then every one of them
    off = InboundPace(budget=0, max_pace=3, period=1.0)
    for i in range(30):
        off.heard(IDS[i], 0.0)
    assert off.pace(0.0) == 0 and len(off) == 0
    bounded = InboundPace(budget=1, max_pace=16, period=1.0, max_probers=5)
    for i in range(20):
        bounded.heard(IDS[i], float(i))
    assert len(bounded) == 5 and bounded.pace(20.0) == 5


def _star(n: int, budget: int, crash_at: float | None = None, until: float = 60.0) -> Cluster:
    """Node 0 holds nodes 1..n-1, each of which holds only node 0."""
    views = {0: list(range(1, n)), **{i: [0] for i in range(1, n)}}
    c = Cluster(n, views=views, config=MembershipConfig(probe_budget=budget))
    if crash_at is not None:
        c.crash(crash_at, 0)
    c.run(until)
    return c


def test_a_hub_that_many_probe_paces_them_and_a_mesh_member_is_never_paced():
    n = 33  # 32 leaves whose only member is the hub: pace ceil(32 / 8) = 4
    paced, free = _star(n, budget=8), _star(n, budget=0)
    hub_pings = [c.cores[0].stats["acks_sent"] for c in (paced, free)]
    assert free.cores[0].stats["paced_acks"] == 0
    assert paced.cores[0].stats["paced_acks"] > 0
    # Unpaced, every leaf pings the hub every period (60 s / 1.5 s = 40 each); paced, once every 4.
    assert hub_pings[1] >= 0.95 * 32 * 40
    assert hub_pings[0] < 0.4 * hub_pings[1]
    assert all(core.stats["probes_paced"] > 0 for core in paced.cores[1:])
    assert paced.of(Suspect) == [] and paced.of(Failed) == []
    # Eight nodes that all hold each other: at most 7 probers each, within the budget: nothing changes.
    mesh = Cluster(8, config=MembershipConfig(probe_budget=4))
    mesh.run(30.0)
    assert sum(core.stats["paced_acks"] for core in mesh.cores) > 0  # 7 probers > 4: paced acks ...
    assert sum(core.stats["probes_paced"] for core in mesh.cores) == 0  # ... but nobody comes back sooner


def test_paced_leaves_still_detect_a_crashed_hub():
    c = _star(33, budget=8, crash_at=20.0, until=80.0)
    failed = c.of(Failed, subject=0)
    assert sorted(obs for _, obs, _ in failed) == list(range(1, 33))
    # Each leaf's next probe comes within pace (4) periods of the crash, then the suspicion timeout.
    assert max(t for t, _, _ in failed) - 20.0 < 4 * 1.5 + 1.5 + MembershipConfig().suspicion_max + 1.0
    assert c.of(Failed) == failed


def test_a_pace_in_an_ack_is_honoured_only_for_the_periodic_probe_and_capped():
    cfg = MembershipConfig(max_pace=4)
    m = Membership(CONTACTS[1], random.Random(1), cfg)
    m.add(CONTACTS[0], 0.0)
    m.tick(0.0)
    pings = [e for e in m.take_outgoing() if e.type == PING]
    t = 0.0
    while not pings:
        t = m.next_timer()
        m.tick(t)
        pings = [e for e in m.take_outgoing() if e.type == PING]
    ping, ping_at = pings[0], t
    m.receive(_env(0, 1, ACK, [ping.body[0], 0, [], 1000]), t + 0.01)  # far above max_pace: read as 4
    sent = []
    while t < 30.0:
        t = m.next_timer()
        m.tick(t)
        sent += [(t, e) for e in m.take_outgoing() if e.type == PING]
        for at, e in sent[-1:]:
            if at == t:
                m.receive(_env(0, 1, ACK, [e.body[0], 0]), t + 0.01)  # unpaced acks from now on
    first = sent[0][0] - ping_at
    assert 3.5 * 1.5 - 0.01 <= first <= 4.0 * 1.5 + 0.01  # rested pace - 1/2 periods (pace 4, not 1000)
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:])]
    assert gaps and max(gaps) < 1.6  # unpaced acks: probed every period again
    assert m.stats["probes_paced"] >= 3
    # Garbage in the pace slot is ignored.
    for bad in ("4", -3, [4], 2.5):
        m.receive(_env(0, 1, ACK, [0, 0, [], bad]), t)
    assert m.stats["malformed"] == 0
