"""Counting and logging what the transport refuses, without letting a hostile peer flood the log.

Every refusal is counted by reason (the counts are exported as
``zmqagents_dropped_messages_total{layer="transport",reason=...}``) and logged, but at most once
per (reason, peer) per interval, and at most ``max_lines`` lines per interval in all: a peer that
makes up a new key (or a new claimed id) for every attempt still cannot write more than that.
What was not logged is summed up in one line when the next interval begins, so an operator sees
that the refusals went on. Memory is bounded by ``max_lines`` (the keys logged this interval).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from ..identity import short_id

DEFAULT_INTERVAL = 60.0  # s between two log lines for the same (reason, peer)
DEFAULT_MAX_LINES = 32  # log lines per interval, all reasons and peers together


def peer_label(peer: bytes) -> str:
    """How a peer is named in a log line: a node id or key shortened, anything else as hex."""
    if not peer:
        return "a peer not yet authenticated"
    return short_id(peer) if len(peer) == 32 else peer[:16].hex()


class DropLog:
    """Drop counters by reason, and a rate-limited warning (or debug line) for each."""

    def __init__(self, logger: logging.Logger, *, quiet: frozenset[str] = frozenset(),
                 interval: float = DEFAULT_INTERVAL, max_lines: int = DEFAULT_MAX_LINES,
                 clock: Callable[[], float] = time.monotonic):
        self.counts: dict[str, int] = {}
        self._log = logger
        self._quiet = quiet  # reasons that are local conditions (logged at debug), not a peer's doing
        self._interval = interval
        self._max_lines = max_lines
        self._clock = clock
        self._window_end = float("-inf")
        self._logged: set[tuple[str, bytes]] = set()
        self._suppressed = 0

    def drop(self, reason: str, peer: bytes, detail: object) -> None:
        """Count one refusal; log it unless this (reason, peer) or too many lines were logged this interval."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = self._clock()
        if now >= self._window_end:
            if self._suppressed:
                self._log.warning("%d more dropped messages or refused links were not logged in the last %.0f s "
                                  "(see zmqagents_dropped_messages_total)", self._suppressed, self._interval)
            self._window_end = now + self._interval
            self._logged.clear()
            self._suppressed = 0
        key = (reason, peer)
        if key in self._logged or len(self._logged) >= self._max_lines:
            if reason not in self._quiet:
                self._suppressed += 1
            return
        self._logged.add(key)
        if reason in self._quiet:
            self._log.debug("could not send to %s: %s (%s)", peer_label(peer), reason, detail)
        else:
            self._log.warning("refused from %s: %s (%s)", peer_label(peer), reason, detail)


# Frames we could not send: local conditions the delivery core retries, logged at debug.
OUTGOING_DROPS = frozenset({"no_route", "send_hwm", "encode_error", "subscriber_limit", "forgotten", "subscribers_cut",
                            "cert_pending_full", "cert_pending_dropped", "uncertified_destination"})
# What a peer can make the inbox refuse, in the order the checks run (protocols/node.md, "What the inbox
# refuses"): exported at 0 from the start, so that a rate() alert on any of them needs no first event.
INBOX_REFUSALS = ("plaintext", "handshake_failed", "handshake_refused", "handshake_aborted", "multipart",
                  "bad_routing_id", "identity_mismatch", "not_allowed", "backlog_peer_share",
                  "backlog_full", "rate_messages", "rate_bytes",
                  "TruncatedEnvelope", "OversizeEnvelope", "TooManyValues", "MalformedEnvelope",
                  "UnsupportedVersion", "src_mismatch", "wrong_dst")
