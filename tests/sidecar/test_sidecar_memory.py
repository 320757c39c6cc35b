"""The sidecar gives heap memory back: after start, periodically, and soon after a burst."""

from __future__ import annotations

import asyncio

import pytest

from zmqagents.sidecar import memory


@pytest.mark.skipif(not memory.release(), reason="no malloc_trim in this C library")
def test_a_burst_is_trimmed_at_the_next_check_not_a_minute_later(arun):
    async def main():
        trimmer = memory.Trimmer(interval=3600, check=0.05, growth=4 << 20)
        trimmer.start()
        try:
            assert trimmer.trims == 1  # at start
            await asyncio.sleep(0.2)
            assert trimmer.trims == 1  # nothing grew: no trim
            burst = [bytearray(64 << 10) for _ in range(256)]  # 16 MiB, touched, from the heap
            await asyncio.sleep(0.2)
            assert trimmer.trims >= 2
            before = memory.resident()
            del burst
            await asyncio.sleep(0.2)
            memory.release()
            assert memory.resident() < before - (8 << 20)  # given back
        finally:
            trimmer.stop()

    arun(main())


def test_large_blocks_are_their_own_mappings():
    assert memory.fix_mmap_threshold() in (True, False)  # False only without mallopt
    if memory.fix_mmap_threshold():
        before = memory.resident()
        block = bytearray(8 << 20)
        assert memory.resident() >= before + (7 << 20)
        del block
        assert memory.resident() < before + (1 << 20)  # unmapped when freed, no trim needed



@pytest.mark.skipif(not memory.release(), reason="no malloc_trim in this C library")
def test_what_a_burst_frees_after_the_last_trim_is_given_back_at_the_next_check(arun, monkeypatch):
    """The resident size does not grow when a burst ends, so growth alone left what it freed resident for
    a minute; a rise of what malloc holds free (from its lowest since the last trim) triggers a trim.
    malloc's reading is played here: whether freeing makes holes or shrinks the heap depends on the layout."""
    held = [50 << 20]
    monkeypatch.setattr(memory, "free_held", lambda: held[0])

    async def main():
        trimmer = memory.Trimmer(interval=3600, check=0.02, growth=1 << 40, freed=1 << 20)  # growth out of reach
        trimmer.start()
        try:
            assert trimmer.trims == 1  # at start
            held[0] += 1 << 19  # less than `freed` more than at the trim: nothing to give back yet
            await asyncio.sleep(0.1)
            assert trimmer.trims == 1
            held[0] -= 8 << 20  # a burst takes free memory (and more from the OS: the RSS grows)...
            await asyncio.sleep(0.1)
            assert trimmer.trims == 1
            held[0] += 8 << 20  # ...and frees it: 8 MiB above the low point, trimmed at the next check
            await asyncio.sleep(0.1)
            assert trimmer.trims == 2
            await asyncio.sleep(0.1)
            assert trimmer.trims == 2  # the low point starts again from the trim
        finally:
            trimmer.stop()

    arun(main())

