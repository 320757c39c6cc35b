"""Received messages on disk until the application acknowledges them, and applications serving the
mesh through the sidecar (protocols/local-api.md §4.3, §5): real sidecars (in-process or
`zmqagents node --config` processes killed with SIGKILL), real ipc and tcp sockets, real files.

The 10,000-message kill -9 figure comes from `bench/outbox.py` (its inbound case); these use fewer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.asyncio

from zmqagents.agents.runtime import Agents, DirectLookup
from zmqagents.identity import Contact, Identity
from zmqagents.node import Node
from zmqagents.sidecar.config import load
from zmqagents.sidecar.daemon import Sidecar

CLI = [sys.executable, "-m", "zmqagents.cli"]
SERVE_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local_serve.py"


def frame(op: str, body=None, **fields) -> tuple[bytes, bytes]:
    mid = os.urandom(16)
    payload = msgpack.packb({"v": 1, "id": mid, "src": bytes(32), "t": op, "b": body, **fields})
    return mid, struct.pack(">I", len(payload)) + payload


def unframe(data: bytes) -> dict:
    return msgpack.unpackb(data[4:4 + struct.unpack(">I", data[:4])[0]])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Box:
    """A sidecar's files: key, fixed tcp port (its contact survives restarts), socket, spool, config."""

    def __init__(self, root: Path, name: str):
        self.dir = root / name
        self.dir.mkdir()
        self.sock = str(self.dir / "s.sock")
        identity = Identity.generate()
        identity.save(self.dir / "k.key")
        port = free_port()
        self.contact = str(Contact(identity.public_key, f"tcp://127.0.0.1:{port}"))
        self.config = self.dir / "c.toml"
        self.config.write_text(
            f'[node]\nkey = "{self.dir / "k.key"}"\nlisten = "tcp://127.0.0.1:{port}"\ndrain_timeout = 1\n'
            f'[local_api]\npath = "{self.sock}"\nmode = 0o600\n[spool]\ndir = "{self.dir / "spool"}"\n'
            '[mdns]\nenabled = false\n[admin]\nenabled = false\n[limits]\ninbox_messages = 20000\n')
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(CLI + ["node", "--config", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"sidecar exited: {self.proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "sidecar socket never answered"
            try:
                self.status(timeout_ms=500)
                return
            except (zmq.Again, OSError):
                time.sleep(0.05)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def client(self, timeout_ms: int = 20_000) -> zmq.Socket:
        if not os.path.exists(self.sock):
            raise FileNotFoundError(self.sock)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        sock.connect(f"ipc://{self.sock}")
        return sock

    def status(self, timeout_ms: int = 5000) -> dict:
        sock = self.client(timeout_ms)
        try:
            sock.send(frame("status")[1])
            return unframe(sock.recv())["b"]
        finally:
            sock.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def boxes():
    root = Path(tempfile.mkdtemp(prefix="zain-", dir="/tmp"))  # short: unix socket paths are limited
    made: list[Box] = []

    def make(name: str) -> Box:
        made.append(Box(root, name))
        return made[-1]
    yield make
    for box in made:
        box.stop()
    shutil.rmtree(root, ignore_errors=True)


def send_all(sender: Box, to: str, n: int) -> None:
    sock = sender.client()
    try:
        for base in range(0, n, 500):
            batch = range(base, min(n, base + 500))
            for i in batch:
                sock.send(frame("send", {"n": i}, to=to)[1])
            for _ in batch:
                assert unframe(sock.recv())["t"] == "accepted"
    finally:
        sock.close()


def receive_all(box: Box, want: int, linger: float = 1.5) -> list[int]:
    """Take messages with acknowledgements (every 200), until `want` distinct ones plus `linger` s."""
    sock = box.client()
    got: list[int] = []
    try:
        sock.send(frame("receive", {"credit": 10_000, "ack": True})[1])
        unacked: list[bytes] = []
        deadline = time.monotonic() + 60
        until = None
        while time.monotonic() < (until or deadline):
            if not sock.poll(100):
                if unacked:
                    sock.send(frame("ack", {"ids": unacked})[1])
                    unacked = []
                continue
            env = unframe(sock.recv())
            if env["t"] == "msg":
                got.append(env["b"]["n"])
                unacked.append(env["id"])
                if len(unacked) >= 200:
                    sock.send(frame("ack", {"ids": unacked})[1])
                    unacked = []
            if until is None and len(set(got)) >= want:
                until = time.monotonic() + linger  # duplicates would arrive now
        if unacked:
            sock.send(frame("ack", {"ids": unacked})[1])
            sock.recv()
    finally:
        sock.close()
    return got


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_kill_9_holding_received_unconsumed_messages_loses_none_and_duplicates_none(boxes):
    a, b = boxes("a"), boxes("b")
    b.start()
    a.start()
    n = 1500
    send_all(a, b.contact, n)
    wait_for(lambda: b.status()["inbound"]["queued"] >= n, 40, "the receiver never held every message")
    b.kill9()  # holding n received messages no application took; their senders were told "delivered"
    b.start()
    assert b.status()["inbound"]["queued"] == n  # all of them came back from the inbound spool
    got = receive_all(b, n)
    assert len(set(got)) == n, f"missing: {sorted(set(range(n)) - set(got))[:20]}"
    assert len(got) == n, f"{len(got) - n} duplicate deliveries"
    wait_for(lambda: b.status()["inbound"]["queued"] == 0 and b.status()["unacked"] == 0, 5,
             "acknowledged messages did not leave the spool")
    wait_for(lambda: a.status()["outbox"]["queued"] == 0, 20, "the sender's outbox never emptied")


@pytest.mark.timeout(120)
def test_kill_9_of_the_receiver_mid_stream_restores_its_dedup_memory(boxes):
    """Killed while messages and acknowledgements are in full flow: some it stored were never
    acknowledged to the sender, which sends them again after the restart. The dedup memory read back
    from the inbound spool drops them: the application gets each message once."""
    a, b = boxes("a"), boxes("b")
    b.start()
    a.start()
    n = 3000
    send_all(a, b.contact, n)
    wait_for(lambda: b.status()["inbound"]["queued"] >= 200, 30, "nothing arrived")
    b.kill9()
    b.start()
    got = receive_all(b, n)
    assert len(set(got)) == n, f"missing: {sorted(set(range(n)) - set(got))[:20]}"
    assert len(got) == n, f"{len(got) - n} duplicate deliveries"


# -- in-process sidecars ---------------------------------------------------------------------------


class LocalClient:
    """A local application speaking the local API, as the examples do (asyncio pyzmq)."""

    def __init__(self, path: str):
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{path}")

    async def send(self, op: str, body=None, **fields) -> bytes:
        mid, data = frame(op, body, **fields)
        await self.sock.send(data)
        return mid

    async def recv(self, timeout: float = 10) -> dict:
        return unframe(await asyncio.wait_for(self.sock.recv(), timeout))

    async def op(self, op: str, body=None, **fields) -> dict:
        mid = await self.send(op, body, **fields)
        while True:
            env = await self.recv()
            if env.get("re") == mid:
                return env

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def sidecar_config(d: Path, extra: str = ""):
    (d / "c.toml").write_text(
        f'[node]\nkey = "{d / "k.key"}"\nlisten = "tcp://127.0.0.1:0"\ndrain_timeout = 0\n'
        f'[local_api]\npath = "{d / "s.sock"}"\nmode = 0o600\n[spool]\ndir = "{d / "spool"}"\n'
        '[mdns]\nenabled = false\n[admin]\nenabled = false\n' + extra)
    return load(d / "c.toml", env={})


@pytest.fixture
def short_dir():
    d = tempfile.mkdtemp(prefix="zasv-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_unacknowledged_messages_go_back_and_acknowledged_ones_leave_the_spool(arun, short_dir):
    async def main():
        async with Sidecar(sidecar_config(short_dir)) as sc:
            path = str(short_dir / "s.sock")
            async with Node(peers=[sc.node.contact]) as sender:
                for i in range(3):
                    await sender.send(sc.node.node_id, i)
                await sender.flush(timeout=10)
                first = LocalClient(path)
                ok = await first.op("receive", {"credit": 3, "ack": True, "ack_timeout_ms": 1000})
                assert ok["t"] == "ok"
                got = [await first.recv() for _ in range(3)]
                assert [m["b"] for m in got] == [0, 1, 2]
                acked = await first.op("ack", {"ids": [got[0]["id"], got[2]["id"], os.urandom(16)]})
                assert acked["b"] == {"acked": 2, "unknown": 1}
                first.close()  # leaves without acknowledging message 1
                second = LocalClient(path)
                await second.op("receive", {"credit": 5, "ack": True})
                again = await second.recv(timeout=5)  # after the 1 s ack timeout
                assert again["b"] == 1 and again["id"] == got[1]["id"]
                await second.op("ack", {"ids": [again["id"]]})
                status = (await second.op("status"))["b"]
                assert status["version"] == 3 and status["local_api"]["redelivered"] == 1
                assert status["inbound"]["acked"] == 3 and status["inbound"]["queued"] == 0
                assert status["unacked"] == 0
                bad = await second.op("ack", {"ids": "nope"})
                assert bad["t"] == "error" and bad["b"]["code"] == "bad_request"
                bad = await second.op("receive", {"credit": 1, "ack": "yes"})
                assert bad["t"] == "error" and bad["b"]["code"] == "bad_request"
                second.close()

    arun(main())


def test_an_acknowledgement_that_makes_room_sends_the_refused_sender_a_window_update(arun, short_dir):
    """Messages handed to an acknowledging client count against the inbox bounds until it acknowledges
    them (the spool still holds them), so a full inbox refuses their sender meanwhile. The acknowledgement
    is what makes room, so it is what sends the window update (protocols/delivery.md 5.2), not the next
    message taken: with every waiting message taken, that would be the sender's own retransmission,
    up to rto_max later (bench/chaos.py's application acknowledges)."""
    async def main():
        limits = "[limits]\ninbox_messages = 10\npeer_share = 1.0\n"
        async with Sidecar(sidecar_config(short_dir, limits)) as sc:
            client = LocalClient(str(short_dir / "s.sock"))
            await client.send("receive", {"credit": 100, "ack": True})
            async with Node(peers=[sc.node.contact]) as sender:
                for i in range(30):
                    await sender.send(sc.node.node_id, i)
                got: list[dict] = []
                while len(got) < 10:
                    env = await client.recv()
                    if env["t"] == "msg":
                        got.append(env)
                for _ in range(200):  # the sender's next messages find the inbox full of taken ones
                    if sc.node.stats["inbox_refused"]:
                        break
                    await asyncio.sleep(0.02)
                assert sc.node.stats["inbox_refused"] > 0 and sc.node.stats["window_updates"] == 0
                assert sc.inbox.stats["accepted"] == 10 and sc.node.inbox_size[0] == 0  # all taken, none acknowledged
                await client.send("ack", {"ids": [m["id"] for m in got]})
                accepted_then = None
                for _ in range(20_000):  # every loop turn, so the first window update is caught as it happens
                    if sc.node.stats["window_updates"]:
                        accepted_then = sc.inbox.stats["accepted"]
                        break
                    await asyncio.sleep(0)
                # Sent on the acknowledgement: no message of the sender had entered the inbox yet.
                assert accepted_then == 10, accepted_then
                rest = [m["b"] for m in got]
                while len(rest) < 30:
                    env = await client.recv()
                    if env["t"] == "msg":
                        rest.append(env["b"])
                        await client.send("ack", {"ids": [env["id"]]})
                assert rest == list(range(30))
            client.close()

    arun(main())


def test_an_application_serves_tasks_and_requests_and_its_departure_withdraws_them(arun, short_dir):
    """examples/local_serve.py (pyzmq + msgpack only) serves `upper` and the node's requests; a caller
    on the mesh runs the task (progress streamed) and makes a request; killed, the example's
    capability is withdrawn within its lease and requests fall back to the sidecar's own handler."""
    async def main():
        async with Sidecar(sidecar_config(short_dir)) as sc:
            sc.node.on_request(lambda body, msg: {"fallback": body})
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SERVE_EXAMPLE), str(short_dir / "s.sock"), "upper",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                lines = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 20)) for _ in range(2)]
                assert {next(iter(line["registered"])) for line in lines} == {"capability", "requests"}
                async with Node(peers=[sc.node.contact]) as caller:
                    agents = Agents(caller, lookup=DirectLookup(caller, [sc.node.contact]))
                    try:
                        chunks = []
                        done = await asyncio.wait_for(
                            agents.request("upper", "a mesh of agents", on_progress=lambda p: chunks.append(p.data)),
                            20)
                        assert done.state == "completed" and done.output == "A MESH OF AGENTS", done
                        assert chunks == ["A", "MESH", "OF", "AGENTS"]
                        bad = await asyncio.wait_for(agents.request("upper", 42, validate=False), 20)  # checked by the sidecar
                        assert bad.state == "failed" and "string" in str(bad.error)
                        assert await caller.request(sc.node.node_id, "hi", timeout=10) == {"echo": "hi"}
                        proc.kill()
                        await proc.wait()
                        api = sc.services["local_api"]
                        for _ in range(140):  # the example's lease is 4 s
                            if api.serving.status()["servers"] == 0:
                                break
                            await asyncio.sleep(0.05)
                        assert api.serving.stats["leases_expired"] == 1 and api.serving.status()["capabilities"] == []
                        assert await caller.request(sc.node.node_id, "hi", timeout=10) == {"fallback": "hi"}
                    finally:
                        await agents.close()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    arun(main())


def test_work_of_a_client_that_leaves_is_rejected_with_a_reason_and_bad_input_is_refused(arun, short_dir):
    async def main():
        async with Sidecar(sidecar_config(short_dir)) as sc:
            path = str(short_dir / "s.sock")
            server = LocalClient(path)
            cap = {"name": "slow", "max_concurrency": 1}
            ok = await server.op("serve", {"capability": cap, "lease_ms": 1000, "publish": False})
            assert ok["t"] == "ok" and ok["b"]["capability"] == "slow"
            other = LocalClient(path)
            for body, code in (({"capability": cap}, "conflict"),
                               ({"capability": {"name": "bad name!"}}, "bad_request"),
                               ({"capability": {"name": "x", "input_schema": {"frobnicate": 1}}}, "bad_request"),
                               ("garbage", "bad_request")):
                refused = await other.op("serve", body)
                assert refused["t"] == "error" and refused["b"]["code"] == code, refused
            stray = await other.op("result", "x", re=os.urandom(16))
            assert stray["t"] == "error" and stray["b"]["code"] == "unknown_work"
            await other.sock.send(b"\x00\x00\x00\x05garbage")
            assert (await other.recv())["b"]["code"] == "malformed"
            async with Node(peers=[sc.node.contact]) as caller:
                agents = Agents(caller, lookup=DirectLookup(caller, [sc.node.contact]))
                try:
                    pending = asyncio.ensure_future(agents.request("slow", {"x": 1}))
                    task = await server.recv(timeout=15)
                    assert task["t"] == "task" and task["b"]["input"] == {"x": 1}
                    # a stolen id: another client cannot answer this client's work
                    stolen = await other.op("result", "mine", re=task["id"])
                    assert stolen["b"]["code"] == "unknown_work"
                    await server.op("progress", "started", re=task["id"])
                    server.close()  # gone without answering, and silent: its 1 s lease runs out
                    done = await asyncio.wait_for(pending, 15)
                    assert done.state == "failed" and "disconnected" in str(done.error), done
                finally:
                    await agents.close()
            status = (await other.op("status"))["b"]  # still serving everyone else
            assert status["serving"]["work_rejected"] >= 1 and status["serving"]["servers"] == 0
            assert status["serving"]["unknown_work"] == 2
            assert status["local_api"]["conflict"] == 1 and status["local_api"]["malformed"] == 1
            other.close()

    arun(main())


def test_a_flooding_client_that_reads_nothing_does_not_starve_the_others(arun, short_dir):
    """One client writes 20,000 frames (pings and garbage) and never reads its answers; another is
    answered meanwhile, and every frame of the flood is read and counted (its answers wait in its own
    queue, bounded by the socket's high-water mark, or are dropped and counted beyond it)."""
    async def main():
        async with Sidecar(sidecar_config(short_dir)) as sc:
            path = str(short_dir / "s.sock")
            flooder = LocalClient(path)
            flooder.sock.setsockopt(zmq.RCVHWM, 10)  # it reads nothing: its answers pile up on our side
            honest = LocalClient(path)
            ping = frame("ping")[1]
            for i in range(20_000):
                await flooder.sock.send(ping if i % 2 else b"\x00\x00\x00\x03abc")
            status = (await honest.op("status"))["b"]  # answered while the flood is being read
            api = sc.services["local_api"]
            for _ in range(400):
                if api.stats["frames_in"] >= 20_001:
                    break
                await asyncio.sleep(0.05)
            status = (await honest.op("status"))["b"]
            assert status["local_api"]["frames_in"] >= 20_001
            assert status["local_api"]["malformed"] == 10_000
            flooder.close()
            honest.close()

    arun(main())


def test_a_message_the_spool_cannot_hold_stays_in_memory_counted_and_the_rest_are_written(arun, short_dir):
    """A burst with one record too large for the spool: the others are written, that one is kept in
    memory (accepted: it is not dropped), counted; all come out in order and leave when acknowledged."""
    from zmqagents.node import Message
    from zmqagents.sidecar.inbound import SpoolInbox
    from zmqagents.sidecar.spool import SpoolConfig

    async def main():
        inbox = SpoolInbox(SpoolConfig(str(short_dir / "in"), max_bytes=1 << 20, max_record=4096, fsync="never"),
                           limit=100, share=1.0, node_id=bytes(32), dedup_window=16)
        inbox.open()
        src = bytes([7]) * 32
        bodies = ["small", "x" * 10_000, "after"]
        for i, body in enumerate(bodies):
            inbox.put(Message(src, body, "msg", bytes([i]) * 16, None, 600), src, 600)
        inbox.flush()
        assert inbox.stats["unspooled"] == 1 and inbox.spool.undone_count == 2 and len(inbox) == 3
        got = [(await inbox.get())[0] for _ in bodies]
        assert [m.body for m in got] == bodies
        inbox.release(got[2].id)  # handed back: first in line again
        assert (await inbox.get())[0].id == got[2].id
        for m in got:
            assert inbox.ack(m.id)
        inbox.commit()
        assert inbox.spool.undone_count == 0 and inbox.stats["acked"] == 3 and not inbox.ack(got[0].id)
        inbox.close()

    arun(main())


def test_no_acknowledgement_leaves_before_the_messages_it_covers_are_in_the_spool(arun, short_dir):
    """Every ack the receiving node sends (alone or riding on another envelope) covers only messages
    already appended to its inbound spool: checked on each envelope the transport is handed."""
    from zmqagents.sidecar.inbound import SpoolInbox
    from zmqagents.sidecar.spool import SpoolConfig

    async def main():
        inbox = SpoolInbox(SpoolConfig(str(short_dir / "in"), max_bytes=16 << 20, fsync="never"),
                           limit=10_000, share=1.0, node_id=bytes(32), dedup_window=4096)
        receiver = Node(inbox=inbox)
        inbox.open()
        checked = []
        early = []
        await receiver.start()
        send = receiver.transport.send

        def watched(env):
            # The sender's stream starts with its hello request (seq 1); its messages are seqs 2..2001.
            if env.ack is not None and env.ack[1] > 1:
                checked.append(env.ack[1])
                if env.ack[1] - 1 > inbox.spool.stats["appended"]:
                    early.append((env.ack[1], inbox.spool.stats["appended"]))
            return send(env)
        receiver.transport.send = watched
        try:
            async with Node(peers=[receiver.contact]) as sender:
                for i in range(2000):
                    sender.send_nowait(receiver.node_id, i) if sender.delivery.can_send(receiver.node_id) \
                        else await sender.send(receiver.node_id, i)
                await sender.flush(timeout=15)
            assert checked and max(checked) == 2001 and early == []
            assert inbox.spool.undone_count == 2000
        finally:
            await receiver.close()
            inbox.close()

    arun(main())
