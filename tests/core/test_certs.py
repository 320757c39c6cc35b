"""Fleet certificates (zmqagents/certs.py), their vectors (protocols/cert-vectors.json) and `zmqagents ca`."""

from __future__ import annotations

import json
import os
import stat
import time

import msgpack
import pytest
from click.testing import CliRunner

from zmqagents.certs import (
    Admission,
    CertError,
    Revocations,
    decode_certificate,
    fingerprint,
    issue,
    parse_ca,
    read_certificate,
    revocation_record_key,
    sign_revocations,
    verify,
)
from zmqagents.cli.app import cli
from zmqagents.envelope import decode
from zmqagents.identity import Identity, format_public_key, parse_public_key

from helpers.vectors import assert_generated_by, load, untag

VECTORS = load("cert-vectors.json")
CA_V = Identity.from_seed(bytes.fromhex(VECTORS["ca"]["seed"]))
IDS = {name: Identity.from_seed(bytes.fromhex(v["seed"])) for name, v in VECTORS["identities"].items()}
NOW = VECTORS["now"]


def test_vectors_are_up_to_date():
    assert_generated_by("cert-vectors.json", "make_cert_vectors")


def test_ca_vector():
    assert format_public_key(CA_V.public_key) == VECTORS["ca"]["public_key"]
    assert fingerprint(CA_V.public_key).hex() == VECTORS["ca"]["fingerprint"]


@pytest.mark.parametrize("vector", VECTORS["certificates"], ids=lambda v: v["name"])
def test_certificate_vectors(vector):
    fields = untag(vector["fields"])
    signed = bytes.fromhex(vector["signed"])
    # The signed bytes are the fields in msgpack, in the order listed; the signature covers domain + them.
    assert msgpack.packb(fields, use_bin_type=True) == signed
    import nacl.signing
    nacl.signing.VerifyKey(CA_V.public_key).verify(bytes.fromhex(VECTORS["cert_domain"]) + signed,
                                                   bytes.fromhex(vector["signature"]))
    encoded = bytes.fromhex(vector["encoded"])
    assert msgpack.unpackb(encoded) == {"c": signed, "s": bytes.fromhex(vector["signature"])}
    cert = decode_certificate(encoded)
    assert cert.fingerprint.hex() == vector["fingerprint"]
    # issuing the same fields again gives the same bytes (Ed25519 is deterministic)
    again = issue(CA_V, fields["k"], fields["n"], groups=fields["g"], not_before=fields["nb"],
                  not_after=fields["na"], serial=fields["sn"])
    assert again.encoded == encoded


@pytest.mark.parametrize("vector", VECTORS["checks"], ids=lambda v: v["name"])
def test_check_vectors(vector):
    revoked = None
    if vector["revocations"]:
        revoked = Revocations([CA_V.public_key])
        assert revoked.adopt(bytes.fromhex(vector["revocations"])) is not None
    peer = bytes.fromhex(vector["peer_node_id"])
    try:
        verify(bytes.fromhex(vector["certificate"]), [CA_V.public_key], now=NOW, node_id=peer, revoked=revoked)
        outcome = "ok"
    except CertError as exc:
        outcome = exc.reason
    assert outcome == vector["outcome"]


def test_revocation_vector():
    r = VECTORS["revocations"]
    fields = untag(r["fields"])
    assert msgpack.packb(fields, use_bin_type=True) == bytes.fromhex(r["signed"])
    held = Revocations([CA_V.public_key])
    crl = held.adopt(bytes.fromhex(r["encoded"]))
    assert crl.sequence == fields["sq"] == 7
    assert revocation_record_key(crl.issuer, crl.sequence).hex() == r["record_key"]
    assert held.adopt(bytes.fromhex(r["encoded"])) is None  # not newer: nothing changes


def test_fleet_cert_message_vector():
    v = VECTORS["fleet_cert_message"]
    env = decode(bytes.fromhex(v["frame"]))
    assert env.type == "fleet.cert" and env.body == untag(v["body"])
    assert env.src == IDS["alice"].node_id and env.dst == IDS["bob"].node_id


# -- checks, one reason each ------------------------------------------------------------------------------

CA = Identity.generate()
NODE = Identity.generate()
OTHER = Identity.generate()


def _cert(who=NODE, ca=CA, nb=None, na=None, groups=("ops",)):
    now = int(time.time())
    return issue(ca, who.public_key, "n1", groups=groups, not_before=now - 60 if nb is None else nb,
                 not_after=now + 3600 if na is None else na, serial=os.urandom(16))


def _reason(data, *, node=NODE, revoked=None, now=None):
    with pytest.raises(CertError) as info:
        verify(data, [CA.public_key], now=now or time.time(), node_id=node.node_id, revoked=revoked)
    return info.value.reason


def test_valid_certificate_passes_and_carries_its_groups():
    cert = verify(_cert(groups=("ops", "edge")).encoded, [CA.public_key], now=time.time(), node_id=NODE.node_id)
    assert cert.groups == ("edge", "ops") and cert.node_id == NODE.node_id


def test_expired_not_yet_valid_wrong_ca_tampered_other_key_revoked():
    now = int(time.time())
    assert _reason(_cert(nb=now - 7200, na=now - 1).encoded) == "expired"
    assert _reason(_cert(nb=now + 600, na=now + 7200).encoded) == "not_yet_valid"
    assert _reason(_cert(ca=OTHER).encoded) == "unknown_issuer"
    assert _reason(_cert().encoded, node=OTHER) == "wrong_key"
    good = _cert().encoded
    tampered = bytearray(good)
    tampered[good.index(b"ops")] = ord("x")  # "ops" -> "xps": a valid group name, a broken signature
    assert _reason(bytes(tampered)) == "bad_signature"
    held = Revocations([CA.public_key])
    held.adopt(sign_revocations(CA, [(NODE.public_key, 0)], sequence=1, issued_at=now).encoded)
    assert _reason(good, revoked=held) == "revoked"


def test_a_revocation_with_an_until_lapses():
    now = int(time.time())
    held = Revocations([CA.public_key])
    held.adopt(sign_revocations(CA, [(NODE.public_key, now + 100)], sequence=1, issued_at=now).encoded)
    cert = _cert(na=now + 3600).encoded
    assert _reason(cert, revoked=held) == "revoked"
    assert verify(cert, [CA.public_key], now=now + 200, node_id=NODE.node_id, revoked=held)


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"c": b"x", "s": b"y" * 64}),
                                  b"\x82" + b"\xa1c" * 600])
def test_garbage_is_malformed_or_oversize(data):
    assert _reason(data) in ("malformed", "oversize")


def test_revocation_lists_from_another_ca_or_altered_are_refused():
    held = Revocations([CA.public_key])
    with pytest.raises(CertError) as info:
        held.adopt(sign_revocations(OTHER, [(NODE.public_key, 0)], sequence=1, issued_at=0).encoded)
    assert info.value.reason == "unknown_issuer"
    good = sign_revocations(CA, [(NODE.public_key, 0)], sequence=2, issued_at=0)
    forged = msgpack.packb({"r": good.signed.replace(NODE.public_key, OTHER.public_key), "s": good.signature})
    with pytest.raises(CertError) as info:
        held.adopt(forged)
    assert info.value.reason == "bad_signature"


def test_admission_admits_expires_and_revocation_cuts_off():
    now = time.time()
    mine = _cert(who=OTHER)
    adm = Admission([CA.public_key], mine.encoded, max_peers=2)
    assert not adm.admitted(NODE.node_id, now)
    with pytest.raises(CertError):
        adm.present(NODE.node_id, mine.encoded, now)  # OTHER's certificate from NODE: wrong key
    assert not adm.admitted(NODE.node_id, now)
    cert = _cert(na=int(now) + 100)
    adm.present(NODE.node_id, cert.encoded, now)
    assert adm.admitted(NODE.node_id, now) and adm.groups_of(NODE.node_id) == {"ops"}
    assert not adm.admitted(NODE.node_id, now + 100)  # its certificate ran out
    adm.present(NODE.node_id, cert.encoded, now)
    newer = sign_revocations(CA, [(NODE.public_key, 0)], sequence=5, issued_at=0).encoded
    assert adm.adopt(newer, now) == [NODE.node_id]
    assert not adm.admitted(NODE.node_id, now) and adm.groups_of(NODE.node_id) == frozenset()
    older = sign_revocations(CA, [], sequence=4, issued_at=0).encoded
    assert adm.adopt(older, now) == []  # an older list does not un-revoke
    with pytest.raises(CertError) as info:
        adm.present(NODE.node_id, cert.encoded, now)
    assert info.value.reason == "revoked"


def test_admission_remembers_at_most_max_peers():
    now = time.time()
    adm = Admission([CA.public_key], _cert().encoded, max_peers=2)
    ids = [Identity.generate() for _ in range(3)]
    for i in ids:
        adm.present(i.node_id, _cert(who=i).encoded, now)
    assert len(adm) == 2 and not adm.admitted(ids[0].node_id, now) and adm.admitted(ids[2].node_id, now)


def test_admission_refuses_a_certificate_of_another_ca_for_itself():
    with pytest.raises(ValueError, match="not issued by any of the configured CAs"):
        Admission([CA.public_key], _cert(ca=OTHER).encoded)


def test_issue_refuses_bad_fields():
    for kwargs in ({"groups": ["@ops"]}, {"groups": [f"g{i}" for i in range(40)]}):
        with pytest.raises(ValueError):
            issue(CA, NODE.public_key, "n", not_before=0, not_after=10, serial=bytes(16), **kwargs)
    with pytest.raises(ValueError):
        issue(CA, NODE.public_key, "", not_before=0, not_after=10, serial=bytes(16))
    with pytest.raises(ValueError):
        issue(CA, NODE.public_key, "n", not_before=10, not_after=10, serial=bytes(16))


# -- zmqagents ca ----------------------------------------------------------------------------------------


def _run(args, cwd):
    runner = CliRunner()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = runner.invoke(cli, args, catch_exceptions=False)
    finally:
        os.chdir(old)
    return result


def test_ca_init_sign_show_revoke(tmp_path):
    r = _run(["ca", "init"], tmp_path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    ca_key = parse_ca(str(tmp_path / "ca.pub"))
    assert format_public_key(ca_key) == out["ca"]
    assert _run(["ca", "init"], tmp_path).exit_code != 0  # refuses to replace the CA key
    node = Identity.generate()
    node.save(tmp_path / "n.key")
    r = _run(["ca", "sign", "n.key", "--name", "web-1", "--group", "ops", "--group", "edge", "--days", "2"], tmp_path)
    assert r.exit_code == 0, r.output
    cert = verify(read_certificate(tmp_path / "web-1.cert"), [ca_key], now=time.time(), node_id=node.node_id)
    assert cert.groups == ("edge", "ops") and cert.name == "web-1"
    assert 2 * 86400 - 5 < cert.not_after - time.time() <= 2 * 86400
    r = _run(["ca", "show", "web-1.cert", "--ca", "ca.pub"], tmp_path)
    assert json.loads(r.output)["valid"] is True
    r = _run(["ca", "revoke", "web-1.cert"], tmp_path)
    assert r.exit_code == 0, r.output
    listed = json.loads(r.output)
    assert listed["sequence"] == 1 and listed["revoked"][0]["until"] == cert.not_after
    r = _run(["ca", "revoke", format_public_key(Identity.generate().public_key)], tmp_path)
    assert json.loads(r.output)["sequence"] == 2 and len(json.loads(r.output)["revoked"]) == 2
    r = _run(["ca", "show", "revoked.list", "--ca", "ca.pub"], tmp_path)
    assert json.loads(r.output)["valid"] is True
    r = _run(["ca", "show", "ca.key"], tmp_path)
    assert "secret" not in r.output and json.loads(r.output)["ca"] == out["ca"]


def test_ca_errors_say_what_to_do(tmp_path):
    r = _run(["ca", "sign", "zzz", "--name", "x"], tmp_path)
    assert r.exit_code == 2 and "zmqagents ca init" in r.output
    _run(["ca", "init"], tmp_path)
    r = _run(["ca", "sign", "not-a-key", "--name", "x"], tmp_path)
    assert r.exit_code == 2 and "not a public key" in r.output
    key = format_public_key(Identity.generate().public_key)
    r = _run(["ca", "sign", key, "--name", "x", "--not-after", "yesterday"], tmp_path)
    assert r.exit_code == 2 and "ISO 8601" in r.output
    r = _run(["ca", "sign", key, "--name", "x", "--group", "@ops"], tmp_path)
    assert r.exit_code == 2 and "group name" in r.output
    (tmp_path / "revoked.list").write_text("# zmqagents revocation list\nnot base64!\n")
    r = _run(["ca", "revoke", key], tmp_path)
    assert r.exit_code == 2 and "base64" in r.output


def test_parse_ca_takes_text_or_file(tmp_path):
    key = Identity.generate().public_key
    assert parse_ca(format_public_key(key)) == key
    (tmp_path / "ca.pub").write_text(f"# comment\n{format_public_key(key)}\n")
    assert parse_ca(str(tmp_path / "ca.pub")) == key
    with pytest.raises(ValueError):
        parse_ca(str(tmp_path / "missing.pub"))
    assert parse_public_key(format_public_key(key)) == key
