"""The knobs every simulated run shares: mesh size and length, the network model, faults.

:class:`~zmqagents.sim.membership_run.Scenario` (membership cores alone),
:class:`~zmqagents.sim.overlay.OverlayScenario` (routing + membership) and, through the latter,
:class:`~zmqagents.sim.dht_run.DhtScenario` extend :class:`SimScenario`, so a knob that means the
same in each run is declared once, with one comment. A subclass redeclares a field only to give it
another default (the membership run's defaults predate the ``zmqagents sim`` command's).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimScenario:
    nodes: int = 100
    seconds: float = 60.0
    seed: int = 1  # same seed, same run
    loss: float = 0.0  # probability that one message is dropped
    latency: str = "lognormal:5ms:0.5"  # see netmodel.parse_latency
    profile: str = "lan"  # MembershipConfig.profile
    config: dict = field(default_factory=dict)  # MembershipConfig overrides
    crash: int = 0  # nodes that crash, each at a random time in crash_window
    crash_window: tuple[float, float] | None = None  # default: each run's own (after its start-up phase)
    pause_fraction: float = 0.0  # nodes stalled pause_duty of each pause_period during pause_window
    pause_duty: float = 0.9
    pause_period: float = 1.0
    pause_window: tuple[float, float] | None = None  # default: pause_span()
    partition: tuple[float, float, float] | None = None  # (start, end, fraction of the nodes cut off)
    byte_sample: int = 32  # encode one message in this many to estimate bytes

    def pause_span(self) -> tuple[float, float]:
        """When paused nodes stall: ``pause_window``, else 60 s from a quarter of the run in (the
        overlay issue's Lifeguard check pauses nodes for 60 s)."""
        return self.pause_window or (self.seconds / 4, self.seconds / 4 + 60.0)
