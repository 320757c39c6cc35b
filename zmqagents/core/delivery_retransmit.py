"""Our stream to each peer: sequencing, the acks we send and get, retransmission, the ack floor, reopening.

Every change to the sending side of a stream (``protocols/delivery.md`` §4-5 and §7) is here: a new
message takes the next seq and a retransmit timer; a cumulative ack settles what it covers and a
selective one marks what the receiver holds; a timer that fires retransmits (with backoff and jitter),
waits for a hole below to be filled, probes with fwds or gives up; the lowest seq still sent (the
floor) is resent at once when the peer's acks show it lacks it, and the run after it when the
cumulative ack advances past messages already retransmitted; a peer that holds a newer epoch of ours,
or the stall watchdog, makes the stream reopen on a fresh epoch. The acks of the peer's stream to us
are built here too: they ride on whatever we send it.
"""

from __future__ import annotations

import heapq
import random
from itertools import islice
from typing import Any

from ..envelope import Envelope
from .delivery_config import ACK_TYPE, EPOCH_MOD, FWD_TYPE, REOPEN_GAP, DeliveryConfig
from .delivery_events import Acked, RequestFailed, SendFailed, WindowOpen
from .delivery_streams import (
    CONFIRM, ENV, PEER, REQ, SACKED, SEQ, SLOT, TRIES, Peer, PendingRequest, ttl_ms,
)
from .delivery_watchdog import StallWatchdog


class Retransmission(StallWatchdog):
    """The sending side of every stream, as a base class of the delivery core."""

    # The core's own, set by Delivery.__init__.
    node_id: bytes
    epoch: int  # the base of our streams' epochs
    _streams: int  # streams opened so far
    _rng: random.Random
    _requests: dict[bytes, PendingRequest]

    def __init__(self, config: DeliveryConfig):
        StallWatchdog.__init__(self, config)
        self._npending = 0  # unacked messages, all peers
        self._fwd_due: dict[bytes, Peer] = {}  # peers with messages abandoned during this tick
        # Hot-path constants: the first timeout is uniform in [rto_lo, rto_lo + rto_span).
        self._rto_lo = config.rto_initial * (1.0 - config.jitter)
        self._rto_span = 2.0 * config.jitter * config.rto_initial
        # Least time between two fwds to a peer that an ack or a probe asks for: repeated acks
        # cannot make us flood, yet a lost fwd is replaced well within one retransmission timeout.
        self._fwd_interval = config.rto_initial / 2
        self._ack_every = config.ack_every
        self._rto_initial = config.rto_initial

    def _transmit(self, peer: Peer, typ: str, body: Any, now: float, re: bytes | None,
                  msg_id: bytes | None = None, ttl: int = 0) -> list[Any]:
        """Sequence, send and arm the retransmit timer of one new reliable message (the hot path)."""
        rng = self._rng
        seq = peer.next_seq
        peer.next_seq = seq + 1
        env = Envelope(msg_id or rng.getrandbits(128).to_bytes(16, "big"), self.node_id, typ, body, peer.id,
                       int(now * 1000), ttl, seq, peer.ep, re, self._piggyback(peer) if peer.owed else None)
        k = int((now + self._rto_lo + self._rto_span * rng.random()) * self._inv_g) + 1
        if k <= self._fired:
            k = self._fired + 1
        p = [k, env, peer, seq, 0, None, False, False]
        peer.out[seq] = p
        lst = self._wheel.get(k)
        if lst is None:
            self._wheel[k] = [p]
            self._live[k] = 1
            heapq.heappush(self._slots, k)
        else:
            lst.append(p)
            self._live[k] = self._live.get(k, 0) + 1  # the slot may be dead, not yet reaped: revive it
        self._npending += 1
        self._out.append(env)
        self.stats["sent"] += 1
        return p

    def _retransmit(self, p: list[Any], now: float) -> None:
        """A pending message's timer fired: retransmit it, probe for a stalled receiver, or give up."""
        cfg = self.config
        tries = p[TRIES] + 1
        if p[SACKED]:
            peer = p[PEER]
            if p[SEQ] == peer.rcum + 1:
                # The receiver waits for what it had acked: it lost what it buffered (it restarted or
                # evicted us). Every other mark came from that same lost buffer: clear them all, or each
                # would wait for its own timer to find itself at rcum + 1, one message per rto_max.
                p[SACKED] = False
                self._renege(peer, now)
            elif self._floor(peer) < p[SEQ]:
                # The receiver holds it behind a hole that a lower pending message will fill or, once
                # abandoned, a fwd will skip: wait, without spending retries.
                p[SLOT] = self._arm_slot(p, now + self._jittered(cfg.rto_max))
                return
            else:
                # It is the floor and every hole below it was abandoned: probe with fwds until the
                # cumulative ack covers it, or the retries run out.
                if tries > cfg.max_retries:
                    self._give_up(p)
                    return
                if now - peer.fwd_at >= self._fwd_interval:
                    self._send_fwd(peer, now)
                p[TRIES] = tries
                p[SLOT] = self._arm_slot(p, now + self._jittered(cfg.timeout(tries)))
                return
        if tries > cfg.max_retries:
            self._give_up(p)
            return
        p[TRIES] = tries
        p[SLOT] = self._arm_slot(p, now + self._jittered(cfg.timeout(tries)))
        env = p[ENV]
        r = p[REQ]
        if r is not None:
            # A request's copy says how long its requester still waits, as of this copy (a new object:
            # one already handed out is never changed). Its piggybacked ack may be stale: harmless,
            # acks are cumulative.
            env = p[ENV] = Envelope(env.id, env.src, env.type, env.body, env.dst, int(now * 1000),
                                     ttl_ms(r.deadline, now), env.seq, env.ep, env.re, env.ack)
        self._out.append(env)
        self.stats["retransmits"] += 1

    def _renege(self, peer: Peer, now: float) -> None:
        """The peer no longer holds what it selectively acked: unmark every other pending message to it
        and resend each on its current timeout, as an unacked one (RFC 2018 section 8: after a
        retransmit timeout the sender turns its SACK marks off). The caller resends its own entry."""
        cfg = self.config
        n = 1  # the caller's
        for q in peer.out.values():
            if not q[SACKED]:
                continue
            q[SACKED] = False
            n += 1
            if q[SLOT]:
                self._disarm(q[SLOT])
            q[SLOT] = self._arm_slot(q, now + self._jittered(cfg.timeout(q[TRIES] + 1)))
        self.stats["reneged"] += n

    def _jittered(self, timeout: float) -> float:
        return timeout * (1.0 + self.config.jitter * (2.0 * self._rng.random() - 1.0))

    def _give_up(self, p: list[Any]) -> None:
        """Retries exhausted: the message fails as "unreachable"."""
        peer = p[PEER]
        mid = p[ENV].id
        r = p[REQ]
        self._abandon(p)
        if r is None:
            self.stats["send_failed"] += 1
            self._events.append(SendFailed(mid, peer.id, "unreachable"))
        elif self._requests.pop(r.id, None) is not None:  # else it was answered, cancelled or timed out already
            del peer.requests[r.id]
            self._cancel(r)
            self.stats["requests_failed"] += 1
            self._events.append(RequestFailed(r.id, peer.id, "unreachable"))

    def _abandon(self, p: list[Any]) -> None:
        """Stop sending a pending message; the end of the tick sends a fwd so the receiver skips it."""
        peer = p[PEER]
        del peer.out[p[SEQ]]
        self._settle(p)
        self._npending -= 1
        self.stats["abandoned"] += 1
        self._fwd_due[peer.id] = peer
        self._window_check(peer)

    def _settle(self, p: list[Any]) -> None:
        """A message left ``out`` (acked, abandoned or failed): drop its timer and its envelope."""
        if p[SLOT]:
            self._disarm(p[SLOT])
            p[SLOT] = 0
        p[ENV] = None

    def _window_check(self, peer: Peer) -> None:
        if peer.blocked and len(peer.out) < self.config.window:
            peer.blocked = False
            self._events.append(WindowOpen(peer.id))

    def _floor(self, peer: Peer) -> int:
        """The lowest seq still being retransmitted (next_seq if none): the receiver may skip any hole below it."""
        low = peer.low
        out = peer.out
        end = peer.next_seq
        while low < end and low not in out:
            low += 1
        peer.low = low
        return low

    def _send_fwd(self, peer: Peer, now: float) -> None:
        """Tell the peer the lowest seq we still send: it skips every hole below."""
        peer.fwd_at = now
        ack = self._piggyback(peer) if peer.owed else None
        self._out.append(Envelope(self._rng.getrandbits(128).to_bytes(16, "big"), self.node_id, FWD_TYPE, None,
                                  peer.id, int(now * 1000), 0, self._floor(peer), peer.ep, None, ack))
        self.stats["fwd_sent"] += 1

    def _on_ack(self, peer: Peer, ack: list[Any], now: float) -> bool:
        """Apply a peer's ack of our stream. False if it acknowledges what we never sent (drop the envelope)."""
        ep = ack[0]
        if ep != peer.ep:
            if ep < peer.ep:
                self.stats["acks_stale"] += 1  # about an older stream of ours: nothing pending belongs to it
                return True
            # The peer holds a newer stream of ours than this one (opened by an earlier run of this node,
            # whose clock was ahead, or with a random base) and drops this one as stale: move above it.
            if ep >= EPOCH_MOD - 2 * REOPEN_GAP:
                self.stats["malformed"] += 1  # no room above it: only a hostile peer says so
                return False
            if now - peer.reopen_at >= self.config.rto_initial:  # one renumbering per rto, however many acks
                self._reopen(peer, ep + REOPEN_GAP + self._rng.randrange(REOPEN_GAP), now)
            return True
        cum = ack[1]
        end = peer.next_seq
        if cum >= end:
            self.stats["malformed"] += 1
            return False
        out = peer.out
        n0 = len(out)
        low = peer.low
        if cum >= low:
            if n0:
                for s in range(low, cum + 1):
                    p = out.pop(s, None)
                    if p is not None:
                        if p[CONFIRM]:
                            self._events.append(Acked(p[ENV].id, peer.id))
                        self._settle(p)
            peer.low = cum + 1
            acked = n0 - len(out)
            if acked:
                peer.acked_at = now
                self._progressed(peer)
                self._npending -= acked
                if peer.blocked:
                    self._window_check(peer)
        if n0:
            for s in ack[2]:
                p = out.get(s)
                if p is not None:
                    p[SACKED] = True
        if cum > peer.rcum:
            if n0 and out:
                self._fast_retransmit(peer, max(cum, peer.fast_hi) + 1, now)
            peer.rcum = cum
            p = out.get(cum + 1)
            if p is not None and p[SACKED] and now - peer.nudged_at >= self._rto_initial:
                self._resend_floor(peer, cum + 1, now)  # it asks for what it had acked: reneged
        elif cum == peer.rcum and out and now - peer.nudged_at >= self._rto_initial:
            self._resend_floor(peer, self._floor(peer), now)
        c1 = cum + 1
        if c1 < end and c1 not in out and now - peer.fwd_at >= self._fwd_interval:
            # This ack waits for a seq we no longer send: it was abandoned, the receiver lost its state,
            # or the ack is stale (reordered; then the fwd is a harmless no-op). Say where the stream goes on.
            self._send_fwd(peer, now)
        return True

    def _resend_floor(self, peer: Peer, seq: int, now: float) -> None:
        """An ack of the current epoch repeats the cumulative seq while ``seq`` (the floor) is pending:
        the peer answers, but still lacks the floor. If the floor's own timer has fired at least once
        (its first copy got no ack in time) and it is not selectively acked, send it again now, with
        the run of such messages after it (at most ``ack_every``), at most once per ``rto_initial``
        per peer; timers untouched.

        Without this a floor lost again and again, or refused by a receiver whose application was not
        reading yet, waited for its backed-off timer (up to rto_max) each time while the peer kept
        acking the rest: 10 s without progress at 40 % loss in the chaos tests, and after a sidecar's
        restart (its inbox full until its local API started) the stream waited 3-6 s per refusal
        (bench/chaos.py seed 35: the stall watchdog fired). The peer's own acks pace these copies,
        like TCP's fast retransmission on duplicate acks (RFC 5681 section 3.2). A selectively acked
        floor gets what its timer would do (:meth:`_sacked_floor`)."""
        p = peer.out.get(seq)
        if p is None:
            return
        if p[SACKED]:
            self._sacked_floor(peer, p, now)
            return
        if not p[TRIES]:
            return
        peer.nudged_at = now
        self._resend_run(peer, seq, now, "floor_resends")

    def _sacked_floor(self, peer: Peer, p: list[Any], now: float) -> None:
        """The peer answers, and our floor ``p`` is marked held by it (selectively acked). Do now what the
        floor's timer would do, up to rto_max (+ jitter) later, twice over after a receiver's restart:

        * if the peer's acks ask for it (its cumulative ack is just below it), the peer no longer holds
          it: had it held it, it would have delivered it. Its buffer is gone (it restarted, or evicted
          us), and every other mark with it: renege them all and send the run from the floor at once;
        * if the holes below it were abandoned, the peer needs a fwd to reach it: send it now.

        bench/chaos.py (seed 5): B held a window behind a hole, the hole was abandoned while B was down,
        and B came back restarted; the probe fwd, then the renege, each waited for the floor's timer, and
        the watchdog fired after 10 s without progress (931 messages held)."""
        seq = p[SEQ]
        if seq == peer.rcum + 1:
            peer.nudged_at = now
            p[SACKED] = False
            self._renege(peer, now)
            self._resend_run(peer, seq, now, "floor_resends", lost=True)
        elif now - peer.fwd_at >= self._fwd_interval:
            # Rate-limited as fwds are (not by nudged_at), so the ack it brings back may renege at once.
            self._send_fwd(peer, now)

    def _fast_retransmit(self, peer: Peer, seq: int, now: float) -> None:
        """The cumulative ack advanced: send again, at once, the run of pending messages from ``seq`` on
        that were already retransmitted once (their first copy got no ack in time) and are not
        selectively acked, at most ``ack_every`` of them.

        A receiver whose reorder buffer is full drops what arrives beyond it, unacknowledged (§6): after
        the hole that filled it is repaired, those messages are next in line but would wait for their
        backed-off timers (up to rto_max each, spending their retries), and a full window of them kept
        a stream crawling for minutes once the reorder buffer was bounded in bytes (bench/chaos.py).
        Sent in order right after the progress, the receiver delivers them at once. A message still
        on its first timer is in flight, not lost: it is left alone, so a healthy stream sends nothing
        twice. Each seq is sent this way once per stream (``fast_hi``); its timer stays as it was."""
        last = self._resend_run(peer, seq, now, "fast_retransmits")
        if last:
            peer.fast_hi = last

    def _resend_run(self, peer: Peer, seq: int, now: float, stat: str, lost: bool = False) -> int:
        """Send again the run of pending messages from ``seq`` on that were retransmitted already and
        are not selectively acked, at most ``ack_every``; the last seq sent (0 if none). Timers untouched.
        ``lost``: the receiver lost them (reneged), so they are not in flight, retransmitted or not."""
        out = peer.out
        first = seq
        for _ in range(self._ack_every):
            p = out.get(seq)
            if p is None or p[SACKED] or not (p[TRIES] or lost):
                break
            env = p[ENV]
            r = p[REQ]
            if r is not None:  # a request's copy says how long its requester still waits (§8.2)
                env = p[ENV] = Envelope(env.id, env.src, env.type, env.body, env.dst, int(now * 1000),
                                         ttl_ms(r.deadline, now), env.seq, env.ep, env.re, env.ack)
            self._out.append(env)
            seq += 1
        self.stats[stat] += seq - first
        return seq - 1 if seq > first else 0

    def _piggyback(self, peer: Peer) -> list[Any]:
        """The ack of the peer's stream, to ride on an envelope going to it anyway; settles what is owed."""
        peer.owed = 0
        self._cancel(peer)
        self.stats["acks_piggybacked"] += 1
        return self._ack_state(peer)

    def _ack_state(self, peer: Peer) -> list[Any]:
        buf = peer.buf
        if not buf:
            return [peer.in_ep, peer.cum, []]
        sack_max = self.config.sack_max
        if len(buf) > sack_max:
            self.stats["sack_truncated"] += 1
        return [peer.in_ep, peer.cum, list(islice(reversed(buf), sack_max))]

    def _send_ack(self, peer: Peer, now: float) -> None:
        peer.owed = 0
        self._cancel(peer)
        self._out.append(Envelope(self._rng.getrandbits(128).to_bytes(16, "big"), self.node_id, ACK_TYPE, None,
                                  peer.id, int(now * 1000), ack=self._ack_state(peer)))
        self.stats["acks_sent"] += 1

    def _next_epoch(self) -> int:
        """The epoch of the next stream this instance opens: base + the streams opened so far."""
        ep = self.epoch + self._streams
        self._streams += 1
        return ep if ep < EPOCH_MOD else EPOCH_MOD - 1

    def _restart_stalled(self, peer: Peer, now: float) -> None:
        # Whatever the cause (the receiver holds a stream we cannot see, a state we cannot repair from
        # here), a stream with an epoch it has never seen starts it afresh at seq 1 (§3).
        self._reopen(peer, max(self._next_epoch(), peer.ep + 1), now)

    def _reopen(self, peer: Peer, ep: int, now: float) -> None:
        """Move our stream to ``peer`` to epoch ``ep``: the pending messages, in their order, become
        seq 1, 2, ... of it (same ids, bodies and retry counts) and go out again at once (a request
        with a fresh ``ts`` and ``ttl``, §8.2)."""
        peer.ep = ep
        peer.reopen_at = now
        old, peer.out = peer.out, {}
        out = peer.out
        ack = self._piggyback(peer) if peer.owed else None
        seq = 0
        for p in old.values():  # insertion order is seq order
            seq += 1
            env = p[ENV]
            r = p[REQ]
            if r is None:
                new = Envelope(env.id, self.node_id, env.type, env.body, peer.id, env.ts, env.ttl, seq, ep, env.re,
                               ack)
            else:  # a request's copy says how long its requester still waits, as on a retransmission
                new = Envelope(env.id, self.node_id, env.type, env.body, peer.id, int(now * 1000),
                               ttl_ms(r.deadline, now), seq, ep, env.re, ack)
            ack = None
            p[ENV] = new
            p[SEQ] = seq
            p[SACKED] = False  # the receiver drops what it buffered of the old stream
            if p[SLOT]:
                self._disarm(p[SLOT])
            p[SLOT] = self._arm_slot(p, now + self._jittered(self.config.timeout(p[TRIES])))
            out[seq] = p
            self._out.append(new)
        self.stats["retransmits"] += seq
        peer.next_seq = seq + 1
        peer.low = 1
        peer.rcum = 0
        peer.fast_hi = 0
        peer.fwd_at = float("-inf")
        self.stats["stream_reopens"] += 1
