"""Unit tests of the sans-IO delivery core, driven by a fake clock (no sockets)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqagents.core.delivery import (
    Acked,
    Delivered,
    Delivery,
    DeliveryConfig,
    Replied,
    RequestFailed,
    SendFailed,
    Stalled,
    TooManyRequests,
    WindowFull,
    WindowOpen,
)
from zmqagents.envelope import Envelope, decode
from zmqagents.errors import InvalidArgument

from helpers.fakenet import DirectNet

A = bytes([0xA] * 32)
B = bytes([0xB] * 32)
C = bytes([0xC] * 32)


class Net(DirectNet):
    """Delivery cores wired together on a fake clock; ``drop(env)`` decides which envelopes are lost."""

    def __init__(self, *cores: Delivery, wire: bool = False):
        super().__init__(cores, encode=wire)  # wire: through encode/decode, as the transport does

    def delivered(self, nid: bytes) -> list:
        return [e.env.body for e in self.reported[nid] if isinstance(e, Delivered)]

    def of(self, nid: bytes, kind: type) -> list:
        return [e for e in self.reported[nid] if isinstance(e, kind)]


def pair(config: DeliveryConfig | None = None, **kw) -> tuple[Delivery, Delivery, Net]:
    a = Delivery(A, random.Random(1), config)
    b = Delivery(B, random.Random(2), config)
    return a, b, Net(a, b, **kw)


# -- ordering, duplicates, acks ------------------------------------------------------------


def test_in_order_delivery_and_acks_clear_pending():
    a, b, net = pair(wire=True)
    for i in range(100):
        a.send(B, i, net.now)
    net.flush()
    assert net.delivered(B) == list(range(100))
    assert a.pending(B) == 100 - 64  # one ack at the 64th arrival, the rest is delayed
    net.advance(0.1)
    assert a.pending() == 0
    assert b.stats["acks_sent"] >= 1
    assert a.stats["retransmits"] == 0
    assert a.next_timer() is None or a.next_timer() > 0.1


def test_out_of_order_arrivals_are_delivered_in_order_once():
    a, b, net = pair()
    for i in range(50):
        a.send(B, i, 0.0)
    envs = a.take_outgoing()
    random.Random(7).shuffle(envs)
    for env in envs:
        b.receive(env, 0.0)
    bodies = [e.env.body for e in b.take_events()]
    assert bodies == list(range(50))
    assert b.stats["out_of_order"] > 0
    assert b.stats["delivered"] == 50


def test_duplicate_is_acked_again_but_delivered_once():
    a, b, net = pair()
    a.send(B, "x", 0.0)
    (env,) = a.take_outgoing()
    b.receive(env, 0.0)
    b.tick(0.01)
    assert len(b.take_outgoing()) == 1  # the ack
    b.receive(env, 0.02)  # a retransmission whose ack was lost
    b.tick(0.03)
    (ack,) = b.take_outgoing()
    assert ack.type == "ack" and ack.ack[1] == 1
    assert [e.env.body for e in b.take_events()] == ["x"]
    assert b.stats["duplicates"] == 1


def test_replayed_id_in_a_new_epoch_is_not_delivered_twice():
    a, b, net = pair()
    a.send(B, "x", 0.0)
    (env,) = a.take_outgoing()
    b.receive(env, 0.0)
    replay = Envelope(env.id, A, "msg", "x", B, seq=1, ep=env.ep + 12345)
    b.receive(replay, 0.1)
    assert len(b.take_events()) == 1
    assert b.stats["duplicates"] == 1


def test_selective_ack_spares_received_messages_from_retransmission():
    a, b, net = pair()
    net.drop = lambda env: env.seq == 1 and a.stats["retransmits"] == 0
    for i in range(5):
        a.send(B, i, 0.0)
    net.advance(0.05)
    assert net.delivered(B) == []
    assert a.pending(B) == 5  # 2..5 are selectively acked, but pending until the cumulative ack covers them
    net.drop = lambda env: False
    net.advance(1.0)
    assert net.delivered(B) == [0, 1, 2, 3, 4]
    assert a.stats["retransmits"] == 1  # only seq 1
    assert a.pending() == 0


def test_delayed_ack_and_ack_every():
    cfg = DeliveryConfig(ack_every=4, ack_delay=0.01)
    a, b, net = pair(cfg)
    for i in range(8):
        a.send(B, i, 0.0)
    envs = a.take_outgoing()
    for env in envs[:3]:
        b.receive(env, 0.0)
    assert b.take_outgoing() == []  # 3 < ack_every: wait ack_delay
    assert b.next_timer() == pytest.approx(0.011)
    b.tick(0.011)
    (ack,) = b.take_outgoing()
    assert ack.type == "ack" and ack.ack[1] == 3
    for env in envs[3:7]:
        b.receive(env, 0.02)
    (ack,) = b.take_outgoing()  # the 4th arrival since the last ack: at once
    assert ack.ack[1] == 7


# -- loss, retransmission, giving up -----------------------------------------------------


def test_lost_message_is_retransmitted():
    a, b, net = pair()
    net.drop = lambda env: env.type == "msg" and a.stats["retransmits"] == 0
    a.send(B, "hello", 0.0)
    net.advance(0.1)
    assert net.delivered(B) == []
    net.advance(1.0)
    assert net.delivered(B) == ["hello"]
    assert a.stats["retransmits"] == 1
    assert a.pending() == 0


def test_backoff_grows_with_bounded_jitter_then_send_fails():
    cfg = DeliveryConfig()
    for seed in range(5):
        a = Delivery(A, random.Random(seed), cfg)
        net = Net(a)  # B does not exist: everything is lost
        mid = a.send(B, "x", 0.0)
        times = []
        while a.next_timer() is not None:
            t = a.next_timer()
            a.tick(t)
            if any(env.type == "msg" for env in a.take_outgoing()):
                times.append(t)
        sends = [0.0] + times
        gaps = [t1 - t0 for t0, t1 in zip(sends, sends[1:])]
        assert len(gaps) == cfg.max_retries
        for n, gap in enumerate(gaps):
            base = min(cfg.rto_initial * cfg.backoff**n, cfg.rto_max)
            assert base * (1 - cfg.jitter) <= gap <= base * (1 + cfg.jitter) + cfg.timer_granularity
        assert gaps[3] > gaps[0] * 2  # it does grow
        events = a.take_events()
        assert events == [SendFailed(mid, B, "unreachable")]
        assert a.pending() == 0 and a.stats["send_failed"] == 1
        del net


def test_give_up_leaves_no_stall_for_later_messages():
    a, b, net = pair(DeliveryConfig(max_retries=2))
    first = a.send(B, "lost", 0.0)
    net.drop = lambda env: env.seq == 1 and env.type == "msg"
    a.send(B, "second", 0.0)
    net.advance(0.5)
    assert net.delivered(B) == []  # held back behind the hole
    net.advance(10.0)
    assert net.of(A, SendFailed) == [SendFailed(first, B, "unreachable")]
    assert net.delivered(B) == ["second"]
    assert b.stats["skipped"] == 1
    a.send(B, "third", net.now)
    net.advance(net.now + 1)
    assert net.delivered(B) == ["second", "third"]
    assert a.pending() == 0


def test_fwd_is_repeated_until_acknowledged():
    a, b, net = pair(DeliveryConfig(max_retries=1))
    a.send(B, "lost", 0.0)
    a.send(B, "kept", 0.0)
    fwds = []

    def drop(env):
        if env.type == "fwd":
            fwds.append(env)
            return len(fwds) == 1  # the first fwd is lost too
        return env.type == "msg" and env.seq == 1

    net.drop = drop
    net.advance(5.0)
    assert net.delivered(B) == ["kept"]
    assert len(fwds) >= 2


def test_message_held_behind_an_abandoned_hole_is_delivered_though_fwds_are_lost():
    a, b, net = pair(DeliveryConfig(stall_after=0))  # the probes alone, without the stall watchdog
    first = a.send(B, "lost", 0.0)
    a.send(B, "held", 0.0)  # arrives, is selectively acked, waits behind seq 1
    net.drop = lambda env: (env.type == "msg" and env.seq == 1) or (env.type == "fwd" and net.now < 40.0)
    net.advance(39.0)
    assert net.of(A, SendFailed) == [SendFailed(first, B, "unreachable")]
    assert net.delivered(B) == [] and a.pending(B) == 1  # "held" is not known delivered: still pending
    net.advance(120.0)
    assert net.delivered(B) == ["held"]  # a later probe got through
    assert net.of(A, SendFailed) == [SendFailed(first, B, "unreachable")]
    assert a.pending() == 0 and a.stats["retransmits"] == 8  # only "lost" was ever retransmitted


def test_receiver_that_lost_its_state_is_told_where_the_stream_goes_on():
    a, b, net = pair()
    for i in range(3):
        a.send(B, i, 0.0)
    net.advance(0.1)
    b2 = Delivery(B, random.Random(99))  # B restarted: it knows nothing of A's stream
    net.add(b2)
    a.send(B, "after", net.now)
    net.advance(net.now + 1)
    assert [e.env.body for e in net.reported[B] if isinstance(e, Delivered)][-1] == "after"
    assert b2.stats["fwd_received"] >= 1


def test_a_restarted_receiver_gets_at_once_what_its_previous_run_had_selectively_acked():
    """Issue 12, seen in bench/chaos.py (the a-b link cut, then B killed): B held 4..40 behind the
    hole at 3 and selectively acked them, then restarted and lost them. A marked them acked; each
    was resent only when its own timer, re-checked every rto_max, found it at rcum + 1: about one
    message per rto_max (38 took 120 s), with the window full, so nothing new went either."""
    a, b, net = pair()
    net.drop = lambda env: env.src == A and env.seq == 3 and a.stats["retransmits"] == 0  # its first copy
    for i in range(1, 41):
        a.send(B, i, 0.0)
    net.advance(0.15)  # acks exchanged, before 3's first retransmission (rto 0.2 s)
    assert net.delivered(B) == [1, 2] and b.stats["out_of_order"] == 37
    b2 = Delivery(B, random.Random(99))  # B restarted: its buffer is gone
    net.add(b2)
    net.reported[B] = []
    net.advance(2.0)
    assert sorted(net.delivered(B)) == list(range(3, 41))  # well within one rto_max (6.25 s)
    assert a.stats["reneged"] == 37 and a.pending(B) == 0  # 4..40
    assert len(net.delivered(B)) == 38  # each once

@pytest.mark.parametrize("first_word", ["hello", "membership"])
def test_a_restarted_receiver_waiting_for_a_floor_it_had_selectively_acked_gets_it_at_once(first_word):
    """Issue 12, bench/chaos.py (seed 5: the watchdog fired, 931 messages held, no progress for 25 s):
    B held everything above a hole and selectively acked it, the hole was abandoned while B was down,
    and B came back restarted. A's floor was marked held by B, so nothing was resent: a probe fwd went
    on the floor's timer (up to rto_max + jitter away), took the new B to the floor, and B's acks then
    asked for the floor itself, which only the floor's next timer (as far again) found out. Now the
    first word from a peer back from silence (its own stream, or membership's) sends the fwd at once,
    and an ack asking for a message marked selectively acked (the receiver would have delivered it
    had it held it) reneges the marks and resends at once."""
    a, b, net = pair()
    net.drop = lambda env: env.src == A and env.seq == 3 and env.type != "fwd"  # every copy of 3 is lost
    for i in range(1, 41):
        a.send(B, i, 0.0)
    net.advance(1.0)
    assert net.delivered(B) == [1, 2] and b.stats["out_of_order"] == 37  # 4..40 held, selectively acked
    del net.cores[B]  # B is killed ...
    net.advance(40.0)  # ... and stays down while A gives 3 up (4..40 spend no retries behind it)
    assert [e.msg_id for e in net.of(A, SendFailed)] and a.pending(B) == 37
    assert a.stream_state(B, net.now)["sacked"] == 37
    b2 = Delivery(B, random.Random(99))  # B restarted: its buffer is gone
    net.add(b2)
    net.reported[B] = []
    net.drop = lambda env: False
    t0 = net.now
    if first_word == "hello":
        b2.send(A, "hello", t0)  # the restarted B speaks first: its own stream (the node's hello) ...
    else:
        a.heard(B, t0)  # ... or membership hears it first (a probe, handed to another core)
    net.advance(t0 + 0.5)
    assert sorted(net.delivered(B)) == list(range(4, 41)) and len(net.delivered(B)) == 37
    assert a.pending(B) == 0 and a.stats["reneged"] == 37 and not net.of(A, Stalled)


# -- request / reply -------------------------------------------------------------------------


def test_request_reply_piggybacks_acks():
    a, b, net = pair(wire=True)
    rid = a.request(B, {"q": 1}, 0.0, timeout=2.0)
    net.flush()
    (req,) = net.of(B, Delivered)
    assert req.env.type == "req" and req.env.id == rid
    b.reply(req.env, {"a": 2}, net.now)
    net.flush()
    (rep,) = net.of(A, Replied)
    assert rep.request_id == rid and rep.env.body == {"a": 2} and rep.env.type == "rep"
    assert rep.env.re == rid
    assert a.pending() == 0  # the reply carried the ack of the request
    rid2 = a.request(B, "again", net.now, timeout=2.0)  # ...and this request carries the ack of the reply
    net.flush()
    assert b.pending() == 0
    assert b.stats["acks_sent"] == 0 and a.stats["acks_sent"] == 0
    b.reply(net.of(B, Delivered)[-1].env, "no", net.now, error=True)
    net.flush()
    assert net.of(A, Replied)[-1].env.type == "err" and net.of(A, Replied)[-1].request_id == rid2


def test_request_timeout_then_late_reply_is_dropped():
    a, b, net = pair()
    rid = a.request(B, "q", 0.0, timeout=0.5)
    net.flush()
    (req,) = net.of(B, Delivered)
    net.advance(0.6)
    assert net.of(A, RequestFailed) == [RequestFailed(rid, B, "timeout")]
    b.reply(req.env, "late", net.now)
    net.advance(1.0)
    assert net.of(A, Replied) == []
    assert a.stats["replies_unmatched"] == 1 and a.stats["requests_timed_out"] == 1
    assert b.pending() == 0  # the late reply was still acked


def test_request_deadline_stops_retransmission():
    a, b, net = pair()
    net.drop = lambda env: True
    rid = a.request(B, "q", 0.0, timeout=0.3)
    net.advance(0.31)
    assert net.of(A, RequestFailed) == [RequestFailed(rid, B, "timeout")]
    assert a.pending() == 0
    before = a.stats["retransmits"]
    net.advance(30.0)
    assert a.stats["retransmits"] == before


def test_a_request_carries_the_time_its_requester_still_waits_and_each_copy_refreshes_it():
    """ttl on a request is what is left of the requester's deadline when that copy was sent (ts is then),
    so a receiver measuring ttl from receipt needs no synchronised clock; plain messages carry none."""
    a, b, net = pair(wire=True)
    net.now = 10.0
    net.drop = lambda env: env.type == "req" and a.stats["retransmits"] < 2
    a.send(B, "plain", net.now)
    a.request(B, "q", net.now, timeout=5.0)
    net.advance(12.0)
    copies = [env for env in net.wire if env.type == "req"]
    assert len(copies) == 3 and len({env.id for env in copies}) == 1
    assert copies[0].ts == 10_000 and copies[0].ttl == 5_000
    for env in copies[1:]:
        # ts + ttl: the same deadline on A's clock (ts is rounded down, ttl up: never less time than there is)
        assert env.ts > 10_000 and 15_000 <= env.ts + env.ttl <= 15_001
    assert copies[1] is not copies[0] and copies[0].ttl == 5_000  # a copy handed out is never changed
    assert [e.env.ttl for e in net.of(B, Delivered) if e.env.type == "req"] == [copies[2].ttl]
    assert next(env for env in net.wire if env.type == "msg").ttl == 0


def test_request_to_unreachable_peer():
    a, _, net = pair(DeliveryConfig(max_retries=2))
    net.drop = lambda env: True
    rid = a.request(B, "q", 0.0, timeout=60.0)
    net.advance(60.0)
    assert net.of(A, RequestFailed) == [RequestFailed(rid, B, "unreachable")]
    assert a.stats["requests_failed"] == 1


def test_cancelled_request_ignores_its_reply():
    a, b, net = pair()
    rid = a.request(B, "q", 0.0, timeout=5.0)
    net.flush()
    a.cancel_request(rid)
    b.reply(net.of(B, Delivered)[0].env, "r", net.now)
    net.advance(10.0)
    assert net.of(A, Replied) == [] and net.of(A, RequestFailed) == []
    assert a.stats["replies_unmatched"] == 1


def test_reply_from_another_peer_does_not_match():
    a, b, net = pair()
    c = Delivery(C, random.Random(3))
    net.add(c)
    a.request(B, "q", 0.0, timeout=5.0)
    net.flush()
    c.reply(net.of(B, Delivered)[0].env, "forged", net.now)
    net.flush()
    assert net.of(A, Replied) == []
    assert a.stats["replies_unmatched"] == 1


def test_request_limit():
    a, _, net = pair(DeliveryConfig(max_requests=2))
    a.request(B, 1, 0.0, timeout=1)
    a.request(B, 2, 0.0, timeout=1)
    with pytest.raises(TooManyRequests):
        a.request(B, 3, 0.0, timeout=1)
    assert a.stats["request_limit"] == 1


# -- bounds ----------------------------------------------------------------------------------


def test_window_full_then_window_open():
    a, b, net = pair(DeliveryConfig(window=4))
    for i in range(4):
        a.send(B, i, 0.0)
    assert not a.can_send(B) and a.can_send(C)
    with pytest.raises(WindowFull):
        a.send(B, 4, 0.0)
    with pytest.raises(WindowFull):
        a.request(B, 4, 0.0, timeout=1)
    assert a.stats["window_full"] == 2
    net.advance(0.1)
    assert a.can_send(B)
    assert net.of(A, WindowOpen) == [WindowOpen(B)]
    a.send(B, 4, net.now)
    net.advance(0.2)
    assert net.delivered(B) == [0, 1, 2, 3, 4]
    assert len(net.of(A, WindowOpen)) == 1


def test_send_many_makes_exactly_what_send_makes_one_by_one():
    cfg = DeliveryConfig()
    one, many = Delivery(A, random.Random(7), cfg, epoch=5), Delivery(A, random.Random(7), cfg, epoch=5)
    ids = [one.send(B, {"n": i}, 1.0) for i in range(50)]
    assert many.send_many(B, [{"n": i} for i in range(50)], 1.0) == ids
    assert many.take_outgoing() == one.take_outgoing()  # same ids, seqs, epochs, bodies, in order
    assert many.next_timer() == one.next_timer() and many.pending(B) == one.pending(B) == 50
    assert many.send_many(B, [], 1.0) == []
    with pytest.raises(InvalidArgument):
        many.send_many(B, ["x"], 1.0, type="ack")


def test_send_many_takes_what_the_window_holds_and_reports_room_for_the_rest():
    a, b, net = pair(DeliveryConfig(window=4))
    a.send(B, 0, 0.0)
    ids = a.send_many(B, [1, 2, 3, 4, 5], 0.0)
    assert len(ids) == 3 and not a.can_send(B)  # 1, 2, 3: the window is full
    assert a.stats["window_full"] == 1
    with pytest.raises(WindowFull):
        a.send_many(B, [4, 5], 0.0)
    net.advance(0.1)
    assert net.of(A, WindowOpen) == [WindowOpen(B)]
    assert len(a.send_many(B, [4, 5], net.now)) == 2
    net.advance(0.2)
    assert net.delivered(B) == [0, 1, 2, 3, 4, 5]


def test_replies_get_headroom_beyond_the_window_but_stay_bounded():
    """A server answering a burst of requests must not fail because its replies are not yet acked;
    only a peer that leaves twice the window of replies unacked is refused."""
    a, b, net = pair(DeliveryConfig(window=4))
    net.drop = lambda env: env.type == "rep" or (env.type == "ack" and env.src == A)  # replies never acked
    requests = []
    for round_ in range(3):
        for i in range(4):
            a.request(B, i, net.now, timeout=10)
        net.flush()
        requests += [e.env for e in net.of(B, Delivered)[len(requests):]]
        net.advance(net.now + 0.05)  # B's delayed acks free A's window for the next round
    assert len(requests) == 12
    for env in requests[:8]:
        b.reply(env, "ok", net.now)  # 8 unacked replies to a window-4 peer: allowed
    with pytest.raises(WindowFull):
        b.reply(requests[8], "ok", net.now)


def test_reorder_buffer_is_bounded_and_stream_recovers():
    a, b, net = pair(DeliveryConfig(reorder_limit=8, window=64))
    net.drop = lambda env: env.seq == 1 and a.stats["retransmits"] == 0
    for i in range(20):
        a.send(B, i, 0.0)
    net.flush()
    assert len(b._peers[A].buf) == 7  # seqs 2..8: at most reorder_limit ahead of the missing seq 1
    assert b.stats["reorder_overflow"] == 12  # seqs 9..20
    net.drop = lambda env: False
    net.advance(30.0)
    assert net.delivered(B) == list(range(20))
    assert a.pending() == 0


def test_reorder_buffer_is_bounded_in_bytes_per_sender_and_in_all_and_the_stream_recovers():
    cfg = DeliveryConfig(reorder_limit=1000, window=64, reorder_bytes=50_000, reorder_bytes_total=70_000)
    a, b, net = pair(cfg, wire=True)  # encoded and decoded, so each envelope has its cost
    c = Delivery(bytes([0xC] * 32), random.Random(3), cfg)
    net.add(c)
    net.drop = lambda env: env.seq == 1 and env.type == "msg" and a.stats["retransmits"] + c.stats["retransmits"] == 0
    for i in range(20):
        a.send(B, "x" * 10_000 + str(i), 0.0)  # ~11 KB of cost each
    net.flush()
    count, size = b.buffered(A)
    assert 3 <= count <= 4 and size <= 50_000  # seq 2.. until the sender's share is spent
    assert b.stats["reorder_bytes_full"] == 19 - count
    for i in range(20):
        c.send(B, "y" * 10_000 + str(i), 0.0)
    net.flush()
    total_count, total = b.buffered()
    assert total <= 70_000 and total_count == count + b.buffered(c.node_id)[0]
    assert b.buffered(c.node_id)[0] >= 1
    net.drop = lambda env: False
    net.advance(60.0)
    assert [x[-2:].lstrip("x") for x in net.delivered(B) if x[0] == "x"] == [str(i) for i in range(20)]
    assert [x[-2:].lstrip("y") for x in net.delivered(B) if x[0] == "y"] == [str(i) for i in range(20)]
    assert b.buffered() == (0, 0)


def test_releases_says_what_an_arrival_would_hand_to_the_application():
    a, b, net = pair(wire=True)
    net.drop = lambda env: env.seq == 1 and a.stats["retransmits"] == 0
    for i in range(4):
        a.send(B, i, 0.0)
    net.flush()
    first, *rest = [e for e in net.wire if e.type == "msg"]
    assert b.buffered(A)[0] == 3
    first = decode(first.encode())
    count, size = b.releases(first)
    assert count == 4 and size == first.cost + b.buffered(A)[1]
    assert b.releases(decode(rest[0].encode())) == (0, 0)  # a duplicate of one buffered


def test_peer_state_is_lru_bounded():
    cfg = DeliveryConfig(max_peers=3)
    hub = Delivery(A, random.Random(1), cfg)
    net = Net(hub)
    others = [Delivery(bytes([i]) * 32, random.Random(i), cfg) for i in range(20, 25)]
    for o in others:
        net.add(o)
    mid = hub.send(others[0].node_id, "kept?", 0.0)  # never acked: dropped below
    net.drop = lambda env: env.dst == others[0].node_id
    for o in others[1:]:
        o.send(A, "hi", 0.0)
    net.flush()
    assert len(hub._peers) == 3
    assert hub.stats["peers_evicted"] == 2
    assert SendFailed(mid, others[0].node_id, "evicted") in net.of(A, SendFailed)
    assert hub.pending() == 0


def test_dedup_memory_is_bounded():
    a, b, net = pair(DeliveryConfig(dedup_window=16))
    for i in range(100):
        a.send(B, i, 0.0)
    net.flush()
    assert len(b._peers[A].ids) == 16 and len(b._peers[A].ring) == 16
    assert net.delivered(B) == list(range(100))


def _ids_held(d: Delivery) -> int:
    return sum(len(p.ring) for p in d._peers.values()) + sum(len(k[1]) for k in d._kept.values())


def test_dedup_memory_is_bounded_over_all_senders_and_the_least_recent_sender_is_dropped_first():
    """One host can make thousands of keys: dedup_window per sender alone would let them pin GBs."""
    b = Delivery(B, random.Random(2), DeliveryConfig(dedup_window=16, dedup_total=64, kept_dedup=4))
    senders = [bytes([0x10 + i]) * 32 for i in range(20)]
    t = 0.0
    for n, src in enumerate(senders):
        for seq in range(1, 17):
            t += 0.001
            b.receive(Envelope(bytes([n, seq]) * 8, src, "msg", seq, B, seq=seq, ep=5), t)
        if n % 3 == 0:
            b.forget(src)  # some senders' memories are kept after their state is dropped: counted too
        assert _ids_held(b) <= 64
    assert b.stats["delivered"] == 20 * 16
    assert b.stats["dedup_dropped"] == 16  # four full memories fit; each later sender pushed one out
    b.take_events()
    # The most recent sender's ids are still known after its state is dropped and it comes back...
    last = senders[-1]
    b.forget(last)
    b.receive(Envelope(bytes([19, 16]) * 8, last, "msg", "again", B, seq=1, ep=6), t + 1)
    assert b.stats["duplicates"] == 1 and b.stats["dedup_restored"] == 1
    # ...the least recent one's were dropped whole: its re-send is delivered (the bound is documented)
    b.receive(Envelope(bytes([0, 1]) * 8, senders[0], "msg", "again", B, seq=1, ep=6), t + 2)
    assert [e.env.body for e in b.take_events() if isinstance(e, Delivered)] == ["again"]
    assert _ids_held(b) <= 64


def test_a_single_sender_keeps_its_whole_dedup_window_under_the_total_bound():
    b = Delivery(B, random.Random(2), DeliveryConfig(dedup_window=16, dedup_total=8))
    for seq in range(1, 41):
        b.receive(Envelope(bytes([seq]) * 16, A, "msg", seq, B, seq=seq, ep=5), seq * 0.001)
    assert len(b._peers[A].ring) == 16 and b.stats["dedup_dropped"] == 0


def test_forget_fails_what_is_in_flight():
    a, b, net = pair()
    net.drop = lambda env: True
    mid = a.send(B, "x", 0.0)
    rid = a.request(B, "q", 0.0, timeout=5)
    a.forget(B)
    net.flush()
    assert net.of(A, SendFailed) == [SendFailed(mid, B, "unreachable")]
    assert net.of(A, RequestFailed) == [RequestFailed(rid, B, "unreachable")]
    assert a.pending() == 0
    net.advance(100.0)
    assert a.stats["retransmits"] == 0
    assert a.next_timer() is None


def test_forgetting_a_blocked_peer_reopens_the_window():
    a, b, net = pair(DeliveryConfig(window=1))
    a.send(B, 1, 0.0)
    with pytest.raises(WindowFull):
        a.send(B, 2, 0.0)
    a.forget(B)
    net.flush()
    assert net.of(A, WindowOpen) == [WindowOpen(B)] and a.can_send(B)


def test_sender_restart_starts_a_new_stream_and_old_packets_are_stale():
    a, b, net = pair()
    a.send(B, "old-1", 0.0)
    a.send(B, "old-2", 0.0)
    old = a.take_outgoing()
    b.receive(old[0], 0.0)
    a2 = Delivery(A, random.Random(42), epoch=a.epoch + 1000)  # A restarted: a higher epoch, seq from 1
    net.cores[A] = a2
    a2.send(B, "new-1", 0.1)
    net.flush()
    b.receive(old[1], 0.2)  # a late packet from the old instance
    net.flush()
    assert net.delivered(B) == ["old-1", "new-1"]
    assert b.stats["epoch_resets"] == 1 and b.stats["stale_epoch"] == 1


def test_stream_reopened_after_forget_uses_a_new_epoch():
    a, b, net = pair()
    a.send(B, 1, 0.0)
    net.advance(0.1)
    a.forget(B)
    a.send(B, 2, net.now)
    net.advance(net.now + 0.1)
    assert net.delivered(B) == [1, 2]


# -- confirmations and caller-given ids (durable outboxes) -------------------------------------


def test_confirmed_send_reports_acked_once_when_the_cumulative_ack_covers_it():
    a, b, net = pair()
    net.drop = lambda env: env.seq == 1 and a.stats["retransmits"] == 0
    m1 = a.send(B, 1, 0.0, confirm=True)
    m2 = a.send(B, 2, 0.0, confirm=True)
    a.send(B, 3, 0.0)  # not confirmed: no event
    net.advance(0.05)
    assert net.of(A, Acked) == []  # 2 and 3 are only selectively acked: B could still lose them
    net.drop = lambda env: False
    net.advance(2.0)
    assert net.of(A, Acked) == [Acked(m1, B), Acked(m2, B)]
    assert net.delivered(B) == [1, 2, 3]


def test_confirmed_send_that_fails_reports_send_failed_not_acked():
    a, b, net = pair()
    net.drop = lambda env: True
    mid = a.send(B, "x", 0.0, confirm=True)
    net.advance(60.0)
    assert net.of(A, Acked) == []
    assert net.of(A, SendFailed) == [SendFailed(mid, B, "unreachable")]


def test_caller_given_id_is_used_and_checked():
    a, b, net = pair()
    mid = bytes(range(16))
    assert a.send(B, "x", 0.0, msg_id=mid) == mid
    net.flush()
    assert [e.env.id for e in net.of(B, Delivered)] == [mid]
    for bad in (b"short", "0123456789abcdef", bytes(17)):
        with pytest.raises(ValueError):
            a.send(B, "y", 0.0, msg_id=bad)


def test_outbox_resend_after_sender_restart_is_delivered_once():
    """A sender crashes after B delivered some messages but before their acks reached it; the
    restarted sender (new epoch) re-sends everything under the same ids: B delivers each once."""
    a, b, net = pair()
    ids = [bytes([i]) * 16 for i in range(1, 11)]
    for i, mid in enumerate(ids):
        a.send(B, i, 0.0, msg_id=mid, confirm=True)
    net.drop = lambda env: env.type == "ack"  # B gets all 10, A never hears back
    net.advance(0.05)
    assert net.delivered(B) == list(range(10))
    a2 = Delivery(A, random.Random(99))  # A restarted from its outbox
    net.cores[A] = a2
    net.drop = lambda env: False
    for i, mid in enumerate(ids):
        a2.send(B, i, 0.1, msg_id=mid, confirm=True)
    a2.send(B, "new", 0.1)
    net.advance(1.0)
    assert net.delivered(B) == list(range(10)) + ["new"]
    assert b.stats["duplicates"] == 10
    assert [e.msg_id for e in net.of(A, Acked)] == ids  # the restarted sender learns they are done


def test_a_restarted_receiver_given_what_it_delivered_does_not_deliver_it_again():
    """B delivers (and stores) A's messages, then crashes before its acks leave. The restarted B is
    given the delivered ids (the sidecar reads them from its inbound spool): A's retransmissions of
    them are dropped as duplicates, the rest is delivered once, in order. Without remember_delivered
    the same run delivers all of them twice."""
    for restore in (True, False):
        a, b, net = pair()
        ids = [bytes([i]) * 16 for i in range(1, 11)]
        for i, mid in enumerate(ids):
            a.send(B, i, 0.0, msg_id=mid, confirm=True)
        net.drop = lambda env: env.type == "ack" or env.seq is not None and env.seq > 6
        net.advance(0.05)
        assert net.delivered(B) == list(range(6))
        b2 = Delivery(B, random.Random(5))  # B restarted
        if restore:
            b2.remember_delivered(A, ids[:6])
        net.cores[B] = b2
        net.reported[B] = []
        net.drop = lambda env: False
        net.advance(30.0)
        again = [e.env.body for e in net.of(B, Delivered)]
        assert again == (list(range(6, 10)) if restore else list(range(10)))
        assert [e.msg_id for e in net.of(A, Acked)] == ids
        assert b2.stats["duplicates"] >= (6 if restore else 0)


def test_dedup_memory_survives_forget_so_a_restarted_sender_is_still_deduplicated():
    """Membership usually declares a crashed sender dead (B forgets it) before it restarts."""
    a, b, net = pair(DeliveryConfig(kept_dedup=2))
    mid = bytes([7]) * 16
    a.send(B, "once", 0.0, msg_id=mid)
    net.drop = lambda env: env.type == "ack"
    net.advance(0.05)
    b.forget(A)
    for other in (C, bytes([0xD]) * 32):  # two other forgotten peers fit in kept_dedup=2 too
        b.receive(Envelope(bytes([1]) * 16, other, "msg", "x", B, seq=1, ep=5), 0.06)
        b.forget(other)
    assert set(b._kept) == {C, bytes([0xD]) * 32}  # the oldest (A) was pushed out: bounded
    b2 = Delivery(B, random.Random(3), DeliveryConfig(kept_dedup=2))
    net.cores[B] = b2
    b2.receive(Envelope(mid, A, "msg", "once", B, seq=1, ep=1), 0.1)
    b2.forget(A)
    a2 = Delivery(A, random.Random(98))
    net.cores[A] = a2
    net.drop = lambda env: False
    a2.send(B, "once", 0.2, msg_id=mid)
    net.advance(1.0)
    assert [e.env.body for e in net.of(B, Delivered)].count("once") == 2  # b, then b2: once each
    assert b2.stats["dedup_restored"] == 1 and b2.stats["duplicates"] == 1


def test_restored_dedup_memory_keeps_the_old_epoch_retired():
    a, b, net = pair()
    a.send(B, 1, 0.0)
    (old,) = a.take_outgoing()
    b.receive(old, 0.0)
    b.forget(A)
    a2 = Delivery(A, random.Random(5), epoch=a.epoch + 1000)
    net.cores[A] = a2
    a2.send(B, 2, 0.1)
    net.flush()
    b.receive(Envelope(bytes([9]) * 16, A, "msg", "late", B, seq=2, ep=old.ep), 0.2)  # late packet, old stream
    net.flush()
    assert net.delivered(B) == [1, 2]  # "late" is neither delivered nor allowed to reset the new stream
    assert b.stats["stale_epoch"] == 1 and b.stats["dedup_restored"] == 1


# -- streams are ordered by epoch: no interleaving of old and new frames stalls a stream (issue 12) --


def _forgotten_with_old_frames_in_flight():
    """A's stream to B dies with frames in flight: B restarts, A declares it dead (forget) and its
    outbox re-sends the messages under their ids on a new stream. Returns the old frames."""
    a, b, net = pair()
    ids = [bytes([i]) * 16 for i in range(1, 4)]
    for i, mid in enumerate(ids):
        a.send(B, f"m{i}", 0.0, msg_id=mid, confirm=True)
    old = a.take_outgoing()  # in the transport, not yet written
    b2 = Delivery(B, random.Random(7))  # B restarted: no state
    net.cores[B] = b2
    a.forget(B)
    net.flush()
    assert [e.msg_id for e in net.of(A, SendFailed)] == ids
    for i, mid in enumerate(ids):  # the outbox re-sends under the original ids
        a.send(B, f"m{i}", 0.1, msg_id=mid, confirm=True)
    return a, b2, net, old, ids


def test_a_late_frame_of_a_dead_stream_never_retires_the_live_one():
    """The issue's sequence: the new stream reaches the restarted B first, then a frame of the old one."""
    a, b, net, old, ids = _forgotten_with_old_frames_in_flight()
    new = a.take_outgoing()
    assert new[0].ep > old[0].ep  # a re-opened stream has a higher epoch
    b.receive(new[0], 0.2)
    b.receive(old[1], 0.3)  # the background connection delivers a frame of the dead stream
    for env in new[1:]:
        b.receive(env, 0.4)
    net.advance(2.0)
    assert net.delivered(B) == ["m0", "m1", "m2"]
    assert b.stats["stale_epoch"] == 1 and b.stats["epoch_resets"] == 0
    assert [e.msg_id for e in net.of(A, Acked)] == ids and a.pending() == 0
    a.send(B, "after", net.now)
    net.advance(net.now + 1.0)
    assert net.delivered(B)[-1] == "after" and a.pending() == 0


def test_frames_of_a_dead_stream_first_are_superseded_by_the_live_one():
    a, b, net, old, ids = _forgotten_with_old_frames_in_flight()
    new = a.take_outgoing()
    for env in old[:2]:
        b.receive(env, 0.2)  # delivered: they are A's messages, and their ids are remembered
    for env in new + old[2:]:
        b.receive(env, 0.3)
    net.advance(2.0)
    assert net.delivered(B) == ["m0", "m1", "m2"]  # m0 and m1 once each: their re-sends are duplicates
    assert b.stats["epoch_resets"] == 1 and b.stats["stale_epoch"] == 1
    assert [e.msg_id for e in net.of(A, Acked)] == ids and a.pending() == 0


def test_a_sender_behind_the_epoch_the_receiver_holds_moves_above_it():
    """A restarted with a lower epoch than its previous run (a clock set back, a random base): B drops
    the new stream as stale but acks with the epoch it holds, and A reopens its stream above it."""
    a, b, net = pair()
    a.send(B, "before", 0.0)
    net.advance(0.1)
    a2 = Delivery(A, random.Random(3), epoch=a.epoch - 1000)
    net.cores[A] = a2
    mid = a2.send(B, "after", 0.2, confirm=True)
    a2.send(B, "and after", 0.2)
    net.advance(1.0)
    assert net.delivered(B) == ["before", "after", "and after"]
    assert b.stats["stale_epoch"] == 2 and a2.stats["stream_reopens"] == 1
    assert net.of(A, Acked) == [Acked(mid, B)] and a2.pending() == 0
    assert a2.stats["retransmits"] == 2 and net.of(A, SendFailed) == []


def test_a_forgotten_sender_that_did_not_restart_goes_on_with_its_stream():
    """B declared A dead (forgot it) but A lived on and kept its stream: B takes it up where A is."""
    a, b, net = pair()
    for i in range(5):
        a.send(B, i, 0.0)
    net.advance(0.1)
    b.forget(A)  # its dedup memory and the epoch it held are kept
    for i in range(5, 8):
        a.send(B, i, net.now)
    net.advance(net.now + 1.0)
    assert net.delivered(B) == list(range(8))
    assert a.pending() == 0 and b.stats["stale_epoch"] == 0


def test_epochs_must_be_63_bit():
    for bad in (-1, 1 << 63):
        with pytest.raises(ValueError):
            Delivery(A, random.Random(1), epoch=bad)
    assert Delivery(A, random.Random(1)).epoch < 1 << 62  # a random base leaves room above it


def test_an_ack_naming_an_impossible_epoch_is_malformed_and_reopens_are_rate_limited():
    a, b, net = pair()
    a.send(B, "x", 0.0)
    a.take_outgoing()
    a.receive(Envelope(bytes(16), B, "ack", None, A, ack=[(1 << 63) - (1 << 33), 0, []]), 0.0)
    assert a.stats["malformed"] == 1 and a.stats["stream_reopens"] == 0
    for n in range(50):  # a peer raising its claim with every ack renumbers our stream once per rto
        a.receive(Envelope(bytes(16), B, "ack", None, A, ack=[a.epoch + (n + 1) * (1 << 34), 0, []]), 0.01 * n)
    assert a.stats["stream_reopens"] == 3  # at 0, 0.2 and 0.4 s
    assert len(a.take_outgoing()) == 3 and a.pending() == 1


# -- the stall watchdog ------------------------------------------------------------------------


def test_a_stalled_stream_is_reported_once_and_reopened():
    """Our frames to B are lost on their way (the path of this stream is broken), while B keeps
    talking to us: after stall_after without progress A reports Stalled once and opens a fresh
    stream, which gets through."""
    a, b, net = pair()
    a.send(B, "stuck", 0.0)
    a.send(B, "stuck too", 0.0)
    broken = a.take_outgoing()[0].ep  # lost, like every later frame of this stream
    net.drop = lambda env: env.src == A and env.ep == broken
    t = 0.0
    while t < 9.5:  # B sends A something every half second
        b.send(A, t, t)
        t += 0.5
        net.advance(t)
        assert a.stalled_peers == 0
    net.advance(10.6)
    (stall,) = net.of(A, Stalled)
    assert stall.dst == B and stall.pending == 2 and stall.waited >= 10.0
    assert a.stats["stalls"] == 1 and a.stats["stream_reopens"] == 1
    net.advance(11.0)
    assert net.delivered(B) == ["stuck", "stuck too"] and a.pending() == 0
    assert a.stalled_peers == 0 and len(net.of(A, Stalled)) == 1


def test_a_silent_peer_is_not_stalled():
    a, b, net = pair()
    net.drop = lambda env: True
    a.send(B, "x", 0.0)
    net.advance(30.0)
    assert net.of(A, Stalled) == [] and a.stats["stalls"] == 0
    assert len(net.of(A, SendFailed)) == 1


@pytest.mark.parametrize("last_word", ["progress", "chatter"])
def test_a_peer_that_went_away_mid_stream_is_not_stalled(last_word):
    """bench/chaos.py, 3 of 35 rounds: B's sidecar was killed mid-stream and stayed down 10.7-14.3 s;
    10 s after B's last ack, before B was back (or declared dead), A reported B stalled and reopened
    its stream. The clock had started at the very ack that made progress and run on through B's
    silence: the peer was not talking, it was gone. Now the clock runs only while the peer talks:
    whether B's last word was an ack that made progress or anything else, its silence is no stall,
    and once back its stream resumes on the retransmissions alone."""
    a, b, net = pair()
    net.drop = lambda env: env.src == A and env.type == "msg" and env.body >= 20  # B is killed while these are on their way
    for i in range(30):
        a.send(B, i, 0.0)
    net.advance(0.1)
    assert a.pending() == 10 and a.stats["stalls"] == 0  # B's last ack made progress
    if last_word == "chatter":
        b.send(A, "still here", 0.1)  # heard after the last progress: the clock starts here
    net.advance(0.2)
    net.drop = lambda env: True  # B is down for 14.8 s
    net.advance(15.0)
    assert net.of(A, Stalled) == [] and a.stats["stalls"] == 0 and a.stalled_peers == 0
    net.drop = lambda env: False  # B is back (same state: the silence alone is under test)
    b.send(A, "back", 15.0)
    net.advance(25.0)
    assert net.delivered(B) == list(range(30)) and a.pending() == 0
    assert net.of(A, Stalled) == [] and a.stats["stream_reopens"] == 0


def test_stalled_peer_forgotten_leaves_the_gauge():
    a, b, net = pair()
    net.drop = lambda env: env.src == A and env.type == "msg"
    a.send(B, "x", 0.0)
    for t in range(1, 13):
        b.send(A, t, float(t))
        net.advance(float(t))
    assert a.stalled_peers == 1
    a.forget(B)
    assert a.stalled_peers == 0


# -- bad input from a peer -------------------------------------------------------------------


BAD_ACKS = [
    ["x", 1, []],
    [1, "1", []],
    [1, 1, "[]"],
    [1, 1, [1, "2"]],
    [1, 1, [1.5]],
    [1.0, 1, []],
    [True, 1, []],
    [1, -1, []],
    [1, 1],
    [],
    [1, 1, {"a": 1}],
    [1, 1, list(range(5000))],
]


@pytest.mark.parametrize("ack", BAD_ACKS)
def test_malformed_ack_is_dropped_and_counted(ack):
    a, b, net = pair()
    for typ in ("ack", "msg"):
        env = Envelope(b"\x01" * 16, A, typ, "x", B, seq=1, ep=5, ack=ack)
        b.receive(env, 0.0)
    assert b.stats["malformed"] == 2
    assert b.take_events() == []


def test_ack_of_never_sent_seq_is_malformed():
    a, b, net = pair()
    a.send(B, "x", 0.0)
    net.flush()
    env = Envelope(b"\x02" * 16, B, "ack", None, A, ack=[a._peers[B].ep, 10**12, []])
    a.receive(env, 0.0)
    assert a.stats["malformed"] == 1
    assert a.pending() == 1


def test_unsequenced_and_ackless_envelopes_are_dropped():
    a, b, net = pair()
    b.receive(Envelope(b"\x03" * 16, A, "msg", "x", B), 0.0)
    b.receive(Envelope(b"\x04" * 16, A, "ack", None, B), 0.0)
    assert b.stats["unsequenced"] == 1 and b.stats["malformed"] == 1
    assert b.take_events() == [] and b.take_outgoing() == []


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) | st.binary(max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=12))
def test_any_ack_value_never_raises(ack):
    a, b, net = pair()
    a.send(B, "x", 0.0)
    net.flush()
    a.receive(Envelope(b"\x05" * 16, B, "ack", None, A, ack=ack), 0.0)
    a.receive(Envelope(b"\x06" * 16, B, "msg", None, A, seq=1, ep=1, ack=ack), 0.0)
    a.tick(100.0)


def test_reserved_types_and_bad_config_are_refused():
    a, _, _ = pair()
    for typ in ("ack", "fwd", "rep", "err"):
        with pytest.raises(ValueError):
            a.send(B, 1, 0.0, type=typ)
    with pytest.raises(ValueError):
        a.request(B, 1, 0.0, timeout=0)
    with pytest.raises(ValueError):
        DeliveryConfig(window=0)
    with pytest.raises(ValueError):
        DeliveryConfig(jitter=1.5)
    with pytest.raises(ValueError):
        DeliveryConfig(rto_initial=1.0, rto_max=0.5)


# -- randomised end-to-end -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_lossy_duplicating_reordering_link_delivers_exactly_once_in_order(seed):
    rng = random.Random(seed)
    a, b, net = pair(DeliveryConfig(window=64, max_retries=20))  # this test is about order, not the retry limit
    sent = []
    replays = []

    def drop(env):
        if rng.random() < 0.05:
            replays.append(env)  # kept for a later duplicate delivery
        return rng.random() < 0.3

    net.drop = drop
    for i in range(300):
        while not a.can_send(B):
            net.advance(net.now + 0.05)
        a.send(B, i, net.now)
        sent.append(i)
        if rng.random() < 0.1:
            net.advance(net.now + rng.random() * 0.3)
        if replays and rng.random() < 0.2:
            b.receive(replays.pop(rng.randrange(len(replays))), net.now)
    net.advance(net.now + 400.0)
    assert net.of(A, SendFailed) == []
    assert net.delivered(B) == sent
    assert a.pending() == 0


def test_a_reopened_request_carries_the_time_its_requester_still_waits():
    a, b, net = pair()
    a.request(B, "q", 0.0, timeout=5.0)
    (first,) = a.take_outgoing()
    assert first.ttl == 5000
    a.receive(Envelope(bytes(16), B, "ack", None, A, ack=[first.ep + 1, 0, []]), 2.0)  # B holds a newer epoch
    (again,) = a.take_outgoing()
    assert (again.id, again.seq, again.ts, again.ttl) == (first.id, 1, 2000, 3000) and again.ep > first.ep + 1


def test_messages_a_full_reorder_buffer_dropped_are_sent_again_as_soon_as_the_hole_is_repaired():
    """B buffers 4 messages out of order and drops the rest of A's window unacknowledged; seq 1 is lost
    until every message's first timer has fired. Once a copy repairs the hole, the cumulative ack makes
    A send the dropped run again at once instead of waiting for each message's backed-off timer."""
    a = Delivery(A, random.Random(1))
    b = Delivery(B, random.Random(2), DeliveryConfig(reorder_limit=4))
    net = Net(a, b)
    net.drop = lambda env: env.src == A and env.type == "msg" and env.seq == 1 and net.now < 0.3
    for i in range(64):
        a.send(B, i, 0.0)
    net.advance(0.1)
    assert net.delivered(B) == [] and b.stats["reorder_overflow"] > 0
    while not net.delivered(B):
        net.advance(net.now + 0.01)
    repaired = net.now
    net.advance(repaired + 0.05)  # an ack delay and a round trip later
    assert net.delivered(B) == list(range(64)) and a.pending() == 0
    assert 0 < a.stats["fast_retransmits"] <= 63  # each seq at most once this way


def test_a_repeated_ack_resends_the_floor_at_once_and_no_faster_than_once_per_rto():
    """B's driver refuses seq 1 for want of room (it never reaches B's core: no ack) while B buffers
    the rest; A's timer for seq 1 backs off. When B has room again it acks (a window update): A resends
    seq 1 at once rather than on its timer, ~1.6 s away. Acks repeated faster than rto_initial resend
    nothing more, and a floor still on its first timer is not resent (it is in flight)."""
    a, b, net = pair()
    state = {"room": False, "hole": False}
    refused = []

    def drop(env):
        if env.dst == B and env.type == "msg" and env.seq == 1 and not state["room"]:
            refused.append(net.now)
            return True
        return env.dst == B and env.type == "msg" and env.seq > 10 and state["hole"]

    net.drop = drop
    for i in range(10):
        a.send(B, i, 0.0)
    net.advance(0.1)
    b.ack(A, net.now)  # seq 1 still on its first timer: nothing resent
    net.flush()
    assert a.stats["floor_resends"] == 0 and len(refused) == 1
    net.advance(1.5)  # copies at ~0.2, ~0.6, ~1.4: all refused; the next one ~1.6 s later
    assert len(refused) == 4 and net.delivered(B) == []
    state["room"] = True
    b.ack(A, net.now)
    net.flush()
    assert net.delivered(B) == list(range(10)) and a.stats["floor_resends"] == 1
    net.advance(net.now + 0.01)  # B's delayed ack
    assert a.pending() == 0 and len(refused) == 4
    state["hole"] = True
    for i in range(10, 13):  # seqs 11-13, lost until further notice
        a.send(B, i, net.now)
    net.advance(net.now + 0.3)  # their timers fired once (tries 1): copies lost too
    before = a.stats["floor_resends"]
    t = net.now
    for k in range(3):  # three repeated acks within rto_initial: one run resent, once
        b.ack(A, t + 0.05 * k)
        for env in b.take_outgoing():
            a.receive(env, t + 0.05 * k)
    assert a.stats["floor_resends"] - before == 3  # seqs 11, 12, 13, each once
    assert [env.seq for env in a.take_outgoing()] == [11, 12, 13]


def test_a_peer_heard_from_again_gets_the_unanswered_floor_at_once():
    """The path to B is down for 4.2 s (a relay restarting, a cut): A's copies back off (four copies
    by 3.75 s, the fifth not before 4.65 s). Membership then hears from B (Delivery.heard): the path
    works again, and A resends its floor run at once instead of on its timer. Heard again within
    rto_initial: nothing more."""
    a, b, net = pair()
    net.drop = lambda env: net.now < 4.2
    for i in range(5):
        a.send(B, i, 0.0)
    net.advance(4.2)
    assert net.delivered(B) == [] and a.stats["retransmits"] > 0
    nxt = a.next_timer()
    assert nxt is not None and nxt > 4.6  # the backed-off timers
    net.drop = lambda env: False
    a.heard(B, 4.2)
    net.flush()
    assert net.delivered(B) == list(range(5)) and a.stats["floor_resends"] == 5
    a.heard(B, 4.3)  # still pending (B's ack is delayed), but within rto_initial of the last resend
    assert a.take_outgoing() == []
    net.advance(4.4)
    assert a.pending() == 0
    a.heard(B, 4.5)  # nothing pending: nothing to do
    assert a.take_outgoing() == []


def test_a_healthy_stream_sends_nothing_twice():
    a, b, net = pair()
    for i in range(5000):
        a.send(B, i, net.now)
        if i % 100 == 99:
            net.advance(net.now + 0.01)
    net.advance(net.now + 1.0)
    assert net.delivered(B) == list(range(5000))
    assert a.stats["fast_retransmits"] == 0 and a.stats["retransmits"] == 0 and b.stats["duplicates"] == 0
