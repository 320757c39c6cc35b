"""How fast `zmqagents request` and `zmqagents task` get out of a shell user's way (issue 16).

    python bench/cli_pipes.py [--lines 100] [--rounds 3] [--baseline REV] [--quick]

Two figures per command, each with --lines lines in flight at once (--parallel = --lines):

* ``*_last_answer_to_exit_s``: from reading the last result line on the command's stdout to the
  process's exit (stdin already closed, every answer in);
* ``*_sigterm_to_exit_s``: from SIGTERM, sent once every line is running at its server (each
  run leaves a mark file), to the exit; the command must print one ``canceled`` line per input
  line and exit 143, else the run is invalid.

The servers are real CLI processes (``reply`` and ``agent`` running a shell command per line) on
loopback. ``task_one_line_wall_s`` is ``echo '"x"' | zmqagents task work`` end to end (p50 of
--one-line runs, 20 by default), the mesh named by a context (no flag, no sidecar); a baseline that
has no contexts is given --bootstrap instead. Each figure is the median (and max) over --rounds runs. With --baseline REV the same
runs are made with the ``zmqagents`` package of git revision REV (extracted to a temporary
directory) and each figure gets a ``*_ratio`` (this tree / REV); a baseline run that does not
exit 143 with every line reported is recorded as such, not as a time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from _common import cli_process, log

REPO = Path(__file__).resolve().parent.parent


def cli(pythonpath: Path) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return [sys.executable, "-m", "zmqagents.cli"], env


@contextmanager
def server(cmd: list[str], env: dict, args: list[str], contact: Path):
    with cli_process(cmd + args + ["--contact-file", str(contact)], contact.exists, f"server {args[0]}", env):
        yield f"@{contact}"


def client_args(kind: str, contact: str, lines: int) -> list[str]:
    if kind == "request":
        return ["request", "--to", contact, "--parallel", str(lines), "--timeout", "120"]
    return ["task", "work", "--bootstrap", contact, "--parallel", str(lines)]


def drain_once(cmd, env, kind: str, contact: str, lines: int) -> float:
    """Seconds from the last result line read to the exit."""
    proc = subprocess.Popen(cmd + client_args(kind, contact, lines), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        proc.stdin.write("".join(f'"x{i}"\n' for i in range(lines)))
        proc.stdin.close()
        got = 0
        last = time.monotonic()
        for line in proc.stdout:
            if '"line"' in line:
                got += 1
                last = time.monotonic()
        status = proc.wait(timeout=60)
        exited = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if status != 0 or got != lines:
        raise RuntimeError(f"{kind}: exit {status} with {got}/{lines} results: {proc.stderr.read()[-2000:]}")
    return exited - last


def sigterm_once(cmd, env, kind: str, contact: str, lines: int, marks: Path) -> float | None:
    """Seconds from SIGTERM (every line running) to the exit; None if the command did not exit 143
    printing one canceled line per input line (a baseline may not)."""
    for mark in marks.iterdir():
        mark.unlink()
    proc = subprocess.Popen(cmd + client_args(kind, contact, lines), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        proc.stdin.write("".join(f'"x{i}"\n' for i in range(lines)))
        proc.stdin.flush()  # left open: the command is mid-pipeline
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) < lines:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: the lines did not all start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        exited = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    canceled = sum(1 for line in out.splitlines() if line.strip() and json.loads(line).get("state") == "canceled")
    if proc.returncode != 143 or canceled != lines:
        log(f"{kind}: SIGTERM gave exit {proc.returncode} and {canceled}/{lines} canceled lines")
        return None
    return exited - sent


def one_line_walls(cmd, env, contact: str, runs: int, work: Path) -> list[float]:
    """Wall seconds of `echo '"x"' | zmqagents task work`, the mesh from a context when the CLI has them."""
    env = dict(env, ZMQAGENTS_CONTEXTS=str(work / "contexts.json"))
    added = subprocess.run(cmd + ["context", "add", "bench", "--mesh", contact, "--use", "--force"], env=env,
                           capture_output=True, text=True, timeout=60)
    where = [] if added.returncode == 0 else ["--bootstrap", contact]
    walls = []
    for _ in range(runs):
        began = time.monotonic()
        done = subprocess.run(cmd + ["task", "work", *where], input='"x"\n', env=env, capture_output=True, text=True,
                              timeout=60)
        walls.append(time.monotonic() - began)
        if done.returncode != 0:
            raise RuntimeError(f"one-line task: exit {done.returncode}: {done.stderr[-2000:]}")
    return walls


def package_dir(cmd, env) -> str:
    """Where the measured CLI imports zmqagents from (so a baseline is known to be the baseline)."""
    return subprocess.run([cmd[0], "-c", "import os, zmqagents; print(os.path.dirname(zmqagents.__file__))"], env=env,
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def measure(pythonpath: Path, lines: int, rounds: int, work: Path, one_line: int) -> dict:
    cmd, env = cli(pythonpath)
    where = package_dir(cmd, env)
    if not where.startswith(str(pythonpath)):
        raise RuntimeError(f"measuring {where}, not the zmqagents under {pythonpath}")
    marks = work / "marks"
    marks.mkdir(exist_ok=True)
    fast = "sleep 0.5; cat"
    hung = f"touch {marks}/$$; exec sleep 30"

    def serve(kind: str, job: str, name: str):
        args = (["reply", "--concurrency", str(lines + 8)] if kind == "request" else
                ["agent", "--capability", "work", "--max-concurrency", str(lines + 8)])
        return server(cmd, env, args + ["--exec", job], work / f"{kind}-{name}.contact")

    out: dict = {"package": where}
    for kind in ("request", "task"):
        with serve(kind, fast, "fast") as contact:
            drains = [drain_once(cmd, env, kind, contact, lines) for _ in range(rounds)]
            if kind == "task":
                walls = one_line_walls(cmd, env, contact, one_line, work)
                out["task_one_line_wall_s"] = round(statistics.median(walls), 4)
        stops = []
        for i in range(rounds):  # a fresh server each time: a reply server keeps running what it was given
            with serve(kind, hung, f"hung{i}") as contact:
                stops.append(sigterm_once(cmd, env, kind, contact, lines, marks))
        out[f"{kind}_last_answer_to_exit_s"] = round(statistics.median(drains), 4)
        out[f"{kind}_last_answer_to_exit_max_s"] = round(max(drains), 4)
        good = [s for s in stops if s is not None]
        out[f"{kind}_sigterm_to_exit_s"] = round(statistics.median(good), 4) if good else None
        out[f"{kind}_sigterm_to_exit_max_s"] = round(max(good), 4) if good else None
        out[f"{kind}_sigterm_runs_ok"] = len(good)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100, help="lines in flight at once (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--baseline", metavar="REV", help="also measure the zmqagents of git revision REV")
    parser.add_argument("--one-line", type=int, default=20, help="runs of the one-line task (default 20)")
    parser.add_argument("--quick", action="store_true", help="20 lines, one round, 3 one-line runs (the smoke test)")
    args = parser.parse_args()
    lines, rounds, one_line = (20, 1, 3) if args.quick else (args.lines, args.rounds, args.one_line)
    with tempfile.TemporaryDirectory(prefix="zmqa-clipipes-") as tmp:
        work = Path(tmp)
        os.chdir(work)  # `python -m` puts the working directory first on sys.path: it must hold no zmqagents
        (work / "new").mkdir()
        result = {"bench": "cli_pipes", "params": {"lines": lines, "rounds": rounds, "quick": args.quick,
                                                    "baseline": args.baseline, "one_line": one_line}}
        result.update(measure(REPO, lines, rounds, work / "new", one_line))
        if args.baseline:
            old = work / "old"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "zmqagents"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            (work / "oldrun").mkdir()
            base = measure(old, lines, rounds, work / "oldrun", one_line)
            for key, value in base.items():
                result[f"baseline_{key}"] = value
                if key.endswith("_s") and isinstance(value, (int, float)) and value > 0 \
                        and isinstance(result.get(key), (int, float)):
                    result[f"{key[:-2]}_ratio"] = round(result[key] / value, 4)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
