"""Generate protocols/envelope-vectors.json, the envelope test vectors.

Everything is fixed — identity seeds, message ids, timestamps — and Ed25519
signatures are deterministic (RFC 8032), so the output is the same on every
run. Expected bytes come from this implementation; the vectors pin them, so a
change that alters the wire format fails tests/core/test_envelope.py, and another
implementation can check itself against the file.

Values are written in a tagged form so that types and map order survive JSON:
``["nil", null]``, ``["bool", b]``, ``["int", n]``, ``["float", x]``,
``["str", s]``, ``["bin", hex]``, ``["array", [v, ...]]`` and
``["map", [[k, v], ...]]`` (entries in encoding order); see ``tag`` in tools/_vectors.py.

    python tools/make_envelope_vectors.py           # rewrite the file
    python tools/make_envelope_vectors.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import struct
import sys

import msgpack

from zmqagents import envelope as E
from zmqagents.identity import Identity, format_public_key

import _vectors
from _vectors import identity, tag

OUTPUT = _vectors.ROOT / "protocols" / "envelope-vectors.json"

ID_1 = bytes(range(16))
ID_2 = bytes(range(16, 32))
TS = 1_700_000_000_000  # 2023-11-14T22:13:20Z in milliseconds


ALICE = identity("alice")
BOB = identity("bob")


def fields(env: E.Envelope) -> dict:
    """The envelope's fields as JSON: fixed-size binary fields as hex, free-form ones tagged."""
    def hexed(b):
        return None if b is None else b.hex()

    return {
        "id": env.id.hex(),
        "src": env.src.hex(),
        "type": env.type,
        "dst": hexed(env.dst),
        "ts": env.ts,
        "ttl": env.ttl,
        "body": None if env.body is None else tag(env.body),
        "seq": env.seq,
        "ep": env.ep,
        "re": hexed(env.re),
        "ack": None if env.ack is None else tag(env.ack),
        "pk": hexed(env.pk),
        "sig": hexed(env.sig),
        "extra": [[k, tag(v)] for k, v in env.extra.items()],
    }


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def raw(m: dict) -> bytes:
    """A frame around any map, bypassing the encoder's checks (for negative vectors)."""
    return frame(msgpack.packb(m, use_bin_type=True))


def base(**over) -> dict:
    """A valid minimal map to start a negative vector from."""
    m = {"v": 1, "id": ID_1, "src": ALICE.node_id, "t": "ping"}
    m.update(over)
    return m


def with_raw_field(key: str, encoded_value: bytes) -> bytes:
    """A frame: the minimal map plus one field whose value is given as raw msgpack bytes."""
    head = msgpack.packb(base(), use_bin_type=True)  # a fixmap: its first byte holds the entry count
    return frame(bytes([head[0] + 1]) + head[1:] + msgpack.packb(key) + encoded_value)


def nested_arrays(depth: int) -> bytes:
    """A minimal envelope whose body is ``depth`` nested one-element arrays around 0."""
    return with_raw_field("b", b"\x91" * depth + b"\x00")


def valid_vector(name: str, description: str, env: E.Envelope, signer: Identity | None = None) -> dict:
    if signer is not None:
        env.sign(signer)
    vector = {"name": name, "description": description, "fields": fields(env), "encoded": env.encode().hex()}
    if signer is not None:
        vector["signed_by"] = next(n for n, i in IDENTITIES.items() if i is signer)
        vector["signing_bytes"] = env.signing_bytes().hex()
        vector["signature"] = env.sig.hex()
    return vector


IDENTITIES = {"alice": ALICE, "bob": BOB}


def valid_vectors() -> list[dict]:
    nested = {
        "zeta": 1,
        "b": {"y": [{"k2": True, "k1": None}], "x": -1},
        "aa": 0.5,
        b"\x00": "a bin key sorts after every fixstr key",
        "": [],
    }
    return [
        valid_vector("minimal", "Only the required fields.", E.Envelope(id=ID_1, src=ALICE.node_id, type="ping")),
        valid_vector(
            "all_fields",
            "Every field this version defines, signed; seq is the largest uint64.",
            E.Envelope(
                id=ID_1, src=ALICE.node_id, type="task.result", body={"output": "done", "tokens": 42},
                dst=BOB.node_id, ts=TS, ttl=30_000, seq=2**64 - 1, ep=3, re=ID_2, ack=[1, 2, 3],
            ),
            ALICE,
        ),
        valid_vector(
            "nested_body",
            "Nested maps whose keys are out of canonical order: the frame keeps insertion order, "
            "signing_bytes sorts every map by encoded key (shorter fixstr first, bin after str).",
            E.Envelope(id=ID_2, src=BOB.node_id, type="dht.store", body=nested, ts=TS),
            BOB,
        ),
        valid_vector(
            "signed",
            "A small signed broadcast; the signature covers pk and every field but sig.",
            E.Envelope(id=ID_2, src=ALICE.node_id, type="gossip", body=b"\x01\x02\x03", ts=TS, ttl=60_000),
            ALICE,
        ),
        valid_vector(
            "request_with_deadline",
            "A request (reliable delivery, protocols/delivery.md 8.2) sent 5 s before its requester's "
            "deadline: ttl counts from ts on the sender's clock, and a receiver measures it from when it "
            "reads the envelope. A retransmitted copy carries a later ts and a smaller ttl.",
            E.Envelope(id=ID_1, src=ALICE.node_id, type="req", body={"q": 1}, dst=BOB.node_id, ts=TS, ttl=5_000,
                       seq=1, ep=7),
        ),
        valid_vector(
            "expired_reply",
            "The error reply to request_with_deadline from a receiver that did not run it because its "
            "deadline passed while it waited (delivery.md 8.2): type err, re the request id, body type Expired.",
            E.Envelope(id=ID_2, src=BOB.node_id, type="err", dst=ALICE.node_id, ts=TS + 5_200, seq=1, ep=9, re=ID_1,
                       body={"error": "the request's deadline passed before a handler was free; it was not run",
                             "type": "Expired"}),
        ),
        valid_vector(
            "unknown_field",
            "A field this version does not define (as a newer minor version might send): kept, "
            "re-encoded after the known fields, and covered by the signature.",
            E.Envelope(id=ID_1, src=ALICE.node_id, type="ping", extra={"zz": {"hint": "from v1.1"}}),
            ALICE,
        ),
        valid_vector(
            "unknown_nil_field",
            "An unknown field whose value is nil is still a field: kept, re-encoded and covered by the "
            "signature (only the fields this version defines treat nil as unset, section 4).",
            E.Envelope(id=ID_1, src=ALICE.node_id, type="ping", extra={"zz": None}),
            ALICE,
        ),
    ]


def decode_only_vectors() -> list[dict]:
    """Frames other encoders may produce: they decode to ``fields``; re-encoding gives ``reencoded``."""
    cases = [
        ("reordered", "Fields in another order decode the same.",
         raw({"t": "ping", "src": ALICE.node_id, "id": ID_1, "v": 1})),
        ("nil_optional", "An optional field that is nil is not set.",
         raw(base(dst=None, ts=None, seq=None, b=None, ak=None))),
        ("zero_ts", "ts and ttl of 0 mean unset and are left out when re-encoded.", raw(base(ts=0, ttl=0))),
        ("wide_int", "An integer in a wider format than needed (uint 64 for 7) is accepted.",
         with_raw_field("seq", b"\xcf" + (7).to_bytes(8, "big"))),
        ("ep_max", "The largest epoch, 2^63 - 1, is accepted.", raw(base(seq=1, ep=2**63 - 1))),
        ("nil_unknown_field", "An unknown field whose value is nil is kept and re-encoded (it is signed too: "
         "see the valid vector unknown_nil_field).", raw(base() | {"zz": None})),
    ]
    out = []
    for name, description, data in cases:
        env = E.decode(data)
        out.append({"name": name, "description": description, "encoded": data.hex(),
                    "fields": fields(env), "reencoded": env.encode().hex()})
    return out


def invalid_vectors() -> list[dict]:
    minimal = E.Envelope(id=ID_1, src=ALICE.node_id, type="ping").encode()
    signed = E.Envelope(id=ID_2, src=ALICE.node_id, type="gossip", body=b"\x01\x02\x03", ts=TS).sign(ALICE)
    good = signed.encode()
    tampered = bytearray(good)
    tampered[good.index(b"\xc4\x03\x01\x02\x03") + 2] ^= 0x01  # flip a bit of the body
    impostor = E.Envelope(id=ID_2, src=ALICE.node_id, type="gossip", ts=TS)
    impostor.pk = BOB.public_key  # Bob signs but claims to be Alice
    impostor.sig = BOB.sign(impostor.signing_bytes())
    decode = [
        ("empty", "No bytes at all.", b"", "TruncatedEnvelope"),
        ("short_prefix", "Fewer than the 4 bytes of the length prefix.", b"\x00\x00\x01", "TruncatedEnvelope"),
        ("truncated_payload", "The prefix announces more bytes than follow.", minimal[:-1], "TruncatedEnvelope"),
        ("oversize_prefix", "A prefix of 4 GiB: refused from the prefix alone, nothing else read.",
         b"\xff\xff\xff\xff", "OversizeEnvelope"),
        ("oversize_by_one", "One byte over the 1 MiB default limit (no payload needed to refuse it).",
         struct.pack(">I", E.DEFAULT_MAX_SIZE + 1), "OversizeEnvelope"),
        ("trailing_bytes", "Bytes after the envelope inside one frame.", minimal + b"\x00", "MalformedEnvelope"),
        ("not_msgpack", "0xc1 is never used by msgpack.", frame(b"\xc1"), "MalformedEnvelope"),
        ("not_a_map", "The top-level value is an array.", frame(msgpack.packb([1, 2])), "MalformedEnvelope"),
        ("two_values", "Two msgpack values in one payload.",
         frame(msgpack.packb(base(), use_bin_type=True) + b"\xc0"), "MalformedEnvelope"),
        ("missing_version", "No 'v' field.", raw({k: v for k, v in base().items() if k != "v"}), "MalformedEnvelope"),
        ("version_as_string", "'v' must be an integer.", raw(base(v="1")), "MalformedEnvelope"),
        ("version_2", "An unknown major version is refused before any other field is looked at.",
         raw({"v": 2, "id": "no longer bytes"}), "UnsupportedVersion"),
        ("version_0", "Version 0 was never defined.", raw(base(v=0)), "UnsupportedVersion"),
        ("missing_id", "No 'id' field.", raw({k: v for k, v in base().items() if k != "id"}), "MalformedEnvelope"),
        ("id_15_bytes", "'id' must be exactly 16 bytes.", raw(base(id=ID_1[:15])), "MalformedEnvelope"),
        ("id_as_str", "'id' must be bin, not str.", raw(base(id="0123456789abcdef")), "MalformedEnvelope"),
        ("src_31_bytes", "'src' must be exactly 32 bytes.", raw(base(src=ALICE.node_id[:31])), "MalformedEnvelope"),
        ("type_empty", "'t' must not be empty.", raw(base(t="")), "MalformedEnvelope"),
        ("type_too_long", "'t' is at most 64 characters.", raw(base(t="x" * 65)), "MalformedEnvelope"),
        ("type_as_bin", "'t' must be str, not bin.", raw(base(t=b"ping")), "MalformedEnvelope"),
        ("dst_wrong_length", "'dst' must be 32 bytes.", raw(base(dst=b"\x00" * 16)), "MalformedEnvelope"),
        ("ts_negative", "'ts' must be a non-negative integer.", raw(base(ts=-1)), "MalformedEnvelope"),
        ("ts_float", "'ts' must be an integer, not a float.", raw(base(ts=1.5)), "MalformedEnvelope"),
        ("ttl_bool", "'ttl' must be an integer, not a boolean.", raw(base(ttl=True)), "MalformedEnvelope"),
        ("seq_as_str", "'seq' must be an integer.", raw(base(seq="7")), "MalformedEnvelope"),
        ("ep_2_63", "'ep' is a 63-bit number: 2^63 is refused.", raw(base(seq=1, ep=2**63)), "MalformedEnvelope"),
        ("ep_max_uint64", "'ep' of 2^64 - 1 is refused.", raw(base(seq=1, ep=2**64 - 1)), "MalformedEnvelope"),
        ("re_wrong_length", "'re' must be 16 bytes.", raw(base(re=b"\x00" * 17)), "MalformedEnvelope"),
        ("ack_as_map", "'ak' must be an array.", raw(base(ak={"1": 2})), "MalformedEnvelope"),
        ("pk_31_bytes", "'pk' must be 32 bytes.", raw(base(pk=b"\x00" * 31)), "MalformedEnvelope"),
        ("sig_63_bytes", "'sig' must be 64 bytes.", raw(base(sig=b"\x00" * 63)), "MalformedEnvelope"),
        ("bin_field_name", "Envelope field names must be str.", raw(base() | {b"x": 1}),
         "MalformedEnvelope"),
        ("int_map_key", "Map keys anywhere must be str or bin.", raw(base(b={1: "one"})), "MalformedEnvelope"),
        ("ext_type", "Extension types are refused (fixext 1, type 5, in the body).",
         frame(msgpack.packb(base(b=msgpack.ExtType(5, b"x")), use_bin_type=True)), "MalformedEnvelope"),
        ("timestamp_ext", "The predefined timestamp extension (-1) is refused too.",
         frame(msgpack.packb(base(b=msgpack.Timestamp(0, 0)), use_bin_type=True)), "MalformedEnvelope"),
        ("invalid_utf8", "A str must be valid UTF-8.",
         frame(msgpack.packb(base(), use_bin_type=True).replace(b"\xa4ping", b"\xa4p\xffng")), "MalformedEnvelope"),
        ("too_deep", f"The body nests {E.MAX_DEPTH} arrays: {E.MAX_DEPTH + 1} levels with the envelope map.",
         nested_arrays(E.MAX_DEPTH), "MalformedEnvelope"),
        ("msgpack_too_deep", "2000 nested arrays: beyond what msgpack itself will unpack.",
         nested_arrays(2000), "MalformedEnvelope"),
    ]
    nineteen = raw(base(b=[None] * 8))  # the map, 5 keys, 5 values, an array of 8 nils: 19 values
    limited = [  # decoded with the value limit given in the vector (a small one keeps the frames short)
        ("too_many_values", "19 values (the map, 5 field names, 5 field values, 8 array elements) "
         "against a limit of 18.", nineteen, "TooManyValues", 18),
        ("values_before_depth", f"A body of {E.MAX_DEPTH} nested arrays (too deep as well) is refused by the "
         "value count, which runs before anything is built.", nested_arrays(E.MAX_DEPTH), "TooManyValues", 16),
        ("values_after_size", "A prefix over the size limit is refused as oversize, whatever the payload "
         "would hold.", struct.pack(">I", E.DEFAULT_MAX_SIZE + 1) + bytes(8), "OversizeEnvelope", 1),
    ]
    verify = [
        ("bad_signature", "A valid frame whose body was changed after signing.", bytes(tampered), "BadSignature"),
        ("pk_not_src", "Signed correctly by Bob's key, but src is Alice's node id.", impostor.encode(), "BadSignature"),
        ("unsigned", "verify() on an envelope that carries no signature.", minimal, "BadSignature"),
    ]
    return [
        {"name": n, "description": d, "encoded": data.hex(), "stage": stage, "error": err}
        for stage, cases in (("decode", decode), ("verify", verify))
        for n, d, data, err in cases
    ] + [
        {"name": n, "description": d, "encoded": data.hex(), "stage": "decode", "error": err, "max_values": limit}
        for n, d, data, err, limit in limited
    ]


def build() -> dict:
    return {
        "description": "Test vectors for the zmqagents envelope; see protocols/envelope.md.",
        "generator": "tools/make_envelope_vectors.py",
        "version": E.VERSION,
        "max_size": E.DEFAULT_MAX_SIZE,
        "max_depth": E.MAX_DEPTH,
        "max_values": E.DEFAULT_MAX_VALUES,
        "signature_domain": E.SIGNATURE_DOMAIN.hex(),
        "identities": [
            {
                "name": name,
                "seed": bytes(ident.signing_key).hex(),
                "public_key": ident.public_key.hex(),
                "public_key_text": format_public_key(ident.public_key),
                "node_id": ident.node_id.hex(),
                "curve_public": ident.curve_public.hex(),
                "curve_secret": ident.curve_secret.hex(),
                "contact": str(ident.contact("tcp://192.0.2.1:5555")),
            }
            for name, ident in IDENTITIES.items()
        ],
        "valid": valid_vectors(),
        "decode_only": decode_only_vectors(),
        "invalid": invalid_vectors(),
    }


def render() -> str:
    return _vectors.to_json(build())


if __name__ == "__main__":
    sys.exit(_vectors.main(sys.argv[1:], __file__, __doc__, OUTPUT, render))
