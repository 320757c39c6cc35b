"""Node identity: ids, derived CURVE keys, text forms, contacts and key files."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import warnings

import nacl.public
import nacl.signing
import pytest

from zmqagents.identity import (
    KEY_FILE_FORMAT,
    Contact,
    Identity,
    IdentityError,
    InsecureKeyFileWarning,
    KeyFileError,
    curve_public_of,
    format_node_id,
    format_public_key,
    node_id_of,
    parse_node_id,
    parse_public_key,
    short_id,
)

SEED = hashlib.sha256(b"zmqagents test identity alice").digest()
P = 2**255 - 19  # the field prime of Curve25519 / edwards25519 (RFC 7748, RFC 8032)


@pytest.fixture
def ident() -> Identity:
    return Identity.from_seed(SEED)


# -- derived values ------------------------------------------------------------------

def test_node_id_is_sha256_of_the_verify_key(ident):
    assert ident.node_id == hashlib.sha256(ident.public_key).digest() == node_id_of(ident.public_key)
    assert len(ident.node_id) == 32
    fresh = Identity.generate()
    assert fresh.node_id == hashlib.sha256(fresh.public_key).digest()


def test_from_seed_is_deterministic_and_checks_length(ident):
    assert Identity.from_seed(SEED).public_key == ident.public_key
    with pytest.raises(IdentityError):
        Identity.from_seed(SEED[:31])


def test_curve_public_key_agrees_everywhere(ident):
    assert curve_public_of(ident.public_key) == ident.curve_public
    # The CURVE secret belongs to the CURVE public key.
    assert bytes(nacl.public.PrivateKey(ident.curve_secret).public_key) == ident.curve_public


def test_curve_public_key_is_the_birational_map_of_the_ed25519_key(ident):
    # Independent of libsodium: u = (1 + y) / (1 - y) mod p (RFC 7748, section 4.1), where y
    # is the Edwards y-coordinate, stored little-endian with the sign of x in the top bit.
    y = int.from_bytes(ident.public_key, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, P - 2, P) % P
    assert u.to_bytes(32, "little") == ident.curve_public


def test_curve_public_of_refuses_bytes_that_are_not_a_usable_point():
    for bad in (bytes(32), b"\x01" + bytes(31), b"\xff" * 32, b"short"):
        with pytest.raises(IdentityError):
            curve_public_of(bad)


def test_signatures_verify_with_the_public_key(ident):
    sig = ident.sign(b"hello")
    assert len(sig) == 64
    nacl.signing.VerifyKey(ident.public_key).verify(b"hello", sig)


# -- text forms --------------------------------------------------------------------

def test_public_key_text_is_lowercase_unpadded_base32(ident):
    text = format_public_key(ident.public_key)
    assert len(text) == 52 and text == text.lower() and "=" not in text
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert base64.b32decode(text.upper() + "====") == ident.public_key
    assert parse_public_key(text) == ident.public_key
    assert parse_public_key(f"  {text.upper()}\n") == ident.public_key


def _key_texts(ident: Identity) -> dict:
    text = format_public_key(ident.public_key)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return {
        "empty": "",
        "not base32": text[:-1] + "1",
        "too short": text[:-2],
        "too long": text + "a",
        "hex, not base32": ident.public_key.hex(),
        "padded": text + "====",
        "unused bits set": text[:-1] + alphabet[alphabet.index(text[-1]) ^ 1],  # same key, other spelling
        "not a curve point": format_public_key(bytes(32)),
        "non-ascii": text[:-1] + "é",
    }


@pytest.mark.parametrize("why", sorted(_key_texts(Identity.from_seed(SEED))))
def test_parse_public_key_errors(ident, why):
    with pytest.raises(IdentityError):
        parse_public_key(_key_texts(ident)[why])


def test_node_id_text(ident):
    text = format_node_id(ident.node_id)
    assert len(text) == 64 and parse_node_id(text) == ident.node_id
    assert parse_node_id(text.upper()) == ident.node_id
    assert short_id(ident.node_id) == text[:12] == ident.short_id
    assert ident.short_id in repr(ident)


@pytest.mark.parametrize("text", ["", "zz" * 32, "ab" * 31, "ab" * 33, "abc", "0x" + "ab" * 31])
def test_parse_node_id_errors(text):
    with pytest.raises(IdentityError):
        parse_node_id(text)


# -- contacts --------------------------------------------------------------------

@pytest.mark.parametrize(
    "endpoint", ["tcp://192.0.2.1:5555", "tcp://node-7.example:1", "tcp://[::1]:65535", "ipc:///run/zmqagents/x.sock"]
)
def test_contact_round_trip(ident, endpoint):
    contact = ident.contact(endpoint)
    text = str(contact)
    assert text == f"{format_public_key(ident.public_key)}@{endpoint}"
    parsed = Contact.parse(text)
    assert parsed == contact and parsed.node_id == ident.node_id


@pytest.mark.parametrize(
    "form",
    [
        "{key}", "{key}@", "@tcp://host:5555", "{key}tcp://host:5555", "{key}@udp://host:5555",
        "{key}@tcp://host", "{key}@tcp://:5555", "{key}@tcp://host:0", "{key}@tcp://host:65536",
        "{key}@tcp://host:http", "{key}@tcp://host:*", "{key}@ipc://", "{key}@inproc://x",
        "{bad}@tcp://host:5555", "",
    ],
)
def test_contact_parse_refuses_bad_forms(ident, form):
    text = form.format(key=format_public_key(ident.public_key), bad="notakey")
    with pytest.raises(IdentityError) as info:
        Contact.parse(text)
    assert str(info.value)


# -- key files ----------------------------------------------------------------------

def test_save_and_load_round_trip_with_mode_0600(tmp_path, ident):
    path = ident.save(tmp_path / "keys" / "node.key")  # parent directories are created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = Identity.load(path)
    assert bytes(loaded.signing_key) == bytes(ident.signing_key)
    assert loaded.node_id == ident.node_id
    text = path.read_text()
    assert format_node_id(ident.node_id) in text and format_public_key(ident.public_key) in text
    assert sorted(p.name for p in path.parent.iterdir()) == ["node.key"]  # no temporary file left


def test_mode_is_0600_whatever_the_umask(tmp_path, ident):
    old = os.umask(0)
    try:
        path = ident.save(tmp_path / "node.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_refuses_to_overwrite_without_force(tmp_path, ident):
    path = ident.save(tmp_path / "node.key")
    before = path.read_bytes()
    other = Identity.generate()
    with pytest.raises(KeyFileError, match="already exists"):
        other.save(path)
    assert path.read_bytes() == before
    other.save(path, force=True)
    assert Identity.load(path).node_id == other.node_id


def test_save_reports_an_unwritable_place_as_a_key_file_error(tmp_path, ident):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(KeyFileError, match="cannot write"):
        ident.save(blocker / "node.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620])
def test_load_warns_when_others_can_access_the_file(tmp_path, ident, mode):
    path = ident.save(tmp_path / "node.key")
    path.chmod(mode)
    with pytest.warns(InsecureKeyFileWarning, match="chmod 600"):
        assert Identity.load(path).node_id == ident.node_id


def test_load_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(KeyFileError, match="keygen"):
        Identity.load(tmp_path / "absent.key")


def test_a_key_file_written_by_hand_loads(tmp_path, ident):
    path = tmp_path / "node.key"
    path.write_bytes(key_file(f'"{bytes(ident.signing_key).hex()}"'))
    path.chmod(0o600)
    assert Identity.load(path).node_id == ident.node_id


def test_load_a_directory(tmp_path):
    with pytest.raises(KeyFileError):
        Identity.load(tmp_path)


def key_file(secret: str, fmt: str = KEY_FILE_FORMAT) -> bytes:
    return f'format = "{fmt}"\nsecret = {secret}\n'.encode()


def corrupt_files(ident: Identity) -> dict:
    hexed = bytes(ident.signing_key).hex()
    good = key_file(f'"{hexed}"')
    return {
        "empty": b"",
        "binary garbage": bytes(range(256)),
        "text garbage": b"this is not a key file\n",
        "truncated": good[: len(good) // 2],
        "only the first line": good.split(b"\n")[0] + b"\n",
        "wrong format": key_file(f'"{hexed}"', fmt="zmqagents-ed25519-v0"),
        "no format": good.split(b"\n", 1)[1],
        "bad hex": key_file(f'"zz{hexed[2:]}"'),
        "short secret": key_file(f'"{hexed[:-2]}"'),
        "odd-length secret": key_file(f'"{hexed[:-1]}"'),
        "long secret": key_file(f'"{hexed}00"'),
        "secret not a string": key_file("12"),
    }


@pytest.mark.parametrize("why", sorted(corrupt_files(Identity.from_seed(SEED))))
def test_load_refuses_corrupt_files_clearly(tmp_path, ident, why):
    path = tmp_path / "node.key"
    path.write_bytes(corrupt_files(ident)[why])
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        Identity.load(path)
    assert str(path) in str(info.value)
