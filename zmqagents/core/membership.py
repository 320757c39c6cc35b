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
  cannot refute for another node.
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
  it. Rumors about nodes we do not hold are forwarded too (partial views), deduplicated by
  (subject, incarnation, kind) in a bounded memory. A node that sends us old news about a member
  we buried is told directly.
* **Anti-entropy.** Every ``sync_interval`` the periodic ping asks its target (a random member) for
  its recent rumors, which come back in the ack: a rumor lost to us is repaired within about one
  interval, at no extra message. Dead members are remembered as bounded tombstones and re-checked
  on the same schedule (all of them as soon as one answers), so a healed partition reconnects: the
  far side answers two checks, is revived (``Alive``) and learns what we thought of it.
* **Leave.** :meth:`Membership.leave` sends a ``left`` rumor to every member at once and keeps
  answering; holders report :class:`Left`, never :class:`Failed`.

Everything a peer sends is validated; malformed input is counted in ``stats`` and dropped, never
raised, and every buffer has a bound whose hits are counted.

Five modules: this one, the SWIM state machine (:class:`Membership`: probing, every transition of a
member's state, rumors in and out, gossip and anti-entropy); :mod:`~zmqagents.core.membership_config`
(:class:`MembershipConfig`, :data:`PROFILES`); :mod:`~zmqagents.core.membership_events` (what it reports);
:mod:`~zmqagents.core.membership_rumors` (the rumor queue, the dedup memory, the sync log); and
:mod:`~zmqagents.core.membership_lifeguard` (suspicion timeouts and local health). Every public name is
importable from here.
"""

from __future__ import annotations

import heapq
import random
from typing import Any, Iterator

from ..envelope import Envelope
from ..identity import Contact, node_id_of
from .membership_config import PROFILES, MembershipConfig
from .membership_events import Alive, Failed, Left, Refuted, Suspect
from .membership_lifeguard import LocalHealth, Suspicion, SuspicionTimeouts
from .membership_rumors import ALIVE, DEAD, LEFT, SUSPECT, RumorQueue, rumor_code, rumor_size
from .outputs import CoreOutputs

__all__ = [
    "PING", "ACK", "PING_REQ", "NACK", "GOSSIP", "TYPES", "ALIVE", "SUSPECT", "DEAD", "LEFT",
    "STATE_NAMES", "MembershipConfig", "PROFILES", "Membership", "Alive", "Suspect", "Failed", "Left",
    "Refuted", "STAT_KEYS",
]

PING = "swim.ping"
ACK = "swim.ack"
PING_REQ = "swim.ping_req"
NACK = "swim.nack"
GOSSIP = "swim.gossip"
TYPES = frozenset({PING, ACK, PING_REQ, NACK, GOSSIP})

# Member states (ALIVE, SUSPECT, DEAD, LEFT: also the rumor kinds, membership_rumors.py). Precedence of news
# about one node: (incarnation, kind) ordered lexicographically, encoded as the integer ``incarnation * 4 + kind``.
STATE_NAMES = ("alive", "suspect", "dead", "left")

NODE_ID_LEN = 32
PUBLIC_KEY_LEN = 32
SHORT_ID_LEN = 8  # accusers are named by this prefix of their node id in suspect rumors
MAX_ENDPOINT_LEN = 255
MAX_INCARNATION = (1 << 32) - 1  # larger incarnations are refused: a forger cannot push one past what we can refute
INF = float("inf")

STAT_KEYS = (
    # traffic
    "received", "sent", "pings_sent", "acks_sent", "ping_reqs_sent", "nacks_sent", "gossips_sent", "syncs_sent",
    "syncs_answered",
    "acks_forwarded", "rumors_sent", "rumors_received",
    # probing
    "probes", "probes_acked", "probes_indirect_acked", "probes_failed", "probes_inconclusive", "verifications",
    "checks", "nacks_received", "nacks_missed", "acks_unmatched", "acks_unexpected",
    # state changes
    "suspected", "suspicions_cleared", "confirmations", "declared_dead", "declared_left",
    "revived", "refuted", "refutations_sent", "alive_hints", "dead_verified",
    # rumors
    "rumors_new", "rumors_duplicate", "rumors_stale", "rumors_foreign", "rumors_merged", "rumors_evicted",
    "rumors_retired", "rumors_truncated", "rumors_bad", "rumors_unknown_kind", "rumors_about_self",
    "self_accusations",
    # bad input and bounds
    "malformed", "misdirected", "from_self", "unknown_type", "relay_limit", "relays",
    "members_refused", "tombstones_evicted", "heard_evicted", "stalls", "corrections",
)


# -- internal records --------------------------------------------------------------------------------------

class _Member:
    __slots__ = ("id", "contact", "state", "inc", "rtt", "susp", "heard")

    def __init__(self, nid: bytes, contact: Contact, inc: int):
        self.id = nid
        self.contact = contact
        self.state = ALIVE
        self.inc = inc
        self.rtt: float | None = None
        self.susp: Suspicion | None = None
        self.heard = -INF  # when a message from it last came (indirect-probe helpers are picked by it)


_REGULAR, _VERIFY, _CHECK = 0, 1, 2


class _Probe:
    __slots__ = ("seq", "target", "rec", "kind", "sent", "ind_at", "end_at", "helpers", "nacks", "fair")

    def __init__(self, seq: int, target: bytes, rec: Any, kind: int, sent: float):
        self.seq = seq
        self.target = target
        self.rec = rec  # _Member, or the _Tomb for a check
        self.kind = kind
        self.sent = sent
        self.ind_at = INF
        self.end_at = INF
        self.helpers: tuple[Any, ...] | None = None
        self.nacks = 0
        self.fair = True  # False once a timer of ours fired late: the result says nothing about the target


class _Relay:
    __slots__ = ("seq", "requester", "their_seq", "target", "nack_at", "end_at", "answered")

    def __init__(self, seq: int, requester: bytes, their_seq: int, target: bytes, nack_at: float, end_at: float):
        self.seq = seq
        self.requester = requester
        self.their_seq = their_seq
        self.target = target
        self.nack_at = nack_at
        self.end_at = end_at
        self.answered = False


class _Tomb:
    __slots__ = ("id", "contact", "state", "inc", "since", "checked", "corrected", "passed", "recheck")

    def __init__(self, nid: bytes, contact: Contact, state: int, inc: int, since: float):
        self.id = nid
        self.passed: float | None = None  # when it first answered a check since it was buried
        self.recheck = INF  # when the confirming second check is due
        self.contact = contact
        self.state = state
        self.inc = inc
        self.since = since
        self.checked = since
        self.corrected = -INF  # when we last told a straggler it was dead


# heap entry kinds
_T_IND, _T_END, _T_NACK, _T_RELAY_END, _T_SUSP, _T_RECHECK = range(6)


class Membership(CoreOutputs):
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
        self._members: dict[bytes, _Member] = {}
        self._order: list[bytes] = []  # probe order (shuffled each round); stale ids are skipped
        self._pos = 0
        self._shuffle = False
        self._tombs: dict[bytes, _Tomb] = {}
        self._n_override: int | None = None
        # probing
        self._seq = 0
        self._cur: _Probe | None = None  # the periodic probe in flight
        self._probes: dict[int, _Probe] = {}  # verification / check probes in flight
        self._verify: dict[bytes, bool] = {}  # ids to probe first (value: urgent)
        self._relays: dict[int, _Relay] = {}
        # Contacts of relay targets we do not hold, so the shell can route our ping to them
        # (contact_for); bounded like the relays themselves, oldest dropped first.
        self._relay_contacts: dict[bytes, Contact] = {}
        self._heap: list[Any] = []
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
        self._t_verify = INF
        # Until when a failed tombstone check is retried every period: one sync interval after the last
        # time a dead member answered a first check (most likely a partition healed), see _tomb_silent.
        self._heal_until = -INF
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
        a node we were asked to ping for someone else (which the shell may never have met)."""
        rec = self._members.get(node_id)
        if rec is not None:
            return rec.contact
        return self._relay_contacts.get(node_id)

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
            if len(body) > 3 and body[3] == 1:
                # A sync: answer with our recent rumors (anti-entropy rides on the probe).
                self._send(ACK, [seq, self.incarnation, self._sync_rumors(now, src)], src)
                stats["syncs_answered"] += 1
            else:
                self._reply(ACK, seq, src, rec)
            stats["acks_sent"] += 1
        elif typ == ACK:
            self._on_ack(src, seq, inc, now)
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
            if kind == _T_IND:
                probe: _Probe = obj
                if probe.ind_at == t and self._probes.get(probe.seq) is probe:
                    self._indirect(probe, now)
            elif kind == _T_END:
                probe = obj
                if probe.end_at == t and self._probes.get(probe.seq) is probe:
                    del self._probes[probe.seq]
                    self._probe_end(probe, now)
            elif kind == _T_SUSP:
                susp: Suspicion = obj
                if susp.due == t and susp.rec.susp is susp:
                    self._suspicion_due(susp, now, stalled)
            elif kind == _T_NACK:
                relay: _Relay = obj
                if relay.nack_at == t and not relay.answered and self._relays.get(relay.seq) is relay:
                    self._send(NACK, [relay.their_seq, self.incarnation], relay.requester)
                    self.stats["nacks_sent"] += 1
            elif kind == _T_RELAY_END:
                relay = obj
                if self._relays.get(relay.seq) is relay:
                    del self._relays[relay.seq]
            elif kind == _T_RECHECK:
                tomb: _Tomb = obj
                if tomb.recheck == t and self._tombs.get(tomb.id) is tomb:
                    tomb.recheck = INF
                    self._urgent(tomb.id, now)
        if self._t_gossip <= now:
            self._gossip(now)

    def next_timer(self) -> float | None:
        t = self._due()
        return None if t == INF else t

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
        if kind == _T_SUSP:
            return obj.due == t and obj.rec.susp is obj
        if kind == _T_IND:
            return obj.ind_at == t and self._probes.get(obj.seq) is obj
        if kind == _T_END:
            return obj.end_at == t and self._probes.get(obj.seq) is obj
        if kind == _T_NACK:
            return obj.nack_at == t and not obj.answered and self._relays.get(obj.seq) is obj
        if kind == _T_RECHECK:
            return obj.recheck == t and self._tombs.get(obj.id) is obj
        return self._relays.get(obj.seq) is obj

    def _push(self, t: float, kind: int, obj: Any) -> None:
        self._hn += 1
        heapq.heappush(self._heap, (t, self._hn, kind, obj))

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
        rec = self._next_target()
        if rec is not None:
            if now >= self._sync_from + self._health.scaled(self._sync_gap):
                # This period's probe doubles as the anti-entropy pull: the ping asks for the
                # target's recent rumors, which come back in the ack.
                self._sync_from = now
                self._sync_gap = cfg.sync_interval * (0.75 + 0.5 * self._rng.random())
                self._sync_checks(now)
                seq = self._next_seq()
                self._cur = _Probe(seq, rec.id, rec, _REGULAR, now)
                body = self._body(seq, rec.id, rec)
                if len(body) < 3:
                    body.append([])
                body.append(1)
                self._send(PING, body, rec.id)
                self.stats["pings_sent"] += 1
                self.stats["probes"] += 1
                self.stats["syncs_sent"] += 1
            else:
                self._cur = self._ping(rec, rec.id, _REGULAR, now)
            self._t_ind = now + self._health.scaled(cfg.probe_timeout)

    def _next_target(self) -> _Member | None:
        order = self._order
        members = self._members
        n = len(order)
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
                return rec
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
            p = self._ping(rec, nid, _VERIFY, now)
            p.ind_at = now + self._health.scaled(self.config.probe_timeout)
            p.end_at = now + self._health.scaled(self.config.probe_interval)
            self._probes[p.seq] = p
            self._push(p.ind_at, _T_IND, p)
            self._push(p.end_at, _T_END, p)
            return True
        tomb = self._tombs.get(nid)
        if tomb is not None:
            tomb.checked = now
            self.stats["checks"] += 1
            p = self._ping(tomb, nid, _CHECK, now)
            p.end_at = now + self._health.scaled(self.config.probe_interval)
            self._probes[p.seq] = p
            self._push(p.end_at, _T_END, p)
            return True
        return False

    def _ping(self, rec: Any, nid: bytes, kind: int, now: float) -> _Probe:
        seq = self._next_seq()
        p = _Probe(seq, nid, rec, kind, now)
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
        if type(about) is _Member:
            s = about.susp
            return [SUSPECT, nid, about.inc, list(s.accusers) if s is not None else [self._short]]
        return [about.state, nid, about.inc]

    def _reply(self, typ: str, seq: int, dst: bytes, rec: Any) -> None:
        about = rec
        if about is None and self._tombs:
            about = self._tombs.get(dst)
        self._send(typ, self._body(seq, dst, about), dst)

    def _find_probe(self, seq: int) -> _Probe | None:
        cur = self._cur
        if cur is not None and cur.seq == seq:
            return cur
        return self._probes.get(seq)

    def _on_ack(self, src: bytes, seq: int, inc: int, now: float) -> None:
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
            if type(rec) is _Member:
                sample = now - p.sent
                rec.rtt = sample if rec.rtt is None else rec.rtt + self._alpha * (sample - rec.rtt)
            elif self._tombs.get(p.target) is rec:
                # A dead member answered our check: first-hand, fresh. Revive it.
                self._tomb_heard(p.target, inc, True, now)
        else:
            stats["probes_indirect_acked"] += 1
            # A helper reached it: per SWIM that is as good as our own ack. It clears our suspicion
            # but raises no incarnation (only the node itself can).
            if type(rec) is _Member and rec.state == SUSPECT and self._members.get(rec.id) is rec:
                self._clear(rec)

    def _indirect(self, p: _Probe, now: float) -> None:
        """The direct ping went unanswered: ask helpers to ping the target for us."""
        cfg = self.config
        k = cfg.indirect_checks
        if k <= 0 or p.kind == _CHECK:
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

    def _probe_end(self, p: _Probe, now: float) -> None:
        """A probe's period ended without an ack."""
        stats = self.stats
        if p.kind == _CHECK:
            tomb = self._tombs.get(p.target)
            if tomb is p.rec:
                self._tomb_silent(tomb, p.sent, now)
            return
        rec: _Member = p.rec  # not a check: a member
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

    def _service_verify(self, now: float) -> None:
        """Start queued verification and check probes while slots are free."""
        verify = self._verify
        max_probes = self.config.max_probes
        for nid in list(verify):
            if len(self._probes) >= max_probes:
                break
            del verify[nid]
            self._verify_probe(nid, now)
        self._t_verify = now + self.config.gossip_interval if verify and not self._leaving else INF

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
        relay = _Relay(mine, src, seq, target, now + wait, now + window)
        self._relays[mine] = relay
        self._push(relay.nack_at, _T_NACK, relay)
        self._push(relay.end_at, _T_RELAY_END, relay)
        stats["relays"] += 1
        rec: _Member | _Tomb | None = self._members.get(target)
        if rec is None:
            contacts = self._relay_contacts
            contacts.pop(target, None)
            contacts[target] = Contact(pk, ep)
            if len(contacts) > cfg.max_relays:
                del contacts[next(iter(contacts))]
            if self._tombs:
                rec = self._tombs.get(target)
        self._send(PING, self._body(mine, target, rec), target)
        stats["pings_sent"] += 1

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

    def _admit(self, nid: bytes, contact: Contact, incarnation: int) -> _Member:
        """A member from the owner's table: alive, at least at the incarnation its tombstone had."""
        tomb = self._tombs.pop(nid, None) if self._tombs else None
        if tomb is not None and tomb.inc > incarnation:
            incarnation = tomb.inc
        rec = _Member(nid, contact, incarnation)
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

    def _suspect(self, rec: _Member, inc: int, accusers: Any, now: float, ours: bool, final: int = SUSPECT) -> None:
        """Mark ``rec`` suspect at ``inc``. ``ours``: our own probe failed (we accuse, and tell everyone)."""
        s = Suspicion(rec, inc, now)
        s.final = final
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
            wire = [SUSPECT, rec.id, inc, list(s.accusers)]
            self._rumors.remember(rec.id, inc * 4 + SUSPECT)
            self._enqueue(rec.id, inc * 4 + SUSPECT, wire, rumor_size(wire), now)
        else:
            # Hearsay: check it ourselves, at once (a probe slot permitting; else next period).
            self._urgent(rec.id, now)
        self._arm_suspicion(s, now)

    def _arm_suspicion(self, s: Suspicion, now: float) -> None:
        due = self._timeouts.due(s, now)
        if due != s.due:
            s.due = due
            self._push(due, _T_SUSP, s)

    def _confirm(self, s: Suspicion, accusers: Any, now: float) -> bool:
        """Add accusers (one short id: our own confirmation, or a list from a rumor) to a suspicion; True
        if it grew. A grown suspicion's rumor, if we still send it, carries the grown list."""
        grew = self._timeouts.add_accusers(s, accusers)
        if grew:
            self.stats["confirmations"] += 1
            self._arm_suspicion(s, now)
            rec = s.rec
            code = s.inc * 4 + SUSPECT
            ours = type(accusers) is bytes
            wire = [SUSPECT, rec.id, s.inc, list(s.accusers)]
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
            self._push(s.due, _T_SUSP, s)
            return
        if not s.verified:
            # Never declare on hearsay alone: probe it now, declare if that fails.
            s.expired = True
            s.due = INF
            self._urgent(rec.id, now)
            return
        self._declare(rec, LEFT if s.final == LEFT else DEAD, now)

    def _probe_failed(self, rec: _Member, now: float) -> None:
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

    def _clear(self, rec: _Member) -> None:
        rec.state = ALIVE
        rec.susp = None
        self._verify.pop(rec.id, None)
        self.stats["suspicions_cleared"] += 1
        self._events.append(Alive(rec.contact, rec.inc))

    def _firsthand(self, rec: _Member, inc: int) -> None:
        """A message from the member itself: it is alive, at (at least) this incarnation."""
        if inc > rec.inc:
            rec.inc = inc
        if rec.state == SUSPECT:
            self._clear(rec)

    def _declare(self, rec: _Member, state: int, now: float) -> None:
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
        tombs[nid] = _Tomb(nid, rec.contact, state, rec.inc, now)
        code = rec.inc * 4 + state
        if state == DEAD:
            self.stats["declared_dead"] += 1
            self._events.append(Failed(nid, rec.inc))
            wire = [DEAD, nid, rec.inc]
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
        if not fresh or (tomb.state == LEFT and inc <= tomb.inc):
            if (tomb.state == DEAD or inc > tomb.inc) and nid not in self._verify and tomb.recheck == INF:
                due = tomb.checked + self.config.probe_interval
                if now >= due:
                    self._queue_verify(nid, now)
                else:
                    # Checked less than a period ago (that check may have been lost, or be in flight):
                    # check again when the period is over rather than wait for the next sync.
                    tomb.recheck = due
                    self._push(due, _T_RECHECK, tomb)
            return
        gap = 2 * self.config.probe_interval
        # A confirming check may be sent up to 3 gaps after the first answer (_tomb_silent); its answer
        # comes within a period of that.
        if tomb.passed is None or now - tomb.passed > 3 * gap + self.config.probe_interval:
            # First answer: on probation. Check again in two periods; a node stalled most of the time
            # fails that one, and is not revived just to be buried again (flapping).
            tomb.passed = now
            tomb.recheck = now + gap
            self._push(tomb.recheck, _T_RECHECK, tomb)
            if tomb.state == DEAD:
                heal = now + self.config.sync_interval
                if heal > self._heal_until:
                    self._heal_until = heal
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
                self._push(tomb.recheck, _T_RECHECK, tomb)
            return
        del self._tombs[nid]
        self.stats["revived"] += 1
        self._events.append(Alive(tomb.contact, max(inc, tomb.inc)))

    def _tomb_silent(self, tomb: _Tomb, sent: float, now: float) -> None:
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
                self._push(retry, _T_RECHECK, tomb)
                return
        tomb.passed = None
        tomb.recheck = INF
        if tomb.state == DEAD and now < self._heal_until and tomb.id not in self._verify:
            self._queue_verify(tomb.id, now)

    def _expire_tombs(self, now: float) -> None:
        """Forget the tombstones older than tombstone_ttl."""
        tombs = self._tombs
        expire = now - self.config.tombstone_ttl
        for nid in [nid for nid, t in tombs.items() if t.since < expire]:
            del tombs[nid]

    def _member_news(self, rec: _Member, kind: int, inc: int, wire: list[Any], direct: bool, now: float) -> bool:
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
            if rec.state == ALIVE:
                self._suspect(rec, inc, acc, now, False)
                return True
            s = rec.susp
            assert s is not None  # not alive: suspected
            if inc > s.inc:
                # It refuted (we did not hear) and is suspected again: a new suspicion.
                self._suspect(rec, inc, acc, now, False)
                return True
            if acc:
                self._confirm(s, acc, now)
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
        """A rumor about us. Suspect/dead/left at our incarnation or above: refute (only we can), and
        tell the accusers of a suspicion that we hold, directly: only a message from us clears their
        suspicion, and the alive rumor alone may never reach them (sim, 30 % of the nodes cut off:
        a node on the small side pushes and piggybacks mostly to members across the cut, and the
        accuser declared it dead 10 s later, a false positive on its own side of the partition)."""
        stats = self.stats
        stats["rumors_about_self"] += 1
        if kind == ALIVE or self._leaving or inc < self.incarnation:
            return
        if inc >= MAX_INCARNATION:
            return  # cannot go higher; counted as about_self, nothing else to do
        self.incarnation = inc + 1
        stats["refuted"] += 1
        self._lhm_add(1)  # Lifeguard: being suspected hints that we are the slow one
        self._events.append(Refuted(self.incarnation))
        c = self.contact
        alive = [ALIVE, self.incarnation, c.public_key, c.endpoint]
        self._enqueue(self.node_id, self.incarnation * 4 + ALIVE, alive, rumor_size(alive), now)
        if kind == SUSPECT and len(wire) > 3 and wire[3]:
            accusers = wire[3]
            for rec in self._members.values():
                if rec.id[:SHORT_ID_LEN] in accusers:
                    self._send(GOSSIP, [0, self.incarnation, [alive]], rec.id)
                    stats["gossips_sent"] += 1
                    stats["refutations_sent"] += 1

    # -- rumors in and out ---------------------------------------------------------------------------------

    def _resize(self) -> None:
        self._rumors.resize(self._n_override if self._n_override is not None else len(self._members) + 1)

    def _enqueue(self, subject: bytes, code: int, wire: list[Any], size: int, now: float) -> None:
        """Queue news to send; one about a member, a tombstone or us is pushed with the wider fanout."""
        stake = subject in self._members or subject == self.node_id or subject in self._tombs
        if self._rumors.enqueue(subject, code, wire, size, now, stake):
            self._arm_gossip(now)

    def _arm_gossip(self, now: float) -> None:
        if self._t_gossip == INF:
            self._t_gossip = now + self.config.gossip_interval * (0.5 + 0.5 * self._rng.random())

    def _absorb(self, rumors: Any, src: bytes | None, now: float) -> None:
        stats = self.stats
        if type(rumors) is not list:
            stats["malformed"] += 1
            return
        cap = self.config.max_rumors_per_message
        if len(rumors) > cap:
            stats["rumors_truncated"] += 1
            rumors = rumors[:cap]
        stats["rumors_received"] += len(rumors)
        me = self.node_id
        rumors_q = self._rumors
        heard = rumors_q.heard
        tombs = self._tombs
        k = self._timeouts.k
        dup = stale = 0  # counted once per message: most rumors are copies of news we already have
        for r in rumors:
            if type(r) is not list or len(r) < 3:
                stats["rumors_bad"] += 1
                continue
            kind = r[0]
            if type(kind) is not int:
                stats["rumors_bad"] += 1
                continue
            if kind != ALIVE:
                # Fast path: old news and copies.
                subject = r[1]
                inc = r[2]
                if type(subject) is bytes and type(inc) is int:
                    prev = heard.get(subject)
                    if prev is not None and 0 < kind <= LEFT:
                        code = inc * 4 + kind
                        if code < prev:
                            stale += 1
                            if tombs and subject in tombs:
                                self._correct(subject, src, now)
                            continue
                        if code == prev:
                            if kind != SUSPECT:
                                dup += 1
                                continue
                            w = rumors_q.wire_of(subject)
                            if w is not None and (w is r or (len(r) > 3 and len(w) > 3 and w[3] == r[3])):
                                dup += 1
                                continue
            if kind == ALIVE:
                if len(r) < 4:
                    stats["rumors_bad"] += 1
                    continue
                inc = r[1]
                pk = r[2]
                ep = r[3]
                if type(inc) is not int or not 0 <= inc <= MAX_INCARNATION or type(pk) is not bytes \
                        or len(pk) != PUBLIC_KEY_LEN or type(ep) is not str or not ep or len(ep) > MAX_ENDPOINT_LEN:
                    stats["rumors_bad"] += 1
                    continue
                subject = node_id_of(pk)
            elif SUSPECT <= kind <= LEFT:
                subject = r[1]
                inc = r[2]
                if type(subject) is not bytes or len(subject) != NODE_ID_LEN or type(inc) is not int \
                        or not 0 <= inc <= MAX_INCARNATION:
                    stats["rumors_bad"] += 1
                    continue
                if kind == SUSPECT:
                    acc = r[3] if len(r) > 3 else None
                    if acc is not None:
                        if type(acc) is not list or len(acc) > k + 1:
                            stats["rumors_bad"] += 1
                            continue
                        ok = True
                        for a in acc:
                            if type(a) is not bytes or len(a) != SHORT_ID_LEN:
                                ok = False
                                break
                        if not ok:
                            stats["rumors_bad"] += 1
                            continue
            else:
                stats["rumors_unknown_kind"] += 1  # a newer peer's kind: ignored, not forwarded
                continue
            if subject == me:
                self._about_me(kind, inc, r, now)
                continue
            self._on_rumor(kind, subject, inc, r, src, now)
        if dup:
            stats["rumors_duplicate"] += dup
        if stale:
            stats["rumors_stale"] += stale

    def _on_rumor(self, kind: int, subject: bytes, inc: int, wire: list[Any], src: bytes | None, now: float) -> None:
        stats = self.stats
        code = inc * 4 + kind
        prev = self._rumors.heard.get(subject, -1)
        if code < prev:
            stats["rumors_stale"] += 1
            if self._tombs and subject in self._tombs:
                self._correct(subject, src, now)
            return
        direct = subject == src
        if code == prev:
            if kind != SUSPECT or len(wire) < 4:
                stats["rumors_duplicate"] += 1
                return
            # Same suspicion, maybe more accusers: merge.
            rec = self._members.get(subject)
            grew = False
            if rec is not None and rec.state == SUSPECT and rec.susp is not None and rec.susp.inc == inc:
                grew = self._confirm(rec.susp, wire[3], now)
            else:
                queued = self._rumors.wire_of(subject, code)
                if queued is not None:
                    have = queued[3] if len(queued) > 3 else []
                    extra = [a for a in wire[3] if a not in have]
                    if extra:
                        self._rumors.merge(subject, code, [SUSPECT, subject, inc, (have + extra)[: self._timeouts.k + 1]])
                        grew = True
            if grew:
                stats["rumors_merged"] += 1
            else:
                stats["rumors_duplicate"] += 1
            return
        # News (for our dedup memory). Decide what it means for us, then pass it on.
        rec = self._members.get(subject)
        forward = True
        if rec is not None:
            forward = self._member_news(rec, kind, inc, wire, direct, now)
        elif self._tombs and subject in self._tombs:
            forward = self._tomb_news(subject, kind, inc, direct, now, src)
        else:
            stats["rumors_foreign"] += 1
            if direct and kind == SUSPECT or (direct and kind == DEAD):
                stats["self_accusations"] += 1
                return
        if not forward:
            return
        stats["rumors_new"] += 1
        self._rumors.remember(subject, code)
        self._enqueue(subject, code, wire, rumor_size(wire), now)

    def _correct(self, nid: bytes, src: bytes | None, now: float) -> None:
        """``src`` sent old news about a member we buried (it missed the dead/left rumor, and may be
        about to accuse it alone, on the longest timeout): tell it directly. At most once per period
        per tombstone, so stragglers cost one message each, not a storm."""
        tomb = self._tombs[nid]
        if src is None or src == nid or now - tomb.corrected < self.config.probe_interval:
            return
        tomb.corrected = now
        self._send(GOSSIP, [0, self.incarnation, [[tomb.state, nid, tomb.inc]]], src)
        self.stats["corrections"] += 1

    # -- gossip and anti-entropy ---------------------------------------------------------------------------

    def _gossip(self, now: float) -> None:
        """One push round: the rumors sent fewer than gossip_transmits rounds go, as one list, to
        gossip_fanout random members (one pick per round, counted as one send of each rumor)."""
        if not self._rumors.live or not self._rumors.has_fresh():
            self._t_gossip = INF
            return
        cfg = self.config
        self._t_gossip = now + cfg.gossip_interval
        order = self._order
        if not order:
            return
        rumors, stake = self._rumors.pick_push(cfg.piggyback_bytes, cfg.gossip_transmits)
        if not rumors:
            return
        members = self._members
        rng = self._rng
        sent: tuple[bytes, ...] = ()
        stats = self.stats
        for _ in range(cfg.gossip_fanout if stake else cfg.relay_fanout):
            for _ in range(4):
                nid = order[int(rng.random() * len(order))]
                if nid in members and nid not in sent:
                    break
            else:
                continue
            sent = sent + (nid,)
            self._send(GOSSIP, [0, self.incarnation, rumors], nid)
            stats["rumors_sent"] += len(rumors)
            stats["gossips_sent"] += 1

    def _sync_rumors(self, now: float, dst: bytes) -> list[Any]:
        """The answer to ``dst``'s sync: our opinion of it first, then our recent rumors (no older
        than sync_horizon) and our tombstones, those about the subjects nearest ``dst`` in id space
        first. A member is held by the nodes near it (Kademlia), so the news nearest the requester is
        the news most likely about its own members; and tombstones repair what a storm of crashes
        pushed out of the recent rumors (after a mass crash, a holder that missed the news would
        otherwise wait for its round-robin probe, minutes)."""
        news = self._rumors.recent(now - self.config.sync_horizon)
        for nid, tomb in self._tombs.items():
            if nid not in news or tomb.inc * 4 + tomb.state > rumor_code(news[nid]):
                news[nid] = [tomb.state, nid, tomb.inc]
        news.pop(dst, None)
        cap = self.config.max_rumors_per_message
        out = []
        rec = self._members.get(dst)
        about = rec if rec is not None and rec.state != ALIVE else self._tombs.get(dst) if self._tombs else None
        if about is not None:
            out.append(self._opinion(dst, about))
        if self._leaving:
            assert self._left_wire is not None  # set by leave(), with _leaving
            out.insert(0, self._left_wire)
        if news:
            d = int.from_bytes(dst, "big")
            nearest = sorted(news, key=lambda nid: int.from_bytes(nid, "big") ^ d)
            out += [news[nid] for nid in nearest[: cap - len(out)]]
        return out[:cap]

    def _sync_checks(self, now: float) -> None:
        """Expire old tombstones and re-check the dead members whose last check is over, those
        checked longest ago first, as many as there are free probe slots: a healed partition
        reconnects this way (the far side answers and is revived). Every one of them, not one per
        interval: a member buried after the heal (its suspicion began while cut off), or one whose
        confirming check was lost, would otherwise wait for a round-robin of one tombstone per
        interval (sim, N=2000, 30 % cut off: ~43 tombstones per node on average, minutes)."""
        tombs = self._tombs
        if not tombs:
            return
        cfg = self.config
        self._expire_tombs(now)
        free = cfg.max_probes - len(self._probes)
        if free <= 0:
            return
        since = now - self._health.scaled(cfg.probe_interval)  # its last check is over
        due = [t for t in tombs.values() if t.state == DEAD and t.checked <= since and t.recheck == INF]
        if len(due) > free:
            due.sort(key=lambda t: t.checked)
        for t in due[:free]:
            self._verify_probe(t.id, now)

    # -- output --------------------------------------------------------------------------------------------

    def _send(self, typ: str, body: list[Any], dst: bytes) -> None:
        self._out.append(Envelope(self._rng.getrandbits(128).to_bytes(16, "big"), self.node_id, typ, body, dst))
        self.stats["sent"] += 1
