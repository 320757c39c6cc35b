"""The swarm's JSON report, and the merge of several (``--procs``, ``zmqagents swarm collect``).

A report holds its figures twice: the summary a reader wants (``join_s_p99``, ``request_ms_p99``,
``delivery``, ``rss_mb_per_node`` ...) and, under ``raw``, what those were computed from: counters,
sums, and the distributions as bounded histograms (histogram.py). A merge adds the raw parts and
computes the summary again from the sum, so a merged p99 is the p99 of every sample of every pod
(to one bucket, ~4.4 %), and a merged ratio is the ratio of the sums — never an average of averages.
How each figure is made is in every report, under ``how`` (:data:`HOW`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import InvalidArgument
from .histogram import Histogram

FORMAT = 1  # report["format"]: a merge refuses reports of another format

HOW = {
    "rss_mb_per_node": "(VmRSS once every node joined and --settle passed, idle, before the workload) minus "
                       "(VmRSS of the same process with its first node started), divided by the other nodes "
                       "(nodes - 1): the memory an extra node costs in-process, both ends of its connections "
                       "to other in-process nodes included. Merged: the sums divided.",
    "rss_mb_per_node_end": "as rss_mb_per_node, at the end of the workload",
    "join_s": "per node: node.join(bootstrap) from its first call until it returned True (the join lookup "
              "answered), up to 3 tries (join_retries counts the extra ones); joins run --join-concurrency at "
              "a time (in all processes together); a process's first node joins through --mesh (the founder of "
              "an own mesh has no join), the others through that first node",
    "request_ms": "requests workload: node.request() to a node drawn from the caller's routing table, until "
                  "its reply; task_ms: Agents.request() (provider found through the DHT) until the task is "
                  "done; publish_ms: publication to receipt (wall clocks: across hosts, their skew adds in)",
    "delivery": "requests: replies / requests sent (timeouts and unreachable peers count against); tasks: "
                "completed / tasks; publish: publications of this process received by its other live nodes / "
                "publications x (those nodes at publication time)",
    "detect_s": "per (victim, holder): the holder's first 'failed' event about the victim minus the kill; "
                "holders: this process's surviving nodes whose membership held the victim at the kill",
    "cpu_percent_per_node": "process CPU (every thread, libzmq's included) over the workload window / window / nodes",
    "msgs_per_node_per_s": "transport frames in + out over the workload window, per node per second "
                           "(bytes_per_node_per_s: their envelope bytes; CURVE and ZMTP framing excluded)",
    "links_per_node": "open connections per node once joined (its DEALERs + inbound links it can answer over; "
                      "an inbound link is counted until a send finds it closed)",
    "dealers_per_node": "outgoing connections (DEALERs) per node once joined; every connection between two "
                        "nodes has a DEALER at one end, so within a swarm this is connections per node "
                        "(dealers_per_node_end: per live node, at the end of the workload)",
    "dealers_idle_closed": "outgoing connections closed after --link-idle seconds without traffic, all nodes, "
                           "whole run",
    "fds_per_node_end": "as fds_per_node, at the end of the workload (fds_end: the process's open fds then)",
    "nodes": "nodes started (nodes_planned: asked for; a process out of file descriptors starts fewer, and "
             "says so in start_failed and on stderr)",
}

HISTOGRAMS = ("join_s", "request_ms", "task_ms", "publish_ms", "detect_s")


@dataclass
class Tally:
    """What a run counts: named counters and distributions; the raw part of a report."""

    counts: dict[str, float] = field(default_factory=dict)
    hists: dict[str, Histogram] = field(default_factory=lambda: {name: Histogram() for name in HISTOGRAMS})

    def add(self, name: str, amount: float = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + amount

    def get(self, name: str) -> float:
        return self.counts.get(name, 0)

    def observe(self, name: str, value: float) -> None:
        self.hists[name].add(value)

    def merge(self, other: "Tally") -> None:
        for name, value in other.counts.items():
            self.add(name, value)
        for name, hist in other.hists.items():
            self.hists.setdefault(name, Histogram()).merge(hist)

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())),
                "hists": {name: h.to_json() for name, h in self.hists.items() if h.count}}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Tally":
        if not isinstance(data, dict) or not isinstance(data.get("counts"), dict) or not isinstance(data.get("hists"), dict):
            raise InvalidArgument(f"{where}: no raw counts and histograms (not a zmqagents swarm report?)")
        tally = cls()
        for name, value in data["counts"].items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidArgument(f"{where}: count {name!r} is not a number")
            tally.counts[str(name)] = value
        for name, hist in data["hists"].items():
            tally.hists[str(name)] = Histogram.from_json(hist, f"{where}: histogram {name!r}")
        return tally


def _ratio(num: float, den: float, digits: int = 4) -> float | None:
    return round(num / den, digits) if den else None


def summary(tally: Tally) -> dict[str, Any]:
    """The figures a reader wants, all computed from ``tally`` (so a merged tally gives merged figures)."""
    c = tally.get
    h = tally.hists
    out: dict[str, Any] = {
        "nodes": int(c("nodes")),
        "nodes_planned": int(c("nodes_planned")),
        "procs": int(c("procs")),
        "joined": int(c("joined")),
        "join_failed": int(c("join_failed")),
        "join_retries": int(c("join_retries")),
    }
    out.update(h["join_s"].summary("join_s"))
    for name in ("request_ms", "task_ms", "publish_ms"):
        if h[name].count or c(name.split("_")[0] + "s_sent"):
            out.update(h[name].summary(name))
    sent = c("requests_sent") + c("tasks_sent")
    ok = c("requests_ok") + c("tasks_ok")
    if c("publications"):
        out["delivery"] = _ratio(c("publications_received"), c("publications_expected"))
    else:
        out["delivery"] = _ratio(ok, sent)
    for key in ("requests_sent", "requests_ok", "requests_failed", "requests_no_handler", "tasks_sent", "tasks_ok",
                "tasks_failed", "publications", "publications_expected", "publications_received",
                "publications_received_foreign", "skipped_busy"):
        if c(key):
            out[key] = int(c(key))
    if c("killed") or c("paused"):
        out.update({"killed": int(c("killed")), "paused": int(c("paused")),
                    "holders": int(c("detect_pairs")), "undetected": int(c("detect_pairs") - h["detect_s"].count),
                    "false_positives": int(c("false_positives")),
                    "paused_declared_failed": int(c("paused_declared_failed"))})
        out.update(h["detect_s"].summary("detect_s"))
    if c("start_failed"):
        out["start_failed"] = int(c("start_failed"))
    drops = {name[len("drop."):]: int(v) for name, v in sorted(tally.counts.items()) if name.startswith("drop.") and v}
    out["transport_drops"] = drops or None
    extra = c("nodes") - c("procs")  # every process's first node is its baseline
    # window_s is summed over the processes (each ran its own, all of about the same length): per
    # process, it is the mean; a rate per node divides by that and by every process's nodes
    window = c("window_s") / c("procs") if c("procs") else 0.0
    out.update({
        "rss_mb_per_node": _ratio(c("rss_mb_idle") - c("rss_mb_one_node"), extra, 3),
        "rss_mb_per_node_end": _ratio(c("rss_mb_end") - c("rss_mb_one_node"), extra, 3),
        "rss_mb": round(c("rss_mb_end"), 1),
        "cpu_percent_per_node": _ratio(100 * c("cpu_s_window"), window * c("nodes"), 4) if window else None,
        "msgs_per_node_per_s": _ratio(c("frames_window"), window * c("nodes"), 2) if window else None,
        "bytes_per_node_per_s": _ratio(c("bytes_window"), window * c("nodes"), 1) if window else None,
        "links_per_node": _ratio(c("links"), c("joined_or_seed"), 2),
        "dealers_per_node": _ratio(c("dealers"), c("joined_or_seed"), 2),
        "dealers_per_node_end": _ratio(c("dealers_end"), c("live_end"), 2),
        "fds": int(c("fds")),
        "fds_per_node": _ratio(c("fds") - c("fds_one_node"), extra, 2),
        "dealers_idle_closed": int(c("dealers_idle_closed")),
        "fds_end": int(c("fds_end")),
        "fds_per_node_end": _ratio(c("fds_end") - c("fds_one_node"), extra, 2),
        "fd_limit": int(c("fd_limit")),
        "window_s": round(window, 2) if window else None,
        "join_all_s": round(c("join_all_s") / c("procs"), 2) if c("procs") else None,
    })
    return out


def report(tally: Tally, params: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One process's report (or a merge): summary, then params, raw and how."""
    out = {"format": FORMAT, "report": "zmqagents swarm"}
    out.update(summary(tally))
    out.update(extra or {})
    out["params"] = params
    out["raw"] = tally.to_json()
    out["how"] = HOW
    return out


def merge(reports: Iterable[dict[str, Any]], *, sources: list[str] | None = None) -> dict[str, Any]:
    """One report from several: raw parts added, the summary computed from the sum."""
    total = Tally()
    params: list[Any] = []
    interrupted = []
    count = 0
    for i, rep in enumerate(reports):
        where = sources[i] if sources else f"report {i + 1}"
        if not isinstance(rep, dict) or rep.get("report") != "zmqagents swarm":
            raise InvalidArgument(f"{where}: not a zmqagents swarm report")
        if rep.get("format") != FORMAT:
            raise InvalidArgument(f"{where}: report format {rep.get('format')!r}, this version reads {FORMAT}")
        total.merge(Tally.from_json(rep.get("raw"), where))
        params.append(rep.get("params"))
        if rep.get("interrupted"):
            interrupted.append(where)
        count += 1
    if not count:
        raise InvalidArgument("no reports to merge")
    distinct = [p for i, p in enumerate(params) if p not in params[:i]]
    return report(total, distinct[0] if len(distinct) == 1 else {"differ": distinct},
                  {"reports": count, "interrupted": interrupted or None})


def read_reports(texts: Iterable[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Reports from (name, text) pairs: each text one JSON object, or one per line (pod logs may hold
    other lines: lines that are not JSON objects, and objects that are not swarm reports, are skipped;
    a line that starts like an object but does not parse is an error). Returns the reports and where
    each came from."""
    reports: list[dict[str, Any]] = []
    sources: list[str] = []
    for name, text in texts:
        stripped = text.strip()
        try:
            whole = json.loads(stripped) if stripped.startswith("{") else None
        except ValueError:
            whole = None
        if isinstance(whole, dict):
            reports.append(whole)
            sources.append(name)
            continue
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise InvalidArgument(f"{name}:{number}: a line that starts like JSON but is not") from None
            if isinstance(obj, dict) and obj.get("report") == "zmqagents swarm":
                reports.append(obj)
                sources.append(f"{name}:{number}")
    return reports, sources
