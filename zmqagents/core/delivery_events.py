"""What the reliable delivery core reports (events) and refuses (errors).

The events are drained with :meth:`~zmqagents.core.delivery.Delivery.take_events`; the errors are
raised by its ``send``/``request``/``reply`` when a bound is hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..envelope import Envelope
from ..errors import Error

class WindowFull(Error):
    """send/request/reply refused: ``window`` messages to this destination are unacked. Wait for WindowOpen."""


class TooManyRequests(Error):
    """request refused: ``max_requests`` requests already await a reply. Wait for replies or timeouts."""


@dataclass(slots=True)
class Delivered:
    """A data message or request from ``env.src``, in that sender's order, exactly once."""

    env: Envelope


@dataclass(slots=True)
class Replied:
    """The reply ("rep") or error reply ("err") to our request ``request_id``."""

    request_id: bytes
    env: Envelope


@dataclass(slots=True)
class RequestFailed:
    """Our request got no reply: "timeout" (deadline passed), "unreachable" (retries exhausted, or the
    peer was forgotten) or "evicted" (the peer's state was dropped by the max_peers bound)."""

    request_id: bytes
    dst: bytes
    reason: str


@dataclass(slots=True)
class Acked:
    """A message sent with ``confirm=True`` is known delivered: ``dst`` acknowledged it cumulatively.

    Reported once per such message, when the cumulative ack covers it (a selective ack is not
    enough: the receiver may still lose a message it holds behind a hole). A driver that keeps
    a durable outbox marks the message done on this event and no earlier.
    """

    msg_id: bytes
    dst: bytes


@dataclass(slots=True)
class SendFailed:
    """A send() or reply() was never acked: "unreachable" or "evicted", as for RequestFailed."""

    msg_id: bytes
    dst: bytes
    reason: str


@dataclass(slots=True)
class Stalled:
    """Our stream to ``dst`` stalled: ``dst`` kept talking to us, but none of the ``pending`` messages
    to it was acknowledged for ``waited`` seconds. Reported once per stall (until an ack makes
    progress again); the stream is reopened on a fresh epoch at every ``stall_after`` it lasts."""

    dst: bytes
    pending: int
    waited: float
    state: dict[str, Any] = field(default_factory=dict)  # Delivery.stream_state(dst) before the reopen


@dataclass(slots=True)
class WindowOpen:
    """can_send(dst) is true again after WindowFull was raised for dst."""

    dst: bytes
