"""How the workers of a parallel simulation talk to each other: one small interface, two carriers.

A parallel run (:mod:`zmqagents.sim.parallel`) needs exactly two things from its carrier:

* :meth:`Exchange.swap`: at the end of every window, all workers at once, each hands every other
  worker one object (the messages for that worker's nodes, its next event time, its progress
  counts) and gets one back from each. It is a collective step: every worker calls it the same
  number of times, in the same order.
* :meth:`Exchange.send` / :meth:`Exchange.recv`: blocking point-to-point objects between the first
  worker and one other, for the barrier queries of a join check (:meth:`ask`, :meth:`serve`,
  :meth:`done`, written once here on top of them).

Two carriers implement it: :class:`PipeExchange`, socketpairs between forked workers on one machine
(the zero-install default), and ``MpiExchange`` (:mod:`zmqagents.sim.mpi`), MPI collectives between
the ranks of an ``mpirun`` job, on one machine or many. Everything else (the window loop, the split
of nodes, the report) is the same code for both, so the two give the same run.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
from abc import ABC, abstractmethod
from typing import Any, Callable

from ..errors import Error

_LEN = struct.Struct(">Q")


class WorkerFailed(Error, RuntimeError):
    """A worker process raised (its traceback is the message) or died."""


class Exchange(ABC):
    """One worker's link to the other workers of a parallel run (see the module docstring)."""

    def __init__(self, worker: int, workers: int):
        self.worker = worker
        self.workers = workers
        self.peers = [w for w in range(workers) if w != worker]
        self._counts: dict[int, tuple[int, ...]] = {}
        self.local_counts: Callable[[], tuple[int, ...]] | None = None  # this worker's own counts

    @abstractmethod
    def swap(self, out: dict[int, Any]) -> dict[int, Any]:
        """Give each peer ``out[peer]`` and return what each peer gave this worker (every worker calls
        this together)."""

    @abstractmethod
    def send(self, w: int, obj: Any) -> None:
        """One object to worker ``w``, which is reading (a barrier question or answer)."""

    @abstractmethod
    def recv(self, w: int) -> Any:
        """The next object worker ``w`` sent with :meth:`send`."""

    # -- barrier queries ---------------------------------------------------------------------------

    def ask(self, w: int, query: tuple) -> Any:
        """The first worker asks worker ``w`` (which is in :meth:`serve`) one question."""
        self.send(w, ("q", query))
        return self.recv(w)

    def serve(self, answer: Callable[..., Any]) -> Any:
        """Answer the first worker's questions with ``answer(*query)`` until it says done; returns
        what it said."""
        while True:
            kind, body = self.recv(0)
            if kind == "done":
                return body
            self.send(0, answer(*body))

    def done(self, result: Any) -> None:
        """The first worker ends a barrier: every other worker gets ``result``."""
        for w in self.peers:
            self.send(w, ("done", result))

    # -- progress ----------------------------------------------------------------------------------

    def note(self, w: int, counts: tuple[int, ...]) -> None:
        """Worker ``w``'s counts as of the last swap."""
        self._counts[w] = counts

    def totals(self) -> tuple[int, ...]:
        """The run's counts (:meth:`~zmqagents.sim.overlay.OverlayRun.counts`: events, Failed reports,
        ...) summed over all workers (the others' as of the last swap)."""
        assert self.local_counts is not None
        return tuple(map(sum, zip(self.local_counts(), *self._counts.values())))


class PipeExchange(Exchange):
    """The forked workers' carrier: a socketpair to every other worker, objects pickled into
    length-prefixed frames.

    The sockets stay blocking; sends are tried without waiting (MSG_DONTWAIT). A window's frames
    are small and the socket buffers large, so a swap is usually one send and one receive per peer;
    only when a send would block does it fall back to select(), reading while it writes, so two
    workers with much to say cannot wait on each other."""

    def __init__(self, worker: int, workers: int, socks: dict[int, socket.socket]):
        super().__init__(worker, workers)
        self.socks = socks
        self._bufs = {w: bytearray() for w in socks}

    def swap(self, out: dict[int, Any]) -> dict[int, Any]:
        pending: dict[int, memoryview] = {}
        for w in self.peers:
            data = frame(out[w])
            try:
                n = self.socks[w].send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            if n < len(data):
                pending[w] = memoryview(data)[n:]
        got: dict[int, Any] = {}
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
                if w not in got:
                    whole = unframe(self._bufs[w])
                    if whole is not None:
                        got[w] = whole[0]
                        del self._bufs[w][:whole[1]]
        for w in self.socks:
            if w not in got:
                got[w] = self.recv(w)
        return got

    def send(self, w: int, obj: Any) -> None:
        self.socks[w].sendall(frame(obj))

    def recv(self, w: int) -> Any:
        buf = self._bufs[w]
        while True:
            whole = unframe(buf)
            if whole is not None:
                del buf[:whole[1]]
                return whole[0]
            self._fill(w, block=True)

    # -- the sockets -------------------------------------------------------------------------------

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


def frame(obj: Any) -> bytes:
    """``obj`` pickled into one length-prefixed frame: what goes over a worker's socket."""
    data = pickle.dumps(obj, protocol=5)
    return _LEN.pack(len(data)) + data


def unframe(buf: bytes | bytearray) -> tuple[Any, int] | None:
    """The object of the first complete frame in ``buf`` and the bytes it took, or None if incomplete."""
    if len(buf) < _LEN.size:
        return None
    (n,) = _LEN.unpack_from(buf)
    if len(buf) < _LEN.size + n:
        return None
    return pickle.loads(bytes(buf[_LEN.size:_LEN.size + n])), _LEN.size + n
