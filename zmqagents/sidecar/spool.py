"""The durable outbox: messages accepted from local applications, kept on disk until acknowledged.

The on-disk format, with example records, is specified in ``protocols/spool.md``.

A spool is a directory of *segments*. Each segment ``NNNNNNNNNNNNNNNN.seg`` is an append-only file
of records, and each record is one envelope in the project's only format (4-byte big-endian length,
then a msgpack map; ``protocols/envelope.md``) whose map ends with a ``crc`` field: a uint 32
holding the CRC-32 (zlib/IEEE) of every payload byte before those four value bytes. Any envelope
decoder reads a record (``crc`` is an unknown field, ignored); the spool uses the CRC to tell a
damaged record from a good one. Beside each segment, ``NNNNNNNNNNNNNNNN.done`` lists the byte
offsets of its records that were acknowledged, as records of the same form (type ``spool.done``,
body an array of offsets). A segment whose records are all done is deleted, with its done file:
that is the whole of compaction, so nothing is ever rewritten in place.

Reading (on open) is strict but forgiving, record by record:

* a record whose length, CRC or envelope does not check out is skipped: the reader looks for the
  next offset where a record starts (every record's map starts with the ``v`` field, so it searches
  for those bytes) *and* whose CRC checks out, and carries on from there. The skipped bytes are
  logged and counted (``corrupt_regions``, ``corrupt_bytes``); the records after them survive;
* damage that runs to the end of the file is a torn tail (power loss mid-write): counted in
  ``torn_tail_bytes``; in the newest segment it is cut off, so new records follow the last good one.

fsync policies, and what each can lose (a process crash, ``kill -9`` included, loses nothing under
any policy: every record is written to the kernel before :meth:`Spool.append` returns):

* ``always``: each record is fsynced before ``append`` returns. A power loss loses nothing that
  was appended. Slowest (one fsync per message).
* ``batch``: one fsync per ``append`` call (a burst of records: group commit). A caller that
  replies "accepted" only after ``append`` returns loses nothing it accepted on power loss; done
  marks are fsynced at most ``sync_interval`` late (losing some only re-sends those messages,
  which the receiver deduplicates).
* ``never``: the kernel writes back when it likes (Linux: within ~30 s by default). A power loss
  may lose what was appended in that time, and can leave a torn or zero-filled tail, which the
  reader skips.

The size bound counts the bytes of every segment and done file. An append that would exceed it
raises :class:`SpoolFull` and writes nothing; so does a full disk (the partial write is cut off).
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import struct
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..envelope import DEFAULT_MAX_SIZE, HEADER, HEADER_LEN, Envelope, EnvelopeError, decode_payload
from ..errors import Error

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "batch", "never")
CRC_MARK = b"\xa3crc\xce"  # the msgpack bytes of the key "crc" and the uint 32 marker before the CRC value
TRAILER_LEN = len(CRC_MARK) + 4
START_MARK = b"\xa1v\x01"  # "v": 1, the first entry of every record's map (after a fixmap header byte)
DONE_TYPE = "spool.done"
SEGMENT_SUFFIX = ".seg"
DONE_SUFFIX = ".done"
MAX_DONE_PER_RECORD = 50_000  # offsets per done record: keeps one well under the envelope size limit
_CRC = struct.Struct(">I")
_REF_SHIFT = 32  # a record reference is (segment number << 32) | index in the segment


class SpoolError(Error):
    """The spool cannot be used (a bad directory or setting, an IO error)."""


class SpoolFull(SpoolError):
    """An append would exceed the spool's size bound, or the disk is full. Nothing was written."""


class NoSuchRecord(SpoolError, KeyError):
    """A reference to no record the spool holds (acknowledged and reclaimed meanwhile)."""


@dataclass(slots=True)
class SpoolConfig:
    directory: str
    max_bytes: int = 64 << 20
    fsync: str = "batch"
    segment_bytes: int = 0  # 0: max_bytes / 16, between 64 KiB and 4 MiB
    max_record: int = DEFAULT_MAX_SIZE  # largest record (envelope payload) accepted, bytes
    sync_interval: float = 1.0  # batch: done marks are fsynced at most this late (the caller runs sync())
    # Acknowledged records kept on disk, newest first, a whole segment at a time: a fully done segment
    # is deleted only once at least this many records follow it. What they tell survives a restart (the
    # inbound spool: ids delivered lately, the receiver's dedup memory). Kept segments count against
    # max_bytes; an append that would not fit deletes the oldest of them first (kept_evicted).
    keep_done: int = 0

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise SpoolError(f"spool fsync must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}")
        if not self.segment_bytes:
            self.segment_bytes = min(4 << 20, max(64 << 10, self.max_bytes // 16))
        if self.max_bytes < 2 * self.segment_bytes:
            raise SpoolError(f"spool max_bytes ({self.max_bytes}) must be at least twice the segment size "
                             f"({self.segment_bytes}): space comes back a whole segment at a time")


class _Segment:
    """One segment file, its done file and the index of its records (8 bytes + 1 flag per record)."""

    __slots__ = ("number", "path", "done_path", "fd", "done_fd", "offsets", "lengths", "done", "ndone", "size",
                 "done_size")

    def __init__(self, number: int, directory: Path):
        self.number = number
        self.path = directory / f"{number:016d}{SEGMENT_SUFFIX}"
        self.done_path = directory / f"{number:016d}{DONE_SUFFIX}"
        self.fd = -1
        self.done_fd = -1
        self.offsets = array("I")  # byte offset of each record
        self.lengths = array("I")  # its length, prefix included
        self.done = bytearray()  # 1 = acknowledged
        self.ndone = 0
        self.size = 0  # bytes of the segment file that hold records (a torn tail is cut off or ignored)
        self.done_size = 0

    @property
    def count(self) -> int:
        return len(self.offsets)

    def close(self) -> None:
        for fd in (self.fd, self.done_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.done_fd = -1


def encode_record(env: Envelope, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """The envelope as a spool record: its map with a trailing ``crc`` entry (see the module doc).

    Raises EnvelopeError (MalformedEnvelope, OversizeEnvelope) for what could not be decoded back.
    """
    frame = env.encode(max_size=max_size - TRAILER_LEN)
    head = frame[HEADER_LEN]
    if not 0x80 <= head < 0x8F:  # fixmap of at most 14 entries, so one more still fits in a fixmap
        raise SpoolError("an envelope with more than 14 fields cannot be spooled")
    # Put together in one copy (a record may be ~1 MiB: slicing and adding it piece by piece held
    # three more copies of it at once, bench/hostile.py's peak RSS), the CRC computed piecewise.
    first = bytes((head + 1,))
    rest = memoryview(frame)[HEADER_LEN + 1:]
    crc = zlib.crc32(CRC_MARK, zlib.crc32(rest, zlib.crc32(first)))
    return b"".join((HEADER.pack(1 + len(rest) + TRAILER_LEN), first, rest, CRC_MARK, _CRC.pack(crc)))


def _check_record(buf: bytes | memoryview, pos: int, end: int, max_size: int) -> int:
    """The length of the record at ``pos`` (prefix included) if its length and CRC check out, else 0."""
    if end - pos < HEADER_LEN + 1 + len(START_MARK) + TRAILER_LEN:
        return 0
    (n,) = HEADER.unpack_from(buf, pos)
    stop = pos + HEADER_LEN + n
    if n > max_size or stop > end or n < 1 + len(START_MARK) + TRAILER_LEN:
        return 0
    if buf[stop - TRAILER_LEN:stop - 4] != CRC_MARK:
        return 0
    if zlib.crc32(buf[pos + HEADER_LEN:stop - 4]) != _CRC.unpack_from(buf, stop - 4)[0]:
        return 0
    return HEADER_LEN + n


def _resync(buf: bytes, pos: int, end: int, max_size: int) -> int:
    """The offset of the next good record after ``pos``, or ``end`` if there is none."""
    start = pos + 1
    while True:
        hit = buf.find(START_MARK, start + HEADER_LEN + 1, end)
        if hit < 0:
            return end
        candidate = hit - 1 - HEADER_LEN
        if 0x81 <= buf[hit - 1] <= 0x8F and _check_record(buf, candidate, end, max_size):
            return candidate
        start = candidate + 1


def read_records(buf: bytes, max_size: int, what: str) -> tuple[list[tuple[int, int, Envelope]], int, dict]:
    """Parse a segment or done file: ([(offset, length, envelope)], end of the last good record, damage).

    Damaged regions are skipped as the module doc describes, and logged with ``what`` (the file).
    """
    records = []
    damage = {"corrupt_regions": 0, "corrupt_bytes": 0, "torn_tail_bytes": 0}
    pos = 0
    good_end = 0
    end = len(buf)
    while pos < end:
        n = _check_record(buf, pos, end, max_size)
        env = None
        if n:
            try:
                env = decode_payload(buf[pos + HEADER_LEN:pos + n])
            except EnvelopeError as exc:  # CRC fine, yet not a valid envelope: written by someone else
                log.error("%s: record at offset %d is not a valid envelope (%s); skipped", what, pos, exc)
                damage["corrupt_regions"] += 1
                damage["corrupt_bytes"] += n
                pos += n
                continue
        if env is not None:
            env.extra.pop("crc", None)
            records.append((pos, n, env))
            pos += n
            good_end = pos
            continue
        nxt = _resync(buf, pos, end, max_size)
        if nxt >= end:
            damage["torn_tail_bytes"] += end - pos
            log.warning("%s: %d bytes at offset %d do not hold a whole record (torn tail, e.g. power loss); "
                        "ignored", what, end - pos, pos)
            break
        damage["corrupt_regions"] += 1
        damage["corrupt_bytes"] += nxt - pos
        log.error("%s: %d corrupt bytes at offset %d skipped; reading resumes at offset %d", what, nxt - pos,
                  pos, nxt)
        pos = nxt
    return records, good_end, damage


class Spool:
    """A bounded, crash-safe FIFO of envelopes with per-record acknowledgement. Synchronous.

    ``append`` returns a reference per record; ``mark_done(ref)`` then ``commit()`` record the
    acknowledgement; ``undone()`` lists what is still to send, oldest first (after a restart,
    everything not marked done). Not thread-safe: one event loop owns it.
    """

    def __init__(self, config: SpoolConfig, *, node_id: bytes = bytes(32)):
        self.config = config
        self.node_id = node_id
        self.directory = Path(config.directory)
        self._segments: dict[int, _Segment] = {}  # number -> segment, in ascending order
        self._active: _Segment | None = None
        self._marks: dict[int, list[int]] = {}  # segment number -> offsets marked done, not yet written
        self._unsynced_done: set[int] = set()  # segment numbers whose done file has unsynced writes
        self.bytes = 0  # on disk: segments + done files
        self.undone_count = 0
        self.stats: dict[str, int] = dict.fromkeys((
            "appended", "acked", "refused_full", "disk_full", "corrupt_regions", "corrupt_bytes",
            "torn_tail_bytes", "segments_deleted", "fsyncs", "unknown_marks", "kept_evicted",
        ), 0)
        self._closed = False
        self._open()

    # -- opening -------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.directory}: {exc.strerror}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise SpoolError(f"spool directory {self.directory} is not writable by this user")
        numbers = []
        for entry in self.directory.iterdir():
            stem, suffix = entry.stem, entry.suffix
            if suffix == SEGMENT_SUFFIX and stem.isdigit():
                numbers.append(int(stem))
            elif suffix == DONE_SUFFIX and stem.isdigit():
                if not (self.directory / f"{stem}{SEGMENT_SUFFIX}").exists():
                    entry.unlink()  # its segment was deleted; the crash came between the two unlinks
            elif suffix == ".tmp":
                entry.unlink()
        numbers.sort()
        for i, number in enumerate(numbers):
            seg = self._load(number, last=i == len(numbers) - 1)
            self._segments[number] = seg
            self.bytes += seg.size + seg.done_size
            self.undone_count += seg.count - seg.ndone
        if numbers:
            self._active = self._segments[numbers[-1]]
            self._reclaim()
        else:
            self._active = self._new_segment(1)
        if self.stats["corrupt_regions"] or self.stats["torn_tail_bytes"]:
            log.warning("spool %s opened with damage: %d corrupt region(s), %d corrupt bytes, %d torn tail bytes",
                        self.directory, self.stats["corrupt_regions"], self.stats["corrupt_bytes"],
                        self.stats["torn_tail_bytes"])

    def _read_file(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise SpoolError(f"cannot read spool file {path}: {exc.strerror}") from None

    def _load(self, number: int, *, last: bool) -> _Segment:
        seg = _Segment(number, self.directory)
        max_size = self.config.max_record
        data = self._read_file(seg.path)
        records, good_end, damage = read_records(data, max_size, str(seg.path))
        for key, value in damage.items():
            self.stats[key] += value
        offsets, lengths = seg.offsets, seg.lengths
        for offset, n, _ in records:
            offsets.append(offset)
            lengths.append(n)
        del records  # the envelopes are read again when sent: the index is all that stays in memory
        seg.done = bytearray(len(offsets))
        seg.size = good_end if last else len(data)
        done_data = self._read_file(seg.done_path)
        done_records, done_end, damage = read_records(done_data, max_size, str(seg.done_path))
        for key, value in damage.items():
            self.stats[key] += value
        for _, _, env in done_records:
            if env.type != DONE_TYPE or type(env.body) is not list:
                continue
            for off in env.body:
                i = bisect.bisect_left(offsets, off) if type(off) is int else len(offsets)
                if i < len(offsets) and offsets[i] == off and not seg.done[i]:
                    seg.done[i] = 1
                    seg.ndone += 1
        seg.done_size = done_end
        if last:
            try:
                seg.fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                if len(data) > good_end:
                    os.ftruncate(seg.fd, good_end)  # cut a torn tail: new records follow the last good one
                seg.done_fd = os.open(seg.done_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                if len(done_data) > done_end:
                    os.ftruncate(seg.done_fd, done_end)
            except OSError as exc:
                raise SpoolError(f"cannot open spool segment {seg.path}: {exc.strerror}") from None
        return seg

    def _new_segment(self, number: int) -> _Segment:
        seg = _Segment(number, self.directory)
        try:
            seg.fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            seg.done_fd = os.open(seg.done_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot create spool segment {seg.path}: {exc.strerror}") from None
        if self.config.fsync != "never":
            self._sync_dir()  # the new names must survive a power loss too
        self._segments[number] = seg
        return seg

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- appending -----------------------------------------------------------------------------------

    def append(self, envelopes: Iterable[Envelope]) -> list[int]:
        """Write envelopes as one burst; return a reference per envelope.

        All or nothing: raises SpoolFull (size bound or disk full: nothing written), EnvelopeError
        (an envelope that could not be read back: nothing written) or SpoolError (IO error).
        With fsync "always" or "batch" the records are on stable storage when this returns.
        """
        if self._closed:
            raise SpoolError("spool is closed")
        max_record = self.config.max_record
        records = [encode_record(env, max_size=max_record) for env in envelopes]
        if not records:
            return []
        total = sum(map(len, records))
        if self.bytes + total > self.config.max_bytes and self.config.keep_done:
            self._evict_kept(self.bytes + total - self.config.max_bytes)
        if self.bytes + total > self.config.max_bytes:
            self.stats["refused_full"] += len(records)
            raise SpoolFull(f"spool {self.directory} is full: {self.bytes} of {self.config.max_bytes} bytes used, "
                            f"{total} more needed; it drains as destinations acknowledge")
        seg = self._active
        if seg.count and seg.size + total > self.config.segment_bytes:
            seg = self._rotate()
        always = self.config.fsync == "always"
        if always and len(records) > 1:
            refs = []
            for record in records:
                refs += self._write(seg, [record], True)
            return refs
        return self._write(seg, records, self.config.fsync == "batch" or always)

    def _write(self, seg: _Segment, records: list[bytes], sync: bool) -> list[int]:
        data = records[0] if len(records) == 1 else b"".join(records)
        start = seg.size
        try:
            view = memoryview(data)
            while view:
                written = os.write(seg.fd, view)
                view = view[written:]
            if sync:
                os.fdatasync(seg.fd)
                self.stats["fsyncs"] += 1
        except OSError as exc:
            try:
                os.ftruncate(seg.fd, start)  # leave no partial record behind
            except OSError:
                pass
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.stats["disk_full"] += len(records)
                raise SpoolFull(f"disk full while writing spool {seg.path}: nothing was accepted") from None
            raise SpoolError(f"cannot write spool {seg.path}: {exc.strerror}") from None
        base = (seg.number << _REF_SHIFT) + seg.count
        offset = start
        for record in records:
            seg.offsets.append(offset)
            seg.lengths.append(len(record))
            offset += len(record)
        seg.done.extend(bytes(len(records)))
        seg.size = offset
        self.bytes += len(data)
        self.undone_count += len(records)
        self.stats["appended"] += len(records)
        return list(range(base, base + len(records)))

    def _rotate(self) -> _Segment:
        old = self._active
        if self.config.fsync != "never":
            os.fdatasync(old.fd)  # seal it: everything in a non-active segment is on disk
            self.stats["fsyncs"] += 1
        old.close()
        self._active = self._new_segment(old.number + 1)
        self._reclaim()
        return self._active

    # -- reading ------------------------------------------------------------------------------------

    def read(self, ref: int) -> Envelope:
        """The envelope a reference names (read back from its segment)."""
        seg, i = self._locate(ref)
        if seg is None:
            raise NoSuchRecord(f"no spool record {ref:#x}")
        try:
            if seg.fd < 0:
                seg.fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(seg.fd, seg.lengths[i], seg.offsets[i])
        except OSError as exc:
            raise SpoolError(f"cannot read spool {seg.path}: {exc.strerror}") from None
        if not _check_record(data, 0, len(data), self.config.max_record):
            raise SpoolError(f"spool record at {seg.path}:{seg.offsets[i]} changed on disk since it was written")
        env = decode_payload(data[HEADER_LEN:])
        env.extra.pop("crc", None)
        return env

    def records(self) -> Iterator[tuple[int, Envelope, bool]]:
        """(reference, envelope, done) of every record on disk, done ones included, oldest first."""
        for seg in list(self._segments.values()):
            for i in range(seg.count):
                ref = (seg.number << _REF_SHIFT) + i
                yield ref, self.read(ref), bool(seg.done[i])

    def undone(self) -> Iterator[tuple[int, Envelope]]:
        """(reference, envelope) of every record not yet done, oldest first."""
        for seg in list(self._segments.values()):
            for i in range(seg.count):
                if not seg.done[i]:
                    yield (seg.number << _REF_SHIFT) + i, self.read((seg.number << _REF_SHIFT) + i)

    def _locate(self, ref: int) -> tuple[_Segment | None, int]:
        seg = self._segments.get(ref >> _REF_SHIFT)
        i = ref & ((1 << _REF_SHIFT) - 1)
        if seg is None or i >= seg.count:
            return None, 0
        return seg, i

    # -- acknowledging ------------------------------------------------------------------------------

    def mark_done(self, ref: int) -> bool:
        """Note that a record was acknowledged; :meth:`commit` writes the marks. False if unknown or done."""
        seg, i = self._locate(ref)
        if seg is None or seg.done[i]:
            self.stats["unknown_marks"] += 1
            return False
        seg.done[i] = 1
        seg.ndone += 1
        self.undone_count -= 1
        self.stats["acked"] += 1
        self._marks.setdefault(seg.number, []).append(seg.offsets[i])
        return True

    def commit(self) -> None:
        """Write the done marks noted since the last commit, and delete segments now fully done."""
        marks, self._marks = self._marks, {}
        for number, offsets in marks.items():
            seg = self._segments.get(number)
            if seg is None:
                continue
            if seg.ndone == seg.count and seg is not self._active and not self.config.keep_done:
                self._delete(seg)  # no need to record marks for a segment about to vanish
                continue
            self._write_marks(seg, offsets)
        if self._active.count and self._active.ndone == self._active.count \
                and self._active.size >= self.config.segment_bytes // 2:
            self._rotate()  # a large, fully acknowledged active segment: start afresh and reclaim it
        elif marks and self.config.keep_done:
            self._reclaim()

    def _reclaim(self) -> None:
        """Delete every fully done segment but the active one, except those ``keep_done`` keeps."""
        keep = self.config.keep_done
        newer = 0
        for seg in sorted(self._segments.values(), key=lambda s: s.number, reverse=True):
            if seg is not self._active and seg.ndone == seg.count and newer >= keep:
                self._delete(seg)
            newer += seg.count

    def _evict_kept(self, need: int) -> None:
        """Free at least ``need`` bytes by deleting kept (fully done) segments, oldest first, if there are any."""
        for seg in sorted(self._segments.values(), key=lambda s: s.number):
            if need <= 0:
                return
            if seg is not self._active and seg.ndone == seg.count:
                need -= seg.size + seg.done_size
                self._delete(seg)
                self.stats["kept_evicted"] += 1

    def _write_marks(self, seg: _Segment, offsets: list[int]) -> None:
        try:
            if seg.done_fd < 0:
                seg.done_fd = os.open(seg.done_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            for i in range(0, len(offsets), MAX_DONE_PER_RECORD):
                env = Envelope(os.urandom(16), self.node_id, DONE_TYPE, offsets[i:i + MAX_DONE_PER_RECORD])
                record = encode_record(env, max_size=self.config.max_record)
                os.write(seg.done_fd, record)
                seg.done_size += len(record)
                self.bytes += len(record)
            if self.config.fsync == "always":
                os.fdatasync(seg.done_fd)
                self.stats["fsyncs"] += 1
            elif self.config.fsync == "batch":
                self._unsynced_done.add(seg.number)
        except OSError as exc:
            # Losing a done mark only re-sends the message after a restart (the receiver deduplicates it).
            log.warning("cannot record acknowledgements in %s: %s", seg.done_path, exc.strerror)

    def sync(self) -> None:
        """fsync done files written since the last sync (policy "batch"; call every ``sync_interval``)."""
        numbers, self._unsynced_done = self._unsynced_done, set()
        for number in numbers:
            seg = self._segments.get(number)
            if seg is not None and seg.done_fd >= 0:
                try:
                    os.fdatasync(seg.done_fd)
                    self.stats["fsyncs"] += 1
                except OSError as exc:
                    log.warning("cannot fsync %s: %s", seg.done_path, exc.strerror)

    @property
    def sync_pending(self) -> bool:
        return bool(self._unsynced_done)

    def _delete(self, seg: _Segment) -> None:
        seg.close()
        for path in (seg.path, seg.done_path):  # segment first: a done file alone is removed on open
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        if self._segments.pop(seg.number, None) is not None:
            self.bytes -= seg.size + seg.done_size
        self.stats["segments_deleted"] += 1

    # -- the rest ---------------------------------------------------------------------------------------

    @property
    def segments(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        """Write pending marks, sync (unless "never") and close every file. Idempotent."""
        if self._closed:
            return
        self.commit()
        if self.config.fsync != "never":
            self.sync()
        self._closed = True
        for seg in self._segments.values():
            seg.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
