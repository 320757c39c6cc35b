#!/usr/bin/env python3
"""The durable outbox under kill -9: nothing accepted is lost, nothing is delivered twice.

What it does, with real processes and files:

1. starts a sidecar (``zmqagents node --config FILE``: local API + outbox + spool, mDNS and admin
   off) with a key file, so its node id survives restarts;
2. a local client (this process, a DEALER on the sidecar's unix socket, speaking
   ``protocols/local-api.md``) sends ``--messages`` N messages, each with its own random id and a
   body ``{"n": i}``, to a peer whose contact is known but which is **not running**, and waits
   until every one is *accepted* (spooled, and fsynced per ``--fsync``);
3. kills the sidecar with SIGKILL (by its PID) while all N are queued;
4. restarts it (same config), then starts the peer: a Node process whose application records
   every message it receives;
5. waits until the peer has N distinct ids (or ``--deadline`` s), lingers 1 s for late duplicates,
   and compares what arrived with what was accepted.

The inbound case, the other side of the same promise (protocols/local-api.md §4.3): a second
sidecar B (fixed port and key, ``[limits] inbox_messages = 20000`` so one sender may hold 10,000)
receives ``--messages`` messages from the first one (through its local API and outbox) while no
application takes them; once B's inbound spool holds all of them (each was acknowledged to the
sender only after it was written there) B is killed with SIGKILL, restarted, and a local client
takes everything with acknowledgements (``receive`` with ``ack``), lingering 1.5 s for late
duplicates. Keys: ``inbound_accepted`` (held by B at the kill: received, spooled, acknowledged),
``inbound_delivered`` (distinct ids the application got, of those sent), ``inbound_duplicates``,
``inbound_missing`` (sent, never handed to the application), ``inbound_restored`` (queued in B's
spool after the restart), ``inbound_seconds`` (restart to the last message), ``inbound_ok``.

It also times raw :class:`~zmqagents.sidecar.spool.Spool` appends in this process (one record
per call and bursts of 256, fsync "batch" and "never"): the spool's own ceiling, apart from the
local API around it.

Prints one JSON object: ``messages``, ``accepted``, ``delivered`` (distinct accepted ids the
peer's application received), ``duplicates`` (deliveries beyond the first of an id), ``missing``
(accepted, never delivered), ``unexpected`` (ids nobody sent), ``seconds`` (from the restart to
the last delivery), ``restart_s`` (from spawning the new process until its socket answers), ``accept_msgs_per_s``
(through the local API, end to end), ``spool_append_per_s`` (bursts of 256, fsync batch) and the
other spool rates, ``ok`` (delivered == accepted == messages, no duplicates, nothing missing or
unexpected) and ``inbound_ok``, plus ``env``. Progress goes to stderr.

    python bench/outbox.py                     # 10,000 messages
    python bench/outbox.py --quick             # 500: what the smoke test runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import BenchError, Child, emit, environment, log, run, stdin_eof  # noqa: E402

SCRIPT = Path(__file__).resolve()
WINDOW = 500  # sends awaiting "accepted" at once (bounded, like a real client)


# -- children ------------------------------------------------------------------------------------------


def role_sidecar(args) -> None:
    """Become ``zmqagents node --config FILE`` in this very process (exec keeps the PID we kill)."""
    os.execv(sys.executable, [sys.executable, "-m", "zmqagents.cli", "node", "--config", args.config])


def role_peer(args) -> None:
    """The destination: a Node whose application records every message; reports at stdin EOF."""
    from zmqagents.identity import Identity
    from zmqagents.node import Node

    async def main() -> None:
        seen: dict[bytes, int] = {}
        async with Node(Identity.load(args.key), listen=args.listen) as node:
            emit({"ready": True})

            async def collect() -> None:
                complete = False
                async for msg in node.messages():
                    seen[msg.id] = seen.get(msg.id, 0) + 1
                    if not complete and len(seen) >= args.expect:
                        complete = True
                        emit({"complete": time.time()})

            task = asyncio.ensure_future(collect())
            await stdin_eof()
            task.cancel()
        emit({"ids": [mid.hex() for mid in seen], "deliveries": sum(seen.values())})

    run(main())


# -- the local client ------------------------------------------------------------------------------------


def envelope(op: str, body=None, **fields) -> tuple[bytes, bytes]:
    import msgpack

    mid = os.urandom(16)
    payload = msgpack.packb({"v": 1, "id": mid, "src": bytes(32), "t": op, "b": body, **fields})
    return mid, struct.pack(">I", len(payload)) + payload


def answer(sock) -> dict:
    import msgpack

    frame = sock.recv()
    return msgpack.unpackb(frame[4:4 + struct.unpack(">I", frame[:4])[0]])


def send_all(path: str, to: str, n: int) -> tuple[list[bytes], float]:
    """Send n messages through the local API; returns the accepted ids and the seconds it took."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{path}")
    accepted: list[bytes] = []
    sent_ids: list[bytes] = []
    start = time.perf_counter()
    try:
        for base in range(0, n, WINDOW):
            sent = []
            for i in range(base, min(n, base + WINDOW)):
                mid, frame = envelope("send", {"n": i}, to=to)
                sock.send(frame)
                sent.append(mid)
            sent_ids += sent
            for _ in sent:
                reply = answer(sock)
                if reply["t"] != "accepted":
                    raise BenchError(f"the sidecar refused a message: {reply.get('b')}")
                accepted.append(reply["re"])
    except zmq.Again:
        raise BenchError("the sidecar did not answer within 30 s") from None
    finally:
        sock.close()
        ctx.term()
    elapsed = time.perf_counter() - start
    if sorted(accepted) != sorted(sent_ids):  # every message answered "accepted", once
        raise BenchError("the accepted answers do not match the messages sent")
    return accepted, elapsed


def status(path: str, timeout_ms: int = 5000) -> dict:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{path}")
    try:
        sock.send(envelope("status")[1])
        return answer(sock)["b"]
    finally:
        sock.close()
        ctx.term()


def wait_listening(path: str, proc: Child, timeout: float) -> float:
    """Seconds until the sidecar answers ``status`` on its socket."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.proc.poll() is not None:
            raise BenchError(f"the sidecar exited with code {proc.proc.returncode} while starting")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            probe.close()
            status(path)
            return time.monotonic() - start
        except (OSError, Exception):
            probe.close()
            time.sleep(0.02)
    raise BenchError(f"the sidecar's socket {path} did not answer within {timeout:.0f} s")


# -- the raw spool --------------------------------------------------------------------------------------


def spool_rates(directory: Path, count: int) -> dict:
    from zmqagents.envelope import Envelope
    from zmqagents.sidecar.spool import Spool, SpoolConfig, encode_record

    out = {}
    dst = bytes(32)
    envs = [Envelope(os.urandom(16), dst, "msg", {"n": i, "text": "x" * 64}, dst) for i in range(count)]
    for policy in ("batch", "never"):
        for burst in (1, 256):
            d = directory / f"raw-{policy}-{burst}"
            spool = Spool(SpoolConfig(str(d), max_bytes=1 << 30, fsync=policy))
            n = count if (policy == "never" or burst > 1) else max(50, count // 20)  # one fsync each: fewer
            start = time.perf_counter()
            for i in range(0, n, burst):
                spool.append(envs[i:i + burst])
            out[f"spool_append_per_s_{policy}_burst{burst}"] = round(n / (time.perf_counter() - start))
            spool.close()
            shutil.rmtree(d)
    out["spool_append_per_s"] = out["spool_append_per_s_batch_burst256"]
    out["spool_record_bytes"] = len(encode_record(envs[0]))
    return out


# -- the inbound case ------------------------------------------------------------------------------------


def receive_all(path: str, want: set[bytes], deadline: float) -> tuple[list[bytes], float | None]:
    """Take messages as an acknowledging application does (``receive`` with ``ack``, acks in batches of
    500), until every id of ``want`` arrived plus 1.5 s; the ids in arrival order and when the last came."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{path}")
    got: list[bytes] = []
    seen: set[bytes] = set()
    unacked: list[bytes] = []
    done_at = None
    try:
        sock.send(envelope("receive", {"credit": 10_000, "ack": True})[1])
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if not sock.poll(100):
                if unacked:
                    sock.send(envelope("ack", {"ids": unacked})[1])
                    unacked = []
                continue
            env = answer(sock)
            if env["t"] != "msg":
                continue
            got.append(env["id"])
            seen.add(env["id"])
            unacked.append(env["id"])
            if len(unacked) >= 500:
                sock.send(envelope("ack", {"ids": unacked})[1])
                unacked = []
            if done_at is None and want <= seen:
                done_at = time.time()
                end = time.monotonic() + 1.5  # late duplicates, if any, arrive here
        if unacked:
            sock.send(envelope("ack", {"ids": unacked})[1])
            sock.poll(2000)
    finally:
        sock.close()
        ctx.term()
    return got, done_at


def inbound_case(args, work: Path, sender_sock: str, children: list) -> dict:
    """Sidecar B holds received-unconsumed messages, is killed with SIGKILL and restarted: the
    application must get every one exactly once."""
    from zmqagents.identity import Contact, Identity

    box = work / "b"
    box.mkdir()
    sock_path = str(box / "b.sock")
    identity = Identity.generate()
    identity.save(box / "b.key")
    port = free_port()
    contact = str(Contact(identity.public_key, f"tcp://127.0.0.1:{port}"))
    config = box / "b.toml"
    config.write_text(
        f'[node]\nkey = "{box / "b.key"}"\nlisten = "tcp://127.0.0.1:{port}"\n'
        f'[local_api]\npath = "{sock_path}"\nmode = 0o600\n'
        f'[spool]\ndir = "{box / "spool"}"\nfsync = "{args.fsync}"\n'
        '[limits]\ninbox_messages = 20000\n[mdns]\nenabled = false\n[admin]\nenabled = false\n')
    receiver = Child(SCRIPT, "sidecar", "--config", str(config), name="receiver")
    children.append(receiver)
    receiver.read(30)
    wait_listening(sock_path, receiver, 30)
    log(f"receiver sidecar pid {receiver.pid} up; {args.messages} messages to it, no application taking them")
    ids, _ = send_all(sender_sock, contact, args.messages)
    start = time.monotonic()
    held = 0
    while time.monotonic() - start < args.deadline:
        held = status(sock_path)["inbound"]["queued"]
        if held >= args.messages:
            break
        time.sleep(0.1)
    log(f"receiver holds {held} in its inbound spool; kill -9 {receiver.pid}")
    os.kill(receiver.pid, signal.SIGKILL)
    receiver.proc.wait(10)
    restart = time.time()
    receiver = Child(SCRIPT, "sidecar", "--config", str(config), name="receiver-restarted")
    children.append(receiver)
    receiver.read(30)
    wait_listening(sock_path, receiver, 30)
    restored = status(sock_path)["inbound"]["queued"]
    log(f"restarted with {restored} waiting; an application takes them")
    sent = set(ids)
    got, done_at = receive_all(sock_path, sent, args.deadline)
    delivered = len(sent.intersection(got))
    result = {
        "inbound_messages": args.messages,
        "inbound_accepted": held,
        "inbound_restored": restored,
        "inbound_delivered": delivered,
        "inbound_duplicates": len(got) - len(set(got)),
        "inbound_missing": len(sent) - delivered,
        "inbound_unexpected": len(set(got) - sent),
        "inbound_seconds": round(done_at - restart, 3) if done_at else None,
    }
    result["inbound_ok"] = (held == delivered == args.messages and result["inbound_duplicates"] == 0
                            and result["inbound_missing"] == 0 and result["inbound_unexpected"] == 0)
    return result


# -- the orchestrator ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orchestrate(args) -> dict:
    from zmqagents.identity import Contact, Identity

    work = Path(tempfile.mkdtemp(prefix="zaob-", dir="/tmp"))  # short: unix socket paths are limited
    children: list[Child] = []
    try:
        sock_path = str(work / "node.sock")
        peer_key = work / "peer.key"
        peer = Identity.generate()
        peer.save(peer_key)
        port = free_port()
        contact = str(Contact(peer.public_key, f"tcp://127.0.0.1:{port}"))
        config = work / "sidecar.toml"
        config.write_text(
            f'[node]\nkey = "{work / "sidecar.key"}"\nlisten = "tcp://127.0.0.1:0"\n'
            f'[local_api]\npath = "{sock_path}"\nmode = 0o600\n'
            f'[spool]\ndir = "{work / "spool"}"\nfsync = "{args.fsync}"\n'
            '[mdns]\nenabled = false\n[admin]\nenabled = false\n')

        sidecar = Child(SCRIPT, "sidecar", "--config", str(config), name="sidecar")
        children.append(sidecar)
        sidecar.read(30)  # {"contact": ...}
        wait_listening(sock_path, sidecar, 30)
        log(f"sidecar pid {sidecar.pid} up; sending {args.messages} messages to a peer that is down")
        ids, accept_s = send_all(sock_path, contact, args.messages)
        queued = status(sock_path)["outbox"]["queued"]
        if queued != args.messages:
            raise BenchError(f"the outbox reports {queued} queued, expected {args.messages}")
        log(f"{len(ids)} accepted in {accept_s:.2f} s; kill -9 {sidecar.pid}")
        os.kill(sidecar.pid, signal.SIGKILL)
        sidecar.proc.wait(10)
        killed_by = -sidecar.proc.returncode

        restart = time.time()
        sidecar = Child(SCRIPT, "sidecar", "--config", str(config), name="sidecar-restarted")
        children.append(sidecar)
        sidecar.read(30)
        wait_listening(sock_path, sidecar, 30)
        restart_s = time.time() - restart
        requeued = status(sock_path)["outbox"]["queued"]
        log(f"restarted (pid {sidecar.pid}) in {restart_s:.2f} s with {requeued} queued; starting the peer")
        receiver = Child(SCRIPT, "peer", "--key", str(peer_key), "--listen", f"tcp://127.0.0.1:{port}",
                         "--expect", str(args.messages), name="peer")
        children.append(receiver)
        receiver.read(30)
        try:
            done_at = receiver.read(args.deadline)["complete"]
        except BenchError as exc:
            log(f"not everything arrived: {exc}")
            done_at = None
        time.sleep(1.0)  # late duplicates, if any, arrive here
        receiver.proc.stdin.close()
        report = receiver.read(30)
        receiver.wait(10)
        final = status(sock_path)["outbox"]

        got = [bytes.fromhex(h) for h in report["ids"]]
        sent = set(ids)
        delivered = len(sent.intersection(got))
        result = {
            "messages": args.messages,
            "accepted": len(ids),
            "queued_before_kill": queued,
            "killed_by_signal": killed_by,
            "queued_after_restart": requeued,
            "delivered": delivered,
            "duplicates": report["deliveries"] - len(got),
            "missing": len(sent) - delivered,
            "unexpected": len(set(got) - sent),
            "seconds": round(done_at - restart, 3) if done_at else None,
            "restart_s": round(restart_s, 3),
            "accept_msgs_per_s": round(len(ids) / accept_s),
            "outbox_queued_at_end": final["queued"],
            "fsync": args.fsync,
        }
        result.update(inbound_case(args, work, sock_path, children))
        result.update(spool_rates(work, args.spool_records))
        result["ok"] = (result["delivered"] == result["accepted"] == args.messages and result["duplicates"] == 0
                        and result["missing"] == 0 and result["unexpected"] == 0 and result["inbound_ok"])
        return result
    finally:
        for child in reversed(children):
            child.kill()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", default="orchestrator", choices=["orchestrator", "sidecar", "peer"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=10_000, help="messages accepted before the kill")
    parser.add_argument("--fsync", default="batch", choices=["always", "batch", "never"], help="[spool] fsync")
    parser.add_argument("--deadline", type=float, default=90.0, help="seconds the peer may take to get everything")
    parser.add_argument("--spool-records", type=int, default=20_000, help="records per raw spool timing")
    parser.add_argument("--quick", action="store_true", help="500 messages, small spool timings (smoke test)")
    args = parser.parse_args(argv)
    if args.role == "sidecar":
        role_sidecar(args)
    elif args.role == "peer":
        role_peer(args)
        return 0
    if args.quick:
        args.messages = min(args.messages, 500)
        args.spool_records = min(args.spool_records, 2000)
        args.deadline = min(args.deadline, 40.0)
    try:
        result = orchestrate(args)
    except BenchError as exc:
        log(f"benchmark invalid: {exc}")
        return 1
    result["env"] = environment()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
