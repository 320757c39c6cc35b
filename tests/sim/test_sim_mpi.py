"""The simulator on MPI (zmqagents/sim/mpi.py): `mpirun -n 2 zmqagents sim` is the same run as
`--workers 2` (forked workers) and `--workers 1` (one process), report for report.

These tests run the real launcher (MPICH's mpirun, Hydra) and real ranks. They need MPICH and
mpi4py built against it: .ci/run installs both (Debian's mpich and libmpich-dev, then the `mpi`
extra through scripts/_venv.sh). Where either is missing they fail and say what to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from zmqagents.sim.mpi import INSTALL, job

ZMQAGENTS = str(Path(sys.executable).with_name("zmqagents"))  # the console script of this venv

# Report fields that differ between runs of the same scenario, and why:
#   wall_s, build_wall_s, join_check_wall_s: wall-clock seconds;
#   peak_rss_mb: peak memory, summed over the processes (one process holds every node; each worker
#     or rank holds its share, plus its own interpreter and, for ranks, MPI);
#   workers: 1, 2, 2;
#   parallel: absent in one process; for workers and ranks its backend (fork, mpi) and its
#     per-worker wall-clock and memory figures (swap_wait_s, peak_rss_mb) differ, while windows and
#     lookahead_s must not (compared below).
WALL_CLOCK = ("wall_s", "build_wall_s", "join_check_wall_s", "peak_rss_mb", "workers", "parallel")

# Joins, crashes, pauses, a partition, loss: every kind of cross-worker traffic and the join-check
# barrier. With the partition this scenario ends in 128 (crashes left undetected), so the test also
# sees a non-zero exit code travel to every rank.
SCENARIO = ["--nodes", "120", "--seconds", "20", "--seed", "3", "--loss", "0.01", "--crash", "3", "--pause", "2%",
            "--partition", "12:15:0.2", "--warm-start", "--join-fraction", "0.05", "--trace", "--json", "--quiet"]


def _mpirun() -> str:
    path = shutil.which("mpirun")
    if path is None:
        pytest.fail("mpirun is missing: install MPICH (Debian/Ubuntu: apt-get install mpich libmpich-dev; "
                    ".ci/run installs it), then rerun ./scripts/test, which builds mpi4py against it")
    if importlib.util.find_spec("mpi4py") is None:
        pytest.fail(f"mpi4py is not installed in this venv: {INSTALL} (./scripts/test does it once mpicc is there)")
    return path


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout end that session (mpirun and its ranks) and fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} ... did not end within {timeout} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _ranks(mpirun: str, n: int, *args: str) -> list[str]:
    """``mpirun -n n zmqagents sim ARGS``, each rank wrapped to print its own exit code on stderr."""
    return [mpirun, "-n", str(n), "sh", "-c",
            '"$0" sim "$@"; code=$?; echo "rank $PMI_RANK exit $code" >&2; exit $code', ZMQAGENTS, *args]


def _report(res: subprocess.CompletedProcess) -> dict:
    assert res.stdout.count('"exit_code"') == 1, res.stdout[-2000:] + res.stderr[-2000:]  # one report
    return json.loads(res.stdout)


@pytest.mark.timeout(600)
def test_mpi_ranks_run_the_same_run_as_forked_workers_and_one_process():
    mpirun = _mpirun()
    ranks = _run(_ranks(mpirun, 2, *SCENARIO))
    forked = _run([ZMQAGENTS, "sim", *SCENARIO, "--workers", "2"])
    single = _run([ZMQAGENTS, "sim", *SCENARIO, "--workers", "1"])
    r, f, s = (_report(x) for x in (ranks, forked, single))

    assert r["exit_code"] == f["exit_code"] == s["exit_code"] == 128
    assert ranks.returncode == forked.returncode == single.returncode == 128, ranks.stderr
    # only rank 0 printed the report (above); every rank exited with its exit code
    assert sorted(line for line in ranks.stderr.splitlines() if line.startswith("rank ")) == \
        ["rank 0 exit 128", "rank 1 exit 128"], ranks.stderr
    assert ranks.stderr.count("sim: seed 3, 2 MPI ranks") == 1

    strip = lambda rep: json.dumps({k: v for k, v in rep.items() if k not in WALL_CLOCK}, sort_keys=True)  # noqa: E731
    assert r["trace_digest"] and r["trace_digest"] == f["trace_digest"] == s["trace_digest"]
    assert strip(r) == strip(f) == strip(s)
    assert (r["workers"], f["workers"], s["workers"]) == (2, 2, 1) and "parallel" not in s
    assert r["parallel"]["backend"] == "mpi" and f["parallel"]["backend"] == "fork"
    for key in ("windows", "lookahead_s"):
        assert r["parallel"][key] == f["parallel"][key]
    assert r["parallel"]["windows"] > 1000
    for rep in (r, f):
        per = rep["parallel"]["peak_rss_mb"]
        assert len(per) == 2 and all(m > 10 for m in per)
        assert rep["peak_rss_mb"] == pytest.approx(sum(per), abs=0.2)
    # the run did something worth comparing
    assert r["crashes"] == 3 and r["join"]["joined_ok"] > 0 and r["failed_partitioned"] > 0


@pytest.mark.timeout(300)
def test_mpi_ranks_run_the_same_dht_run_as_one_process():
    mpirun = _mpirun()
    args = ["--nodes", "40", "--seconds", "50", "--seed", "2", "--dht-keys", "10", "--crash", "10%", "--trace",
            "--json", "--quiet"]
    ranks = _run(_ranks(mpirun, 2, *args))
    single = _run([ZMQAGENTS, "sim", *args, "--workers", "1"])
    r, s = _report(ranks), _report(single)
    strip = lambda rep: json.dumps({k: v for k, v in rep.items() if k not in WALL_CLOCK}, sort_keys=True)  # noqa: E731
    assert r["trace_digest"] == s["trace_digest"] and strip(r) == strip(s)
    assert r["dht"]["puts_stored"] == 10 and ranks.returncode == single.returncode == r["exit_code"]


@pytest.mark.timeout(120)
def test_a_failing_rank_aborts_the_job_with_its_traceback():
    """A rank that raises must not leave the others waiting at the next swap: it prints its traceback
    and aborts the job (MPI_Abort), and mpirun ends non-zero."""
    mpirun = _mpirun()
    script = (
        "from zmqagents.sim import mpi, overlay\n"
        "real = overlay.OverlayRun.counts\n"
        "def broken(self):\n"
        "    if self.worker == 1 and self.sim.now > 2.0:\n"
        "        raise RuntimeError('rank one breaks')\n"
        "    return real(self)\n"
        "overlay.OverlayRun.counts = broken\n"
        "j = mpi.job()\n"
        "mpi.run_mpi(overlay.OverlayScenario(nodes=40, seconds=10.0, seed=1), j)\n"
        "print('not reached')\n"
    )
    res = _run([mpirun, "-n", "2", sys.executable, "-c", script], timeout=90)
    assert res.returncode != 0
    assert "sim: rank 1 of 2 failed" in res.stderr and "rank one breaks" in res.stderr, res.stderr
    assert "not reached" not in res.stdout


@pytest.mark.timeout(120)
def test_flags_that_do_not_fit_mpi_are_refused():
    mpirun = _mpirun()
    res = _run([mpirun, "-n", "2", ZMQAGENTS, "sim", "--nodes", "30", "--workers", "3"], timeout=60)
    assert res.returncode == 2 and "the 2 ranks are the workers" in res.stderr
    res = _run([mpirun, "-n", "2", ZMQAGENTS, "sim", "--nodes", "30", "--broadcast", "1"], timeout=60)
    assert res.returncode == 2 and "--broadcast runs in one process" in res.stderr
    res = _run([mpirun, "-n", "2", ZMQAGENTS, "sim", "--nodes", "30", "--latency", "uniform:0ms:5ms"], timeout=60)
    assert res.returncode == 2 and "smallest delay" in res.stderr


def test_mpi_is_loaded_only_under_an_mpi_launcher_of_two_ranks_or_more(tmp_path):
    assert job({}) is None
    assert job({"PMI_SIZE": "1", "PMI_RANK": "0"}) is None
    assert job({"OMPI_COMM_WORLD_SIZE": "1"}) is None
    # Started by a launcher but mpi4py cannot be loaded: a clear usage error saying what to install.
    fake = tmp_path / "mpi4py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no MPI here')\n")
    env = {**os.environ, "PMI_SIZE": "2", "PMI_RANK": "0", "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([ZMQAGENTS, "sim", "--nodes", "30"], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2
    assert "mpi4py cannot be loaded (no MPI here)" in res.stderr and "zmqagents[mpi]" in res.stderr
