"""Generate protocols/routing-vectors.json, the test vectors of forwarded queries (protocols/routing.md 5.6).

Identities, ids and times are fixed and Ed25519 is deterministic, so the output is the same on every run.
Alice looks up Bob, whom she holds no connection to, through Carol, who listed him. The vectors pin each
frame of that exchange: Alice's signed ``kad.find_node`` for Bob, the ``kad.fwd`` she sends Carol, the one
Carol passes on to Bob, Bob's signed ``kad.nodes`` and the two ``kad.fwd`` frames that take it back; the
fail notice Carol sends Alice when she holds no connection to Bob; and ``kad.fwd`` frames a node must
refuse, with the counter it counts them in. Values use the tagged JSON form of tools/_vectors.py.

    python tools/make_routing_vectors.py           # rewrite the file
    python tools/make_routing_vectors.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import sys

from zmqagents.core.routing import FIND_NODE, NODES
from zmqagents.core.routing_fwd import FORWARD, MAX_INNER, MAX_ROUTE, forward_body
from zmqagents.envelope import Envelope
from zmqagents.identity import format_public_key

import _vectors
from _vectors import identity, tag
from make_envelope_vectors import ALICE, BOB, TS, fields

OUTPUT = _vectors.ROOT / "protocols" / "routing-vectors.json"

CAROL = identity("carol")
EP = {"alice": "tcp://192.0.2.1:7000", "bob": "tcp://192.0.2.2:7000", "carol": "tcp://192.0.2.3:7000"}
QUERY_ID = bytes(range(16))  # the RPC id: 16 random bytes in real use
ANSWER_ID = bytes(range(16, 32))
NOTICE_ID = bytes(range(32, 48))
TARGET = bytes(range(32))  # the id Alice looks up


def query() -> Envelope:
    body = {"target": TARGET, "from": [ALICE.public_key, EP["alice"]]}
    return Envelope(QUERY_ID, ALICE.node_id, FIND_NODE, body, BOB.node_id, TS).sign(ALICE)


def answer() -> Envelope:
    body = {"nodes": [[CAROL.public_key, EP["carol"]]], "from": [BOB.public_key, EP["bob"]]}
    return Envelope(ANSWER_ID, BOB.node_id, NODES, body, ALICE.node_id, TS, re=QUERY_ID).sign(BOB)


def fwd(mid: bytes, src, dst, to: list, back: list, inner: bytes | None, ts: int, re: bytes | None = None) -> Envelope:
    return Envelope(mid, src.node_id, FORWARD, forward_body([n.node_id for n in to], [n.node_id for n in back], inner),
                    dst.node_id, ts, re=re)


def step(name: str, description: str, env: Envelope) -> dict:
    return {"name": name, "description": description, "fields": fields(env), "body": tag(env.body),
            "frame": env.encode().hex()}


def exchange() -> list[dict]:
    q, a = query(), answer()
    qf, af = q.encode(), a.encode()
    return [
        step("query", "Alice's kad.find_node for Bob, signed by Alice (carried, never sent on its own)", q),
        step("origin", "Alice -> Carol: to [Bob], back []", fwd(QUERY_ID, ALICE, CAROL, [BOB], [], qf, TS)),
        step("passed", "Carol -> Bob: to [], back [Alice]; same id", fwd(QUERY_ID, CAROL, BOB, [], [ALICE], qf, TS)),
        step("answer", "Bob's kad.nodes for Alice, signed by Bob, with his own contact in 'from'", a),
        step("answer_origin", "Bob -> Carol: to [Alice], back []", fwd(ANSWER_ID, BOB, CAROL, [ALICE], [], af, TS)),
        step("answer_passed", "Carol -> Alice: to [], back [Bob]; same id",
             fwd(ANSWER_ID, CAROL, ALICE, [], [BOB], af, TS)),
        step("fail_notice", "Carol, holding no connection to Bob, -> Alice: to [], back [], fail; re = the query id",
             fwd(NOTICE_ID, CAROL, ALICE, [], [], None, TS, re=QUERY_ID)),
    ]


def refused() -> list[dict]:
    """kad.fwd frames Carol receives from Alice and must refuse (counted ``forward_bad``)."""
    q = query().encode()
    out = []

    def add(name: str, description: str, body) -> None:
        env = Envelope(QUERY_ID, ALICE.node_id, FORWARD, body, CAROL.node_id, TS)
        out.append({"name": name, "description": description, "reason": "forward_bad", "frame": env.encode().hex()})

    add("neither", "no 'e' and no 'fail'", {"to": [BOB.node_id], "back": []})
    add("short_id", "a 31-byte id in 'to'", {"to": [BOB.node_id[:31]], "back": [], "e": q})
    add("long_route", f"{MAX_ROUTE + 1} ids in 'to'", {"to": [BOB.node_id] * (MAX_ROUTE + 1), "back": [], "e": q})
    add("too_far", f"'back' already {MAX_ROUTE} long and 'to' not empty",
        {"to": [BOB.node_id], "back": [BOB.node_id] * MAX_ROUTE, "e": q})
    add("straight_back", "the next hop is the sender", {"to": [ALICE.node_id], "back": [], "e": q})
    add("loop", "the receiver is on the way back already", {"to": [BOB.node_id], "back": [CAROL.node_id], "e": q})
    add("oversize", f"'e' over {MAX_INNER} bytes", {"to": [BOB.node_id], "back": [], "e": bytes(MAX_INNER + 1)})
    add("not_for_us", "to [] but the carried envelope is for Bob", {"to": [], "back": [], "e": q})
    unsigned = Envelope(QUERY_ID, ALICE.node_id, FIND_NODE, {"target": TARGET}, CAROL.node_id, TS).encode()
    add("unsigned", "to [], the carried kad.find_node has no signature", {"to": [], "back": [], "e": unsigned})
    forged = Envelope(QUERY_ID, ALICE.node_id, FIND_NODE, {"target": TARGET}, CAROL.node_id, TS)
    forged.pk = BOB.public_key  # signed with Bob's key, claiming Alice's id
    forged.sig = BOB.sign(forged.signing_bytes())
    add("forged", "to [], signed by a key that does not own its src", {"to": [], "back": [], "e": forged.encode()})
    for_carol = Envelope(QUERY_ID, ALICE.node_id, FIND_NODE, {"target": TARGET}, CAROL.node_id, TS).sign(ALICE).encode()
    mismatch = Envelope(ANSWER_ID, ALICE.node_id, FORWARD, {"to": [], "back": [], "e": for_carol}, CAROL.node_id, TS)
    out.append({"name": "id_mismatch", "description": "to [], a valid query for Carol carried under another id",
                "reason": "forward_bad", "frame": mismatch.encode().hex()})
    other = Envelope(QUERY_ID, ALICE.node_id, "msg", "hi", CAROL.node_id, TS).sign(ALICE).encode()
    add("other_type", "to [], a signed envelope that is not kad.find_node or kad.nodes",
        {"to": [], "back": [], "e": other})
    return out


def build() -> dict:
    return {
        "spec": "protocols/routing.md, section 5.6",
        "generator": "tools/make_routing_vectors.py",
        "max_route": MAX_ROUTE,
        "max_inner": MAX_INNER,
        "identities": {
            name: {"seed": bytes(ident.signing_key).hex(), "public_key": format_public_key(ident.public_key),
                   "node_id": ident.node_id.hex(), "endpoint": EP[name]}
            for name, ident in (("alice", ALICE), ("bob", BOB), ("carol", CAROL))
        },
        "exchange": exchange(),
        "refused": refused(),
    }


def render() -> str:
    return _vectors.to_json(build())


if __name__ == "__main__":
    sys.exit(_vectors.main(sys.argv[1:], __file__, __doc__, OUTPUT, render))
