"""What a running sidecar saves a shell pipeline (issue 15 item 2): `echo x | zmqagents task CAP` through
the sidecar's local API vs with a node of the command's own (--direct: a new identity, a join).

    python bench/cli_sidecar.py [--runs 20]

A seed (`zmqagents node`), an agent serving `upper` (`zmqagents agent --exec 'tr a-z A-Z'`) and a sidecar
(`zmqagents node --config`, joined through the seed) run as real processes on loopback. Then, in
alternation so that both see the same load, `--runs` times each:

* ``sidecar``: ``echo '"x"' | zmqagents task upper --socket SOCK``;
* ``direct``:  ``echo '"x"' | zmqagents task upper --direct --mesh @seed.contact``.

Each run is the wall time of the whole process (Python's start included: that is what a pipeline
pays) and must print the completed result, else the run is invalid. ``python_start_s`` (p50 of
``python -c pass`` runs, and of ``zmqagents --version``) shows the floor both share. Prints one JSON
object: ``task_sidecar_p50_s``, ``task_direct_p50_s`` (and p90, max), ``speedup`` (direct / sidecar p50),
``saved_s`` and the load average seen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from _common import cli_process, log

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "zmqagents.cli"]


def process(args: list[str], ready, what: str, env: dict):
    """A long-running CLI process, up once ``ready()`` says so, stopped by PID (``_common.cli_process``)."""
    return cli_process(CLI + args, ready, what, env)


def timed(args: list[str], env: dict, stdin: str | None = None, *, check: bool = True) -> float:
    began = time.perf_counter()
    out = subprocess.run(CLI + args if args[:1] != ["python"] else [sys.executable] + args[1:], input=stdin,
                         capture_output=True, text=True, timeout=120, env=env)
    took = time.perf_counter() - began
    if check:
        result = json.loads(out.stdout.splitlines()[-1]) if out.stdout.strip() else {}
        if out.returncode != 0 or result.get("output") != "X":
            raise RuntimeError(f"invalid run {args}: exit {out.returncode}, {out.stdout[-500:]} {out.stderr[-1000:]}")
    return took


def stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 4),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
            "max": round(ordered[-1], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zabs-", dir="/tmp"))  # unix socket paths are short
    env = dict(os.environ, PYTHONPATH=str(REPO), ZMQAGENTS_CONTEXTS=str(work / "contexts.json"))
    env.pop("ZMQAGENTS_MESH", None)
    sock = work / "node.sock"
    seed_contact = work / "seed.contact"
    config = work / "sidecar.toml"
    config.write_text(
        f'[node]\nkey = "{work / "sidecar.key"}"\nlisten = "tcp://127.0.0.1:0"\ndrain_timeout = 1\n'
        f'[local_api]\npath = "{sock}"\nmode = 0o600\n[spool]\ndir = "{work / "spool"}"\n'
        '[mdns]\nenabled = false\n[admin]\nenabled = false\n')
    load_before = os.getloadavg()
    try:
        with ExitStack() as stack:
            stack.enter_context(process(["node", "--contact-file", str(seed_contact)], seed_contact.exists, "seed", env))
            agent_contact = work / "agent.contact"
            stack.enter_context(process(["agent", "--capability", "upper", "--stdin", "text", "--exec", "tr a-z A-Z",
                                         "--mesh", f"@{seed_contact}", "--contact-file", str(agent_contact)],
                                        agent_contact.exists, "agent", env))
            stack.enter_context(process(["node", "--config", str(config), "--mesh", f"@{seed_contact}"], sock.exists,
                                        "sidecar", env))
            sidecar = ["task", "upper", "--socket", str(sock)]
            direct = ["task", "upper", "--direct", "--mesh", f"@{seed_contact}"]
            deadline = time.monotonic() + 30  # until the sidecar finds the agent's provider record
            while True:
                try:
                    timed(sidecar, env, '"x"\n')
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            timed(direct, env, '"x"\n')  # warm the file cache for both
            via, own, floor, version = [], [], [], []
            for i in range(args.runs):
                via.append(timed(sidecar, env, '"x"\n'))
                own.append(timed(direct, env, '"x"\n'))
                floor.append(timed(["python", "-c", "pass"], env, check=False))
                version.append(timed(["--version"], env, check=False))
                log(f"run {i + 1}/{args.runs}: sidecar {via[-1]:.3f} s, direct {own[-1]:.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s, d = stats(via), stats(own)
    print(json.dumps({
        "bench": "cli_sidecar", "runs": args.runs,
        "task_sidecar_p50_s": s["p50"], "task_sidecar_p90_s": s["p90"], "task_sidecar_max_s": s["max"],
        "task_direct_p50_s": d["p50"], "task_direct_p90_s": d["p90"], "task_direct_max_s": d["max"],
        "speedup": round(d["p50"] / s["p50"], 2), "saved_s": round(d["p50"] - s["p50"], 4),
        "python_start_s": stats(floor)["p50"], "cli_version_s": stats(version)["p50"],
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
