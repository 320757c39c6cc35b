"""Token buckets and per-peer rate limits (zmqagents/core/ratelimit.py), on a fake clock."""

from __future__ import annotations

import pytest

from zmqagents.core.ratelimit import PeerLimiter, RateLimitConfig, TokenBucket

A, B = b"a" * 32, b"b" * 32


def test_a_bucket_refills_at_its_rate_up_to_its_burst():
    bucket = TokenBucket(2.0, 0.0)
    assert bucket.take(0.0, 10.0, 2.0) and bucket.take(0.0, 10.0, 2.0)
    assert not bucket.take(0.0, 10.0, 2.0)
    assert not bucket.take(0.05, 10.0, 2.0)  # half a token
    assert bucket.take(0.1, 10.0, 2.0)
    assert bucket.refill(100.0, 10.0, 2.0) == 2.0  # never above the burst
    assert not bucket.take(100.0, 10.0, 2.0, amount=3.0) and bucket.tokens == 2.0  # a refusal takes nothing


def test_a_flooding_peer_is_held_to_its_rate_and_the_others_are_not_touched():
    limiter = PeerLimiter(RateLimitConfig(messages=100, message_burst=10, bytes=1e6, byte_burst=1e6))
    now = 0.0
    accepted = 0
    for i in range(10_000):  # 10,000 messages over 1 s from A
        now = i / 10_000
        accepted += limiter.admit(A, 100, now) is None
    assert 100 <= accepted <= 111  # the burst, then 100 a second
    assert limiter.stats["refused_messages"] == 10_000 - accepted
    assert all(limiter.admit(B, 100, now) is None for _ in range(10))  # B has its own bucket


def test_bytes_are_limited_and_decoding_cost_is_charged_as_debt():
    limiter = PeerLimiter(RateLimitConfig(messages=1e6, message_burst=1e6, bytes=1000, byte_burst=2000))
    assert limiter.admit(A, 1500, 0.0) is None
    assert limiter.admit(A, 1000, 0.0) == "rate_bytes"  # 500 left
    limiter.charge(A, 1500)  # it decoded into objects costing 1,500 more: 1,000 in debt
    assert limiter.admit(A, 1, 1.0) == "rate_bytes"  # the debt is paid back first
    assert limiter.admit(A, 1, 2.1) is None
    assert limiter.stats["charged_bytes"] == 1500


def test_peers_are_remembered_up_to_a_bound():
    limiter = PeerLimiter(RateLimitConfig(messages=1, message_burst=1, max_peers=2))
    assert limiter.admit(A, 1, 0.0) is None
    assert limiter.admit(A, 1, 0.0) == "rate_messages"
    limiter.admit(B, 1, 0.0)
    limiter.admit(b"c" * 32, 1, 0.0)  # A is forgotten (least recently seen) ...
    assert limiter.stats["peers_forgotten"] == 1
    assert limiter.admit(A, 1, 0.0) is None  # ... and starts full again


@pytest.mark.parametrize("bad", [{"messages": 0}, {"bytes": -1}, {"max_peers": True}, {"message_burst": 0.5}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        RateLimitConfig(**bad)


def test_a_message_admitted_before_decoding_waits_no_more_once_its_peer_is_in_debt():
    # A receiver that admits several frames by their size, then decodes them one by one (the read
    # backlog): the cost charged for the first makes the others wait, as if checked on arrival.
    lim = PeerLimiter(RateLimitConfig(bytes=1000, byte_burst=1000))
    assert lim.admit(b"a", 100, 0.0) is None and lim.admit(b"a", 100, 0.0) is None
    assert lim.in_debt(b"a", 0.0) is None and lim.in_debt(b"nobody", 0.0) is None
    lim.charge(b"a", 5000)  # the first decoded into much more than its length
    assert lim.in_debt(b"a", 0.0) == "rate_bytes" and lim.stats["refused_bytes"] == 1
    assert lim.in_debt(b"a", 5.0) is None  # paid back by the refill
