"""Fleet chaos, short: sidecars in network namespaces lose a receiver, a link and a relay mid-stream.

One round of ``bench/chaos.py`` (the topology and the accounting are described there; the
namespaces, links and cuts come from tools/netlab.py): an application streams numbered messages
through sidecar A's local API to sidecar B (direct) and to sidecar C (outbound-only, behind a relay),
while B's sidecar is killed with SIGKILL and restarted from its spool after 16 s (long enough for A
to declare it dead and forget it with messages in flight, which the test checks: the path of issue
12's stall), the a-b link drops everything for 3 s, and the relay is killed and restarted. Every message A accepted must reach its application,
once (a copy delivered by B both before its kill and after its restart is allowed, and only that),
and each stream must flow again after each fault. ``python bench/chaos.py --rounds N`` repeats
this with drawn timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tools") not in sys.path:
    sys.path.append(str(ROOT / "tools"))

import netlab  # noqa: E402  (tools/netlab.py)

pytestmark = pytest.mark.slow


def _chaos():
    spec = importlib.util.spec_from_file_location("bench_chaos", ROOT / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(150)
def test_every_accepted_message_arrives_once_through_a_kill_9_a_cut_link_and_a_relay_kill():
    why = netlab.unavailable()
    if why:
        pytest.skip(why)
    chaos = _chaos()
    plan = chaos.Plan(seed=0, rate=100.0, faults=[chaos.Fault("kill_b", 1.5, 16.0), chaos.Fault("cut_ab", 0.0, 3.0),
                                                   chaos.Fault("kill_relay", 2.0, 2.5)],
                      gap=1.0, tail=2.0, settle=40.0)
    work = Path(tempfile.mkdtemp(prefix="zqchaos-", dir="/tmp"))  # short: unix socket paths are limited
    try:
        r = chaos.run_round(plan, work)
        brief = json.dumps({k: r[k] for k in ("streams", "faults", "counters", "alive_at_end")}, indent=1)

        # The faults happened, mid-stream, for real.
        assert [f["kind"] for f in r["faults"]] == ["kill_b", "kill_relay", "cut_ab"], brief
        assert r["kill_exit_status"] == {"b": [-9], "relay": [-9]}, brief
        assert r["cut_dropped_packets"] > 0, "the cut dropped nothing"
        for fault in r["faults"]:
            stream = r["streams"][fault["stream"]]
            assert 0 < fault["delivered_before"] < stream["accepted"], f"{fault['kind']} was not mid-stream\n{brief}"
        # A gave B up while it was down (membership declared it dead; what was in flight failed back to the
        # outbox): the restart then races the old stream's frames against the new one.
        assert r["faults"][0]["a_gave_up"] > 0, brief

        # Every accepted message reached its application, once; every stream recovered from every fault.
        for dst, stream in r["streams"].items():
            assert stream["sent"] == stream["accepted"] > 0, f"{dst}: A refused messages\n{brief}"
            assert stream["missing"] == 0 and not stream["stalled"], f"{dst}: {stream['missing']} missing\n{brief}"
            assert stream["unexpected_duplicates"] == 0, f"{dst}: duplicates\n{brief}"
        assert r["refused"] == 0 and r["unanswered"] == 0
        assert r["streams"]["c"]["expected_duplicates"] == 0  # C never restarted: no duplicate is allowed there
        for fault in r["faults"]:
            assert fault["recovery_s"] is not None, f"{fault['kind']}: the stream never flowed again\n{brief}"
        assert all(r["alive_at_end"].values()), brief
        assert r["counters"]["a"]["outbox"]["queued"] == 0, brief  # A's outbox got every acknowledgement
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Nothing is left behind: every process the round started is gone, and so are its namespaces.
    for pid in r["pids"]:
        assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} still exists"
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert f"zq{os.getpid()}-" not in left, left
