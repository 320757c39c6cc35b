"""What every sans-IO core hands its driver: envelopes to send and events to act on."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..envelope import Envelope

# The cores build envelopes with positional arguments on their hot paths (keywords cost ~50% more): fail
# at import, not by silently mis-assigning fields, if the Envelope field order ever changes. Every core
# that builds envelopes imports this module.
_POSITIONAL = ("id", "src", "type", "body", "dst", "ts", "ttl", "seq", "ep", "re", "ack")
if tuple(f.name for f in fields(Envelope))[: len(_POSITIONAL)] != _POSITIONAL:
    raise ImportError("zmqagents.core builds envelopes positionally in the field order " + ", ".join(_POSITIONAL))


class CoreOutputs:
    """Two queues a core fills while it handles input or timers, and the driver drains after each call.

    Draining swaps in a fresh list only when there is something to take, so the common
    empty case allocates nothing.
    """

    _out: list[Envelope]
    _events: list[Any]

    def __init__(self) -> None:
        self._out = []
        self._events = []

    def take_outgoing(self) -> list[Envelope]:
        """Envelopes to send, each with ``dst`` set, in the order the core produced them."""
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    def take_events(self) -> list[Any]:
        """What happened since the last call, in order."""
        events = self._events
        if not events:
            return []
        self._events = []
        return events
