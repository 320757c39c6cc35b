"""Generate protocols/relay-vectors.json, the test vectors for relaying (protocols/node.md, "Relaying").

Identities, ids and the sealing nonce are fixed and Ed25519 is deterministic, so the output is the same on
every run. The vectors pin: a relayed contact string and what it parses to; the key of a node's contact
record; a plain and a sealed forward, each as the signed inner frame, the ``relay.fwd`` frame the sender
sends its relay and the ``relay.dlv`` frame the relay sends on (the body plus its window token ``w``);
the ``relay.ask`` and ``relay.ack`` frames of the window; and ``relay.dlv`` frames a destination must
refuse, with the reason it counts. Values use the tagged JSON form of
tools/_vectors.py.

    python tools/make_relay_vectors.py           # rewrite the file
    python tools/make_relay_vectors.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import sys

import nacl.public

from zmqagents.envelope import Envelope
from zmqagents.identity import Contact, curve_public_of, format_public_key
from zmqagents.node import contact_key

import _vectors
from _vectors import identity, tag
from make_envelope_vectors import ALICE, BOB, TS, fields  # alice sends, bob is the outbound-only destination

OUTPUT = _vectors.ROOT / "protocols" / "relay-vectors.json"

RELAY1, RELAY2 = identity("relay1"), identity("relay2")
NONCE = bytes(range(100, 124))  # 24 bytes; real senders use a fresh random nonce per box
TOKEN = bytes(range(200, 208))  # a relay.dlv's window token; real relays draw a random one per delivery


def _id(n: int) -> bytes:
    return bytes([n]) * 16


def inner(body="hello through a relay", **over) -> Envelope:
    kw = dict(id=_id(1), src=ALICE.node_id, dst=BOB.node_id, type="req", body=body, ts=TS, seq=0, ep=1)
    kw.update(over)
    return Envelope(**kw)


def forward(body: dict, via: bytes) -> tuple[Envelope, Envelope]:
    fwd = Envelope(id=_id(2), src=ALICE.node_id, dst=via, type="relay.fwd", body=body)
    dlv = Envelope(id=_id(3), src=via, dst=body["to"], type="relay.dlv", body={**body, "w": TOKEN})
    return fwd, dlv


def window_vectors() -> dict:
    """relay1 asks bob to acknowledge up to TOKEN; bob acknowledges it (the same body either way)."""
    ask = Envelope(id=_id(4), src=RELAY1.node_id, dst=BOB.node_id, type="relay.ask", body={"w": TOKEN})
    ack = Envelope(id=_id(5), src=BOB.node_id, dst=RELAY1.node_id, type="relay.ack", body={"w": TOKEN})
    return {
        "token": TOKEN.hex(),
        "ask_fields": fields(ask), "ask_frame": ask.encode().hex(),
        "ack_fields": fields(ack), "ack_frame": ack.encode().hex(),
    }


def forward_vector(name: str, description: str, body: dict, inner_env: Envelope) -> dict:
    fwd, dlv = forward(body, RELAY1.node_id)
    return {
        "name": name,
        "description": description,
        "inner_fields": fields(inner_env),
        "inner_frame": inner_env.encode().hex(),
        "fwd_body": tag(body),
        "fwd_frame": fwd.encode().hex(),
        "dlv_frame": dlv.encode().hex(),
    }


def sealed_body(frame: bytes, sender=ALICE, receiver=BOB) -> dict:
    box = nacl.public.Box(nacl.public.PrivateKey(sender.curve_secret),
                          nacl.public.PublicKey(curve_public_of(receiver.public_key)))
    return {"to": receiver.node_id, "from": sender.public_key, "box": bytes(box.encrypt(frame, NONCE))}


def refused_vectors() -> list[dict]:
    out = []

    def add(name: str, description: str, reason: str, body: dict, via: bytes = RELAY1.node_id) -> None:
        _, dlv = forward(body, via)
        out.append({"name": name, "description": description, "reason": reason, "dlv_frame": dlv.encode().hex()})

    good = inner().sign(ALICE).encode()
    flipped = bytearray(good)
    flipped[good.index(b"hello")] ^= 0x20  # "hello" -> "Hello": still decodes, the signature fails
    add("altered", "one bit of the signed inner envelope changed by the relay", "relay_bad_signature",
        {"to": BOB.node_id, "e": bytes(flipped)})
    forged = inner()
    forged.pk = RELAY1.public_key  # the relay signs, claiming alice's id
    forged.sig = RELAY1.sign(forged.signing_bytes())
    add("forged_sender", "inner envelope claims alice's id but is signed with the relay's key", "relay_forged",
        {"to": BOB.node_id, "e": forged.encode()})
    add("unsigned", "inner envelope without pk/sig", "relay_forged", {"to": BOB.node_id, "e": inner().encode()})
    add("wrong_dst", "a valid envelope for someone else, delivered to bob", "relay_wrong_dst",
        {"to": BOB.node_id, "e": inner(dst=RELAY2.node_id).sign(ALICE).encode()})
    add("nested", "a relayed relay message", "relay_nested",
        {"to": BOB.node_id, "e": inner(type="relay.fwd").sign(ALICE).encode()})
    add("not_for_us", "body addressed to another node", "relay_malformed", {"to": RELAY2.node_id, "e": good})
    box = sealed_body(good)
    box["box"] = box["box"][:-1] + bytes([box["box"][-1] ^ 1])
    add("sealed_altered", "sealed body with one bit changed", "relay_undecryptable", box)
    add("sealed_wrong_sender", "sealed by alice but naming relay2 as sender", "relay_undecryptable",
        {**sealed_body(good), "from": RELAY2.public_key})
    return out


def build() -> dict:
    relays = [RELAY1.contact("tcp://192.0.2.1:7000"), RELAY2.contact("tcp://198.51.100.7:7000")]
    bob_contact = Contact.via(BOB.public_key, relays)
    signed = inner().sign(ALICE)
    frame = signed.encode()
    return {
        "spec": "protocols/node.md, section Relaying",
        "generator": "tools/make_relay_vectors.py",
        "identities": {
            name: {"seed": bytes(ident.signing_key).hex(), "public_key": format_public_key(ident.public_key),
                   "node_id": ident.node_id.hex(), "curve_public": ident.curve_public.hex()}
            for name, ident in (("alice", ALICE), ("bob", BOB), ("relay1", RELAY1), ("relay2", RELAY2))
        },
        "contact": {
            "text": str(bob_contact),
            "node_id": BOB.node_id.hex(),
            "relays": [str(r) for r in relays],
            "contact_record_key": contact_key(BOB.node_id).hex(),
        },
        "forward": [
            forward_vector("plain", "alice -> relay1 -> bob, signed by alice", {"to": BOB.node_id, "e": frame},
                           signed),
            forward_vector("sealed", "the same envelope sealed to bob (NaCl Box, nonce first)", sealed_body(frame),
                           signed),
        ],
        "window": window_vectors(),
        "refused": refused_vectors(),
    }


def render() -> str:
    return _vectors.to_json(build())


if __name__ == "__main__":
    sys.exit(_vectors.main(sys.argv[1:], __file__, __doc__, OUTPUT, render))
