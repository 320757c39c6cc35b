"""What the membership core reports to the table owner (:mod:`zmqagents.core.membership`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..identity import Contact

__all__ = ["Alive", "Suspect", "Failed", "Left", "Refuted"]


@dataclass(slots=True, frozen=True)
class Alive:
    """A member is alive again (suspicion cleared first-hand, or a dead one answered: re-add it)."""

    contact: Contact
    incarnation: int


@dataclass(slots=True, frozen=True)
class Suspect:
    """A member is suspected (our probe failed, or we heard so and are verifying)."""

    node_id: bytes
    incarnation: int


@dataclass(slots=True, frozen=True)
class Failed:
    """A member is confirmed dead: drop it from the table and promote a replacement."""

    node_id: bytes
    incarnation: int


@dataclass(slots=True, frozen=True)
class Left:
    """A member left gracefully: drop it from the table (it is not a failure)."""

    node_id: bytes
    incarnation: int = 0


@dataclass(slots=True, frozen=True)
class Refuted:
    """Someone suspected us, declared us dead or said we left: we raised our incarnation to this."""

    incarnation: int
