"""Membership and failure detection: SWIM with the Lifeguard refinements, over a partial view (sans-IO).

The wire rules are in ``protocols/membership.md``. References: Das, Gupta, Motivala, "SWIM: Scalable
Weakly-consistent Infection-style Process Group Membership Protocol" (DSN 2002); Dadgar, Phillips,
Currey, "Lifeguard: Local Health Awareness for More Accurate Failure Detection" (2018, arXiv:1707.00788).

The core does not own the routing table. It keeps one compact record per contact it is told about
(:meth:`Membership.add` / :meth:`Membership.remove`, called by the table owner as contacts enter and
leave the table: O(k log N) members per node, never O(N)) and reports what it learns as events:
:class:`Alive`, :class:`Suspect`, :class:`Failed` (confirmed dead: the owner drops the contact and
promotes a replacement, which it then ``add``\\ s), :class:`Left` and :class:`Refuted`.

How it decides, in short:

* **Probing.** Every protocol period (``probe_interval``) one member, taken in shuffled round-robin
  order, gets a ``swim.ping``. No ``swim.ack`` within ``probe_timeout``: ``indirect_checks`` other
  members are asked to ping it (``swim.ping_req``); each answers with the target's ack or a
  ``swim.nack``. Still nothing by the end of the period: the probe failed and the member becomes
  *suspect* (a rumor, see below).
* **Verification before death.** A suspicion heard from someone else never kills a member by
  itself: the hearer probes the suspect on its own (suspects go to the front of the probe queue).
  Only a node whose own probe failed may declare the member dead, when its suspicion timeout runs
  out; a ``dead`` rumor is acted on at once only by nodes whose own probe of that member failed,
  others verify first. A forged ``dead`` rumor about a live node therefore kills nothing: every holder
  asks the node, the node answers (and refutes).
* **Refutation is first-hand.** A node's incarnation number is raised only by the node itself
  (when it hears it is suspected, declared dead or said to have left), and only its own authenticated
  messages (``src``, checked by the transport) change what others record: every ``swim.*`` body
  carries the sender's incarnation, and any message from a member is proof it is alive. An ``alive``
  rumor relayed by a third party is a *hint* that makes holders check the subject directly; a node
  cannot refute for another node. So a suspect also sends its refutation to its accusers directly: those
  it holds, and the one each suspect rumor names by its contact.
* **Lifeguard.** A local health multiplier (LHM, 0..``lhm_max``) rises when a probe fails and none
  of the helpers nacked (nothing shows the network was at fault), when we have to refute a
  suspicion of ourselves, and when our timers fire late (we were paused); it falls with every acked
  probe. The probe interval and probe timeout are stretched by ``1 + LHM``: a slow node probes less.
  While a node notices it was stalled, the probes in flight are *inconclusive* (no accusation) and
  suspicion expiries wait until it has read its input. The suspicion timeout starts at
  ``suspicion_max`` and shrinks towards ``suspicion_min`` as independent accusers confirm the
  suspicion (their ids travel in the suspect rumor).
* **Rumors** (``alive`` / ``suspect`` / ``dead`` / ``left``) ride on every outgoing message, fewest
  transmissions first, within a byte budget; each is sent at most ``ceil(retransmit_mult *
  log10(N + 1))`` times by each node. A fresh rumor is also pushed once (``swim.gossip``) to
  ``gossip_fanout`` random members if we hold its subject, to ``relay_fanout`` if we merely relay
  it. Rumors about nodes we do not hold are relayed too (partial views), deduplicated by
  (subject, incarnation, kind) in a bounded memory, for at most ``foreign_limit`` such nodes per
  ``foreign_window``: after a mass crash holders find their dead by sweeping. A node that sends us
  old news about a member we buried is told directly.
* **Anti-entropy.** Every ``sync_interval`` the periodic ping asks its target (a random member) for
  its recent rumors, which come back in the ack: a rumor lost to us is repaired within about one
  interval, at no extra message. Dead members are remembered as bounded tombstones and re-checked
  on the same schedule (all of them as soon as one answers), so a healed partition reconnects: the
  far side answers two checks, is revived (``Alive``) and learns what we thought of it. A probe that
  began before such a first answer, and a probe whose member messaged us since it began, accuse nobody.
* **Leave.** :meth:`Membership.leave` sends a ``left`` rumor to every member at once and keeps
  answering; holders report :class:`Left`, never :class:`Failed`.

Everything a peer sends is validated; malformed input is counted in ``stats`` and dropped, never
raised, and every buffer has a bound whose hits are counted.

Eight modules. This one is the SWIM state machine (:class:`Membership`): the owner's calls, what
comes in and when timers fire, and every transition of a member's state, in one section under a table
of them. Its two working parts are mixins over the same state: :mod:`~zmqagents.core.membership_probing`
(:class:`~zmqagents.core.membership_probing.Prober`: periodic, verification, check and indirect probes,
probing for others, the timer heap) and :mod:`~zmqagents.core.membership_gossip`
(:class:`~zmqagents.core.membership_gossip.Gossip`: rumors in and out, gossip pushes, anti-entropy);
both only observe and report to the transitions here. Beside them: :mod:`~zmqagents.core.membership_records`
(message types, states, limits, counters, the per-member/probe/relay/tombstone records);
:mod:`~zmqagents.core.membership_config` (:class:`MembershipConfig`, :data:`PROFILES`);
:mod:`~zmqagents.core.membership_events` (what it reports); :mod:`~zmqagents.core.membership_rumors`
(the rumor queue, the dedup memory, the sync log); and :mod:`~zmqagents.core.membership_lifeguard`
(suspicion timeouts and local health). Every public name is importable from here.
"""

from __future__ import annotations

import heapq
import random
from typing import Any, Iterator

from ..envelope import Envelope
from ..identity import Contact, node_id_of
from .membership_config import PROFILES, MembershipConfig
from .membership_events import Alive, Failed, Left, Refuted, Suspect
from .membership_gossip import Gossip
from .membership_lifeguard import LocalHealth, Suspicion, SuspicionTimeouts
from .membership_pace import InboundPace
from .membership_probing import Prober
from .membership_records import (
    ACK, GOSSIP, INF, MAX_INCARNATION, NACK, PING, PING_REQ, SHORT_ID_LEN, STAT_KEYS, STATE_NAMES, T_IND,
    T_END, T_NACK, T_RECHECK, T_RELAY_END, T_SUSP, TYPES, MemberRecord, ProbeRecord, RelayRecord, Tombstone,
)
from .membership_rumors import ALIVE, DEAD, LEFT, SUSPECT, RumorQueue, rumor_size, suspect_wire
from .outputs import CoreOutputs

__all__ = [
    "PING", "ACK", "PING_REQ", "NACK", "GOSSIP", "TYPES", "ALIVE", "SUSPECT", "DEAD", "LEFT",
    "STATE_NAMES", "MembershipConfig", "PROFILES", "Membership", "Alive", "Suspect", "Failed", "Left",
    "Refuted", "STAT_KEYS",
]


class Membership(Prober, Gossip, CoreOutputs):
    """The SWIM/Lifeguard core of one node. Call a method, then drain take_outgoing() and take_events().

    ``contact`` is this node's own contact (alive rumors about us carry it). ``now`` is any monotonic
    clock in seconds, the same one for every call. ``incarnation`` lets a restarted node start above
    what it used before (e.g. persisted, or derived from the wall clock); 0 is fine otherwise.
    """

    def __init__(self, contact: Contact, rng: random.Random, config: MembershipConfig | None = None, *,
                 incarnation: int = 0):
        self.config = cfg = config or MembershipConfig()
        self.contact = contact
        self.node_id: bytes = node_id_of(contact.public_key)
        self._short = self.node_id[:SHORT_ID_LEN]
        self._rng = rng
        self.incarnation = incarnation
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._health = LocalHealth(cfg.lhm_max)
        self._timeouts = SuspicionTimeouts(cfg)
        self._rumors = RumorQueue(self.node_id, cfg, self.stats)
        self._members: dict[bytes, MemberRecord] = {}
        self._order: list[bytes] = []  # probe order (shuffled each round); stale ids are skipped
        self._pos = 0
        self._shuffle = False
        self._tombs: dict[bytes, Tombstone] = {}
        self._n_override: int | None = None
        # probing
        self._seq = 0
        self._cur: ProbeRecord | None = None  # the periodic probe in flight
        self._probes: dict[int, ProbeRecord] = {}  # verification / check probes in flight
        self._verify: dict[bytes, bool] = {}  # ids to probe first (value: urgent)
        self._relays: dict[int, RelayRecord] = {}
        # Contacts of nodes we send to but do not hold (targets of pings we relay for others, accusers we
        # refute to), so the shell can route to them (contact_for); at most max_relays, oldest dropped first.
        self._far_contacts: dict[bytes, Contact] = {}
        self._named = [contact.public_key, contact.endpoint]  # how our suspect rumors name us (5.1)
        # Accusers told of our latest refutation, by short id (True: sent; False: we could not reach it);
        # at most K + 1 sends per refutation (section 7).
        self._told: dict[bytes, bool] = {}
        self._heap: list[Any] = []
        self._pace = InboundPace(cfg.probe_budget, cfg.max_pace, cfg.probe_interval)
        self._hn = 0
        self._t_probe = INF
        self._t_ind = INF
        self._t_gossip = INF
        # The period and the sync interval are stretched by the LHM *now*, not the LHM when they began:
        # a node that was isolated (LHM 8: a 13.5 s period, a 90 s sync) and then heals must not wait
        # out deadlines it set while cut off (sim, N=700, 30 % cut off for 30 s: syncs due 50-100 s
        # after the heal, and the tombstones they would have re-checked stayed dead to the end).
        self._probe_from = 0.0  # when the current period began
        self._sync_from = INF  # when the last sync was sent (start: when we started)
        self._sync_gap = 0.0  # sync_interval x its jitter; due at _sync_from + _sync_gap x (1 + LHM)
        self._mid_checks = False  # the tombstone checks half-way to the next sync are still to come
        self._t_verify = INF
        self._burials: list[float] = []  # when our last sweep_burials declarations were (oldest first)
        self._sweep: list[bytes] = []  # members still to probe in the current sweep (popped from the end)
        self._sweep_next = -INF  # no sweep starts before this
        # Until when a failed tombstone check is retried every period: one sync interval after the last
        # time a dead member answered a first check (most likely a partition healed), see _tomb_silent.
        self._heal_until = -INF
        self._healed_at = -INF  # when a dead member last answered a first check (a probe begun earlier is retried)
        self._started = False
        self._leaving = False
        self._left_wire: list[Any] | None = None
        CoreOutputs.__init__(self)
        self._alpha = cfg.rtt_alpha

    # -- the owner's side ----------------------------------------------------------------------------------

    def add(self, contact: Contact, now: float, incarnation: int = 0) -> bool:
        """Start probing ``contact`` (it entered the table). False if it is us, already held, or refused
        by the max_members bound. An endpoint change of a held member is taken over."""
        nid = node_id_of(contact.public_key)
        if nid == self.node_id:
            return False
        members = self._members
        rec = members.get(nid)
        if rec is not None:
            if rec.contact.endpoint != contact.endpoint:
                rec.contact = contact
            return False
        if len(members) >= self.config.max_members:
            self.stats["members_refused"] += 1
            return False
        self._admit(nid, contact, incarnation)
        order = self._order
        pos = self._pos
        if pos == 0:
            order.append(nid)  # the round has not begun: it is shuffled before use
            self._shuffle = True
        else:
            # Somewhere in the rest of this round, so a newcomer is probed within one round.
            order.insert(pos + int(self._rng.random() * (len(order) - pos + 1)), nid)
        if self._n_override is None:
            self._resize()
        if not self._started:
            self._start(now)
        elif self._t_probe == INF and not self._leaving:
            self._t_probe = now + self._rng.random() * self._health.scaled(self.config.probe_interval)
            self._probe_from = self._t_probe - self._health.scaled(self.config.probe_interval)
        return True

    def remove(self, node_id: bytes) -> bool:
        """Stop probing ``node_id`` (it left the table). Tombstones of dead members are kept."""
        if not self._drop(node_id):
            return False
        self._resize()
        return True

    def set_network_size(self, n: int | None) -> None:
        """An estimate of the mesh size N (e.g. from the routing table's depth); it sets the rumor
        transmit limit. Default: the number of members + 1, right for a full view."""
        self._n_override = None if n is None else max(1, int(n))
        self._resize()

    def leave(self, now: float) -> float:
        """Leave gracefully: tell every member at once, stop probing, keep answering. Returns the time
        until which the node should keep running so the rumor spreads (``leave_linger`` from now)."""
        if not self._leaving:
            self._leaving = True
            self._left_wire = [LEFT, self.node_id, self.incarnation]
            self._rumors.pin(self._left_wire)
            self._enqueue(self.node_id, self.incarnation * 4 + LEFT, self._left_wire, 40, now)
            self._cur = None
            self._t_ind = INF
            self._t_probe = INF
            self._probes.clear()
            self._verify.clear()
            self._sweep.clear()
            self._t_verify = INF
            for nid in list(self._members):
                self._send(GOSSIP, [0, self.incarnation, self._rumors.pick(self.config.piggyback_bytes, nid)], nid)
                self.stats["gossips_sent"] += 1
        return now + self.config.leave_linger

    @property
    def leaving(self) -> bool:
        return self._leaving

    @property
    def local_health(self) -> int:
        """Lifeguard's local health multiplier (0 = healthy .. lhm_max); timeouts scale by 1 + this."""
        return self._health.value

    def contact_for(self, node_id: bytes) -> Contact | None:
        """Where to send an envelope this core addressed to ``node_id``: a member's contact, or that of
        a node we were asked to ping for someone else or send our refutation to (which the shell may
        never have met)."""
        rec = self._members.get(node_id)
        if rec is not None:
            return rec.contact
        return self._far_contacts.get(node_id)

    def rtt(self, node_id: bytes) -> float | None:
        """Smoothed round-trip time of our direct probes of ``node_id`` (s), None if never measured."""
        rec = self._members.get(node_id)
        return None if rec is None else rec.rtt

    def members(self) -> Iterator[tuple[bytes, str, int, float | None]]:
        """(node_id, state name, incarnation, rtt) of every member held (alive or suspect)."""
        for rec in self._members.values():
            yield rec.id, STATE_NAMES[rec.state], rec.inc, rec.rtt

    def state_of(self, node_id: bytes) -> str | None:
        """"alive"/"suspect" for a member, "dead"/"left" for a tombstone, None if unknown."""
        rec = self._members.get(node_id)
        if rec is not None:
            return STATE_NAMES[rec.state]
        tomb = self._tombs.get(node_id)
        return None if tomb is None else STATE_NAMES[tomb.state]

    def incarnation_of(self, node_id: bytes) -> int | None:
        rec = self._members.get(node_id)
        if rec is not None:
            return rec.inc
        tomb = self._tombs.get(node_id)
        return None if tomb is None else tomb.inc

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._members

    def __len__(self) -> int:
        return len(self._members)

    def tombstones(self) -> Iterator[tuple[bytes, str, int]]:
        """(node_id, "dead" or "left", incarnation) of the dead members remembered (bounded)."""
        for nid, t in self._tombs.items():
            yield nid, STATE_NAMES[t.state], t.inc

    @property
    def pending_rumors(self) -> int:
        return self._rumors.live

    @property
    def transmit_limit(self) -> int:
        return self._rumors.limit

    # -- rumors for other cores' messages ------------------------------------------------------------------

    def piggyback(self, budget_bytes: int, dst: bytes | None = None) -> list[Any]:
        """Rumors to carry on another core's message to ``dst`` (counted as transmissions); [] if none.
        The receiver hands them to its own :meth:`absorb`."""
        out = self._rumors.pick(budget_bytes, dst)
        if out:
            self.stats["rumors_sent"] += len(out)
            return out
        return []

    def absorb(self, rumors: Any, now: float, src: bytes | None = None) -> None:
        """Rumors that came on another core's message from ``src`` (authenticated). Bad input is counted."""
        self._absorb(rumors, src, now)

    # -- network side --------------------------------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """Process one swim.* envelope whose ``src`` the transport authenticated. Never raises on bad input."""
        stats = self.stats
        stats["received"] += 1
        body = env.body
        if type(body) is not list or len(body) < 2:
            stats["malformed"] += 1
            return
        seq = body[0]
        inc = body[1]
        if type(seq) is not int or type(inc) is not int or seq < 0 or not 0 <= inc <= MAX_INCARNATION:
            stats["malformed"] += 1
            return
        src = env.src
        if src == self.node_id:
            stats["from_self"] += 1
            return
        if env.dst != self.node_id and env.dst is not None:
            stats["misdirected"] += 1
            return
        typ = env.type
        if typ not in TYPES:
            stats["unknown_type"] += 1
            return
        if not self._started:
            self._start(now)
        if len(body) > 2:
            rumors = body[2]
            if rumors:
                self._absorb(rumors, src, now)
        # Any message from a node is first-hand proof that it is alive, with its own incarnation.
        rec = self._members.get(src)
        if rec is not None:
            rec.heard = now
            if rec.state != ALIVE or inc > rec.inc:
                self._firsthand(rec, inc)
        elif self._tombs and src in self._tombs:
            self._tomb_heard(src, inc, False, now)
        if typ == PING:
            self._pace.heard(src, now)
            pace = self._pace.pace(now)
            if len(body) > 3 and body[3] == 1:
                # A sync: answer with our recent rumors (anti-entropy rides on the probe).
                ack = [seq, self.incarnation, self._sync_rumors(now, src)]
                if pace:
                    ack.append(pace)
                self._send(ACK, ack, src)
                stats["syncs_answered"] += 1
            else:
                self._reply(ACK, seq, src, rec, pace)
            if pace:
                stats["paced_acks"] += 1
            stats["acks_sent"] += 1
        elif typ == ACK:
            pace = body[3] if len(body) > 3 else 0
            self._on_ack(src, seq, inc, now, pace if type(pace) is int else 0)
        elif typ == NACK:
            p = self._find_probe(seq)
            if p is not None and p.helpers and src in p.helpers:
                p.nacks += 1
                stats["nacks_received"] += 1
                if p.nacks >= len(p.helpers):
                    # Every helper tried and failed: nothing more will come, conclude now.
                    if p is self._cur:
                        self._cur = None
                        self._t_ind = INF
                    else:
                        del self._probes[p.seq]
                    self._probe_end(p, now)
            else:
                stats["acks_unmatched"] += 1
        elif typ == PING_REQ:
            self._on_ping_req(src, seq, body, now)
        # GOSSIP: the rumors were all it carried
        if self._verify and len(self._probes) < self.config.max_probes and not self._leaving:
            self._start_queued(now)  # an answer freed a slot, or news queued a probe

    def tick(self, now: float) -> None:
        """Fire every timer due by ``now``."""
        due = self._due()
        if due > now:
            return
        stalled = now - due > self.config.stall_threshold
        if stalled:
            self.stats["stalls"] += 1
            self._lhm_add(1)
            if self._cur is not None:
                self._cur.fair = False
            for p in self._probes.values():
                p.fair = False
        if self._t_probe <= now:
            self._probe_tick(now, stalled)
        if self._t_ind <= now:
            self._t_ind = INF
            if self._cur is not None:
                self._indirect(self._cur, now)
        if self._t_verify <= now:
            self._service_verify(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, kind, obj = heapq.heappop(heap)
            # The entry's kind says what obj is (typed locals for mypy; the checks narrow nothing at run time).
            if kind == T_IND:
                probe: ProbeRecord = obj
                if probe.ind_at == t and self._probes.get(probe.seq) is probe:
                    self._indirect(probe, now)
            elif kind == T_END:
                probe = obj
                if probe.end_at == t and self._probes.get(probe.seq) is probe:
                    del self._probes[probe.seq]
                    self._probe_end(probe, now)
            elif kind == T_SUSP:
                susp: Suspicion = obj
                if susp.due == t and susp.rec.susp is susp:
                    self._suspicion_due(susp, now, stalled)
            elif kind == T_NACK:
                relay: RelayRecord = obj
                if relay.nack_at == t and not relay.answered and self._relays.get(relay.seq) is relay:
                    self._send(NACK, [relay.their_seq, self.incarnation], relay.requester)
                    self.stats["nacks_sent"] += 1
            elif kind == T_RELAY_END:
                relay = obj
                if self._relays.get(relay.seq) is relay:
                    del self._relays[relay.seq]
            elif kind == T_RECHECK:
                tomb: Tombstone = obj
                if tomb.recheck == t and self._tombs.get(tomb.id) is tomb:
                    tomb.recheck = INF
                    self._urgent(tomb.id, now)
        if self._t_gossip <= now:
            self._gossip(now)
        if self._verify and len(self._probes) < self.config.max_probes and not self._leaving:
            self._start_queued(now)  # a probe ended and freed a slot

    def next_timer(self) -> float | None:
        t = self._due()
        return None if t == INF else t


    def _lhm_add(self, delta: int) -> None:
        old = self._health.value
        self._health.add(delta)
        v = self._health.value
        if v < old and self._cur is None and self._t_probe < INF:
            # Healthier: the next period starts sooner (the period in flight has no probe to cut short).
            t = self._probe_from + self.config.probe_interval * (1 + v)
            if t < self._t_probe:
                self._t_probe = t

    def _start(self, now: float) -> None:
        """First contact with the clock: random phases, so nodes started together do not probe in step."""
        self._started = True
        cfg = self.config
        rng = self._rng
        if self._members and not self._leaving:
            self._t_probe = now + rng.random() * cfg.probe_interval
            self._probe_from = self._t_probe - self._health.scaled(cfg.probe_interval)
        self._sync_from = now
        self._sync_gap = (0.5 + rng.random()) * cfg.sync_interval

    # -- member states: every transition of a member lives here --------------------------------------------

    # Member states, and what moves a node from one to another (h11's rule: every transition is here; the
    # rest of the class only observes and calls these). A member is held while the owner's table holds it;
    # a tombstone remembers a dead or left member (bounded, for tombstone_ttl).
    #
    #   (none) or tombstone -> ALIVE   _admit: the owner adds the contact (a tombstone's incarnation carries over)
    #   ALIVE -> SUSPECT               _suspect: our probe failed (_probe_failed), or a suspect, dead or left
    #                                  rumor was heard (_member_news: hearsay, verified by our own probe)
    #   SUSPECT -> SUSPECT             _suspect again at a higher incarnation; _confirm adds accusers
    #   SUSPECT -> ALIVE               _clear: first-hand word from it (_firsthand) or a helper's ack
    #   SUSPECT -> DEAD / LEFT         _declare: the timeout ran out after our probe failed (_suspicion_due),
    #                                  our probe failed after such a rumor or timeout (_probe_failed), or such
    #                                  a rumor came once our probe had failed (_member_news)
    #   ALIVE/SUSPECT -> LEFT          _declare: its own left rumor (_member_news)
    #   tombstone -> ALIVE (revived)   _tomb_heard: it answered two of our checks, two periods apart
    #   member -> (none)               _drop: the owner removed it
    #   tombstone -> (none)            _expire_tombs (tombstone_ttl), or evicted by a newer one (_declare)
    #   us: incarnation + 1            _about_me: we refute a suspicion, death or leave of ourselves

    def _admit(self, nid: bytes, contact: Contact, incarnation: int) -> MemberRecord:
        """A member from the owner's table: alive, at least at the incarnation its tombstone had."""
        tomb = self._tombs.pop(nid, None) if self._tombs else None
        if tomb is not None and tomb.inc > incarnation:
            incarnation = tomb.inc
        rec = MemberRecord(nid, contact, incarnation)
        self._members[nid] = rec
        return rec

    def _drop(self, nid: bytes) -> bool:
        """The owner removed the member (its tombstone, if any, stays). False if it was not held."""
        rec = self._members.pop(nid, None)
        if rec is None:
            return False
        rec.susp = None
        self._verify.pop(nid, None)
        return True

    def _suspect(self, rec: MemberRecord, inc: int, accusers: Any, now: float, ours: bool, final: int = SUSPECT,
                 named: list[Any] | None = None) -> None:
        """Mark ``rec`` suspect at ``inc``. ``ours``: our own probe failed (we accuse, and tell everyone);
        else ``named`` is the accuser the rumor named, which our own rumor names in turn."""
        s = Suspicion(rec, inc, now)
        s.final = final
        s.named = named
        rec.state = SUSPECT
        rec.inc = inc
        rec.susp = s
        if accusers:
            self._timeouts.add_accusers(s, accusers)
        self.stats["suspected"] += 1
        self._events.append(Suspect(rec.id, inc))
        if ours:
            s.verified = True
            self._timeouts.accuse(s, self._short)
            s.named = self._named
            wire = suspect_wire(rec.id, inc, s.accusers, s.named)
            self._rumors.remember(rec.id, inc * 4 + SUSPECT)
            self._enqueue(rec.id, inc * 4 + SUSPECT, wire, rumor_size(wire), now)
            # Tell the suspect too (section 7): if it is up, it refutes to us at once. Otherwise only the
            # rumor tells it, and it may never reach it (sim, N=2000, 1 % loss: a probe lost all four of
            # its paths, no copy of the suspicion reached the suspect in 10 s, and it was declared dead).
            self._send(GOSSIP, [0, self.incarnation, [wire]], rec.id)
            self.stats["suspects_told"] += 1
        else:
            # Hearsay: check it ourselves, at once (a probe slot permitting; else next period).
            self._urgent(rec.id, now)
        self._arm_suspicion(s, now)

    def _arm_suspicion(self, s: Suspicion, now: float) -> None:
        due = self._timeouts.due(s, now)
        if due != s.due:
            s.due = due
            self._push(due, T_SUSP, s)

    def _confirm(self, s: Suspicion, accusers: Any, now: float, named: list[Any] | None = None) -> bool:
        """Add accusers (one short id: our own confirmation, or a list from a rumor naming ``named``) to a
        suspicion; True if it grew. A grown suspicion's rumor, if we still send it, carries the grown
        list and names the latest accuser: us, or the one the rumor named."""
        grew = self._timeouts.add_accusers(s, accusers)
        if grew:
            self.stats["confirmations"] += 1
            self._arm_suspicion(s, now)
            rec = s.rec
            code = s.inc * 4 + SUSPECT
            ours = type(accusers) is bytes
            if ours:
                s.named = self._named
            elif named is not None:
                s.named = named
            wire = suspect_wire(rec.id, s.inc, s.accusers, s.named)
            if self._rumors.merge(rec.id, code, wire):
                push = self.config.gossip_transmits
                if ours and push > 0 and self._rumors.rewind(rec.id, push - 1):
                    # Our own confirmation: push the grown list once more, so the accusers' and the
                    # other holders' timers shrink now rather than when it drifts in on probes.
                    self._arm_gossip(now)
            elif ours:
                # Our own confirmation of a rumor we no longer send: pass it on once more.
                self._enqueue(rec.id, code, wire, rumor_size(wire), now)
        return grew

    def _suspicion_due(self, s: Suspicion, now: float, stalled: bool) -> None:
        rec = s.rec
        if stalled:
            # We were not running: what we have not read yet may clear it. Look again shortly.
            s.due = now + self.config.probe_timeout
            self._push(s.due, T_SUSP, s)
            return
        if not s.verified:
            # Never declare on hearsay alone: probe it now, declare if that fails.
            s.expired = True
            s.due = INF
            self._urgent(rec.id, now)
            return
        self._declare(rec, LEFT if s.final == LEFT else DEAD, now)

    def _probe_failed(self, rec: MemberRecord, now: float) -> None:
        """Our own probe of a member failed (a fair one: we were not stalled)."""
        if rec.state == ALIVE:
            self._suspect(rec, rec.inc, None, now, True)
            return
        s = rec.susp
        assert s is not None  # not alive: suspected, and a suspect has its suspicion
        if not s.verified:
            s.verified = True
            self._confirm(s, self._short, now)
        if s.final != SUSPECT or s.expired:
            if s.final == DEAD or s.final == SUSPECT:
                self.stats["dead_verified"] += 1
            self._declare(rec, LEFT if s.final == LEFT else DEAD, now)

    def _clear(self, rec: MemberRecord) -> None:
        rec.state = ALIVE
        rec.susp = None
        self._verify.pop(rec.id, None)
        self.stats["suspicions_cleared"] += 1
        self._events.append(Alive(rec.contact, rec.inc))

    def _firsthand(self, rec: MemberRecord, inc: int) -> None:
        """A message from the member itself: it is alive, at (at least) this incarnation."""
        if inc > rec.inc:
            rec.inc = inc
        if rec.state == SUSPECT:
            self._clear(rec)

    def _declare(self, rec: MemberRecord, state: int, now: float) -> None:
        """The member is dead (or left): tombstone it, tell the owner and everyone."""
        nid = rec.id
        if self._members.get(nid) is not rec:
            return
        del self._members[nid]
        rec.state = state
        rec.susp = None
        self._verify.pop(nid, None)
        tombs = self._tombs
        cfg = self.config
        if len(tombs) >= cfg.max_tombstones:
            del tombs[next(iter(tombs))]
            self.stats["tombstones_evicted"] += 1
        tomb = tombs[nid] = Tombstone(nid, rec.contact, state, rec.inc, now)
        if state == DEAD and now < self._heal_until:
            # Buried soon after a dead member answered (most likely a partition healed): a suspicion
            # begun while cut off may have run out. Check it a period from now, not at the next sync.
            tomb.recheck = now + cfg.probe_interval
            self._push(tomb.recheck, T_RECHECK, tomb)
        code = rec.inc * 4 + state
        if state == DEAD:
            self.stats["declared_dead"] += 1
            self._events.append(Failed(nid, rec.inc))
            wire = [DEAD, nid, rec.inc]
            self._buried(now)
        else:
            self.stats["declared_left"] += 1
            self._events.append(Left(nid, rec.inc))
            wire = [LEFT, nid, rec.inc]
        self._rumors.remember(nid, code)
        self._enqueue(nid, code, wire, 40, now)
        self._resize()

    def _tomb_heard(self, nid: bytes, inc: int, fresh: bool, now: float) -> None:
        """First-hand word from a tombstoned node. Only answers to our own check probes (``fresh``)
        revive it, two of them at least two periods apart: a message it sends on its own (it woke
        from a stall, it refuted, it pinged us) makes us check it, at most once per period (later if
        we checked it less than a period ago). So a node that is
        stalled most of the time is not revived and buried again every time it stirs; one that is
        really back is revived ~2 periods after it answers. A left node must also come back at a
        higher incarnation (it rejoined)."""
        tomb = self._tombs[nid]
        if not fresh:
            tomb.heard = now
        if not fresh or (tomb.state == LEFT and inc <= tomb.inc):
            if (tomb.state == DEAD or inc > tomb.inc) and nid not in self._verify and tomb.recheck == INF:
                due = tomb.checked + self.config.probe_interval
                if now >= due:
                    self._queue_verify(nid, now)
                else:
                    # Checked less than a period ago (that check may have been lost, or be in flight):
                    # check again when the period is over rather than wait for the next sync.
                    tomb.recheck = due
                    self._push(due, T_RECHECK, tomb)
            return
        gap = 2 * self.config.probe_interval
        # A confirming check may be sent up to 3 gaps after the first answer (_tomb_silent); its answer
        # comes within a period of that.
        if tomb.passed is None or now - tomb.passed > 3 * gap + self.config.probe_interval:
            # First answer: on probation. Check again in two periods; a node stalled most of the time
            # fails that one, and is not revived just to be buried again (flapping).
            tomb.passed = now
            tomb.recheck = now + gap
            self._push(tomb.recheck, T_RECHECK, tomb)
            if tomb.state == DEAD:
                heal = now + self.config.sync_interval
                if heal > self._heal_until:
                    self._heal_until = heal
                self._healed_at = now
                # A dead member answers: most likely a partition healed. Check the others now, and
                # verify the members we suspect: a suspicion begun while we were cut off would
                # otherwise run out and bury a member that is back (sim, N=40, 25 % cut off: 8 %
                # of the pairs buried across the cut were buried after the heal).
                for other, t in self._tombs.items():
                    if t.state == DEAD and other not in self._verify and t.passed is None:
                        self._queue_verify(other, now)
                for rec in self._members.values():
                    if rec.state == SUSPECT and rec.id not in self._verify:
                        self._queue_verify(rec.id, now)
            return
        if now - tomb.passed < 0.9 * gap:
            # An early answer (to a check sent before the first was answered): the second check
            # decides; make sure one is coming.
            if tomb.recheck == INF:
                tomb.recheck = tomb.passed + gap
                self._push(tomb.recheck, T_RECHECK, tomb)
            return
        del self._tombs[nid]
        self.stats["revived"] += 1
        self._events.append(Alive(tomb.contact, max(inc, tomb.inc)))

    def _tomb_silent(self, tomb: Tombstone, sent: float, now: float) -> None:
        """A dead member stayed silent to our check (sent at ``sent``). If it answered a check lately, this
        one may just have been lost (a check is one direct ping): try again now, while that answer still
        counts (revival needs a second check sent within 3 gaps of the first answer, and answered within
        a period of that, see _tomb_heard). Else its probation starts over. Sim (N=150, 30 % cut off,
        1 % loss): a lost confirming check left a healed member dead until the next sync, 10 s later,
        sometimes twice in a row. Soon after a heal, a lost check is retried about once a period rather
        than at the next sync (sim, N=2000, 30 % cut off: a pair revived 21 s after the heal)."""
        passed = tomb.passed
        if passed is not None:
            if passed >= sent:
                return  # a later check was answered: this silence is old news
            gap = 2 * self.config.probe_interval
            retry = max(now, passed + gap)
            if retry - passed <= 3 * gap:
                tomb.recheck = retry
                self._push(retry, T_RECHECK, tomb)
                return
        tomb.passed = None
        tomb.recheck = INF
        if tomb.state == DEAD and now < self._heal_until and tomb.id not in self._verify:
            # Soon after a heal: check again a period after this check was sent, not at the next sync (a
            # check fails at the direct-ack deadline, so that is later than now); at once if it sent us
            # something since: it is up, so the ping or its answer was lost (sim, N=150: three losses in
            # a row, each waited a period, and a pair was revived 6.2 s after the heal).
            retry = sent + self._health.scaled(self.config.probe_interval)
            tomb.recheck = now if tomb.heard >= sent or retry < now else retry
            self._push(tomb.recheck, T_RECHECK, tomb)

    def _expire_tombs(self, now: float) -> None:
        """Forget the tombstones older than tombstone_ttl."""
        tombs = self._tombs
        expire = now - self.config.tombstone_ttl
        for nid in [nid for nid, t in tombs.items() if t.since < expire]:
            del tombs[nid]

    def _member_news(self, rec: MemberRecord, kind: int, inc: int, wire: list[Any], direct: bool, now: float) -> bool:
        """A rumor about a member that is news to our dedup memory. Returns whether to forward it."""
        stats = self.stats
        if inc < rec.inc:
            stats["rumors_stale"] += 1
            return False
        if kind == ALIVE:
            if direct:
                if wire[3] != rec.contact.endpoint:
                    rec.contact = Contact(wire[2], wire[3])
                self._firsthand(rec, inc)
                return True
            if inc > rec.inc or rec.state != ALIVE:
                # Hearsay: the node says it refuted. Only its own word counts; go and ask it.
                stats["alive_hints"] += 1
                if rec.state == SUSPECT:
                    self._queue_verify(rec.id, now)
            return True
        if direct:
            if kind == LEFT:
                rec.inc = inc
                self._declare(rec, LEFT, now)
                return True
            stats["self_accusations"] += 1  # a node suspecting itself or calling itself dead: nonsense
            return False
        if kind == SUSPECT:
            acc = wire[3] if len(wire) > 3 else None
            named = wire[4] if len(wire) > 4 else None
            if rec.state == ALIVE:
                self._suspect(rec, inc, acc, now, False, SUSPECT, named)
                return True
            s = rec.susp
            assert s is not None  # not alive: suspected
            if inc > s.inc:
                # It refuted (we did not hear) and is suspected again: a new suspicion.
                self._suspect(rec, inc, acc, now, False, SUSPECT, named)
                return True
            if acc:
                self._confirm(s, acc, now, named)
            return True
        # DEAD or LEFT, hearsay: act at once only if our own probe already failed; else verify first.
        if rec.state == ALIVE:
            self._suspect(rec, inc, None, now, False, kind)
            return True
        s = rec.susp
        assert s is not None  # not alive: suspected
        if inc > s.inc:
            s.inc = inc
            rec.inc = inc
            s.verified = False
        if kind > s.final:
            s.final = kind
        if s.verified:
            self._declare(rec, LEFT if s.final == LEFT else DEAD, now)
        else:
            self._urgent(rec.id, now)
        return True

    def _tomb_news(self, nid: bytes, kind: int, inc: int, direct: bool, now: float, src: bytes | None) -> bool:
        tomb = self._tombs[nid]
        if inc * 4 + kind < tomb.inc * 4 + tomb.state:
            self.stats["rumors_stale"] += 1
            self._correct(nid, src, now)
            return False
        if kind == ALIVE and inc > tomb.inc:
            if direct:
                self._tomb_heard(nid, inc, False, now)
            else:
                self.stats["alive_hints"] += 1
                self._queue_verify(nid, now)  # check it
        return True

    def _about_me(self, kind: int, inc: int, wire: list[Any], now: float) -> None:
        """A rumor about us. Suspect/dead/left at our incarnation or above: refute (only we can). A
        suspicion's accusers are also told directly (_tell_accusers), whether we refute it now or did
        before: only a message from us clears their suspicion."""
        stats = self.stats
        stats["rumors_about_self"] += 1
        if kind == ALIVE or self._leaving:
            return
        if inc >= self.incarnation:
            if inc >= MAX_INCARNATION:
                return  # cannot go higher; counted as about_self, nothing else to do
            self.incarnation = inc + 1
            stats["refuted"] += 1
            self._lhm_add(1)  # Lifeguard: being suspected hints that we are the slow one
            self._events.append(Refuted(self.incarnation))
            c = self.contact
            alive = [ALIVE, self.incarnation, c.public_key, c.endpoint]
            self._enqueue(self.node_id, self.incarnation * 4 + ALIVE, alive, rumor_size(alive), now)
            self._told.clear()
        if kind == SUSPECT and len(wire) > 3 and wire[3]:
            self._tell_accusers(wire)

    # -- output --------------------------------------------------------------------------------------------

    def _send(self, typ: str, body: list[Any], dst: bytes) -> None:
        self._out.append(Envelope(self._rng.getrandbits(128).to_bytes(16, "big"), self.node_id, typ, body, dst))
        self.stats["sent"] += 1
