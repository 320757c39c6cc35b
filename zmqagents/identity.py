"""Node identity: one Ed25519 key per node.

The signing key is the node's only secret. Everything else is derived from it:

* the node id is ``sha256(verify_key)`` — a point in the 256-bit Kademlia space;
* the CurveZMQ keypair is the Ed25519 key converted to Curve25519, so the key
  that encrypts a link is provably the key that signs for the node.

A peer's *public key* (its 32-byte verify key) is written as lowercase base32
without padding (52 characters) so it never looks like a node id (64 hex
characters). A *contact* is ``PUBLICKEY@ENDPOINT``: everything needed to open
an authenticated CURVE link to a node. A node that cannot accept connections
is reached through relays instead; its endpoint then lists them:
``PUBLICKEY@relay://RELAYCONTACT[,RELAYCONTACT...]`` (see protocols/node.md).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
import tomllib
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nacl.exceptions
import nacl.signing
from .errors import Error

KEY_FILE_FORMAT = "zmqagents-ed25519-v1"
NODE_ID_LEN = 32
PUBLIC_KEY_LEN = 32
SHORT_ID_HEX = 12
RELAY_SCHEME = "relay://"
# Routing tables, lookups and membership rumors refuse endpoints longer than this (core/lookup.py,
# core/membership.py), so a relayed contact must fit too: two or three relays, depending on host names.
MAX_ENDPOINT_LEN = 255


class IdentityError(Error, ValueError):
    """A key, key file, node id or contact could not be used; the message says why."""


class KeyFileError(IdentityError):
    """A key file is missing, unreadable, corrupt, or would be overwritten."""


class InsecureKeyFileWarning(UserWarning):
    """The key file can be read by users other than its owner."""


@lru_cache(maxsize=1 << 15)
def node_id_of(verify_key: bytes) -> bytes:
    """The 32-byte node id that belongs to an Ed25519 verify key: ``sha256(verify_key)``, the one place it
    is computed. Memoized (bounded): the hash costs ~1 µs and the same keys come back in message after
    message, lookup answer after answer and rumor after rumor; in a simulation the ids of all nodes are then
    shared bytes objects. Pass bytes only (anything unhashable raises TypeError)."""
    return hashlib.sha256(verify_key).digest()


@lru_cache(maxsize=4096)
def curve_public_of(verify_key: bytes) -> bytes:
    """The Curve25519 public key CurveZMQ uses for a peer's Ed25519 verify key.

    The conversion costs ~32 µs, so it is cached per peer (bounded LRU).
    Raises IdentityError for bytes that are not a valid Ed25519 point.
    """
    try:
        return bytes(nacl.signing.VerifyKey(verify_key).to_curve25519_public_key())
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError):
        # libsodium only says "Unexpected library error" here; say what it means.
        raise IdentityError(
            "not a valid Ed25519 public key (expected 32 bytes encoding a curve point of large order)"
        ) from None


def format_public_key(verify_key: bytes) -> str:
    return base64.b32encode(verify_key).decode("ascii").rstrip("=").lower()


def parse_public_key(text: str) -> bytes:
    """Parse a base32 public key as printed by ``zmqagents keygen``."""
    cleaned = text.strip().upper()
    try:
        raw = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (ValueError, binascii.Error):
        raise IdentityError(f"public key {text!r} is not base32 (expected 52 characters a-z, 2-7)") from None
    if len(raw) != PUBLIC_KEY_LEN:
        raise IdentityError(f"public key {text!r} decodes to {len(raw)} bytes, expected {PUBLIC_KEY_LEN}")
    if format_public_key(raw) != cleaned.lower():
        # The last character carries 4 unused bits and b32decode ignores them:
        # insist on the one spelling, so equal keys always print and compare equal.
        raise IdentityError(f"public key {text!r} is not in canonical form (expected {format_public_key(raw)})")
    curve_public_of(raw)  # validates the point
    return raw


def format_node_id(node_id: bytes) -> str:
    return node_id.hex()


def short_id(node_id: bytes) -> str:
    """A printable prefix of a node id, long enough to tell nodes apart in logs."""
    return node_id.hex()[:SHORT_ID_HEX]


def parse_node_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise IdentityError(f"node id {text!r} is not hex") from None
    if len(raw) != NODE_ID_LEN:
        raise IdentityError(f"node id {text!r} has {len(raw)} bytes, expected {NODE_ID_LEN} (64 hex characters)")
    return raw


@dataclass(frozen=True, slots=True)
class Contact:
    """How to reach a node: its public key (which fixes its id) and its inbox endpoint."""

    public_key: bytes
    endpoint: str

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.public_key)

    def __str__(self) -> str:
        return f"{format_public_key(self.public_key)}@{self.endpoint}"

    @property
    def relayed(self) -> bool:
        """True when the node accepts no connections and is reached through the relays its endpoint lists."""
        return self.endpoint.startswith(RELAY_SCHEME)

    @property
    def relays(self) -> list["Contact"]:
        """The relays of a relayed contact, in the node's order of preference; [] for a direct contact."""
        if not self.endpoint.startswith(RELAY_SCHEME):
            return []
        return [Contact.parse(part) for part in self.endpoint[len(RELAY_SCHEME):].split(",")]

    @classmethod
    def via(cls, public_key: bytes, relays: "list[Contact]") -> "Contact":
        """The contact of a node reached through ``relays`` (direct contacts, most preferred first)."""
        if not relays:
            raise IdentityError("a relayed contact needs at least one relay")
        for relay in relays:
            if relay.relayed or "," in relay.endpoint:
                raise IdentityError(f"relay {relay} must be a direct contact (tcp:// or ipc:// without commas)")
        contact = cls(public_key, RELAY_SCHEME + ",".join(str(r) for r in relays))
        if len(contact.endpoint) > MAX_ENDPOINT_LEN:
            raise IdentityError(
                f"{len(relays)} relays make an endpoint of {len(contact.endpoint)} characters; peers accept at most "
                f"{MAX_ENDPOINT_LEN}: use fewer relays or shorter host names")
        return contact

    @classmethod
    def parse(cls, text: str) -> "Contact":
        """Parse ``PUBLICKEY@tcp://host:port``, ``PUBLICKEY@ipc://path`` or ``PUBLICKEY@relay://RELAY[,RELAY]``."""
        key_text, sep, endpoint = text.strip().partition("@")
        if not sep or not key_text or not endpoint:
            raise IdentityError(
                f"contact {text!r} must look like PUBLICKEY@tcp://HOST:PORT "
                "(a node prints its contact when it starts)"
            )
        if endpoint.startswith(RELAY_SCHEME):
            relays = endpoint[len(RELAY_SCHEME):]
            if not relays:
                raise IdentityError(f"contact {text!r}: relay:// must list at least one relay contact")
            try:
                parsed = [cls.parse(part) for part in relays.split(",")]
            except IdentityError as exc:
                raise IdentityError(f"contact {text!r}: bad relay: {exc}") from None
            return cls.via(parse_public_key(key_text), parsed)
        _check_endpoint(text, endpoint)
        return cls(parse_public_key(key_text), endpoint)


def _check_endpoint(text: str, endpoint: str) -> None:
    """A contact's endpoint is something to connect to: tcp://HOST:PORT with a real port, or ipc://PATH."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://"):].rpartition(":")
        if sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
            return
        raise IdentityError(f"contact {text!r}: endpoint must be tcp://HOST:PORT with a port from 1 to 65535")
    raise IdentityError(f"contact {text!r}: endpoint must be tcp://HOST:PORT, ipc://PATH or relay://RELAYCONTACT,...")


class Identity:
    """A node's signing key and everything derived from it."""

    __slots__ = ("signing_key", "public_key", "node_id", "curve_public", "curve_secret")

    def __init__(self, signing_key: nacl.signing.SigningKey):
        self.signing_key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.node_id: bytes = node_id_of(self.public_key)
        self.curve_public: bytes = bytes(signing_key.verify_key.to_curve25519_public_key())
        self.curve_secret: bytes = bytes(signing_key.to_curve25519_private_key())

    @classmethod
    def generate(cls) -> "Identity":
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        """Deterministic identity from a 32-byte seed (tests and simulations)."""
        if len(seed) != 32:
            raise IdentityError(f"seed must be 32 bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    def sign(self, data: bytes) -> bytes:
        return self.signing_key.sign(data).signature

    @property
    def short_id(self) -> str:
        return short_id(self.node_id)

    def contact(self, endpoint: str) -> Contact:
        return Contact(self.public_key, endpoint)

    def __repr__(self) -> str:
        return f"Identity({self.short_id})"

    # -- key files -------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, force: bool = False, file_format: str = KEY_FILE_FORMAT) -> Path:
        """Write the key file with mode 0600; refuse to replace one unless ``force``.

        ``file_format`` names what the key is for (a node key, or an operator CA's key, see certs.py), so
        that one kind of key file is never loaded as the other."""
        path = Path(path)
        what = "node" if file_format == KEY_FILE_FORMAT else "CA"
        if path.exists() and not force:
            raise KeyFileError(f"{path} already exists; refusing to overwrite a {what} key (use --force to replace it)")
        header = (f"# zmqagents node identity. Keep this file secret (mode 0600).\n"
                  f"# node id:    {format_node_id(self.node_id)}\n") if what == "node" else (
                  "# zmqagents operator CA key: it signs node certificates. Keep this file secret (mode 0600),\n"
                  "# ideally offline.\n")
        text = (
            header +
            f"# public key: {format_public_key(self.public_key)}\n"
            f'format = "{file_format}"\n'
            f'secret = "{bytes(self.signing_key).hex()}"\n'
        )
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, text.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a half-written copy of a secret must not stay behind
            raise KeyFileError(f"cannot write key file {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, file_format: str = KEY_FILE_FORMAT) -> "Identity":
        path = Path(path)
        try:
            mode = path.stat().st_mode
            raw = path.read_bytes()
        except FileNotFoundError:
            create = "zmqagents keygen" if file_format == KEY_FILE_FORMAT else "zmqagents ca init --ca-key"
            raise KeyFileError(f"key file {path} does not exist (create one with: {create} {path})") from None
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(
                f"key file {path} is open to other users (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}",
                InsecureKeyFileWarning,
                stacklevel=2,
            )
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise KeyFileError(f"key file {path} is corrupt: {exc}") from None
        if doc.get("format") != file_format:
            raise KeyFileError(f"key file {path}: format is {doc.get('format')!r}, expected {file_format!r}")
        secret = doc.get("secret")
        try:
            seed = bytes.fromhex(secret) if isinstance(secret, str) else b""
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise KeyFileError(f"key file {path} is corrupt: 'secret' must be 64 hex characters")
        return cls.from_seed(seed)


def load_allowlist(path: str | os.PathLike[str]) -> frozenset[bytes]:
    """The node ids in an allowlist file: one node id (hex), public key (base32) or contact per
    line; '#' starts a comment. Raises IdentityError naming the file (and line) on bad input."""
    ids = set()
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError:
        raise IdentityError(f"allowlist {path} is not UTF-8 text") from None
    except OSError as exc:
        raise IdentityError(f"cannot read allowlist {path}: {exc.strerror}") from None
    for number, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.add(parse_peer_ref(text))
        except IdentityError as exc:
            raise IdentityError(f"{path}:{number}: {exc}") from None
    return frozenset(ids)


def parse_peer_ref(text: str) -> bytes:
    """The node id a text names: a node id (hex), a public key (base32) or a contact. IdentityError if none."""
    if "@" in text:
        return Contact.parse(text).node_id
    if len(text) == 64:
        return parse_node_id(text)
    return node_id_of(parse_public_key(text))
