"""What an agent offers: a capability descriptor, its provider-record form, and an A2A card.

A :class:`Capability` is what a provider publishes (as a provider record) and what a caller
reads to decide whether, where and how to send a task: name, description, JSON schemas of input
and output, tags, cost, and how many tasks it runs at once. Its fields follow the A2A Agent
Card *skill* (id, name, description, tags, examples, inputModes, outputModes) so that a node's
capabilities export as an A2A card without translation; schemas, cost and concurrency, which
A2A skills do not carry, stay in the zmqagents record.

Records come from other nodes, so :meth:`Capability.from_record` checks every field and bound.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from ..core.tasks import MAX_CAPABILITY_LEN, CapabilityPolicy, check_group_name, packed_size
from ..identity import Contact
from .schema import SchemaError, check_schema, validate
from ..errors import Error

if TYPE_CHECKING:
    from ..shell.api import NodeAPI

log = logging.getLogger(__name__)

DESCRIBE = "task.describe"  # request: the capability records a node serves (reply: a list of records)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
MAX_DESCRIPTION = 2000
MAX_TAGS = 32
MAX_TAG_LEN = 64
MAX_EXAMPLES = 8
MAX_RECORD_BYTES = 16 * 1024  # a record travels in DHT values and hello bodies: keep it small
A2A_PROTOCOL_VERSION = "0.3.0"


class CapabilityError(Error, ValueError):
    """A descriptor or record that breaks the rules below; the message says which field."""


class InvalidInput(CapabilityError):
    """A task input that does not match the capability's input schema (``errors`` lists why)."""

    def __init__(self, capability: str, errors: list[str]):
        self.errors = errors
        super().__init__(f"input does not match the schema of {capability!r}: " + "; ".join(errors))


@dataclass(frozen=True)
class Capability:
    """One skill a provider offers.

    ``cost_per_call`` and ``cost_per_token`` are in whatever unit the mesh agrees on (they are
    only compared among providers). ``allow`` is the provider's allow list -- node ids (``bytes``)
    and group names (``str``, resolved by :meth:`Agents.set_group` on the provider) -- and is
    never published: it is policy, not description.
    """

    name: str
    description: str = ""
    input_schema: Any = None  # JSON Schema (subset, see schema.py); None accepts any input
    output_schema: Any = None
    tags: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    cost_per_call: float = 0.0
    cost_per_token: float = 0.0
    max_concurrency: int = 4
    queue: int = 0
    input_modes: tuple[str, ...] = ("application/json",)
    output_modes: tuple[str, ...] = ("application/json",)
    allow: frozenset[bytes | str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name) <= MAX_CAPABILITY_LEN or not NAME_RE.match(self.name):
            raise CapabilityError(f"capability name {self.name!r:.80} must be 1..{MAX_CAPABILITY_LEN} characters of "
                                  "letters, digits and _ . : / - (starting with a letter or digit)")
        if not isinstance(self.description, str) or len(self.description) > MAX_DESCRIPTION:
            raise CapabilityError(f"description must be text of at most {MAX_DESCRIPTION} characters")
        for label, schema in (("input_schema", self.input_schema), ("output_schema", self.output_schema)):
            if schema is not None:
                try:
                    check_schema(schema)
                except SchemaError as exc:
                    raise CapabilityError(f"{label}: {exc}") from None
        object.__setattr__(self, "tags", _strings("tags", self.tags, MAX_TAGS, MAX_TAG_LEN))
        object.__setattr__(self, "examples", _strings("examples", self.examples, MAX_EXAMPLES, MAX_DESCRIPTION))
        object.__setattr__(self, "input_modes", _strings("input_modes", self.input_modes, 8, 100))
        object.__setattr__(self, "output_modes", _strings("output_modes", self.output_modes, 8, 100))
        for label in ("cost_per_call", "cost_per_token"):
            value = getattr(self, label)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1e18:
                raise CapabilityError(f"{label} must be a non-negative number")
        if not isinstance(self.max_concurrency, int) or not 1 <= self.max_concurrency <= 100_000:
            raise CapabilityError("max_concurrency must be an integer 1..100000")
        if not isinstance(self.queue, int) or not 0 <= self.queue <= 100_000:
            raise CapabilityError("queue must be an integer 0..100000")
        if self.allow is not None:
            if isinstance(self.allow, (str, bytes)) or not isinstance(self.allow, (set, frozenset, list, tuple)):
                raise CapabilityError("allow must be a set of node ids (bytes) and group names (str)")
            for entry in self.allow:
                if isinstance(entry, str):
                    try:
                        check_group_name(entry)
                    except ValueError as exc:
                        raise CapabilityError(f"allow: {exc}") from None
                elif not isinstance(entry, bytes) or len(entry) != 32:
                    raise CapabilityError("allow: each entry is a 32-byte node id or a group name")
            object.__setattr__(self, "allow", frozenset(self.allow))

    def check_strict(self) -> None:
        """Raise CapabilityError if a schema uses a keyword the validator would not check.

        Called when a provider registers the capability (:meth:`Agents.serve`): a schema that
        says ``anyOf`` or ``uniqueItems`` must be enforced, not silently ignored. Records read from
        peers are only checked leniently (their providers enforce their own schemas).
        """
        for label, schema in (("input_schema", self.input_schema), ("output_schema", self.output_schema)):
            if schema is not None:
                try:
                    check_schema(schema, strict=True)
                except SchemaError as exc:
                    raise CapabilityError(f"{label}: {exc}") from None

    # -- use -------------------------------------------------------------------------------

    def check_input(self, value: Any) -> None:
        """Raise InvalidInput unless ``value`` matches the input schema."""
        if self.input_schema is not None:
            errors = validate(self.input_schema, value)
            if errors:
                raise InvalidInput(self.name, errors)

    def policy(self) -> CapabilityPolicy:
        """The provider core's view: concurrency, wait queue, allow list."""
        return CapabilityPolicy(max_concurrency=self.max_concurrency, queue=self.queue, allow=self.allow)

    # -- records and cards -----------------------------------------------------------------------

    def to_record(self) -> dict:
        """The published form (msgpack/JSON map), as provider records and `agents info` carry it."""
        rec: dict[str, Any] = {"name": self.name, "max_concurrency": self.max_concurrency}
        if self.description:
            rec["description"] = self.description
        if self.input_schema is not None:
            rec["input_schema"] = self.input_schema
        if self.output_schema is not None:
            rec["output_schema"] = self.output_schema
        if self.tags:
            rec["tags"] = list(self.tags)
        if self.examples:
            rec["examples"] = list(self.examples)
        if self.cost_per_call:
            rec["cost_per_call"] = self.cost_per_call
        if self.cost_per_token:
            rec["cost_per_token"] = self.cost_per_token
        if self.input_modes != ("application/json",):
            rec["input_modes"] = list(self.input_modes)
        if self.output_modes != ("application/json",):
            rec["output_modes"] = list(self.output_modes)
        return rec

    @classmethod
    def from_record(cls, rec: Any) -> "Capability":
        """Parse a record from a peer; CapabilityError on anything malformed or oversize."""
        if not isinstance(rec, dict):
            raise CapabilityError("a capability record is a map")
        size = packed_size(rec)
        if size is None or size > MAX_RECORD_BYTES:
            raise CapabilityError(f"a capability record must encode to at most {MAX_RECORD_BYTES} bytes")
        known = {"name", "description", "input_schema", "output_schema", "tags", "examples", "cost_per_call",
                 "cost_per_token", "max_concurrency", "input_modes", "output_modes"}
        args = {k: v for k, v in rec.items() if k in known}  # unknown keys: a newer peer's additions
        for key in ("tags", "examples", "input_modes", "output_modes"):
            if key in args:
                if not isinstance(args[key], list):
                    raise CapabilityError(f"{key} must be an array of strings")
                args[key] = tuple(args[key])
        if "name" not in args:
            raise CapabilityError("a capability record needs a name")
        try:
            return cls(**args)
        except TypeError as exc:
            raise CapabilityError(str(exc)) from None

    def to_a2a_skill(self) -> dict:
        """This capability as an A2A AgentSkill object."""
        skill: dict[str, Any] = {"id": self.name, "name": self.name, "description": self.description or self.name,
                                 "tags": list(self.tags)}
        if self.examples:
            skill["examples"] = list(self.examples)
        skill["inputModes"] = list(self.input_modes)
        skill["outputModes"] = list(self.output_modes)
        return skill


def agent_card(name: str, capabilities: Iterable[Capability], *, url: str, description: str = "",
               version: str = "1.0.0") -> dict:
    """An A2A Agent Card for a node: its capabilities as skills, streaming declared.

    ``url`` is where an A2A client would reach the agent (a bridge's address); zmqagents nodes
    themselves are reached by contact, which the card cannot express.
    """
    caps = list(capabilities)
    return {
        "protocolVersion": A2A_PROTOCOL_VERSION,
        "name": name,
        "description": description or f"zmqagents node offering {', '.join(c.name for c in caps) or 'nothing'}",
        "url": url,
        "version": version,
        "capabilities": {"streaming": True, "pushNotifications": False},
        "defaultInputModes": ["application/json"],
        "defaultOutputModes": ["application/json"],
        "skills": [c.to_a2a_skill() for c in caps],
    }


def _strings(label: str, values: Any, max_count: int, max_len: int) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise CapabilityError(f"{label} must be a list of strings")
    if len(values) > max_count:
        raise CapabilityError(f"{label}: at most {max_count} entries")
    for v in values:
        if not isinstance(v, str) or not 0 < len(v) <= max_len:
            raise CapabilityError(f"{label}: each entry is a string of 1..{max_len} characters")
    return tuple(values)


async def describe(node: NodeAPI, peer: bytes | Contact, *, timeout: float = 10.0) -> list[Capability]:
    """The capabilities ``peer`` (a node id or contact) serves, as it describes them in answer to a
    ``task.describe`` request (protocols/tasks.md §3.1) sent through ``node``; malformed records
    are skipped and logged."""
    records = await node.request(peer, None, timeout=timeout, type=DESCRIBE)
    caps = []
    for rec in records if isinstance(records, list) else ():
        try:
            caps.append(Capability.from_record(rec))
        except CapabilityError as exc:
            log.warning("skipping a malformed capability record: %s", exc)
    return caps
