"""The quick-start demo: a real local mesh doing real work.

Starts worker nodes as separate processes (``zmqagents reply --exec``), each
serving a shell command over CURVE-encrypted ZeroMQ on loopback, then pipes a
batch of JSON lines through ``zmqagents request`` spread across the workers,
and prints some results and a one-line summary. Everything it starts, it
stops (by PID) before exiting.

    python -m zmqagents.demo [--workers 3] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "agent mesh node edge peer task route relay swim kademlia curve envelope signal gossip bus".split()
# Each request is a sentence; each worker counts its words and echoes the longest one, in plain sh + awk.
WORKER_COMMAND = "awk '{ n = NF; w = $1; for (i = 1; i <= NF; i++) if (length($i) > length(w)) w = $i; printf \"{\\\"words\\\": %d, \\\"longest\\\": \\\"%s\\\"}\\n\", n, w }'"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--requests", type=int, default=300, help="JSON lines to pipe through (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the sample sentences")
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 32 or not 1 <= args.requests <= 100_000:
        parser.error("--workers must be 1..32 and --requests 1..100000")

    exe = [sys.executable, "-m", "zmqagents.cli"]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="zmqagents-demo-") as tmp:
        tmpdir = Path(tmp)
        try:
            contacts = []
            for i in range(args.workers):
                key = tmpdir / f"worker{i}.key"
                subprocess.run(exe + ["keygen", str(key)], check=True, stdout=subprocess.DEVNULL)
                contact_file = tmpdir / f"worker{i}.contact"
                procs.append(
                    subprocess.Popen(
                        exe + ["reply", "--key", str(key), "--exec", WORKER_COMMAND, "--contact-file", str(contact_file)],
                        stdout=subprocess.DEVNULL,
                    )
                )
                contacts.append(contact_file)
            _wait_for_files(contacts, procs, timeout=20)
            print(f"started {args.workers} worker nodes (pids {' '.join(str(p.pid) for p in procs)}), CURVE on, tcp loopback", file=sys.stderr)

            rng = random.Random(args.seed)
            lines = [json.dumps(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))) for _ in range(args.requests)]
            to = [arg for c in contacts for arg in ("--to", f"@{c}")]
            start = time.perf_counter()
            run = subprocess.run(
                exe + ["request", *to, "--parallel", "32", "--timeout", "30"],
                input="\n".join(lines) + "\n",
                capture_output=True,
                text=True,
                timeout=300,
            )
            elapsed = time.perf_counter() - start
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    results = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    for result in results[:5]:
        print(json.dumps(result))
    if len(results) > 5:
        print(f"... {len(results) - 5} more")
    if run.stderr.strip():
        print(run.stderr.strip(), file=sys.stderr)
    ok = sum(1 for r in results if r.get("ok"))
    words = sum(r["reply"]["words"] for r in results if r.get("ok") and isinstance(r.get("reply"), dict))
    print(
        f"summary: {ok}/{len(lines)} requests answered by {args.workers} workers, {words} words counted, "
        f"{2 * ok} messages in {elapsed:.2f} s ({ok / elapsed:.0f} requests/s, "
        f"each one a shell command run by a worker), exit code {run.returncode}"
    )
    return 0 if ok == len(lines) and run.returncode == 0 else 1


def _wait_for_files(paths: list[Path], procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"a worker exited early with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("workers did not start within 20 s")
        time.sleep(0.05)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
