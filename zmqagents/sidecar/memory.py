"""Give heap memory that Python and libzmq freed back to the operating system.

Starting a node allocates and frees a lot (imports, key derivation, socket setup). glibc keeps
freed chunks in the heap for reuse, and a long-running sidecar that is mostly idle would carry
them as resident memory for its whole life: measured at about 2 MB after start (bench/footprint.py).
``malloc_trim(0)`` returns them, in every malloc arena (the libzmq I/O thread has its own). It is
called once after start and then every ``TRIM_INTERVAL`` seconds, which costs well under a
millisecond each time on an idle sidecar.

A burst of large messages (a peer sending near-1 MiB envelopes) leaves more behind: after glibc
frees an mmapped block it raises its mmap threshold (up to 32 MiB), so later blocks of that size
come from the heap, and the heap is not trimmed by itself while less than twice that threshold
sits free at its top. So the sidecar fixes the threshold at ``MMAP_THRESHOLD`` (``mallopt``): a
large block is always its own mapping, returned when freed. And between trims the resident size
is looked at every ``CHECK_INTERVAL`` seconds (one read of /proc/self/statm) and trimmed at once
when it grew by ``GROWTH`` since the last trim.

Growth alone misses the end of a burst: what the burst freed after the last trim (its decoded
envelopes, libzmq's buffers in the I/O thread's arena) stayed resident until the next periodic trim,
a minute later (bench/hostile.py: 1.1-1.7 MB of the RSS read 5 s after the drain, given back by one
trim). So each check also asks glibc how much it holds free (``mallinfo2``, summed over its arenas)
and trims when that rose by ``FREED`` above the lowest seen since the last trim.

On a C library without ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os

log = logging.getLogger(__name__)

TRIM_INTERVAL = 60.0  # s between trims while the sidecar runs
CHECK_INTERVAL = 2.0  # s between looks at the resident size
GROWTH = 4 << 20  # bytes of growth since the last trim that trigger one
FREED = 1 << 20  # bytes newly held free by malloc (since the low point after the last trim) that trigger one
MMAP_THRESHOLD = 256 << 10  # blocks from this size up are mmapped (glibc's default start: 128 KiB)
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)

_trim = None  # the libc function once looked up; False when there is none


def release() -> bool:
    """Return freed heap memory to the OS now; False where the C library cannot."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim is False:
        return False
    _trim(0)
    return True


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Make every malloc block of ``size`` bytes or more its own mapping, for good; False where the
    C library has no ``mallopt``."""
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_mallinfo2 = None  # the libc function once looked up; False when there is none (glibc before 2.33, musl)


def free_held() -> int:
    """Bytes malloc holds free in all its arenas (free chunks and the heaps' tops), or -1 where unknown.
    A trim does not lower it (it hands the pages back but the chunks stay free): compare readings."""
    global _mallinfo2
    if _mallinfo2 is None:
        try:
            _mallinfo2 = ctypes.CDLL(None).mallinfo2
            _mallinfo2.restype = _MallInfo2
        except (OSError, AttributeError):
            _mallinfo2 = False
    if _mallinfo2 is False:
        return -1
    return int(_mallinfo2().fordblks)


def resident() -> int:
    """This process's resident size in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Trimmer:
    """Calls :func:`release` now, then every ``interval`` seconds, and whenever (looked at every ``check``
    seconds) the resident size grew by ``growth`` bytes since the last call or malloc holds ``freed``
    bytes more free than at its lowest since then."""

    def __init__(self, interval: float = TRIM_INTERVAL, check: float = CHECK_INTERVAL, growth: int = GROWTH,
                 freed: int = FREED):
        self.interval = interval
        self.check = check
        self.growth = growth
        self.freed = freed
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0  # loop time of the last trim
        self._after = 0  # resident bytes right after it
        self._free_low = 0  # the least malloc held free at a check since then (-1: unknown)
        self.trims = 0

    def start(self) -> None:
        fix_mmap_threshold()
        if self._trim():
            self._timer = asyncio.get_running_loop().call_later(self.check, self._tick)
        else:
            log.debug("malloc_trim is not available: freed heap memory stays with the process")

    def _trim(self) -> bool:
        if not release():
            return False
        self.trims += 1
        self._last = asyncio.get_running_loop().time()
        self._after = resident()
        self._free_low = free_held()
        return True

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        free = free_held()
        self._free_low = min(self._free_low, free)
        if (loop.time() - self._last >= self.interval or resident() - self._after >= self.growth
                or (free >= 0 and free - self._free_low >= self.freed)):
            self._trim()
        self._timer = loop.call_later(self.check, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
