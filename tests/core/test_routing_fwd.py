"""Forwarded queries (``kad.fwd``, protocols/routing.md 5.6) between RoutingCores on a fake network.

The cores have real identities (the messages are signed and verified) and know which nodes they hold a
connection to (tests/helpers/fakenet.py's LinkedCoreMesh): a lookup for an id asks a node it holds no
connection to through the node that listed it, and no forwarder ever opens a connection.
"""

from __future__ import annotations

import random

import pytest

from zmqagents.core.routing import FIND_NODE, NODES, LookupDone, RoutingCore
from zmqagents.core.routing_fwd import FORWARD, MAX_INNER, MAX_ROUTE, forward_body
from zmqagents.envelope import Envelope, decode
from zmqagents.identity import Contact, Identity

from helpers.fakenet import LinkedCoreMesh


class Mesh(LinkedCoreMesh):
    def done(self) -> list[tuple[bytes, LookupDone]]:
        return [(nid, ev) for nid, _, ev in self.events if isinstance(ev, LookupDone)]


def identities(n: int, seed: int) -> list[Identity]:
    rng = random.Random(seed)
    return [Identity.from_seed(rng.randbytes(32)) for _ in range(n)]


def cores(ids: list[Identity], sign: bool = True) -> list[RoutingCore]:
    return [RoutingCore(i.contact(f"sim://{j}"), random.Random(j), identity=i if sign else None)
            for j, i in enumerate(ids)]


def joined_mesh(n: int, seed: int, sign: bool = True) -> tuple[list[RoutingCore], Mesh]:
    cs = cores(identities(n, seed), sign)
    mesh = Mesh(cs, seed=seed, wire=True)
    for i in range(1, n):
        mesh.now = 0.002 * i
        mesh.call(cs[i], lambda c: c.join([cs[0].contact], mesh.now))
    mesh.run(mesh.now + 10.0)
    return cs, mesh


def finds(mesh: Mesh, sources: list[RoutingCore], targets: list[RoutingCore]) -> tuple[int, int]:
    """Every source looks up every target with find=True: (lookups, targets found by an ok lookup)."""
    mesh.events.clear()
    want = {}
    for s in sources:
        for t in targets:
            if t is not s:
                want[(s.node_id, mesh.call(s, lambda c: c.lookup(t.node_id, mesh.now, find=True)))] = t.node_id
    mesh.run(mesh.now + 20.0)
    found = sum(1 for nid, ev in mesh.done() if (nid, ev.lookup_id) in want and ev.ok
                and any(c.node_id == want[(nid, ev.lookup_id)] for c in ev.contacts))
    return len(want), found


def total(cs: list[RoutingCore], key: str) -> int:
    return sum(c.stats[key] for c in cs)


def test_finds_through_forwarders_open_no_connection_and_change_no_table():
    """After 60 nodes joined (joins never forward), 8 of them find every other node: every lookup finds
    its target, without one new connection, and no table changes; the same finds without signing
    identities (no forwarding) open hundreds."""
    runs = {}
    for sign in (True, False):
        cs, mesh = joined_mesh(60, seed=7, sign=sign)
        assert total(cs, "forwarded_sent") == 0  # joins and refreshes never forward
        tables = {c.node_id: sorted(e.node_id for e in c.table) for c in cs}
        opened = mesh.opened
        n, found = finds(mesh, cs[1:9], cs)
        assert found == n
        runs[sign] = mesh.opened - opened
        if sign:
            assert total(cs, "forwarded_sent") > 0
            assert total(cs, "forwarded_answers") == total(cs, "forwarded_sent")
            assert total(cs, "forward_bad") == total(cs, "forward_unlinked") == 0
            assert {c.node_id: sorted(e.node_id for e in c.table) for c in cs} == tables
    assert runs[True] == 0 and runs[False] > 100


def test_a_forwarder_without_a_connection_sends_a_fail_notice_and_the_origin_asks_directly():
    a, b, c = cores(identities(3, seed=3))
    links = {a.node_id: {b.node_id}, b.node_id: {a.node_id}, c.node_id: set()}
    for x in (a, b, c):
        x.linked = links[x.node_id].__contains__
    a.observe(b.contact, 0.0)
    a.lookup(c.node_id, 1.0, find=True)
    (q,) = a.take_outgoing()
    assert q.type == FIND_NODE and q.dst == b.node_id  # linked: asked directly
    a.receive(Envelope(b"r" * 16, b.node_id, NODES, {"nodes": [[c.contact.public_key, "sim://c"]]}, a.node_id,
                       re=q.id), 1.1)
    (f,) = a.take_outgoing()
    assert f.type == FORWARD and f.dst == b.node_id and f.body["to"] == [c.node_id] and f.body["back"] == []
    inner = decode(f.body["e"])
    inner.verify()
    assert inner.type == FIND_NODE and inner.src == a.node_id and inner.dst == c.node_id and inner.id == f.id
    b.receive(decode(f.encode()), 1.2)  # b holds no connection to c
    (notice,) = b.take_outgoing()
    assert notice.type == FORWARD and notice.dst == a.node_id and notice.re == f.id
    assert notice.body == {"to": [], "back": [], "fail": True}
    assert b.stats["forward_unlinked"] == 1
    a.receive(decode(notice.encode()), 1.3)
    (direct,) = a.take_outgoing()
    assert direct.type == FIND_NODE and direct.dst == c.node_id and direct.id == f.id
    assert a.contact_for(c.node_id) == Contact(c.contact.public_key, "sim://c")
    assert a.stats["forward_fallbacks"] == 1


def test_routes_grow_one_hop_per_round_up_to_max_route():
    """A node listed by a node that was itself asked through a route is asked through that route plus it."""
    ids = identities(MAX_ROUTE + 3, seed=5)
    cs = cores(ids)
    a, chain, target = cs[0], cs[1:MAX_ROUTE + 2], cs[-1]
    a.linked = {chain[0].node_id}.__contains__
    a.observe(chain[0].contact, 0.0)
    a.lookup(target.node_id, 1.0, find=True)
    (q,) = a.take_outgoing()
    routes = []
    for i, node in enumerate(chain):
        nxt = chain[i + 1] if i + 1 < len(chain) else target
        answer = Envelope(bytes([i]) * 16, node.node_id, NODES, {"nodes": [[nxt.contact.public_key, f"sim://{i}"]]},
                          a.node_id, re=decode(q.body["e"]).id if q.type == FORWARD else q.id)
        if q.type == FORWARD:
            answer.body["from"] = [node.contact.public_key, node.contact.endpoint]
            answer = Envelope(answer.id, node.node_id, FORWARD, forward_body([], [], answer.sign(ids[1 + i]).encode()),
                              a.node_id)
        a.receive(decode(answer.encode()), 1.0 + 0.1 * (i + 1))
        (q,) = a.take_outgoing()
        routes.append(None if q.type == FIND_NODE else [q.dst] + q.body["to"])
    # chain[1] through chain[0]; each next one a hop further; the one past MAX_ROUTE hops is asked directly
    assert routes[:MAX_ROUTE] == [[n.node_id for n in chain[:i + 1]] + [chain[i + 1].node_id if i + 1 < len(chain)
                                                                        else target.node_id]
                                  for i in range(MAX_ROUTE)]
    assert routes[MAX_ROUTE] is None and q.dst == target.node_id


def test_a_forwarded_answer_gives_the_nodes_own_endpoint_and_forged_ones_are_refused():
    """The lister gave a wrong endpoint for c: the lookup's result holds the one c signed. Answers that are
    unsigned, signed by another key, or altered on the way are refused; the query then stays unanswered."""
    a, b, c, m = cores(identities(4, seed=9))
    ida, idb, idc, idm = identities(4, seed=9)
    links = {a.node_id: {b.node_id}, b.node_id: {a.node_id, c.node_id}, c.node_id: {b.node_id}, m.node_id: set()}
    for x in (a, b, c, m):
        x.linked = links[x.node_id].__contains__

    def forwarded_query() -> Envelope:
        a.observe(b.contact, 0.0)
        lid = a.lookup(c.node_id, 1.0, find=True)
        (q,) = a.take_outgoing()
        a.receive(Envelope(b"r" * 16, b.node_id, NODES, {"nodes": [[c.contact.public_key, "tcp://wrong:1"]]},
                           a.node_id, re=q.id), 1.1)
        (f,) = a.take_outgoing()
        return lid, f

    lid, f = forwarded_query()
    b.receive(decode(f.encode()), 1.2)
    (passed,) = b.take_outgoing()
    assert passed.dst == c.node_id and passed.body["to"] == [] and passed.body["back"] == [a.node_id]
    assert passed.id == f.id and passed.body["e"] == f.body["e"]
    c.receive(decode(passed.encode()), 1.3)
    (ans,) = c.take_outgoing()
    assert ans.type == FORWARD and ans.dst == b.node_id and ans.body["to"] == [a.node_id]
    assert len(c.table) == 0  # the asker did not enter c's table
    inner = decode(ans.body["e"])
    inner.verify()
    assert inner.type == NODES and inner.src == c.node_id and inner.re == f.id
    assert inner.body["from"] == [c.contact.public_key, c.contact.endpoint]

    # Forgeries, each delivered to a as if b passed it on: none is taken.
    def deliver(e_bytes: bytes) -> None:
        a.receive(decode(Envelope(inner.id, b.node_id, FORWARD, forward_body([], [c.node_id], e_bytes),
                                  a.node_id).encode()), 1.4)

    unsigned = Envelope(inner.id, c.node_id, NODES, inner.body, a.node_id, re=inner.re)
    deliver(unsigned.encode())
    by_m = Envelope(inner.id, c.node_id, NODES, inner.body, a.node_id, re=inner.re)
    by_m.pk, by_m.sig = idm.public_key, None
    by_m.sig = idm.sign(by_m.signing_bytes())
    deliver(by_m.encode())
    altered = bytearray(ans.body["e"])
    altered[altered.index(b"sim://")] ^= 0x20
    deliver(bytes(altered))
    assert a.stats["forward_bad"] == 3 and a.stats["forwarded_answers"] == 0

    b.receive(decode(ans.encode()), 1.5)
    (back,) = b.take_outgoing()
    assert back.dst == a.node_id and back.body["to"] == [] and back.body["back"] == [c.node_id]
    a.receive(decode(back.encode()), 1.6)
    a.take_outgoing()
    (done,) = [e for e in a.take_events() if isinstance(e, LookupDone) and e.lookup_id == lid]
    assert done.ok and c.contact in done.contacts  # c's own endpoint, not "tcp://wrong:1"
    assert a.table.get(c.node_id) is None  # answered through b: not in the table
    assert a.stats["forwarded_answers"] == 1


def test_joins_and_refreshes_never_forward():
    cs, _ = joined_mesh(30, seed=11)
    assert total(cs, "forwarded_sent") == 0 and total(cs, "forwards_passed") == 0


@pytest.mark.parametrize("body,re", [
    ("not a map", None),
    ({"to": [], "back": []}, None),  # neither e nor fail
    ({"to": [], "back": [], "e": b"x", "fail": True}, b"q" * 16),  # both
    ({"to": [], "back": [], "fail": True}, None),  # a fail notice names what failed
    ({"to": [b"x" * 31], "back": [], "e": b"x"}, None),
    ({"to": [b"x" * 32] * (MAX_ROUTE + 1), "back": [], "e": b"x"}, None),
    ({"to": [b"x" * 32], "back": [b"y" * 32] * MAX_ROUTE, "e": b"x"}, None),  # one hop too many
    ({"to": [], "back": "no", "e": b"x"}, None),
    ({"to": [], "back": [], "e": b"x" * (MAX_INNER + 1)}, None),
    ({"to": [], "back": [], "e": b"not an envelope"}, None),
    ({"to": [], "back": [], "fail": 1}, b"q" * 16),
])
def test_malformed_forwards_are_counted_and_never_raise(body, re):
    a, b = cores(identities(2, seed=13))
    a.linked = {b.node_id}.__contains__
    a.receive(Envelope(b"i" * 16, b.node_id, FORWARD, body, a.node_id, re=re), 1.0)
    assert a.stats["forward_bad"] == 1
    assert a.take_outgoing() == []


def test_loops_and_other_envelopes_are_refused_and_nothing_is_dialled():
    a, b, c = cores(identities(3, seed=15))
    ida, idb, idc = identities(3, seed=15)
    a.linked = {b.node_id, c.node_id}.__contains__
    q = Envelope(b"i" * 16, c.node_id, FIND_NODE, {"target": bytes(32)}, b.node_id).sign(idc).encode()
    cases = [
        forward_body([b.node_id], [], q),  # straight back to its sender
        forward_body([c.node_id], [a.node_id], q),  # we are on the way back already
        forward_body([c.node_id, a.node_id], [], q),  # and ahead again
    ]
    for body in cases:
        a.receive(Envelope(b"i" * 16, b.node_id, FORWARD, body, a.node_id), 1.0)
    other = Envelope(b"j" * 16, c.node_id, "msg", {"x": 1}, a.node_id).sign(idc).encode()
    a.receive(Envelope(b"i" * 16, b.node_id, FORWARD, forward_body([], [], other), a.node_id), 1.0)
    for_b = Envelope(b"k" * 16, c.node_id, FIND_NODE, {"target": bytes(32)}, b.node_id).sign(idc).encode()
    a.receive(Envelope(b"i" * 16, b.node_id, FORWARD, forward_body([], [], for_b), a.node_id), 1.0)
    assert a.stats["forward_bad"] == len(cases) + 2 and a.take_outgoing() == []
    # A query for a node we hold no connection to: a fail notice to the sender, never a new connection.
    a.linked = {b.node_id}.__contains__
    a.receive(Envelope(b"i" * 16, b.node_id, FORWARD, forward_body([c.node_id], [], q), a.node_id), 1.0)
    (notice,) = a.take_outgoing()
    assert notice.dst == b.node_id and notice.body.get("fail") is True
    # ... and a fail notice that cannot be passed on is dropped, not answered with another.
    a.receive(Envelope(b"n" * 16, b.node_id, FORWARD, forward_body([c.node_id], [], None), a.node_id,
                       re=b"q" * 16), 1.0)
    assert a.take_outgoing() == [] and a.stats["forward_unlinked"] == 2


def test_a_replayed_forwarded_query_is_answered_once():
    a, b = cores(identities(2, seed=17))
    ida, idb = identities(2, seed=17)
    a.linked = {b.node_id}.__contains__
    q = Envelope(b"q" * 16, b.node_id, FIND_NODE, {"target": bytes(32)}, a.node_id).sign(idb).encode()
    fwd = Envelope(b"q" * 16, b.node_id, FORWARD, forward_body([], [], q), a.node_id)
    for _ in range(3):
        a.receive(decode(fwd.encode()), 1.0)
    assert len(a.take_outgoing()) == 1 and a.stats["forward_replayed"] == 2
    # The same query under a fresh kad.fwd id is refused: the carried id must be the kad.fwd's.
    a.receive(Envelope(b"r" * 16, b.node_id, FORWARD, forward_body([], [], q), a.node_id), 1.0)
    assert a.take_outgoing() == [] and a.stats["forward_bad"] == 1
