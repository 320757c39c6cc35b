"""Probing, the failure-detector half of the membership core (``protocols/membership.md`` sections 6-8).

:class:`Prober` is a part of :class:`~zmqagents.core.membership.Membership` (a mixin; it has no state
of its own beyond what the class sets up): the periodic probe of one member per protocol period in
shuffled round-robin order, which also carries the anti-entropy pull; verification probes of suspects
and check probes of tombstones, with their queue and the ``max_probes`` bound; indirect probes through
helpers (``swim.ping_req``) and the nacks that tell a lossy network from a dead target; probing on
another node's behalf; and the timer heap that all of these arm.

A probe only *observes*: when it ends, it reports to the state machine (``_probe_failed``, ``_clear``,
``_tomb_heard``, ``_tomb_silent``), which alone changes a member's state.
"""

from __future__ import annotations

import heapq
import random
from typing import TYPE_CHECKING, Any

from ..identity import Contact, node_id_of
from .membership_config import MembershipConfig
from .membership_lifeguard import LocalHealth
from .membership_records import (
    ACK, CHECK, INF, MAX_ENDPOINT_LEN, NACK, PING, PING_REQ, PUBLIC_KEY_LEN, REGULAR, T_END, T_IND, T_NACK,
    T_RECHECK, T_RELAY_END, T_SUSP, VERIFY, MemberRecord, ProbeRecord, RelayRecord, Tombstone,
)
from .membership_rumors import ALIVE, SUSPECT, RumorQueue, suspect_wire

__all__ = ["Prober"]


class Prober:
    """Probing for :class:`~zmqagents.core.membership.Membership` (see the module docstring)."""

    # Set up by Membership.__init__.
    config: MembershipConfig
    stats: dict[str, int]
    node_id: bytes
    incarnation: int
    _short: bytes
    _rng: random.Random
    _health: LocalHealth
    _rumors: RumorQueue
    _alpha: float
    _members: dict[bytes, MemberRecord]
    _tombs: dict[bytes, Tombstone]
    _order: list[bytes]
    _pos: int
    _shuffle: bool
    _seq: int
    _cur: ProbeRecord | None
    _probes: dict[int, ProbeRecord]
    _verify: dict[bytes, bool]
    _relays: dict[int, RelayRecord]
    _far_contacts: dict[bytes, Contact]
    _heap: list[Any]
    _hn: int
    _t_probe: float
    _t_ind: float
    _t_gossip: float
    _t_verify: float
    _burials: list[float]
    _sweep: list[bytes]
    _sweep_next: float
    _probe_from: float
    _sync_from: float
    _sync_gap: float
    _mid_checks: bool
    _leaving: bool
    _healed_at: float

    if TYPE_CHECKING:
        # The state machine's transitions and the other parts, which probing calls.
        def _send(self, typ: str, body: list[Any], dst: bytes) -> None: ...
        def _lhm_add(self, delta: int) -> None: ...
        def _sync_checks(self, now: float) -> None: ...
        def _probe_failed(self, rec: MemberRecord, now: float) -> None: ...
        def _clear(self, rec: MemberRecord) -> None: ...
        def _tomb_heard(self, nid: bytes, inc: int, fresh: bool, now: float) -> None: ...
        def _tomb_silent(self, tomb: Tombstone, sent: float, now: float) -> None: ...

    # -- timers --------------------------------------------------------------------------------------------

    def _due(self) -> float:
        t = self._t_probe
        if self._t_ind < t:
            t = self._t_ind
        if self._t_verify < t:
            t = self._t_verify
        if self._t_gossip < t:
            t = self._t_gossip
        heap = self._heap
        # Only a heap entry earlier than the rest matters, so only such an entry is checked for being
        # still live (dead ones are dropped on the way); later ones are popped when they come due.
        while heap:
            top = heap[0]
            if top[0] >= t:
                break
            if self._live_timer(top):
                t = top[0]
                break
            heapq.heappop(heap)
        return t

    def _live_timer(self, entry: tuple[Any, ...]) -> bool:
        t, _, kind, obj = entry
        if kind == T_SUSP:
            return obj.due == t and obj.rec.susp is obj
        if kind == T_IND:
            return obj.ind_at == t and self._probes.get(obj.seq) is obj
        if kind == T_END:
            return obj.end_at == t and self._probes.get(obj.seq) is obj
        if kind == T_NACK:
            return obj.nack_at == t and not obj.answered and self._relays.get(obj.seq) is obj
        if kind == T_RECHECK:
            return obj.recheck == t and self._tombs.get(obj.id) is obj
        return self._relays.get(obj.seq) is obj

    def _push(self, t: float, kind: int, obj: Any) -> None:
        self._hn += 1
        heapq.heappush(self._heap, (t, self._hn, kind, obj))

    # -- probing -------------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = s = self._seq + 1
        return s

    def _probe_tick(self, now: float, stalled: bool) -> None:
        cfg = self.config
        cur = self._cur
        if cur is not None:  # the period ended without an ack
            self._cur = None
            self._t_ind = INF
            if stalled:
                cur.fair = False
            self._probe_end(cur, now)
        if self._leaving or not self._members:
            self._t_probe = INF
            return
        self._t_probe = now + self._health.scaled(cfg.probe_interval)
        self._probe_from = now
        rec = self._next_target(now)
        if rec is not None:
            gap = self._health.scaled(self._sync_gap)
            if now >= self._sync_from + gap:
                # This period's probe doubles as the anti-entropy pull: the ping asks for the
                # target's recent rumors, which come back in the ack.
                self._sync_from = now
                self._mid_checks = True
                self._sync_gap = cfg.sync_interval * (0.75 + 0.5 * self._rng.random())
                self._sync_checks(now)
                seq = self._next_seq()
                self._cur = ProbeRecord(seq, rec.id, rec, REGULAR, now)
                body = self._body(seq, rec.id, rec)
                if len(body) < 3:
                    body.append([])
                body.append(1)
                self._send(PING, body, rec.id)
                self.stats["pings_sent"] += 1
                self.stats["probes"] += 1
                self.stats["syncs_sent"] += 1
            else:
                if self._mid_checks and self._tombs and now >= self._sync_from + 0.5 * gap:
                    # Tombstones are also checked half-way between syncs: a holder that hears nothing
                    # from across a healed partition finds out at its first check after the heal, and
                    # with checks only at syncs that was up to 1.25 intervals later, too late to revive
                    # within one interval (sim, N=2000, 30 % cut off: p100 13.6 s after the heal).
                    self._mid_checks = False
                    self._sync_checks(now)
                self._cur = self._ping(rec, rec.id, REGULAR, now)
            self._t_ind = now + self._health.scaled(cfg.probe_timeout)

    def _next_target(self, now: float) -> MemberRecord | None:
        """The next member in the shuffled round-robin, skipping those resting as their acks asked
        (membership_pace.py); None if there is none to probe this period."""
        order = self._order
        members = self._members
        n = len(order)
        resting = False
        if self._shuffle:
            self._shuffle = False
            self._rng.shuffle(order)
        for _ in range(n + 1):
            if self._pos >= len(order):
                if len(order) > len(members) + 8:
                    order[:] = [nid for nid in dict.fromkeys(order) if nid in members]
                self._rng.shuffle(order)
                self._pos = 0
                if not order:
                    return None
            nid = order[self._pos]
            self._pos += 1
            rec = members.get(nid)
            if rec is not None:
                if rec.rest > now and rec.state == ALIVE:
                    resting = True
                    continue
                return rec
        if resting:
            self.stats["probes_paced"] += 1  # a period without a periodic probe: every member is resting
        return None

    def _verify_probe(self, nid: bytes, now: float) -> bool:
        """Start a verification (member) or check (tombstone) probe of ``nid``; False if nothing to probe."""
        rec = self._members.get(nid)
        if rec is not None:
            if rec.state != SUSPECT:
                return False
            for p in self._probes.values():
                if p.target == nid:
                    return False
            self.stats["verifications"] += 1
            p = self._ping(rec, nid, VERIFY, now)
            p.ind_at = now + self._health.scaled(self.config.probe_timeout)
            p.end_at = now + self._health.scaled(self.config.probe_interval)
            self._probes[p.seq] = p
            self._push(p.ind_at, T_IND, p)
            self._push(p.end_at, T_END, p)
            return True
        tomb = self._tombs.get(nid)
        if tomb is not None:
            tomb.checked = now
            self.stats["checks"] += 1
            p = self._ping(tomb, nid, CHECK, now)
            # A check is one direct ping with no indirect stage: it fails at the direct-ack deadline, not
            # at the end of a period. A lost check or answer during the probation (section 10) is then
            # retried a second sooner, and a slot held by an unanswered check is free three times sooner.
            p.end_at = now + self._health.scaled(self.config.probe_timeout)
            self._probes[p.seq] = p
            self._push(p.end_at, T_END, p)
            return True
        return False

    def _ping(self, rec: Any, nid: bytes, kind: int, now: float) -> ProbeRecord:
        seq = self._next_seq()
        p = ProbeRecord(seq, nid, rec, kind, now)
        if kind == CHECK:
            # A check goes to a member we buried: our opinion of it (so it refutes if it is back), no news
            # from the queue. Piggybacked rumors count as sends, and after a mass crash a node's checks of
            # the dead took ~40 % of its rumor transmissions.
            self.stats["rumors_sent"] += 1
            self._send(PING, [seq, self.incarnation, [self._opinion(nid, rec)]], nid)
        else:
            self._send(PING, self._body(seq, nid, rec), nid)
        self.stats["pings_sent"] += 1
        self.stats["probes"] += 1
        return p

    def _body(self, seq: int, dst: bytes, about: Any) -> list[Any]:
        """[seq, incarnation] plus the rumors to piggyback; ``about`` is what we hold on ``dst`` (our opinion
        of it travels first, so a suspected or 'dead' node hears it and refutes: Lifeguard's buddy system)."""
        rumors = self._rumors.pick(self.config.piggyback_bytes, dst) if (self._rumors.live or self._leaving) else None
        if about is not None and about.state != ALIVE and (not rumors or self._rumors.wire_of(dst) is None):
            op = self._opinion(dst, about)
            rumors = [op] if not rumors else [op] + rumors
        if rumors:
            self.stats["rumors_sent"] += len(rumors)
            return [seq, self.incarnation, rumors]
        return [seq, self.incarnation]

    def _opinion(self, nid: bytes, about: Any) -> list[Any]:
        if type(about) is MemberRecord:
            s = about.susp
            if s is None:
                return [SUSPECT, nid, about.inc, [self._short]]
            return suspect_wire(nid, about.inc, s.accusers, s.named)
        return [about.state, nid, about.inc]

    def _reply(self, typ: str, seq: int, dst: bytes, rec: Any, pace: int = 0) -> None:
        """Answer ``dst``; an ack asking to be probed at most once every ``pace`` periods carries it 4th."""
        about = rec
        if about is None and self._tombs:
            about = self._tombs.get(dst)
        body = self._body(seq, dst, about)
        if pace:
            if len(body) < 3:
                body.append([])
            body.append(pace)
        self._send(typ, body, dst)

    def _find_probe(self, seq: int) -> ProbeRecord | None:
        cur = self._cur
        if cur is not None and cur.seq == seq:
            return cur
        return self._probes.get(seq)

    def _on_ack(self, src: bytes, seq: int, inc: int, now: float, pace: int = 0) -> None:
        stats = self.stats
        relay = self._relays.get(seq)
        if relay is not None:
            if src == relay.target:
                del self._relays[seq]
                relay.answered = True
                self._send(ACK, [relay.their_seq, self.incarnation], relay.requester)
                stats["acks_forwarded"] += 1
            else:
                stats["acks_unexpected"] += 1
            return
        p = self._find_probe(seq)
        if p is None:
            stats["acks_unmatched"] += 1  # late (after the period), or never ours
            return
        if src == p.target:
            direct = True
        elif p.helpers and src in p.helpers:
            direct = False
        else:
            stats["acks_unexpected"] += 1
            return
        if p is self._cur:
            self._cur = None
            self._t_ind = INF
        else:
            del self._probes[seq]
        self._lhm_add(-1)
        rec = p.rec
        if direct:
            stats["probes_acked"] += 1
            if type(rec) is MemberRecord:
                sample = now - p.sent
                rec.rtt = sample if rec.rtt is None else rec.rtt + self._alpha * (sample - rec.rtt)
                if pace >= 2 and p.kind == REGULAR:
                    # It asked to be probed at most once every pace periods (membership_pace.py).
                    pace = min(pace, self.config.max_pace)
                    rec.rest = p.sent + (pace - 0.5) * self._health.scaled(self.config.probe_interval)
            elif self._tombs.get(p.target) is rec:
                # A dead member answered our check: first-hand, fresh. Revive it.
                self._tomb_heard(p.target, inc, True, now)
        else:
            stats["probes_indirect_acked"] += 1
            # A helper reached it: per SWIM that is as good as our own ack. It clears our suspicion
            # but raises no incarnation (only the node itself can).
            if type(rec) is MemberRecord and rec.state == SUSPECT and self._members.get(rec.id) is rec:
                self._clear(rec)

    def _indirect(self, p: ProbeRecord, now: float) -> None:
        """The direct ping went unanswered: ask helpers to ping the target for us."""
        cfg = self.config
        k = cfg.indirect_checks
        if k <= 0 or p.kind == CHECK:
            return
        rec = p.rec
        members = self._members
        order = self._order
        rng = self._rng
        # Helpers we heard from lately first: they are reachable now. A member cut off by a partition
        # stays alive in our view until its own suspicion runs out; picked as a helper, it cannot
        # reach the target, and a lost direct ping then makes us accuse a member on our own side.
        recent = now - self._health.scaled(cfg.helper_recent_periods * cfg.probe_interval)
        helpers = [nid for nid, h in members.items() if h.heard >= recent and h.state == ALIVE and nid != p.target]
        if len(helpers) > k:
            helpers = rng.sample(helpers, k)
        if len(helpers) < k and order:
            tries = 0
            while len(helpers) < k and tries < 4 * k + 8:
                tries += 1
                nid = order[rng.randrange(len(order))]
                if nid == p.target or nid in helpers:
                    continue
                h = members.get(nid)
                if h is None or h.state != ALIVE:
                    continue
                helpers.append(nid)
        if not helpers:
            return
        p.helpers = tuple(helpers)
        # The helpers nack if the target is silent for 80 % of the time we still wait (until the next
        # period starts, for the periodic probe).
        window = max(0.0, (self._t_probe if p is self._cur else p.end_at) - now)
        window_ms = int(window * 1000)
        contact = rec.contact
        for nid in helpers:
            body = self._body(p.seq, nid, None)
            while len(body) < 3:
                body.append([])
            body.append(contact.public_key)
            body.append(contact.endpoint)
            body.append(window_ms)
            self._send(PING_REQ, body, nid)
            self.stats["ping_reqs_sent"] += 1

    def _probe_end(self, p: ProbeRecord, now: float) -> None:
        """A probe's period ended without an ack."""
        stats = self.stats
        if p.kind == CHECK:
            tomb = self._tombs.get(p.target)
            if tomb is p.rec:
                self._tomb_silent(tomb, p.sent, now)
            return
        rec: MemberRecord = p.rec  # not a check: a member
        if rec.heard >= p.sent and self._members.get(p.target) is rec:
            # It sent us a message since the probe began: it is alive, and our ping or its ack was lost
            # (or, after a heal, the probe began while we were cut off from it). No accusation, and no
            # verdict on our own health either. Sim (N=2000, 30 % cut off 10-40 s): a node at LHM 8 probed
            # a member across the cut at 32.4 s, its 13.5 s period ended at 45.9 s after three pings from
            # the member, and it accused, then declared it 55.9 s: revived 30 s after the heal.
            stats["probes_heard"] += 1
            if rec.state == SUSPECT:
                self._queue_verify(rec.id, now)  # suspected anew after that message: look again
            return
        if p.sent < self._healed_at and self._members.get(p.target) is rec:
            # It began before a buried member answered us (most likely a partition healed): its pings may
            # have crossed a cut that is gone now. Probe again before accusing (section 10). Sim (N=2000,
            # 30 % cut off 10-40 s): a node pinged a member across the cut at 39.2 s, its helpers' pings
            # were cut too, they nacked after the heal, and it accused at 40.3 s; nothing the member sent
            # reached it, and it declared the member dead at 50.3 s (449 such pairs).
            stats["probes_retried"] += 1
            self._probe_again(rec, now)
            return
        if not p.fair:
            # We were stalled while it ran (the stall already counted towards the LHM): no verdict.
            stats["probes_inconclusive"] += 1
            if rec.state == SUSPECT and self._members.get(p.target) is rec:
                self._queue_verify(rec.id, now)  # try again shortly
            return
        # Lifeguard: helpers that did not nack point at us (or our links), not at the target. Only when
        # none of them did: memberlist adds one per missing nack, but a nack lost on a lossy link or a
        # helper that crashed unnoticed then ratchets the LHM up on healthy nodes (sim, edge profile:
        # LHM drifted to 8 under 5 % loss with 20 % of nodes crashing, stretching detection 9x).
        if p.helpers:
            missed = len(p.helpers) - p.nacks
            if missed > 0:
                stats["nacks_missed"] += missed
                if not p.nacks:
                    self._lhm_add(1)
        else:
            self._lhm_add(1)
        if self._members.get(p.target) is not rec:
            return  # removed or declared meanwhile
        stats["probes_failed"] += 1
        self._probe_failed(rec, now)

    def _probe_again(self, rec: MemberRecord, now: float) -> None:
        """Probe ``rec`` again soon, with a full probe: a suspect by verification, an alive member as the
        next of a sweep's probes (within a gossip_interval, a probe slot permitting)."""
        if rec.state == SUSPECT:
            self._queue_verify(rec.id, now)
            return
        sweep = self._sweep
        if rec.id not in sweep:
            sweep.append(rec.id)  # taken from the end: next
        if self._t_verify == INF and not self._leaving:
            self._t_verify = now + self.config.gossip_interval

    def _urgent(self, nid: bytes, now: float) -> None:
        """Verify ``nid`` now if a probe slot is free, else as soon as one is."""
        if len(self._probes) < self.config.max_probes and not self._leaving:
            self._verify.pop(nid, None)
            if not self._verify_probe(nid, now) and nid in self._members:
                self._queue_verify(nid, now)
        else:
            self._queue_verify(nid, now)

    def _queue_verify(self, nid: bytes, now: float) -> None:
        self._verify[nid] = False
        if self._t_verify == INF and not self._leaving:
            self._t_verify = now + self.config.gossip_interval

    def _start_queued(self, now: float) -> None:
        """Start queued verification and check probes while slots are free. Called whenever a slot may
        have freed (after every input and every tick), not only every gossip_interval: after a heal a
        node queues a check of every dead member, ~70 at N=300, and eight per gossip_interval took ~2 s
        to send them all although each was answered within milliseconds (sim, N=300, 30 % cut off:
        first checks of a healed member up to 2.5 s after the heal)."""
        verify = self._verify
        max_probes = self.config.max_probes
        probes = self._probes
        for nid in list(verify):
            if len(probes) >= max_probes:
                break
            del verify[nid]
            self._verify_probe(nid, now)

    def _service_verify(self, now: float) -> None:
        """Start queued verification and check probes while slots are free, and the sweep's next ones."""
        verify = self._verify
        self._start_queued(now)
        sweep = self._sweep
        if sweep:
            self._sweep_some(now)
        self._t_verify = now + self.config.gossip_interval if (verify or sweep) and not self._leaving else INF

    # -- sweeps after mass burials -------------------------------------------------------------------------

    def _buried(self, now: float) -> None:
        """We declared a member dead. Burying sweep_burials within one sync interval means many died at once
        (a mass crash) or a partition cut us off from many: then probe every alive member once, soon. A
        holder that missed the news of a death learns it otherwise only from its own round-robin probe,
        one member per period (sim, N=2000, 20 % crashed at once: up to 90 s after the crash)."""
        cfg = self.config
        k = cfg.sweep_burials
        if k <= 0:
            return
        burials = self._burials
        burials.append(now)
        if len(burials) > k:
            del burials[0]
        if len(burials) < k or burials[0] < now - cfg.sync_interval:
            return
        self._start_sweep(now)

    def _start_sweep(self, now: float) -> None:
        """Probe every alive member once, soon (at most one sweep per sweep_cooldown): many members died at
        once, as our own burials (_buried) or a storm of news about others' dead (Gossip) says."""
        cfg = self.config
        if cfg.sweep_burials <= 0 or now < self._sweep_next or self._leaving:
            return
        self._sweep_next = now + cfg.sweep_cooldown
        sweep = [nid for nid, rec in self._members.items() if rec.state == ALIVE]
        self._rng.shuffle(sweep)
        self._sweep = sweep
        self.stats["sweeps"] += 1
        if self._t_verify == INF:
            self._t_verify = now + cfg.gossip_interval

    def _sweep_some(self, now: float) -> None:
        """Start up to sweep_rate probes of the sweep's next members, in free probe slots."""
        cfg = self.config
        sweep = self._sweep
        members = self._members
        probes = self._probes
        cur = self._cur
        n = cfg.sweep_rate
        while sweep and n > 0 and len(probes) < cfg.max_probes:
            nid = sweep.pop()
            rec = members.get(nid)
            if rec is None or rec.state != ALIVE or (cur is not None and cur.target == nid) \
                    or any(p.target == nid for p in probes.values()):
                continue
            n -= 1
            self.stats["sweep_probes"] += 1
            p = self._ping(rec, nid, REGULAR, now)
            p.ind_at = now + self._health.scaled(cfg.probe_timeout)
            p.end_at = now + self._health.scaled(cfg.probe_interval)
            probes[p.seq] = p
            self._push(p.ind_at, T_IND, p)
            self._push(p.end_at, T_END, p)

    def _remember_contact(self, nid: bytes, contact: Contact) -> None:
        """Where to reach ``nid``, a node we send to without holding it (contact_for); at most max_relays
        such contacts, the oldest forgotten first."""
        contacts = self._far_contacts
        contacts.pop(nid, None)
        contacts[nid] = contact
        if len(contacts) > self.config.max_relays:
            del contacts[next(iter(contacts))]

    # -- probing for others (ping_req) ---------------------------------------------------------------------

    def _on_ping_req(self, src: bytes, seq: int, body: list[Any], now: float) -> None:
        stats = self.stats
        if len(body) < 5:
            stats["malformed"] += 1
            return
        pk = body[3]
        ep = body[4]
        window_ms = body[5] if len(body) > 5 else None
        if type(pk) is not bytes or len(pk) != PUBLIC_KEY_LEN or type(ep) is not str or not ep \
                or len(ep) > MAX_ENDPOINT_LEN or (window_ms is not None and (type(window_ms) is not int
                                                                            or not 0 <= window_ms <= 600_000)):
            stats["malformed"] += 1
            return
        target = node_id_of(pk)
        if target == self.node_id or target == src:
            stats["malformed"] += 1
            return
        cfg = self.config
        if len(self._relays) >= cfg.max_relays:
            stats["relay_limit"] += 1
            self._send(NACK, [seq, self.incarnation], src)  # say so at once: the requester must not blame itself
            stats["nacks_sent"] += 1
            return
        window = cfg.probe_interval - cfg.probe_timeout if window_ms is None else window_ms / 1000
        # Nack once the target has been silent for our own probe timeout (or 80 % of the requester's
        # remaining wait, if shorter), so the requester can conclude before its period ends.
        wait = self._health.scaled(cfg.probe_timeout)
        if wait > 0.8 * window:
            wait = 0.8 * window
        mine = self._next_seq()
        relay = RelayRecord(mine, src, seq, target, now + wait, now + window)
        self._relays[mine] = relay
        self._push(relay.nack_at, T_NACK, relay)
        self._push(relay.end_at, T_RELAY_END, relay)
        stats["relays"] += 1
        rec: MemberRecord | Tombstone | None = self._members.get(target)
        if rec is None:
            self._remember_contact(target, Contact(pk, ep))
            if self._tombs:
                rec = self._tombs.get(target)
        self._send(PING, self._body(mine, target, rec), target)
        stats["pings_sent"] += 1
