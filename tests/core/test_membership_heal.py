"""Membership after a partition heals: no accusation of a member that has shown life, refutations that reach
their accusers, first-hand refutations relayed past the bound on strangers' news (protocols/membership.md
4.1, 5.1, 5.2, 7). Sans-IO: one core, fed by hand, exact."""

from __future__ import annotations

import random

from zmqagents.core.membership import GOSSIP, PING, SUSPECT, Membership, MembershipConfig
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
