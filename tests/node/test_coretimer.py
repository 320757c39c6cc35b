"""CoreTimer: one loop timer at the earliest deadline of several cores (node.py and the agent runtime)."""

from __future__ import annotations

import asyncio
import time

from zmqagents.coretimer import CoreTimer


def test_fires_once_at_the_earliest_deadline_and_keeps_an_earlier_pending_one():
    async def main():
        fired = []
        timer = CoreTimer(time.monotonic, lambda: fired.append((time.monotonic(), timer.at)))
        t0 = time.monotonic()
        timer.arm([None, t0 + 0.2, t0 + 0.05])
        assert timer.at == t0 + 0.05
        timer.arm([t0 + 0.1])  # later than the pending one: kept as it is
        assert timer.at == t0 + 0.05
        timer.arm([None])  # nothing due: nothing changes
        await asyncio.sleep(0.15)
        assert len(fired) == 1 and fired[0][0] >= t0 + 0.05 and fired[0][1] is None  # cleared before fire()
        timer.arm([time.monotonic() + 0.2])
        timer.arm([time.monotonic() + 0.01])  # earlier: replaces it
        await asyncio.sleep(0.1)
        assert len(fired) == 2
        timer.arm([time.monotonic() + 0.01])
        timer.cancel()
        assert timer.at is None
        await asyncio.sleep(0.05)
        assert len(fired) == 2

    asyncio.run(main())
