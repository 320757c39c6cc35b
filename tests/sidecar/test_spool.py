"""The durable outbox's file store, on real files: append, acknowledge, reopen, damage, bounds."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from zmqagents.envelope import Envelope, StreamDecoder
from zmqagents.sidecar.spool import (
    Spool,
    SpoolConfig,
    SpoolError,
    SpoolFull,
    encode_record,
)

DST = bytes([0xD]) * 32
SRC = bytes([0xA]) * 32


def env(n: int, pad: int = 40) -> Envelope:
    return Envelope(n.to_bytes(16, "big"), SRC, "msg", {"n": n, "pad": "x" * pad}, DST)


def spool(path: Path, **kw) -> Spool:
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("segment_bytes", 16 << 10)
    kw.setdefault("fsync", "never")
    return Spool(SpoolConfig(str(path), **kw), node_id=SRC)


def undone(s: Spool) -> list[int]:
    return [e.body["n"] for _, e in s.undone()]


def only_segment(path: Path) -> Path:
    (seg,) = sorted(path.glob("*.seg"))
    return seg


def test_records_are_plain_envelopes_with_a_crc_field(tmp_path):
    with spool(tmp_path) as s:
        s.append([env(1), env(2)])
    data = only_segment(tmp_path).read_bytes()
    decoded = list(StreamDecoder().feed(data))  # any envelope reader reads a segment
    assert [d.body["n"] for d in decoded] == [1, 2]
    assert all(isinstance(d.extra["crc"], int) for d in decoded)
    assert data.startswith(encode_record(env(1)))


def test_append_ack_reopen_keeps_exactly_the_unacknowledged_in_order(tmp_path):
    s = spool(tmp_path)
    refs = s.append([env(i) for i in range(100)])
    for ref in refs[::2]:
        assert s.mark_done(ref)
    assert not s.mark_done(refs[0])  # twice: ignored, counted
    s.commit()
    assert s.undone_count == 50 and s.stats["unknown_marks"] == 1
    s.close()
    s = spool(tmp_path)
    assert undone(s) == list(range(1, 100, 2))
    assert s.undone_count == 50
    assert s.read(refs[1]).id == env(1).id
    s.close()


def test_marks_not_committed_before_a_crash_mean_a_resend_not_a_loss(tmp_path):
    s = spool(tmp_path)
    refs = s.append([env(i) for i in range(5)])
    s.mark_done(refs[0])
    s.commit()
    s.mark_done(refs[1])  # noted but never committed: the process dies here
    s2 = spool(tmp_path)  # (as a restarted process would: nothing closed the first one)
    assert undone(s2) == [1, 2, 3, 4]
    s2.close()
    s.close()


def test_torn_tail_is_cut_and_earlier_records_survive(tmp_path, caplog):
    with spool(tmp_path) as s:
        s.append([env(i) for i in range(10)])
    seg = only_segment(tmp_path)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 7)  # power loss in the middle of the last record
    with caplog.at_level(logging.WARNING):
        s = spool(tmp_path)
    assert undone(s) == list(range(9))
    assert s.stats["torn_tail_bytes"] > 0 and s.stats["corrupt_regions"] == 0
    assert "torn tail" in caplog.text
    s.append([env(100)])  # appends go after the last good record, not after the garbage
    s.close()
    s = spool(tmp_path)
    assert undone(s) == list(range(9)) + [100]
    assert s.stats["torn_tail_bytes"] == 0
    s.close()


def test_zero_filled_tail_is_skipped(tmp_path):
    with spool(tmp_path) as s:
        s.append([env(i) for i in range(3)])
    with open(only_segment(tmp_path), "ab") as f:
        f.write(bytes(4096))  # a file system that extended the file but never wrote the data
    with spool(tmp_path) as s:
        assert undone(s) == [0, 1, 2]
        assert s.stats["torn_tail_bytes"] == 4096


@pytest.mark.parametrize("where", ["payload", "length", "crc"])
def test_corrupt_middle_record_is_skipped_logged_and_counted_and_later_ones_survive(tmp_path, caplog, where):
    with spool(tmp_path) as s:
        s.append([env(i) for i in range(20)])
    seg = only_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    record = len(encode_record(env(0)))
    start = 7 * record  # record 7 (all records have the same size here)
    pos = {"payload": start + 20, "length": start + 1, "crc": start + record - 1}[where]
    data[pos] ^= 0x55
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        s = spool(tmp_path)
    assert undone(s) == [i for i in range(20) if i != 7]
    assert s.stats["corrupt_regions"] == 1 and s.stats["corrupt_bytes"] == record
    assert "corrupt bytes at offset" in caplog.text
    s.append([env(20)])
    s.close()
    with spool(tmp_path) as s:  # the damage stays where it is, skipped again; nothing else is lost
        assert undone(s) == [i for i in range(21) if i != 7]


def test_garbage_between_records_is_skipped(tmp_path):
    with spool(tmp_path) as s:
        s.append([env(0)])
    seg = only_segment(tmp_path)
    with open(seg, "ab") as f:
        f.write(os.urandom(3000) + b"\xa1v\x01" * 5)  # including false starts of a record
        f.write(encode_record(env(1)))
    with spool(tmp_path) as s:
        assert undone(s) == [0, 1]
        assert s.stats["corrupt_regions"] == 1


def test_full_spool_refuses_with_a_clear_error_writes_nothing_and_recovers_after_acks(tmp_path):
    s = spool(tmp_path, max_bytes=64 << 10, segment_bytes=16 << 10)
    refs = []
    with pytest.raises(SpoolFull, match="full: .* bytes used"):
        while True:
            refs += s.append([env(len(refs))])
    used = s.bytes
    files = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    with pytest.raises(SpoolFull):
        s.append([env(10_000)])
    assert s.bytes == used and {p.name: p.stat().st_size for p in tmp_path.iterdir()} == files
    assert s.stats["refused_full"] >= 2
    assert used <= 64 << 10
    for ref in refs:
        s.mark_done(ref)
    s.commit()
    assert s.stats["segments_deleted"] >= 2
    s.append([env(20_000)])  # room again
    s.close()
    with spool(tmp_path, max_bytes=64 << 10, segment_bytes=16 << 10) as s:
        assert undone(s) == [20_000]


def test_compaction_deletes_fully_acknowledged_segments_only(tmp_path):
    s = spool(tmp_path, segment_bytes=4096, max_bytes=1 << 20)
    refs = [s.append([env(i)])[0] for i in range(200)]
    n_segments = len(list(tmp_path.glob("*.seg")))
    assert n_segments > 3 and s.segments == n_segments
    for ref in refs[:-1]:
        s.mark_done(ref)
    s.commit()
    # every segment but the one holding the last record is gone, done file and all
    assert len(list(tmp_path.glob("*.seg"))) == 1 and len(list(tmp_path.glob("*.done"))) == 1
    assert undone(s) == [199]
    s.close()
    with spool(tmp_path, segment_bytes=4096) as s:
        assert undone(s) == [199]


def test_keep_done_keeps_the_newest_acknowledged_records_readable_and_yields_to_new_ones(tmp_path):
    """The inbound spool's dedup memory: acknowledged records stay (whole segments) while fewer than
    keep_done records follow them, are read back after a reopen, and give way when space is needed."""
    s = spool(tmp_path, segment_bytes=4096, max_bytes=28 << 10, keep_done=60)
    refs = []
    for i in range(120):
        refs += s.append([env(i)])
        if i % 30 == 29:  # acknowledged as they go (an application consuming)
            for ref in refs:
                s.mark_done(ref)
            s.commit()
            refs = []
    kept = [(e.body["n"], done) for _, e, done in s.records()]
    assert all(done for _, done in kept) and undone(s) == []
    numbers = [n for n, _ in kept]
    assert numbers == list(range(numbers[0], 120))  # the newest, in order, with no gap
    assert 60 <= len(numbers) < 60 + 40  # at least keep_done, at most one segment more (~35 records)
    s.close()
    with spool(tmp_path, segment_bytes=4096, max_bytes=28 << 10, keep_done=60) as s:
        assert [e.body["n"] for _, e, _ in s.records()] == numbers  # survives a reopen
    # New records count as newer ones: with keep_done=60 the kept segments go once 60 follow. With a
    # keep_done the spool cannot hold, they go when their space is needed, before anything is refused.
    with spool(tmp_path, segment_bytes=4096, max_bytes=28 << 10, keep_done=10_000) as s:
        n = 120
        with pytest.raises(SpoolFull):  # the kept records make room before anything is refused
            while True:
                s.append([env(n)])
                n += 1
        assert s.stats["kept_evicted"] >= 1 and s.stats["refused_full"] == 1
        assert [e.body["n"] for _, e, _ in s.records()] == list(range(120, n))  # only undone ones left
    with spool(tmp_path, segment_bytes=4096) as s:  # keep_done = 0: acknowledged segments go, as always
        for ref, _, _ in list(s.records()):
            s.mark_done(ref)
        s.commit()
        assert s.segments == 1


def test_corrupt_done_file_resends_rather_than_loses(tmp_path):
    s = spool(tmp_path)
    refs = s.append([env(i) for i in range(4)])
    s.mark_done(refs[0])
    s.commit()
    s.mark_done(refs[1])
    s.commit()
    s.close()
    (done,) = tmp_path.glob("*.done")
    data = bytearray(done.read_bytes())
    data[-2] ^= 0xFF  # damage the second done record
    done.write_bytes(bytes(data))
    with spool(tmp_path) as s:
        assert undone(s) == [1, 2, 3]  # 1 is sent again (the receiver drops it as a duplicate)
        assert s.stats["torn_tail_bytes"] > 0


def test_fsync_policies(tmp_path):
    counts = {}
    for policy in ("always", "batch", "never"):
        with spool(tmp_path / policy, fsync=policy) as s:
            s.append([env(i) for i in range(10)])
            s.append([env(10)])
            refs = s.append([env(11)])
            s.mark_done(refs[0])
            s.commit()
            counts[policy] = s.stats["fsyncs"]
            assert s.sync_pending == (policy == "batch")
    assert counts == {"always": 12 + 1, "batch": 3, "never": 0}
    with pytest.raises(SpoolError, match="fsync must be one of always, batch, never"):
        SpoolConfig(str(tmp_path), fsync="sometimes")


def test_oversize_record_and_unusable_directory_are_clear_errors(tmp_path):
    from zmqagents.envelope import OversizeEnvelope

    with spool(tmp_path, max_record=1000) as s:
        with pytest.raises(OversizeEnvelope):
            s.append([env(1, pad=2000)])
        assert s.undone_count == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="cannot create spool directory"):
        spool(blocker / "spool")


def test_a_real_full_disk_is_refused_cleanly(tmp_path):
    """A tiny tmpfs the test mounts (we are root); skipped where mounting is not allowed."""
    mnt = tmp_path / f"small-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    try:
        s = spool(mnt / "spool", max_bytes=1 << 20, segment_bytes=256 << 10)
        accepted = []
        with pytest.raises(SpoolFull, match="disk full"):
            for i in range(10_000):
                s.append([env(i, pad=500)])
                accepted.append(i)
        assert s.stats["disk_full"] == 1
        s.close()
        with spool(mnt / "spool", max_bytes=1 << 20, segment_bytes=256 << 10) as s2:
            assert undone(s2) == accepted  # everything accepted is there, nothing partial
            assert s2.stats["torn_tail_bytes"] == 0 and s2.stats["corrupt_regions"] == 0
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_the_example_records_in_the_spec_are_what_the_spool_writes():
    import re

    spec = (Path(__file__).resolve().parents[2] / "protocols" / "spool.md").read_text()
    blocks = re.findall(r"\(\d+ bytes\).*?:\n\n((?:    [0-9a-f ]+\n)+)", spec, re.S)
    record, done = (bytes.fromhex("".join(block.split())) for block in blocks)
    msg = Envelope(bytes(range(16)), bytes([0xAA]) * 32, "msg", {"n": 1}, bytes([0xBB]) * 32, 1700000000000)
    assert encode_record(msg) == record and len(record) == 138
    mark = Envelope(bytes([1]) * 16, bytes([0xAA]) * 32, "spool.done", [0, 151])
    assert encode_record(mark) == done and len(done) == 95
