"""The one envelope: a 4-byte big-endian length, then a msgpack map.

The same bytes go on the wire, into spool files and through pipes; the
written spec is ``protocols/envelope.md``. Decoding is strict and bounded:
the length is checked against a limit before anything is allocated, field
types are checked, unknown fields are ignored (so minor additions stay
compatible) and an unknown major version is refused. Every failure raises a
subclass of :class:`EnvelopeError`, never anything else. Encoding applies
the same rules, so a node never sends what its peers must drop.

Ed25519 signatures are optional and cover a *canonical* encoding (map keys
sorted by their encoded bytes, recursively) so any implementation can
re-create the signed bytes from decoded values.
"""

from __future__ import annotations

import itertools
import re as _re
import struct
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import msgpack
import nacl.exceptions
import nacl.signing

from .identity import node_id_of
from .errors import Error, InvalidArgument

if TYPE_CHECKING:
    from .identity import Identity

VERSION = 1
HEADER = struct.Struct(">I")
HEADER_LEN = HEADER.size
DEFAULT_MAX_SIZE = 1 << 20  # 1 MiB: large enough for a task payload, small enough to buffer per peer
MAX_TYPE_LEN = 64
MAX_EPOCH = (1 << 63) - 1  # a reliable stream's epoch is a 63-bit number (protocols/delivery.md 3)
# Nesting limit, the envelope map being level 1. msgpack itself allows 1024,
# which is deep enough for repr(), ==, json.dumps or deepcopy of a decoded
# body to hit Python's recursion limit; 100 leaves every such caller room.
MAX_DEPTH = 100
# How many msgpack values (every map key, map value and array element, at any depth, and the
# envelope map itself) one payload may hold. Decoded, a value takes up to ~90 bytes of Python
# objects however small it is on the wire (an empty map is one byte and a 64-byte dict), so the
# byte limit alone lets a 1 MiB payload of empty maps cost ~75 MB. 16,384 values bound that part
# to ~1.5 MB and still carry any body an agent sends (a 1,536-float embedding, a 20-contact
# routing answer, a long JSON document); a node that needs more raises it on both ends.
DEFAULT_MAX_VALUES = 16_384
# Memory accounting (Envelope.cost): an upper bound of what one decoded value inside the body,
# the acks or an unknown field takes beyond its own payload bytes (measured on CPython 3.11: a
# map holding one empty map is 85 bytes a value) ...
VALUE_COST = 96
# ... and of what the Envelope object and its defined fields take beyond theirs (about 1 KB with
# every field set and a one-entry map as the body).
ENVELOPE_COST = 1024
# Strings decode to 1, 2 or 4 bytes per character: a mostly-ASCII string with one emoji in it
# takes four times its UTF-8 length. Strings are charged what they take beyond their length
# (str.isascii is O(1)), except inside a nested body or unknown field of a payload up to this
# size, which is charged the worst case (3 more bytes per payload byte, at most 12 KiB) rather
# than walked a second time.
SMALL_PAYLOAD = 4096
SIGNATURE_DOMAIN = b"zmqagents/envelope/v1\x00"

ID_LEN = 16
NODE_ID_LEN = 32
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64

Body = Any

_KNOWN_FIELDS = frozenset({"v", "id", "src", "t", "dst", "ts", "ttl", "b", "seq", "ep", "re", "ak", "pk", "sig"})
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})  # the types msgpack decodes scalars to
_KEY_TYPES = frozenset({str, bytes})  # map keys msgpack's strict_map_key lets through


class EnvelopeError(Error, ValueError):
    """Base of every envelope decoding or verification failure."""


class TruncatedEnvelope(EnvelopeError):
    """Fewer bytes than the length prefix announces (or than a prefix needs)."""


class OversizeEnvelope(EnvelopeError):
    """The length prefix announces more than the configured maximum."""


class MalformedEnvelope(EnvelopeError):
    """Not msgpack, not a map, a required field missing, or a field of the wrong type."""


class TooManyValues(EnvelopeError):
    """The payload holds more msgpack values than the decoder's ``max_values`` (checked before building them)."""


class UnsupportedVersion(EnvelopeError):
    """The envelope's major version is one this implementation does not speak."""


class BadSignature(EnvelopeError):
    """A signature is missing where required, does not verify, or its key does not own ``src``."""


@dataclass(slots=True)
class Envelope:
    """One message. ``id``, ``src`` and ``dst`` are raw bytes; ``ts`` and ``ttl`` are milliseconds.

    Delivery fields (``seq``, ``ep``, ``re``, ``ack``) are used by the reliable
    delivery core and are absent on messages that do not need them. ``extra``
    holds fields this version does not define (from a newer peer); they are
    not interpreted, but are re-encoded and signed along with the rest.

    ``cost`` is set by the decoder: an upper bound, in bytes, of the memory the
    decoded envelope holds (payload length, plus VALUE_COST per value, plus what
    wide strings take beyond their UTF-8 length). Queues that hold what peers
    send are bounded in it. It is 0 for envelopes built locally.
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
    ack: list[Any] | None = None
    pk: bytes | None = None
    sig: bytes | None = None
    extra: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    cost: int = field(default=0, repr=False, compare=False)

    # -- encoding ------------------------------------------------------------

    def to_map(self) -> dict[Any, Any]:
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
        if self.extra:
            # Unknown fields received from a newer peer travel on unchanged, so
            # relays forward them and signatures that cover them still verify.
            for key in self.extra:
                if type(key) is not str or key in _KNOWN_FIELDS:
                    raise MalformedEnvelope(f"extra field {key!r} must be a name this version does not define")
            m.update(self.extra)
        return m

    def _checked_map(self) -> dict[Any, Any]:
        """``to_map()`` after the decoder's own checks: what fails here, every peer would drop."""
        _check_fields(self.id, self.src, self.type, self.dst, self.ts, self.ttl, self.seq, self.ep,
                      self.re, self.ack, self.pk, self.sig)
        m = self.to_map()
        if type(self.body) not in _SCALARS and not _is_flat(self.body, check_keys=True):
            _check_value(self.body, 2)
        if self.ack and not _is_flat(self.ack, check_keys=True):
            _check_value(self.ack, 2)
        if self.extra:
            _check_value(self.extra, 1)
        return m

    def encode(self, *, max_size: int = DEFAULT_MAX_SIZE, max_values: int = DEFAULT_MAX_VALUES) -> bytes:
        """Length-prefixed bytes.

        Raises MalformedEnvelope, OversizeEnvelope or TooManyValues rather than emit what a peer must refuse.
        """
        m = self._checked_map()
        try:
            payload: bytes = _packer().pack(m)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MalformedEnvelope(f"body cannot be encoded as msgpack: {exc}") from None
        if len(payload) > PACKER_BUFFER:
            del _packers.packer  # its buffer grew to hold this payload, for good: the next encode makes a fresh one
        if len(payload) > max_size:
            raise OversizeEnvelope(f"envelope of {len(payload)} bytes exceeds the limit of {max_size} bytes")
        if len(payload) > max_values:  # every value takes at least one byte: only a longer payload can hold more
            count_values(payload, max_values)
        return HEADER.pack(len(payload)) + payload

    # -- signatures ----------------------------------------------------------

    def signing_bytes(self) -> bytes:
        """The canonical bytes a signature covers: every field but ``sig``, keys sorted."""
        m = self._checked_map()
        m.pop("sig", None)
        try:
            return SIGNATURE_DOMAIN + canonical_packb(m)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MalformedEnvelope(f"body cannot be encoded as msgpack: {exc}") from None

    def sign(self, identity: Identity) -> "Envelope":
        """Sign in place with a :class:`~zmqagents.identity.Identity` whose node id is ``src``."""
        if identity.node_id != self.src:
            raise InvalidArgument("an envelope can only be signed by the node named in its src")
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


_packers = threading.local()
# What a fresh msgpack Packer's buffer holds (msgpack's default buf_size). Packing more grows the buffer by
# doubling and msgpack never shrinks it, so a reused Packer that once packed a ~1 MiB envelope kept 2 MiB for
# the life of the process (bench/hostile.py: the largest block live after the drain, seen with tracemalloc).
PACKER_BUFFER = 256 << 10


def _packer() -> msgpack.Packer:
    """This thread's msgpack Packer. ``msgpack.packb`` builds and frees a Packer on every call, about a
    third of what encoding a small envelope costs; one per thread (a Packer is not thread-safe) is
    reused, until it packs more than ``PACKER_BUFFER`` (then :meth:`Envelope.encode` drops it). A pack that
    fails leaves the Packer empty (msgpack resets its buffer), so it stays usable."""
    try:
        packer: msgpack.Packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer


def canonical_packb(value: Any) -> bytes:
    """msgpack with every map's keys sorted by their own encoded bytes, recursively."""
    packed: bytes = msgpack.packb(_canonical(value), use_bin_type=True)
    return packed


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        items = [(msgpack.packb(k, use_bin_type=True), k, _canonical(v)) for k, v in value.items()]
        items.sort(key=lambda item: item[0])
        return {k: v for _, k, v in items}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


# -- schema: one set of checks, run by the decoder and the encoder ----------

def _wrong(key: str, want: str, value: Any) -> MalformedEnvelope:
    got = f"{len(value)} bytes" if type(value) is bytes else type(value).__name__
    return MalformedEnvelope(f"field {key!r} must be {want}, got {got}")


def _not_uint(key: str, value: Any) -> MalformedEnvelope:
    return MalformedEnvelope(f"field {key!r} must be a non-negative integer, got {value!r:.40}")


def _check_fields(mid: Any, src: Any, typ: Any, dst: Any, ts: Any, ttl: Any, seq: Any, ep: Any, re: Any, ack: Any,
                  pk: Any, sig: Any) -> None:
    """The schema of every field but ``v`` and ``b``: run by the decoder and by the encoder alike.

    None means "not set" for the optional fields (absent, or nil on the wire).
    Straight-line on purpose: this is on every message's path.
    """
    if type(mid) is not bytes or len(mid) != ID_LEN:
        raise _wrong("id", f"{ID_LEN} bytes", mid)
    if type(src) is not bytes or len(src) != NODE_ID_LEN:
        raise _wrong("src", f"{NODE_ID_LEN} bytes", src)
    if type(typ) is not str or not typ or len(typ) > MAX_TYPE_LEN:
        raise MalformedEnvelope(f"field 't' must be a non-empty string of at most {MAX_TYPE_LEN} characters")
    if dst is not None and (type(dst) is not bytes or len(dst) != NODE_ID_LEN):
        raise _wrong("dst", f"{NODE_ID_LEN} bytes", dst)
    if ts is not None and (type(ts) is not int or ts < 0):
        raise _not_uint("ts", ts)
    if ttl is not None and (type(ttl) is not int or ttl < 0):
        raise _not_uint("ttl", ttl)
    if seq is not None and (type(seq) is not int or seq < 0):
        raise _not_uint("seq", seq)
    if ep is not None and (type(ep) is not int or ep < 0 or ep > MAX_EPOCH):
        raise MalformedEnvelope(f"field 'ep' must be an integer from 0 to 2^63 - 1, got {ep!r:.40}")
    if re is not None and (type(re) is not bytes or len(re) != ID_LEN):
        raise _wrong("re", f"{ID_LEN} bytes", re)
    if ack is not None and type(ack) is not list:
        raise _wrong("ak", "an array", ack)
    if pk is not None and (type(pk) is not bytes or len(pk) != PUBLIC_KEY_LEN):
        raise _wrong("pk", f"{PUBLIC_KEY_LEN} bytes", pk)
    if sig is not None and (type(sig) is not bytes or len(sig) != SIGNATURE_LEN):
        raise _wrong("sig", f"{SIGNATURE_LEN} bytes", sig)


def _is_flat(value: Any, *, check_keys: bool) -> bool:
    """A map or array holding only scalars: the common body, which needs no walk.

    Decoded maps need no key check (msgpack's strict_map_key has done it);
    maps about to be encoded do.
    """
    if type(value) is dict:
        if check_keys and not _KEY_TYPES.issuperset(map(type, value)):
            return False
        value = value.values()
    elif type(value) is not list:
        return False
    for child in value:
        if type(child) not in _SCALARS:
            return False
    return True


def _check_value(value: Any, depth: int) -> None:
    """Refuse what the decoder would refuse inside a free-form value at nesting level ``depth``.

    That is: nesting beyond MAX_DEPTH, map keys other than str/bin, and
    msgpack extension objects. Walks one level at a time, holding only
    references to the containers of the next level, so the walk adds little
    to the memory the value already takes; the depth bound also ends the walk
    of a value that contains itself.
    """
    level = [value]
    while level:
        if depth > MAX_DEPTH:
            raise MalformedEnvelope(f"values nest deeper than {MAX_DEPTH} levels")
        below = []
        for value in level:
            kind = type(value)
            if kind is list:  # first, and by exact type: what the decoder makes, and the bulk of any walk
                children = value
            elif kind is dict:
                if not _KEY_TYPES.issuperset(map(type, value)):
                    _check_keys(value)
                children = value.values()
            elif isinstance(value, (msgpack.ExtType, msgpack.Timestamp)):  # before tuple: ExtType is a namedtuple
                raise MalformedEnvelope("msgpack extension types are not allowed in an envelope")
            elif isinstance(value, dict):
                _check_keys(value)
                children = value.values()
            elif isinstance(value, (list, tuple)):
                children = value
            else:
                continue  # bytearray, str subclasses, ...: msgpack packs them as plain scalars
            for child in children:
                if type(child) not in _SCALARS:
                    below.append(child)
        level = below
        depth += 1


def _check_keys(mapping: dict[Any, Any]) -> None:
    """Refuse a map key that is not a string or bytes (subclasses of them pass, as msgpack packs them)."""
    for key in mapping:
        if not isinstance(key, (str, bytes)):
            raise MalformedEnvelope(f"map keys must be strings or bytes, got {type(key).__name__}")


# -- decoding --------------------------------------------------------------

def _refuse_ext(code: int, data: bytes) -> Any:
    raise MalformedEnvelope(f"msgpack extension type {code} is not allowed in an envelope")


def _measure(value: Any, size: int) -> tuple[int, int]:
    """(values below it, wide-string bytes) of a decoded body or ``ak``, checking a nested one.

    ``size`` is the payload's: a nested value in a small payload is charged 3 * size for its
    strings instead of being walked again (see SMALL_PAYLOAD).
    """
    kind = type(value)
    if kind is str:
        return 0, 0 if value.isascii() else 3 * len(value)
    if kind in _SCALARS:
        return 0, 0
    if _is_flat(value, check_keys=False):
        if kind is dict:
            return 2 * len(value), _wide_flat(value) + _wide_flat(value.values())
        return len(value), _wide_flat(value)
    if size <= SMALL_PAYLOAD:
        return _walk_decoded(value, 2, False)[0], 3 * size
    return _walk_decoded(value, 2, True)


_CONTAINERS = frozenset({list, dict})


def _walk_decoded(value: Any, depth: int, wide: bool) -> tuple[int, int]:
    """(values below ``value``, wide-string bytes if ``wide``) of a nested value the decoder built,
    refusing nesting beyond MAX_DEPTH.

    msgpack has already refused extensions and keys that are not str or bin, and built only lists,
    dicts and scalars, so unlike _check_value (the encoder's walk, which must check all that) this
    only counts, level by level, with the per-element work in C (map, chain, len) and one
    comprehension: it runs on every nested body received, and a hostile one holds thousands of
    containers.
    """
    level = [value]
    count = extra = 0
    containers = _CONTAINERS
    chain = itertools.chain.from_iterable
    while level:
        if depth > MAX_DEPTH:
            raise MalformedEnvelope(f"values nest deeper than {MAX_DEPTH} levels")
        maps = [c for c in level if type(c) is dict]
        if len(maps) == len(level):
            lists: list[Any] = []
        else:
            lists = [c for c in level if type(c) is list]
        count += sum(map(len, lists)) + 2 * sum(map(len, maps))
        children = [*chain(lists), *chain(map(dict.values, maps))]
        if wide:
            extra += _wide_flat(children) + _wide_flat(chain(maps))
        level = [c for c in children if type(c) in containers]
        depth += 1
    return count, extra


def _wide_flat(values: Iterable[Any]) -> int:
    """Bytes that the non-ASCII strings among ``values`` (scalars) take beyond their length.

    CPython stores a string with 1, 2 or 4 bytes a character, the widest its characters need, so
    that is at most 3 more a character; ``str.isascii`` is O(1).
    """
    extra = 0
    for value in values:
        if type(value) is str and not value.isascii():
            extra += 3 * len(value)
    return extra


def _from_map(m: Any, size: int) -> Envelope:
    """Check a decoded top-level value against the schema and build the Envelope (``size``: payload bytes)."""
    if type(m) is not dict:
        raise MalformedEnvelope(f"envelope must be a msgpack map, got {type(m).__name__}")
    get: Callable[[str], Any] = m.get  # the values are checked below, whatever they are
    v = get("v")
    if type(v) is not int:
        raise MalformedEnvelope("field 'v' (version) is missing or not an integer")
    if v != VERSION:
        raise UnsupportedVersion(f"envelope major version {v} is not supported (this node speaks {VERSION})")
    mid = get("id")
    src = get("src")
    typ = get("t")
    dst = get("dst")
    ts = get("ts")
    ttl = get("ttl")
    seq = get("seq")
    ep = get("ep")
    re = get("re")
    ack = get("ak")
    pk = get("pk")
    sig = get("sig")
    _check_fields(mid, src, typ, dst, ts, ttl, seq, ep, re, ack, pk, sig)
    body = get("b")
    values, wide = _measure(body, size)
    if ack:
        more, wider = _measure(ack, size)
        values += more
        wide += wider
    if not typ.isascii():
        wide += 3 * len(typ)
    if _KNOWN_FIELDS.issuperset(m):
        extra = {}
    else:
        extra = _unknown_fields(m)
        more, wider = _walk_decoded(extra, 1, size > SMALL_PAYLOAD)
        values += more
        wide += wider if size > SMALL_PAYLOAD else 3 * size
    cost = size + ENVELOPE_COST + VALUE_COST * values + wide
    # Positional, in dataclass field order: about twice as fast as keywords.
    return Envelope(mid, src, typ, body, dst, ts or 0, ttl or 0, seq, ep, re, ack, pk, sig, extra, cost)


def _unknown_fields(m: dict[Any, Any]) -> dict[Any, Any]:
    """Fields this version does not define: kept, uninterpreted, so they can be passed on (checked by the caller)."""
    extra = {k: val for k, val in m.items() if k not in _KNOWN_FIELDS}
    for key in extra:
        if type(key) is not str:
            raise MalformedEnvelope(f"envelope field names must be strings, got {type(key).__name__}")
    return extra


# Bytes that follow the first byte of a msgpack value whose size the first byte fixes (scalars).
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_U16 = struct.Struct(">H")
# One-byte values: positive and negative fixint, nil, false, true, and the empty fixmap, fixarray
# and fixstr. A run of them is counted in one step (the regex engine walks it), so the payloads
# that decode worst (empty containers, one byte each) are also the cheapest to count.
_ONE_BYTE_RUN = _re.compile(b"[\x00-\x80\x90\xa0\xc0\xc2\xc3\xe0-\xff]+")


def count_values(payload: bytes | bytearray | memoryview, limit: int) -> int:
    """How many msgpack values ``payload`` holds, reading headers only; TooManyValues beyond ``limit``.

    Nothing is built: a str or bin is skipped by its length, a container adds its element count
    to the values still to read. The cost is one step per value, and the walk stops at ``limit``,
    so refusing a payload of a million empty maps costs ``limit`` steps, not a million objects.
    Bytes msgpack would refuse (an extension, 0xc1, a truncated value) end the count early: the
    decoder reports them.
    """
    n = len(payload)
    pos = 0
    todo = 1  # values announced and not yet read
    count = 0
    u16 = _U16.unpack_from
    u32 = HEADER.unpack_from
    fixed = _FIXED
    run = _ONE_BYTE_RUN.match
    while todo and pos < n:
        b = payload[pos]
        if b < 0x81 or b >= 0xE0 or b == 0x90 or b == 0xA0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
            m = run(payload, pos)  # a run of one-byte values (the byte at pos is one)
            step = min((m.end() if m is not None else pos + 1) - pos, todo)
            todo -= step
            count += step
            pos += step
            if count > limit:
                raise TooManyValues(f"payload holds more than {limit} msgpack values")
            continue
        todo -= 1
        count += 1
        if count > limit:
            raise TooManyValues(f"payload holds more than {limit} msgpack values")
        if b < 0x90:  # fixmap
            todo += 2 * (b & 0x0F)
            pos += 1
        elif b < 0xA0:  # fixarray
            todo += b & 0x0F
            pos += 1
        elif b < 0xC0:  # fixstr
            pos += 1 + (b & 0x1F)
        elif b in fixed:
            pos += 1 + fixed[b]
        elif b == 0xC4 or b == 0xD9:  # bin 8, str 8
            if pos + 2 > n:
                break
            pos += 2 + payload[pos + 1]
        elif b == 0xC5 or b == 0xDA:  # bin 16, str 16
            if pos + 3 > n:
                break
            pos += 3 + u16(payload, pos + 1)[0]
        elif b == 0xC6 or b == 0xDB:  # bin 32, str 32
            if pos + 5 > n:
                break
            pos += 5 + u32(payload, pos + 1)[0]
        elif b == 0xDC or b == 0xDE:  # array 16, map 16
            if pos + 3 > n:
                break
            todo += u16(payload, pos + 1)[0] * (2 if b == 0xDE else 1)
            pos += 3
        elif b == 0xDD or b == 0xDF:  # array 32, map 32
            if pos + 5 > n:
                break
            todo += u32(payload, pos + 1)[0] * (2 if b == 0xDF else 1)
            pos += 5
        else:  # 0xc1 (never used), ext and fixext: refused by the decoder
            break
    return count


def decode_payload(payload: bytes | bytearray | memoryview, *, max_values: int = DEFAULT_MAX_VALUES) -> Envelope:
    """Decode the msgpack map (without the length prefix).

    A payload longer than ``max_values`` bytes is first counted (count_values), so that one
    holding too many values is refused before any of them is built.
    """
    if len(payload) > max_values:
        count_values(payload, max_values)
    try:
        # max_ext_len=0 refuses every extension before msgpack builds it; the
        # timestamp type (-1) never reaches ext_hook, so the hook alone is not enough.
        m = msgpack.unpackb(
            payload, raw=False, use_list=True, strict_map_key=True, ext_hook=_refuse_ext, max_ext_len=0
        )
    except EnvelopeError:
        raise
    except Exception as exc:  # msgpack raises ValueError, ExtraData, StackError, UnicodeDecodeError, ...
        if "max_ext_len" in str(exc) or "timestamp" in str(exc):
            raise MalformedEnvelope("msgpack extension types are not allowed in an envelope") from None
        raise MalformedEnvelope(f"not a valid msgpack map: {type(exc).__name__}: {exc}"[:200]) from None
    return _from_map(m, len(payload))


def decode(frame: bytes, *, max_size: int = DEFAULT_MAX_SIZE, max_values: int = DEFAULT_MAX_VALUES) -> Envelope:
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
    return decode_payload(memoryview(frame)[HEADER_LEN:], max_values=max_values)  # no copy of the payload


class StreamDecoder:
    """Incremental decoder for a byte stream of envelopes (pipes, spool files).

    Memory stays at one envelope plus the chunk being fed: a length prefix
    over ``max_size`` is refused as soon as its four bytes are in, before
    any of its payload is waited for. An envelope that decodes badly raises
    and is dropped; the envelopes after it still decode. A bad length prefix
    cannot be skipped (there is no way to find the next one), so callers
    treat OversizeEnvelope as the end of the stream.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE, max_values: int = DEFAULT_MAX_VALUES):
        self.max_size = max_size
        self.max_values = max_values
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Envelope]:
        """Buffer ``data`` and return an iterator over the envelopes now complete.

        The bytes are buffered by the call itself, not on first iteration,
        so a chunk that completes no envelope is kept even if the result is
        never iterated.
        """
        self._buf += data
        return self._drain()

    def _drain(self) -> Iterator[Envelope]:
        buf = self._buf
        while len(buf) >= HEADER_LEN:
            (length,) = HEADER.unpack_from(buf)
            if length > self.max_size:
                raise OversizeEnvelope(f"envelope announces {length} bytes, over the limit of {self.max_size} bytes")
            end = HEADER_LEN + length
            if len(buf) < end:
                return
            payload = buf[HEADER_LEN:end]
            del buf[:end]
            yield decode_payload(payload, max_values=self.max_values)

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole envelope (non-zero at EOF means a truncated tail)."""
        return len(self._buf)

    def close(self) -> None:
        """Call at end of stream: raises TruncatedEnvelope if a partial envelope is left."""
        if self._buf:
            raise TruncatedEnvelope(f"stream ended inside an envelope ({len(self._buf)} bytes left over)")
