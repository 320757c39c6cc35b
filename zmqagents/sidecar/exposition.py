"""Metric families and the Prometheus text exposition format (version 0.0.4), without a library.

Why our own: the admin endpoint only ever writes a few dozen families that it builds at scrape
time from plain ``stats`` dicts. prometheus_client would do that too, but importing it costs a
sidecar about 5 MB of RSS: its ``exposition`` module imports ``ssl`` (OpenSSL's libssl and
libcrypto: ~4.7 MB mapped and touched on import, for an HTTPS server we never run), ``http.server``,
``wsgiref`` and ``urllib.request``. What we need is one page of code: the format is specified at
https://prometheus.io/docs/instrumenting/exposition_formats/ (text-based format), and every
Prometheus-compatible scraper reads it. ``tests/sidecar/test_exposition.py`` checks that this
module writes exactly what prometheus_client's ``generate_latest`` writes for the same families.

A family has a name, a help text, a type and samples ``(name, labels, value)``. Conventions kept
from prometheus_client (and OpenMetrics): a counter family is named without ``_total`` and its
samples are ``NAME_total``; an info family ``NAME`` is written as the gauge ``NAME_info`` = 1.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, NamedTuple, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

class Sample(NamedTuple):
    """One line of a family: as prometheus_client's Sample, a tuple whose fields also have names."""

    name: str
    labels: dict[str, str]
    value: float


class MetricFamily:
    """One metric family: its samples are added with :meth:`add_metric` (or ``value=`` for one)."""

    __slots__ = ("name", "documentation", "type", "labels", "samples")

    def __init__(self, name: str, documentation: str, type: str, labels: Sequence[str] = ()):
        self.name = name
        self.documentation = documentation
        self.type = type
        self.labels = tuple(labels)
        self.samples: list[Sample] = []

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        """A sample with ``labels`` (values in the order of the family's label names)."""
        suffix = "_total" if self.type == "counter" else ""
        self.samples.append(Sample(self.name + suffix, dict(zip(self.labels, labels)), value))


def counter(name: str, documentation: str, value: float | None = None, *,
            labels: Sequence[str] = ()) -> MetricFamily:
    """A counter family; ``name`` may end in ``_total`` (the samples do either way)."""
    if name.endswith("_total"):
        name = name[:-len("_total")]
    family = MetricFamily(name, documentation, "counter", labels)
    if value is not None:
        family.add_metric([], value)
    return family


def gauge(name: str, documentation: str, value: float | None = None, *,
          labels: Sequence[str] = ()) -> MetricFamily:
    family = MetricFamily(name, documentation, "gauge", labels)
    if value is not None:
        family.add_metric([], value)
    return family


def info(name: str, documentation: str, value: Mapping[str, str]) -> MetricFamily:
    """A constant 1 whose labels carry facts (an identity, a version): written as ``NAME_info``."""
    family = MetricFamily(name, documentation, "info")
    family.samples.append(Sample(name + "_info", dict(value), 1.0))
    return family


def histogram(name: str, documentation: str, buckets: Iterable[tuple[str, float]],
              sum_value: float) -> MetricFamily:
    """``buckets``: (upper bound as text, cumulative count), the last one ``"+Inf"`` (the count)."""
    family = MetricFamily(name, documentation, "histogram")
    count = 0.0
    for bound, n in buckets:
        family.samples.append(Sample(name + "_bucket", {"le": bound}, n))
        count = n
    family.samples.append(Sample(name + "_count", {}, count))
    family.samples.append(Sample(name + "_sum", {}, sum_value))
    return family


def render(families: Iterable[MetricFamily]) -> bytes:
    """The text format, UTF-8: ``# HELP`` and ``# TYPE`` lines, then one line per sample."""
    out: list[str] = []
    for family in families:
        name, kind = family.name, family.type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name, kind = name + "_info", "gauge"
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        for sample, labels, value in family.samples:
            if labels:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                out.append(f"{sample}{{{text}}} {format_value(value)}\n")
            else:
                out.append(f"{sample} {format_value(value)}\n")
    return "".join(out).encode("utf-8")


def format_value(value: float) -> str:
    """A sample value as Go's Prometheus libraries write it (``+Inf``, ``NaN``, ``1.5e+07``)."""
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python's repr
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape(value: str) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


# -- the process's own figures (what prometheus_client's ProcessCollector exports) ---------------

def process_families(proc: str = "/proc/self") -> list[MetricFamily]:
    """``process_*`` families from /proc (Linux): memory, CPU seconds, open and max file
    descriptors, start time. Empty where /proc cannot be read (another OS)."""
    try:
        with open(f"{proc}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            btime = next(float(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return []
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    # fields[0] is the state (field 3 of proc(5)): field N is fields[N - 3]
    utime, stime, start = float(fields[11]), float(fields[12]), float(fields[19])
    vsize, rss = float(fields[20]), float(fields[21]) * page
    out = [
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vsize),
        gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss),
        gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
              start / ticks + btime),
        counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                (utime + stime) / ticks),
    ]
    try:
        out.append(gauge("process_open_fds", "Number of open file descriptors.", len(os.listdir(f"{proc}/fd"))))
        with open(f"{proc}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    out.append(gauge("process_max_fds", "Maximum number of open file descriptors.",
                                     float(line.split()[3])))
    except (OSError, IndexError, ValueError):
        pass
    return out

