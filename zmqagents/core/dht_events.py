"""The DHT's message types, its counters and the event it reports (``protocols/routing.md``, "Records and
providers"). Shared by the core's modules (:mod:`zmqagents.core.dht` and the two it is built on); every
name is importable from :mod:`zmqagents.core.dht`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .dht_records import Record
from .lookup import LOOKUP_STAT_KEYS

PREFIX = "dht."
FIND_VALUE = "dht.find_value"
VALUE = "dht.value"
FIND_PROVIDERS = "dht.find_providers"
PROVIDERS = "dht.providers"
STORE = "dht.store"
ADD_PROVIDER = "dht.add_provider"
STORED = "dht.stored"

STAT_KEYS = LOOKUP_STAT_KEYS + (
    # traffic
    "received", "sent", "malformed", "misdirected", "from_self", "from_mismatch", "other_types", "unmatched",
    "late_responses", "rpc_timeouts",
    "find_value_received", "find_providers_received", "store_received", "add_provider_received",
    "values_answered", "providers_answered",
    # records and provider entries offered to the store (STORE, our own puts, re-replication)
    "stored", "updated", "duplicates",
    "refused_malformed", "refused_oversize", "refused_expired", "refused_future", "refused_bad_signature",
    "refused_owner", "refused_conflict", "refused_stale", "refused_full", "refused_rate", "refused_key",
    "refused_vouched", "vouched_over",
    "evicted", "expired", "providers_stored", "providers_updated", "providers_full", "providers_forgotten",
    # records in answers to our lookups that were not usable
    "answers_bad_record", "answers_bad_provider",
    # operations
    "ops_started", "ops_queued", "ops_refused", "gets_found", "gets_local", "gets_not_found", "gets_failed",
    "puts_ok", "puts_failed", "provides_ok", "provides_failed", "finds_ok", "finds_failed",
    "stores_sent", "stores_acked", "stores_refused", "republished", "reprovided",
    "replicate_passes", "replicated",
)


@dataclass(slots=True)
class DhtDone:
    """An operation finished.

    ``kind``: "get", "put", "provide" or "providers". ``ok``: the operation did what it was asked (a get
    that converged without finding anything is ok with ``record`` None: not found). ``record``: for a get
    the record found, for a put the signed record it stored (its ``seq`` and ``expires``). ``stored``: replicas
    that accepted a put/provide (ours included). ``rounds``: the deepest lookup hop that answered.
    ``reason``: "" when ok (a get that found nothing: "not_found"); else "failed" (nobody answered),
    "no_contacts", "busy", or for put/provide the refusal the holders gave ("owner", "conflict", ...).
    """

    op_id: int
    kind: str
    key: bytes
    ok: bool
    record: Record | None = None
    providers: list[Any] = field(default_factory=list)
    stored: int = 0
    rounds: int = 0
    queries: int = 0
    duration: float = 0.0
    reason: str = ""
