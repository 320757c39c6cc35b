"""The inbox's read backlog (transport/backlog.py): bounded in bytes, per-peer shares, a reserve for
small frames, taken one sender after the other."""

from __future__ import annotations

from zmqagents.transport.backlog import ENTRY_COST, SMALL_FRAME, ReadBacklog

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
RID = b"r" * 48


def test_frames_are_taken_one_sender_after_the_other_each_in_order():
    backlog = ReadBacklog(1 << 20, 1 << 19, 0)
    for i in range(3):
        backlog.put(A, RID, b"a%d" % i)
    backlog.put(B, RID, b"b0")
    taken = []
    while (item := backlog.take()) is not None:
        taken.append(item[2])
    assert taken == [b"a0", b"b0", b"a1", b"a2"]
    assert backlog.bytes == 0 and len(backlog) == 0


def test_a_sender_keeps_to_its_share_but_may_always_bring_one_frame():
    backlog = ReadBacklog(10_000, 1_000, 0)
    big = b"x" * 3_000  # larger than a share: alone, it still gets in
    assert backlog.refuses(A, len(big)) is None
    backlog.put(A, RID, big)
    assert backlog.refuses(A, 10) == "backlog_peer_share"
    assert backlog.refuses(B, 500) is None
    assert backlog.bytes == len(big) + ENTRY_COST


def test_the_total_binds_and_small_frames_have_a_reserve():
    backlog = ReadBacklog(10_000, 6_000, 2_000)
    for sender in (A, B):
        backlog.put(sender, RID, b"x" * (4_900 - ENTRY_COST))
    assert backlog.bytes == 9_800
    assert backlog.refuses(C, SMALL_FRAME + 1) == "backlog_full"  # large: only up to max_bytes
    assert backlog.refuses(C, 1_000) is None  # small: into the reserve
    backlog.put(C, RID, b"y" * 1_000)
    assert backlog.refuses(C, 1_000) == "backlog_full"  # the reserve is bounded too
    backlog.take()
    assert backlog.refuses(C, 2_000) is None  # room again once a frame was taken
