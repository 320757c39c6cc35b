"""One overlay (or DHT) simulation run by several processes: a conservative parallel discrete-event run.

Why: a 10,000-node run is ~5 million events of pure Python, one core's work. The nodes are split
among ``workers`` processes by the top bits of their ids (one region of the id space each; Kademlia
tables cluster by id, so nine messages in ten stay inside a worker), and every worker runs only its
own nodes' cores.

How the workers stay in step. No message arrives sooner than the network's smallest delay ``L``
(:attr:`~zmqagents.sim.netmodel.Network.latency` ``.min_delay``). So once every worker has processed
its events before virtual time ``T``, each may go on to ``T + L`` on its own: nothing another worker
does in that window can reach it before the window ends. After each window the workers swap, each
with each (:meth:`~zmqagents.sim.exchange.Exchange.swap`), the messages for the other's nodes and
the time of their next event; all of them then agree on the next window's start (the earliest
event anywhere, so idle stretches cost nothing). A window also ends at every *barrier*, a scenario
step that reads other workers' nodes (the join check's lookups): there the first worker asks the
others for their nodes' routing tables, and they answer until it is done.

Same run, whatever the split: the engine orders every node's events by numbers the node draws
itself, and each sender's network draws come from its own stream (see
:class:`~zmqagents.sim.engine.Simulator`), so a run on 2 workers reports exactly what it does on 1
(the tests compare the two, trace digest included).

The DHT run (:mod:`zmqagents.sim.dht_run`) splits the same way: its puts and gets are scenario-wide
calls every worker runs, and the worker that owns the chosen node does the operation (see
:class:`~zmqagents.sim.dht_run.DhtRun`).

Who the workers are. By default (:func:`run_parallel`) they are forked children of the calling
process, talking over socketpairs; each sends its partial report back over a pipe, and the caller
merges them (the run class's ``report_from``). A worker that fails ends the run with its traceback;
the others are stopped by their PIDs. Under ``mpirun`` they are the MPI ranks (:mod:`zmqagents.sim.mpi`),
talking over MPI collectives, on one machine or many. Both go through the same
:class:`~zmqagents.sim.exchange.Exchange` interface and the same code here (:func:`run_part`,
:func:`run_windows`, :func:`finish`), so they run the same run and print the same report.
"""

from __future__ import annotations

import math
import os
import selectors
import signal
import socket
import time
import traceback

from ..envelope import Envelope
from .dht_run import DhtRun, DhtScenario
from .engine import frozen_heap
from .exchange import Exchange, PipeExchange, WorkerFailed, frame, unframe
from .overlay import Merged, OverlayRun, OverlayScenario
from ..errors import InvalidArgument

__all__ = ["WorkerFailed", "finish", "run_parallel", "run_part", "run_windows"]


def _flat(env: Envelope) -> tuple:
    return (env.id, env.src, env.type, env.body, env.dst, env.ts, env.ttl, env.seq, env.ep, env.re, env.ack,
            env.pk, env.sig, env.extra or None)


def _envelope(f: tuple) -> Envelope:
    return Envelope(*f[:13], f[13] or {})


def run_windows(run: OverlayRun, link: Exchange) -> tuple[int, float]:
    """Drive one worker's part of the run to the scenario's end, window by window. Returns the
    number of windows and the wall seconds spent swapping and waiting for the other workers."""
    sim = run.sim
    until = run.sc.seconds
    end_all = math.nextafter(until, math.inf)
    lookahead = sim.net.latency.min_delay
    assert lookahead > 0
    link.local_counts = run.counts
    peers = link.peers
    t = sim.next_time()
    for their in link.swap({w: (t, math.inf, run.counts(), []) for w in peers}).values():
        t = min(t, their[0])
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
        t = min(nxt, sent_min)
        got = link.swap({w: (nxt, sent_min, counts, [(a, n, d, _flat(env)) for a, n, d, env in out.get(w, ())])
                         for w in peers})
        for w, (their_next, their_sent, their_counts, msgs) in got.items():
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


def check(sc: OverlayScenario, workers: int) -> None:
    """Raise InvalidArgument if ``sc`` cannot run on ``workers`` workers."""
    if workers < 2:
        raise InvalidArgument("a parallel run needs at least 2 workers (OverlayRun(sc).run() runs in this process)")
    if not OverlayRun.lookahead(sc) > 0:
        raise InvalidArgument(f"latency {sc.latency!r} has no smallest delay above 0: the workers could not run "
                              "apart in virtual time (give a floor, e.g. lognormal:5ms:0.5:1ms, or use one worker)")


def run_part(sc: OverlayScenario, link: Exchange) -> dict:
    """Build and run the worker ``link.worker``'s part of ``sc`` (its nodes; every scenario-wide call)
    with the others over ``link``; returns its partial report. Called by each worker, forked or rank."""
    run = run_class(sc)(sc, worker=link.worker, workers=link.workers)
    run.link = link
    run.start()
    with frozen_heap():
        windows, waited = run_windows(run, link)
    part = run.partial()
    part["windows"] = windows
    part["swap_wait_s"] = waited
    return part


def finish(sc: OverlayScenario, parts: list[dict], elapsed: float, backend: str) -> tuple[dict, Merged]:
    """The report of a parallel run from every worker's part; ``elapsed``: wall seconds since before
    the workers started building. Returns the report and the merged parts (for a plot)."""
    build = max(p["build_wall"] for p in parts)
    report = run_class(sc).report_from(sc, parts, elapsed - build)
    parts = sorted(parts, key=lambda p: p["worker"])
    report["parallel"] = {
        "backend": backend,
        "windows": parts[0]["windows"],
        "lookahead_s": OverlayRun.lookahead(sc),
        "swap_wait_s": [round(p["swap_wait_s"], 2) for p in parts],
        "peak_rss_mb": [round(p["peak_rss_mb"], 1) for p in parts],
        "measured": "backend: fork (forked workers, socketpairs) or mpi (MPI ranks, collectives); windows: steps "
                    "the workers took in lockstep; per worker: swap_wait_s, wall seconds spent swapping messages "
                    "and waiting for the others at the end of windows, and peak_rss_mb, its peak resident memory",
    }
    return report, Merged(sc, parts)


def _worker(sc: OverlayScenario, worker: int, workers: int, socks: dict[int, socket.socket], result) -> None:
    part = run_part(sc, PipeExchange(worker, workers, socks))
    result.sendall(frame(("ok", part)))


def run_parallel(sc: OverlayScenario, workers: int) -> tuple[dict, Merged]:
    """Run ``sc`` on ``workers`` forked processes; returns the report and the merged parts (for a plot)."""
    check(sc, workers)
    run_class(sc).prepare(sc)  # before the fork: the scenario in the report is the one the workers ran
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
                        theirs.sendall(frame(("error", f"worker {w}:\n{traceback.format_exc()}")))
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
    return finish(sc, parts, time.perf_counter() - t0, "fork")


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
            whole = unframe(buf)
            if whole is not None:
                kind, body = whole[0]
                if kind != "ok":
                    raise WorkerFailed(body)
                parts[w] = body
                sel.unregister(key.fileobj)
    return list(parts.values())
