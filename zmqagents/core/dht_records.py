"""DHT value records and provider entries: their wire form, what a signature covers, signing and checking.

Pure functions and frozen values, shared by the DHT core (:mod:`zmqagents.core.dht`), the store that holds
records for others (:mod:`zmqagents.core.dht_store`) and the test-vector tool (``tools/make_dht_vectors.py``).
The rules are ``protocols/routing.md`` 10.1 to 10.3: a record or entry is signed by its publisher's Ed25519
key over a domain-separated canonical msgpack map, so any holder can check it without trusting the peer that
handed it over. Verifying is computation (PyNaCl), not IO.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import nacl.exceptions
import nacl.signing

from ..envelope import canonical_packb
from ..identity import Contact, node_id_of
from .lookup import contact_fields
from ..errors import Error, InvalidArgument, WrongType

__all__ = [
    "RECORD_DOMAIN", "PROVIDER_DOMAIN", "SIGNATURE_LEN", "KEY_LEN", "Record", "ProviderRecord", "RecordError",
    "key_for", "check_key", "record_signing_bytes", "provider_signing_bytes", "make_record", "make_provider",
    "parse_record", "parse_provider", "verify_record", "verify_provider", "lifetime_fault",
]

RECORD_DOMAIN = b"zmqagents/dht-record/v1\x00"
PROVIDER_DOMAIN = b"zmqagents/dht-provider/v1\x00"
SIGNATURE_LEN = 64
KEY_LEN = 32
MAX_UINT64 = (1 << 64) - 1

class RecordError(Error, ValueError):
    """A record or provider entry that must be refused. ``reason`` names the counter (e.g. "bad_signature")."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def key_for(name: str | bytes) -> bytes:
    """The 32-byte DHT key of ``name``: ``sha256(name.encode("utf-8"))`` for a str (and for bytes that are
    not 32 long); a 32-byte bytes value is taken as the key itself."""
    if isinstance(name, str):
        return hashlib.sha256(name.encode("utf-8")).digest()
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name)
        return name if len(name) == KEY_LEN else hashlib.sha256(name).digest()
    raise WrongType(f"a DHT key is a str or bytes, not {type(name).__name__}")


def record_signing_bytes(key: bytes, value: Any, public_key: bytes, seq: int, expires: int) -> bytes:
    """What a value record's signature covers: the domain, then the canonical msgpack of
    ``{"exp", "k", "pk", "seq", "v"}`` (keys sorted by their encoding, recursively)."""
    return RECORD_DOMAIN + canonical_packb({"k": key, "v": value, "pk": public_key, "seq": seq, "exp": expires})


def provider_signing_bytes(key: bytes, contact: list[Any], expires: int, meta: Any = None) -> bytes:
    """What a provider entry's signature covers: the domain, then the canonical msgpack of
    ``{"c": [key, endpoint], "exp", "k"}`` plus ``"m"`` when there is metadata."""
    m = {"k": key, "c": contact, "exp": expires}
    if meta is not None:
        m["m"] = meta
    return PROVIDER_DOMAIN + canonical_packb(m)


@dataclass(slots=True, frozen=True, eq=False)
class Record:
    """A signed value record (validated). ``size``: bytes of its signed encoding plus the signature."""

    key: bytes
    value: Any
    public_key: bytes
    seq: int
    expires: int
    signature: bytes
    size: int
    value_bytes: bytes  # canonical msgpack of the value: equal-seq conflicts compare these

    @property
    def publisher(self) -> bytes:
        """The publisher's node id, ``sha256(public_key)``."""
        return node_id_of(self.public_key)

    def to_wire(self) -> dict[Any, Any]:
        return {"k": self.key, "v": self.value, "pk": self.public_key, "seq": self.seq, "exp": self.expires,
                "sig": self.signature}


@dataclass(slots=True, frozen=True, eq=False)
class ProviderRecord:
    """A signed provider entry (validated): ``contact`` offers ``key`` until ``expires``."""

    key: bytes
    contact: Contact
    expires: int
    meta: Any
    signature: bytes
    size: int

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.contact.public_key)

    def to_wire(self) -> dict[Any, Any]:
        m = {"k": self.key, "c": [self.contact.public_key, self.contact.endpoint], "exp": self.expires,
             "sig": self.signature}
        if self.meta is not None:
            m["m"] = self.meta
        return m


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_UINT64


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError,
            nacl.exceptions.CryptoError):
        return False


def make_record(signer: Any, key: bytes, value: Any, seq: int, expires: int) -> Record:
    """Sign a value record with ``signer`` (``.public_key``, ``.sign(bytes) -> signature``)."""
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise InvalidArgument(f"a record key is {KEY_LEN} bytes")
    if not _uint(seq) or not _uint(expires):
        raise InvalidArgument("seq and expires are unsigned 64-bit integers")
    try:
        body = record_signing_bytes(key, value, signer.public_key, seq, expires)
        value_bytes = canonical_packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"the value cannot be encoded as msgpack: {exc}") from None
    sig = signer.sign(body)
    return Record(key, value, signer.public_key, seq, expires, sig, len(body) - len(RECORD_DOMAIN) + len(sig),
                  value_bytes)


def make_provider(signer: Any, key: bytes, endpoint: str, expires: int, meta: Any = None) -> ProviderRecord:
    """Sign a provider entry for ``signer``'s own contact (``signer.public_key`` at ``endpoint``)."""
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise InvalidArgument(f"a provider key is {KEY_LEN} bytes")
    if contact_fields([signer.public_key, endpoint]) is None:
        raise InvalidArgument(f"malformed endpoint {endpoint!r:.80}")
    if not _uint(expires):
        raise InvalidArgument("expires is an unsigned 64-bit integer")
    c = [signer.public_key, endpoint]
    try:
        body = provider_signing_bytes(key, c, expires, meta)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"the metadata cannot be encoded as msgpack: {exc}") from None
    sig = signer.sign(body)
    return ProviderRecord(key, Contact(signer.public_key, endpoint), expires, meta, sig,
                          len(body) - len(PROVIDER_DOMAIN) + len(sig))


def parse_record(obj: Any, *, max_bytes: int = 1 << 20, verify: bool = True) -> Record:
    """A value record from its wire map, or RecordError("malformed" | "oversize" | "bad_signature").
    Unknown map keys are ignored (and not signed). Expiry is the caller's check (it needs the time)."""
    if type(obj) is not dict:
        raise RecordError("malformed", "a record is a map")
    get: Callable[[str], Any] = obj.get  # peer input: every value is checked below
    key = get("k")
    pk = get("pk")
    seq = get("seq")
    exp = get("exp")
    sig = get("sig")
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise RecordError("malformed", "k must be 32 bytes")
    if type(pk) is not bytes or len(pk) != 32:
        raise RecordError("malformed", "pk must be 32 bytes")
    if not _uint(seq) or not _uint(exp):
        raise RecordError("malformed", "seq and exp must be unsigned 64-bit integers")
    if type(sig) is not bytes or len(sig) != SIGNATURE_LEN:
        raise RecordError("malformed", "sig must be 64 bytes")
    if "v" not in obj:
        raise RecordError("malformed", "no value")
    value = obj["v"]
    try:
        body = record_signing_bytes(key, value, pk, seq, exp)
        value_bytes = canonical_packb(value)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise RecordError("malformed", "value is not msgpack") from None
    size = len(body) - len(RECORD_DOMAIN) + SIGNATURE_LEN
    if size > max_bytes:
        raise RecordError("oversize", f"{size} bytes, limit {max_bytes}")
    if verify and not _verify(pk, body, sig):
        raise RecordError("bad_signature", "the signature does not verify with the record's key")
    return Record(key, value, pk, seq, exp, sig, size, value_bytes)


def parse_provider(obj: Any, *, max_bytes: int = 1 << 20, verify: bool = True) -> ProviderRecord:
    """A provider entry from its wire map, or RecordError("malformed" | "oversize" | "bad_signature")."""
    if type(obj) is not dict:
        raise RecordError("malformed", "a provider entry is a map")
    get: Callable[[str], Any] = obj.get  # peer input: every value is checked below
    key = get("k")
    c = get("c")
    exp = get("exp")
    sig = get("sig")
    meta = get("m")
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise RecordError("malformed", "k must be 32 bytes")
    f = contact_fields(c) if type(c) is list else None
    if f is None:
        raise RecordError("malformed", "c must be [32-byte key, endpoint]")
    if not _uint(exp):
        raise RecordError("malformed", "exp must be an unsigned 64-bit integer")
    if type(sig) is not bytes or len(sig) != SIGNATURE_LEN:
        raise RecordError("malformed", "sig must be 64 bytes")
    try:
        body = provider_signing_bytes(key, [f[0], f[1]], exp, meta)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise RecordError("malformed", "metadata is not msgpack") from None
    size = len(body) - len(PROVIDER_DOMAIN) + SIGNATURE_LEN
    if size > max_bytes:
        raise RecordError("oversize", f"{size} bytes, limit {max_bytes}")
    if verify and not _verify(f[0], body, sig):
        raise RecordError("bad_signature", "the signature does not verify with the provider's key")
    return ProviderRecord(key, Contact(f[0], f[1]), exp, meta, sig, size)



def verify_record(rec: Record) -> bool:
    """Does ``rec``'s signature verify with its publisher's key? (For a record parsed with ``verify=False``.)"""
    return _verify(rec.public_key, record_signing_bytes(rec.key, rec.value, rec.public_key, rec.seq, rec.expires),
                   rec.signature)


def verify_provider(p: ProviderRecord) -> bool:
    """Does ``p``'s signature verify with its provider's key? (For an entry parsed with ``verify=False``.)"""
    c = p.contact
    return _verify(c.public_key, provider_signing_bytes(p.key, [c.public_key, c.endpoint], p.expires, p.meta),
                   p.signature)


def lifetime_fault(expires: int, now: float, max_ttl: float, max_clock_skew: float) -> str | None:
    """Why a record or entry expiring at ``expires`` may not be taken at ``now``: "expired", or "future" when
    it claims to live longer than ``max_ttl`` plus ``max_clock_skew`` seconds from now; None when its
    lifetime is acceptable."""
    if expires <= now:
        return "expired"
    if expires > now + max_ttl + max_clock_skew:
        return "future"
    return None


def check_key(key: Any) -> None:
    """Raise ValueError unless ``key`` is a 32-byte DHT key."""
    if type(key) is not bytes or len(key) != KEY_LEN:
        raise InvalidArgument(f"a DHT key is {KEY_LEN} bytes (use key_for(name) for a name)")
