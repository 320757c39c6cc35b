"""Membership after a partition heals: no accusation of a member that has shown life, refutations that reach
their accusers, first-hand refutations relayed past the bound on strangers' news (protocols/membership.md
4.1, 5.1, 5.2, 7). Sans-IO: one core, fed by hand, exact."""

from __future__ import annotations

import random

from zmqagents.core.membership import (
    ACK, ALIVE, DEAD, GOSSIP, NACK, PING, PING_REQ, SUSPECT, Membership, MembershipConfig,
)
from zmqagents.envelope import Envelope
from zmqagents.identity import node_id_of
from zmqagents.sim.membership_run import sim_contact

CONTACTS = [sim_contact(i) for i in range(16)]
IDS = [node_id_of(c.public_key) for c in CONTACTS]
INDEX = {nid: i for i, nid in enumerate(IDS)}


def _env(src: int, dst: int, typ: str, body) -> Envelope:
    return Envelope(random.randbytes(16), IDS[src], typ, body, IDS[dst])


def _core(n: int = 4, seed: int = 1, **cfg) -> Membership:
    a = Membership(CONTACTS[0], random.Random(seed), MembershipConfig(**cfg))
    for i in range(1, n):
        a.add(CONTACTS[i], 0.0)
    return a


def _first_probe(a: Membership) -> tuple[float, int]:
    """Fire timers until the first periodic ping; (when, whom)."""
    while True:
        t = a.next_timer()
        a.tick(t)
        pings = [e for e in a.take_outgoing() if e.type == PING]
        if pings:
            return t, INDEX[pings[0].dst]


def _run_probe(a: Membership, target: int, start: float, message_at: float | None) -> None:
    """Let the probe of ``target`` begun at ``start`` run out its period: ``target`` never acks, the
    helpers stay silent too (cut off, say), and ``target`` sends us one ping of its own at ``message_at``
    (None: nothing). Stops once the period is over (nothing else answered, so the LHM shows the verdict)."""
    end = start + a.config.probe_interval
    sent = False
    while True:
        t = a.next_timer()
        if message_at is not None and not sent and message_at <= t:
            a.receive(_env(target, 0, PING, [77, 0]), message_at)
            sent = True
            continue
        if t > end:
            return
        a.tick(t)
        a.take_outgoing()


def test_a_probe_whose_target_sent_us_a_message_meanwhile_accuses_nobody():
    """Its ping or ack was lost, but it pinged us since the probe began: it is alive (a heal: the probe
    began while we were cut off). No suspicion, and our local health stays as it was (a failed probe
    nobody nacked would raise it)."""
    a = _core()
    start, target = _first_probe(a)
    _run_probe(a, target, start, message_at=start + 0.7)  # after the indirect stage began
    assert a.state_of(IDS[target]) == "alive"
    assert a.stats["probes_heard"] == 1 and a.stats["suspected"] == 0 and a.stats["probes_failed"] == 0
    assert a.local_health == 0


def test_the_same_probe_without_a_message_accuses():
    """The control: same seed, same probe, the target silent throughout; and a message from before the
    probe began shows nothing about it."""
    for message_at in (None, "before"):
        a = _core()
        start, target = _first_probe(a)
        if message_at == "before":
            a.receive(_env(target, 0, PING, [77, 0]), start - 0.01)
            a.take_outgoing()
        _run_probe(a, target, start, message_at=None)
        assert a.state_of(IDS[target]) == "suspect"
        assert a.stats["probes_heard"] == 0 and a.stats["suspected"] == 1 and a.stats["probes_failed"] == 1
        assert a.local_health == 1


def test_a_verification_cleared_by_a_message_does_not_suspect_again():
    """A hearsay suspicion starts a verification probe; a message from the suspect clears the suspicion,
    and the verification that then runs out unanswered must not raise a new one."""
    a = _core(suspicion_min=1000.0, suspicion_max=1000.0)
    a.receive(_env(2, 0, GOSSIP, [0, 0, [[SUSPECT, IDS[1], 0, [IDS[2][:8]]]]]), 1.0)
    verify = [e for e in a.take_outgoing() if e.type == PING and e.dst == IDS[1]]
    assert len(verify) == 1 and a.state_of(IDS[1]) == "suspect"
    a.receive(_env(1, 0, GOSSIP, [0, 0, []]), 1.1)
    assert a.state_of(IDS[1]) == "alive"
    _run_probe(a, 1, 1.0, message_at=None)  # it runs out at 2.5 s
    assert a.state_of(IDS[1]) == "alive"
    assert a.stats["suspected"] == 1 and a.stats["probes_heard"] >= 1


def _gossip(src: int, rumors) -> Envelope:
    return _env(src, 0, GOSSIP, [0, 0, rumors])


def _named(i: int) -> list:
    return [CONTACTS[i].public_key, CONTACTS[i].endpoint]


def _alive(i: int, inc: int) -> list:
    return [ALIVE, inc, CONTACTS[i].public_key, CONTACTS[i].endpoint]


def test_a_suspicion_names_its_accuser_and_the_suspect_refutes_to_it_without_holding_it():
    """After a heal tables are asymmetric: the accuser may not be among the suspect's members, and the
    suspect's refutation, pushed to random members, may never reach it (sim, N=2000: node 1600 accused
    423 at 14.1 s, 423 refuted at 15.1 s, and 1600 declared it at 24.1 s, a false positive on its own
    side of the partition). The rumor names the accuser's contact, and the suspect sends it the
    refutation directly."""
    b = Membership(CONTACTS[9], random.Random(3), MembershipConfig(suspicion_min=1000.0, suspicion_max=1000.0))
    b.add(CONTACTS[0], 0.0)
    start, target = _first_probe(b)
    assert target == 0
    _run_probe(b, 0, start, message_at=None)
    assert b.state_of(IDS[0]) == "suspect"
    wire = [r for r in b.piggyback(10_000) if r[0] == SUSPECT]
    assert wire == [[SUSPECT, IDS[0], 0, [IDS[9][:8]], _named(9)]]
    a = Membership(CONTACTS[0], random.Random(1))
    for i in (1, 2, 3):
        a.add(CONTACTS[i], 0.0)
    assert a.contact_for(IDS[9]) is None
    a.receive(_gossip(3, wire), 5.0)  # relayed by node 3
    assert a.incarnation == 1
    direct = [e for e in a.take_outgoing() if e.type == GOSSIP]
    assert [e.dst for e in direct] == [IDS[9]] and direct[0].body[2] == [_alive(0, 1)]
    assert a.contact_for(IDS[9]) == CONTACTS[9]  # so the shell can dial it
    assert a.stats["refutations_sent"] == 1 and IDS[9] not in a
    b.take_events()
    b.receive(direct[0], 5.01)
    assert b.state_of(IDS[0]) == "alive" and b.incarnation_of(IDS[0]) == 1


def test_accusers_named_after_the_refutation_are_told_once_each_and_within_a_bound():
    """A confirmer's copy of the suspicion names the confirmer; it may reach the suspect after it refuted
    (stale by then): the confirmer is told all the same, once. A forger naming ever new accusers makes the
    suspect send at most max_direct_refutations messages per refutation (3 here, 64 by default)."""
    a = Membership(CONTACTS[0], random.Random(1), MembershipConfig(max_direct_refutations=3))
    for i in (1, 2, 3):
        a.add(CONTACTS[i], 0.0)
    a.receive(_gossip(3, [[SUSPECT, IDS[0], 0, [IDS[9][:8]], _named(9)]]), 5.0)
    assert [e.dst for e in a.take_outgoing() if e.type == GOSSIP] == [IDS[9]]
    confirmed = [SUSPECT, IDS[0], 0, [IDS[9][:8], IDS[10][:8]], _named(10)]
    a.receive(_gossip(2, [confirmed]), 5.5)
    assert a.incarnation == 1  # stale: no new refutation
    out = [e for e in a.take_outgoing() if e.type == GOSSIP]
    assert [e.dst for e in out] == [IDS[10]] and out[0].body[2] == [_alive(0, 1)]
    a.receive(_gossip(1, [confirmed]), 5.6)
    assert not [e for e in a.take_outgoing() if e.type == GOSSIP]
    for i in range(11, 16):  # forged: new names, each a stranger
        a.receive(_gossip(1, [[SUSPECT, IDS[0], 0, [IDS[i][:8]], _named(i)]]), 6.0)
    out = [e for e in a.take_outgoing() if e.type == GOSSIP]
    assert [e.dst for e in out] == [IDS[11]]  # the third and last of this refutation
    assert a.stats["refutations_sent"] == 3
    # A new suspicion (at our incarnation) is a new refutation: its accusers are told again.
    a.receive(_gossip(1, [[SUSPECT, IDS[0], 1, [IDS[12][:8]], _named(12)]]), 7.0)
    assert a.incarnation == 2
    assert [e.dst for e in a.take_outgoing() if e.type == GOSSIP] == [IDS[12]]


def test_the_named_accuser_field_is_checked_optional_and_nothing_past_it_is_relayed():
    """Wire compatibility (protocols/membership.md 5.1): a suspect rumor without the named accuser (an
    older node's) is taken as before; a malformed one is dropped and counted; elements past those a node
    understands are not relayed (a relayed rumor costs what the byte budget counted)."""
    a = Membership(CONTACTS[0], random.Random(1))
    a.add(CONTACTS[1], 0.0)
    a.receive(_gossip(1, [[SUSPECT, IDS[12], 0, [IDS[1][:8]]]]), 1.0)  # old form, about a stranger
    assert a.stats["rumors_new"] == 1 and a.stats["rumors_bad"] == 0
    for bad in ([b"k" * 32], [b"k" * 31, "tcp://x:1"], [b"k" * 32, ""], [b"k" * 32, "x" * 256], "x", [b"k" * 32, 7]):
        a.receive(_gossip(1, [[SUSPECT, IDS[13], 0, [IDS[1][:8]], bad]]), 2.0)
    assert a.stats["rumors_bad"] == 6 and a.stats["rumors_new"] == 1
    a.receive(_gossip(1, [[SUSPECT, IDS[14], 0, [IDS[1][:8]], _named(1), "x" * 5000, 7]]), 3.0)
    a.receive(_gossip(1, [[DEAD, IDS[15], 0, "x" * 5000]]), 3.0)
    out = {r[1]: r for r in a.piggyback(100_000) if r[0] != ALIVE}
    assert out[IDS[14]] == [SUSPECT, IDS[14], 0, [IDS[1][:8]], _named(1)]
    assert out[IDS[15]] == [DEAD, IDS[15], 0]
    assert out[IDS[12]] == [SUSPECT, IDS[12], 0, [IDS[1][:8]]]


def test_a_merged_suspicion_names_the_latest_accuser():
    """Holders merge accuser lists as copies meet (6.2); the merged rumor names the accuser the newest
    copy named, so the suspect learns how to reach each accuser from the copy it added."""
    a = Membership(CONTACTS[0], random.Random(1), MembershipConfig(suspicion_min=1000.0, suspicion_max=1000.0))
    for i in (1, 2, 3):
        a.add(CONTACTS[i], 0.0)
    a.receive(_gossip(2, [[SUSPECT, IDS[1], 0, [IDS[9][:8]], _named(9)]]), 1.0)
    assert a.state_of(IDS[1]) == "suspect"
    a.receive(_gossip(3, [[SUSPECT, IDS[1], 0, [IDS[9][:8], IDS[10][:8]], _named(10)]]), 1.1)
    queued = [r for r in a.piggyback(10_000) if r[0] == SUSPECT and r[1] == IDS[1]]
    assert queued == [[SUSPECT, IDS[1], 0, [IDS[9][:8], IDS[10][:8]], _named(10)]]
    # The same for a stranger's suspicion we only relay.
    a.receive(_gossip(2, [[SUSPECT, IDS[12], 0, [IDS[9][:8]], _named(9)]]), 1.2)
    a.receive(_gossip(3, [[SUSPECT, IDS[12], 0, [IDS[10][:8]]]]), 1.3)  # an older node's copy: no name
    queued = [r for r in a.piggyback(10_000) if r[0] == SUSPECT and r[1] == IDS[12]]
    assert queued == [[SUSPECT, IDS[12], 0, [IDS[9][:8], IDS[10][:8]], _named(9)]]


def _heal_scenario(heal_noticed: bool) -> Membership:
    """Node 0 holds 1..5; node 5 is cut off and buried. Then node 0 probes member X across the cut: no ack,
    and its helpers, who cannot reach X either, nack only after the cut healed (as in the traced run). In
    between, 0.6 s into the probe, the cut heals; ``heal_noticed``: node 5's ping reaches node 0, which
    checks it, and it answers (a first answer: node 0 learns of the heal). Returns node 0 half a second
    after the probe's period, with ``x`` and ``suspected_before``."""
    a = _core(n=6, seed=2, suspicion_min=2.0, suspicion_max=2.0, sync_interval=60.0)
    cut = {5}
    held: list[Envelope] = []  # helpers' nacks about X, held back until the heal
    probe: list = []

    def step(t: float) -> None:
        a.tick(t)
        for env in a.take_outgoing():
            j = INDEX[env.dst]
            if env.type == PING_REQ:
                target = INDEX[node_id_of(env.body[3])]
                nack = _env(j, 0, NACK, [env.body[0], 0])
                if probe and target == probe[0]:
                    held.append(nack)
                elif target in cut:
                    a.receive(nack, t + 0.002)
            elif env.type == PING and j not in cut:
                if not probe and a.state_of(IDS[5]) == "dead" and j != 5:
                    probe.extend((j, t))  # the probe that crosses the cut: X is cut off now
                    cut.add(j)
                    continue
                a.receive(_env(j, 0, ACK, [env.body[0], 0]), t + 0.002)

    while not probe:
        step(a.next_timer())
    x, start = probe
    assert a.state_of(IDS[5]) == "dead" and a.state_of(IDS[x]) == "alive" and a.local_health == 0
    while (t := a.next_timer()) < start + 0.6:
        step(t)
    assert held, "the helpers were asked"
    cut.clear()  # the heal
    suspected = a.stats["suspected"]
    if heal_noticed:
        a.receive(_env(5, 0, PING, [9, 1]), start + 0.6)  # we check it (now, or once a period since the last)
        a.take_outgoing()
    while (t := a.next_timer()) < start + 1.2:
        step(t)  # our check of node 5 goes out and is answered
    assert (a.state_of(IDS[5]) == "dead") and (a.stats["checks"] == (1 if heal_noticed else 0))
    for nack in held:
        a.receive(nack, start + 1.2)
    while (t := a.next_timer()) < start + a.config.probe_interval + 0.5:
        step(t)
    a.x, a.suspected_before = x, suspected  # type: ignore[attr-defined]
    return a


def test_a_probe_begun_before_a_heal_was_noticed_is_tried_again_before_accusing():
    """Its pings (direct and through helpers) crossed a cut that healed while it ran: the heal makes its
    failure meaningless. Probed again at once, the member answers, and nobody was accused (sim, N=2000:
    449 pairs accused this way just after the heal, declared dead 10 s later)."""
    a = _heal_scenario(heal_noticed=True)
    assert a.stats["probes_retried"] == 1
    assert a.state_of(IDS[a.x]) == "alive" and a.stats["suspected"] == a.suspected_before


def test_the_same_probe_accuses_when_no_heal_was_noticed():
    """The control: without the buried member's answer nothing tells the node the cut is gone, and the
    failed probe accuses as before."""
    a = _heal_scenario(heal_noticed=False)
    assert a.stats["probes_retried"] == 0
    assert a.state_of(IDS[a.x]) == "suspect" and a.stats["suspected"] == a.suspected_before + 1


def test_an_accuser_tells_the_suspect_which_refutes_to_it_at_once():
    """A probe can fail on loss alone (its ping or ack and every helper's path), and then only the rumor
    could tell the suspect, which may never reach it within the timeout (sim, N=2000, 1 % loss: a false
    positive at 88 s). The accuser sends its suspicion to the suspect too; the suspect, which need not
    hold it, refutes to it directly, and the suspicion is cleared in one round trip."""
    b = Membership(CONTACTS[9], random.Random(3), MembershipConfig(suspicion_min=1000.0, suspicion_max=1000.0))
    b.add(CONTACTS[0], 0.0)
    told = []
    while b.state_of(IDS[0]) != "suspect":
        t = b.next_timer()
        b.tick(t)  # node 0 never answers: b's probe fails
        told += [e for e in b.take_outgoing() if e.type == GOSSIP and e.dst == IDS[0]]
    wire = [SUSPECT, IDS[0], 0, [IDS[9][:8]], _named(9)]
    assert [e.body[2] for e in told] == [[wire]] and b.stats["suspects_told"] == 1
    a = Membership(CONTACTS[0], random.Random(1))
    a.add(CONTACTS[1], 0.0)  # node 0 does not hold its accuser
    a.receive(told[0], t + 0.01)
    back = [e for e in a.take_outgoing() if e.type == GOSSIP and e.dst == IDS[9]]
    assert len(back) == 1 and a.incarnation == 1
    b.receive(back[0], t + 0.02)
    assert b.state_of(IDS[0]) == "alive" and b.incarnation_of(IDS[0]) == 1
