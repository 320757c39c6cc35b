"""Rumors in and out, the dissemination half of the membership core (``protocols/membership.md``
sections 5 and 9).

:class:`Gossip` is a part of :class:`~zmqagents.core.membership.Membership` (a mixin; it has no state
of its own beyond what the class sets up): rumors taken in from any message (validated, checked against
the dedup memory, then handed to the state machine to decide what they mean), rumors queued to go out
(piggybacked by the probing part, pushed by ``swim.gossip``), stragglers told what we buried, and
anti-entropy (the answer to a sync, and the tombstone checks a sync starts).

What a rumor *means* for a member is the state machine's business (``_member_news``, ``_tomb_news``,
``_about_me``); this part only decides whether it is news.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ..identity import Contact, node_id_of
from .membership_config import MembershipConfig
from .membership_lifeguard import LocalHealth, Suspicion, SuspicionTimeouts
from .membership_records import (
    GOSSIP, INF, MAX_ENDPOINT_LEN, MAX_INCARNATION, NODE_ID_LEN, PUBLIC_KEY_LEN, SHORT_ID_LEN, MemberRecord,
    ProbeRecord, Tombstone,
)
from .membership_rumors import ALIVE, DEAD, LEFT, SUSPECT, WIRE_LEN, RumorQueue, rumor_code, rumor_size, suspect_wire

__all__ = ["Gossip"]


class Gossip:
    """Rumor handling and anti-entropy for :class:`~zmqagents.core.membership.Membership` (see the module
    docstring)."""

    # Set up by Membership.__init__.
    config: MembershipConfig
    stats: dict[str, int]
    node_id: bytes
    incarnation: int
    _rng: random.Random
    _health: LocalHealth
    _timeouts: SuspicionTimeouts
    _rumors: RumorQueue
    _members: dict[bytes, MemberRecord]
    _tombs: dict[bytes, Tombstone]
    _order: list[bytes]
    _probes: dict[int, ProbeRecord]
    _n_override: int | None
    _t_gossip: float
    _leaving: bool
    _left_wire: list[Any] | None
    contact: Contact
    _told: dict[bytes, bool]

    if TYPE_CHECKING:
        # The state machine's transitions and the other parts, which rumor handling calls.
        def _send(self, typ: str, body: list[Any], dst: bytes) -> None: ...
        def _opinion(self, nid: bytes, about: Any) -> list[Any]: ...
        def _verify_probe(self, nid: bytes, now: float) -> bool: ...
        def _about_me(self, kind: int, inc: int, wire: list[Any], now: float) -> None: ...
        def _member_news(self, rec: MemberRecord, kind: int, inc: int, wire: list[Any], direct: bool,
                         now: float) -> bool: ...
        def _tomb_news(self, nid: bytes, kind: int, inc: int, direct: bool, now: float, src: bytes | None) -> bool: ...
        def _confirm(self, s: Suspicion, accusers: Any, now: float, named: list[Any] | None = None) -> bool: ...
        def _remember_contact(self, nid: bytes, contact: Contact) -> None: ...
        def _expire_tombs(self, now: float) -> None: ...
        def _start_sweep(self, now: float) -> None: ...

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
        strangers = rumors_q.strangers
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
                    if prev is None:
                        prev = strangers.get(subject)
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
                        if len(r) > 4:  # the named accuser: [public key, endpoint]
                            nm = r[4]
                            if type(nm) is not list or len(nm) != 2 or type(nm[0]) is not bytes \
                                    or len(nm[0]) != PUBLIC_KEY_LEN or type(nm[1]) is not str or not nm[1] \
                                    or len(nm[1]) > MAX_ENDPOINT_LEN:
                                ok = False
                        if not ok:
                            stats["rumors_bad"] += 1
                            continue
            else:
                stats["rumors_unknown_kind"] += 1  # a newer peer's kind: ignored, not forwarded
                continue
            if len(r) > WIRE_LEN[kind]:
                r = r[: WIRE_LEN[kind]]  # relay only what we understood: a relayed rumor costs what rumor_size says
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
        prev = self._rumors.code_of(subject)
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
            named = wire[4] if len(wire) > 4 else None
            if rec is not None and rec.state == SUSPECT and rec.susp is not None and rec.susp.inc == inc:
                grew = self._confirm(rec.susp, wire[3], now, named)
            else:
                queued = self._rumors.wire_of(subject, code)
                if queued is not None:
                    have = queued[3] if len(queued) > 3 else []
                    extra = [a for a in wire[3] if a not in have]
                    if extra:
                        if named is None and len(queued) > 4:
                            named = queued[4]
                        merged = (have + extra)[: self._timeouts.k + 1]
                        self._rumors.merge(subject, code, suspect_wire(subject, inc, merged, named))
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
            # A stranger (we do not hold it): relayed for the holders spread over the mesh, within the
            # bound of RumorQueue.admit_stranger; past it, dropped at the cost of this check.
            stats["rumors_foreign"] += 1
            if direct and kind == SUSPECT or (direct and kind == DEAD):
                stats["self_accusations"] += 1
                return
            if not self._rumors.admit_stranger(subject, code, now):
                if kind == SUSPECT and self._rumors.strangers_full(now):
                    # News of foreign_limit strangers within foreign_window, and still more suspicions:
                    # many nodes are failing at once (a mass crash), and some of them are most likely
                    # ours. Their news may never reach us (we relay only so much), so look for them
                    # ourselves: sweep. Suspicions only: dead rumors keep coming in sync answers (as
                    # tombstones) for minutes after a storm, and swept every node again every cooldown
                    # (sim, 2,000 nodes, 400 crashed at once: two sweeps per node in 120 s).
                    self._start_sweep(now)
                return
            stats["rumors_new"] += 1
            self._enqueue(subject, code, wire, rumor_size(wire), now)
            return
        if not forward:
            return
        stats["rumors_new"] += 1
        self._rumors.remember(subject, code)
        self._enqueue(subject, code, wire, rumor_size(wire), now)

    def _tell_accusers(self, wire: list[Any]) -> None:
        """Send our refutation (our alive rumor at our incarnation) directly to the accusers of a
        suspicion of us: the one the rumor names (its contact travels in the rumor, section 5.1) and
        those we hold, by their short ids. Only a message from us clears an accuser's suspicion, and the
        rumor, pushed to random members, may never reach it (sim, 30 % of the nodes cut off: a node
        refuted, pushed its refutation mostly across the cut, and its accuser on its own side declared
        it dead 10 s later). Each accuser once per refutation, at most max_direct_refutations of them (and
        as many unreachable ones noted); a rumor names one accuser, so a forger gets one message to a
        contact of its choice per rumor it sends, no more."""
        told = self._told
        cap = self.config.max_direct_refutations
        sent = sum(told.values())
        if sent >= cap or len(told) >= 2 * cap:
            return
        targets: list[tuple[bytes, bytes]] = []  # (short id, node id)
        if len(wire) > 4:
            pk, ep = wire[4]
            nid = node_id_of(pk)
            short = nid[:SHORT_ID_LEN]
            if nid != self.node_id and not told.get(short):
                if nid not in self._members:
                    self._remember_contact(nid, Contact(pk, ep))
                targets.append((short, nid))
        fresh = [a for a in wire[3] if a not in told and not (targets and a == targets[0][0])]
        if fresh:
            for rec in self._members.values():  # once per accuser and refutation: unreachable ones are noted
                short = rec.id[:SHORT_ID_LEN]
                if short in fresh:
                    targets.append((short, rec.id))
                    fresh.remove(short)
                    if not fresh:
                        break
            for a in fresh:
                told[a] = False  # not reachable now; a later rumor may name it
        if not targets:
            return
        c = self.contact
        alive = [ALIVE, self.incarnation, c.public_key, c.endpoint]
        stats = self.stats
        for short, nid in targets:
            if sent >= cap:
                break
            told[short] = True
            sent += 1
            self._send(GOSSIP, [0, self.incarnation, [alive]], nid)
            stats["gossips_sent"] += 1
            stats["refutations_sent"] += 1

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

