"""The membership core's vocabulary: message types, member states, wire limits, its counters, and the
records it keeps per member, per probe, per relayed probe and per buried member.

These are plain records with no behaviour: what moves a member from one state to another is the
state machine's (:class:`~zmqagents.core.membership.Membership`), in one place. They live apart so the
parts of the core that only read them (probing, rumors and anti-entropy) can name them without
importing the state machine.
"""

from __future__ import annotations

from typing import Any

from ..identity import Contact
from .membership_lifeguard import Suspicion
from .membership_rumors import ALIVE

__all__ = [
    "PING", "ACK", "PING_REQ", "NACK", "GOSSIP", "TYPES", "STATE_NAMES", "NODE_ID_LEN", "PUBLIC_KEY_LEN",
    "SHORT_ID_LEN", "MAX_ENDPOINT_LEN", "MAX_INCARNATION", "INF", "STAT_KEYS", "MemberRecord", "REGULAR",
    "VERIFY", "CHECK", "ProbeRecord", "RelayRecord", "Tombstone", "T_IND", "T_END", "T_NACK", "T_RELAY_END",
    "T_SUSP", "T_RECHECK",
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
    "probes", "probes_acked", "probes_indirect_acked", "probes_failed", "probes_inconclusive", "probes_heard",
    "probes_retried",
    "verifications",
    "checks", "nacks_received", "nacks_missed", "acks_unmatched", "acks_unexpected",
    # state changes
    "suspected", "suspicions_cleared", "confirmations", "declared_dead", "declared_left",
    "revived", "refuted", "refutations_sent", "suspects_told", "alive_hints", "dead_verified",
    # rumors
    "rumors_new", "rumors_duplicate", "rumors_stale", "rumors_foreign", "rumors_foreign_dropped", "rumors_merged", "rumors_evicted",
    "rumors_retired", "rumors_truncated", "rumors_bad", "rumors_unknown_kind", "rumors_about_self",
    "self_accusations",
    # bad input and bounds
    "malformed", "misdirected", "from_self", "unknown_type", "relay_limit", "relays",
    "members_refused", "tombstones_evicted", "heard_evicted", "stalls", "corrections",
    # sweeps after mass burials
    "sweeps", "sweep_probes",
    # pacing (membership_pace.py): acks we sent asking to be probed less; periodic probes we skipped as asked
    "paced_acks", "probes_paced",
)


class MemberRecord:
    """A member we hold (alive or suspect): what we know of it."""

    __slots__ = ("id", "contact", "state", "inc", "rtt", "susp", "heard", "rest")

    def __init__(self, nid: bytes, contact: Contact, inc: int):
        self.id = nid
        self.contact = contact
        self.state = ALIVE
        self.inc = inc
        self.rtt: float | None = None
        self.susp: Suspicion | None = None
        self.heard = -INF  # when a message from it last came (indirect-probe helpers are picked by it)
        self.rest = -INF  # its last ack asked to be probed less: the periodic probe skips it until then


# Probe kinds: the periodic probe of a member, a verification of a suspect, a check of a tombstone.
REGULAR, VERIFY, CHECK = 0, 1, 2


class ProbeRecord:
    """One probe of ours in flight."""

    __slots__ = ("seq", "target", "rec", "kind", "sent", "ind_at", "end_at", "helpers", "nacks", "fair")

    def __init__(self, seq: int, target: bytes, rec: Any, kind: int, sent: float):
        self.seq = seq
        self.target = target
        self.rec = rec  # MemberRecord, or the Tombstone for a check
        self.kind = kind
        self.sent = sent
        self.ind_at = INF
        self.end_at = INF
        self.helpers: tuple[Any, ...] | None = None
        self.nacks = 0
        self.fair = True  # False once a timer of ours fired late: the result says nothing about the target


class RelayRecord:
    """A probe we send for another node (its ping_req)."""

    __slots__ = ("seq", "requester", "their_seq", "target", "nack_at", "end_at", "answered")

    def __init__(self, seq: int, requester: bytes, their_seq: int, target: bytes, nack_at: float, end_at: float):
        self.seq = seq
        self.requester = requester
        self.their_seq = their_seq
        self.target = target
        self.nack_at = nack_at
        self.end_at = end_at
        self.answered = False


class Tombstone:
    """A dead or left member, remembered (bounded, for tombstone_ttl) so it can be re-checked and revived."""

    __slots__ = ("id", "contact", "state", "inc", "since", "checked", "corrected", "passed", "recheck", "heard")

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
        self.heard = -INF  # when a message from it last came (it is up, at least now and then)


# Timer heap entry kinds: (due, n, kind, record).
T_IND, T_END, T_NACK, T_RELAY_END, T_SUSP, T_RECHECK = range(6)
