"""What a swarm runs, checked before the first node starts: a plan that cannot run is a usage error.

The fault plan: ``--kill F`` and ``--pause F`` (F a percentage of this process's nodes, "10%", or a
number of nodes, "3") happen ``--at T`` seconds into the workload, on disjoint random nodes (never the
node that founded its own mesh: the others joined through it); a paused node stops for ``--for S``
seconds and then goes on. A kill is a crash as peers see it: the node's sockets close, no leave.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import InvalidArgument

WORKLOADS = ("idle", "requests", "tasks", "publish")
MAX_SIZE = 256 * 1024  # bytes of payload per request/task/publication (the envelope limit is 1 MiB)
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Amount:
    """A share of the nodes: ``percent`` of them, or ``count`` nodes."""

    percent: float | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str, flag: str) -> "Amount":
        m = _AMOUNT.match(text)
        if not m:
            raise InvalidArgument(f"{flag} {text!r}: give a percentage of the nodes (10%) or a number of nodes (3)")
        value, percent = float(m.group(1)), bool(m.group(2))
        if percent:
            if not 0 < value <= 100:
                raise InvalidArgument(f"{flag} {text!r}: a percentage above 0 and at most 100")
            return cls(percent=value)
        if value != int(value) or value < 1:
            raise InvalidArgument(f"{flag} {text!r}: a whole number of nodes, at least 1 (or a percentage: 10%)")
        return cls(count=int(value))

    def of(self, nodes: int) -> int:
        """How many of ``nodes``: a percentage rounds up (10% of 8 is 1), so a fault never does nothing."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return math.ceil(nodes * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class Plan:
    """One process's swarm (``--procs`` splits ``nodes`` over processes before each makes its Plan)."""

    nodes: int
    workload: str = "idle"
    seconds: float = 30.0
    rate: float = 1.0  # per node per second (requests, tasks, publications)
    size: int = 100  # payload bytes
    timeout: float = 5.0  # per request / task
    kill: Amount | None = None
    pause: Amount | None = None
    at: float | None = None  # s into the workload
    pause_for: float = 5.0
    detect_timeout: float = 30.0  # s after a kill to wait for every holder to notice it
    join_concurrency: int = 16  # joins in flight at once in this process
    join_timeout: float = 30.0
    settle: float = 2.0  # s between the last join and the measured window
    listen: str = "tcp://127.0.0.1:0"
    seed: int | None = None  # random seed (victims, targets); None: random
    link_idle: float | None = None  # each node's link_idle_timeout (s; 0: never); None: the node's default
    faults: dict = field(default_factory=dict, compare=False)  # filled by check(): {"kill": n, "pause": n}

    def check(self) -> "Plan":
        """Every rule at once, so a bad command line fails before any socket opens."""
        if self.nodes < 1:
            raise InvalidArgument(f"--nodes {self.nodes}: at least 1")
        if self.workload not in WORKLOADS:
            raise InvalidArgument(f"--workload {self.workload!r}: one of {', '.join(WORKLOADS)}")
        for name, value in (("--seconds", self.seconds), ("--timeout", self.timeout), ("--for", self.pause_for),
                            ("--detect-timeout", self.detect_timeout), ("--join-timeout", self.join_timeout)):
            if not value > 0 or math.isinf(value):
                raise InvalidArgument(f"{name} {value:g}: a number of seconds above 0")
        if self.settle < 0:
            raise InvalidArgument(f"--settle {self.settle:g}: 0 or more seconds")
        if not 0 <= self.rate <= 10_000 or math.isnan(self.rate):
            raise InvalidArgument(f"--rate {self.rate:g}: 0 to 10000 per node per second")
        if not 0 <= self.size <= MAX_SIZE:
            raise InvalidArgument(f"--size {self.size}: 0 to {MAX_SIZE} bytes")
        if self.link_idle is not None and not 0 <= self.link_idle < math.inf:
            raise InvalidArgument(f"--link-idle {self.link_idle:g}: 0 (never) or more seconds")
        if self.join_concurrency < 1:
            raise InvalidArgument(f"--join-concurrency {self.join_concurrency}: at least 1")
        if (self.kill or self.pause) and self.at is None:
            raise InvalidArgument("--kill/--pause need --at T: when, in seconds into the workload")
        if self.at is not None:
            if not (self.kill or self.pause):
                raise InvalidArgument("--at is the time of a fault: give --kill F or --pause F with it")
            if not 0 <= self.at < self.seconds:
                raise InvalidArgument(f"--at {self.at:g}: within the workload, 0 <= T < --seconds ({self.seconds:g})")
        if not self.listen.startswith(("tcp://", "ipc://")):
            raise InvalidArgument(f"--listen {self.listen!r}: a tcp://HOST:0 (or ipc://) endpoint")
        if self.nodes > 1 and self.listen.startswith("tcp://") and not self.listen.endswith(":0"):
            raise InvalidArgument(f"--listen {self.listen!r}: several nodes need port 0 (each takes a free port)")
        if self.listen.startswith("ipc://") and self.nodes > 1:
            raise InvalidArgument("--listen ipc://: one path per node; use tcp://HOST:0 for several nodes")
        # The founding node (own mesh) is never a victim; on a mesh given by --mesh any node may be.
        kill = self.kill.of(self.nodes) if self.kill else 0
        pause = self.pause.of(self.nodes) if self.pause else 0
        if kill + pause > self.nodes - 1:
            raise InvalidArgument(f"--kill {self.kill or 0} and --pause {self.pause or 0} ask for {kill + pause} of "
                                  f"{self.nodes} nodes: leave at least one node unharmed to see it")
        self.faults.update(kill=kill, pause=pause)
        return self
