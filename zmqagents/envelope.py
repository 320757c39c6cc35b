"""The one envelope: a 4-byte big-endian length, then a msgpack map.

The same bytes go on the wire, into spool files and through pipes; the
written spec is ``protocols/envelope.md``. Decoding is strict and bounded:
the length is checked against a limit before anything is allocated, field
types are checked, unknown fields are ignored (so minor additions stay
compatible) and an unknown major version is refused. Every failure raises a
subclass of :class:`EnvelopeError`, never anything else.

Ed25519 signatures are optional and cover a *canonical* encoding (map keys
sorted by their encoded bytes, recursively) so any implementation can
re-create the signed bytes from decoded values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Iterator

import msgpack
import nacl.exceptions
import nacl.signing

from .identity import node_id_of

VERSION = 1
HEADER = struct.Struct(">I")
HEADER_LEN = HEADER.size
DEFAULT_MAX_SIZE = 1 << 20  # 1 MiB: large enough for a task payload, small enough to buffer per peer
MAX_TYPE_LEN = 64
SIGNATURE_DOMAIN = b"zmqagents/envelope/v1\x00"

ID_LEN = 16
NODE_ID_LEN = 32
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64

Body = Any


class EnvelopeError(ValueError):
    """Base of every envelope decoding or verification failure."""


class TruncatedEnvelope(EnvelopeError):
    """Fewer bytes than the length prefix announces (or than a prefix needs)."""


class OversizeEnvelope(EnvelopeError):
    """The length prefix announces more than the configured maximum."""


class MalformedEnvelope(EnvelopeError):
    """Not msgpack, not a map, a required field missing, or a field of the wrong type."""


class UnsupportedVersion(EnvelopeError):
    """The envelope's major version is one this implementation does not speak."""


class BadSignature(EnvelopeError):
    """A signature is missing where required, does not verify, or its key does not own ``src``."""


@dataclass(slots=True)
class Envelope:
    """One message. ``id``, ``src`` and ``dst`` are raw bytes; ``ts`` and ``ttl`` are milliseconds.

    Delivery fields (``seq``, ``ep``, ``re``, ``ack``) are used by the reliable
    delivery core and are absent on messages that do not need them.
    """

    id: bytes
    src: bytes
    type: str
    body: Body = None
    dst: bytes | None = None
    ts: int = 0
    ttl: int = 0
    seq: int | None = None
    ep: int | None = None
    re: bytes | None = None
    ack: list | None = None
    pk: bytes | None = None
    sig: bytes | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    # -- encoding ------------------------------------------------------------

    def to_map(self) -> dict:
        m: dict[str, Any] = {"v": VERSION, "id": self.id, "src": self.src, "t": self.type}
        if self.dst is not None:
            m["dst"] = self.dst
        if self.ts:
            m["ts"] = self.ts
        if self.ttl:
            m["ttl"] = self.ttl
        if self.body is not None:
            m["b"] = self.body
        if self.seq is not None:
            m["seq"] = self.seq
        if self.ep is not None:
            m["ep"] = self.ep
        if self.re is not None:
            m["re"] = self.re
        if self.ack is not None:
            m["ak"] = self.ack
        if self.pk is not None:
            m["pk"] = self.pk
        if self.sig is not None:
            m["sig"] = self.sig
        return m

    def encode(self, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
        """Length-prefixed bytes. Raises OversizeEnvelope rather than emit what a peer must refuse."""
        try:
            payload = msgpack.packb(self.to_map(), use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MalformedEnvelope(f"body cannot be encoded as msgpack: {exc}") from None
        if len(payload) > max_size:
            raise OversizeEnvelope(f"envelope of {len(payload)} bytes exceeds the limit of {max_size} bytes")
        return HEADER.pack(len(payload)) + payload

    # -- signatures ----------------------------------------------------------

    def signing_bytes(self) -> bytes:
        """The canonical bytes a signature covers: every field but ``sig``, keys sorted."""
        m = self.to_map()
        m.pop("sig", None)
        return SIGNATURE_DOMAIN + canonical_packb(m)

    def sign(self, identity) -> "Envelope":
        """Sign in place with a :class:`~zmqagents.identity.Identity` whose node id is ``src``."""
        if identity.node_id != self.src:
            raise ValueError("an envelope can only be signed by the node named in its src")
        self.pk = identity.public_key
        self.sig = None
        self.sig = identity.sign(self.signing_bytes())
        return self

    def verify(self) -> None:
        """Raise BadSignature unless ``sig`` is a valid signature by the key that owns ``src``."""
        if self.sig is None or self.pk is None:
            raise BadSignature("envelope is not signed")
        if node_id_of(self.pk) != self.src:
            raise BadSignature("signing key does not belong to the envelope's src node id")
        try:
            nacl.signing.VerifyKey(self.pk).verify(self.signing_bytes(), self.sig)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
            raise BadSignature("signature does not verify") from None


def canonical_packb(value: Any) -> bytes:
    """msgpack with every map's keys sorted by their own encoded bytes, recursively."""
    return msgpack.packb(_canonical(value), use_bin_type=True)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        items = [(msgpack.packb(k, use_bin_type=True), k, _canonical(v)) for k, v in value.items()]
        items.sort(key=lambda item: item[0])
        return {k: v for _, k, v in items}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


# -- decoding --------------------------------------------------------------

def _refuse_ext(code: int, data: bytes) -> Any:
    raise MalformedEnvelope(f"msgpack extension type {code} is not allowed in an envelope")


def _opt_bytes(m: dict, key: str, length: int | None) -> bytes | None:
    v = m.get(key)
    if v is None:
        return None
    if type(v) is not bytes or (length is not None and len(v) != length):
        want = f"{length} bytes" if length else "bytes"
        raise MalformedEnvelope(f"field {key!r} must be {want}, got {type(v).__name__}")
    return v


def _opt_int(m: dict, key: str, default: int | None) -> int | None:
    v = m.get(key, default)
    if v is None or (type(v) is int and v >= 0):
        return v
    raise MalformedEnvelope(f"field {key!r} must be a non-negative integer, got {v!r:.40}")


def decode_payload(payload: bytes) -> Envelope:
    """Decode the msgpack map (without the length prefix)."""
    try:
        m = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True, ext_hook=_refuse_ext)
    except EnvelopeError:
        raise
    except Exception as exc:  # msgpack raises ValueError, ExtraData, StackError, UnicodeDecodeError, ...
        raise MalformedEnvelope(f"not a valid msgpack map: {type(exc).__name__}: {exc}"[:200]) from None
    if type(m) is not dict:
        raise MalformedEnvelope(f"envelope must be a msgpack map, got {type(m).__name__}")
    v = m.get("v")
    if type(v) is not int:
        raise MalformedEnvelope("field 'v' (version) is missing or not an integer")
    if v != VERSION:
        raise UnsupportedVersion(f"envelope major version {v} is not supported (this node speaks {VERSION})")
    mid = m.get("id")
    src = m.get("src")
    typ = m.get("t")
    if type(mid) is not bytes or len(mid) != ID_LEN:
        raise MalformedEnvelope(f"field 'id' must be {ID_LEN} bytes")
    if type(src) is not bytes or len(src) != NODE_ID_LEN:
        raise MalformedEnvelope(f"field 'src' must be {NODE_ID_LEN} bytes")
    if type(typ) is not str or not typ or len(typ) > MAX_TYPE_LEN:
        raise MalformedEnvelope(f"field 't' must be a non-empty string of at most {MAX_TYPE_LEN} characters")
    ack = m.get("ak")
    if ack is not None and type(ack) is not list:
        raise MalformedEnvelope("field 'ak' must be an array")
    # Unknown fields are kept (not interpreted) so a relay can pass them on unchanged.
    extra = {} if _KNOWN_FIELDS.issuperset(m) else {k: val for k, val in m.items() if k not in _KNOWN_FIELDS}
    return Envelope(
        id=mid,
        src=src,
        type=typ,
        body=m.get("b"),
        dst=_opt_bytes(m, "dst", NODE_ID_LEN),
        ts=_opt_int(m, "ts", 0),
        ttl=_opt_int(m, "ttl", 0),
        seq=_opt_int(m, "seq", None),
        ep=_opt_int(m, "ep", None),
        re=_opt_bytes(m, "re", ID_LEN),
        ack=ack,
        pk=_opt_bytes(m, "pk", PUBLIC_KEY_LEN),
        sig=_opt_bytes(m, "sig", SIGNATURE_LEN),
        extra=extra,
    )


_KNOWN_FIELDS = frozenset({"v", "id", "src", "t", "dst", "ts", "ttl", "b", "seq", "ep", "re", "ak", "pk", "sig"})


def decode(frame: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Decode exactly one length-prefixed envelope (a whole ZeroMQ frame or record)."""
    n = len(frame)
    if n < HEADER_LEN:
        raise TruncatedEnvelope(f"frame of {n} bytes is shorter than the {HEADER_LEN}-byte length prefix")
    (length,) = HEADER.unpack_from(frame)
    if length > max_size:
        raise OversizeEnvelope(f"envelope announces {length} bytes, over the limit of {max_size} bytes")
    if n < HEADER_LEN + length:
        raise TruncatedEnvelope(f"envelope announces {length} bytes but only {n - HEADER_LEN} arrived")
    if n > HEADER_LEN + length:
        raise MalformedEnvelope(f"{n - HEADER_LEN - length} bytes follow the envelope inside one frame")
    return decode_payload(frame[HEADER_LEN:])


class StreamDecoder:
    """Incremental decoder for a byte stream of envelopes (pipes, spool files).

    ``feed`` buffers at most one envelope's worth of bytes beyond what it has
    returned: an oversize length prefix is refused before its payload is read.
    Envelopes that decode badly raise; the stream cannot resynchronise after a
    bad length prefix, so callers treat such an error as the end of the stream.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE):
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Envelope]:
        self._buf += data
        while len(self._buf) >= HEADER_LEN:
            (length,) = HEADER.unpack_from(self._buf)
            if length > self.max_size:
                raise OversizeEnvelope(f"envelope announces {length} bytes, over the limit of {self.max_size} bytes")
            end = HEADER_LEN + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[HEADER_LEN:end])
            del self._buf[:end]
            yield decode_payload(payload)

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole envelope (non-zero at EOF means a truncated tail)."""
        return len(self._buf)

    def close(self) -> None:
        """Call at end of stream: raises TruncatedEnvelope if a partial envelope is left."""
        if self._buf:
            raise TruncatedEnvelope(f"stream ended inside an envelope ({len(self._buf)} bytes left over)")
