"""Bounded, mergeable histograms: percentiles within one bucket, merges equal to one histogram of all."""

from __future__ import annotations

import math
import random

import pytest

from zmqagents.errors import InvalidArgument
from zmqagents.swarm.histogram import STEPS, Histogram


def _exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_one_bucket_of_the_exact_ones(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(1.0, 1.5) for _ in range(5000)]
    h = Histogram.of(values)
    width = 2 ** (1 / STEPS)
    for q in (0.01, 0.5, 0.9, 0.99, 1.0):
        exact = _exact(values, q)
        got = h.percentile(q)
        assert exact <= got <= exact * width, (q, exact, got)
    assert h.count == len(values) and h.high == max(values) and h.low == min(values)
    assert h.total == pytest.approx(sum(values))
    assert len(h.buckets) < 300


def test_a_merge_is_the_histogram_of_all_samples():
    rng = random.Random(7)
    parts = [[rng.expovariate(1 / (i + 1)) for _ in range(1000)] for i in range(4)]
    merged = Histogram()
    for part in parts:
        merged.merge(Histogram.from_json(Histogram.of(part).to_json()))  # through JSON, as pods' reports go
    whole = Histogram.of([v for part in parts for v in part])
    assert merged.buckets == whole.buckets
    assert (merged.count, merged.low, merged.high) == (whole.count, whole.low, whole.high)
    assert merged.percentile(0.99) == whole.percentile(0.99)


def test_tiny_and_empty():
    assert Histogram().percentile(0.5) is None
    assert Histogram().summary("x") == {"x_p50": None, "x_p99": None, "x_max": None}
    h = Histogram.of([0.0, 0.0005])
    assert h.percentile(0.99) == 0.0005  # clamped to the exact max, not the bucket's edge


@pytest.mark.parametrize("bad, says", [
    ({"count": 1, "sum": 1, "min": 1, "max": 1, "steps": 8, "floor": 1e-3, "buckets": {"1": 1}}, "another layout"),
    ({"count": 2, "sum": 1, "min": 1, "max": 1, "steps": STEPS, "floor": 1e-3, "buckets": {"1": 1}}, "sum of the buckets"),
    ({"count": 1, "sum": 1, "min": 1, "max": 1, "steps": STEPS, "floor": 1e-3, "buckets": {"99999": 1}}, "out of range"),
    ({"steps": STEPS, "floor": 1e-3}, "not a histogram"),
    ("nonsense", "not a histogram"),
])
def test_what_is_not_a_histogram_is_refused_with_the_reason(bad, says):
    with pytest.raises(InvalidArgument, match=says):
        Histogram.from_json(bad, "pod-3")
