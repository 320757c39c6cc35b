"""Generate protocols/cert-vectors.json, the test vectors for fleet certificates (protocols/certificates.md).

The CA and node identities, serials and times are fixed and Ed25519 is deterministic, so the output is the
same on every run. The vectors pin: the CA's fingerprint; a certificate as the signed fields, the signed
bytes, the signature and the encoding; checks of certificates at a given time for a given peer, each with
the outcome ("ok" or the reason it is refused); a revocation list and its DHT record key; and a
``fleet.cert`` envelope. Values use the tagged JSON form of tools/_vectors.py.

    python tools/make_cert_vectors.py           # rewrite the file
    python tools/make_cert_vectors.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import sys

import msgpack

from zmqagents.certs import (
    CERT_DOMAIN,
    REVOCATION_DOMAIN,
    fingerprint,
    issue,
    revocation_record_key,
    sign_revocations,
)
from zmqagents.envelope import Envelope
from zmqagents.identity import format_public_key

import _vectors
from _vectors import identity, tag

OUTPUT = _vectors.ROOT / "protocols" / "cert-vectors.json"

CA = identity("fleet ca")
OTHER_CA = identity("another ca")
ALICE, BOB, CAROL = identity("alice"), identity("bob"), identity("carol")
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z, the time every check below is made at
NB, NA = NOW - 86400, NOW + 30 * 86400


def _serial(n: int) -> bytes:
    return bytes([n]) * 16


def cert_vector(name: str, description: str, cert) -> dict:
    return {
        "name": name,
        "description": description,
        "fields": tag(msgpack.unpackb(cert.signed, raw=False)),
        "signed": cert.signed.hex(),
        "signature": cert.signature.hex(),
        "encoded": cert.encoded.hex(),
        "fingerprint": cert.fingerprint.hex(),
    }


def render() -> str:
    alice = issue(CA, ALICE.public_key, "alice", groups=["ops", "edge"], not_before=NB, not_after=NA,
                  serial=_serial(1))
    bob = issue(CA, BOB.public_key, "bob", groups=[], not_before=NB, not_after=NA, serial=_serial(2))
    expired = issue(CA, CAROL.public_key, "carol", not_before=NB - 90 * 86400, not_after=NOW - 1, serial=_serial(3))
    early = issue(CA, CAROL.public_key, "carol", not_before=NOW + 3600, not_after=NA, serial=_serial(4))
    foreign = issue(OTHER_CA, CAROL.public_key, "carol", not_before=NB, not_after=NA, serial=_serial(5))
    edge = issue(CA, CAROL.public_key, "carol", not_before=NB, not_after=NOW, serial=_serial(6))
    tampered = bytearray(alice.encoded)
    at = tampered.index(b"alice")
    tampered[at:at + 5] = b"mally"  # same length: the wrapper still decodes, the signature does not verify
    unknown_field = msgpack.packb({"c": alice.signed, "s": alice.signature, "x": 1}, use_bin_type=True)
    crl = sign_revocations(CA, [(BOB.public_key, 0), (CAROL.public_key, NA)], sequence=7, issued_at=NOW - 60)

    def check(name: str, description: str, cert: bytes, peer, outcome: str) -> dict:
        return {"name": name, "description": description, "certificate": cert.hex(),
                "peer_public_key": format_public_key(peer.public_key), "peer_node_id": peer.node_id.hex(),
                "revocations": None, "outcome": outcome}

    checks = [
        check("valid", "alice's certificate, presented by alice", alice.encoded, ALICE, "ok"),
        check("wrong_key", "alice's certificate, presented by bob", alice.encoded, BOB, "wrong_key"),
        check("expired", "not-after is one second before now", expired.encoded, CAROL, "expired"),
        check("expires_now", "not-after equals now: the window is not-before <= now < not-after", edge.encoded,
              CAROL, "expired"),
        check("not_yet_valid", "not-before is an hour after now", early.encoded, CAROL, "not_yet_valid"),
        check("wrong_ca", "signed by a CA this node does not trust", foreign.encoded, CAROL, "unknown_issuer"),
        check("tampered", "the name changed after signing", bytes(tampered), ALICE, "bad_signature"),
        check("unknown_field", "a wrapper with a field v1 does not define", unknown_field, ALICE, "malformed"),
        check("truncated", "the last byte cut off", alice.encoded[:-1], ALICE, "malformed"),
    ]
    revoked = check("revoked", "bob's certificate while the revocation list below lists bob's key", bob.encoded,
                    BOB, "revoked")
    revoked["revocations"] = crl.encoded.hex()
    checks.append(revoked)

    cert_env = Envelope(id=bytes(range(16)), src=ALICE.node_id, dst=BOB.node_id, type="fleet.cert",
                        body={"cert": alice.encoded, "want": True, "admitted": False, "rev": 7})
    vectors = {
        "description": __doc__.split("\n\n")[0],
        "now": NOW,
        "cert_domain": CERT_DOMAIN.hex(),
        "revocation_domain": REVOCATION_DOMAIN.hex(),
        "ca": {"seed": bytes(CA.signing_key).hex(), "public_key": format_public_key(CA.public_key),
               "fingerprint": fingerprint(CA.public_key).hex()},
        "other_ca": {"seed": bytes(OTHER_CA.signing_key).hex(), "public_key": format_public_key(OTHER_CA.public_key)},
        "identities": {name: {"seed": bytes(i.signing_key).hex(), "public_key": format_public_key(i.public_key),
                              "node_id": i.node_id.hex()}
                       for name, i in (("alice", ALICE), ("bob", BOB), ("carol", CAROL))},
        "certificates": [cert_vector("alice", "two groups, sorted", alice),
                         cert_vector("bob", "no groups", bob)],
        "checks": checks,
        "revocations": {
            "fields": tag(msgpack.unpackb(crl.signed, raw=False)),
            "signed": crl.signed.hex(),
            "signature": crl.signature.hex(),
            "encoded": crl.encoded.hex(),
            "record_key": revocation_record_key(crl.issuer, crl.sequence).hex(),
        },
        "fleet_cert_message": {"description": "alice's first message on a new connection to bob",
                               "frame": cert_env.encode().hex(), "body": tag(cert_env.body)},
    }
    return _vectors.to_json(vectors)


if __name__ == "__main__":
    sys.exit(_vectors.main(sys.argv[1:], __file__, __doc__, OUTPUT, render))
