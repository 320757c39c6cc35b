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


@pytest.mark.skipif(not memory.release() or memory.free_held() < 0, reason="no malloc_trim or mallinfo2 here")
def test_what_a_burst_frees_after_the_last_trim_is_given_back_at_the_next_check(arun):
    async def main():
        # growth out of reach: only what is freed can trigger a trim
        trimmer = memory.Trimmer(interval=3600, check=0.05, growth=1 << 40, freed=1 << 20)
        burst = [bytearray(64 << 10) for _ in range(256)]  # 16 MiB of heap, touched...
        pins = [bytearray(600) for _ in range(256)]  # ...with a small block after each, so freeing the
        # large ones leaves holes in the heap that free() cannot give back by itself (only a trim can)
        trimmer.start()
        try:
            await asyncio.sleep(0.2)
            trims = trimmer.trims
            before = memory.resident()
            del burst[:]
            await asyncio.sleep(0.3)
            assert trimmer.trims > trims
            assert memory.resident() < before - (8 << 20)  # given back without anyone calling release()
        finally:
            trimmer.stop()
            del pins

    arun(main())
