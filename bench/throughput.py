#!/usr/bin/env python3
"""Throughput and latency of direct messages: zmqagents ``Node`` against raw pyzmq.

What it measures (100-byte bodies, tcp on 127.0.0.1, CURVE on every link,
sender and receiver each in their own process, raw and zmqagents measured in
the same run, interleaved, each measurement repeated and the median reported):

* **one-way** — a DEALER → ROUTER stream of N messages.
  zmqagents: ``await node.send(peer, body)`` N times (``--batch B``: ``node.send_many``
  with B bodies at a time) then ``await node.flush()`` on the sender, ``node.messages()`` on the receiver. Raw: a DEALER sending
  with NOBLOCK in a loop (awaiting writability only on EAGAIN) and a ROUTER
  whose FD is watched with ``loop.add_reader`` and drained until EAGAIN.
  Rate = N / (t_last − t0) where t0 is read by the sender just before its
  first measured send and t_last by the receiver when the N-th message reached
  the application. Both are ``time.perf_counter()`` = CLOCK_MONOTONIC, one
  clock for every process on the machine, so the interval spans both processes.
  Before t0 a warm-up batch is sent and fully consumed (the sender waits for
  the receiver to say so), so connection set-up and CURVE handshakes are
  outside the interval. The receiver checks that every message arrives
  exactly once and in order (a sequence number in the first 8 body bytes),
  and that nothing extra arrives afterwards. zmqagents' figure is the rate of
  application delivery; ``oneway_flush_msgs_per_s`` is the slower rate at
  which the sender also had every message acknowledged.
* **request/reply** — a window of W requests in flight. zmqagents: W
  coroutines looping on ``await node.request(peer, body)``, the server an
  ``on_request`` handler returning the body. Raw: a DEALER that keeps W
  requests outstanding, draining replies in batches, and a ROUTER that echoes
  each request back. Rate = N / (time between the warm-up's last reply and the
  N-th measured reply), measured by the client. Every reply must carry its
  request's body; the server checks each request arrived exactly once, in order.
* **ping-pong** — one request outstanding at a time, after a warm-up; the
  p50 and p99 of the round-trip time as the client's application sees it.

Next to every rate, ``*_cpu_us_per_msg`` gives the CPU time per message of
each process (``client``/``server``: all threads; ``*_main``: the event-loop
thread, i.e. Python; the difference is libzmq's I/O thread doing CURVE and
TCP). On a shared 2-core box rates move with whatever else runs; CPU per
message hardly does. ``env.other_cpus_busy_avg`` says how much CPU processes
outside the benchmark used during the run: figures taken while it is well
above 0 are noise. ``--delivery FIELD=VALUE`` overrides a ``DeliveryConfig``
field on both zmqagents nodes, to see what a tuning knob buys.

Why: the transport shell and the delivery core add Python work per message
(envelope encode/decode, identity binding, acks, dedup, order). This shows
what that costs against the best a Python program can get out of the same
sockets, and tracks it against the targets the issue set:
``oneway_ratio ≥ 0.5``, ping-pong p50 ≤ 150 µs and p99 ≤ 400 µs.

Prints one JSON object on stdout; progress goes to stderr. Exits non-zero if
a run fails or a correctness check does not hold.

    python bench/throughput.py            # full run (< 3 min)
    python bench/throughput.py --quick    # seconds; what the smoke test runs
    python bench/throughput.py --compare main   # an older commit and this one, side by side (bench/compare.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchError, BoxLoad, Child, emit, environment, kill_all, log, loop_name, median, run, stdin_eof, stop_all  # noqa: E402

SCRIPT = Path(__file__).resolve()
BODY_BYTES = 100
SEQ = struct.Struct(">Q")
PAD = b"\xab" * (BODY_BYTES - SEQ.size)
HWM = 2048  # the same send high-water mark zmqagents' transport sets (transport/config.py SEND_HWM)
ERRORS_KEPT = 5


def body_of(seq: int) -> bytes:
    return SEQ.pack(seq) + PAD


def seq_of(body) -> int:
    if not isinstance(body, (bytes, bytearray)) or len(body) != BODY_BYTES:
        raise ValueError(f"body is not {BODY_BYTES} bytes: {type(body).__name__} {str(body)[:40]}")
    return SEQ.unpack_from(body)[0]


class CpuSpan:
    """CPU time of this process (all threads) and of its main thread over a span.

    Rates measured on a shared 2-core box move with whatever else runs; CPU
    time per message barely does, so it is reported next to every rate.
    ``main`` is the event-loop thread (Python); the rest is libzmq's I/O thread
    (CURVE, TCP).
    """

    __slots__ = ("p0", "t0", "p1", "t1")

    def __init__(self) -> None:
        self.p0 = self.t0 = self.p1 = self.t1 = None

    def start(self) -> None:
        self.p0, self.t0 = time.process_time(), time.thread_time()

    def stop(self) -> None:
        self.p1, self.t1 = time.process_time(), time.thread_time()

    def per(self, n: int) -> dict:
        if self.p0 is None or self.p1 is None or n <= 0:
            return {}
        return {"cpu_us": (self.p1 - self.p0) / n * 1e6, "main_us": (self.t1 - self.t0) / n * 1e6}


class OrderCheck:
    """Every sequence number 0..total-1 exactly once, in order; keeps the first few violations.

    Also marks CPU time between the last warm-up message and the last message.
    """

    __slots__ = ("expected", "count", "errors", "violations", "warmup", "total", "cpu")

    def __init__(self, warmup: int = 0, total: int = 0) -> None:
        self.expected = 0
        self.count = 0
        self.violations = 0
        self.errors: list[str] = []
        self.warmup = warmup
        self.total = total
        self.cpu = CpuSpan()

    def see(self, body) -> int:
        self.count += 1
        if self.count == self.warmup:
            self.cpu.start()
        elif self.count == self.total:
            self.cpu.stop()
        try:
            seq = seq_of(body)
        except ValueError as exc:
            self._bad(str(exc))
            return -1
        if seq != self.expected:
            kind = "duplicate or reordered" if seq < self.expected else "gap or reordered"
            self._bad(f"{kind}: got seq {seq}, expected {self.expected}")
        self.expected = max(self.expected, seq + 1)
        return seq

    def _bad(self, text: str) -> None:
        self.violations += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(text)

    def report(self, total: int) -> dict:
        ok = self.violations == 0 and self.count == total and self.expected == total
        errors = list(self.errors)
        if self.count != total:
            errors.append(f"received {self.count} messages, expected {total}")
        return {"ok": ok, "received": self.count, "violations": self.violations, "errors": errors,
                "cpu": self.cpu.per(total - self.warmup)}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


# =====================================================================================
# raw pyzmq children: the same socket types and CURVE, drained in batches
# =====================================================================================


def _raw_socket(ctx, kind):
    import zmq

    sock = ctx.socket(kind)
    sock.linger = 0
    sock.sndhwm = HWM
    sock.rcvhwm = HWM
    return sock


def _raw_server(kind_name: str):
    """A CURVE server socket bound to a free loopback port; returns (ctx, sock, ready-line)."""
    import zmq

    ctx = zmq.Context(io_threads=1)
    public, secret = zmq.curve_keypair()
    sock = _raw_socket(ctx, getattr(zmq, kind_name))
    sock.curve_server = True
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.bind("tcp://127.0.0.1:0")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return ctx, sock, {"event": "ready", "endpoint": endpoint, "server_key": public.decode("ascii")}


def _raw_client(args):
    import zmq

    ctx = zmq.Context(io_threads=1)
    public, secret = zmq.curve_keypair()
    sock = _raw_socket(ctx, zmq.DEALER)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = args.server_key.encode("ascii")
    sock.setsockopt(zmq.ROUTING_ID, os.urandom(48))  # like a zmqagents DEALER: a 48-byte routing id
    sock.connect(args.endpoint)
    return ctx, sock


class Waiter:
    """Awaits readiness of one zmq socket through a reader that stays registered.

    The FD only signals *changes*, and reading ZMQ_EVENTS re-arms it, so
    :meth:`wait` checks ZMQ_EVENTS first and sleeps on the FD only when the
    condition does not hold yet. The reader is registered once: adding and
    removing it around every wait costs ~50 µs per round trip under uvloop.
    """

    def __init__(self, sock):
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.fd = sock.FD
        self.fut: asyncio.Future | None = None
        self.loop.add_reader(self.fd, self._wake)

    def _wake(self) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, flag: int) -> None:
        import zmq

        while not self.sock.getsockopt(zmq.EVENTS) & flag:
            self.fut = self.loop.create_future()
            await self.fut
            self.fut = None

    async def recv_multipart(self) -> list[bytes]:
        import zmq

        while True:
            try:
                return self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                await self.wait(zmq.POLLIN)

    async def send_range(self, start: int, stop: int) -> None:
        """Send bodies start..stop-1 with NOBLOCK; await writability only when the pipe is full."""
        import zmq

        send = self.sock.send
        noblock = zmq.NOBLOCK
        i = start
        while i < stop:
            try:
                while i < stop:
                    send(SEQ.pack(i) + PAD, noblock)
                    i += 1
            except zmq.Again:
                await self.wait(zmq.POLLOUT)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)


async def raw_sink(args) -> None:
    """ROUTER receiving a one-way stream; says 'go' after the warm-up and 'done' after the last."""
    import zmq

    ctx, sock, ready = _raw_server("ROUTER")
    loop = asyncio.get_running_loop()
    check = OrderCheck(args.warmup, args.warmup + args.n)
    total = args.warmup + args.n
    result: dict = {}
    recv = sock.recv_multipart
    noblock = zmq.NOBLOCK

    def drain() -> None:
        see = check.see
        while True:
            try:
                parts = recv(noblock)
            except zmq.Again:
                return
            see(parts[-1])
            count = check.count
            if count == args.warmup:
                sock.send_multipart([parts[0], b"go"])
            elif count == total:
                result["t_last"] = time.perf_counter()
                sock.send_multipart([parts[0], b"done"])

    loop.add_reader(sock.FD, drain)
    loop.call_soon(drain)  # the FD may have fired before we watched it
    emit({**ready, "loop": loop_name()})
    await stdin_eof()
    loop.remove_reader(sock.FD)
    drain()  # anything late would be a duplicate
    emit({"event": "result", **result, **check.report(total)})
    sock.close()
    ctx.term()


async def raw_push(args) -> None:
    """DEALER sending the one-way stream in NOBLOCK loops."""
    ctx, sock = _raw_client(args)
    waiter = Waiter(sock)
    await waiter.send_range(0, args.warmup)
    reply = await waiter.recv_multipart()
    if reply != [b"go"]:
        raise BenchError(f"expected 'go' from the sink, got {reply!r}")
    cpu = CpuSpan()
    cpu.start()
    t0 = time.perf_counter()
    await waiter.send_range(args.warmup, args.warmup + args.n)
    t_sent = time.perf_counter()
    reply = await waiter.recv_multipart()
    t_done = time.perf_counter()
    cpu.stop()
    if reply != [b"done"]:
        raise BenchError(f"expected 'done' from the sink, got {reply!r}")
    emit({"event": "result", "t0": t0, "t_sent": t_sent, "t_done": t_done, "loop": loop_name(), "cpu": cpu.per(args.n)})
    waiter.close()
    sock.close()
    ctx.term()


async def raw_echo(args) -> None:
    """ROUTER echoing every request back to its sender; checks requests arrive once, in order."""
    import zmq

    ctx, sock, ready = _raw_server("ROUTER")
    loop = asyncio.get_running_loop()
    check = OrderCheck(args.warmup, args.warmup + args.n)
    recv = sock.recv_multipart
    send = sock.send_multipart
    noblock = zmq.NOBLOCK

    def drain() -> None:
        see = check.see
        while True:  # ends on a recv that hit EAGAIN, so the FD is re-armed after our sends
            try:
                parts = recv(noblock)
            except zmq.Again:
                return
            see(parts[-1])
            send(parts, noblock)

    loop.add_reader(sock.FD, drain)
    loop.call_soon(drain)
    emit({**ready, "loop": loop_name()})
    await stdin_eof()
    loop.remove_reader(sock.FD)
    drain()
    emit({"event": "result", **check.report(args.warmup + args.n)})
    sock.close()
    ctx.term()


async def raw_rr(args) -> None:
    """DEALER keeping ``window`` requests in flight; replies drained in batches."""
    import zmq

    ctx, sock = _raw_client(args)
    waiter = Waiter(sock)
    total = args.warmup + args.n
    window = args.window
    check = OrderCheck(args.warmup, args.warmup + args.n)  # ROUTER echo over one connection keeps order
    next_seq = 0
    t0 = t_last = None
    send = sock.send
    recv = sock.recv
    noblock = zmq.NOBLOCK
    while check.count < total:
        try:
            while next_seq < total and next_seq - check.count < window:
                send(SEQ.pack(next_seq) + PAD, noblock)
                next_seq += 1
        except zmq.Again:
            pass
        got = 0
        while True:
            try:
                body = recv(noblock)
            except zmq.Again:
                break
            check.see(body)
            got += 1
            if check.count == args.warmup:
                t0 = time.perf_counter()
        if not got:
            await waiter.wait(zmq.POLLIN)
    t_last = time.perf_counter()
    waiter.close()
    emit({"event": "result", "rate": args.n / (t_last - t0), "elapsed_s": t_last - t0,
          "loop": loop_name(), **check.report(total)})
    sock.close()
    ctx.term()


async def raw_ping(args) -> None:
    """DEALER with one request outstanding: the round-trip time the application sees."""
    import zmq

    ctx, sock = _raw_client(args)
    waiter = Waiter(sock)
    check = OrderCheck(args.warmup, args.warmup + args.n)
    samples: list[float] = []
    clock = time.perf_counter
    for i in range(args.warmup + args.n):
        t = clock()
        sock.send(SEQ.pack(i) + PAD, zmq.NOBLOCK)
        reply = await waiter.recv_multipart()
        dt = clock() - t
        check.see(reply[-1])
        if i >= args.warmup:
            samples.append(dt)
    waiter.close()
    emit({"event": "result", **_latency(samples), "loop": loop_name(), **check.report(args.warmup + args.n)})
    sock.close()
    ctx.term()


def _latency(samples: list[float]) -> dict:
    s = sorted(samples)
    return {
        "p50_us": percentile(s, 0.50) * 1e6,
        "p90_us": percentile(s, 0.90) * 1e6,
        "p99_us": percentile(s, 0.99) * 1e6,
        "max_us": s[-1] * 1e6,
        "mean_us": sum(s) / len(s) * 1e6,
        "samples": len(s),
    }


# =====================================================================================
# zmqagents children: the public Node API
# =====================================================================================


def _node_config(args):
    """NodeConfig with the defaults, except the DeliveryConfig fields given with --delivery."""
    from zmqagents.node import NodeConfig

    config = NodeConfig()
    for item in args.delivery or []:
        key, _, value = item.partition("=")
        if not hasattr(config.delivery, key):
            raise BenchError(f"--delivery {item!r}: DeliveryConfig has no field {key!r}")
        setattr(config.delivery, key, type(getattr(config.delivery, key))(float(value)))
    if args.delivery:
        config.delivery.__post_init__()  # re-validate
    if args.rate_limit:  # the receiver's per-peer message limit caps what one sender gets through
        config.transport.rate_limit.messages = config.transport.rate_limit.message_burst = args.rate_limit
    if args.recv_hwm:  # what libzmq reads ahead per connection (transport/config.py, RECV_HWM)
        config.transport.recv_hwm = args.recv_hwm
    return config


def _node_stats(node) -> dict:
    delivery = {k: v for k, v in getattr(node.delivery, "stats", {}).items() if v}
    return {"transport": dict(node.transport.stats), "drops": dict(node.transport.drops), "node": dict(node.stats),
            "delivery": delivery}


async def za_sink(args) -> None:
    """A Node consuming ``node.messages()``; a 'sync' request returns once the warm-up is consumed."""
    from zmqagents.node import Node

    total = args.warmup + args.n
    check = OrderCheck(args.warmup, args.warmup + args.n)
    warmed = asyncio.Event()
    finished = asyncio.Event()
    result: dict = {}
    async with Node(listen="tcp://127.0.0.1:0", config=_node_config(args)) as node:

        @node.on_request
        async def sync(body, message):
            await warmed.wait()
            return "go"

        async def consume() -> None:
            see = check.see
            async for message in node.messages():
                see(message.body)
                count = check.count
                if count == args.warmup:
                    warmed.set()
                elif count == total:
                    result["t_last"] = time.perf_counter()
                    finished.set()
                    return

        consumer = asyncio.create_task(consume())
        emit({"event": "ready", "contact": str(node.contact), "loop": loop_name()})
        await stdin_eof()
        if not finished.is_set():
            consumer.cancel()
        # anything still arriving now would be a duplicate
        while True:
            try:
                message = await node.receive(timeout=0.05)
            except asyncio.TimeoutError:
                break
            check.see(message.body)
        emit({"event": "result", **result, **check.report(total), **_node_stats(node)})


async def za_push(args) -> None:
    """A Node sending N messages with ``await node.send`` then ``await node.flush()``."""
    from zmqagents.identity import Contact
    from zmqagents.node import Node

    peer = Contact.parse(args.contact).node_id
    total = args.warmup + args.n
    async with Node(listen="tcp://127.0.0.1:0", peers=[args.contact], config=_node_config(args)) as node:
        if peer not in node.neighbours():
            raise BenchError("hello to the sink failed")
        send = node.send
        for i in range(args.warmup):
            await send(peer, SEQ.pack(i) + PAD)
        await node.flush(timeout=60)
        if await node.request(peer, "sync", timeout=60) != "go":
            raise BenchError("sink did not confirm the warm-up")
        cpu = CpuSpan()
        cpu.start()
        t0 = time.perf_counter()
        if args.batch:  # node.send_many, args.batch bodies at a time
            for start in range(args.warmup, total, args.batch):
                await node.send_many(peer, [SEQ.pack(i) + PAD for i in range(start, min(start + args.batch, total))])
        else:
            for i in range(args.warmup, total):
                await send(peer, SEQ.pack(i) + PAD)
        t_sent = time.perf_counter()
        await node.flush(timeout=args.timeout)
        t_flushed = time.perf_counter()
        cpu.stop()
        emit({"event": "result", "t0": t0, "t_sent": t_sent, "t_flushed": t_flushed,
              "loop": loop_name(), "cpu": cpu.per(args.n), **_node_stats(node)})


async def za_echo(args) -> None:
    """A Node serving requests with a handler that returns the request body."""
    from zmqagents.node import Node

    check = OrderCheck(args.warmup, args.warmup + args.n)
    async with Node(listen="tcp://127.0.0.1:0", config=_node_config(args)) as node:
        see = check.see

        @node.on_request
        def echo(body, message):
            see(body)
            return body

        emit({"event": "ready", "contact": str(node.contact), "loop": loop_name()})
        await stdin_eof()
        emit({"event": "result", **check.report(args.warmup + args.n), **_node_stats(node)})


async def za_rr(args) -> None:
    """``window`` coroutines each looping on ``await node.request``."""
    from zmqagents.identity import Contact
    from zmqagents.node import Node

    peer = Contact.parse(args.contact).node_id
    total = args.warmup + args.n
    state = {"next": 0, "done": 0, "t0": None, "mismatch": 0}
    cpu = CpuSpan()
    errors: list[str] = []
    async with Node(listen="tcp://127.0.0.1:0", peers=[args.contact], config=_node_config(args)) as node:
        request = node.request

        async def worker() -> None:
            while state["next"] < total:
                seq = state["next"]
                state["next"] = seq + 1
                body = SEQ.pack(seq) + PAD
                reply = await request(peer, body, timeout=60)
                if reply != body:
                    state["mismatch"] += 1
                    if len(errors) < ERRORS_KEPT:
                        errors.append(f"reply to seq {seq} does not carry its body")
                state["done"] += 1
                if state["done"] == args.warmup:
                    state["t0"] = time.perf_counter()
                    cpu.start()

        await asyncio.gather(*(worker() for _ in range(args.window)))
        t_last = time.perf_counter()
        cpu.stop()
        ok = state["mismatch"] == 0 and state["done"] == total
        emit({"event": "result", "rate": args.n / (t_last - state["t0"]), "elapsed_s": t_last - state["t0"],
              "ok": ok, "received": state["done"], "errors": errors, "loop": loop_name(), "cpu": cpu.per(args.n),
              **_node_stats(node)})


async def za_ping(args) -> None:
    """Sequential ``await node.request``: one outstanding at a time."""
    from zmqagents.identity import Contact
    from zmqagents.node import Node

    peer = Contact.parse(args.contact).node_id
    samples: list[float] = []
    check = OrderCheck(args.warmup, args.warmup + args.n)
    clock = time.perf_counter
    async with Node(listen="tcp://127.0.0.1:0", peers=[args.contact], config=_node_config(args)) as node:
        request = node.request
        for i in range(args.warmup + args.n):
            body = SEQ.pack(i) + PAD
            t = clock()
            reply = await request(peer, body, timeout=30)
            dt = clock() - t
            check.see(reply)
            if i >= args.warmup:
                samples.append(dt)
        emit({"event": "result", **_latency(samples), "loop": loop_name(),
              **check.report(args.warmup + args.n), **_node_stats(node)})


ROLES = {
    "raw-sink": raw_sink,
    "raw-push": raw_push,
    "raw-echo": raw_echo,
    "raw-rr": raw_rr,
    "raw-ping": raw_ping,
    "za-sink": za_sink,
    "za-push": za_push,
    "za-echo": za_echo,
    "za-rr": za_rr,
    "za-ping": za_ping,
}


def child_main(args) -> int:
    coro = ROLES[args.role](args)
    if args.profile_dir:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            run(coro)
        finally:
            prof.disable()
            path = Path(args.profile_dir) / f"{args.role}-{os.getpid()}.prof"
            prof.dump_stats(str(path))
            log(f"[{args.role}] profile written to {path}")
    else:
        run(coro)
    return 0


# =====================================================================================
# orchestrator
# =====================================================================================

KINDS = ("oneway", "rr", "pingpong")
SERVER_ROLE = {"oneway": "sink", "rr": "echo", "pingpong": "echo"}
CLIENT_ROLE = {"oneway": "push", "rr": "rr", "pingpong": "ping"}


def measure(kind: str, impl: str, n: int, warmup: int, window: int, timeout: float, profile_dir: str | None,
            delivery: list[str] | None = None, batch: int = 0, rate_limit: float = 0, recv_hwm: int = 0) -> dict:
    """One run of one measurement: a fresh server process and a fresh client process."""
    common = ["--n", str(n), "--warmup", str(warmup), "--window", str(window), "--timeout", str(timeout),
              "--batch", str(batch), "--rate-limit", str(rate_limit), "--recv-hwm", str(recv_hwm)]
    extra: list[str] = []
    if profile_dir and impl == "za":
        extra = ["--profile-dir", profile_dir]
    if impl == "za":
        extra += [f"--delivery={item}" for item in delivery or []]
    server = Child(SCRIPT, f"{impl}-{SERVER_ROLE[kind]}", *common, *extra)
    children = [server]
    try:
        ready = server.read(30)
        if impl == "raw":
            # "=" form: a Z85 key may start with "-", which argparse would take for an option
            target = [f"--endpoint={ready['endpoint']}", f"--server-key={ready['server_key']}"]
        else:
            target = [f"--contact={ready['contact']}"]
        client = Child(SCRIPT, f"{impl}-{CLIENT_ROLE[kind]}", *common, *target, *extra)
        children.append(client)
        client_result = client.read(timeout)
        if client.wait(30) != 0:
            raise BenchError(f"{client.name} exited with an error")
        server.proc.stdin.close()
        server_result = {"loop": ready.get("loop"), **server.read(30)}
        if server.wait(30) != 0:
            raise BenchError(f"{server.name} exited with an error")
    except BaseException:
        kill_all(children)
        raise
    finally:
        stop_all(children)
    return summarise(kind, impl, n, client_result, server_result)


def summarise(kind: str, impl: str, n: int, client: dict, server: dict) -> dict:
    out: dict = {"impl": impl, "kind": kind, "loop": [client.get("loop"), server.get("loop")]}
    problems = []
    for side, res in (("client", client), ("server", server)):
        if "ok" in res and not res["ok"]:
            problems.append(f"{side}: " + "; ".join(res.get("errors") or ["check failed"]))
    if kind == "oneway":
        if "t_last" not in server:
            problems.append("the receiver never had all messages")
        else:
            out["msgs_per_s"] = n / (server["t_last"] - client["t0"])
            if "t_flushed" in client:
                out["flush_msgs_per_s"] = n / (client["t_flushed"] - client["t0"])
            out["send_loop_msgs_per_s"] = n / (client["t_sent"] - client["t0"])
    elif kind == "rr":
        out["msgs_per_s"] = client["rate"]
    else:
        for key in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us"):
            out[key] = client[key]
    if impl == "za":
        out["drops"] = {**client.get("drops", {}), **{f"server_{k}": v for k, v in server.get("drops", {}).items()}}
        out["node_stats"] = {"client": client.get("node"), "server": server.get("node")}
        out["delivery_stats"] = {"client": client.get("delivery"), "server": server.get("delivery")}
        out["transport_stats"] = {"client": client.get("transport"), "server": server.get("transport")}
    out["cpu_us_per_msg"] = {
        "client": client.get("cpu", {}).get("cpu_us"),
        "client_main": client.get("cpu", {}).get("main_us"),
        "server": server.get("cpu", {}).get("cpu_us"),
        "server_main": server.get("cpu", {}).get("main_us"),
    }
    out["correct"] = not problems
    if problems:
        raise BenchError(f"{impl} {kind}: correctness check failed: " + " | ".join(problems))
    return out


def orchestrate(args) -> int:
    started = time.perf_counter()
    box = BoxLoad()  # other work on the box skews every figure: keep it visible
    kinds = [k for k in KINDS if k in args.only.split(",")]
    impls = [i for i in ("raw", "za") if i in args.impl.split(",")]
    counts = {
        "oneway": (args.messages, args.warmup),
        "rr": (args.rr_messages, args.warmup),
        "pingpong": (args.pingpong_samples, args.pingpong_warmup),
    }
    runs: dict[tuple[str, str], list[dict]] = {(k, i): [] for k in kinds for i in impls}
    try:
        for repeat in range(args.repeats):
            for kind in kinds:
                n, warmup = counts[kind]
                # alternate which side goes first so slow drift does not favour one of them
                order = impls if repeat % 2 == 0 else impls[::-1]
                for impl in order:
                    timeout = args.timeout or (60 + n / 500)
                    res = measure(kind, impl, n, warmup, args.window, timeout, args.profile_dir, args.delivery,
                                  args.batch, args.rate_limit, args.recv_hwm)
                    runs[(kind, impl)].append(res)
                    figure = (f"{res['msgs_per_s']:,.0f} msg/s" if "msgs_per_s" in res
                              else f"p50 {res['p50_us']:.0f} µs p99 {res['p99_us']:.0f} µs")
                    log(f"[{repeat + 1}/{args.repeats}] {kind:8s} {impl:3s}  {figure}")
    except BenchError as exc:
        log(f"throughput benchmark FAILED: {exc}")
        return 1

    out: dict = {"benchmark": "throughput"}
    for kind in kinds:
        for impl in impls:
            rs = runs[(kind, impl)]
            prefix = "" if impl == "za" else "raw_"
            if kind in ("oneway", "rr"):
                out[f"{prefix}{kind}_msgs_per_s"] = round(median([r["msgs_per_s"] for r in rs]), 1)
                out[f"{prefix}{kind}_runs_msgs_per_s"] = [round(r["msgs_per_s"], 1) for r in rs]
            else:
                out[f"{prefix}pingpong_p50_us"] = round(median([r["p50_us"] for r in rs]), 1)
                out[f"{prefix}pingpong_p99_us"] = round(median([r["p99_us"] for r in rs]), 1)
                out[f"{prefix}pingpong_max_us"] = round(max(r["max_us"] for r in rs), 1)
            out[f"{prefix}{kind}_correct"] = all(r["correct"] for r in rs)
            out[f"{prefix}{kind}_cpu_us_per_msg"] = {
                field: _median_or_none([r["cpu_us_per_msg"][field] for r in rs])
                for field in ("client", "client_main", "server", "server_main")
            }
        if kind == "oneway" and "za" in impls:
            za = runs[(kind, "za")]
            out["oneway_flush_msgs_per_s"] = round(median([r["flush_msgs_per_s"] for r in za]), 1)
            out["oneway_send_loop_msgs_per_s"] = round(median([r["send_loop_msgs_per_s"] for r in za]), 1)
        if "za" in impls and "raw" in impls:
            if kind in ("oneway", "rr"):
                out[f"{kind}_ratio"] = round(out[f"{kind}_msgs_per_s"] / out[f"raw_{kind}_msgs_per_s"], 3)
            else:
                out["pingpong_p50_ratio"] = round(out["pingpong_p50_us"] / out["raw_pingpong_p50_us"], 3)
        if "za" in impls:
            za_runs = runs[(kind, "za")]
            out[f"{kind}_drops"] = _merge_counts([r.get("drops", {}) for r in za_runs])
            out[f"{kind}_delivery_stats"] = {
                side: _merge_counts([(r["delivery_stats"][side] or {}) for r in za_runs]) for side in ("client", "server")
            }
    out["targets"] = _targets(out)
    out["params"] = {
        "messages": args.messages,
        "rr_messages": args.rr_messages,
        "warmup": args.warmup,
        "window": args.window,
        "pingpong_samples": args.pingpong_samples,
        "pingpong_warmup": args.pingpong_warmup,
        "repeats": args.repeats,
        "quick": args.quick,
        "delivery_overrides": args.delivery or [],
        "batch": args.batch,
        "rate_limit": args.rate_limit or "default",
        "recv_hwm": args.recv_hwm or "default",
        "body_bytes": BODY_BYTES,
        "transport": "tcp://127.0.0.1",
        "curve": True,
        "hwm": HWM,
        "processes": "sender and receiver in separate processes; fresh pair per run; raw/zmqagents interleaved",
        "oneway_rate": "N / (receiver's clock at N-th delivery - sender's clock before first measured send), CLOCK_MONOTONIC",
        "rr_rate": "N / (client: last reply - end of warm-up), window requests in flight",
        "statistic": "median over repeats (p50/p99: median of per-run percentiles)",
    }
    loops = {loop for rs in runs.values() for r in rs for loop in r["loop"]}
    out["env"] = {**environment(), **box.report(), "loops": sorted(str(x) for x in loops), "uvloop_used": loops == {"uvloop"}}
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))
    return 0


def _median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(median(values), 2) if values else None


def _merge_counts(dicts: list[dict]) -> dict:
    merged: dict = {}
    for d in dicts:
        for k, v in d.items():
            merged[k] = merged.get(k, 0) + v
    return merged


def _targets(out: dict) -> dict:
    t: dict = {}
    if "oneway_ratio" in out:
        t["oneway_ratio_ge_0.5"] = out["oneway_ratio"] >= 0.5
    if "pingpong_p50_us" in out:
        t["pingpong_p50_le_150us"] = out["pingpong_p50_us"] <= 150
        t["pingpong_p99_le_400us"] = out["pingpong_p99_us"] <= 400
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts, one repeat (seconds)")
    p.add_argument("--messages", type=int, help="one-way messages per run (default 100000; quick 3000)")
    p.add_argument("--rr-messages", type=int, help="request/reply round trips per run (default 50000; quick 2000)")
    p.add_argument("--pingpong-samples", type=int, help="ping-pong samples per run (default 5000; quick 300)")
    p.add_argument("--repeats", type=int, help="runs per measurement; the median is reported (default 5; quick 1)")
    p.add_argument("--window", type=int, default=64, help="requests in flight for request/reply (default 64)")
    p.add_argument("--warmup", type=int, help="messages before the measured interval (default 5000; quick 500)")
    p.add_argument("--only", default=",".join(KINDS), help="comma list of oneway,rr,pingpong")
    p.add_argument("--impl", default="raw,za", help="comma list of raw,za")
    p.add_argument("--timeout", type=float, default=0, help="seconds a client may take (default: from the count)")
    p.add_argument("--profile-dir", help="write a cProfile .prof per zmqagents child process into this directory")
    p.add_argument("--batch", type=int, default=0, metavar="N",
                   help="zmqagents one-way sender: node.send_many with N bodies at a time (default 0: node.send each)")
    p.add_argument("--rate-limit", type=float, default=0, metavar="MSGS",
                   help="zmqagents nodes accept MSGS messages/s per peer (burst as much) instead of the default")
    p.add_argument("--recv-hwm", type=int, default=0, metavar="N",
                   help="zmqagents nodes let libzmq read N messages ahead per connection instead of the default")
    p.add_argument("--compare", metavar="REF", help="run commit REF's benchmark and this one's side by side, "
                   "interleaved, and print both (bench/compare.py; --quick and --repeats carry over)")
    p.add_argument("--delivery", action="append", metavar="FIELD=VALUE",
                   help="override a DeliveryConfig field on both zmqagents nodes (repeatable), e.g. window=4096")
    # child-only arguments
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--server-key", help=argparse.SUPPRESS)
    p.add_argument("--contact", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        return child_main(args)
    if args.compare:
        import compare  # bench/ is sys.path[0]

        return compare.main([*(["--quick"] if args.quick else []),
                             *(["--rounds", str(args.repeats)] if args.repeats else []), args.compare])
    q = args.quick
    args.messages = args.messages or (3000 if q else 100_000)
    args.rr_messages = args.rr_messages or (2000 if q else 50_000)
    args.pingpong_samples = args.pingpong_samples or (300 if q else 5000)
    args.pingpong_warmup = 50 if q else 500
    args.repeats = args.repeats or (1 if q else 5)
    args.warmup = args.warmup if args.warmup is not None else (500 if q else 5000)
    if min(args.messages, args.rr_messages, args.pingpong_samples, args.repeats, args.window, args.warmup) < 1:
        p.error("counts, warm-up, repeats and window must be positive")
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
