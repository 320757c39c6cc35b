"""join = "fleet" between real Nodes (tcp loopback, CURVE on): admission by certificate, every refusal
reason over real sockets, revocation (a list given to one node reaches the others through the DHT and
cuts the revoked node off), certificate groups in capability allow lists, the sidecar's config and SIGHUP."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from zmqagents.agents.capability import Capability
from zmqagents.agents.runtime import Agents, DirectLookup
from zmqagents.certs import armor, issue, revocation_record_key, sign_revocations, REVOCATION_FILE_HEADER, \
    CERT_FILE_HEADER
from zmqagents.core import tasks as T
from zmqagents.core.membership import MembershipConfig
from zmqagents.identity import Identity, format_public_key
from zmqagents.node import Node, NodeConfig, PeerUnreachable, RequestTimeout
from zmqagents.transport.fleet import FleetConfig

pytestmark = pytest.mark.timeout(60)

CA = Identity.generate()


def _cert(identity: Identity, name: str, *, ca: Identity = CA, groups=(), nb=None, na=None) -> bytes:
    now = int(time.time())
    return issue(ca, identity.public_key, name, groups=groups, not_before=now - 60 if nb is None else nb,
                 not_after=now + 3600 if na is None else na, serial=os.urandom(16)).encoded


def _config(cert: bytes, **fleet) -> NodeConfig:
    return NodeConfig(
        membership=MembershipConfig(probe_interval=0.3, probe_timeout=0.1, suspicion_min=0.6, suspicion_max=1.5,
                                    gossip_interval=0.1),
        leave_timeout=0.1, join_timeout=5,
        fleet=FleetConfig(cas=(CA.public_key,), certificate=cert, revocation_poll=fleet.pop("poll", 30.0), **fleet))


def _member(name: str, groups=(), **kw) -> Node:
    identity = Identity.generate()
    return Node(identity, config=_config(_cert(identity, name, groups=groups)), **kw)


async def _fleet(n: int) -> list[Node]:
    seed = _member("n0")
    seed.on_request(lambda body, msg: {"from": "n0", "body": body})
    await seed.start()
    nodes = [seed]
    for i in range(1, n):
        node = _member(f"n{i}", bootstrap=[seed.contact])
        node.on_request(lambda body, msg, i=i: {"from": f"n{i}", "body": body})
        await node.start()
        nodes.append(node)
    return nodes


async def _until(check, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _drops(node: Node) -> dict:
    return dict(node.transport.drops)


def test_a_fleet_joins_and_an_outsider_gets_nothing_either_way(arun):
    async def main():
        nodes = await _fleet(4)
        outsider = Node(config=NodeConfig(leave_timeout=0.1))
        served = []
        outsider.on_request(lambda body, msg: served.append(body) or "leaked")
        await outsider.start()
        try:
            ids = {n.node_id for n in nodes}
            await _until(lambda: all(ids - {n.node_id} <= {e.node_id for e in n.routing.table} for n in nodes),
                         what="every fleet node in every routing table")
            assert await nodes[3].request(nodes[1].contact, "hi", timeout=5) == {"from": "n1", "body": "hi"}
            # the outsider, dialling in: its messages never reach a core, it gets no answer
            with pytest.raises(RequestTimeout):
                await outsider.request(nodes[0].contact, "let me in", timeout=1.5)
            assert _drops(nodes[0]).get("uncertified", 0) >= 1
            # a fleet node dialling the outsider sends it nothing but its certificate
            with pytest.raises(RequestTimeout):
                await nodes[2].request(outsider.contact, "secret", timeout=1.5)
            assert served == [] and nodes[2].transport.fleet.stats["held"] >= 1
            assert outsider.node_id not in {e.node_id for n in nodes for e in n.routing.table}
        finally:
            await asyncio.gather(outsider.close(), *(n.close() for n in nodes))

    arun(main(), timeout=50)


@pytest.mark.parametrize("case,reason", [
    ("expired", "cert_expired"), ("not_yet_valid", "cert_not_yet_valid"), ("wrong_ca", "cert_unknown_issuer"),
    ("other_key", "cert_wrong_key"), ("revoked", "cert_revoked"), ("tampered", "cert_bad_signature"),
])
def test_each_bad_certificate_is_refused_over_real_sockets(arun, case, reason):
    async def main():
        good = _member("good")
        served = []
        good.on_request(lambda body, msg: served.append(body) or "served")
        await good.start()
        identity = Identity.generate()
        peer = Node(identity, config=_config(_cert(identity, "peer")))  # a valid one to start with ...
        now = int(time.time())
        bad = {
            "expired": lambda: _cert(identity, "peer", nb=now - 7200, na=now - 1),
            "not_yet_valid": lambda: _cert(identity, "peer", nb=now + 600, na=now + 7200),
            "wrong_ca": lambda: _cert(identity, "peer", ca=Identity.generate()),
            "other_key": lambda: _cert(Identity.generate(), "peer"),
            "revoked": lambda: _cert(identity, "peer"),
            "tampered": lambda: _cert(identity, "peer", groups=["ops"]).replace(b"ops", b"adm"),
        }[case]()
        peer.transport.fleet.admission.replace_certificate(bad)  # ... and shows this one instead
        if case == "revoked":
            good.revoke(sign_revocations(CA, [(identity.public_key, 0)], sequence=1, issued_at=now).encoded)
        await peer.start()
        try:
            with pytest.raises(RequestTimeout):
                await peer.request(good.contact, "hi", timeout=1.5)
            drops = _drops(good)
            assert drops.get(reason, 0) >= 1, drops
            assert served == []
            assert not good.transport.fleet.admission.admitted(peer.node_id, time.time())
        finally:
            await asyncio.gather(peer.close(), good.close())

    arun(main(), timeout=30)


@pytest.mark.parametrize("squat", [False, True])
def test_a_revocation_given_to_one_node_reaches_the_others_and_cuts_the_node_off(arun, squat):
    """squat: the victim saw it coming and stored garbage under the key of the next revocation list (its
    CA and sequence 1 are predictable) before the list existed; the CA's list still takes the key over."""

    async def main():
        nodes = []  # every node looks in the DHT for a newer revocation list twice a second
        for i in range(5):
            identity = Identity.generate()
            node = Node(identity, config=_config(_cert(identity, f"n{i}"), poll=0.5),
                        bootstrap=[nodes[0].contact] if nodes else [])
            node.on_request(lambda body, msg, i=i: f"n{i}")
            await node.start()
            nodes.append(node)
        victim, others = nodes[4], nodes[:4]
        try:
            for n in others:
                assert await victim.request(n.contact, "before", timeout=5) == f"n{nodes.index(n)}"
            if squat:
                issuer = victim.transport.fleet.admission.certificate.issuer
                forged = sign_revocations(Identity.generate(), [], sequence=1, issued_at=int(time.time())).encoded
                result = await victim.dht.put(revocation_record_key(issuer, 1), forged, timeout=10)
                assert result.stored >= 1  # held by the key's replicas, first come
            crl = sign_revocations(CA, [(victim.identity.public_key, 0)], sequence=1, issued_at=int(time.time()))
            assert others[0].revoke(crl.encoded) == [victim.node_id]
            # the others find list 1 in the DHT (published by nodes[0]) and cut the victim off too
            await _until(lambda: all(not n.transport.fleet.admission.admitted(victim.node_id, time.time())
                                     and n.transport.fleet.admission.revocations.sequence(
                                         n.transport.fleet.admission.certificate.issuer) == 1 for n in others),
                         within=15, what="the revocation list on every other node")
            for n in others:
                with pytest.raises((RequestTimeout, PeerUnreachable)):  # not acked, or acked and never answered
                    await victim.request(n.contact, "after", timeout=1.0)
                assert _drops(n).get("uncertified", 0) + _drops(n).get("cert_revoked", 0) >= 1
            # the rest of the fleet still talks
            assert await others[3].request(others[1].contact, "still", timeout=5) == "n1"
            await _until(lambda: all(victim.node_id not in {e.node_id for e in n.routing.table} for n in others[:1]),
                         what="the victim out of the routing table of the node that revoked it")
        finally:
            await asyncio.gather(*(n.close() for n in nodes))

    arun(main(), timeout=55)


def test_certificate_groups_work_in_allow_lists_without_a_groups_file(arun):
    async def main():
        provider = _member("provider")
        await provider.start()
        ops = _member("ops-1", groups=["ops"], bootstrap=[provider.contact])
        dev = _member("dev-1", groups=["dev"], bootstrap=[provider.contact])
        await ops.start()
        await dev.start()
        agents = [Agents(provider), Agents(ops, lookup=DirectLookup(ops, [provider.contact])),
                  Agents(dev, lookup=DirectLookup(dev, [provider.contact]))]
        try:
            async def deploy(value, ctx):
                return "deployed"

            await agents[0].serve(Capability("deploy", allow=frozenset({"ops"})), deploy, publish=False)
            done = await agents[1].request("deploy", 1)
            assert done.state == T.COMPLETED and done.output == "deployed"
            done = await agents[2].request("deploy", 1)
            assert done.state == T.REJECTED and done.error["code"] == T.E_DENIED
            assert "@ops" in done.error["msg"]
        finally:
            for a in agents:
                await a.close()
            await asyncio.gather(provider.close(), ops.close(), dev.close())

    arun(main(), timeout=40)


def test_a_node_refuses_to_start_with_a_certificate_peers_would_refuse():
    identity = Identity.generate()
    now = int(time.time())
    with pytest.raises(ValueError, match="expired"):
        Node(identity, config=_config(_cert(identity, "x", nb=now - 7200, na=now - 10)))
    with pytest.raises(ValueError, match="wrong_key"):
        Node(identity, config=_config(_cert(Identity.generate(), "x")))


# -- the sidecar: [node] join = "fleet", and SIGHUP re-reads the revocation list ---------------------------


def _files(tmp_path, name: str, groups=()) -> tuple[Identity, dict]:
    identity = Identity.generate()
    key = tmp_path / f"{name}.key"
    identity.save(key)
    cert = tmp_path / f"{name}.cert"
    cert.write_text(armor(_cert(identity, name, groups=groups), CERT_FILE_HEADER))
    (tmp_path / "ca.pub").write_text(format_public_key(CA.public_key) + "\n")
    return identity, {"key": str(key), "cert": str(cert)}


def test_sidecar_config_checks_the_fleet_keys(tmp_path):
    from zmqagents.sidecar.config import ConfigError, load

    _, f = _files(tmp_path, "a")
    conf = tmp_path / "node.toml"
    conf.write_text(f'[node]\njoin = "fleet"\nca = "ca.pub"\n')
    with pytest.raises(ConfigError, match="node.cert"):
        load(str(conf))
    conf.write_text(f'[node]\nca = "ca.pub"\ncert = "{f["cert"]}"\n')
    with pytest.raises(ConfigError, match='join = \\\\?"fleet\\\\?"|join = "fleet"'):
        load(str(conf))
    conf.write_text(f'[node]\njoin = "fleet"\nca = "{format_public_key(CA.public_key)}"\ncert = "a.cert"\n')
    cfg = load(str(conf))
    assert cfg.node.ca == format_public_key(CA.public_key) and cfg.node.cert == str(tmp_path / "a.cert")
    conf.write_text('[node]\njoin = "fleet"\nca = "ca.pub"\ncert = "a.cert"\n')
    assert load(str(conf)).node.ca == str(tmp_path / "ca.pub")
    from zmqagents.sidecar.daemon import read_fleet

    assert read_fleet(load(str(conf))).cas == (CA.public_key,)
    conf.write_text('[node]\njoin = "fleet"\nca = "ca.pub"\ncert = "missing.cert"\n')
    with pytest.raises(ConfigError, match="node.cert .*does not exist"):
        read_fleet(load(str(conf)))


def test_sidecar_sighup_rereads_the_revocation_list(arun, tmp_path):
    from zmqagents.sidecar.config import load
    from zmqagents.sidecar.daemon import Sidecar

    async def main():
        ident, f = _files(tmp_path, "side")
        crl_path = tmp_path / "revoked.list"
        crl_path.write_text(armor(sign_revocations(CA, [], sequence=1, issued_at=0).encoded, REVOCATION_FILE_HEADER))
        conf = tmp_path / "node.toml"
        conf.write_text(f'[node]\nkey = "{f["key"]}"\nlisten = "tcp://127.0.0.1:0"\njoin = "fleet"\n'
                        f'ca = "ca.pub"\ncert = "{f["cert"]}"\nrevocations = "revoked.list"\n'
                        f'[local_api]\nenabled = false\n[mdns]\nenabled = false\n')
        sidecar = Sidecar(load(str(conf)), loader=lambda: load(str(conf)))
        sidecar.node.on_request(lambda body, msg: "ok")
        await sidecar.start()
        peer = _member("peer")
        await peer.start()
        try:
            assert await peer.request(sidecar.node.contact, 1, timeout=5) == "ok"
            crl_path.write_text(armor(sign_revocations(CA, [(peer.identity.public_key, 0)], sequence=2,
                                                       issued_at=0).encoded, REVOCATION_FILE_HEADER))
            result = await sidecar.reload()
            assert "node.revocations" not in result["restart"]
            assert not sidecar.node.transport.fleet.admission.admitted(peer.node_id, time.time())
            with pytest.raises(RequestTimeout):
                await peer.request(sidecar.node.contact, 2, timeout=1.0)
        finally:
            await peer.close()
            await sidecar.close()

    arun(main(), timeout=30)


def test_a_fleet_member_behind_a_relay_is_reached_and_an_outsider_is_not(arun):
    from zmqagents.core.relay import RelayConfig

    fast = RelayConfig(keepalive=0.2, dead_after=0.6, expire=1.0)

    def fleet_node(name: str, **cfg) -> Node:
        identity = Identity.generate()
        config = _config(_cert(identity, name))
        for k, v in cfg.items():
            setattr(config, k, v)
        config.relay = fast
        return Node(identity, config=config)

    async def main():
        relay = fleet_node("relay", serve_relay=True)
        await relay.start()
        edge = fleet_node("edge", outbound_only=True, relays=[relay.contact])
        edge.on_request(lambda body, msg: {"echo": body})
        await edge.start()
        outside = fleet_node("outside")
        outsider = Node(config=NodeConfig(leave_timeout=0.1))
        await outside.start()
        await outsider.start()
        try:
            await _until(lambda: edge.node_id in relay.relay_server, what="the edge node registered")
            assert edge.contact.relayed
            assert await outside.request(edge.contact, "hi", timeout=5) == {"echo": "hi"}
            assert edge.transport.fleet.admission.admitted(outside.node_id, time.time())
            # an outsider's envelopes relayed to the edge node reach no core there (the relay refuses it first)
            with pytest.raises((RequestTimeout, PeerUnreachable)):
                await outsider.request(edge.contact, "let me in", timeout=1.5)
            assert _drops(relay).get("uncertified", 0) >= 1
            # a sender the relay still admits but the edge node has revoked: its relayed envelopes stop there
            edge.revoke(sign_revocations(CA, [(outside.identity.public_key, 0)], sequence=1, issued_at=0).encoded)
            before = _drops(edge).get("uncertified", 0)
            with pytest.raises((RequestTimeout, PeerUnreachable)):
                await outside.request(edge.contact, "after", timeout=1.5)
            assert _drops(edge).get("uncertified", 0) > before
        finally:
            await asyncio.gather(outsider.close(), outside.close(), edge.close(), relay.close())

    arun(main(), timeout=40)


# -- the command line: real processes --------------------------------------------------------------------


def test_cli_nodes_join_a_fleet_with_ca_and_cert_and_an_outsider_is_refused(tmp_path):
    import subprocess
    import sys

    from helpers.cli import server, zmqa

    for step in (["ca", "init"], ["keygen", "a.key"], ["keygen", "b.key"], ["keygen", "c.key"]):
        assert subprocess.run([sys.executable, "-m", "zmqagents.cli", *step], cwd=tmp_path,
                              capture_output=True).returncode == 0
    for name in ("a", "b"):
        out = zmqa("ca", "sign", str(tmp_path / f"{name}.key"), "--name", name, "--ca-key", str(tmp_path / "ca.key"),
                   "-o", str(tmp_path / f"{name}.cert"))
        assert out.returncode == 0, out.stderr
    fleet = ["--ca", str(tmp_path / "ca.pub")]
    usage = zmqa("request", "--to", str(Identity.generate().contact("tcp://127.0.0.1:1")), *fleet, "1")
    assert usage.returncode == 2 and "--cert" in usage.stderr
    with server(tmp_path, "node", "--echo", "--key", str(tmp_path / "a.key"), *fleet,
                "--cert", str(tmp_path / "a.cert")) as (contact, _):
        ok = zmqa("request", "--to", contact, "--key", str(tmp_path / "b.key"), *fleet,
                  "--cert", str(tmp_path / "b.cert"), "--timeout", "10", '"hello fleet"')
        assert ok.returncode == 0, ok.stderr
        assert "hello fleet" in ok.stdout
        refused = zmqa("request", "--to", contact, "--key", str(tmp_path / "c.key"), "--timeout", "2", '"let me in"')
        assert refused.returncode != 0 and "hello fleet" not in refused.stdout


def test_cli_agent_allows_a_certificate_group_without_a_groups_file(tmp_path):
    import json

    from helpers.cli import server, zmqa

    assert zmqa("ca", "init", "--ca-key", str(tmp_path / "ca.key")).returncode == 0
    fleet = ["--ca", str(tmp_path / "ca.pub")]
    certs = {}
    for name, groups in (("agent", []), ("ops", ["--group", "ops"]), ("dev", ["--group", "dev"])):
        assert zmqa("keygen", str(tmp_path / f"{name}.key")).returncode == 0
        signed = zmqa("ca", "sign", str(tmp_path / f"{name}.key"), "--name", name, *groups,
                      "--ca-key", str(tmp_path / "ca.key"), "-o", str(tmp_path / f"{name}.cert"))
        assert signed.returncode == 0, signed.stderr
        certs[name] = ["--key", str(tmp_path / f"{name}.key"), *fleet, "--cert", str(tmp_path / f"{name}.cert")]
    assert zmqa("agent", "--capability", "deploy", "--exec", "cat", "--allow", "@ops").returncode == 2  # no fleet, no file
    with server(tmp_path, "agent", "--capability", "deploy", "--exec", "cat", "--stdin", "text", "--allow", "@ops",
                *certs["agent"]) as (contact, _):
        res = zmqa("task", "deploy", "--bootstrap", contact, *certs["ops"], input='"go"\n', timeout=30)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.splitlines()[0])["output"] == "go"
        res = zmqa("task", "deploy", "--bootstrap", contact, *certs["dev"], input='"go"\n', timeout=30)
        assert res.returncode == 5, res.stderr
        out = json.loads(res.stdout.splitlines()[0])
        assert out["error"]["code"] == "denied" and "@ops" in out["error"]["msg"]


def test_only_admitted_members_may_subscribe_to_a_fleet_nodes_publications(arun):
    async def main():
        publisher = _member("pub")
        member = _member("sub", bootstrap=[])
        outsider = Node(config=NodeConfig(leave_timeout=0.1))
        for n in (publisher, member, outsider):
            await n.start()
        try:
            # the member is admitted once it has talked to the publisher; the outsider never is
            publisher.on_request(lambda body, msg: "ok")
            assert await member.request(publisher.contact, "hi", timeout=5) == "ok"
            for n in (member, outsider):
                n.transport.add_topic(b"t")
                n.transport.subscribe_to(publisher.contact, publisher.transport.pub_endpoint)
            assert await publisher.wait_for_subscriber(b"t", timeout=5)
            await _until(lambda: publisher.transport.zap.stats["zap_refused"] >= 1, what="the outsider refused")
            for i in range(20):
                await publisher.publish(b"t", i, one_hop=True)
                await asyncio.sleep(0.02)
            await _until(lambda: member.transport.stats["publications_in"] >= 1, what="a publication")
            assert outsider.transport.stats["publications_in"] == 0
        finally:
            await asyncio.gather(*(n.close() for n in (publisher, member, outsider)))

    arun(main(), timeout=30)


def test_a_revoked_subscriber_is_cut_off_at_once_and_the_others_keep_their_publications(arun):
    """ZAP decided when the revoked peer's SUB connected; the revocation closes that connection (every
    connection to the XPUB, which cannot close one), the others reconnect and the revoked one is refused:
    nothing published after the revocation reaches it."""

    async def main():
        publisher = _member("pub")
        victim, keeper = _member("victim", bootstrap=[]), _member("keeper", bootstrap=[])
        nodes = (publisher, victim, keeper)
        got: dict[bytes, list] = {victim.node_id: [], keeper.node_id: []}

        async def collect(node: Node) -> None:
            async for msg in node.subscribe(b"t", one_hop=True):
                got[node.node_id].append(msg.body)

        for n in nodes:
            await n.start()
        tasks = []
        try:
            publisher.on_request(lambda body, msg: "ok")
            for n in (victim, keeper):
                assert await n.request(publisher.contact, "hi", timeout=5) == "ok"
                tasks.append(asyncio.create_task(collect(n)))
                await asyncio.sleep(0)
                n.transport.subscribe_to(publisher.contact, publisher.transport.pub_endpoint)
            for i in range(200):
                await publisher.publish(b"t", i, one_hop=True)
                await asyncio.sleep(0.02)
                if all(got.values()):
                    break
            assert all(got.values()), "both subscribers should receive before the revocation"
            refused = publisher.transport.zap.stats["zap_refused"]
            assert publisher.revoke(sign_revocations(CA, [(victim.identity.public_key, 0)], sequence=1,
                                                     issued_at=int(time.time())).encoded) == [victim.node_id]
            for i in range(100):  # 2 s: the keeper reconnects (reconnect_ivl 0.1 s) and hears again
                await publisher.publish(b"t", 1000 + i, one_hop=True)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            assert [b for b in got[victim.node_id] if b >= 1000] == []
            assert [b for b in got[keeper.node_id] if b >= 1000]
            assert publisher.transport.zap.stats["zap_refused"] > refused  # the victim's reconnect, refused
            assert publisher.transport.stats["subscribers_cut"] == 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(n.close() for n in nodes))

    arun(main(), timeout=40)


def test_metrics_of_a_fleet_node_show_every_refusal_from_the_start_and_the_admitted_peers(arun):
    from zmqagents.sidecar.admin import NodeCollector
    from zmqagents.transport.fleet import FLEET_REFUSALS

    def scrape(node: Node) -> dict:
        out = {}
        for fam in NodeCollector(node, lambda: [], {}).collect():
            for name, labels, value in fam.samples:
                out[(name, tuple(sorted(labels.items())))] = value
        return out

    async def main():
        a, b = _member("a"), _member("b")
        outsider = Node(config=NodeConfig(leave_timeout=0.1))
        for n in (a, b, outsider):
            await n.start()
        try:
            before = scrape(a)
            for reason in FLEET_REFUSALS:
                assert before[("zmqagents_dropped_messages_total", (("layer", "transport"), ("reason", reason)))] == 0
            assert before[("zmqagents_fleet_admitted_peers", ())] == 0
            a.on_request(lambda body, msg: "ok")
            assert await b.request(a.contact, 1, timeout=5) == "ok"
            with pytest.raises(RequestTimeout):
                await outsider.request(a.contact, 1, timeout=1)
            after = scrape(a)
            assert after[("zmqagents_fleet_admitted_peers", ())] == 1
            assert after[("zmqagents_dropped_messages_total", (("layer", "transport"), ("reason", "uncertified")))] >= 1
            assert not any(k[0] == "zmqagents_fleet_admitted_peers" for k in scrape(outsider))
        finally:
            await asyncio.gather(*(n.close() for n in (a, b, outsider)))

    arun(main(), timeout=30)


# -- the gate alone (no sockets): bounds and refusals a hostile peer can trigger --------------------------


class _Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def _gate(**bounds):
    from zmqagents.transport.fleet import FleetGate

    me = Identity.generate()
    drops, sent, requeued = [], [], []
    clock = _Clock()
    gate = FleetGate(me, FleetConfig(cas=(CA.public_key,), certificate=_cert(me, "me"), **bounds),
                     drop=lambda reason, peer, detail: drops.append(reason), send_now=sent.append,
                     requeue=lambda dst, frames: requeued.append((dst, frames)), clock=clock)
    return gate, drops, sent, requeued, clock


def _cert_env(src: Identity, dst: bytes, cert: bytes, **body):
    from zmqagents.envelope import Envelope

    return Envelope(id=os.urandom(16), src=src.node_id, dst=dst, type="fleet.cert",
                    body={"cert": cert, "want": True, "admitted": False, **body})


def test_gate_checks_at_most_one_certificate_a_second_from_a_peer_it_has_not_admitted():
    gate, drops, sent, _, clock = _gate()
    peer = Identity.generate()
    bad = _cert(peer, "p", ca=Identity.generate())
    assert gate.admit(_cert_env(peer, gate.identity.node_id, bad)) is False
    assert gate.admit(_cert_env(peer, gate.identity.node_id, bad)) is False
    assert drops == ["cert_unknown_issuer", "cert_rate"] and sent == []  # a refused certificate is not answered
    clock.now += 1.1
    assert gate.admit(_cert_env(peer, gate.identity.node_id, _cert(peer, "p"))) is False  # consumed, not passed on
    assert gate.admission.admitted(peer.node_id, clock.now)
    assert len(sent) == 1 and sent[0].body["admitted"] is True and sent[0].body["want"] is True
    for body in ({"cert": "text", "want": True, "admitted": False}, {"cert": b"x", "want": 1, "admitted": False},
                 [1, 2], {"cert": b"x", "want": True}):
        from zmqagents.envelope import Envelope

        gate.admit(Envelope(id=os.urandom(16), src=peer.node_id, type="fleet.cert", body=body))
        assert drops[-1] == "cert_malformed"


def test_gate_holds_frames_within_bounds_and_releases_them_in_order_once_the_peer_is_ready():
    gate, drops, sent, requeued, clock = _gate(max_pending_frames=3, max_pending_bytes=1000)
    peer = Identity.generate()
    frames = [bytes([i]) * 100 for i in range(5)]
    assert [gate.clear(peer.node_id, f, peer.node_id) for f in frames] == [False] * 5
    assert drops == ["cert_pending_full", "cert_pending_full"] and gate.pending_bytes == 300
    assert len(sent) == 1 and sent[0].body["want"] is True  # one certificate ahead of them, not one per frame
    # its certificate alone does not release them (it has not said it admitted us) ...
    gate.admit(_cert_env(peer, gate.identity.node_id, _cert(peer, "p")))
    assert requeued == [] and gate.pending_bytes == 300
    # ... its word that it did does
    gate.admit(_cert_env(peer, gate.identity.node_id, _cert(peer, "p"), want=False, admitted=True))
    assert requeued == [(peer.node_id, frames[:3])] and gate.pending_bytes == 0
    assert gate.clear(peer.node_id, b"later", peer.node_id) is True
    # a peer that restarted says it does not know us: we hold again until it does
    gate.admit(_cert_env(peer, gate.identity.node_id, _cert(peer, "p"), want=False, admitted=False))
    assert gate.clear(peer.node_id, b"after restart", peer.node_id) is False


def test_gate_answers_want_every_time_but_never_answers_an_answer():
    gate, drops, sent, _, clock = _gate()
    peer = Identity.generate()
    cert = _cert(peer, "p")
    gate.admit(_cert_env(peer, gate.identity.node_id, cert, want=True, admitted=True))
    gate.admit(_cert_env(peer, gate.identity.node_id, cert, want=True, admitted=True))
    assert [e.body["want"] for e in sent] == [False, False]  # it confirmed us: nothing more to ask
    gate.admit(_cert_env(peer, gate.identity.node_id, cert, want=False, admitted=True))
    assert len(sent) == 2 and drops == []
