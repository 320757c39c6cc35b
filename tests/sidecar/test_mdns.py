"""LAN discovery over real multicast.

Each multicast test creates its own network namespace (a unique name with our pid), brings up
its loopback with multicast on and a route for 224.0.0.0/4, starts real node processes inside it
with no bootstrap, and deletes the namespace afterwards. Where namespaces cannot be created (not
root, no ``ip``, a container without CAP_SYS_ADMIN) those tests skip and say why.

The TXT parser gets the garbage a LAN can send, without any network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zmqagents.identity import Identity, format_public_key
from zmqagents.sidecar.mdns import MAX_ENDPOINTS, TokenBucket, TxtError, advertised_endpoints, parse_txt, txt_record

from helpers.nodeproc import NodeProc

TOOLS = Path(__file__).resolve().parents[2] / "tools"
if str(TOOLS) not in sys.path:
    sys.path.append(str(TOOLS))

import netlab  # noqa: E402  (tools/netlab.py: namespaces, always deleted)


# -- TXT records: what any host on the LAN can send us ------------------------------------------


def _rdata(props: dict) -> bytes:
    """DNS TXT rdata: each "key=value" string prefixed by its length."""
    out = b""
    for k, v in props.items():
        item = (k.encode() if isinstance(k, str) else k) + b"=" + (v.encode() if isinstance(v, str) else v)
        out += bytes([len(item)]) + item
    return out


def test_txt_round_trip_and_size():
    ident = Identity.generate()
    rdata = _rdata(txt_record(ident.public_key, ["tcp://10.0.0.5:4000"]))
    assert len(rdata) < 200
    claim = parse_txt(rdata)
    assert claim.public_key == ident.public_key and claim.node_id == ident.node_id
    assert claim.endpoints == ("tcp://10.0.0.5:4000",)


def test_txt_vector_from_the_spec():
    spec = (Path(__file__).resolve().parents[2] / "protocols" / "mdns.md").read_text()
    block = spec.split("## 6. Test vector", 1)[1].split("```")[1]
    rdata = bytes.fromhex("".join(block.split()))
    ident = Identity.from_seed(bytes(range(32)))
    assert _rdata(txt_record(ident.public_key, ["tcp://192.0.2.10:7100"])) == rdata
    from zeroconf.asyncio import AsyncServiceInfo  # and zeroconf puts exactly these bytes on the wire

    info = AsyncServiceInfo("_zmqagents._tcp.local.", "x._zmqagents._tcp.local.", port=7100,
                            properties=txt_record(ident.public_key, ["tcp://192.0.2.10:7100"]))
    assert info.text == rdata
    claim = parse_txt(rdata)
    assert claim.node_id.hex() == "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
    assert claim.public_key == ident.public_key and claim.endpoints == ("tcp://192.0.2.10:7100",)


@pytest.mark.parametrize("case", [
    "empty", "garbage", "truncated", "oversize", "version", "no_pk", "bad_pk", "bad_id", "other_id",
    "no_ep", "ipc_only", "wildcard_only", "not_bytes",
])
def test_txt_refuses_bad_announcements(case):
    ident, other = Identity.generate(), Identity.generate()
    good = txt_record(ident.public_key, ["tcp://10.0.0.5:4000"])
    rdata = {
        "empty": b"",
        "garbage": os.urandom(200),
        "truncated": _rdata(good)[:-5] + b"\xff",
        "oversize": _rdata({**good, "pad": "x" * 250, "pad2": "y" * 250}),
        "version": _rdata({**good, "v": "2"}),
        "no_pk": _rdata({k: v for k, v in good.items() if k != "pk"}),
        "bad_pk": _rdata({**good, "pk": "not-base32"}),
        "bad_id": _rdata({**good, "id": "zz"}),
        "other_id": _rdata({**good, "id": other.node_id.hex()}),  # id != sha256(pk): refused before any contact
        "no_ep": _rdata({k: v for k, v in good.items() if k != "ep"}),
        "ipc_only": _rdata({**good, "ep": "ipc:///tmp/x"}),
        "wildcard_only": _rdata({**good, "ep": "tcp://0.0.0.0:4000"}),
        "not_bytes": None,
    }[case]
    with pytest.raises(TxtError):
        parse_txt(rdata)


def test_txt_first_key_wins_and_endpoints_are_bounded():
    ident, other = Identity.generate(), Identity.generate()
    eps = " ".join(f"tcp://10.0.0.{i}:4000" for i in range(1, 9))
    # A duplicate pk later in the record must not override the first (RFC 6763 6.4).
    rdata = _rdata({**txt_record(ident.public_key, []), "ep": eps}) + _rdata({"pk": format_public_key(other.public_key)})
    claim = parse_txt(rdata)
    assert claim.public_key == ident.public_key
    assert len(claim.endpoints) == MAX_ENDPOINTS
    junk = _rdata({**txt_record(ident.public_key, []), "ep": "tcp://nohost tcp://10.0.0.1:0 tcp://10.0.0.2:7 tcp://10.0.0.2:7"})
    assert parse_txt(junk).endpoints == ("tcp://10.0.0.2:7",)


def test_advertised_endpoints_expand_a_wildcard_bind():
    assert advertised_endpoints("tcp://10.1.2.3:7000") == ["tcp://10.1.2.3:7000"]
    assert advertised_endpoints("ipc:///tmp/n.sock") == []
    got = advertised_endpoints("tcp://0.0.0.0:7000", ["127.0.0.1", "192.168.9.9"])
    assert got == ["tcp://192.168.9.9:7000", "tcp://127.0.0.1:7000"]  # routable first


def test_token_bucket_paces_after_the_burst():
    bucket = TokenBucket(rate=10.0, burst=3)
    assert [bucket.delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert 0.05 < bucket.delay() <= 0.11  # the 4th waits ~1/rate
    assert 0.15 < bucket.delay() <= 0.21


# -- real multicast in a namespace ---------------------------------------------------------------


@pytest.fixture
def netns():
    """A fresh namespace whose loopback carries multicast; deleted afterwards whatever happens."""
    why = netlab.unavailable(tools=("ip",))
    if why:
        pytest.skip(f"{why}: cannot create a network namespace for multicast")
    with netlab.Lab() as lab:
        host = lab.host("mdns")
        host.ip("link", "set", "lo", "multicast", "on")
        host.ip("route", "add", "224.0.0.0/4", "dev", "lo")
        yield host.ns


@pytest.fixture
def procs():
    started: list[NodeProc] = []
    yield started
    for p in started:
        p.stop()


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.2)


@pytest.mark.timeout(40)
def test_three_nodes_find_each_other_with_no_bootstrap(netns, procs):
    nodes = [NodeProc("--mdns", ns=netns) for _ in range(3)]
    procs.extend(nodes)
    ids = {n.hello["node_id"] for n in nodes}

    def everyone_knows_everyone():
        states = [n.ask({"cmd": "state"}) for n in nodes]
        known = all(set(s["peers"]) == ids - {n.hello["node_id"]} for n, s in zip(nodes, states))
        # ... and each has seen (and skipped) its own announcement, which is registered in the background
        return known and all(s["mdns"]["self"] >= 1 for s in states) and states

    states = _wait_for(everyone_knows_everyone, 25, "three nodes did not all know each other")
    assert sum(s["mdns"]["verified"] for s in states) >= 2  # at least a spanning pair of hellos
    assert all(s["mdns"]["verify_failed"] == 0 and s["mdns"]["bad_txt"] == 0 for s in states)
    # and they talk: a request/reply between two of them, addressed by node id only
    reply = nodes[0].ask({"cmd": "request", "to": nodes[2].hello["node_id"], "body": "hi"})
    assert reply == {"reply": {"echo": "hi"}}


@pytest.mark.timeout(40)
def test_a_node_announcing_someone_elses_id_is_not_trusted(netns, procs):
    victim = Identity.generate()  # its owner is not on this LAN; the impostor does not hold its key
    honest = NodeProc("--mdns", ns=netns)
    procs.append(honest)
    impostor = NodeProc("--claim-key", format_public_key(victim.public_key), ns=netns)
    procs.append(impostor)

    def refused():
        s = honest.ask({"cmd": "state"})
        return s["mdns"]["verify_failed"] >= 1 and s

    state = _wait_for(refused, 20, "the false claim was not refused")
    assert victim.node_id.hex() not in state["peers"]
    assert victim.node_id.hex() not in state["neighbours"]
    assert state["mdns"]["verified"] == 0
    # The impostor's own (real) node id never became a peer either: it never announced itself.
    assert impostor.hello["node_id"] not in state["peers"]
    # A request to the claimed id finds no route: the false contact was dropped again.
    answer = honest.ask({"cmd": "request", "to": victim.node_id.hex(), "body": 1})
    assert "UnknownPeer" in answer["error"]


@pytest.mark.timeout(40)
def test_mdns_and_bootstrap_work_together(netns, procs):
    a = NodeProc("--mdns", ns=netns)
    procs.append(a)
    b = NodeProc("--bootstrap", a.hello["contact"], ns=netns)  # no mDNS: joins only through its bootstrap
    procs.append(b)
    c = NodeProc("--mdns", ns=netns)  # finds a over mDNS, then learns b through a's table
    procs.append(c)
    _wait_for(lambda: b.hello["node_id"] in c.ask({"cmd": "state"})["peers"], 25, "c did not learn b")
    reply = c.ask({"cmd": "request", "to": b.hello["node_id"], "body": [1, 2]})
    assert reply == {"reply": {"echo": [1, 2]}}


# -- the verification step itself, on loopback (runs where namespaces do not) --------------------


def test_introduce_keeps_a_true_claim_and_forgets_a_false_one():
    import asyncio

    from zmqagents.identity import Contact
    from zmqagents.node import Node

    async def main():
        async with Node() as a, Node() as b, Node() as c:
            victim = Identity.generate()
            false_claim = Contact(victim.public_key, c.transport.endpoint)  # c's socket, victim's key
            assert await a.introduce(false_claim, timeout=1.0) is False
            assert not a.transport.known(victim.node_id)  # nothing of the claim is left behind
            assert victim.node_id not in a.neighbours()
            assert all(row["node_id"] != victim.node_id.hex() for row in a.peers())
            assert await a.introduce(b.contact, timeout=2.0) is True
            assert b.node_id in a.neighbours()
            assert any(row["node_id"] == b.node_id.hex() for row in a.peers())

    asyncio.run(asyncio.wait_for(main(), 15))


@pytest.mark.timeout(40)
def test_sidecars_started_by_the_cli_find_each_other(netns, procs, tmp_path):
    """`zmqagents node` in sidecar mode listening on a LAN address has mDNS on by default ([mdns] enabled =
    "auto"): two of them, no bootstrap. The address sits on the namespace's loopback, which carries
    multicast here, but is not a loopback address, as a LAN interface's would not be."""
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.77.0.1/32", "dev", "lo"], check=True, timeout=10)
    cli = [str(Path(sys.executable).with_name("zmqagents")), "node", "--listen", "tcp://10.77.0.1:0",
           "--set", "local_api.enabled=false"]
    sidecars = []
    for name in ("a", "b"):
        p = NodeProc(*cli[1:], "--key", str(tmp_path / f"{name}.key"), ns=netns, program=cli[:1])
        procs.append(p)
        sidecars.append(p)
    a, b = sidecars

    def a_knows_b():
        out = subprocess.run(["ip", "netns", "exec", netns, cli[0], "peers", "--to", a.hello["contact"], "--json"],
                             capture_output=True, text=True, timeout=15)
        assert out.returncode == 0, out.stderr
        return b.hello["node_id"] in out.stdout

    _wait_for(a_knows_b, 20, "sidecar a did not learn b over mDNS")
    for p in sidecars:
        p.proc.terminate()
        assert p.proc.wait(10) == 0  # SIGTERM: clean stop, mDNS goodbye included
