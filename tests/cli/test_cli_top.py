"""`zmqagents top` and `zmqagents members` run as a user runs them, against a real sidecar process
with real peer processes, a real node reached by its contact, a real terminal (a pty), and
hostile answerers: a fake sidecar on the socket and a node whose table is garbage."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from helpers.cli import CLI, zmqa
from helpers.sidecar_proc import sidecar_mesh


@pytest.fixture(scope="module")
def mesh():
    with sidecar_mesh(peers=2) as found:
        yield found


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.timeout(60)
def test_members_lists_every_peer_in_serf_columns_and_filters(mesh):
    work, sock, _, peer_files = mesh
    ids = {Path(f).read_text().strip() for f in peer_files}
    out = zmqa("members", "--socket", str(sock), "--json")
    assert out.returncode == 0, out.stderr
    rows = lines(out.stdout)
    assert {r["contact"] for r in rows} == ids
    for row in rows:
        assert row["state"] == "alive" and row["in_table"] and row["rtt_ms"] > 0 and row["age_s"] >= 0
        assert set(row) == {"node_id", "contact", "state", "incarnation", "rtt_ms", "age_s", "in_table", "fails", "tags"}

    table = zmqa("members", "--socket", str(sock))
    assert table.returncode == 0, table.stderr
    head, *body = table.stdout.splitlines()
    assert head.split()[:4] == ["NODE", "ADDRESS", "STATE", "INC"] and "TAGS" in head
    assert sorted(line.split()[0] for line in body) == sorted(r["node_id"][:12] for r in rows)
    assert all(line.split()[2] == "alive" for line in body)

    one = rows[0]
    by_name = lines(zmqa("members", "--socket", str(sock), "--json", "--name", one["node_id"][:10] + "*").stdout)
    assert [r["node_id"] for r in by_name] == [one["node_id"]]
    port = one["contact"].rsplit(":", 1)[1]
    assert [r["node_id"] for r in lines(zmqa("members", "--socket", str(sock), "--json", "--name", f"*:{port}").stdout)] \
        == [one["node_id"]]
    assert lines(zmqa("members", "--socket", str(sock), "--json", "--state", "suspect,dead").stdout) == []
    assert len(lines(zmqa("members", "--socket", str(sock), "--json", "--state", "left", "--state", "alive").stdout)) == 2

    bad = zmqa("members", "--socket", str(sock), "--state", "sleeping")
    assert bad.returncode == 2 and "sleeping" in bad.stderr and "alive" in bad.stderr


@pytest.mark.timeout(60)
def test_top_once_json_gives_rates_traffic_drops_queues_and_peers(mesh):
    _, sock, _, peer_files = mesh
    out = zmqa("top", "--socket", str(sock), "--once", "--json", "--interval", "1.5")
    assert out.returncode == 0, out.stderr
    (frame,) = lines(out.stdout)
    assert frame["source"] == "sidecar" and frame["interval_s"] == 1.5
    assert frame["peer_states"]["alive"] == 2 and frame["peers_total"] == 2
    assert {p["contact"] for p in frame["peers"]} == {Path(f).read_text().strip() for f in peer_files}
    rates = frame["rates"]
    # two peers probe the sidecar and it probes them: SWIM traffic flows both ways every period
    assert rates["messages_in_per_s"] > 0 and rates["messages_out_per_s"] > 0
    assert rates["bytes_in_per_s"] > rates["messages_in_per_s"]
    assert all(v is None or v >= 0 for v in rates.values())
    assert frame["traffic"]["messages_in"] >= rates["messages_in_per_s"]
    assert {"inbox_messages", "unacked_messages", "outbox_queued", "inbound_queued"} <= set(frame["queues"])
    assert frame["connections"]["inbound"] >= 2
    assert all(d["count"] > 0 for d in frame["drops"])  # only drop counters that moved are listed
    for key in ("messages_in", "messages_out", "bytes_in", "bytes_out"):  # per peer, within the node's
        per_peer = [p[f"{key}_per_s"] for p in frame["peers"]]
        assert all(v is not None and v >= 0 for v in per_peer), frame["peers"]
        assert sum(per_peer) <= rates[f"{key}_per_s"] + 1e-6
    assert sum(p["messages_in_per_s"] for p in frame["peers"]) > 0  # both peers probe the sidecar


@pytest.mark.timeout(60)
def test_top_writes_plain_frames_when_stdout_is_not_a_terminal(mesh):
    _, sock, _, _ = mesh
    out = zmqa("top", "--socket", str(sock), "-n", "2", "--interval", "0.3")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout
    frames = out.stdout.split("zmqagents top  node ")[1:]
    assert len(frames) == 2 and out.stdout.startswith("zmqagents top  node ")
    for frame in frames:
        assert "msg/s" in frame and "\nNODE " in frame
        assert sum(" alive " in line for line in frame.splitlines()) == 2


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while needle not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not seen in {got[-2000:]!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
    return got


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.mark.timeout(60)
def test_top_on_a_terminal_redraws_in_place_follows_a_resize_and_quits_on_sigint(mesh):
    _, sock, _, _ = mesh
    master, slave = pty.openpty()
    _winsize(slave, 40, 200)
    proc = subprocess.Popen(CLI + ["top", "--socket", str(sock), "--interval", "0.3"], stdin=slave, stdout=slave,
                            stderr=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    try:
        first = _read_until(master, b"\x1b[J", 15)
        assert first.startswith(b"\x1b[?1049h\x1b[?25l")  # alternate screen, cursor hidden
        assert b"\x1b[H" in first and b"NODE " in first
        _read_until(master, b"\x1b[H", 5)  # a second frame, drawn over the first
        # Shrink to 11 lines x 50 columns: the next frame is cut to fit, and says peers were left out.
        _winsize(master, 11, 50)
        proc.send_signal(signal.SIGWINCH)
        small = _read_until(master, b"more peer(s)", 10)
        last = small[small.rindex(b"\x1b[H") + 3:small.rindex(b"\x1b[J")]
        drawn = [line.strip(b"\r\n") for line in last.split(b"\x1b[K")][:-1]
        assert len(drawn) == 10 and all(len(line) <= 50 for line in drawn), drawn
        assert drawn[-1].startswith(b"... ") and b"more peer(s)" in drawn[-1]
        proc.send_signal(signal.SIGINT)
        rest = _read_until(master, b"\x1b[?1049l", 10)  # the terminal given back as it was
        assert rest.endswith(b"\x1b[?25h\x1b[?1049l")
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(master)


@pytest.mark.timeout(60)
def test_members_and_top_through_a_contact_show_that_nodes_table(mesh):
    _, _, sidecar_contact, peer_files = mesh
    out = zmqa("members", "--to", f"@{peer_files[0]}", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = lines(out.stdout)  # a peer knows only the sidecar (the other peer was never introduced)
    assert row["contact"] == sidecar_contact.read_text().strip() and row["state"] in ("alive", "unprobed")
    top = zmqa("top", "--to", f"@{peer_files[0]}", "--once", "--json")
    assert top.returncode == 0, top.stderr
    (frame,) = lines(top.stdout)
    assert frame["source"] == "contact" and frame["contact"] == Path(peer_files[0]).read_text().strip()
    assert [p["contact"] for p in frame["peers"]] == [row["contact"]] and "rates" not in frame
    both = zmqa("members", "--to", f"@{peer_files[0]}", "--socket", "/tmp/x.sock")
    assert both.returncode == 2 and "not both" in both.stderr


@pytest.mark.timeout(60)
def test_a_peer_that_leaves_is_listed_as_left():
    with sidecar_mesh(peers=1) as (work, sock, _, peer_files):
        contact = Path(peer_files[0]).read_text().strip()
        pid = next(int(p) for p in _pids_with(str(peer_files[0])))
        os.kill(pid, signal.SIGTERM)  # a graceful stop announces the leave
        deadline = time.monotonic() + 20
        while True:
            rows = lines(zmqa("members", "--socket", str(sock), "--json", "--state", "left").stdout)
            if rows:
                break
            assert time.monotonic() < deadline, "the leave never showed"
            time.sleep(0.2)
        assert [r["node_id"] for r in rows] == [contact_node_id(contact)] and rows[0]["in_table"] is False


def contact_node_id(contact: str) -> str:
    from zmqagents.identity import Contact

    return Contact.parse(contact).node_id.hex()


def _pids_with(arg: str) -> list[str]:
    """PIDs of our own children whose command line holds ``arg`` (the peer this test started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if arg.encode() in (entry / "cmdline").read_bytes() and \
                        int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    out.append(entry.name)
            except (OSError, ValueError, IndexError):
                continue
    return out


# -- hostile answerers ------------------------------------------------------------------------------

class FakeSidecar:
    """A ROUTER on a unix socket that answers every frame with ``answer(request envelope)``."""

    def __init__(self, path: Path, answer):
        self.path = path
        self.answer = answer
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"ipc://{path}")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                rid, frame = self.sock.recv_multipart()
                req = msgpack.unpackb(frame[4:])
                reply = self.answer(req)
                if reply is not None:
                    self.sock.send_multipart([rid, reply])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        self.ctx.term()


def envelope(t: str, body, re: bytes | None) -> bytes:
    payload = msgpack.packb({"v": 1, "id": os.urandom(16), "src": bytes(32), "t": t, "b": body, "re": re})
    return struct.pack(">I", len(payload)) + payload


def good_row(i: int) -> dict:
    from zmqagents.identity import Contact, Identity

    ident = Identity.generate()
    return {"node_id": ident.node_id.hex(), "contact": str(Contact(ident.public_key, f"tcp://127.0.0.1:{7000 + i}")),
            "state": "alive", "incarnation": 0, "rtt_ms": 1.0, "age_s": 0.5, "in_table": True, "fails": 0, "tags": []}


CASES = {
    "garbage": (lambda req: b"\x00\x00\x00\x05hello", 1, "not a valid envelope"),
    "huge table": (lambda req: envelope("members", {"members": [good_row(0)] * 1500, "total": 1500}, req["id"]),
                   1, "TooManyValues"),  # 1500 rows x 21 values: over the decoder's 16,384 before any is built
    "oversize frame": (lambda req: envelope("members", {"members": [good_row(0)] * 20000, "total": 20000}, req["id"]),
                       1, "over the 4 MiB"),  # ~5 MB: libzmq cuts the connection (MAXMSGSIZE)
    "escape sequence": (lambda req: envelope("members", {"members": [{**good_row(0), "state": "\x1b[2Jalive"}],
                                                          "total": 1}, req["id"]), 1, "is not a name"),
    "forged contact": (lambda req: envelope("members", {"members": [{**good_row(0), "contact": good_row(1)["contact"]}],
                                                         "total": 1}, req["id"]), 1, "another node's key"),
    "wrong type": (lambda req: envelope("members", [1, 2, 3], req["id"]), 1, "must be a map"),
    "old sidecar": (lambda req: envelope("error", {"code": "unknown_op", "error": "unknown operation 'members'\x1b[2J"},
                                         req["id"]), 1, "upgrade it"),
    "silence": (lambda req: None, 124, "did not answer"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_sidecar_gets_one_clear_error_line(tmp_path, case):
    answer, code, text = CASES[case]
    fake = FakeSidecar(tmp_path / "s.sock", answer)
    try:
        out = zmqa("members", "--socket", str(tmp_path / "s.sock"), "--timeout", "1")
        assert out.returncode == code, (out.returncode, out.stderr)
        assert out.stdout == "" and text in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "\x1b" not in out.stderr
        if case == "huge table":
            top = zmqa("top", "--socket", str(tmp_path / "s.sock"), "--once", "--timeout", "1")
            assert top.returncode == 1 and "top" in top.stderr  # top's own question, answered with garbage
    finally:
        fake.close()


HOSTILE_NODE = textwrap.dedent("""\
    import asyncio, sys
    from zmqagents.node import Node

    class Hostile(Node):
        def peers(self):  # what this node answers to zmqagents.peers
            return {MODE!r} == "rows" and [{"node_id": "zz" * 32, "contact": 5}] * 3 or "not a table"

    async def main():
        async with Hostile(listen="tcp://127.0.0.1:0") as n:
            print(str(n.contact), flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode, text", [("rows", "row 0: 'node_id' is not 64"), ("text", "not an array")])
def test_a_node_answering_a_garbage_table_gets_one_clear_error_line(mode, text):
    proc = subprocess.Popen([sys.executable, "-c", HOSTILE_NODE.replace("{MODE!r}", repr(mode))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        contact = proc.stdout.readline().strip()
        for command in (["members"], ["top", "--once"]):
            out = zmqa(*command, "--to", contact, "--timeout", "5")
            assert out.returncode == 1 and text in out.stderr and "Traceback" not in out.stderr, out.stderr
    finally:
        proc.kill()
        proc.wait()


def test_no_sidecar_and_no_contact_are_clear_usage_errors(tmp_path):
    gone = zmqa("members", "--socket", str(tmp_path / "none.sock"))
    assert gone.returncode == 1 and "no sidecar is listening" in gone.stderr and "--to CONTACT" in gone.stderr
    nothing = subprocess.run(CLI + ["top", "--once"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "ZMQAGENTS_LOCAL_API_PATH": ""})
    assert nothing.returncode == 2 and "no sidecar listens at" in nothing.stderr
    key_alone = zmqa("members", "--key", str(tmp_path / "k"))
    assert key_alone.returncode == 2 and "--to" in key_alone.stderr
