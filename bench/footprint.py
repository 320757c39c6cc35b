#!/usr/bin/env python3
"""Footprint of an idle node: memory, CPU and wire traffic with N connected peers.

What it measures. The node under test runs alone in its own process. It is
started, left to settle, and its RSS is read (``rss_mb_before_peers``). Then
``--peers`` N peer Nodes, spread over one or more *other* processes (at most
50 per process), start with ``peers=[its contact]``: each does a hello
request, so the node under test ends up holding N inbound CURVE connections on
its ROUTER and N SUB sockets connected to the peers' XPUBs. Once every hello
has completed and the links have settled, nothing is sent for ``window_s``
seconds, and over that window we read, from outside the process:

* ``idle_rss_mb`` — VmRSS from /proc/PID/status at the end of the window;
* ``idle_cpu_percent`` — utime+stime from /proc/PID/stat (all threads, clock
  ticks of 1/CLK_TCK s, so the resolution is 100 / (CLK_TCK · window) %);
  ``idle_cpu_percent_precise`` is the same from per-thread schedstat (ns);
* ``idle_bytes_per_s`` — envelope bytes in + out counted by the node's
  transport (``transport.stats``), per second over the window;
  ``idle_wire_bytes_per_s`` is what the kernel counted on the process's TCP
  sockets (``ss -ti`` bytes_sent + bytes_received), so ZMTP/CURVE framing
  and any heartbeat are included.

The raw baseline (``raw_rss_mb``) is a bare Python process that imports zmq,
nacl and msgpack, binds a CURVE ROUTER and an XPUB, watches them from the same
event loop (``zmqagents.node.run``, uvloop when installed) and idles, measured
the same way over the same window: the floor a node cannot go below.

Why: the edge/IoT operator runs a node as a sidecar on a small box; the
issue's aims are ≤ 32 MB RSS and ≤ 0.1 % CPU while idle with 100 peers.

With ``--sidecar`` the node under test is the real sidecar process, ``zmqagents node --config``,
started as the ``zmqagents`` console script starts it (``python -m zmqagents.launch``, which keeps
TLS out of the ``node`` command), measured the same way in three configurations at 0, 100 and 200
peers: ``bare`` (mDNS and the local API off: what the node costs without optional services),
``default`` (the schema's defaults: whatever services they enable; with the loopback inbox these
runs use, ``[mdns] enabled = "auto"`` leaves mDNS off, as it does for a sidecar on its default
listen address) and ``all`` (mDNS forced on and the admin endpoint on as well), plus ``ui_100``: ``all`` at 100 peers with its dashboard opened (the
page and assets fetched, /ui/api/graph polled until its first crawl of the mesh finished) before
the window, since the dashboard costs memory only once requested.
It reports ``rss_mb_<config>_<peers>``, ``idle_cpu_percent`` (the highest of the runs) and
``startup_s`` (spawn to contact file, default config, no peers), and which services each
configuration actually ran (from the sidecar's log). ``kb_per_peer`` is, per run with peers, what
the sidecar grew by from alone to idle with them, divided by their number; ``raw_kb_per_connection``
is the same for a plain pyzmq CURVE ROUTER with as many DEALERs (one frame each), measured in the
same run: what libzmq itself holds per connection (about 32 KiB in libzmq 4.3.5, whatever the HWMs
or SO_SNDBUF/SO_RCVBUF: the two message pipes of a connection are allocated in chunks of 256
messages), which no zmqagents setting reaches; ``raw_zap_kb_per_connection`` the same with a ZAP
handler bound, as every node has (libzmq keeps a pipe to it open for each connection's life: about
10 KiB more). As root it runs inside a network namespace
it creates (loopback with multicast), so mDNS traffic never leaves the box; otherwise mDNS is
turned off and the report says so. In those runs every peer holds only the sidecar as a SWIM
member and probes it every period: N pings per period, a worst case no mesh produces (there a
member is probed about once per period). ``idle_cpu_percent_mesh_rate_100`` is one more run, default
config and 100 peers, whose peers stretch their period 100 times to probe at that mesh rate.

Prints one JSON object on stdout; progress goes to stderr.

    python bench/footprint.py                    # 100 peers, 10 s window
    python bench/footprint.py --quick --peers 5  # what the smoke test runs
    python bench/footprint.py --sidecar          # the sidecar at 0/100/200 peers, two configs
    python bench/footprint.py --sidecar --quick  # 0 and 5 peers, short windows
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CLK_TCK,
    BenchError,
    BoxLoad,
    Child,
    _die_with_parent,
    _local_run,
    cpu_ns,
    cpu_ticks,
    emit,
    environment,
    failed,
    fd_count,
    log,
    loop_name,
    raise_fd_limit,
    rss_kb,
    run,
    stdin_lines,
    stop_all,
    thread_count,
)

SCRIPT = Path(__file__).resolve()
PEERS_PER_PROCESS = 50
MB = 1024  # VmRSS is in KiB; report MiB


# =====================================================================================
# children
# =====================================================================================


async def _commands(handler) -> None:
    """Answer one JSON line per command line on stdin until EOF."""
    async for line in stdin_lines():
        emit(handler(line.decode().strip()))


async def role_target(args) -> None:
    """The node under test: a Node that does nothing but answer hellos; 'stats' on stdin reports."""
    from zmqagents.node import Node, NodeConfig

    config = NodeConfig()
    if args.max_subscribers:
        config.transport.max_subscribers = args.max_subscribers
    async with Node(listen="tcp://127.0.0.1:0", config=config) as node:
        emit({"event": "ready", "contact": str(node.contact), "pid": os.getpid(), "loop": loop_name(),
              "max_subscribers": config.transport.max_subscribers})

        def stats(_cmd: str) -> dict:
            subs = getattr(node.transport, "_subs", None)
            return {
                "event": "stats",
                "neighbours": len(node.neighbours()),
                "sub_sockets": len(subs) if subs is not None else None,
                "inbound": len(getattr(node.transport, "_inbound", ()) or ()),
                "dealers": node.transport.dealer_count,
                "transport": dict(node.transport.stats),
                "drops": dict(node.transport.drops),
                "delivery_pending": node.delivery.pending(),
                "wall": time.time(),
            }

        await _commands(stats)


async def role_peers(args) -> None:
    """``--count`` peer Nodes in this process, each started with peers=[the target's contact]."""
    from zmqagents.node import Node, NodeConfig

    raise_fd_limit()

    def config() -> NodeConfig:
        # --probe-interval: a peer's SWIM period; the sidecar's mesh-rate run stretches it so the N peers
        # together probe the target about once per default period, as the members of a mesh would.
        if not args.probe_interval:
            return NodeConfig()
        from zmqagents.core.membership import MembershipConfig

        return NodeConfig(membership=MembershipConfig(probe_interval=args.probe_interval,
                                                      probe_timeout=min(0.5, args.probe_interval / 2)))

    nodes = [Node(listen="tcp://127.0.0.1:0", peers=[args.contact], config=config()) for _ in range(args.count)]
    try:
        for i in range(0, len(nodes), 10):  # a few at a time: hellos are requests with a deadline
            await asyncio.gather(*(n.start() for n in nodes[i:i + 10]))
        ok = sum(1 for n in nodes if n.neighbours())
        emit({"event": "ready", "started": len(nodes), "hello_ok": ok, "pid": os.getpid()})
        await _commands(lambda cmd: {"event": "noop"})
    finally:
        for n in nodes:
            await n.close()


async def role_raw(args) -> None:
    """The floor: zmq + nacl + msgpack imported, a CURVE ROUTER and an XPUB bound and watched."""
    import msgpack  # noqa: F401
    import nacl.signing  # noqa: F401
    import zmq

    loop = asyncio.get_running_loop()
    ctx = zmq.Context(io_threads=1)
    public, secret = zmq.curve_keypair()
    socks = []
    for kind in (zmq.ROUTER, zmq.XPUB):
        sock = ctx.socket(kind)
        sock.linger = 0
        sock.curve_server = True
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.bind("tcp://127.0.0.1:0")
        socks.append(sock)

    def drain(sock) -> None:
        while True:
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return

    for sock in socks:
        loop.add_reader(sock.FD, drain, sock)
    emit({"event": "ready", "pid": os.getpid(), "loop": loop_name()})
    await _commands(lambda cmd: {"event": "noop"})
    for sock in socks:
        loop.remove_reader(sock.FD)
        sock.close()
    ctx.term()


async def role_rawconn(args) -> None:
    """The floor of one connection: a CURVE ROUTER in plain pyzmq that only counts what its DEALERs send.
    With ``--zap`` a ZAP handler that admits every key is bound first, as a node has one (it is how a
    connection learns its peer's key)."""
    import zmq

    loop = asyncio.get_running_loop()
    ctx = zmq.Context(io_threads=1)
    zap = None
    if args.zap:
        zap = ctx.socket(zmq.REP)
        zap.linger = 0
        zap.bind("inproc://zeromq.zap.01")

        def admit() -> None:
            while True:
                try:
                    request = zap.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                zap.send_multipart([request[0], request[1], b"200", b"OK", b"", b""])

        loop.add_reader(zap.FD, admit)
    public, secret = zmq.curve_keypair()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.curve_server = True
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.bind("tcp://127.0.0.1:0")
    received = 0

    def drain() -> int:
        nonlocal received
        while True:
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return received
            received += 1

    loop.add_reader(sock.FD, drain)
    emit({"event": "ready", "pid": os.getpid(), "endpoint": sock.last_endpoint.decode(), "key": public.decode()})
    await _commands(lambda cmd: {"event": "count", "received": drain()})
    loop.remove_reader(sock.FD)
    sock.close()
    if zap is not None:
        loop.remove_reader(zap.FD)
        zap.close()
    ctx.term()


async def role_rawdealers(args) -> None:
    """``--count`` plain pyzmq DEALERs, each with a key of its own, that connect to ``--contact`` ("ENDPOINT
    SERVERKEY") and send one frame each."""
    import zmq

    endpoint, key = args.contact.split(" ")
    ctx = zmq.Context(io_threads=1)
    socks = []
    for _ in range(args.count):
        public, secret = zmq.curve_keypair()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.curve_serverkey = key.encode()
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.connect(endpoint)
        sock.send(b"hello")
        socks.append(sock)
    emit({"event": "ready", "pid": os.getpid(), "count": len(socks)})
    await _commands(lambda cmd: {"event": "noop"})
    for sock in socks:
        sock.close()
    ctx.term()


ROLES = {"target": role_target, "peers": role_peers, "raw": role_raw, "rawconn": role_rawconn,
         "rawdealers": role_rawdealers}
RAW_ROLES = {"raw", "rawconn", "rawdealers"}  # run without importing zmqagents


# =====================================================================================
# orchestrator
# =====================================================================================


def wire_bytes(pid: int) -> tuple[int, int] | None:
    """(bytes_sent + bytes_received, connection count) over the TCP sockets of ``pid``, per ``ss -ti``."""
    import shutil  # imported late: the node under test runs this module too, and should not carry it

    if shutil.which("ss") is None:
        return None
    try:
        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = conns = 0
    # ss prints each socket as a header line (with users:(...pid=N...)) then an indented info line
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if f"pid={pid}," not in line or not line.startswith("ESTAB"):
            continue
        info = lines[i + 1] if i + 1 < len(lines) else ""
        conns += 1
        for key in ("bytes_sent", "bytes_received"):
            m = re.search(rf"\b{key}:(\d+)", info)
            if m:
                total += int(m.group(1))
    return total, conns


def sample(pid: int) -> dict:
    return {"t": time.perf_counter(), "ticks": cpu_ticks(pid), "ns": cpu_ns(pid), "wire": wire_bytes(pid)}


def idle_figures(pid: int, before: dict, after: dict) -> dict:
    dt = after["t"] - before["t"]
    out = {
        "cpu_percent": 100.0 * (after["ticks"] - before["ticks"]) / CLK_TCK / dt,
        "cpu_percent_precise": 100.0 * (after["ns"] - before["ns"]) / 1e9 / dt,
        "rss_mb": rss_kb(pid) / MB,
        "threads": thread_count(pid),
        "fds": fd_count(pid),
        "window_s": dt,
    }
    if before["wire"] is not None and after["wire"] is not None:
        out["wire_bytes_per_s"] = (after["wire"][0] - before["wire"][0]) / dt
        out["tcp_connections"] = after["wire"][1]
    else:
        out["wire_bytes_per_s"] = None
        out["tcp_connections"] = None
    return out


def orchestrate(args) -> int:
    started = time.perf_counter()
    box = BoxLoad()  # other work on the box skews every figure: keep it visible
    children: list[Child] = []
    try:
        common = ["--max-subscribers", str(args.max_subscribers)]
        target = Child(SCRIPT, "target", *common)
        children.append(target)
        raw = Child(SCRIPT, "raw")
        children.append(raw)
        ready = target.read(30)
        raw_ready = raw.read(30)
        time.sleep(args.settle)
        rss_before = rss_kb(target.pid) / MB
        log(f"node alone: {rss_before:.1f} MB RSS; starting {args.peers} peers")

        groups = [min(PEERS_PER_PROCESS, args.peers - i) for i in range(0, args.peers, PEERS_PER_PROCESS)]
        peer_procs = []
        for i, count in enumerate(groups):
            child = Child(SCRIPT, "peers", f"--contact={ready['contact']}", "--count", str(count), name=f"peers-{i}")
            children.append(child)
            peer_procs.append(child)
        hello_ok = 0
        for child in peer_procs:
            report = child.read(60 + 2 * args.peers)
            hello_ok += report["hello_ok"]
        if hello_ok != args.peers:
            raise BenchError(f"only {hello_ok} of {args.peers} peers completed their hello")

        deadline = time.monotonic() + 30
        while True:
            target.send({"cmd": "stats"})
            stats0 = target.read(10)
            if stats0["neighbours"] >= args.peers and stats0["delivery_pending"] == 0:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the node has {stats0['neighbours']} of {args.peers} neighbours after 30 s")
            time.sleep(0.2)
        time.sleep(args.settle)  # SUB handshakes, ack timers, allocator settling

        target.send({"cmd": "stats"})
        stats0 = target.read(10)
        s_node, s_raw = sample(target.pid), sample(raw.pid)
        log(f"measuring idle for {args.window:.0f} s")
        time.sleep(args.window)
        e_node, e_raw = sample(target.pid), sample(raw.pid)
        target.send({"cmd": "stats"})
        stats1 = target.read(10)
        node = idle_figures(target.pid, s_node, e_node)
        base = idle_figures(raw.pid, s_raw, e_raw)
        span = stats1["wall"] - stats0["wall"]
        tstats0, tstats1 = stats0["transport"], stats1["transport"]
        app_bytes = (tstats1["bytes_in"] + tstats1["bytes_out"]) - (tstats0["bytes_in"] + tstats0["bytes_out"])
        app_frames = (tstats1["frames_in"] + tstats1["frames_out"]) - (tstats0["frames_in"] + tstats0["frames_out"])
    except BenchError as exc:
        return failed("footprint", exc, children)
    finally:
        stop_all(children)

    res_per_peer_kb = (node["rss_mb"] - rss_before) * MB / args.peers
    out = {
        "benchmark": "footprint",
        "peers": args.peers,
        "window_s": round(node["window_s"], 2),
        "idle_rss_mb": round(node["rss_mb"], 2),
        "idle_cpu_percent": round(node["cpu_percent"], 4),
        "idle_cpu_percent_precise": round(node["cpu_percent_precise"], 5),
        "idle_bytes_per_s": round(app_bytes / span, 2),
        "idle_frames_per_s": round(app_frames / span, 2),
        "idle_wire_bytes_per_s": None if node["wire_bytes_per_s"] is None else round(node["wire_bytes_per_s"], 2),
        "rss_mb_before_peers": round(rss_before, 2),
        "rss_kb_per_peer": round(res_per_peer_kb, 1),
        "raw_rss_mb": round(base["rss_mb"], 2),
        "raw_idle_cpu_percent": round(base["cpu_percent"], 4),
        "raw_idle_cpu_percent_precise": round(base["cpu_percent_precise"], 5),
        "rss_ratio": round(node["rss_mb"] / base["rss_mb"], 3),
        "node": {
            "neighbours": stats1["neighbours"],
            "sub_sockets": stats1["sub_sockets"],
            "inbound_connections": stats1["inbound"],
            "dealers": stats1["dealers"],
            "tcp_connections": node["tcp_connections"],
            "threads": node["threads"],
            "fds": node["fds"],
            "drops": stats1["drops"],
            "max_subscribers": ready["max_subscribers"],
        },
        "targets": {
            "idle_rss_le_32mb": node["rss_mb"] <= 32,
            "idle_cpu_le_0.1pct": node["cpu_percent"] <= 0.1,
        },
        "params": {
            "peers": args.peers,
            "peer_processes": len(groups),
            "window_s": args.window,
            "settle_s": args.settle,
            "quick": args.quick,
            "cpu_tick_resolution_percent": round(100.0 / (CLK_TCK * args.window), 4),
            "max_subscribers": args.max_subscribers,
            "note": "idle peers say hello but subscribe to nothing, so the node holds one inbound CURVE connection per peer and no SUB sockets",
        },
        "env": {**environment(), **box.report(), "loop": ready.get("loop"), "raw_loop": raw_ready.get("loop")},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    if stats1["neighbours"] != args.peers:
        log(f"footprint benchmark FAILED: the node lost neighbours ({stats1['neighbours']} of {args.peers})")
        print(json.dumps(out, indent=2))
        return 1
    print(json.dumps(out, indent=2))
    return 0


# =====================================================================================
# the sidecar process (--sidecar)
# =====================================================================================

# "bare" turns every optional service off, so default - bare is what the default services cost.
SIDECAR_CONFIGS = {"bare": {"mdns": False, "local_api": False}, "default": {}, "all": {"mdns": True, "admin": True},
                   "ui": {"mdns": True, "admin": True, "ui": True}}
# "ui" is "all" with its dashboard opened: before the window, the page, its assets and its status are
# fetched and /ui/api/graph is polled until the dashboard's first crawl of the mesh has finished.


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sidecar_toml(work: Path, name: str, extra: dict, mdns_ok: bool) -> Path:
    """A config that keeps every file in ``work``; services as the schema's defaults, plus ``extra``."""
    lines = ["[node]", f'key = "{work}/{name}.key"', 'listen = "tcp://127.0.0.1:0"',
             f'contact_file = "{work}/{name}.contact"', "[local_api]", f'path = "{work}/{name}.sock"',
             *(["enabled = false"] if extra.get("local_api") is False else []),
             "[spool]", f'dir = "{work}/{name}-spool"', "[log]", 'level = "info"']
    if not mdns_ok or extra.get("mdns") is False:
        lines += ["[mdns]", "enabled = false"]
    elif extra.get("mdns"):
        lines += ["[mdns]", "enabled = true"]
    if extra.get("admin"):
        lines += ["[admin]", "enabled = true", f'listen = "127.0.0.1:{_free_port()}"']
    path = work / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _measure_sidecar(args, work: Path, config: str, peers: int, mdns_ok: bool, mesh_rate: bool = False) -> dict:
    """Start the sidecar, connect ``peers`` peers, let it settle, measure it idle; stop everything.

    Each peer holds only the sidecar as a member, so by default all of them probe it every period
    (a star: N pings per period, the worst case). With ``mesh_rate`` their periods are stretched N
    times, so the sidecar is probed about once per period, as a member of a mesh is."""
    name = f"{config}-{peers}" + ("-mesh" if mesh_rate else "")
    toml = _sidecar_toml(work, name, SIDECAR_CONFIGS[config], mdns_ok)
    contact_file = work / f"{name}.contact"
    err_path = work / f"{name}.log"
    children: list[Child] = []
    with open(err_path, "w") as err:
        t0 = time.perf_counter()
        # zmqagents.launch: what the `zmqagents` console script runs (it keeps TLS out of `node`)
        proc = subprocess.Popen([sys.executable, "-m", "zmqagents.launch", "node", "--config", str(toml)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + 30
        while not contact_file.exists():
            if proc.poll() is not None:
                raise BenchError(f"sidecar {name} exited with {proc.returncode}: {err_path.read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"sidecar {name} wrote no contact file within 30 s")
            time.sleep(0.005)
        startup = time.perf_counter() - t0
        contact = contact_file.read_text().strip()
        time.sleep(args.settle)
        rss_alone = rss_kb(proc.pid) / MB
        groups = [min(PEERS_PER_PROCESS, peers - i) for i in range(0, peers, PEERS_PER_PROCESS)]
        for i, count in enumerate(groups):
            stretch = ["--probe-interval", str(1.5 * peers)] if mesh_rate else []
            children.append(Child(SCRIPT, "peers", f"--contact={contact}", "--count", str(count), *stretch,
                                  name=f"peers-{i}"))
        hello_ok = sum(child.read(60 + 2 * peers)["hello_ok"] for child in children)
        if hello_ok != peers:
            raise BenchError(f"only {hello_ok} of {peers} peers completed their hello with sidecar {name}")
        crawl = _open_dashboard(err_path) if SIDECAR_CONFIGS[config].get("ui") else None
        time.sleep(args.settle)
        before = sample(proc.pid)
        time.sleep(args.window)
        after = sample(proc.pid)
        idle = idle_figures(proc.pid, before, after)
    finally:
        stop_all(children)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log_text = err_path.read_text()
    m = re.search(r"services: ([^)]*)\)", log_text)
    services = [] if not m or m.group(1) == "none" else [s.strip() for s in m.group(1).split(",")]
    if proc.returncode != 0:
        raise BenchError(f"sidecar {name} exited with {proc.returncode} on SIGTERM: {log_text[-500:]}")
    log(f"sidecar {name}: {idle['rss_mb']:.1f} MB RSS, {idle['cpu_percent']:.3f} % CPU, services {services or 'none'}")
    return {"config": config, "peers": peers, "peer_probes": "mesh rate" if mesh_rate else "star", "rss_mb": round(idle["rss_mb"], 2), "rss_mb_alone": round(rss_alone, 2),
            "cpu_percent": round(idle["cpu_percent"], 4), "cpu_percent_precise": round(idle["cpu_percent_precise"], 5),
            "startup_s": round(startup, 3), "threads": idle["threads"], "fds": idle["fds"], "services": services,
            **({"ui_crawl": crawl} if crawl is not None else {})}


def raw_connection_floor(args, connections: int, zap: bool) -> float:
    """KiB of RSS each CURVE connection adds to a plain pyzmq ROUTER (``raw_kb_per_connection``; with ``zap``,
    a ZAP handler bound: ``raw_zap_kb_per_connection``): what libzmq itself holds per connection, the part
    of a peer's cost no zmqagents setting reaches. Measured with ``connections`` DEALERs, each with its own
    key, that connected and sent one frame."""
    children: list[Child] = []
    try:
        server = Child(SCRIPT, "rawconn", *(["--zap"] if zap else []), name="rawconn")
        children.append(server)
        ready = server.read(30)
        time.sleep(args.settle)
        before = rss_kb(server.pid)
        dealers = Child(SCRIPT, "rawdealers", f"--contact={ready['endpoint']} {ready['key']}", "--count",
                        str(connections), name="rawdealers")
        children.append(dealers)
        dealers.read(60)
        deadline = time.monotonic() + 30
        while True:
            server.send({"cmd": "count"})
            if server.read(10)["received"] >= connections:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the raw ROUTER heard from fewer than {connections} DEALERs in 30 s")
            time.sleep(0.1)
        time.sleep(args.settle)
        after = rss_kb(server.pid)
    finally:
        stop_all(children)
    return round((after - before) / connections, 1)


def _open_dashboard(log_path: Path, timeout: float = 90) -> dict:
    """What a browser does on /ui: the page, its assets and status once, then /ui/api/graph until the
    dashboard's first crawl has finished; the crawl's summary (nodes found, messages, seconds)."""
    import urllib.request

    m = re.search(r"admin endpoint on http://(\S+) ", log_path.read_text())
    if m is None:
        raise BenchError("the sidecar logged no admin endpoint address")

    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"http://{m.group(1)}{path}", timeout=10) as resp:
            return resp.read()

    for path in ("/ui", "/ui/style.css", "/ui/graph.js", "/ui/dashboard.js", "/ui/api/status"):
        get(path)
    deadline = time.monotonic() + timeout
    while True:
        graph = json.loads(get("/ui/api/graph"))
        if graph.get("age_s") is not None:  # a crawl finished
            return {"nodes": len(graph["nodes"]), "edges": len(graph["edges"]), **graph.get("crawl", {})}
        if time.monotonic() > deadline:
            raise BenchError(f"the dashboard's first crawl did not finish within {timeout:g} s")
        time.sleep(0.5)


def _netns_wrap(argv: list[str]) -> int | None:
    """As root with iproute2: rerun this orchestrator inside a fresh namespace whose loopback carries
    multicast (mDNS stays on the box), delete the namespace after; None when that is not possible."""
    import shutil

    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    name = f"zmqa-fp-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return None
    try:
        for cmd in (("link", "set", "lo", "up"), ("link", "set", "lo", "multicast", "on"),
                    ("route", "add", "224.0.0.0/4", "dev", "lo")):
            subprocess.run(["ip", "-n", name, *cmd], check=True, capture_output=True)
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, str(SCRIPT), *argv, "--in-netns", name]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _parse_runs(text: str) -> list[tuple[str, int]]:
    """``default_100,all_100`` into [("default", 100), ("all", 100)]; SystemExit naming a bad one."""
    out = []
    for item in text.split(","):
        config, _, peers = item.strip().rpartition("_")
        if config not in SIDECAR_CONFIGS or not peers.isdigit():
            raise SystemExit(f"--runs: {item!r} is not CONFIG_PEERS with CONFIG one of {', '.join(SIDECAR_CONFIGS)}")
        out.append((config, int(peers)))
    return out


def orchestrate_sidecar(args) -> int:
    import tempfile

    started = time.perf_counter()
    box = BoxLoad()
    mdns_ok = args.in_netns is not None
    if not mdns_ok:
        log("not in a private network namespace (needs root and iproute2): mDNS stays off in every run")
    counts = [0, args.peers] if args.quick else [0, 100, 200]
    # --quick: the two ends only (defaults alone, everything on with peers), to stay a smoke test
    matrix = [("default", 0), ("all", args.peers)] if args.quick else \
        [(c, n) for c in SIDECAR_CONFIGS if c != "ui" for n in counts] + [("ui", 100)]
    if args.runs:
        matrix = _parse_runs(args.runs)
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="zmqagents-footprint-") as work:
            for config, peers in matrix:
                runs.append(_measure_sidecar(args, Path(work), config, peers, mdns_ok))
            if not (args.quick or args.runs):
                mesh = _measure_sidecar(args, Path(work), "default", 100, mdns_ok, mesh_rate=True)
        most = max(peers for _, peers in matrix)
        raw_per_connection = raw_connection_floor(args, most, zap=False) if most else None
        raw_zap_per_connection = raw_connection_floor(args, most, zap=True) if most else None
    except BenchError as exc:
        log(f"sidecar footprint benchmark FAILED: {exc}")
        return 1
    by = {f"{r['config']}_{r['peers']}": r for r in runs}
    out = {"benchmark": "footprint_sidecar", **{f"rss_mb_{key}": r["rss_mb"] for key, r in by.items()},
           "idle_cpu_percent": max(r["cpu_percent"] for r in runs),
           "idle_cpu_percent_precise": max(r["cpu_percent_precise"] for r in runs),
           **({} if args.quick or args.runs else {"idle_cpu_percent_mesh_rate_100": mesh["cpu_percent"],
                                     "idle_cpu_percent_precise_mesh_rate_100": mesh["cpu_percent_precise"]}),
           "startup_s": by["default_0"]["startup_s"] if "default_0" in by else None,
           # per peer: what the sidecar grew by from alone to its peers, next to what libzmq alone holds per connection
           "kb_per_peer": {key: round((r["rss_mb"] - r["rss_mb_alone"]) * MB / r["peers"], 1)
                           for key, r in by.items() if r["peers"]},
           "raw_kb_per_connection": raw_per_connection, "raw_zap_kb_per_connection": raw_zap_per_connection,
           "services": {r["config"]: r["services"] for r in runs},
           "runs": runs + ([] if args.quick or args.runs else [mesh])}
    if not (args.quick or args.runs):
        out["targets"] = {"rss_default_100_le_32mb": by["default_100"]["rss_mb"] <= 32,
                          "rss_all_100_le_45mb": by["all_100"]["rss_mb"] <= 45,
                          "rss_ui_100_le_45mb": by["ui_100"]["rss_mb"] <= 45,
                          "rss_all_200_le_45mb": by["all_200"]["rss_mb"] <= 45,
                          "rss_all_runs_lt_50mb": all(r["rss_mb"] < 50 for r in runs),
                          "idle_cpu_le_0.1pct": out["idle_cpu_percent"] <= 0.1,
                          "idle_cpu_mesh_rate_le_0.1pct": out["idle_cpu_percent_mesh_rate_100"] <= 0.1}
    out["params"] = {"runs": [f"{c}_{n}" for c, n in matrix], "window_s": args.window, "settle_s": args.settle, "quick": args.quick,
                     "network_namespace": args.in_netns, "mdns_possible": mdns_ok,
                     "configs": {k: v or "schema defaults" for k, v in SIDECAR_CONFIGS.items()},
                     "cpu_tick_resolution_percent": round(100.0 / (CLK_TCK * args.window), 4)}
    out["env"] = {**environment(), **box.report()}
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short settle and a ~2 s window (what the smoke test runs)")
    p.add_argument("--peers", type=int, default=100, help="peers connected to the node under test (default 100)")
    p.add_argument("--window", type=float, help="idle measurement window in seconds (default 10; quick 2)")
    p.add_argument("--settle", type=float, help="seconds to wait before measuring (default 2; quick 0.5)")
    p.add_argument("--max-subscribers", type=int, help="TransportConfig.max_subscribers of the node (default: max(64, peers))")
    p.add_argument("--sidecar", action="store_true", help="measure `zmqagents node --config` in two configs at 0/100/200 peers")
    p.add_argument("--runs", help="with --sidecar: only these runs, CONFIG_PEERS comma-separated (e.g. default_100,all_100)")
    # child-only
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    p.add_argument("--contact", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--in-netns", help=argparse.SUPPRESS)
    p.add_argument("--probe-interval", type=float, help=argparse.SUPPRESS)
    p.add_argument("--zap", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role in RAW_ROLES:
        _local_run(ROLES[args.role](args))  # same runner code, without importing zmqagents into the floor
        return 0
    if args.role:
        run(ROLES[args.role](args))
        return 0
    if args.peers < 1:
        p.error("--peers must be at least 1")
    args.window = args.window or (2.0 if args.quick else 10.0)
    args.settle = args.settle if args.settle is not None else (0.5 if args.quick else 2.0)
    args.max_subscribers = args.max_subscribers or max(64, args.peers)
    if args.sidecar:
        if args.in_netns is None:
            wrapped = _netns_wrap(sys.argv[1:] if argv is None else argv)
            if wrapped is not None:
                return wrapped
        return orchestrate_sidecar(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
