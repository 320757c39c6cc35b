"""An outbound-only node that really cannot be reached, in a network namespace, through two relays.

Topology (built with tools/netlab.py: unique names per test process, always deleted):

    [namespace zqPID-edge]                     [this namespace]
     edge node (CLI)  --veth 10.201.x.y/30-->  relay 1 (CLI, PID killed mid-test)
     listens on its own 127.0.0.1              relay 2 (CLI)
                                               outside node (this process, listens on 127.0.0.1)

The edge namespace has one link, to the relays' address, and no route anywhere else: the test checks
that it cannot connect to the outside node, and that the outside node's only way in is the relays.
Then request/reply goes through relay 1, relay 1 is killed with SIGKILL, and requests go on through
relay 2.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from zmqagents.identity import Contact
from zmqagents.node import Node, NodeConfig

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tools") not in sys.path:
    sys.path.append(str(ROOT / "tools"))

import netlab  # noqa: E402  (tools/netlab.py: namespaces, links, cleanup)

CLI = [sys.executable, "-m", "zmqagents.cli"]


@contextmanager
def edge_namespace():
    """A namespace joined to this one by a veth pair; yields (name, host-side IP, edge-side IP)."""
    why = netlab.unavailable(tools=("ip",))
    if why:
        pytest.skip(why)
    with netlab.Lab() as lab:
        edge = lab.host("edge")
        link = lab.link(lab.here, edge)
        yield edge.ns, link.address(lab.here), link.address(edge)


@contextmanager
def process(argv: list[str], contact_file: Path, timeout: float = 20.0, stderr: Path | None = None):
    """Start a long-running CLI command that writes ``contact_file``; stop it by PID at the end.
    Its stderr goes to the file ``stderr`` if given (to be read afterwards), else to a pipe."""
    err = open(stderr, "w") if stderr is not None else subprocess.PIPE
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not contact_file.exists():
            if proc.poll() is not None:
                said = proc.stderr.read() if stderr is None else stderr.read_text()
                raise AssertionError(f"{argv[3:5]} exited early: {said}")
            assert time.monotonic() < deadline, f"{argv} did not start"
            time.sleep(0.05)
        yield proc, Contact.parse(contact_file.read_text())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        if stderr is not None:
            err.close()


def _can_connect_from(ns: str, host: str, port: int) -> bool:
    probe = ("import socket,sys\n"
             f"try: socket.create_connection(({host!r}, {port}), timeout=1).close()\n"
             "except OSError: sys.exit(1)\n")
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], timeout=10).returncode == 0


@pytest.mark.timeout(60)
def test_edge_node_in_a_namespace_is_reached_through_relays_and_fails_over_when_one_is_killed(tmp_path, arun):
    with edge_namespace() as (ns, host_ip, _edge_ip):
        relay_args = ["relay", "--listen", f"tcp://{host_ip}:0", "--expire", "3"]
        with process(CLI + relay_args + ["--contact-file", str(tmp_path / "r1")], tmp_path / "r1") as (r1, r1c), \
                process(CLI + relay_args + ["--contact-file", str(tmp_path / "r2")], tmp_path / "r2") as (_r2, r2c):
            edge_argv = ["ip", "netns", "exec", ns, *CLI, "node", "--outbound-only", "--relay", str(r1c),
                         "--relay", str(r2c), "--echo", "--contact-file", str(tmp_path / "edge")]
            with process(edge_argv, tmp_path / "edge") as (_edge, edge_contact):
                assert [r.node_id for r in edge_contact.relays] == [r1c.node_id, r2c.node_id]
                arun(_outside(ns, host_ip, edge_contact, r1), timeout=45)


async def _outside(ns: str, host_ip: str, edge_contact: Contact, r1: subprocess.Popen) -> None:
    async with Node(listen="tcp://127.0.0.1:0", peers=[edge_contact], config=NodeConfig(member=False)) as outside:
        port = int(outside.transport.endpoint.rsplit(":", 1)[1])
        # The isolation is real: from the edge namespace, the outside node cannot be reached at all.
        assert not _can_connect_from(ns, "127.0.0.1", port)
        assert not _can_connect_from(ns, host_ip, port)

        for i in range(5):
            assert await outside.request(edge_contact.node_id, {"n": i}, timeout=5) == {"n": i}
        assert outside.transport.relaying.via[edge_contact.node_id][0] == edge_contact.relays[0].node_id

        r1.send_signal(signal.SIGKILL)  # the first relay dies without a word
        r1.wait(timeout=5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await outside.request(edge_contact.node_id, "after", timeout=10) == "after"
        failover_s = loop.time() - started
        for i in range(5):
            assert await outside.request(edge_contact.node_id, i, timeout=5) == i
        assert outside.transport.relaying.via[edge_contact.node_id][0] == edge_contact.relays[1].node_id
        assert outside.transport.relaying.stats["rotated"] >= 1
        assert outside.transport.relaying.misses.get(edge_contact.relays[0].node_id, 0) >= 1
        assert failover_s < 5, f"failover took {failover_s:.2f} s"
        assert not outside.transport.drops.get("relay_bad_signature")


@pytest.mark.timeout(90)
def test_edge_node_whose_only_egress_is_its_relay_joins_through_it(tmp_path, arun):
    """Issue 12, item 5: the edge node's only route is to its relay; its bootstrap node is one it
    cannot dial. It says so at start (stderr), joins through its relay (a member of the mesh, started
    with the same bootstrap node), publishes its relayed contact, and a node that holds only its id
    finds it and gets an answer."""
    with edge_namespace() as (ns, host_ip, _edge_ip):
        with process(CLI + ["node", "--listen", "tcp://127.0.0.1:0", "--contact-file", str(tmp_path / "x")],
                     tmp_path / "x") as (_x, x_contact), \
                process(CLI + ["relay", "--listen", f"tcp://{host_ip}:0", "--bootstrap", str(x_contact),
                               "--contact-file", str(tmp_path / "r")], tmp_path / "r") as (_r, r_contact):
            edge_log = tmp_path / "edge.log"
            edge_argv = ["ip", "netns", "exec", ns, *CLI, "node", "--outbound-only", "--relay", str(r_contact),
                         "--bootstrap", str(x_contact), "--echo", "--contact-file", str(tmp_path / "edge")]
            with process(edge_argv, tmp_path / "edge", stderr=edge_log) as (_edge, edge_contact):
                arun(_find_the_edge(ns, x_contact, edge_contact.node_id), timeout=60)
            text = edge_log.read_text()
            assert "cannot dial bootstrap node" in text and "Joining through its relay" in text, text


async def _find_the_edge(ns: str, x_contact: Contact, edge_id: bytes) -> None:
    port = int(x_contact.endpoint.rsplit(":", 1)[1])
    assert not _can_connect_from(ns, "127.0.0.1", port)  # the bootstrap node is out of the edge's reach
    async with Node(listen="tcp://127.0.0.1:0", bootstrap=[x_contact], config=NodeConfig(member=False)) as outside:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 40
        found = None
        while found is None:  # the edge publishes its contact once it has joined (a few seconds)
            assert loop.time() < deadline, "the edge node's contact record never appeared"
            found = await outside.find_contact(edge_id, timeout=5)
            if found is None:
                await asyncio.sleep(0.5)
        assert found.relayed
        assert await outside.request(edge_id, {"hi": 1}, timeout=10) == {"hi": 1}
