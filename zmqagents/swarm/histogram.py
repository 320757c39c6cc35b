"""A bounded, mergeable histogram: percentiles of many pods' reports, merged without raw samples.

Each pod of a load test reports its own latencies; the summary needs the p99 of all of them together,
and a p99 of p99s is not one. So a report carries its distribution as counts in fixed buckets whose
edges grow by a constant ratio (``2 ** (1 / STEPS)``, ~4.4 % apart): the same edges in every report,
so merging is adding counts, and any percentile of the merge is off by at most one bucket's width
(~4.4 % of the value) — whatever the number of samples, in at most ``MAX_BUCKETS`` numbers.
Exact count, sum, min and max ride along. A value at or below ``FLOOR`` falls in bucket 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import InvalidArgument

STEPS = 16  # buckets per doubling
FLOOR = 1e-3  # values up to this land in bucket 0 (1 µs in ms, 1 ms in s)
MAX_BUCKETS = 64 * STEPS  # FLOOR * 2**64: far above any latency in any unit used here


def bucket_of(value: float) -> int:
    if value <= FLOOR:
        return 0
    return min(MAX_BUCKETS - 1, 1 + int(math.log2(value / FLOOR) * STEPS))


def upper_edge(index: int) -> float:
    """The largest value bucket ``index`` holds."""
    return FLOOR * 2 ** (index / STEPS)


@dataclass
class Histogram:
    """Counts per bucket (sparse), plus the exact count, sum, min and max."""

    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None

    def add(self, value: float) -> None:
        index = bucket_of(value)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += value
        self.low = value if self.low is None or value < self.low else self.low
        self.high = value if self.high is None or value > self.high else self.high

    def merge(self, other: "Histogram") -> None:
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += other.count
        self.total += other.total
        for value in (other.low, other.high):
            if value is not None:
                self.low = value if self.low is None or value < self.low else self.low
                self.high = value if self.high is None or value > self.high else self.high

    def percentile(self, q: float) -> float | None:
        """The value below which a fraction ``q`` of the samples lie: the upper edge of the bucket that
        holds the sample of rank ceil(q * count), clamped to the exact min and max; None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                assert self.low is not None and self.high is not None
                return min(self.high, max(self.low, upper_edge(index)))
        return self.high

    def summary(self, name: str, digits: int = 3) -> dict[str, Any]:
        """``{name}_p50``, ``{name}_p99``, ``{name}_max`` (None when there are no samples)."""
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, digits)
        return {f"{name}_p50": r(self.percentile(0.5)), f"{name}_p99": r(self.percentile(0.99)),
                f"{name}_max": r(self.high)}

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.total, "min": self.low, "max": self.high,
                "steps": STEPS, "floor": FLOOR, "buckets": {str(k): v for k, v in sorted(self.buckets.items())}}

    @classmethod
    def from_json(cls, data: Any, where: str = "histogram") -> "Histogram":
        """Read what :meth:`to_json` wrote; InvalidArgument (with ``where``) for anything else."""
        try:
            if data.get("steps") != STEPS or data.get("floor") != FLOOR:
                raise InvalidArgument(f"{where}: buckets of another layout (steps {data.get('steps')}, floor "
                                      f"{data.get('floor')}; this version uses {STEPS}, {FLOOR})")
            buckets = {int(k): int(v) for k, v in data["buckets"].items()}
            if any(not 0 <= k < MAX_BUCKETS or v < 0 for k, v in buckets.items()):
                raise ValueError("bucket out of range")
            count = int(data["count"])
            if count != sum(buckets.values()):
                raise ValueError("count is not the sum of the buckets")
            low, high = data["min"], data["max"]
            return cls(buckets, count, float(data["sum"]), None if low is None else float(low),
                       None if high is None else float(high))
        except InvalidArgument:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{where}: not a histogram ({exc})") from None

    @classmethod
    def of(cls, values: Iterable[float]) -> "Histogram":
        h = cls()
        for v in values:
            h.add(v)
        return h
