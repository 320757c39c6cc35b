"""The simulator on MPI: ``mpirun -n R zmqagents sim ...`` is one parallel run over R ranks.

Why: the forked workers of :mod:`zmqagents.sim.parallel` share one machine. A 100,000-node run, or
10,000 nodes with DHT traffic, wants more cores and memory than one box has, and MPI is what
parallel discrete-event simulation runs on across machines (a launcher that starts the ranks on
every host, collectives tuned for the interconnect), with nothing of our own to deploy.

Each rank is one worker of :mod:`zmqagents.sim.parallel`: the same split of nodes (rank ``r`` of ``R``
runs the nodes ``owner_function(R)`` gives to worker ``r``), the same windows, the same merge, so the
same report as ``--workers R`` (and as one process) for the same seed. Only the carrier differs:
:class:`MpiExchange` makes each window's swap one ``MPI_Alltoall`` of the ranks' pickled
per-destination batches (mpi4py's object ``alltoall``), and a join check's queries point-to-point
sends; rank 0 gathers the partial reports at the end and builds the report.

mpi4py is the optional extra ``mpi`` (``pip install 'zmqagents[mpi]'``). It is imported only when an
MPI launcher started this process with more than one rank (:func:`job` reads the launcher's
environment first), so a plain ``zmqagents sim`` never loads MPI, and ``mpirun -n 1`` runs as without
it. Only rank 0 prints the report; every rank exits with its exit code. A rank that raises prints
its traceback and aborts the job (``MPI_Abort``), so no other rank waits forever at the next swap.

Cost, measured on the 2-core reference box while other work kept 1.6 of its 2 CPUs busy (load 19 to
27), so every wall figure here is inflated several times:

* ``python bench/sim_mpi.py --nodes 10000 --seconds 60 --crash 20`` (one process, 2 forked workers,
  ``mpirun -n 2``): the same report and trace digest all three ways (no false positive, every crash
  detected, detect_all p100 14.6 s); wall 249 / 230 / 290 s; 58,367 windows; peak RSS 1,081 MB in one
  process, 563 + 565 MB forked, 581 + 583 MB on ranks (each worker holds its half of the nodes
  plus ~45 MB every worker keeps about all nodes; a rank carries ~18 MB of MPI more); time spent
  swapping and waiting at window ends 2.5 ms per window forked, 3.8 ms on ranks (mostly waiting for
  the other worker's share of CPU on a box this busy; 0.2 to 2 ms in the small runs of
  tests/sim/test_sim_mpi.py).
* ``mpirun -n 2 zmqagents sim --nodes 100000 --seconds 60 --seed 1 --crash 100 --json``, the same box
  at load 15 to 30: building took ~12.5 min, each rank held 6.0 GB when the run started and 7.0 GB
  at virtual second 24 (peak so far), 10.9 million events had run after 1,585 s of wall time (each
  rank got ~18 % of a CPU); at ~110 wall seconds per virtual second then, the run was stopped (it
  would have taken over an hour more). It needs ~14 GB for the two ranks together.

On a cluster (an estimate from these figures, not a measurement): the work per rank (events, and the
nodes' cores in memory) divides by the number of ranks R; what does not is every rank's copy of what
it knows about all nodes (ids, contacts, liveness: ~4.5 KB per node, 450 MB at 100,000), the
scenario-wide calls each rank runs, and the windows: their number is set by virtual time over the
smallest delay (60,000 for 60 s at the default 1 ms floor), whatever R. Each window costs one swap:
two small collectives and a pickled batch per peer, tens of microseconds on a cluster interconnect
plus ~10 us of Python per peer, so ~0.1 ms at R = 8 to ~1 ms at R = 64 (6 to 60 s per 60,000
windows), against an estimated 30 million events at 100,000 nodes for 60 s (~25 minutes of one core:
the 2 ranks above ran at ~19,000 events per CPU second). So 100,000 nodes scale to some 16 to 32
ranks before the windows dominate; beyond, a larger latency floor (fewer, longer windows) or more
nodes per run pays for more ranks. Cross-rank traffic also grows with R (ranks own id ranges: a
node's contacts in the log2(R) farthest buckets live on other ranks, about 1 message in 10 at R = 2
and 10,000 nodes).
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from array import array
from typing import Any, Callable, Mapping

from ..errors import Error
from .exchange import Exchange
from .overlay import Merged, OverlayScenario
from .parallel import check, finish, run_class, run_part

# What the common launchers put in each rank's environment: MPICH's Hydra and Slurm's PMI-1/PMI-2
# (PMI_SIZE), Open MPI's (OMPI_COMM_WORLD_SIZE); a PMIx launcher (Slurm --mpi=pmix, PRRTE) sets
# PMIX_RANK but no size, which MPI itself then gives.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_RANK_VARS = ("PMIX_RANK",)
_QUERY = 7  # MPI tag of the barrier queries (the swaps are collectives, apart from them)

INSTALL = ("pip install 'zmqagents[mpi]' (on Debian or Ubuntu with their mpich package, build mpi4py against it: "
           "apt-get install mpich libmpich-dev, then pip install --no-binary mpi4py 'zmqagents[mpi]')")


class MpiUnavailable(Error, RuntimeError):
    """Started by an MPI launcher, but mpi4py cannot be loaded (not installed, or built for another MPI)."""


class MpiJob:
    """This process's place in an MPI job: its communicator, rank and the number of ranks."""

    def __init__(self, comm: Any):
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()


def job(environ: Mapping[str, str] = os.environ) -> MpiJob | None:
    """The MPI job of more than one rank this process belongs to, or None: not started by an MPI
    launcher (MPI is not loaded), or started as the only rank. Raises MpiUnavailable if a launcher
    started it and mpi4py cannot be loaded."""
    sizes = [environ[v] for v in _SIZE_VARS if environ.get(v)]
    if sizes:
        try:
            if int(sizes[0]) < 2:
                return None
        except ValueError:
            pass  # an unreadable size: MPI itself will say
    elif not any(environ.get(v) for v in _RANK_VARS):
        return None
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:
        raise MpiUnavailable(f"this process was started by an MPI launcher, but mpi4py cannot be loaded ({exc}): "
                             f"{INSTALL}") from None
    j = MpiJob(MPI.COMM_WORLD)
    return j if j.size > 1 else None


class MpiExchange(Exchange):
    """The ranks' carrier (see the module docstring): rank ``r`` is worker ``r``.

    A swap is two nonblocking collectives: ``MPI_Ialltoall`` of the byte sizes of the pickled
    per-destination batches, then ``MPI_Ialltoallv`` of the batches themselves. The queries are
    nonblocking point-to-point sends, and probes before each receive. Every wait polls the request a
    few dozen times, then sleeps between polls (20 us, doubling up to 200 us): MPICH waits by
    spinning, and a spinning rank on a machine with more runnable processes than cores is not
    woken when its data arrives but only at its next time slice. Measured on the 2-core reference
    box under a load of 10 to 14 (120 nodes, 20 s, 8,469 windows; tests/sim/test_sim_mpi.py's
    scenario): 4.6 ms per window with MPI's blocking waits, 1.0 to 2.2 ms with these polls, 0.2 to
    0.3 ms for the forked workers, which the kernel wakes as their data arrives. On a cluster core
    of its own a rank finds its data within the first polls when the ranks are in balance; the
    sleeps add at most ~0.2 ms to a wait, and only to one that was long already."""

    def __init__(self, comm: Any):
        super().__init__(comm.Get_rank(), comm.Get_size())
        from mpi4py import MPI

        self.comm = comm
        self._int64 = MPI.INT64_T
        self._byte = MPI.BYTE

    def swap(self, out: dict[int, Any]) -> dict[int, Any]:
        n = self.workers
        blobs = [b"" if w == self.worker else pickle.dumps(out[w], protocol=5) for w in range(n)]
        sizes = array("q", map(len, blobs))
        theirs = array("q", bytes(8 * n))
        _wait(self.comm.Ialltoall([sizes, self._int64], [theirs, self._int64]).Test)
        data = bytearray(sum(theirs))
        sent_at, got_at = _offsets(sizes), _offsets(theirs)
        _wait(self.comm.Ialltoallv([b"".join(blobs), (list(sizes), sent_at), self._byte],
                                   [data, (list(theirs), got_at), self._byte]).Test)
        view = memoryview(data)
        return {w: pickle.loads(view[got_at[w]:got_at[w] + theirs[w]]) for w in self.peers}

    def send(self, w: int, obj: Any) -> None:
        _wait(self.comm.isend(obj, dest=w, tag=_QUERY).Test)

    def recv(self, w: int) -> Any:
        _wait(lambda: self.comm.iprobe(source=w, tag=_QUERY))
        return self.comm.recv(source=w, tag=_QUERY)


def _offsets(sizes: array) -> list[int]:
    at, total = [], 0
    for size in sizes:
        at.append(total)
        total += size
    return at


def _wait(done: Callable[[], bool]) -> None:
    """Poll ``done`` until it is true: a few dozen times at once, then with growing sleeps between
    (see :class:`MpiExchange` for why not MPI's own blocking wait)."""
    polls = 0
    pause = 20e-6
    while not done():
        polls += 1
        if polls > 50:
            time.sleep(pause)
            pause = min(2 * pause, 200e-6)


def run_mpi(sc: OverlayScenario, mpi: MpiJob) -> tuple[dict, Merged] | int:
    """Run ``sc`` with every rank of ``mpi`` as one worker. Rank 0 gets the report and the merged
    parts (for a plot); every other rank gets the report's exit code. Every rank must call it."""
    check(sc, mpi.size)
    comm = mpi.comm
    try:
        run_class(sc).prepare(sc)  # each rank alike (it reads only the scenario)
        t0 = time.perf_counter()
        part = run_part(sc, MpiExchange(comm))
        parts = comm.gather(part, root=0)
        if mpi.rank != 0:
            code: int = comm.bcast(None, root=0)
            return code
        report, merged = finish(sc, parts, time.perf_counter() - t0, "mpi")
        comm.bcast(report["exit_code"], root=0)
        return report, merged
    except BaseException:
        sys.stderr.write(f"sim: rank {mpi.rank} of {mpi.size} failed, aborting the MPI job:\n{traceback.format_exc()}")
        sys.stderr.flush()
        comm.Abort(1)
        raise  # Abort does not return
