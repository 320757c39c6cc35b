"""One overlay (or DHT) simulation run by several processes: a conservative parallel discrete-event run.

Why: a 10,000-node run is ~5 million events of pure Python, one core's work. The nodes are split
among ``workers`` processes by the top bits of their ids (one region of the id space each; Kademlia
tables cluster by id, so nine messages in ten stay inside a worker), and every worker runs only its
own nodes' cores.

How the workers stay in step. No message arrives sooner than the network's smallest delay ``L``
(:attr:`~zmqagents.sim.netmodel.Network.latency` ``.min_delay``). So once every worker has processed
its events before virtual time ``T``, each may go on to ``T + L`` on its own: nothing another worker
does in that window can reach it before the window ends. After each window the workers swap, each
with each, the messages for the other's nodes and the time of their next event; all of them then
agree on the next window's start (the earliest event anywhere, so idle stretches cost nothing).
A window also ends at every *barrier*, a scenario step that reads other workers' nodes (the join
check's lookups): there the first worker asks the others for their nodes' routing tables, and
they answer until it is done.

Same run, whatever the split: the engine orders every node's events by numbers the node draws
itself, and each sender's network draws come from its own stream (see
:class:`~zmqagents.sim.engine.Simulator`), so a run on 2 workers reports exactly what it does on 1
(the tests compare the two, trace digest included).

The DHT run (:mod:`zmqagents.sim.dht_run`) splits the same way: its puts and gets are scenario-wide
calls every worker runs, and the worker that owns the chosen node does the operation (see
:class:`~zmqagents.sim.dht_run.DhtRun`).

The workers are forked children of the calling process; each sends its partial report back over
a pipe, and the caller merges them (the run class's ``report_from``). A worker that
fails ends the run with its traceback; the others are stopped by their PIDs.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import selectors
import signal
import socket
import struct
import time
import traceback

from ..envelope import Envelope
from .dht_run import DhtRun, DhtScenario
from .engine import frozen_heap
from .overlay import Merged, OverlayRun, OverlayScenario
from ..errors import Error, InvalidArgument

_LEN = struct.Struct(">Q")


class WorkerFailed(Error, RuntimeError):
    """A worker process raised (its traceback is the message) or died."""


class Link:
    """A worker's sockets to every other worker: the per-window swap and the barrier queries.

    The sockets stay blocking; sends are tried without waiting (MSG_DONTWAIT). A window's frames
    are small and the socket buffers large, so a swap is usually one send and one receive per peer;
    only when a send would block does it fall back to select(), reading while it writes, so two
    workers with much to say cannot wait on each other."""

    def __init__(self, worker: int, socks: dict[int, socket.socket]):
        self.worker = worker
        self.socks = socks
        self._bufs = {w: bytearray() for w in socks}
        self._counts: dict[int, tuple[int, ...]] = {}
        self.local_counts = None  # a callable giving this worker's own counts

    # -- framing ---------------------------------------------------------------------------------

    def exchange(self, frames: dict[int, bytes]) -> dict[int, bytes]:
        """Send each peer its frame and read one frame from each."""
        pending: dict[int, memoryview] = {}
        for w, f in frames.items():
            data = _LEN.pack(len(f)) + f
            try:
                n = self.socks[w].send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            if n < len(data):
                pending[w] = memoryview(data)[n:]
        got: dict[int, bytes] = {}
        while pending:  # rare: write what is left while reading, until every frame is out
            want_r = [self.socks[w] for w in self.socks if w not in got]
            readable, writable, _ = select.select(want_r, [self.socks[w] for w in pending], [])
            for s in writable:
                w = self._peer(s)
                try:
                    n = s.send(pending[w], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                if n == len(pending[w]):
                    del pending[w]
                else:
                    pending[w] = pending[w][n:]
            for s in readable:
                w = self._peer(s)
                self._fill(w, block=False)
                frame = self._frame(w)
                if frame is not None:
                    got[w] = frame
        for w in self.socks:
            if w not in got:
                got[w] = self._recv_frame(w)
        return got

    def _peer(self, s: socket.socket) -> int:
        for w, sock in self.socks.items():
            if sock is s:
                return w
        raise KeyError(s)

    def _fill(self, w: int, block: bool) -> None:
        try:
            data = self.socks[w].recv(1 << 20, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not data:
            raise WorkerFailed(f"worker {w} closed its link (it died)")
        self._bufs[w] += data

    def _frame(self, w: int) -> bytes | None:
        buf = self._bufs[w]
        if len(buf) < _LEN.size:
            return None
        (n,) = _LEN.unpack_from(buf)
        if len(buf) < _LEN.size + n:
            return None
        frame = bytes(buf[_LEN.size:_LEN.size + n])
        del buf[:_LEN.size + n]
        return frame

    def _recv_frame(self, w: int) -> bytes:
        while True:
            frame = self._frame(w)
            if frame is not None:
                return frame
            self._fill(w, block=True)

    def _send_one(self, w: int, obj) -> None:
        """One frame to one peer that is reading (a barrier question or answer): a blocking send."""
        frame = pickle.dumps(obj, protocol=5)
        self.socks[w].sendall(_LEN.pack(len(frame)) + frame)

    def _recv_one(self, w: int):
        return pickle.loads(self._recv_frame(w))

    # -- barrier queries ---------------------------------------------------------------------------

    def ask(self, w: int, query):
        """The first worker asks worker ``w`` (which is in serve()) one question."""
        self._send_one(w, ("q", query))
        return self._recv_one(w)

    def serve(self, answer):
        """Answer the first worker's questions with ``answer(*query)`` until it says done; returns
        what it said."""
        while True:
            kind, body = self._recv_one(0)
            if kind == "done":
                return body
            self._send_one(0, answer(*body))

    def done(self, result) -> None:
        """The first worker ends a barrier: every other worker gets ``result``."""
        for w in self.socks:
            self._send_one(w, ("done", result))

    # -- progress ----------------------------------------------------------------------------------

    def note(self, w: int, counts: tuple[int, ...]) -> None:
        self._counts[w] = counts

    def totals(self) -> tuple[int, ...]:
        """The run's counts (:meth:`~zmqagents.sim.overlay.OverlayRun.counts`: events, Failed reports,
        ...) summed over all workers (the others' as of the last swap)."""
        return tuple(map(sum, zip(self.local_counts(), *self._counts.values())))


def _flat(env: Envelope) -> tuple:
    return (env.id, env.src, env.type, env.body, env.dst, env.ts, env.ttl, env.seq, env.ep, env.re, env.ack,
            env.pk, env.sig, env.extra or None)


def _envelope(f: tuple) -> Envelope:
    return Envelope(*f[:13], f[13] or {})


def run_windows(run: OverlayRun, link: Link) -> tuple[int, float]:
    """Drive one worker's part of the run to the scenario's end, window by window. Returns the
    number of windows and the wall seconds spent swapping and waiting for the other workers."""
    sim = run.sim
    until = run.sc.seconds
    end_all = math.nextafter(until, math.inf)
    lookahead = sim.net.latency.min_delay
    assert lookahead > 0
    link.local_counts = run.counts
    peers = list(link.socks)
    t = sim.next_time()
    frames = {w: pickle.dumps((t, math.inf, run.counts(), []), protocol=5) for w in peers}
    for w, frame in link.exchange(frames).items():
        t = min(t, pickle.loads(frame)[0])
    windows = 0
    waited = 0.0
    while t < end_all:
        windows += 1
        end = t + lookahead
        for b in run.checks_at:
            if t < b < end:
                end = b
        if end > end_all:
            end = end_all
        sim.process_before(end)
        ready = time.perf_counter()
        out = sim.take_outbox()
        nxt = sim.next_time()
        sent_min = math.inf
        for msgs in out.values():
            for m in msgs:
                if m[0] < sent_min:
                    sent_min = m[0]
        counts = run.counts()
        frames = {w: pickle.dumps((nxt, sent_min, counts,
                                   [(a, n, d, _flat(env)) for a, n, d, env in out.get(w, ())]), protocol=5)
                  for w in peers}
        t = min(nxt, sent_min)
        for w, frame in link.exchange(frames).items():
            their_next, their_sent, their_counts, msgs = pickle.loads(frame)
            sim.inject([(a, n, d, _envelope(f)) for a, n, d, f in msgs])
            link.note(w, their_counts)
            t = min(t, their_next, their_sent)
        waited += time.perf_counter() - ready
    if until > sim.now:
        sim.now = until
    return windows, waited


def run_class(sc: OverlayScenario) -> type[OverlayRun]:
    """The run a scenario describes: the DHT run (sim/dht_run.py) or the overlay run alone."""
    return DhtRun if isinstance(sc, DhtScenario) else OverlayRun


def _worker(sc: OverlayScenario, worker: int, workers: int, socks: dict[int, socket.socket], result) -> None:
    run = run_class(sc)(sc, worker=worker, workers=workers)
    run.link = Link(worker, socks)
    run.start()
    with frozen_heap():
        windows, waited = run_windows(run, run.link)
    part = run.partial()
    part["windows"] = windows
    part["swap_wait_s"] = waited
    data = pickle.dumps(("ok", part), protocol=5)
    result.sendall(_LEN.pack(len(data)) + data)


def run_parallel(sc: OverlayScenario, workers: int) -> tuple[dict, Merged]:
    """Run ``sc`` on ``workers`` forked processes; returns the report and the merged parts (for a plot)."""
    if workers < 2:
        raise InvalidArgument("run_parallel needs at least 2 workers (OverlayRun(sc).run() runs in this process)")
    if not OverlayRun.lookahead(sc) > 0:
        raise InvalidArgument(f"latency {sc.latency!r} has no smallest delay above 0: the workers could not run "
                         "apart in virtual time (give a floor, e.g. lognormal:5ms:0.5:1ms, or use one worker)")
    cls = run_class(sc)
    cls.prepare(sc)  # before the fork: the scenario in the report is the one the workers ran
    t0 = time.perf_counter()
    pairs = {}
    for i in range(workers):
        for j in range(i + 1, workers):
            a, b = socket.socketpair()
            for s in (a, b):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            pairs[i, j] = a
            pairs[j, i] = b
    children: dict[int, tuple[int, socket.socket]] = {}
    try:
        for w in range(workers):
            mine, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:  # the worker
                code = 0
                try:
                    mine.close()
                    socks = {j: pairs[w, j] for j in range(workers) if j != w}
                    for (i, j), s in pairs.items():
                        if i != w:
                            s.close()
                    _worker(sc, w, workers, socks, theirs)
                except BaseException:
                    code = 1
                    try:
                        data = pickle.dumps(("error", f"worker {w}:\n{traceback.format_exc()}"))
                        theirs.sendall(_LEN.pack(len(data)) + data)
                    except OSError:
                        pass
                finally:
                    os._exit(code)
            theirs.close()
            children[w] = (pid, mine)
        for s in pairs.values():
            s.close()
        parts = _collect(children)
    finally:
        for pid, s in children.values():
            s.close()
            try:
                os.kill(pid, signal.SIGKILL)  # only if it is still there: it has sent its part or failed
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    build = max(p["build_wall"] for p in parts)
    report = cls.report_from(sc, parts, time.perf_counter() - t0 - build)
    parts.sort(key=lambda p: p["worker"])
    report["parallel"] = {
        "windows": parts[0]["windows"],
        "lookahead_s": OverlayRun.lookahead(sc),
        "swap_wait_s": [round(p["swap_wait_s"], 2) for p in parts],
        "measured": "windows: steps the workers took in lockstep; swap_wait_s: per worker, wall seconds spent "
                    "swapping messages and waiting for the others at the end of windows",
    }
    return report, Merged(sc, parts)


def _collect(children: dict[int, tuple[int, socket.socket]]) -> list[dict]:
    """Every worker's partial report; the first failure ends the run."""
    sel = selectors.DefaultSelector()
    bufs = {}
    for w, (pid, s) in children.items():
        sel.register(s, selectors.EVENT_READ, w)
        bufs[w] = bytearray()
    parts: dict[int, dict] = {}
    while len(parts) < len(children):
        for key, _ in sel.select():
            w = key.data
            data = key.fileobj.recv(1 << 20)
            if not data:
                raise WorkerFailed(f"worker {w} died without a report")
            buf = bufs[w]
            buf += data
            if len(buf) >= _LEN.size and len(buf) >= _LEN.size + _LEN.unpack_from(buf)[0]:
                kind, body = pickle.loads(bytes(buf[_LEN.size:]))
                if kind != "ok":
                    raise WorkerFailed(body)
                parts[w] = body
                sel.unregister(key.fileobj)
    return list(parts.values())
