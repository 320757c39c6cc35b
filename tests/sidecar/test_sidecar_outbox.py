"""The sidecar's outbox with real processes (`zmqagents node --config`) and real files: kill -9,
and the CLI talking to a running sidecar.

The destination's application is `zmqagents node` printing one JSON line per message; every
message body carries a unique number, so the tests count duplicates and gaps exactly. The
10,000-message kill -9 figure comes from `bench/outbox.py`; these use fewer to stay fast.
"""

from __future__ import annotations

import json
import os
import select
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

from zmqagents.identity import Contact, Identity

CLI = [sys.executable, "-m", "zmqagents.cli"]


def envelope(op: str, body=None, **fields) -> tuple[bytes, bytes]:
    mid = os.urandom(16)
    payload = msgpack.packb({"v": 1, "id": mid, "src": bytes(32), "t": op, "b": body, **fields})
    return mid, struct.pack(">I", len(payload)) + payload


def answer(sock) -> dict:
    frame = sock.recv()
    return msgpack.unpackb(frame[4:4 + struct.unpack(">I", frame[:4])[0]])


class Env:
    """A short work directory (unix socket paths are limited), a sidecar config and a peer key."""

    def __init__(self, socket_in_config: bool = True):
        self.dir = Path(tempfile.mkdtemp(prefix="zakill-", dir="/tmp"))
        self.sock = str(self.dir / "node.sock")
        self.peer_key = self.dir / "peer.key"
        peer = Identity.generate()
        peer.save(self.peer_key)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.peer_contact = str(Contact(peer.public_key, f"tcp://127.0.0.1:{self.port}"))
        self.config = self.dir / "sidecar.toml"
        self.config.write_text(
            f'[node]\nkey = "{self.dir / "sidecar.key"}"\nlisten = "tcp://127.0.0.1:0"\ndrain_timeout = 1\n'
            + (f'[local_api]\npath = "{self.sock}"\nmode = 0o600\n' if socket_in_config else "")
            + f'[spool]\ndir = "{self.dir / "spool"}"\nfsync = "batch"\n'
            '[mdns]\nenabled = false\n[admin]\nenabled = false\n')
        self.procs: list[subprocess.Popen] = []
        # Where the sidecar's default socket path is when the config names none (systemd's variable).
        self.env = {**os.environ, "RUNTIME_DIRECTORY": str(self.dir)}

    def start_sidecar(self) -> subprocess.Popen:
        proc = subprocess.Popen(CLI + ["node", "--config", str(self.config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=self.env)
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"sidecar exited: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "sidecar socket never answered"
            try:
                self.status(timeout_ms=500)
                return proc
            except (zmq.Again, FileNotFoundError, ConnectionRefusedError, OSError):
                time.sleep(0.05)

    def start_peer(self, *flags: str) -> subprocess.Popen:
        proc = subprocess.Popen(CLI + ["node", "--key", str(self.peer_key), "--listen",
                                       f"tcp://127.0.0.1:{self.port}", *flags], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        assert "contact" in json.loads(proc.stdout.readline())
        return proc

    def client(self) -> zmq.Socket:
        if not os.path.exists(self.sock):
            raise FileNotFoundError(self.sock)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 20_000)
        sock.connect(f"ipc://{self.sock}")
        return sock

    def status(self, timeout_ms: int = 5000) -> dict:
        sock = self.client()
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        try:
            sock.send(envelope("status")[1])
            return answer(sock)["b"]
        finally:
            sock.close()

    def send(self, n: int) -> list[bytes]:
        """n messages {"n": i} to the peer, 500 awaiting an answer at a time; all must be accepted."""
        sock = self.client()
        accepted = []
        try:
            for base in range(0, n, 500):
                batch = range(base, min(n, base + 500))
                for i in batch:
                    sock.send(envelope("send", {"n": i}, to=self.peer_contact)[1])
                for _ in batch:
                    reply = answer(sock)
                    assert reply["t"] == "accepted", reply
                    accepted.append(reply["re"])
        finally:
            sock.close()
        return accepted

    def kill9(self, proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def collect(peer: subprocess.Popen, want: int, timeout: float) -> list[int]:
    """Numbers of the messages the peer's application printed, until `want` distinct ones plus 1 s."""
    got: list[int] = []
    buf = b""
    fd = peer.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    linger_until = None
    while time.monotonic() < (linger_until or deadline):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            got += [json.loads(line)["body"]["n"] for line in lines if line]
        if linger_until is None and len(set(got)) >= want:
            linger_until = time.monotonic() + 1.0  # late duplicates would arrive now
    return got


@pytest.mark.timeout(60)
def test_kill_9_with_messages_queued_for_a_peer_that_is_down_delivers_each_exactly_once():
    env = Env()
    try:
        sidecar = env.start_sidecar()
        n = 2000
        env.send(n)
        assert env.status()["outbox"]["queued"] == n
        env.kill9(sidecar)  # everything accepted, nothing delivered: the peer is not running
        env.start_sidecar()
        assert env.status()["outbox"]["queued"] == n  # all of it came back from the spool
        peer = env.start_peer()
        got = collect(peer, n, 40)
        assert len(set(got)) == n, f"missing: {sorted(set(range(n)) - set(got))[:20]}"
        assert len(got) == n, f"{len(got) - n} duplicate deliveries"
        deadline = time.monotonic() + 5
        while env.status()["outbox"]["queued"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert env.status()["outbox"]["queued"] == 0  # and the spool knows they are done
    finally:
        env.close()


@pytest.mark.timeout(60)
def test_kill_9_mid_stream_to_a_live_peer_neither_loses_nor_duplicates():
    """The peer is up: when the sidecar dies, some messages were delivered whose acknowledgements
    it never recorded. After the restart it re-sends them under their ids; the peer drops them."""
    env = Env()
    try:
        peer = env.start_peer()
        sidecar = env.start_sidecar()
        n = 3000
        env.send(n)
        env.kill9(sidecar)  # immediately: deliveries and acknowledgements are in full flow
        env.start_sidecar()
        got = collect(peer, n, 40)
        assert len(set(got)) == n, f"missing: {sorted(set(range(n)) - set(got))[:20]}"
        assert len(got) == n, f"{len(got) - n} duplicate deliveries"
    finally:
        env.close()


# -- the CLI through a running sidecar -------------------------------------------------------------------


def zmqa(env: Env, *args: str, input: str | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), input=input, capture_output=True, text=True, timeout=30,
                          env={**env.env, **extra_env})


@pytest.mark.timeout(60)
def test_cli_send_goes_through_the_sidecar_and_returns_once_accepted():
    env = Env()
    try:
        env.start_sidecar()
        # the peer is down: a temporary node would wait for acknowledgements; the sidecar accepts
        run = zmqa(env, "send", "--socket", env.sock, "--to", env.peer_contact, '{"n": 0}')
        assert run.returncode == 0, run.stderr
        run = zmqa(env, "send", "--socket", env.sock, "--to", env.peer_contact, input='{"n": 1}\ngarbage\n{"n": 2}\n')
        assert run.returncode == 1 and "line 2: invalid JSON" in run.stderr
        assert env.status()["outbox"]["accepted"] == 3
        peer = env.start_peer()
        assert sorted(collect(peer, 3, 20)) == [0, 1, 2]
        # by node id, now that the sidecar knows the peer
        node_id = Contact.parse(env.peer_contact).node_id.hex()
        run = zmqa(env, "send", "--socket", env.sock, "--to", node_id, '{"n": 3}')
        assert run.returncode == 0, run.stderr
        assert collect(peer, 1, 20) == [3]
    finally:
        env.close()


@pytest.mark.timeout(60)
def test_cli_finds_the_sidecar_at_its_default_path_and_falls_back_to_a_temporary_node():
    env = Env(socket_in_config=False)  # the sidecar binds its default path, $RUNTIME_DIRECTORY/node.sock
    try:
        peer = env.start_peer("--echo")
        run = zmqa(env, "request", "--to", env.peer_contact, '{"q": 1}')  # no sidecar yet: a temporary node
        assert run.returncode == 0 and json.loads(run.stdout) == {"q": 1}, run.stderr
        env.start_sidecar()
        assert os.path.exists(env.dir / "node.sock")
        run = zmqa(env, "request", "--to", env.peer_contact, '{"q": 2}')
        assert run.returncode == 0 and json.loads(run.stdout) == {"q": 2}, run.stderr
        assert env.status()["local_api"]["requests"] == 1  # it went through the sidecar
        run = zmqa(env, "request", "--to", env.peer_contact, input='"a"\n"b"\n')
        lines = [json.loads(line) for line in run.stdout.splitlines()]
        assert run.returncode == 0 and [line["reply"] for line in lines] == ["a", "b"]
        assert env.status()["local_api"]["requests"] == 3
        run = zmqa(env, "send", "--to", env.peer_contact, '{"n": 5}')
        assert run.returncode == 0 and env.status()["outbox"]["accepted"] == 1
        assert collect(peer, 1, 20) == [5]
        run = zmqa(env, "send", "--direct", "--to", env.peer_contact, '{"n": 6}')  # --direct: our own node
        assert run.returncode == 0 and env.status()["outbox"]["accepted"] == 1
        assert collect(peer, 1, 20) == [6]
    finally:
        env.close()


def test_cli_socket_flag_without_a_sidecar_is_a_clear_error(tmp_path):
    env = Env()
    try:
        run = zmqa(env, "send", "--socket", str(tmp_path / "none.sock"), "--to", env.peer_contact, "x")
        assert run.returncode == 1 and "no sidecar is listening on" in run.stderr
        run = zmqa(env, "send", "--socket", str(tmp_path / "none.sock"), "--to", "not-an-id", "x")
        assert run.returncode != 0
    finally:
        env.close()


@pytest.mark.timeout(60)
def test_spool_corrupted_in_the_middle_while_down_loses_only_the_damaged_record():
    env = Env()
    try:
        sidecar = env.start_sidecar()
        env.send(50)
        env.kill9(sidecar)
        (segment,) = (env.dir / "spool").glob("*.seg")
        data = bytearray(segment.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the file (a bad sector)
        segment.write_bytes(bytes(data))
        env.start_sidecar()
        outbox = env.status()["outbox"]
        assert outbox["spool_corrupt_regions"] == 1 and outbox["queued"] == 49  # logged, counted, skipped
        peer = env.start_peer()
        got = collect(peer, 49, 30)
        assert len(got) == len(set(got)) == 49  # everything else arrives, once
    finally:
        env.close()


@pytest.mark.timeout(60)
def test_sigterm_drains_for_a_bounded_time_then_keeps_the_rest_for_the_next_start():
    env = Env()
    try:
        sidecar = env.start_sidecar()
        env.send(20)  # the peer is down: nothing can drain
        started = time.monotonic()
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(10) == 0
        assert time.monotonic() - started < 5  # drain_timeout = 1 s, then out
        assert b"not acknowledged within" in sidecar.stderr.read()
        env.start_sidecar()
        peer = env.start_peer()
        got = collect(peer, 20, 30)
        assert sorted(got) == list(range(20))
    finally:
        env.close()


@pytest.mark.timeout(60)
def test_example_client_against_a_sidecar_process():
    example = Path(__file__).resolve().parents[2] / "examples" / "local_client.py"
    env = Env()
    try:
        env.start_sidecar()
        run = subprocess.run([sys.executable, str(example), env.sock, "send", env.peer_contact, '{"n": 1}'],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0 and json.loads(run.stdout)["result"] == "accepted", run.stderr
        peer = env.start_peer()
        assert collect(peer, 1, 20) == [1]
        sidecar_contact = env.status()["contact"]
        run = zmqa(env, "send", "--direct", "--to", sidecar_contact, '{"n": 2}')  # something for the app
        assert run.returncode == 0, run.stderr
        run = subprocess.run([sys.executable, str(example), env.sock, "receive", "1"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["body"] == {"n": 2}
    finally:
        env.close()
