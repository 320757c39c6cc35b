"""The broadcast protocol's wire forms: the origin-signed message, its id, and the four envelope bodies.

``protocols/broadcast.md`` is the normative text; this module is its one implementation, used by the
core (:mod:`zmqagents.core.broadcast`), the shell and the vector generator alike.

A *message* outlives the hop that carries it, so its origin signs it (``protocols/broadcast.md`` 3):
``{"o": origin public key, "e": epoch, "s": seq, "t": topic, "d": data, "sig": signature}``. Its *id*
is computed from the fields that name it (origin, epoch, seq, topic), never from the signature or the
data, so a receiver can drop a duplicate by id before it pays for a verification; a forged copy that
carries a genuine message's id fails verification and leaves no trace (the id is recorded only once
the signature checked).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing

from ..envelope import canonical_packb
from ..errors import Error

PREFIX = "bcast."
MSG = "bcast.msg"  # a message pushed eagerly: {"m": message, "h": hops}
IHAVE = "bcast.ihave"  # lazy announcements: {"i": [[id, hops], ...]}
GRAFT = "bcast.graft"  # "push to me again, and send these": {"i": [id, ...]}; with "r": true only "send these"
PRUNE = "bcast.prune"  # "stop pushing to me": no body
WANT = "bcast.want"  # "push and announce to me only these topics (and the mesh-wide one)": {"t": [topic, ...] | nil}
TYPES = frozenset({MSG, IHAVE, GRAFT, PRUNE, WANT})

SIGN_DOMAIN = b"zmqagents/bcast/v1\x00"
ID_DOMAIN = b"zmqagents/bcast-id/v1\x00"
ID_LEN = 16
KEY_LEN = 32
SIG_LEN = 64
MAX_TOPIC_BYTES = 128  # UTF-8 bytes of a topic name; "" is the mesh-wide topic
MAX_UINT64 = 2**64 - 1
_U64 = struct.Struct(">Q")


class BadMessage(Error, ValueError):
    """A message or body that must be refused; ``reason`` names the counter it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def message_id(origin: bytes, epoch: int, seq: int, topic: str) -> bytes:
    """The 16-byte id of a message: ``sha256(ID_DOMAIN || origin || u64be(epoch) || u64be(seq) || utf8(topic))``
    cut to 16 bytes. The topic comes last, so the concatenation is unambiguous (the rest is fixed-size)."""
    return hashlib.sha256(ID_DOMAIN + origin + _U64.pack(epoch) + _U64.pack(seq) + topic.encode("utf-8")).digest()[:ID_LEN]


def signing_bytes(origin: bytes, epoch: int, seq: int, topic: str, data: Any) -> bytes:
    """What the origin's signature covers: the domain, then the canonical msgpack of
    ``{"d": data, "e": epoch, "o": origin, "s": seq, "t": topic}`` (envelope.md 7.1's canonical form)."""
    return SIGN_DOMAIN + canonical_packb({"o": origin, "e": epoch, "s": seq, "t": topic, "d": data})


@dataclass(slots=True, frozen=True, eq=False)
class Message:
    """One origin-signed publication. ``id`` is :func:`message_id` of its fields; ``size`` is the length of
    its signing bytes (what the size limit applies to: the data's encoded size plus a fixed ~80 bytes)."""

    origin: bytes
    epoch: int
    seq: int
    topic: str
    data: Any
    sig: bytes
    id: bytes
    size: int

    def to_wire(self) -> dict[str, Any]:
        return {"o": self.origin, "e": self.epoch, "s": self.seq, "t": self.topic, "d": self.data, "sig": self.sig}


def make_message(signer: Any, epoch: int, seq: int, topic: str, data: Any) -> Message:
    """Sign a new message with ``signer`` (``.public_key``, ``.sign(bytes) -> signature``)."""
    check_topic(topic)
    for name, v in (("epoch", epoch), ("seq", seq)):
        if type(v) is not int or not 0 <= v <= MAX_UINT64:
            raise BadMessage("malformed", f"{name} must be an integer from 0 to 2**64-1")
    origin = signer.public_key
    sb = signing_bytes(origin, epoch, seq, topic, data)
    return Message(origin, epoch, seq, topic, data, signer.sign(sb), message_id(origin, epoch, seq, topic), len(sb))


def check_topic(topic: Any) -> None:
    """A topic is a str of at most MAX_TOPIC_BYTES UTF-8 bytes; BadMessage("malformed") otherwise."""
    if type(topic) is not str:
        raise BadMessage("malformed", "topic must be a str")
    if len(topic) > MAX_TOPIC_BYTES or len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise BadMessage("malformed", f"topic longer than {MAX_TOPIC_BYTES} UTF-8 bytes")


@dataclass(slots=True, frozen=True, eq=False)
class Claimed:
    """A message's fields as received, *not yet verified*: enough to compute its id and drop a duplicate."""

    origin: bytes
    epoch: int
    seq: int
    topic: str
    data: Any
    sig: bytes
    id: bytes


def parse_claimed(m: Any) -> Claimed:
    """Check the shape of a received message map (types and sizes only: no signature check, no packing).
    BadMessage("malformed") on any deviation from protocols/broadcast.md 3.1."""
    if type(m) is not dict:
        raise BadMessage("malformed", "message must be a map")
    o, e, s, t, sig = m.get("o"), m.get("e"), m.get("s"), m.get("t"), m.get("sig")
    if type(o) is not bytes or len(o) != KEY_LEN:
        raise BadMessage("malformed", "o must be 32 bytes")
    if type(e) is not int or not 0 <= e <= MAX_UINT64 or type(s) is not int or not 0 <= s <= MAX_UINT64:
        raise BadMessage("malformed", "e and s must be integers from 0 to 2**64-1")
    if type(t) is not str:
        raise BadMessage("malformed", "topic must be a str")
    check_topic(t)
    if type(sig) is not bytes or len(sig) != SIG_LEN:
        raise BadMessage("malformed", "sig must be 64 bytes")
    if "d" not in m:
        raise BadMessage("malformed", "d is missing")
    return Claimed(o, e, s, t, m["d"], sig, message_id(o, e, s, t))


def verify_claimed(c: Claimed, max_size: int) -> Message:
    """The verified Message, or BadMessage("oversize") / BadMessage("bad_signature")."""
    sb = signing_bytes(c.origin, c.epoch, c.seq, c.topic, c.data)
    if len(sb) > max_size:
        raise BadMessage("oversize", f"{len(sb)} bytes signed, limit {max_size}")
    try:
        nacl.signing.VerifyKey(c.origin).verify(sb, c.sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError,
            nacl.exceptions.CryptoError):
        raise BadMessage("bad_signature") from None
    return Message(c.origin, c.epoch, c.seq, c.topic, c.data, c.sig, c.id, len(sb))


def parse_msg_body(body: Any) -> tuple[Any, int]:
    """A ``bcast.msg`` body: (the message map, hops). BadMessage("malformed") if it is not one."""
    if type(body) is not dict:
        raise BadMessage("malformed", "bcast.msg body must be a map")
    h = body.get("h")
    if type(h) is not int or not 1 <= h <= 255:
        raise BadMessage("malformed", "h must be an integer from 1 to 255")
    return body.get("m"), h


def parse_ihave_body(body: Any, limit: int) -> tuple[list[tuple[bytes, int]], int]:
    """A ``bcast.ihave`` body: its first ``limit`` well-formed [id, hops] pairs, and how many entries were
    left out (over the limit or malformed). BadMessage("malformed") if the body is not a map with a list."""
    if type(body) is not dict or type(body.get("i")) is not list:
        raise BadMessage("malformed", "bcast.ihave body must be {i: [[id, hops], ...]}")
    out: list[tuple[bytes, int]] = []
    skipped = 0
    for item in body["i"]:
        if len(out) >= limit:
            skipped += 1
            continue
        if (type(item) is list and len(item) == 2 and type(item[0]) is bytes and len(item[0]) == ID_LEN
                and type(item[1]) is int and 1 <= item[1] <= 255):
            out.append((item[0], item[1]))
        else:
            skipped += 1
    return out, skipped


def parse_graft_body(body: Any, limit: int) -> tuple[list[bytes], int, bool]:
    """A ``bcast.graft`` body: its first ``limit`` well-formed ids, how many entries were left out, and whether
    it is a repair only (``"r": true``: send these, the link stays as it is; any other value reads as absent)."""
    if type(body) is not dict or type(body.get("i")) is not list:
        raise BadMessage("malformed", "bcast.graft body must be {i: [id, ...]}")
    out: list[bytes] = []
    skipped = 0
    for item in body["i"]:
        if len(out) < limit and type(item) is bytes and len(item) == ID_LEN:
            out.append(item)
        else:
            skipped += 1
    return out, skipped, body.get("r") is True


def parse_want_body(body: Any, limit: int) -> tuple[frozenset[str] | None, int]:
    """A ``bcast.want`` body: the topics the sender wants (None: every topic) and 1 if it named more than
    ``limit`` (then it is taken to want every topic: more payloads for it, never fewer). BadMessage
    ("malformed") if the body is not ``{"t": nil}`` or ``{"t": [topic, ...]}`` with valid topics."""
    if type(body) is not dict or "t" not in body:
        raise BadMessage("malformed", "bcast.want body must be {t: [topic, ...] | nil}")
    t = body["t"]
    if t is None:
        return None, 0
    if type(t) is not list:
        raise BadMessage("malformed", "bcast.want t must be a list of topics or nil")
    if len(t) > limit:
        return None, 1
    for topic in t:
        check_topic(topic)
    return frozenset(t), 0
