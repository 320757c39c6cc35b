"""Give heap memory that Python and libzmq freed back to the operating system.

Starting a node allocates and frees a lot (imports, key derivation, socket setup). glibc keeps
freed chunks in the heap for reuse, and a long-running sidecar that is mostly idle would carry
them as resident memory for its whole life: measured at about 2 MB after start (bench/footprint.py).
``malloc_trim(0)`` returns them, in every malloc arena (the libzmq I/O thread has its own). It is
called once after start and then every ``TRIM_INTERVAL`` seconds, which costs well under a
millisecond each time on an idle sidecar.

On a C library without ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

TRIM_INTERVAL = 60.0  # s between trims while the sidecar runs

_trim = None  # the libc function once looked up; False when there is none


def release() -> bool:
    """Return freed heap memory to the OS now; False where the C library cannot."""
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim is False:
        return False
    _trim(0)
    return True


class Trimmer:
    """Calls :func:`release` now and then every ``interval`` seconds on the running loop."""

    def __init__(self, interval: float = TRIM_INTERVAL):
        self.interval = interval
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if release():
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
        else:
            log.debug("malloc_trim is not available: freed heap memory stays with the process")

    def _tick(self) -> None:
        release()
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
