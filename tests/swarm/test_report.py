"""Reports and their merge: sums added, distributions merged, the summary computed again."""

from __future__ import annotations

import json

import pytest

from zmqagents.errors import InvalidArgument
from zmqagents.swarm.report import Tally, merge, read_reports, report


def _pod(nodes: int, latencies: list[float], ok: int, sent: int, rss_one: float, rss_idle: float) -> dict:
    tally = Tally()
    for name, value in (("nodes", nodes), ("procs", 1), ("joined", nodes), ("requests_sent", sent),
                        ("requests_ok", ok), ("rss_mb_one_node", rss_one), ("rss_mb_idle", rss_idle),
                        ("rss_mb_end", rss_idle), ("window_s", 10.0), ("cpu_s_window", 1.0),
                        ("frames_window", 1000), ("bytes_window", 10_000)):
        tally.add(name, value)
    for v in latencies:
        tally.observe("request_ms", v)
    return report(tally, {"nodes": nodes})


def test_merge_adds_and_recomputes():
    a = _pod(10, [1.0] * 98 + [50.0, 60.0], ok=95, sent=100, rss_one=40, rss_idle=49)
    b = _pod(30, [2.0] * 100, ok=300, sent=300, rss_one=40, rss_idle=69)
    assert 50.0 <= a["request_ms_p99"] <= 50.0 * 2 ** (1 / 16) and a["delivery"] == 0.95
    m = merge([json.loads(json.dumps(a)), json.loads(json.dumps(b))])  # as they travel
    assert m["nodes"] == 40 and m["procs"] == 2 and m["reports"] == 2
    assert m["delivery"] == pytest.approx(395 / 400)  # the ratio of the sums, not the mean of 0.95 and 1.0
    # 200 samples: the 198th is 2.0 (its bucket edge), the 199th/200th 50 and 60: p99 of all is ~2, not 50
    assert m["request_ms_p99"] < 2.2
    assert m["request_ms_max"] == 60.0
    assert m["rss_mb_per_node"] == pytest.approx((9 + 29) / (40 - 2), abs=1e-3)  # each pod's first node is its baseline
    # both pods ran a 10 s window side by side: 2 CPU-s over 10 s for 40 nodes, 2,000 frames
    assert m["window_s"] == 10.0
    assert m["cpu_percent_per_node"] == pytest.approx(100 * 2.0 / (10.0 * 40), abs=1e-4)
    assert m["msgs_per_node_per_s"] == pytest.approx(2000 / (10.0 * 40), abs=0.01)
    assert m["params"] == {"differ": [{"nodes": 10}, {"nodes": 30}]}


def test_read_reports_from_logs_and_files():
    a = _pod(4, [1.0], 1, 1, 40, 41)
    log = "progress line\n{\"level\": \"info\"}\n" + json.dumps(a) + "\n"
    reports, sources = read_reports([("pod-0.log", log), ("pod-1.json", json.dumps(a, indent=2))])
    assert len(reports) == 2 and sources == ["pod-0.log:3", "pod-1.json"]
    with pytest.raises(InvalidArgument, match="pod-2.log:1"):
        read_reports([("pod-2.log", "{not json\n")])


@pytest.mark.parametrize("bad, says", [
    ([], "no reports"),
    ([{"report": "other"}], "not a zmqagents swarm report"),
    ([{"report": "zmqagents swarm", "format": 99}], "format 99"),
    ([{"report": "zmqagents swarm", "format": 1, "raw": {"counts": {"x": "1"}, "hists": {}}}], "not a number"),
    ([{"report": "zmqagents swarm", "format": 1}], "no raw counts"),
])
def test_merge_refuses_what_it_cannot_merge(bad, says):
    with pytest.raises(InvalidArgument, match=says):
        merge(bad)
