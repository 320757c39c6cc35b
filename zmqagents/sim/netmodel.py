"""The simulated network: latency distributions, loss and partitions.

Latency is given by a small spec string so a scenario (or a CLI flag) can
name it in one token:

* ``const:10ms``          every message takes 10 ms
* ``uniform:5ms:20ms``    uniform between 5 and 20 ms
* ``lognormal:20ms:0.5``  lognormal with median 20 ms and shape sigma 0.5
  (the long right tail real networks show), never below a floor of a fifth
  of the median (``lognormal:20ms:0.5:1ms`` names the floor)

Every model has a smallest delay (``min_delay``): no message arrives sooner.
The parallel simulator needs it (its workers may run that far apart in
virtual time without missing a message from each other), and real links have
one too (propagation, the kernel's own path). The lognormal floor moves the
few draws below it up to it: at sigma 0.5, 0.06 % of them.

Durations take ``us``, ``ms`` or ``s``; a bare number is seconds. Latency is
drawn per message, so messages between two nodes can overtake each other,
as they can on real multi-path networks and across reconnects.
"""

from __future__ import annotations

import math
import random
import re
from math import exp as _exp
from typing import Iterable
from ..errors import InvalidArgument

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|ms|s)?\s*$")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"10ms"`` -> 0.01. Raises ValueError naming the accepted forms."""
    m = _DURATION.match(text)
    if m is None:
        raise InvalidArgument(f"duration {text!r} must be a number with an optional unit us, ms or s (e.g. 10ms)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class ConstLatency:
    __slots__ = ("value",)

    def __init__(self, value: float):
        self.value = value

    @property
    def min_delay(self) -> float:
        return self.value

    def sample(self, rng: random.Random) -> float:
        return self.value

    def __str__(self) -> str:
        return f"const:{self.value}s"


class UniformLatency:
    __slots__ = ("low", "high")

    def __init__(self, low: float, high: float):
        if high < low:
            raise InvalidArgument(f"uniform latency: high ({high}s) is below low ({low}s)")
        self.low = low
        self.high = high

    @property
    def min_delay(self) -> float:
        return self.low

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def __str__(self) -> str:
        return f"uniform:{self.low}s:{self.high}s"


class LognormalLatency:
    __slots__ = ("median", "sigma", "floor", "_mu")

    def __init__(self, median: float, sigma: float, floor: float | None = None):
        if median <= 0 or sigma < 0:
            raise InvalidArgument("lognormal latency needs a positive median and a non-negative sigma")
        if floor is None:
            floor = median / 5
        if not 0 <= floor <= median:
            raise InvalidArgument("lognormal latency: the floor must lie between 0 and the median")
        self.median = median
        self.sigma = sigma
        self.floor = floor
        self._mu = math.log(median)

    @property
    def min_delay(self) -> float:
        return self.floor

    def sample(self, rng: random.Random) -> float:
        # exp of a normal draw, as lognormvariate, but via gauss (Box-Muller, one draw in two
        # free): the simulator samples one latency per message, and normalvariate's rejection
        # loop cost ~4 % of a 10,000-node run.
        d = _exp(rng.gauss(self._mu, self.sigma))
        return d if d > self.floor else self.floor

    def __str__(self) -> str:
        return f"lognormal:{self.median}s:{self.sigma}:{self.floor}s"


Latency = ConstLatency | UniformLatency | LognormalLatency


def parse_latency(spec: str) -> Latency:
    """Parse ``const:D``, ``uniform:D:D`` or ``lognormal:MEDIAN:SIGMA[:FLOOR]``."""
    kind, _, rest = spec.strip().partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind == "const" and len(args) == 1:
            return ConstLatency(parse_duration(args[0]))
        if kind == "uniform" and len(args) == 2:
            return UniformLatency(parse_duration(args[0]), parse_duration(args[1]))
        if kind == "lognormal" and len(args) in (2, 3):
            return LognormalLatency(parse_duration(args[0]), float(args[1]),
                                    parse_duration(args[2]) if len(args) == 3 else None)
    except ValueError as exc:
        raise InvalidArgument(f"latency {spec!r}: {exc}") from None
    raise InvalidArgument(f"latency {spec!r} must be const:D, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA[:FLOOR] (e.g. const:10ms)")


class Network:
    """Decides the fate of each message: its delay, or a drop (counted by cause)."""

    __slots__ = ("latency", "loss", "_groups", "dropped_loss", "dropped_partition")

    def __init__(self, latency: str | Latency = "const:10ms", loss: float = 0.0):
        self.latency = parse_latency(latency) if isinstance(latency, str) else latency
        if not 0.0 <= loss <= 1.0:
            raise InvalidArgument(f"loss rate must be between 0 and 1, got {loss}")
        self.loss = loss
        self._groups: dict[int, int] | None = None
        self.dropped_loss = 0
        self.dropped_partition = 0

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Split the network: nodes (by index) in different groups cannot reach each other.
        Nodes named in no group form one more group together."""
        self._groups = {index: g for g, members in enumerate(groups) for index in members}

    def heal(self) -> None:
        self._groups = None

    def delay(self, src: int, dst: int, rng: random.Random) -> float | None:
        """Transit time from node index ``src`` to ``dst``, or None if the message is lost."""
        groups = self._groups
        if groups is not None and groups.get(src, -1) != groups.get(dst, -1):
            self.dropped_partition += 1
            return None
        if self.loss and rng.random() < self.loss:
            self.dropped_loss += 1
            return None
        return self.latency.sample(rng)
