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

It also times raw :class:`~zmqagents.sidecar.spool.Spool` appends in this process (one record
per call and bursts of 256, fsync "batch" and "never"): the spool's own ceiling, apart from the
local API around it.

Prints one JSON object: ``messages``, ``accepted``, ``delivered`` (distinct accepted ids the
peer's application received), ``duplicates`` (deliveries beyond the first of an id), ``missing``
(accepted, never delivered), ``unexpected`` (ids nobody sent), ``seconds`` (from the restart to
the last delivery), ``restart_s`` (from spawning the new process until its socket answers), ``accept_msgs_per_s``
(through the local API, end to end), ``spool_append_per_s`` (bursts of 256, fsync batch) and the
other spool rates, ``ok`` (delivered == accepted == messages, no duplicates, nothing missing or
unexpected), plus ``env``. Progress goes to stderr.

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
        result.update(spool_rates(work, args.spool_records))
        result["ok"] = (result["delivered"] == result["accepted"] == args.messages and result["duplicates"] == 0
                        and result["missing"] == 0 and result["unexpected"] == 0)
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
