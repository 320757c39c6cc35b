"""Generate protocols/broadcast-vectors.json, the test vectors for broadcast (protocols/broadcast.md).

Identities and envelope ids are fixed and Ed25519 is deterministic, so the output is the same on every
run. The vectors pin: message ids; the signing bytes and signature of messages (mesh-wide, a topic, a
map body); the ``bcast.msg``, ``bcast.ihave``, ``bcast.graft`` and ``bcast.prune`` frames; and messages
a receiver must refuse, with the counter it counts them under. Values use the tagged JSON form of
tools/_vectors.py.

    python tools/make_broadcast_vectors.py           # rewrite the file
    python tools/make_broadcast_vectors.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import sys

from zmqagents.core.broadcast_wire import GRAFT, IHAVE, MSG, PRUNE, WANT, make_message, message_id, signing_bytes
from zmqagents.envelope import Envelope
from zmqagents.identity import format_public_key

import _vectors
from _vectors import identity, tag

OUTPUT = _vectors.ROOT / "protocols" / "broadcast-vectors.json"

ALICE, BOB, CAROL = identity("alice"), identity("bob"), identity("carol")
EPOCH = 1_764_000_000_000  # an origin's start time in ms


def _id(n: int) -> bytes:
    return bytes([n]) * 16


def message_vector(name: str, description: str, epoch: int, seq: int, topic: str, data) -> dict:
    m = make_message(ALICE, epoch, seq, topic, data)
    env = Envelope(id=_id(seq), src=BOB.node_id, dst=CAROL.node_id, type=MSG, body={"m": m.to_wire(), "h": 2})
    return {
        "name": name,
        "description": description,
        "origin": "alice", "epoch": epoch, "seq": seq, "topic": topic, "data": tag(data),
        "id": m.id.hex(),
        "signing_bytes": signing_bytes(ALICE.public_key, epoch, seq, topic, data).hex(),
        "sig": m.sig.hex(),
        "message": tag(m.to_wire()),
        "msg_frame": env.encode().hex(),
        "hops": 2,
    }


def refused_vectors() -> list[dict]:
    good = make_message(ALICE, EPOCH, 1, "", "hello").to_wire()

    def case(name: str, reason: str, body) -> dict:
        env = Envelope(id=_id(9), src=BOB.node_id, dst=CAROL.node_id, type=MSG, body=body)
        return {"name": name, "reason": reason, "msg_frame": env.encode().hex()}
    forged = dict(good, d="forged")
    wrong_key = dict(good, o=BOB.public_key)
    return [
        case("forged_data", "bad_signature", {"m": forged, "h": 1}),
        case("signed_by_another_key", "bad_signature", {"m": wrong_key, "h": 1}),
        case("short_origin", "malformed", {"m": dict(good, o=b"\x01" * 31), "h": 1}),
        case("negative_seq", "malformed", {"m": dict(good, s=-1), "h": 1}),
        case("long_topic", "malformed", {"m": dict(good, t="x" * 129), "h": 1}),
        case("no_data", "malformed", {"m": {k: v for k, v in good.items() if k != "d"}, "h": 1}),
        case("zero_hops", "malformed", {"m": good, "h": 0}),
        case("not_a_map", "malformed", [good, 1]),
    ]


def build() -> dict:
    m1 = make_message(ALICE, EPOCH, 1, "", "hello")
    m2 = make_message(ALICE, EPOCH, 2, "weather", "rain")
    ihave = Envelope(id=_id(20), src=BOB.node_id, dst=CAROL.node_id, type=IHAVE, body={"i": [[m1.id, 3], [m2.id, 1]]})
    graft = Envelope(id=_id(21), src=CAROL.node_id, dst=BOB.node_id, type=GRAFT, body={"i": [m1.id]})
    repair = Envelope(id=_id(25), src=CAROL.node_id, dst=BOB.node_id, type=GRAFT, body={"i": [m1.id, m2.id], "r": True})
    prune = Envelope(id=_id(22), src=CAROL.node_id, dst=BOB.node_id, type=PRUNE)
    want = Envelope(id=_id(23), src=CAROL.node_id, dst=BOB.node_id, type=WANT, body={"t": ["config", "weather"]})
    want_all = Envelope(id=_id(24), src=CAROL.node_id, dst=BOB.node_id, type=WANT, body={"t": None})
    return {
        "spec": "protocols/broadcast.md",
        "generator": "tools/make_broadcast_vectors.py",
        "identities": {
            name: {"seed": bytes(ident.signing_key).hex(), "public_key": format_public_key(ident.public_key),
                   "public_key_hex": ident.public_key.hex(), "node_id": ident.node_id.hex()}
            for name, ident in (("alice", ALICE), ("bob", BOB), ("carol", CAROL))
        },
        "ids": [
            {"origin": ALICE.public_key.hex(), "epoch": e, "seq": s, "topic": t, "id": message_id(ALICE.public_key, e, s, t).hex()}
            for e, s, t in ((0, 0, ""), (EPOCH, 1, ""), (EPOCH, 2, "weather"), (EPOCH, 2**64 - 1, "ünïcödé"))
        ],
        "messages": [
            message_vector("mesh_wide", "the mesh-wide topic, a str body", EPOCH, 1, "", "hello"),
            message_vector("topic", "topic weather, a str body", EPOCH, 2, "weather", "rain"),
            message_vector("map_body", "a map body: the signature covers its canonical form", EPOCH, 3, "config",
                           {"z": 1, "a": [True, None, 1.5], "b": b"\x00\xff"}),
        ],
        "control": [
            {"name": "ihave", "body": tag(ihave.body), "frame": ihave.encode().hex()},
            {"name": "graft", "body": tag(graft.body), "frame": graft.encode().hex()},
            {"name": "graft", "description": "repair only (r): send these, the link stays lazy",
             "body": tag(repair.body), "frame": repair.encode().hex()},
            {"name": "prune", "body": tag(None), "frame": prune.encode().hex()},
            {"name": "want", "body": tag(want.body), "frame": want.encode().hex()},
            {"name": "want", "description": "every topic (nil)", "body": tag(want_all.body),
             "frame": want_all.encode().hex()},
        ],
        "refused": refused_vectors(),
    }


def render() -> str:
    return _vectors.to_json(build())


if __name__ == "__main__":
    sys.exit(_vectors.main(sys.argv[1:], __file__, __doc__, OUTPUT, render))
