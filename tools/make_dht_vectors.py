"""Generate protocols/dht-vectors.json, the test vectors of DHT records and provider entries.

Everything is fixed -- identity seeds, keys, times -- and Ed25519 signatures are deterministic
(RFC 8032), so the output is the same on every run. The expected bytes come from this implementation
(``zmqagents/core/dht_records.py``; the store's rules: ``dht_store.py``); the vectors pin them, so a
change to the signed encoding fails tests/core/test_dht_vectors.py, and another implementation can check
itself against the file.

Values are in the tagged form of protocols/envelope-vectors.json (``["str", s]``, ``["bin", hex]``,
``["map", [[k, v], ...]]``...; see tools/_vectors.py).

Sections:

* ``keys``: names and the DHT keys they hash to.
* ``records`` / ``providers``: valid items: their fields, the exact bytes the signature covers, the
  signature, and the wire map as msgpack (fields in the order this implementation writes them).
* ``refused``: wire maps a holder must refuse at time ``now``, with the reason (the counter name).
* ``sequences``: items offered one after another to one empty holder at ``now``; ``results`` gives each
  one's outcome: "stored", "updated", "duplicate" or the refusal reason.

    python tools/make_dht_vectors.py           # rewrite the file
    python tools/make_dht_vectors.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import sys

import msgpack

from zmqagents.core import dht as D

import _vectors
from _vectors import identity, tag  # the envelope vectors' identities and tagged JSON form

OUTPUT = _vectors.ROOT / "protocols" / "dht-vectors.json"

NOW = 1_700_000_000  # the holder's clock (Unix seconds) for refused and sequences
EXP = NOW + 3600
ENDPOINT = "tcp://192.0.2.1:5555"


ALICE = identity("alice")
BOB = identity("bob")
IDENTITIES = {"alice": ALICE, "bob": BOB}
K = D.key_for("site/7/config")


def signer_name(pk: bytes) -> str:
    return next(n for n, i in IDENTITIES.items() if i.public_key == pk)


def packed(wire: dict) -> str:
    return msgpack.packb(wire, use_bin_type=True).hex()


def record_vector(name: str, description: str, rec: D.Record) -> dict:
    return {
        "name": name, "description": description, "signed_by": signer_name(rec.public_key),
        "key": rec.key.hex(), "value": tag(rec.value), "seq": rec.seq, "expires": rec.expires,
        "signing_bytes": D.record_signing_bytes(rec.key, rec.value, rec.public_key, rec.seq, rec.expires).hex(),
        "signature": rec.signature.hex(), "size": rec.size, "wire": packed(rec.to_wire()),
    }


def provider_vector(name: str, description: str, p: D.ProviderRecord) -> dict:
    c = [p.contact.public_key, p.contact.endpoint]
    return {
        "name": name, "description": description, "signed_by": signer_name(p.contact.public_key),
        "key": p.key.hex(), "endpoint": p.contact.endpoint, "expires": p.expires,
        "meta": None if p.meta is None else tag(p.meta),
        "signing_bytes": D.provider_signing_bytes(p.key, c, p.expires, p.meta).hex(),
        "signature": p.signature.hex(), "size": p.size, "wire": packed(p.to_wire()),
    }


def records() -> list[dict]:
    nested = {"zeta": 1, "b": {"y": [True, None], "x": -1}, "aa": 0.5, b"\x00": "bin keys sort after str keys"}
    return [
        record_vector("text", "A str value.", D.make_record(ALICE, K, "hello", 1, EXP)),
        record_vector("map", "A map whose keys are out of canonical order: signing_bytes sorts them by their "
                             "encoding (shorter fixstr first, bin after str); the wire map keeps the value as given.",
                      D.make_record(ALICE, K, nested, 1_700_000_000_123, EXP)),
        record_vector("bin_max_seq", "A bin value and the largest sequence number.",
                      D.make_record(BOB, D.key_for("blob"), bytes(range(8)), 2**64 - 1, EXP)),
    ]


def providers() -> list[dict]:
    cap = D.key_for("summarize")
    return [
        provider_vector("plain", "A provider entry without metadata (no 'm' in the signed map).",
                        D.make_provider(ALICE, cap, ENDPOINT, EXP)),
        provider_vector("meta", "With metadata, which the signature covers.",
                        D.make_provider(BOB, cap, ENDPOINT, EXP, {"model": "small", "cost": 2})),
    ]


def refused() -> list[dict]:
    good = D.make_record(ALICE, K, "hello", 1, EXP).to_wire()
    tampered = dict(good, v="hellO")
    impostor = D.make_record(BOB, K, "hello", 1, EXP).to_wire()
    impostor["pk"] = ALICE.public_key  # Bob signed, Alice is claimed
    prov = D.make_provider(BOB, D.key_for("summarize"), ENDPOINT, EXP).to_wire()
    prov["c"] = [ALICE.public_key, ENDPOINT]
    cases = [
        ("record", "oversize", "The signed encoding plus signature exceeds max_record_bytes (8192).",
         D.make_record(ALICE, K, "x" * 8200, 1, EXP).to_wire()),
        ("record", "expired", "Expires at or before the holder's now.", D.make_record(ALICE, K, "v", 1, NOW).to_wire()),
        ("record", "future", "Expires later than now + max_ttl (86400) + max_clock_skew (60).",
         D.make_record(ALICE, K, "v", 1, NOW + 86400 + 61).to_wire()),
        ("record", "bad_signature", "The value was changed after signing.", tampered),
        ("record", "bad_signature", "Signed by Bob's key, claiming Alice's.", impostor),
        ("record", "malformed", "k of 31 bytes.", dict(good, k=K[:31])),
        ("record", "malformed", "seq negative.", dict(good, seq=-1)),
        ("record", "malformed", "exp as a string.", dict(good, exp="soon")),
        ("record", "malformed", "No value.", {k: v for k, v in good.items() if k != "v"}),
        ("record", "malformed", "sig of 63 bytes.", dict(good, sig=good["sig"][:63])),
        ("provider", "bad_signature", "Signed by Bob's key, naming Alice's contact.", prov),
        ("provider", "malformed", "The contact is not [key, endpoint].", dict(prov, c=[ALICE.public_key])),
        ("provider", "expired", "Expired.", D.make_provider(ALICE, D.key_for("summarize"), ENDPOINT, NOW).to_wire()),
    ]
    return [{"kind": kind, "reason": reason, "description": d, "wire": packed(w)} for kind, reason, d, w in cases]


def sequences() -> list[dict]:
    v1 = D.make_record(ALICE, K, "v1", 5, EXP)
    return [
        {"name": "versions", "description": "Newer seq wins; equal seq with another value is a conflict; "
                                            "an older seq is stale; the same value with a later expiry refreshes.",
         "items": [packed(r.to_wire()) for r in (
             v1, D.make_record(ALICE, K, "v1", 5, EXP), D.make_record(ALICE, K, "other", 5, EXP),
             D.make_record(ALICE, K, "old", 4, EXP), D.make_record(ALICE, K, "v2", 6, EXP),
             D.make_record(ALICE, K, "v2", 6, EXP + 60))],
         "kind": "record", "results": ["stored", "duplicate", "conflict", "stale", "updated", "updated"]},
        {"name": "owner", "description": "While Alice's record lives, the key is hers: Bob's is refused, "
                                         "whatever its seq.",
         "items": [packed(v1.to_wire()), packed(D.make_record(BOB, K, "mine", 99, EXP).to_wire())],
         "kind": "record", "results": ["stored", "owner"]},
    ]


def build() -> dict:
    cfg = D.DhtConfig()
    return {
        "description": "Test vectors for zmqagents DHT records and provider entries; see protocols/routing.md, "
                       "section 10.",
        "generator": "tools/make_dht_vectors.py",
        "record_domain": D.RECORD_DOMAIN.hex(),
        "provider_domain": D.PROVIDER_DOMAIN.hex(),
        "limits": {"max_record_bytes": cfg.max_record_bytes, "max_provider_bytes": cfg.max_provider_bytes,
                   "max_ttl": cfg.max_ttl, "max_clock_skew": cfg.max_clock_skew},
        "now": NOW,
        "identities": [{"name": n, "seed": bytes(i.signing_key).hex(), "public_key": i.public_key.hex(),
                        "node_id": i.node_id.hex()} for n, i in IDENTITIES.items()],
        "keys": [{"name": n, "key": D.key_for(n).hex()} for n in ("site/7/config", "summarize", "", "ünïcode")],
        "records": records(),
        "providers": providers(),
        "refused": refused(),
        "sequences": sequences(),
    }


def render() -> str:
    return _vectors.to_json(build())


if __name__ == "__main__":
    sys.exit(_vectors.main(sys.argv[1:], __file__, __doc__, OUTPUT, render))
