"""Per-peer traffic counters of the transport (transport/peertraffic.py): what they count, and
their bound."""

from __future__ import annotations

from zmqagents.transport.peertraffic import PeerTraffic


def test_counts_each_peer_in_and_out():
    t = PeerTraffic(max_peers=4)
    t.received(b"a", 100)
    t.received(b"a", 50)
    t.sent(b"a", 7)
    t.sent(b"b", 9)
    assert t.of(b"a") == (2, 150, 1, 7) and t.of(b"b") == (0, 0, 1, 9) and t.of(b"c") == (0, 0, 0, 0)
    assert len(t) == 2 and set(t) == {b"a", b"b"}


def test_holds_at_most_max_peers_dropping_the_entry_created_longest_ago():
    t = PeerTraffic(max_peers=3)
    for peer in (b"a", b"b", b"c"):
        t.received(peer, 10)
    t.received(b"a", 10)  # activity does not renew an entry: the bound is on entries, in creation order
    t.sent(b"d", 5)
    assert list(t) == [b"b", b"c", b"d"] and t.of(b"a") == (0, 0, 0, 0)
    t.received(b"a", 1)  # a dropped peer starts again from zero (a reader sees its counts go back)
    assert list(t) == [b"c", b"d", b"a"] and t.of(b"a") == (1, 1, 0, 0)
