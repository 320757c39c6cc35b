"""Read-only views of a running node for operators: what `zmqagents top`, `zmqagents members`,
the admin endpoint's metrics and its dashboard show.

Why one module: the same counters reach people through several doors (Prometheus metrics, the
local API's ``top`` and ``members`` operations, the dashboard's JSON). Reading them here once keeps
the doors in agreement and keeps every reader on the node's public attributes (no reach-ins).
Nothing here does IO or keeps state: a view is a plain dict (msgpack- and JSON-ready) read between
two loop callbacks, so it is consistent without a lock. Rates are the reader's business: a
snapshot carries the node's monotonic ``time``, and two snapshots give rates.

Bounds: every list here is as long as something the node bounds already (routing table: k per
bucket; membership: its members, tombstones: ``tombstone_max``; drop reasons: fixed sets in the code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..identity import format_node_id
from ..transport.fleet import FLEET_REFUSALS
from ..transport.droplog import INBOX_REFUSALS

if TYPE_CHECKING:
    from ..node import Node

# Core counters that are drops of something a peer sent or we could not send, by core.
DELIVERY_DROPS = ("malformed", "unsequenced", "stale_epoch", "reorder_overflow", "reorder_bytes_full",
                  "buffer_discarded")
ROUTING_DROPS = ("malformed", "misdirected", "from_mismatch", "unmatched", "late_responses")
MEMBERSHIP_DROPS = ("malformed",)
# What a relay refuses to forward (core/relay.py), as reason names: its stats are refused_<reason>
RELAY_DROPS = ("full", "unknown", "client_rate", "total_rate", "malformed", "loop", "window", "total_window")
NODE_DROPS = {"inbox_refused": "inbox_full", "inbox_bytes_refused": "inbox_bytes_full",
              "inbox_share_refused": "inbox_peer_share", "publications_dropped": "subscription_queue_full",
              "publications_refused": "subscription_peer_share", "replies_dropped": "reply_window_full",
              "requests_expired": "expired"}

MEMBER_STATES = ("alive", "suspect", "unprobed", "dead", "left")
# Rows one answer carries at most (the local API's `top` and `members`): a row is at most 28 msgpack
# values (with MAX_TAGS tags), so 512 rows (14,336 values) stay under the 16,384 values a reader's envelope decoder accepts
# (envelope.DEFAULT_MAX_VALUES). The answer says how many there were in all.
MAX_ROWS = 512
MAX_TAGS = 8  # fleet groups listed per member (a certificate may name more)


def traffic(node: "Node") -> dict[str, int]:
    """Cumulative counters of what crossed the node's sockets and its reliable delivery."""
    t = node.transport.stats
    d = node.delivery.stats
    return {
        "messages_in": t["frames_in"], "messages_out": t["frames_out"],
        "bytes_in": t["bytes_in"], "bytes_out": t["bytes_out"],
        "publications_in": t["publications_in"], "publications_out": t["publications_out"],
        "delivered": d["delivered"], "submitted": d["sent"], "retransmits": d["retransmits"],
        "duplicates": d["duplicates"], "requests_timed_out": d["requests_timed_out"],
        "requests_failed": d["requests_failed"], "send_failed": d["send_failed"],
    }


def drops(node: "Node") -> list[tuple[str, str, int]]:
    """(layer, reason, count) of every drop counter, zeros included: the reasons are fixed names
    from the code, never text a peer chose."""
    transport = node.transport
    out = []
    refusals = set(INBOX_REFUSALS).union(FLEET_REFUSALS if transport.fleet is not None else ())
    for reason in sorted(refusals.union(transport.drops)):
        out.append(("transport", reason, transport.drops.get(reason, 0)))
    for key, reason in NODE_DROPS.items():
        out.append(("node", reason, node.stats[key]))
    d = node.delivery.stats
    for reason in DELIVERY_DROPS:
        out.append(("delivery", reason, d[reason]))
    if node.routing is not None:
        for reason in ROUTING_DROPS:
            out.append(("routing", reason, node.routing.stats[reason]))
        for reason in MEMBERSHIP_DROPS:
            out.append(("membership", reason, node.membership.stats[reason]))
    if node.relay_server is not None:
        relay_stats = node.relay_server.stats
        for reason in RELAY_DROPS:
            out.append(("relay", reason, relay_stats[f"refused_{reason}"]))
        out.append(("relay", "ack_unknown", relay_stats["acks_unknown"]))
    return out


def queues(node: "Node") -> dict[str, int]:
    """What waits where now: the application's inbox, the reorder buffer, unacknowledged sends,
    this loop turn's socket writes, running handlers, publications for subscribers."""
    inbox_messages, inbox_bytes = node.inbox_size
    reorder_messages, reorder_bytes = node.delivery.buffered()
    return {
        "inbox_messages": inbox_messages, "inbox_bytes": inbox_bytes,
        "reorder_messages": reorder_messages, "reorder_bytes": reorder_bytes,
        "unacked_messages": node.delivery.pending(), "transport_outbox": node.transport.outbox_size,
        "handlers_running": node.handlers_running, "subscription_backlog": node.subscription_backlog,
    }


def connections(node: "Node") -> dict[str, int]:
    transport = node.transport
    return {"outgoing": transport.dealer_count, "inbound": transport.inbound_count,
            "subscription": transport.subscription_count, "neighbours": len(node.neighbours())}


def members(node: "Node") -> list[dict[str, Any]]:
    """Every member this node knows, one row each: the routing table's contacts (membership's state,
    or ``unprobed``), members membership holds outside the table, and the dead and left it remembers.

    Row: ``node_id`` (hex), ``contact`` (None for a tombstone whose contact is forgotten), ``state``,
    ``incarnation``, ``rtt_ms`` (None if never measured), ``age_s`` (seconds since last heard, None
    if the node never heard it itself), ``in_table`` (bool), ``fails``, ``tags`` (the groups of its
    fleet certificate, sorted, the first MAX_TAGS; empty outside a fleet)."""
    if node.routing is None:
        return []
    now = node.now()
    membership = node.membership
    rows: dict[bytes, dict[str, Any]] = {}
    for entry in node.routing.table:
        nid = entry.node_id
        rtt = membership.rtt(nid) or entry.rtt
        rows[nid] = {"node_id": nid.hex(), "contact": str(entry.contact),
                     "state": membership.state_of(nid) or "unprobed",
                     "incarnation": membership.incarnation_of(nid) or 0,
                     "rtt_ms": _ms(rtt), "age_s": round(max(0.0, now - entry.last_seen), 3),
                     "in_table": True, "fails": entry.fails}
    for nid, state, inc, rtt in membership.members():
        if nid not in rows:
            contact = membership.contact_for(nid)
            rows[nid] = {"node_id": nid.hex(), "contact": None if contact is None else str(contact),
                         "state": state, "incarnation": inc, "rtt_ms": _ms(rtt), "age_s": None,
                         "in_table": False, "fails": 0}
    for nid, state, inc in membership.tombstones():
        if nid not in rows:
            rows[nid] = {"node_id": nid.hex(), "contact": None, "state": state, "incarnation": inc,
                         "rtt_ms": None, "age_s": None, "in_table": False, "fails": 0}
    for nid, row in rows.items():
        row["tags"] = sorted(node.certified_groups(nid))[:MAX_TAGS]
    return list(rows.values())


def snapshot(node: "Node") -> dict[str, Any]:
    """All of the above for one node at one instant (``time``: the node's monotonic clock, s); each
    routing-table row also carries the envelopes and bytes exchanged with that peer, in and out."""
    table = node.peers() if node.routing is not None else []
    traffic_of = node.transport.peer_traffic.of
    for row in table:  # what we exchanged with each: local to this view, never in zmqagents.peers
        row["messages_in"], row["bytes_in"], row["messages_out"], row["bytes_out"] = \
            traffic_of(bytes.fromhex(row["node_id"]))
    states = dict.fromkeys(MEMBER_STATES[:3], 0)
    for row in table:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return {
        "node_id": format_node_id(node.node_id), "contact": str(node.contact), "time": node.now(),
        "traffic": traffic(node), "drops": [list(d) for d in drops(node)], "queues": queues(node),
        "connections": connections(node), "peer_states": states, "peers": table,
    }


def first_rows(rows: list[dict[str, Any]], limit: int = MAX_ROWS) -> list[dict[str, Any]]:
    """At most ``limit`` rows, the most telling first: live states before dead ones, then by node id."""
    order = {state: i for i, state in enumerate(MEMBER_STATES)}
    return sorted(rows, key=lambda r: (order.get(r["state"], len(order)), r["node_id"]))[:limit]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
