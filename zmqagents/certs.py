"""Fleet certificates: an operator CA vouches for the nodes of its fleet (protocols/certificates.md).

A fleet is the set of nodes an operator admits. The operator holds one Ed25519 key, the *CA key*
(``zmqagents ca init``); its public key is configured on every node of the fleet (``[node] ca``).
The CA signs a *certificate* for each node (``zmqagents ca sign``): the node's public key, a name,
groups, a validity window and the CA's fingerprint. A node with ``[node] join = "fleet"`` hands its
certificate to each peer in a ``fleet.cert`` message before anything else, and takes nothing but that
message from a peer until the peer's certificate checked out: signed by a trusted CA, inside its
validity window, not revoked, and for the very key the peer authenticated with (CurveZMQ proved the
key; the certificate binds it to the fleet). Revocation lists (``zmqagents ca revoke``) are signed by
the CA too, so a node takes one from a file or from any peer through the DHT.

Everything here is sans-IO: bytes and ``now`` (Unix seconds) in, objects or :class:`CertError` out.
The only IO is reading and writing the operator's files, like identity.py does for key files.

Why not X.509: it needs an ASN.1 parser on every node and a CA toolchain on the operator's desk, for
fields a fleet never uses. The fields here are those Nebula's host certificates and NATS's user JWTs
show a fleet needs (key, name, groups, not-before/not-after, issuer); both are read for what matters,
neither is copied.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import msgpack
import nacl.exceptions
import nacl.signing

from .identity import Identity, IdentityError, format_public_key, node_id_of, parse_public_key
from .errors import Error, InvalidArgument

CA_KEY_FORMAT = "zmqagents-ca-ed25519-v1"
CERT_VERSION = 1
CERT_DOMAIN = b"zmqagents/cert/v1\x00"  # prefixed to the signed bytes: a certificate signature is nothing else
REVOCATION_DOMAIN = b"zmqagents/revocations/v1\x00"
REVOCATION_RECORD_DOMAIN = b"zmqagents/revocation-record/v1\x00"  # DHT keys of published revocation lists
MAX_CERT_BYTES = 1024
MAX_NAME_LEN = 64  # characters
MAX_GROUPS = 32
MAX_REVOKED = 128  # entries in one revocation list: it must fit in one DHT record (8 KiB)
MAX_REVOCATION_BYTES = 6144
MAX_TIME = 2**63 - 1
SERIAL_LEN = 16
SIGNATURE_LEN = 64
FINGERPRINT_LEN = 32

CERT_FILE_HEADER = "# zmqagents node certificate"
REVOCATION_FILE_HEADER = "# zmqagents revocation list"

# Why a certificate was refused; each is counted as dropped{layer="transport", reason="cert_<reason>"}.
REASONS = ("malformed", "oversize", "unknown_issuer", "bad_signature", "not_yet_valid", "expired", "revoked",
           "wrong_key")


class CertError(Error, ValueError):
    """A certificate or revocation list cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def fingerprint(ca_public_key: bytes) -> bytes:
    """The 32-byte fingerprint that names a CA in the certificates it signs: sha256 of its public key."""
    return hashlib.sha256(ca_public_key).digest()


# -- certificates -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificate:
    """A decoded certificate. ``signed`` is the exact byte string the CA signed (its fields, msgpack);
    ``encoded`` the certificate as it travels and is stored."""

    public_key: bytes
    name: str
    groups: tuple[str, ...]
    not_before: int
    not_after: int
    issuer: bytes
    serial: bytes
    signature: bytes
    signed: bytes
    encoded: bytes

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.public_key)

    @property
    def fingerprint(self) -> bytes:
        """sha256 of the signed bytes: names this certificate (two encodings of the wrapper share it)."""
        return hashlib.sha256(self.signed).digest()

    def describe(self) -> dict:
        """The certificate as JSON-friendly text (``zmqagents ca show``)."""
        return {"name": self.name, "public_key": format_public_key(self.public_key),
                "node_id": self.node_id.hex(), "groups": list(self.groups), "not_before": self.not_before,
                "not_after": self.not_after, "issuer": self.issuer.hex(), "serial": self.serial.hex(),
                "fingerprint": self.fingerprint.hex()}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN or not name.isprintable():
        raise InvalidArgument(f"a certificate name is 1..{MAX_NAME_LEN} printable characters, got {name!r:.80}")
    return name


def _check_groups(groups: Iterable[object]) -> tuple[str, ...]:
    # The task layer's rule for group names (capability allow lists name the same groups). Imported here,
    # not at the top: a node that never sees a certificate does not load the task cores for it.
    from .core.tasks_provider import check_group_name

    out = []
    for g in groups:
        out.append(check_group_name(g))
    if len(out) > MAX_GROUPS:
        raise InvalidArgument(f"a certificate holds at most {MAX_GROUPS} groups, got {len(out)}")
    return tuple(sorted(set(out)))


def issue(ca: Identity, public_key: bytes, name: str, *, groups: Iterable[str] = (), not_before: int,
          not_after: int, serial: bytes) -> Certificate:
    """Sign a certificate for ``public_key`` with the CA's key. ValueError on a bad field (the message says which)."""
    if len(public_key) != 32:
        raise InvalidArgument("the node public key must be 32 bytes")
    parse_public_key(format_public_key(public_key))  # a valid Ed25519 point, or IdentityError
    _check_name(name)
    groups = _check_groups(groups)
    if not (isinstance(not_before, int) and isinstance(not_after, int) and 0 <= not_before < not_after <= MAX_TIME):
        raise InvalidArgument(f"validity must satisfy 0 <= not_before < not_after < 2^63, got {not_before}..{not_after}")
    if len(serial) != SERIAL_LEN:
        raise InvalidArgument(f"the serial must be {SERIAL_LEN} bytes")
    fields = {"v": CERT_VERSION, "k": public_key, "n": name, "g": list(groups), "nb": not_before, "na": not_after,
              "i": fingerprint(ca.public_key), "sn": serial}
    signed = msgpack.packb(fields, use_bin_type=True)
    signature = ca.sign(CERT_DOMAIN + signed)
    encoded = msgpack.packb({"c": signed, "s": signature}, use_bin_type=True)
    if len(encoded) > MAX_CERT_BYTES:
        raise InvalidArgument(f"the certificate is {len(encoded)} bytes; at most {MAX_CERT_BYTES} (fewer or shorter groups)")
    return decode_certificate(encoded)


def _unpack(data: bytes, what: str, limit: int) -> object:
    if not isinstance(data, bytes):
        raise CertError("malformed", f"{what} must be bytes")
    if len(data) > limit:
        raise CertError("oversize", f"{what} of {len(data)} bytes; at most {limit}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_bin_len=limit, max_str_len=limit, max_array_len=MAX_REVOKED + 8,
                               max_map_len=16, max_ext_len=0)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise CertError("malformed", f"{what} is not one msgpack value: {exc}") from None


def _exact_keys(obj: object, keys: set[str], what: str) -> dict:
    if not isinstance(obj, dict) or set(obj) != keys:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CertError("malformed", f"{what} must be a map with exactly the keys {sorted(keys)}, got {got}")
    return obj


def _int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIME:
        raise CertError("malformed", f"{what} must be an integer from 0 to 2^63-1")
    return value


def _bin(value: object, size: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise CertError("malformed", f"{what} must be {size} bytes (msgpack bin)")
    return value


def _open_signed(data: bytes, what: str, field: str, fields_name: str, max_bytes: int,
                 keys: set[str]) -> tuple[bytes, bytes, dict[str, Any]]:
    """The wrapper both signed objects share, ``{field: signed bytes, "s": signature}``: its structure,
    the signed fields' exact keys and the version. Returns (signed bytes, signature, fields)."""
    outer = _exact_keys(_unpack(data, what, max_bytes), {field, "s"}, what)
    signed = outer[field]
    if type(signed) is not bytes:
        raise CertError("malformed", f"{what} field {field} must be the signed bytes (msgpack bin)")
    signature = _bin(outer["s"], SIGNATURE_LEN, f"{what} signature s")
    f = _exact_keys(_unpack(signed, f"signed {fields_name} fields", max_bytes), keys, f"{fields_name} fields")
    if f["v"] != CERT_VERSION or type(f["v"]) is not int:
        raise CertError("malformed", f"{what} version {f['v']!r} is not {CERT_VERSION}")
    return signed, signature, f


def decode_certificate(data: bytes) -> Certificate:
    """Parse a certificate's structure (nothing about trust: see :meth:`Admission.check` / :func:`verify`)."""
    signed, signature, f = _open_signed(data, "certificate", "c", "certificate", MAX_CERT_BYTES,
                                        {"v", "k", "n", "g", "nb", "na", "i", "sn"})
    key = _bin(f["k"], 32, "certificate key k")
    try:
        name = _check_name(f["n"])
        if not isinstance(f["g"], list):
            raise InvalidArgument("certificate groups g must be an array")
        groups = _check_groups(f["g"])
    except ValueError as exc:
        raise CertError("malformed", str(exc)) from None
    if list(groups) != f["g"]:
        raise CertError("malformed", "certificate groups must be sorted and distinct")
    nb, na = _int(f["nb"], "not-before nb"), _int(f["na"], "not-after na")
    if nb >= na:
        raise CertError("malformed", "not-before must be earlier than not-after")
    return Certificate(key, name, groups, nb, na, _bin(f["i"], FINGERPRINT_LEN, "issuer i"),
                       _bin(f["sn"], SERIAL_LEN, "serial sn"), signature, signed, data)


def trust(cas: Iterable[bytes]) -> dict[bytes, nacl.signing.VerifyKey]:
    """The trusted CAs by fingerprint, ready to verify with (build it once: it costs a hash per CA)."""
    try:
        return {fingerprint(k): nacl.signing.VerifyKey(k) for k in cas}
    except (nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise InvalidArgument("a CA public key is 32 bytes") from None


def _verify_signature(ca: nacl.signing.VerifyKey, domain: bytes, signed: bytes, signature: bytes) -> bool:
    try:
        ca.verify(domain + signed, signature)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False


def verify(data: bytes, cas: "Iterable[bytes] | dict[bytes, nacl.signing.VerifyKey]", *, now: int | float,
           node_id: bytes | None = None, revoked: "Revocations | None" = None) -> Certificate:
    """Check a certificate against the trusted CA public keys (or a :func:`trust` map of them) at time
    ``now`` (Unix seconds); the certificate on success, else :class:`CertError`. ``node_id``: the id of
    the key the peer authenticated with (the certificate must be for that key). The signature is checked
    before any field is trusted."""
    cert = decode_certificate(data)
    trusted = cas if isinstance(cas, dict) else trust(cas)
    ca = trusted.get(cert.issuer)
    if ca is None:
        raise CertError("unknown_issuer", f"issued by CA {cert.issuer.hex()[:16]}, which this node does not trust")
    if not _verify_signature(ca, CERT_DOMAIN, cert.signed, cert.signature):
        raise CertError("bad_signature", "the CA's signature does not verify")
    if now < cert.not_before:
        raise CertError("not_yet_valid", f"certificate {cert.name!r} is valid from {cert.not_before} (now {int(now)})")
    if now >= cert.not_after:
        raise CertError("expired", f"certificate {cert.name!r} expired at {cert.not_after} (now {int(now)})")
    if node_id is not None and cert.node_id != node_id:
        raise CertError("wrong_key", f"certificate {cert.name!r} is for another key than the one the peer holds")
    if revoked is not None and revoked.is_revoked(cert, now):
        raise CertError("revoked", f"certificate {cert.name!r} ({format_public_key(cert.public_key)}) is revoked")
    return cert


# -- revocation lists ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevocationList:
    """The CA's list of revoked node keys. ``sequence`` grows with each list the CA signs: a node keeps
    the highest it has seen. Each entry is (public key, until): certificates for that key are refused
    until Unix time ``until`` (0: for ever); an entry whose ``until`` passed is left out of the next list."""

    issuer: bytes
    sequence: int
    issued_at: int
    entries: tuple[tuple[bytes, int], ...]
    signature: bytes
    signed: bytes
    encoded: bytes

    def describe(self) -> dict:
        return {"issuer": self.issuer.hex(), "sequence": self.sequence, "issued_at": self.issued_at,
                "revoked": [{"public_key": format_public_key(k), "node_id": node_id_of(k).hex(), "until": u}
                            for k, u in self.entries]}


def sign_revocations(ca: Identity, entries: Iterable[tuple[bytes, int]], *, sequence: int,
                     issued_at: int) -> RevocationList:
    """A revocation list signed by the CA; entries are sorted by key and a key listed twice keeps the
    later ``until`` (0, for ever, beats any time). ValueError if there are too many."""
    merged: dict[bytes, int] = {}
    for key, until in entries:
        if len(key) != 32 or type(until) is not int or not 0 <= until <= MAX_TIME:
            raise InvalidArgument("a revocation entry is a 32-byte public key and an until time (0 = for ever)")
        old = merged.get(key)
        merged[key] = 0 if 0 in (old, until) else max(old or 0, until)
    if len(merged) > MAX_REVOKED:
        raise InvalidArgument(f"a revocation list holds at most {MAX_REVOKED} keys (it must fit in one DHT record); "
                         "entries drop out once their until time passes")
    if not 0 < sequence <= MAX_TIME or not 0 <= issued_at <= MAX_TIME:
        raise InvalidArgument("sequence must be 1..2^63-1 and issued_at 0..2^63-1")
    fields = {"v": CERT_VERSION, "i": fingerprint(ca.public_key), "sq": sequence, "t": issued_at,
              "r": [[k, merged[k]] for k in sorted(merged)]}
    signed = msgpack.packb(fields, use_bin_type=True)
    encoded = msgpack.packb({"r": signed, "s": ca.sign(REVOCATION_DOMAIN + signed)}, use_bin_type=True)
    return decode_revocations(encoded)


def decode_revocations(data: bytes) -> RevocationList:
    """Parse a revocation list's structure (the signature is checked by :meth:`Revocations.adopt`)."""
    signed, signature, f = _open_signed(data, "revocation list", "r", "revocation", MAX_REVOCATION_BYTES,
                                        {"v", "i", "sq", "t", "r"})
    sequence = _int(f["sq"], "sequence sq")
    if sequence == 0:
        raise CertError("malformed", "sequence sq starts at 1")
    entries = f["r"]
    if not isinstance(entries, list) or len(entries) > MAX_REVOKED:
        raise CertError("malformed", f"revoked entries r must be an array of at most {MAX_REVOKED}")
    parsed = []
    for e in entries:
        if not isinstance(e, list) or len(e) != 2:
            raise CertError("malformed", "a revoked entry is [public key, until]")
        parsed.append((_bin(e[0], 32, "revoked key"), _int(e[1], "until")))
    if [k for k, _ in parsed] != sorted({k for k, _ in parsed}):
        raise CertError("malformed", "revoked keys must be sorted and distinct")
    return RevocationList(_bin(f["i"], FINGERPRINT_LEN, "issuer i"), sequence, _int(f["t"], "issued at t"),
                          tuple(parsed), signature, signed, data)


def revocation_record_key(issuer: bytes, sequence: int) -> bytes:
    """The DHT key under which revocation list number ``sequence`` of CA ``issuer`` is published."""
    return hashlib.sha256(REVOCATION_RECORD_DOMAIN + issuer + sequence.to_bytes(8, "big")).digest()


class Revocations:
    """The newest revocation list of each trusted CA, as far as this node has seen."""

    def __init__(self, cas: Iterable[bytes]):
        self._cas = trust(cas)
        self.lists: dict[bytes, RevocationList] = {}
        self._revoked: dict[bytes, int] = {}  # public key -> until (0 = for ever), over all lists

    def adopt(self, data: bytes) -> RevocationList | None:
        """Take a revocation list if a trusted CA signed it and it is newer than the one held for that CA;
        returns it, or None if it is not newer. CertError if it is not a list this node can trust."""
        crl = decode_revocations(data)
        ca = self._cas.get(crl.issuer)
        if ca is None:
            raise CertError("unknown_issuer", f"revocation list of CA {crl.issuer.hex()[:16]}, not trusted here")
        if not _verify_signature(ca, REVOCATION_DOMAIN, crl.signed, crl.signature):
            raise CertError("bad_signature", "the CA's signature on the revocation list does not verify")
        held = self.lists.get(crl.issuer)
        if held is not None and held.sequence >= crl.sequence:
            return None
        self.lists[crl.issuer] = crl
        revoked: dict[bytes, int] = {}
        for lst in self.lists.values():
            for key, until in lst.entries:
                old = revoked.get(key)
                revoked[key] = 0 if 0 in (old, until) else max(old or 0, until)
        self._revoked = revoked
        return crl

    def vouches(self, key: bytes, value: object) -> bool:
        """Whether ``value`` is a revocation list signed by a CA trusted here and ``key`` is the DHT key of
        its issuer and sequence: the DHT store's vouch (core/dht_store.py), so that such a record takes its
        key over from whoever stored something else there first, and is never replaced by anything else."""
        if type(value) is not bytes:
            return False
        try:
            crl = decode_revocations(value)
        except CertError:
            return False
        ca = self._cas.get(crl.issuer)
        return ca is not None and key == revocation_record_key(crl.issuer, crl.sequence) \
            and _verify_signature(ca, REVOCATION_DOMAIN, crl.signed, crl.signature)

    def sequence(self, issuer: bytes) -> int:
        held = self.lists.get(issuer)
        return 0 if held is None else held.sequence

    def is_revoked(self, cert: Certificate, now: int | float) -> bool:
        until = self._revoked.get(cert.public_key)
        return until is not None and (until == 0 or now < until)

    def revoked_keys(self, now: int | float) -> set[bytes]:
        return {k for k, until in self._revoked.items() if until == 0 or now < until}


# -- admission: the per-peer state of a node that joins as a fleet ------------------------------------


@dataclass(frozen=True, slots=True)
class Admitted:
    """A peer whose certificate checked out: until when, and what the certificate says."""

    not_after: int
    name: str
    groups: frozenset[str]
    public_key: bytes


class Admission:
    """Which peers presented a valid certificate for the key they authenticated with.

    Sans-IO: the transport asks :meth:`admitted` for every message (a dict lookup and a comparison),
    hands each ``fleet.cert`` to :meth:`present`, and gives :meth:`adopt` each revocation list it finds.
    At most ``max_peers`` peers are remembered (least recently admitted forgotten first); a forgotten
    peer is asked for its certificate again, so the bound costs a round trip, never a wrong answer.
    """

    def __init__(self, cas: Iterable[bytes], certificate: bytes, *, max_peers: int = 4096):
        self.cas = tuple(cas)
        if not self.cas:
            raise InvalidArgument("a fleet needs at least one CA public key")
        self.revocations = Revocations(self.cas)
        self._trusted = trust(self.cas)
        self.certificate = decode_certificate(certificate)
        if self.certificate.issuer not in self._trusted:
            raise InvalidArgument("this node's certificate is not issued by any of the configured CAs "
                             f"(issuer {self.certificate.issuer.hex()[:16]})")
        self.max_peers = max_peers
        self._peers: OrderedDict[bytes, Admitted] = OrderedDict()

    def check_own(self, identity_public_key: bytes, now: int | float) -> Certificate:
        """Our own certificate, verified as a peer would (CertError says why a peer would refuse it)."""
        return verify(self.certificate.encoded, self._trusted, now=now, node_id=node_id_of(identity_public_key),
                      revoked=self.revocations)

    def replace_certificate(self, certificate: bytes) -> None:
        """Use a renewed certificate from now on (a SIGHUP re-reads the file)."""
        self.certificate = decode_certificate(certificate)

    def admitted(self, node_id: bytes, now: int | float) -> bool:
        peer = self._peers.get(node_id)
        if peer is None:
            return False
        if now >= peer.not_after:
            del self._peers[node_id]
            return False
        return True

    def present(self, node_id: bytes, data: bytes, now: int | float) -> Admitted:
        """Check the certificate peer ``node_id`` presented; admit it, or raise CertError."""
        cert = verify(data, self._trusted, now=now, node_id=node_id, revoked=self.revocations)
        peer = Admitted(cert.not_after, cert.name, frozenset(cert.groups), cert.public_key)
        peers = self._peers
        peers[node_id] = peer
        peers.move_to_end(node_id)
        while len(peers) > self.max_peers:
            peers.popitem(last=False)
        return peer

    def adopt(self, data: bytes, now: int | float) -> list[bytes]:
        """Take a revocation list (see :meth:`Revocations.adopt`); returns the node ids of admitted peers it
        cuts off (they are no longer admitted). CertError if it cannot be trusted."""
        if self.revocations.adopt(data) is None:
            return []
        revoked = self.revocations.revoked_keys(now)
        gone = [nid for nid, peer in self._peers.items() if peer.public_key in revoked]
        for nid in gone:
            del self._peers[nid]
        return gone

    def groups_of(self, node_id: bytes) -> frozenset[str]:
        """The groups an admitted peer's certificate names (empty for anyone else)."""
        peer = self._peers.get(node_id)
        return frozenset() if peer is None else peer.groups

    def peer(self, node_id: bytes) -> Admitted | None:
        return self._peers.get(node_id)

    def forget(self, node_id: bytes) -> None:
        self._peers.pop(node_id, None)

    def __len__(self) -> int:
        return len(self._peers)


# -- files ----------------------------------------------------------------------------------------------


def load_ca_key(path: str | os.PathLike) -> Identity:
    """The CA's signing key from its key file (KeyFileError says what to do)."""
    return Identity.load(path, file_format=CA_KEY_FORMAT)


def parse_ca(text: str) -> bytes:
    """A CA public key given as its base32 text or as a file holding it (``ca.pub`` from ``ca init``);
    IdentityError says what was wrong."""
    candidate = text.strip()
    if len(candidate) == 52 and not os.path.exists(candidate):
        return parse_public_key(candidate)
    try:
        content = Path(candidate).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"CA {text!r} is neither a public key (52 characters base32) nor a readable file "
                            f"({getattr(exc, 'strerror', None) or exc})") from None
    lines = [ln.split("#", 1)[0].strip() for ln in content.splitlines()]
    keys = [ln for ln in lines if ln]
    if len(keys) != 1:
        raise IdentityError(f"CA file {candidate} must hold one public key line (as `zmqagents ca init` writes it)")
    return parse_public_key(keys[0])


def armor(data: bytes, header: str, comments: Iterable[str] = ()) -> str:
    """Text form of a certificate or revocation list: '#' comment lines, then base64 lines of 76."""
    b64 = base64.b64encode(data).decode("ascii")
    lines = [header, *(f"# {c}" for c in comments)] + [b64[i:i + 76] for i in range(0, len(b64), 76)]
    return "\n".join(lines) + "\n"


def unarmor(text: str, what: str) -> bytes:
    """The bytes of a file written by :func:`armor` (comment lines skipped); CertError if not base64."""
    body = "".join(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    try:
        return base64.b64decode(body, validate=True)
    except ValueError:
        raise CertError("malformed", f"{what} is not base64 text (as `zmqagents ca` writes it)") from None


def read_armored(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The bytes in a certificate or revocation list file; CertError naming the file otherwise."""
    p = Path(path)
    try:
        if p.stat().st_size > 2 * limit + 4096:
            raise CertError("oversize", f"{what} file {p} is too large to be one")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CertError("malformed", f"{what} file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CertError("malformed", f"cannot read {what} file {p}: {getattr(exc, 'strerror', None) or exc}") from None
    return unarmor(text, f"{what} file {p}")


def read_certificate(path: str | os.PathLike) -> bytes:
    data = read_armored(path, "certificate", MAX_CERT_BYTES)
    try:
        decode_certificate(data)
    except CertError as exc:
        raise CertError(exc.reason, f"certificate file {path}: {exc}") from None
    return data


def read_revocations(path: str | os.PathLike) -> bytes:
    data = read_armored(path, "revocation list", MAX_REVOCATION_BYTES)
    try:
        decode_revocations(data)
    except CertError as exc:
        raise CertError(exc.reason, f"revocation list file {path}: {exc}") from None
    return data


def write_text(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> Path:
    """Write a public file (certificate, revocation list, CA public key) whole: a reader never sees half."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    return p
