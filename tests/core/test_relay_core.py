"""The relay cores (sans-IO) on a virtual clock, and the relayed contact form."""

from __future__ import annotations

import os
import random

import pytest

from zmqagents.core.relay import (
    ACKNOWLEDGE,
    ASK,
    DELIVER,
    ENTRY_BYTES,
    FORWARD,
    NOT_FORWARDED,
    REFUSED,
    REGISTER,
    REGISTERED,
    RelayAcker,
    RelayClient,
    RelayConfig,
    RelayDown,
    RelayServer,
    RelayUp,
)
from zmqagents.envelope import Envelope
from zmqagents.identity import Contact, Identity, IdentityError

ME = b"R" * 32
A, B, C = b"A" * 32, b"B" * 32, b"C" * 32


def env(src: bytes, typ: str, body, dst: bytes = ME) -> Envelope:
    return Envelope(id=os.urandom(16), src=src, dst=dst, type=typ, body=body)


def fwd(src: bytes, to: bytes, payload: bytes = b"frame") -> Envelope:
    return env(src, FORWARD, {"to": to, "e": payload})


def server(**cfg) -> RelayServer:
    return RelayServer(ME, random.Random(1), RelayConfig(**cfg), direct_route=lambda nid: nid == C)


def test_registration_is_answered_refreshed_and_expires_when_the_client_goes_quiet():
    s = server(expire=10.0)
    s.receive(env(A, REGISTER, {"n": 7}), 0.0)
    [ok] = s.take_outgoing()
    assert (ok.type, ok.dst, ok.body) == (REGISTERED, A, {"n": 7, "exp": 10_000})
    assert A in s and s.next_timer() == 10.0
    s.receive(fwd(A, C), 6.0)  # any traffic from the client keeps it registered
    s.tick(15.0)
    assert A in s
    s.tick(16.0)
    assert A not in s and s.stats["expired"] == 1 and s.next_timer() is None


def test_forwarding_rules_unknown_destinations_and_loops_are_refused_and_counted():
    s = server()
    s.receive(env(A, REGISTER, {"n": 1}), 0.0)
    s.take_outgoing()
    s.receive(fwd(B, A), 0.1)  # anyone -> a registered client: forwarded unchanged
    [out] = s.take_outgoing()
    assert (out.type, out.src, out.dst) == (DELIVER, ME, A)
    assert out.body == {"to": A, "e": b"frame", "w": out.body["w"]} and len(out.body["w"]) == 8  # + a window token
    s.receive(fwd(A, C), 0.2)  # a client -> a node the relay reaches directly: forwarded
    assert [e.dst for e in s.take_outgoing()] == [C]
    s.receive(fwd(B, C), 0.3)  # a stranger -> a non-client: refused, told why
    s.receive(fwd(A, B), 0.4)  # a client -> a node the relay cannot reach directly: refused
    refusals = s.take_outgoing()
    assert [(e.type, e.dst, e.body["why"]) for e in refusals] == [(NOT_FORWARDED, B, "unknown"),
                                                                  (NOT_FORWARDED, A, "unknown")]
    s.receive(fwd(A, A), 0.5)
    s.receive(fwd(A, ME), 0.5)
    assert s.stats["refused_loop"] == 2
    for body in (None, [], {"to": A}, {"to": b"short", "e": b"x"}, {"to": A, "e": "text"}, {"to": 5, "e": b"x"}):
        s.receive(env(B, FORWARD, body), 0.6)
    assert s.stats["refused_malformed"] == 6
    assert s.stats["forwarded"] == 2 and s.stats["refused_unknown"] == 2


def test_per_sender_and_total_rate_limits_bound_what_is_forwarded():
    s = server(client_rate=10, client_burst=5, total_rate=12, total_burst=8)
    s.receive(env(A, REGISTER, {}), 0.0)
    s.take_outgoing()
    for _ in range(20):  # one sender bursts: 5 pass, 15 refused
        s.receive(fwd(B, A), 0.0)
    assert s.stats["forwarded"] == 5 and s.stats["refused_client_rate"] == 15
    assert all(e.type == DELIVER for e in s.take_outgoing())  # rate refusals are counted, not answered
    for _ in range(10):  # another sender: its own bucket, but only 3 left in the total one
        s.receive(fwd(C, A), 0.0)
    assert s.stats["forwarded"] == 8 and s.stats["refused_total_rate"] == 7
    # one second later: B's bucket refilled to 5 (burst), the total one by 12 (capped at 8)
    for _ in range(20):
        s.receive(fwd(B, A), 1.0)
    assert s.stats["forwarded"] == 13
    assert s.stats["forwarded"] <= 8 + 12 * 1.0  # never more than burst + rate x time in total


def test_registrations_beyond_max_clients_are_refused():
    s = server(max_clients=1)
    s.receive(env(A, REGISTER, {"n": 1}), 0.0)
    s.receive(env(B, REGISTER, {"n": 2}), 0.0)
    assert [(e.type, e.dst) for e in s.take_outgoing()] == [(REGISTERED, A), (REFUSED, B)]
    assert s.stats["refused_full"] == 1 and B not in s


def test_sender_buckets_are_bounded():
    s = server(max_senders=3)
    s.receive(env(A, REGISTER, {}), 0.0)
    for i in range(50):
        s.receive(fwd(bytes([i]) * 32, A), 0.0)
    assert len(s._buckets) <= 3 and s.stats["forwarded"] == 50


def test_client_keeps_registering_and_reports_relays_up_and_down():
    c = RelayClient(ME, [A, B], random.Random(1), RelayConfig(keepalive=1.0, dead_after=2.5))
    c.start(0.0)
    regs = c.take_outgoing()
    assert [(e.type, e.dst, e.src) for e in regs] == [(REGISTER, A, ME), (REGISTER, B, ME)]
    assert c.active() == [] and c.next_timer() == 1.0
    c.receive(env(A, REGISTERED, {"n": 1}, dst=ME), 0.1)
    c.receive(env(B, REGISTERED, {"n": 1}, dst=ME), 0.1)
    assert c.take_events() == [RelayUp(A), RelayUp(B)] and c.active() == [A, B]
    for t in (1.0, 2.0):
        c.tick(t)
        c.receive(env(B, REGISTERED, {}, dst=ME), t)  # only B keeps answering
    assert len(c.take_outgoing()) == 4
    c.tick(2.6)
    [down] = c.take_events()
    assert isinstance(down, RelayDown) and down.node_id == A and c.active() == [B]
    c.receive(env(A, REGISTERED, {}, dst=ME), 3.0)  # it came back
    assert c.take_events() == [RelayUp(A)] and c.active() == [A, B]
    c.receive(env(B, REFUSED, {"why": "full"}, dst=ME), 3.1)
    [down] = c.take_events()
    assert down.node_id == B and "full" in down.reason
    c.receive(env(C, REGISTERED, {}, dst=ME), 3.2)  # not one of ours
    assert c.stats["answers_unexpected"] == 1 and c.active() == [A]


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        RelayConfig(expire=0)
    with pytest.raises(ValueError):
        RelayConfig(client_rate=True)


def test_relayed_contact_form_round_trips_and_bad_forms_are_refused():
    x, r1, r2 = (Identity.generate() for _ in range(3))
    relays = [r1.contact("tcp://192.0.2.1:7000"), r2.contact("ipc:///tmp/r2.sock")]
    contact = Contact.via(x.public_key, relays)
    text = str(contact)
    assert text.count("@") == 3 and "@relay://" in text
    parsed = Contact.parse(text)
    assert parsed == contact and parsed.relayed and parsed.relays == relays and parsed.node_id == x.node_id
    assert not relays[0].relayed and relays[0].relays == []
    key = text.split("@", 1)[0]
    for bad in (f"{key}@relay://", f"{key}@relay://nonsense", f"{key}@relay://{relays[0]},",
                f"{key}@relay://{key}@relay://{relays[0]}"):
        with pytest.raises(IdentityError):
            Contact.parse(bad)
    long_host = "h" * 120
    with pytest.raises(IdentityError, match="at most 255"):
        Contact.via(x.public_key, [r1.contact(f"tcp://{long_host}:1"), r2.contact(f"tcp://{long_host}:2")])
    with pytest.raises(IdentityError):
        Contact.via(x.public_key, [])


def test_sender_moves_retransmits_to_untried_relays_and_remembers_the_miss():
    from zmqagents.transport.relaying import RelayPaths

    me, dst = Identity.generate(), Identity.generate()
    r1, r2, r3 = b"1" * 32, b"2" * 32, b"3" * 32
    paths = RelayPaths(me, max_entries=16, max_size=1 << 20, drop=lambda *a: None)
    paths.set_route(dst.node_id, [r1, r2, r3, me.node_id])  # we are never our own relay
    assert paths.via[dst.node_id] == [r1, r2, r3]

    def msg() -> Envelope:
        return Envelope(id=os.urandom(16), src=me.node_id, dst=dst.node_id, type="msg", body=1)

    lost = [msg() for _ in range(5)]
    assert [paths.pick(e) for e in lost] == [r1] * 5  # first attempts: the preferred relay
    assert [paths.pick(e) for e in lost] == [r2] * 5  # retransmits: the next one, r1 now tried last
    assert paths.misses == {r1: 5} and paths.via[dst.node_id] == [r2, r3, r1]
    assert paths.pick(msg()) == r2  # new messages avoid r1 too
    again = lost[0]
    # r3 is the one not tried yet; then all were tried: start over with the best, r1 (r2 and r3 just failed)
    assert [paths.pick(again), paths.pick(again)] == [r3, r1]
    paths.learned(dst.node_id, r1)  # something came back through r1: it works again
    assert paths.via[dst.node_id][0] == r1


def test_a_destination_window_bounds_what_the_relay_holds_and_acks_free_it():
    cfg = RelayConfig(window_bytes=10_000, total_window_bytes=1 << 20, ask_after=1.0)
    s = RelayServer(ME, random.Random(1), cfg)
    s.receive(env(A, REGISTER, {"n": 1}), 0.0)
    s.take_outgoing()
    payload = b"p" * 3000
    sent = []
    for i in range(5):
        s.receive(env(B, FORWARD, {"to": A, "e": payload}), 0.1 + i * 0.01)
        sent += s.take_outgoing()
    dlvs = [e for e in sent if e.type == DELIVER]
    assert len(dlvs) == 3 and s.outstanding(A) == 3 * (3000 + ENTRY_BYTES) <= cfg.window_bytes  # the 4th would not fit
    assert s.stats["refused_window"] == 2
    [ask] = [e for e in sent if e.type == ASK]  # asked once (ask_after), with the newest token
    assert ask.dst == A and ask.body == {"w": dlvs[-1].body["w"]}
    # A made-up token frees nothing; a real one frees everything up to it.
    s.receive(env(A, ACKNOWLEDGE, {"w": b"\0" * 8}), 0.2)
    assert s.stats["acks_unknown"] == 1 and s.outstanding(A) == 3 * (3000 + ENTRY_BYTES)
    s.receive(env(A, ACKNOWLEDGE, {"w": dlvs[1].body["w"]}), 0.2)
    assert s.outstanding(A) == 3000 + ENTRY_BYTES
    s.receive(env(B, FORWARD, {"to": A, "e": payload}), 0.3)
    assert [e.type for e in s.take_outgoing()] == [DELIVER]
    s.forget(A)
    assert s.outstanding(A) == 0 and s.window_total == 0


def test_an_empty_window_takes_one_envelope_of_any_size_and_the_total_binds():
    s = RelayServer(ME, random.Random(1), RelayConfig(window_bytes=1000, total_window_bytes=5000))
    for dst in (A, C):
        s.receive(env(dst, REGISTER, {"n": 1}), 0.0)
    s.take_outgoing()
    s.receive(env(B, FORWARD, {"to": A, "e": b"p" * 4000}), 0.1)  # larger than a window, alone: forwarded
    assert [e.type for e in s.take_outgoing()] == [DELIVER]
    s.receive(env(B, FORWARD, {"to": C, "e": b"p" * 2000}), 0.1)  # fits C's window, not the total
    assert s.take_outgoing() == [] and s.stats["refused_total_window"] == 1


def test_a_destination_acknowledges_every_ack_bytes_or_ack_count_deliveries_and_every_ask():
    acker = RelayAcker(A, random.Random(2), RelayConfig(ack_bytes=10_000, ack_count=4))

    def dlv(token: bytes, size: int) -> Envelope:
        return env(ME, DELIVER, {"to": A, "e": b"p" * size, "w": token})

    for i in range(3):
        acker.delivered(dlv(bytes([i]) * 8, 100))
    assert acker.take_outgoing() == []
    acker.delivered(dlv(b"\3" * 8, 100))  # the 4th
    [ack] = acker.take_outgoing()
    assert (ack.type, ack.dst, ack.body) == (ACKNOWLEDGE, ME, {"w": b"\3" * 8})
    acker.delivered(dlv(b"\4" * 8, 20_000))  # over ack_bytes at once
    assert [e.body for e in acker.take_outgoing()] == [{"w": b"\4" * 8}]
    acker.delivered(env(ME, DELIVER, {"to": A, "e": b"p"}))  # from a relay that keeps no window: nothing to ack
    acker.asked(env(ME, ASK, {"w": b"\5" * 8}))
    assert [e.body for e in acker.take_outgoing()] == [{"w": b"\5" * 8}]
