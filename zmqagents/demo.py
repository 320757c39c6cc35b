"""The quick-start demo: a real local mesh of agents doing real work.

Starts agent nodes as separate processes on loopback, CURVE on: a seed and
``--workers - 1`` more serving the capability ``wordstats`` (a shell command:
count the words of a sentence, echo the longest), and one serving ``shout``
(``tr a-z A-Z``). The agents join the mesh through the seed and publish DHT
provider records for what they serve. Then, as a shell user would:

1. pipes a batch of JSON lines through ``zmqagents task wordstats --parallel 32``,
   which finds the providers in the DHT and spreads the tasks across them
   (one JSON result per line, in input order);
2. runs a two-step workflow across the mesh: ``wordstats`` of a sentence, then
   ``shout`` of the longest word it found (``${steps.stats.output.longest}``).

It prints some results and a summary, and stops (by PID) everything it started.

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
# Each task is a sentence; a wordstats agent counts its words and echoes the longest one, in plain sh + awk.
WORDSTATS_COMMAND = "awk '{ n = NF; w = $1; for (i = 1; i <= NF; i++) if (length($i) > length(w)) w = $i; printf \"{\\\"words\\\": %d, \\\"longest\\\": \\\"%s\\\"}\\n\", n, w }'"
SHOUT_COMMAND = "tr a-z A-Z"
WORKFLOW = """\
name = "stats-then-shout"
[[steps]]
name = "stats"
agent = "capability:wordstats"
input = "${input}"
[[steps]]
name = "shout"
agent = "capability:shout"
input = "${steps.stats.output.longest}"
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="wordstats agent processes (default 3)")
    parser.add_argument("--requests", type=int, default=300, help="JSON lines to pipe through (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the sample sentences")
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 32 or not 1 <= args.requests <= 100_000:
        parser.error("--workers must be 1..32 and --requests 1..100000")

    exe = [sys.executable, "-m", "zmqagents.cli"]
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="zmqagents-demo-") as tmp:
        tmpdir = Path(tmp)
        try:
            seed = tmpdir / "seed.contact"
            agents = [("wordstats", WORDSTATS_COMMAND)] * args.workers + [("shout", SHOUT_COMMAND)]
            for i, (capability, command) in enumerate(agents):
                contact_file = seed if i == 0 else tmpdir / f"agent{i}.contact"
                join = [] if i == 0 else ["--bootstrap", f"@{seed}"]
                logs.append(tmpdir / f"agent{i}.log")
                with open(logs[-1], "w") as log:  # the agents' stderr, shown if the demo fails
                    procs.append(subprocess.Popen(
                        exe + ["agent", "--capability", capability, "--stdin", "text", "--exec", command,
                               "--contact-file", str(contact_file), *join],
                        stdout=subprocess.DEVNULL, stderr=log,
                    ))
                # The seed first: the others join through it. Each writes its contact once its
                # provider record is stored, so the batch below finds every agent in the DHT.
                _wait_for_files([contact_file], procs, timeout=30)
            print(f"started {len(agents)} agent nodes (pids {' '.join(str(p.pid) for p in procs)}): "
                  f"{args.workers} x wordstats, 1 x shout; CURVE on, tcp loopback", file=sys.stderr)

            rng = random.Random(args.seed)
            lines = [json.dumps(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))) for _ in range(args.requests)]
            start = time.perf_counter()
            batch = subprocess.run(
                exe + ["task", "wordstats", "--bootstrap", f"@{seed}", "--parallel", "32", "--timeout", "30"],
                input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300,
            )
            elapsed = time.perf_counter() - start

            flow = tmpdir / "flow.toml"
            flow.write_text(WORKFLOW)
            sentence = "a brokerless mesh of small cooperating agents"
            workflow = subprocess.run(
                exe + ["workflow", "run", str(flow), "--input", json.dumps(sentence), "--bootstrap", f"@{seed}", "--json"],
                capture_output=True, text=True, timeout=120,
            )
        except BaseException:
            for log in logs:
                if log.exists() and log.read_text().strip():
                    print(f"--- {log.name}:\n{log.read_text().strip()[-2000:]}", file=sys.stderr)
            raise
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

    results = [json.loads(line) for line in batch.stdout.splitlines() if line.strip()]
    print(f"== batch: {len(lines)} sentences through `zmqagents task wordstats --parallel 32`")
    for result in results[:5]:
        print(json.dumps(result))
    if len(results) > 5:
        print(f"... {len(results) - 5} more")
    if batch.stderr.strip():
        print(batch.stderr.strip(), file=sys.stderr)
    done = [r for r in results if r.get("state") == "completed" and isinstance(r.get("output"), dict)]
    words = sum(r["output"].get("words", 0) for r in done)
    providers = {r.get("provider") for r in done}

    print(f"== workflow: wordstats of {sentence!r}, then shout of its longest word")
    steps = [json.loads(line) for line in workflow.stdout.splitlines() if line.strip().startswith("{")]
    for step in steps:
        print(json.dumps(step))
    if workflow.returncode != 0 and workflow.stderr.strip():
        print(workflow.stderr.strip(), file=sys.stderr)
    steps_ok = sum(1 for s in steps if s.get("state") == "completed")

    print(
        f"summary: {len(done)}/{len(lines)} tasks completed by {len(providers)} wordstats agents found through "
        f"the DHT, {words} words counted in {elapsed:.2f} s ({len(done) / elapsed:.0f} tasks/s, each one a shell "
        f"command run by an agent); workflow {steps_ok}/2 steps completed; exit codes {batch.returncode}/{workflow.returncode}"
    )
    ok = len(done) == len(lines) and batch.returncode == 0 and workflow.returncode == 0 and steps_ok == 2
    return 0 if ok else 1


def _wait_for_files(paths: list[Path], procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"an agent exited early with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"agents did not start within {timeout:g} s")
        time.sleep(0.05)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
