"""Hostile peers against a real sidecar: memory under the worst valid envelopes, and an honest peer's
latency while another peer floods.

    python bench/hostile.py [--quick] [--attackers N] [--seconds S]

The node under test is the real sidecar process (``python -m zmqagents.launch node --config``, what
the ``zmqagents`` console script runs) with the default configuration: only the files go to a
temporary directory, and mDNS is off (it needs multicast on the interface). Its peers are child
processes of this script:

* ``attacker``: raw pyzmq, written from ``protocols/`` only. Each of its identities opens a CURVE
  DEALER with its own key and sends well-formed, correctly sequenced envelopes of type ``msg``
  shaped to cost the receiver as much memory as the limits let through:

  - ``values``: bodies of empty maps, as many as ``max_values`` allows (~16 KiB on the wire,
    ~1.6 MB decoded);
  - ``wide``: near-1 MiB strings made 4 bytes a character by one emoji (~4 MiB decoded);
  - ``gap``: like ``values`` but never sending seq 1, so everything waits in reorder buffers;
  - ``flood``: small messages, each the first of a newer stream (a higher epoch, seq 1), so none
    waits behind one the sidecar refused (the flooder retransmits nothing);
  - ``ask`` (not in the default mix: ``--shapes values,wide,gap,ask``): requests the node answers
    itself (``zmqagents.peers``), ``ASK_RATE`` a second per identity, from a routing id the node
    answers over, never reading a reply (a receive queue of one message, a 4 KiB socket buffer): the
    replies and their retransmissions pile up on the node's side of the connection.

  A memory attacker never reads what the sidecar sends back (its acks pile up on the sidecar's
  side of the connection too); the flooder drains them.
* ``honest``: a zmqagents Node that asks the sidecar for its peers (``zmqagents.peers``, answered by
  the node itself) every 20 ms and reports the round-trip latencies.
* ``consumer``: a local application on the sidecar's unix socket taking every message delivered,
  and counting them per sender.

Sequence: the honest peer's latency alone (the reference); the memory attack (every shape at once,
from ``--attackers`` identities each, nobody consuming, so the inbox fills: the peak RSS); the
consumer takes what the attack left in the inbox (``attack_backlog_taken_s``); a flood from one
identity (``--flood-rate``, 20,000 a second) while the consumer takes everything and the honest peer
measures (the flooder's accepted rate is what the consumer received from it); then everybody stops,
the consumer drains, and the RSS after the drain is read.

JSON keys: ``hostile_peak_rss_mb`` (VmHWM of the sidecar over the whole run), ``peak_rss_mb_attack`` and
``peak_rss_mb_flood`` (the same, each phase alone: the kernel's VmHWM is reset at its start), ``peak_rss_mb_backlog``
(while the consumer takes what the attack left in the inbox, before the flood), ``rss_after_drain_mb``,
``idle_rss_mb`` (before any attack), ``honest_p50_ms``/``honest_p99_ms`` (reference, no flood),
``honest_p50_ms_during_flood``/``honest_p99_ms_during_flood``, ``flood_sent_per_s``,
``flood_accepted_per_s``, the sidecar's drop counters and the refusals by reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    BenchError, BoxLoad, Child, _die_with_parent, failed, log, emit, percentile, rss_kb, run, serve_commands,
    stop_all,
)

SCRIPT = Path(__file__).resolve()
MB = 1024.0
SHAPES = ("values", "wide", "gap")
ASK_RATE = 5000.0  # requests a second per ``ask`` identity (the per-peer limits would admit 50,000)


def vm_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


# -- attacker --------------------------------------------------------------------------------------


def _body(shape: str):
    from zmqagents.envelope import DEFAULT_MAX_SIZE, DEFAULT_MAX_VALUES

    if shape == "wide":
        return "a" * (DEFAULT_MAX_SIZE - 1024) + "\U0001F600"
    if shape == "flood":
        return "x" * 100
    if shape == "ask":
        return None
    return [{} for _ in range(DEFAULT_MAX_VALUES - 17)]  # the map, its 8 fields (16 values), the body


def _frame(src: bytes, dst: bytes, seq: int, ep: int, body: bytes, typ: str = "msg") -> bytes:
    """An envelope's frame around an already packed body (the attacker packs each body once)."""
    import msgpack

    from zmqagents.envelope import HEADER

    head = msgpack.packb({"v": 1, "id": os.urandom(16), "src": src, "t": typ, "dst": dst, "seq": seq, "ep": ep},
                         use_bin_type=True)
    payload = bytes([head[0] + 1]) + head[1:] + msgpack.packb("b") + body  # a fixmap of 7 entries -> 8
    return HEADER.pack(len(payload)) + payload


async def role_attacker(args) -> None:
    """``--identities`` peers for each of ``--shapes``, each sending at ``--rates`` (one per shape) a second."""
    import msgpack
    import zmq

    from zmqagents.envelope import decode
    from zmqagents.identity import Contact, Identity, curve_public_of
    from zmqagents.node import PEERS

    target = Contact.parse(args.contact)
    ctx = zmq.Context(io_threads=1)
    peers = []  # [identity, socket, next seq, packed body, rate, sent, type]
    for shape, rate in zip(args.shapes.split(","), map(float, args.rates.split(","))):
        body = msgpack.packb(_body(shape), use_bin_type=True)
        typ = PEERS if shape == "ask" else "msg"
        for _ in range(args.identities):
            ident = Identity.generate()
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndhwm = 1000
            sock.curve_secretkey = ident.curve_secret
            sock.curve_publickey = ident.curve_public
            sock.curve_serverkey = curve_public_of(target.public_key)
            if shape == "ask":  # answered over this connection (a key alone is never answered over), never read
                sock.setsockopt(zmq.ROUTING_ID, ident.public_key + os.urandom(16))
                sock.rcvhwm = 1
                sock.setsockopt(zmq.RCVBUF, 4096)
            else:
                sock.setsockopt(zmq.ROUTING_ID, ident.public_key)
            sock.connect(target.endpoint)
            peers.append([ident, sock, 2 if shape == "gap" else 1, body, rate, 0, typ])
        decode(_frame(ident.node_id, target.node_id, 1, 7, body, typ))  # valid, within every default limit
    frames: list[bytes] = []
    if args.shapes == "flood":  # made before the clock starts: the flood is limited by sending only
        ident, body = peers[0][0], peers[0][3]
        frames = [_frame(ident.node_id, target.node_id, 1, 1000 + i, body)  # each a newer stream
                  for i in range(int(peers[0][4] * args.seconds))]
    sent = read = 0
    emit({"event": "ready"})
    start = time.monotonic()
    deadline = start + args.seconds
    while (now := time.monotonic()) < deadline:
        wait = 0.05
        for peer in peers:
            ident, sock, seq, body, rate, done, typ = peer
            due = int((now - start) * rate)  # paced: this peer's sends so far should be this many
            while done < due:
                frame = frames[done] if frames else _frame(ident.node_id, target.node_id, seq, 7, body, typ)
                try:
                    sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    break
                done += 1
                seq += 1
                if done % 256 == 0:
                    await asyncio.sleep(0)
                if done >= len(frames) > 0:
                    break
            sent += done - peer[5]
            peer[2], peer[5] = seq, done
            wait = min(wait, (done + 1) / rate - (now - start))
            if args.drain:
                while True:
                    try:
                        sock.recv(zmq.NOBLOCK)
                        read += 1
                    except zmq.Again:
                        break
        if sent >= len(frames) > 0:
            break
        await asyncio.sleep(max(0.0005, wait))
    emit({"event": "done", "sent": sent, "read": read, "seconds": time.monotonic() - start})
    for peer in peers:
        peer[1].close()
    ctx.term()


# -- honest peer -------------------------------------------------------------------------------------


async def role_honest(args) -> None:
    from zmqagents.identity import Contact
    from zmqagents.node import PEERS, Node

    target = Contact.parse(args.contact)
    async with Node(peers=[target]) as node:

        async def window(cmd: dict) -> dict:
            lat: list[float] = []
            errors = 0
            end = time.monotonic() + cmd["seconds"]
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    await node.request(target.node_id, None, type=PEERS, timeout=5)
                    lat.append((time.perf_counter() - t0) * 1000)
                except Exception:  # a timeout is the result, counted
                    errors += 1
                await asyncio.sleep(max(0.0, 0.02 - (time.perf_counter() - t0)))
            lat.sort()
            return {"n": len(lat), "errors": errors, "p50_ms": percentile(lat, 0.5) if lat else None,
                    "p99_ms": percentile(lat, 0.99) if lat else None, "max_ms": lat[-1] if lat else None}

        emit({"event": "ready"})
        await serve_commands({"window": window})


# -- local consumer -----------------------------------------------------------------------------------


def role_consumer(args) -> None:
    """A local application taking every message: plain pyzmq and one poll loop over its socket and stdin."""
    import zmq

    from zmqagents.envelope import Envelope, decode

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"ipc://{args.socket}")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, zmq.POLLIN)
    counts: dict[str, int] = {}
    waiting: dict[bytes, str] = {}  # ask id -> the command answered when it comes back
    taking = False
    owed = 0
    buf = b""

    def ask(op: str, body=None, command: str = "") -> None:
        env = Envelope(os.urandom(16), bytes(32), op, body)
        if command:
            waiting[env.id] = command
        sock.send(env.encode())

    emit({"event": "ready"})
    while True:
        events = dict(poller.poll(1000))
        if events.get(sock):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                env = decode(frame, max_size=1 << 24, max_values=1 << 20)
                if env.re is not None:
                    command = waiting.pop(env.re, None)
                    if command == "take":
                        emit({"event": "taking"})
                    elif command == "status":
                        emit({"counts": dict(counts), "status": env.body})
                    continue
                counts[env.src.hex()] = counts.get(env.src.hex(), 0) + 1
                owed += 1
                if taking and owed >= 500:
                    owed = 0
                    ask("receive", {"credit": 500})
        if events.get(stdin):
            data = os.read(stdin, 65536)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                cmd = json.loads(line)["cmd"]
                if cmd == "take":
                    taking = True
                    ask("receive", {"credit": 2000}, "take")
                elif cmd == "status":
                    ask("status", None, "status")
    sock.close()
    ctx.term()


# -- orchestrator ---------------------------------------------------------------------------------------


def _start_sidecar(work: Path, link_read_ahead: int | None = None, tree: Path | None = None,
                   settings: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str, Path]:
    """The sidecar under test, its contact and its local API socket. ``settings``: extra
    ``SECTION.KEY=VALUE`` lines of its configuration (TOML values), for runs that compare settings."""
    toml = work / "node.toml"
    sock = work / "node.sock"
    sections: dict[str, list[str]] = {
        "node": [f'key = "{work}/node.key"', 'listen = "tcp://127.0.0.1:0"', f'contact_file = "{work}/contact"'],
        "local_api": [f'path = "{sock}"'], "spool": [f'dir = "{work}/spool"'], "mdns": ["enabled = false"],
        "limits": [] if link_read_ahead is None else [f"link_read_ahead = {link_read_ahead}"],
        "log": ['level = "warning"']}
    for setting in settings:
        key, _, value = setting.partition("=")
        section, _, name = key.strip().partition(".")
        if not name or not value:
            raise BenchError(f"--set wants SECTION.KEY=VALUE, got {setting!r}")
        sections.setdefault(section, []).append(f"{name} = {value.strip()}")
    toml.write_text("\n".join(line for name, lines in sections.items() for line in [f"[{name}]", *lines]) + "\n")
    err = open(work / "node.log", "w")
    # tree: another checkout's zmqagents (--baseline): `python -m` from there imports that one
    proc = subprocess.Popen([sys.executable, "-m", "zmqagents.launch", "node", "--config", str(toml)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                            preexec_fn=_die_with_parent, cwd=tree)
    deadline = time.monotonic() + 30
    contact_file = work / "contact"
    while not contact_file.exists() or not contact_file.read_text().strip():
        if proc.poll() is not None:
            raise BenchError(f"the sidecar exited with {proc.returncode}: {(work / 'node.log').read_text()[-500:]}")
        if time.monotonic() > deadline:
            raise BenchError("the sidecar wrote no contact file within 30 s")
        time.sleep(0.01)
    while not sock.exists():
        time.sleep(0.01)
    return proc, contact_file.read_text().strip(), sock


def _paced_rate(shape: str, factor: float) -> float:
    """Messages a second per identity: ``factor`` times what the default per-peer limits let through
    (``ask``: ``ASK_RATE``)."""
    if shape == "ask":
        return ASK_RATE
    import msgpack

    from zmqagents.core.ratelimit import RateLimitConfig
    from zmqagents.envelope import ENVELOPE_COST, decode

    frame = _frame(bytes(32), bytes(32), 1, 7, msgpack.packb(_body(shape), use_bin_type=True))
    charged = len(frame) + max(0, decode(frame).cost - len(frame) - ENVELOPE_COST)  # as the transport charges
    cfg = RateLimitConfig()
    return factor * min(cfg.messages, cfg.bytes / charged)


def _watch_rss(pid: int, seconds: float, peak: list[float]) -> float:
    """Sample the RSS every 50 ms for ``seconds`` into ``peak[0]``; the phase's own peak in MB: the
    kernel's high-water mark since :func:`_reset_hwm` when it could be reset, else the sampled one."""
    peak[0] = max(peak[0], vm_kb(pid, "VmHWM") / MB)  # everything since the last reset (or the start)
    reset = _reset_hwm(pid)
    phase = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        phase = max(phase, rss_kb(pid) / MB)
        time.sleep(0.05)
    if reset:
        phase = max(phase, vm_kb(pid, "VmHWM") / MB)
    peak[0] = max(peak[0], phase)
    return phase


def _reset_hwm(pid: int) -> bool:
    """Start the process's VmHWM again from its current RSS (/proc/PID/clear_refs, value 5), so that
    each phase's peak is its own, not the run's. False where the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def orchestrate(args) -> int:
    """One run of the sequence against this checkout's sidecar; with ``--baseline DIR``, ``--rounds``
    rounds of a run against DIR's sidecar then one against this checkout's, on the same box in turn."""
    load = BoxLoad()
    trees: list[tuple[str, Path | None]] = [("current", None)]
    if args.baseline:
        trees.insert(0, ("baseline", Path(args.baseline).resolve()))
    runs: list[dict] = []
    try:
        for _ in range(args.rounds):
            for name, tree in trees:
                children: list[Child] = []
                try:
                    with tempfile.TemporaryDirectory(prefix="zmqa-hostile-") as tmp:
                        work = Path(tmp)
                        try:
                            out = _orchestrate(args, work, children, tree)
                        except BenchError:
                            log("the sidecar's log ends with:\n" + (work / "node.log").read_text()[-2000:])
                            raise
                finally:
                    stop_all(children)
                out["tree"] = name if tree is None else f"{name} ({tree})"
                log(f"{name}: peak {out['hostile_peak_rss_mb']} MB, p99 during flood "
                    f"{out['honest_p99_ms_during_flood']} ms, flood accepted {out['flood_accepted_per_s']}/s")
                runs.append(out)
    except BenchError as exc:
        return failed("hostile", exc, [])
    current = [r for r in runs if r["tree"] == "current"]
    # The headline keys are this checkout's worst run: the peaks and the p99 are bounds to meet.
    out = dict(max(current, key=lambda r: r["hostile_peak_rss_mb"]))
    for key in ("honest_p99_ms_during_flood", "honest_p99_ms_during_attack", "peak_rss_mb_attack", "peak_rss_mb_backlog",
                "peak_rss_mb_flood", "rss_after_drain_mb"):
        values = [r[key] for r in current if r[key] is not None]
        out[key] = max(values) if values else None
    out["env"] = load.report()
    if len(runs) > 1:
        out["runs"] = runs
    print(json.dumps(out, indent=2))
    return 0


def _orchestrate(args, work: Path, children: list[Child], tree: Path | None) -> dict:
    load = BoxLoad()
    proc = None
    try:
        if True:
            proc, contact, sock = _start_sidecar(work, args.link_read_ahead, tree, tuple(args.set))
            consumer = Child(SCRIPT, "consumer", f"--socket={sock}", name="consumer")
            honest = Child(SCRIPT, "honest", f"--contact={contact}", name="honest")
            children += [consumer, honest]
            for child in (consumer, honest):
                child.read(30)
            time.sleep(args.settle)
            idle_rss = rss_kb(proc.pid) / MB
            honest.send({"cmd": "window", "seconds": args.seconds})
            reference = honest.read(args.seconds + 30)
            log(f"idle {idle_rss:.1f} MB; honest alone p50 {reference['p50_ms']:.2f} ms p99 {reference['p99_ms']:.2f} ms")

            # The memory attack: every shape at once, nobody consuming, the honest peer measuring.
            shapes = args.shapes.split(",")
            rates = ",".join(str(_paced_rate(shape, args.factor)) for shape in shapes)
            attackers = [Child(SCRIPT, "attacker", f"--contact={contact}", f"--shapes={args.shapes}",
                               f"--rates={rates}", f"--identities={args.attackers}", f"--seconds={args.seconds}",
                               name="attacker")]
            children += attackers
            for a in attackers:
                a.read(60)
            honest.send({"cmd": "window", "seconds": args.seconds})
            peak = [0.0]
            attack_peak = _watch_rss(proc.pid, args.seconds, peak)
            under_attack = honest.read(60)
            sent = {a.name: a.read(60) for a in attackers}
            consumer.send({"cmd": "status"})
            mid = consumer.read(30)["status"]
            rss_after_attack = rss_kb(proc.pid) / MB
            log(f"memory attack: peak {peak[0]:.1f} MB, now {rss_after_attack:.1f} MB; inbox {mid['inbox']}; "
                f"honest p50 {under_attack['p50_ms']} p99 {under_attack['p99_ms']}")

            # The flood: one identity, as fast as it sends; the consumer takes everything. First it takes
            # what the memory attack left accepted (the sidecar's inbound spool keeps it all, in order), so
            # that the flood is measured alone rather than behind that backlog.
            _reset_hwm(proc.pid)  # the peak while the consumer takes the attack's backlog is a phase of its own
            consumer.send({"cmd": "take"})
            consumer.read(30)
            drain_start = time.monotonic()
            while True:
                time.sleep(0.5)
                consumer.send({"cmd": "status"})
                before = consumer.read(30)
                if before["status"]["inbox"] == 0 or time.monotonic() - drain_start > 120:
                    break
            backlog_s = time.monotonic() - drain_start
            backlog_peak = vm_kb(proc.pid, "VmHWM") / MB
            log(f"the memory attack's backlog taken in {backlog_s:.1f} s (inbox {before['status']['inbox']})")
            flood_rate = args.flood_rate if args.flood_factor is None else _paced_rate("flood", args.flood_factor)
            flooder = Child(SCRIPT, "attacker", f"--contact={contact}", "--shapes=flood", "--identities=1",
                            f"--seconds={args.seconds}", f"--rates={flood_rate}", "--drain", name="flooder")
            children.append(flooder)
            flooder.read(60)
            honest.send({"cmd": "window", "seconds": args.seconds})
            flood_peak = _watch_rss(proc.pid, args.seconds, peak)
            during = honest.read(60)
            flood = flooder.read(60)
            consumer.send({"cmd": "status"})
            after = consumer.read(30)
            flood_ids = set(after["counts"]) - set(before["counts"])
            accepted = sum(after["counts"][k] for k in flood_ids)

            # Drain: everybody stops; the consumer takes what is left; the sidecar settles.
            stop_all([a for a in children if a.name.startswith(("attacker", "flooder"))])
            deadline = time.monotonic() + 60
            while True:
                consumer.send({"cmd": "status"})
                st = consumer.read(30)["status"]
                if st["inbox"] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            time.sleep(args.drain_wait)
            rss_after_drain = rss_kb(proc.pid) / MB
            hwm = vm_kb(proc.pid, "VmHWM") / MB  # since the flood phase's reset (or the start)
            drops = st["drops"]
            stop_all(children)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    finally:
        stop_all(children)
        if proc is not None and proc.poll() is None:
            proc.kill()
    out = {
        "benchmark": "hostile",
        "hostile_peak_rss_mb": round(max(hwm, peak[0]), 2),
        "rss_after_drain_mb": round(rss_after_drain, 2),
        "idle_rss_mb": round(idle_rss, 2),
        "rss_after_attack_mb": round(rss_after_attack, 2),
        "peak_rss_mb_attack": round(attack_peak, 2),
        "peak_rss_mb_flood": round(flood_peak, 2),
        "peak_rss_mb_backlog": round(backlog_peak, 2),
        "honest_p50_ms": round(reference["p50_ms"], 3),
        "honest_p99_ms": round(reference["p99_ms"], 3),
        "honest_p50_ms_during_attack": under_attack["p50_ms"] and round(under_attack["p50_ms"], 3),
        "honest_p99_ms_during_attack": under_attack["p99_ms"] and round(under_attack["p99_ms"], 3),
        "honest_p50_ms_during_flood": during["p50_ms"] and round(during["p50_ms"], 3),
        "honest_p99_ms_during_flood": during["p99_ms"] and round(during["p99_ms"], 3),
        "honest_requests": {"alone": reference["n"], "attack": under_attack["n"], "flood": during["n"],
                            "errors": reference["errors"] + under_attack["errors"] + during["errors"]},
        "flood_sent_per_s": round(flood["sent"] / flood["seconds"], 1),
        "flood_accepted_per_s": round(accepted / flood["seconds"], 1),
        "attack_sent": {name: r["sent"] for name, r in sent.items()},
        "inbox_at_attack_end": mid["inbox"],
        "attack_backlog_taken_s": round(backlog_s, 2),
        "inbox_at_flood_start": before["status"]["inbox"],
        "drops": drops,
        "config": {"attackers_per_shape": args.attackers, "factor": args.factor, "flood_factor": args.flood_factor,
                   "flood_rate": args.flood_rate if args.flood_factor is None else None, "seconds": args.seconds, "shapes": args.shapes.split(","),
                   "sidecar": "default config, mdns off" + "".join(
                       f", {s}" for s in ([] if args.link_read_ahead is None
                                          else [f"limits.link_read_ahead={args.link_read_ahead}"]) + args.set)},
        "env": load.report(),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["attacker", "honest", "consumer"], help=argparse.SUPPRESS)
    parser.add_argument("--contact", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)

    parser.add_argument("--identities", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--drain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rates", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="memory attack shapes (default: all)")
    parser.add_argument("--factor", type=float, default=4.0,
                        help="memory attackers send this many times what the per-peer limits admit (default 4)")
    # The flood's rate does not follow the per-peer default, so that runs before and after a change of
    # that default flood alike: 20,000 a second is twice the former default of 10,000, and five times
    # what a default sidecar handles from all its peers.
    parser.add_argument("--flood-rate", type=float, default=20_000.0,
                        help="messages a second the flooder sends (default 20,000)")
    parser.add_argument("--flood-factor", type=float, default=None,
                        help="instead of --flood-rate: this many times the per-peer message limit")
    parser.add_argument("--link-read-ahead", type=int, default=None,
                        help="set the sidecar's [limits] link_read_ahead (default: its default; 10000 was the old one)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting of the sidecar under test (TOML value, repeatable), e.g. spool.fsync='\"never\"'")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run against the sidecar of the checkout in DIR (e.g. a worktree of the previous "
                             "commit), alternating with this one; each run is listed under 'runs'")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each checkout (default 1)")
    parser.add_argument("--quick", action="store_true", help="a short run, for the smoke test")
    parser.add_argument("--attackers", type=int, default=4, help="identities per attack shape (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default 10)")
    parser.add_argument("--settle", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--drain-wait", type=float, default=5.0, help="seconds after the drain before reading RSS")
    args = parser.parse_args(argv)
    if args.role == "attacker":
        run(role_attacker(args))
        return 0
    if args.role == "honest":
        run(role_honest(args))
        return 0
    if args.role == "consumer":
        role_consumer(args)
        return 0
    if args.quick:
        args.seconds, args.attackers, args.settle, args.drain_wait = 2.0, 2, 0.5, 1.0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
