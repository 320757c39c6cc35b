"""The delivery core's stall watchdog (``protocols/delivery.md`` §7.3).

A stream whose peer keeps talking to us while none of our messages to it is acknowledged for
``stall_after`` seconds is stalled: something neither side can repair on its own (the receiver holds
a stream we cannot see, a state lost on one side) keeps it from moving. The watchdog keeps each
peer's stall clock (``Peer.stuck``, its :class:`~zmqagents.core.delivery_streams.Watch` timer, the
``stalled`` flag and the gauge of stalled peers) and reports :class:`Stalled`; every change of the
clock and the flag is here. Reopening the stream on a fresh epoch is the stream's own transition:
:meth:`StallWatchdog._restart_stalled`, which the sending side
(:class:`~zmqagents.core.delivery_retransmit.Retransmission`) implements.

A peer silent for longer than a live one stays (it answers every copy it gets, and a copy goes at
least every capped, jittered timeout) is away, not stalled: its clock starts afresh when it talks.
"""

from __future__ import annotations

from collections import OrderedDict

from .delivery_config import DeliveryConfig
from .delivery_events import Stalled
from .delivery_streams import Peer, Watch, stream_state
from .delivery_timers import TimerWheel
from .outputs import CoreOutputs


class StallWatchdog(TimerWheel, CoreOutputs):
    """The stall clocks of every peer, as a base class of the delivery core."""

    # The core's own, set by Delivery.__init__.
    config: DeliveryConfig
    stats: dict[str, int]
    _peers: OrderedDict[bytes, Peer]

    def __init__(self, config: DeliveryConfig):
        TimerWheel.__init__(self, config.timer_granularity)
        CoreOutputs.__init__(self)
        self._stall_after = config.stall_after  # 0: no watchdog
        self._stalled = 0  # peers in the Stalled state (a gauge)
        # The longest a live peer we have messages pending for stays silent: it answers every copy it
        # gets, and a copy goes at least every capped, jittered timeout; rto_initial covers the round
        # trip. A peer silent for longer is away (down, cut off): that is no stall (§7.3).
        self._quiet = config.rto_max * (1.0 + config.jitter) + config.rto_initial

    @property
    def stalled_peers(self) -> int:
        """Peers whose stream is stalled now (reported Stalled, no progress since): a gauge."""
        return self._stalled

    def _talked(self, peer: Peer, now: float, silent: float) -> None:
        """The peer talks to us, after ``silent`` seconds, while our messages to it are pending: our
        stream must progress from now on. A peer back from a silence longer than a live one keeps was
        away: its stall clock starts afresh."""
        if self._stall_after and (peer.stuck is None or silent > self._quiet):
            self._start_stall_clock(peer, now)

    def _start_stall_clock(self, peer: Peer, now: float) -> None:
        """The peer talks to us while our messages to it are unacked: from now on they must progress."""
        peer.stuck = now
        watch = peer.watch
        if watch is None:
            watch = peer.watch = Watch(peer)
        if not watch.slot:
            watch.slot = self._arm_slot(watch, now + self._stall_after)

    def _watchdog(self, watch: Watch, now: float) -> None:
        """The watchdog timer fired: report and reopen a stream that made no progress for stall_after."""
        peer = watch.peer
        stuck = peer.stuck
        if stuck is None or self._peers.get(peer.id) is not peer:
            return  # it progressed (the clock restarts when the peer next talks to us), or was dropped
        if not peer.out or now - peer.heard_at > self._quiet:
            peer.stuck = None  # nothing pending, or the peer fell silent: its clock restarts when it talks
            return
        due = stuck + self._stall_after
        if now < due:
            watch.slot = self._arm_slot(watch, due)
            return
        if not peer.stalled:
            peer.stalled = True
            self._stalled += 1
            self.stats["stalls"] += 1
            self._events.append(Stalled(peer.id, len(peer.out), now - stuck,
                                        stream_state(peer, now, self.config.window)))
        self._restart_stalled(peer, now)
        self._start_stall_clock(peer, now)

    def _restart_stalled(self, peer: Peer, now: float) -> None:
        """Reopen the stalled stream to ``peer`` on an epoch it has never seen (the sending side's transition)."""
        raise NotImplementedError

    def _progressed(self, peer: Peer) -> None:
        """A cumulative ack of ours advanced: the stream is not stuck (its clock starts again when the
        peer next talks to us), and no longer stalled."""
        peer.stuck = None
        if peer.stalled:
            peer.stalled = False
            self._stalled -= 1

    def _unwatch(self, peer: Peer) -> None:
        """The peer's state is being dropped: disarm its watchdog and take it out of the gauge."""
        if peer.watch is not None:
            self._cancel(peer.watch)
        if peer.stalled:
            peer.stalled = False
            self._stalled -= 1
