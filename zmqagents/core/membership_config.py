"""Tuning of the membership core (SWIM with Lifeguard): :class:`MembershipConfig` and the named profiles.

Every default carries the reason for its value (simulations, memberlist's choices); ``protocols/membership.md``
has the measurements. The core itself is :mod:`zmqagents.core.membership`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any
from ..errors import InvalidArgument

__all__ = ["MembershipConfig", "PROFILES"]


@dataclass
class MembershipConfig:
    """Tuning of the membership core. The defaults are the LAN profile; see :data:`PROFILES` and
    ``protocols/membership.md`` for the WAN and edge profiles and the simulations behind the numbers."""

    # One member probed per period. Idle traffic is one ping and one ack (~122 B each) per node per
    # period: ~180 B/s at 1.5 s, ~270 B/s at memberlist's 1 s. A crashed member is first probed after
    # ~1 period on average (every holder probes one member per period, so any member is probed about
    # once per period in aggregate). Sim, N=100, 1 % loss: all holders report a crash after p50 ~6 s
    # at 1.5 s (~5 s at 1 s, ~7.5 s at 2 s).
    probe_interval: float = 1.5
    # Direct ack deadline before asking helpers: above LAN RTTs by two orders of magnitude, and
    # leaves the rest of the period (1 s) for the indirect round trip (memberlist LAN: 500 ms).
    probe_timeout: float = 0.5
    # Helpers asked per failed direct ping (SWIM's k; memberlist: 3). With 1 % loss a probe of a live
    # node fails only if the direct path (2 % per round trip) and all three 4-hop indirect paths
    # (4 % each) fail: ~1e-6, and a single failed probe still kills nobody (verification rule).
    indirect_checks: int = 3
    # Indirect-probe helpers are picked among the members heard from within this many periods (the
    # rest at random): a member cut off by a partition but not yet declared cannot help, and picking
    # only such helpers made nodes accuse members on their own side (sim, N=400, 30 % cut off).
    helper_recent_periods: float = 3.0
    # Suspicion timeout bounds (s, before the LHM stretch). It starts at suspicion_max and shrinks
    # towards suspicion_min as independent accusers confirm (Lifeguard). Nobody is declared dead
    # before its own probe failed, so these bound how long an unresponsive node is given to come back
    # (a GC pause, a brief link loss), not how long a rumor needs to spread.
    suspicion_min: float = 2.0
    suspicion_max: float = 10.0
    # Confirmations after which the timeout reaches its minimum (Lifeguard's K; memberlist's default
    # is SuspicionMult - 2 = 2). A holder that verified has the accuser's failed probe and its own:
    # one confirmation, timeout ~5 s; one more accuser brings it to suspicion_min. (K = 3 left
    # verified holders waiting ~6 s with p100 19 s at N=3000; K = 2: p100 14 s.)
    suspicion_confirmations: int = 2
    # Each node sends each rumor ceil(retransmit_mult * log10(N + 1)) times (6 at N=100, 8 at 1000, 11
    # at 10,000; dead rumors half). Push gossip misses a given node with probability ~e^-T when every
    # node sends T copies; anti-entropy repairs the rest. Sim, N=100: 1.5 (T=4) left holders
    # undetected for a sync interval and pushed p100 to 19 s; 2.5 keeps p100 ~10 s.
    retransmit_mult: float = 2.5
    # While fresh rumors are pending, a push round (swim.gossip to gossip_fanout random members) runs
    # every gossip_interval. Piggybacking alone moves rumors at the probe rate (~1.3 messages/s per
    # node); the pushes make a rumor reach 10,000 nodes in seconds. Nothing is sent when no rumor is
    # pending. Fanout 3 misses a node with ~e^-3 = 5 % per round (2: 13 %, sim N=100 p50 7.2 s vs 6.1).
    gossip_interval: float = 0.2
    gossip_fanout: int = 3
    # Push rounds per rumor per node: each round sends the fresh rumors, as one list, to
    # gossip_fanout random members and counts as one of the rumor's sends; the rest ride on probe
    # traffic. The pushes make the exponential phase fast (every node that learns a rumor hands it to
    # gossip_fanout others within one gossip_interval); the piggybacked sends reach the few nodes the
    # pushes missed, at no extra message cost.
    gossip_transmits: int = 1
    # Fanout of a push round that carries only news about nodes we do not hold (relaying for others
    # in a partial view). News about our own members, our tombstones or ourselves goes to
    # gossip_fanout: the nodes with a stake push hardest. In a Kademlia view the holders of a node
    # cluster around it and hold each other, so their pushes reach the other holders; relays keep
    # the epidemic going for everyone else at a third of the messages (sim, N=3000, see the spec).
    relay_fanout: int = 1
    # Push rounds for a dead rumor (at most gossip_transmits; 0: probe traffic only). Holders whose own
    # probe already failed declare as soon as one arrives, so the last holder concludes ~1 s after the
    # first instead of waiting out its own timer (sim, N=100: p50 first->last Failed 2.4 s with 0).
    dead_pushes: int = 1
    # Rumor bytes added to one message (estimated sizes). ~8 dead/suspect rumors.
    piggyback_bytes: int = 600
    max_rumors_per_message: int = 32  # rumors read from one incoming message; the rest is counted and ignored
    max_rumors: int = 128  # rumors queued for sending; the most-sent one is evicted to make room
    heard_limit: int = 256  # subjects we hold whose latest news is remembered for deduplication (LRU)
    # Strangers (nodes we do not hold) whose news we relay: at most foreign_limit new ones per
    # foreign_window seconds; news about others is dropped unremembered (RumorQueue.admit_stranger).
    # Relaying keeps the epidemic going for holders spread over the mesh; the bound keeps a mass crash
    # from making every node relay the news of every death (sim, 2,000 nodes, 400 crashed at once: with
    # one 256-subject memory for all news, 3.9 M forgets and 13 M rumors received in 120 s; the
    # 10,000-node run with 2,000 crashed stalled). Trouble news of a stranger dropped because the bound
    # is reached starts a sweep (see sweep_burials): that many failing nodes is a mass crash.
    foreign_limit: int = 64
    foreign_window: float = 30.0
    # Anti-entropy: every sync_interval the periodic probe asks its target for its recent rumors (a
    # pull: the ack carries them), and one tombstone is re-checked. A rumor lost to us, or a healed
    # partition, is repaired within ~one interval. Pull only: pushing ours as well would double the
    # cost and repair others, who pull for themselves.
    sync_interval: float = 10.0
    sync_rumors: int = 32  # recent rumors remembered and sent in a sync answer, newest first (16: holders missed crashes in a 50-crash storm at N=1000)
    sync_horizon: float = 30.0  # rumors older than this (s) are no longer sent in syncs (> sync_interval)
    # Dead members remembered (to re-check after a partition, and to refuse stale news about them).
    # 256, not 64: a partition that cuts off 30 % of a 2,000-node mesh buries more than 64 members on
    # some nodes (their cut-off contacts and the cut-off replacements promoted after them); an evicted
    # tombstone is never re-checked, so its pair stays dead (sim: 17 evicted, 17 pairs still dead
    # 50 s after the heal). ~320 B each with its contact (sys.getsizeof, short endpoint), ~80 KB when full.
    max_tombstones: int = 256
    tombstone_ttl: float = 600.0
    # Lifeguard's saturating local health counter (memberlist: awareness max 8): the probe interval and
    # timeout are multiplied by 1 + LHM, at most 9x.
    lhm_max: int = 8
    # A timer that fires this late (s) means the node was stalled: LHM + 1, probes in flight are
    # inconclusive, suspicion expiries wait for the input to be read.
    stall_threshold: float = 0.25
    max_relays: int = 64  # ping_reqs being relayed at once for others
    # Accusers a node sends its refutation to directly, per refutation (each at most once; section 7). A
    # node cut off by a partition is suspected by most of its holders across the cut, and after the heal
    # it may hold few of them: 3 per refutation left suspicions begun at the heal to run out (sim, N=2000).
    # Each send answers a rumor naming that accuser, so a forger gets one message per rumor, no more.
    max_direct_refutations: int = 64
    # Verification and check probes in flight at once (besides the periodic one). They are driven by
    # news (a suspicion heard, a dead member's hint), not by the period, so a node whose LHM stretched
    # its period still verifies promptly; this bounds the burst, the rest waits in a queue.
    max_probes: int = 8
    # Sweep: after burying this many members within one sync_interval (a mass crash or a partition), probe
    # every alive member once, sweep_rate more per gossip_interval in free probe slots, rather than each in
    # its round-robin turn (a cycle of ~1.5 s x members: minutes; sim, N=2000, 20 % crashed at once:
    # holders that missed the news learned of far-bucket members up to 90 s later). 0: never. Rate 4
    # rather than 2: the last holder of 200 crashed at once (N=1000) detected 23.4 s rather than 31.9 s
    # after the crash, at the same messages per node per second.
    sweep_burials: int = 4
    sweep_rate: int = 4
    sweep_cooldown: float = 60.0  # at most one sweep per this many seconds
    # Pacing of inbound probes (membership_pace.py, protocols/membership.md 4.5): while more than
    # probe_budget distinct nodes pinged us within 2 x max_pace periods, our acks ask probers to probe us
    # at most once every ceil(probers / probe_budget) periods (at most max_pace). Only probers that would
    # come back sooner slow down: those with fewer members than the pace, such as 100 peers whose only
    # member is one hub (bench/footprint.py: the hub's idle CPU 2.8 % -> see the spec). 0: never pace.
    probe_budget: int = 8
    max_pace: int = 16
    max_members: int = 65536  # a bound, not a size: a Kademlia view of a million nodes holds ~400
    rtt_alpha: float = 0.125  # EWMA weight of a new RTT sample (TCP's SRTT gain)
    leave_linger: float = 1.0  # how long a leaving node should keep running so its rumor spreads (advice)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise InvalidArgument(f"MembershipConfig.{f.name} must be a non-negative number, got {value!r}")
        for name in ("probe_interval", "probe_timeout", "suspicion_min", "gossip_interval", "sync_interval",
                     "max_rumors", "heard_limit", "max_members", "max_probes", "retransmit_mult"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"MembershipConfig.{name} must be positive")
        if self.probe_timeout >= self.probe_interval:
            raise InvalidArgument("MembershipConfig.probe_timeout must be below probe_interval (the indirect round "
                             "needs the rest of the period)")
        if self.suspicion_max < self.suspicion_min:
            raise InvalidArgument("MembershipConfig.suspicion_max must not be below suspicion_min")
        if not 0 < self.rtt_alpha <= 1:
            raise InvalidArgument("MembershipConfig.rtt_alpha must be in (0, 1]")

    def transmit_limit(self, n: int) -> int:
        """Transmissions of one rumor by one node in a mesh of ``n`` nodes."""
        return max(1, math.ceil(self.retransmit_mult * math.log10(max(1, n) + 1)))

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> "MembershipConfig":
        """``lan``, ``wan`` or ``edge`` (see PROFILES), with fields overridden by keyword."""
        try:
            base = PROFILES[name]
        except KeyError:
            raise InvalidArgument(f"unknown membership profile {name!r} (choose from {', '.join(PROFILES)})") from None
        return cls(**{**base, **overrides})


PROFILES: dict[str, dict[Any, Any]] = {
    "lan": {},
    # Cross-region links: RTTs of 50-300 ms with tails, more loss. memberlist's WAN config probes every
    # 5 s with a 3 s timeout; we probe every 3 s with a 1.5 s timeout, and let suspicions last longer.
    # Sim (N=100, lognormal 80 ms sigma 0.6, 2 % loss): all holders report a crash after p50 17 s,
    # p100 27 s, ~100 B/s idle, no false positives.
    "wan": {"probe_interval": 3.0, "probe_timeout": 1.5, "suspicion_min": 9.0, "suspicion_max": 36.0,
            "gossip_interval": 0.5, "gossip_fanout": 3, "sync_interval": 30.0, "stall_threshold": 1.0,
            "sync_horizon": 180.0, "tombstone_ttl": 1800.0},
    # Small boxes on flaky, metered links: idle bytes matter most and stalls (CPU throttling, radio
    # sleep) are common. Probe every 5 s, tolerate unresponsiveness for up to a minute, use more
    # helpers because single links fail more often. Sim (N=100, lognormal 40 ms sigma 1.0, 5 % loss):
    # p50 40 s, p100 77 s, ~93 B/s idle, no false positives.
    "edge": {"probe_interval": 5.0, "probe_timeout": 2.5, "indirect_checks": 4, "suspicion_min": 20.0,
             "suspicion_max": 60.0, "gossip_interval": 1.0, "gossip_fanout": 2, "sync_interval": 60.0,
             "stall_threshold": 2.0, "sync_horizon": 300.0, "tombstone_ttl": 3600.0, "piggyback_bytes": 400},
}
