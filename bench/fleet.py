#!/usr/bin/env python3
"""Fleet admission: what a certificate check costs per new connection, and what join = "fleet" costs a join.

What it measures (tcp on 127.0.0.1, CURVE on every link, default configs otherwise):

* ``cert_check_us_p50`` / ``_p99``: :meth:`zmqagents.certs.Admission.present` on a certificate of a peer
  seen for the first time (decode, issuer, Ed25519 signature, validity, key, revocation list of 64 keys):
  the work a node does once per new peer (a peer already admitted costs a dict lookup per message).
  ``--checks`` distinct peers, each checked once, in a child process. ``ed25519_verify_us_p50`` is a bare
  PyNaCl verification of a message the size of the signed fields, timed in the same child, the floor of
  the check; ``cert_check_vs_verify`` their ratio.
* ``join_open_s`` / ``join_fleet_s``: ``--nodes`` Nodes in one child process on one event loop, every one
  but the seed started at once with ``bootstrap=[seed]``; from that moment until every node's routing
  table holds every other node (all-see-all). ``start_*_s``: until every ``start()`` (the join lookup)
  returned. ``join_fleet_vs_open`` is the ratio of the medians. The two modes alternate, ``--repeat``
  runs each, in fresh child processes, so both see the same box.
* ``fleet_admissions_per_node``: certificates each fleet node accepted during its join (one per peer it
  talked to), ``fleet_held_frames_per_node``: frames it held until a peer's certificate arrived.

Prints one JSON object on stdout; progress goes to stderr.

    python bench/fleet.py           # 20 nodes, 3 runs per mode (~1 min)
    python bench/fleet.py --quick   # 8 nodes, 1 run per mode, fewer checks (< 20 s)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    BenchError,
    Child,
    emit,
    environment,
    failed,
    log,
    median,
    percentile,
    prepare_node_process,
    run,
    stop_all,
)

SCRIPT = Path(__file__).resolve()


# -- child: the certificate check -------------------------------------------------------------------------


def role_check(count: int) -> None:
    import nacl.signing

    from zmqagents.certs import Admission, issue, sign_revocations
    from zmqagents.identity import Identity

    ca = Identity.generate()
    now = int(time.time())

    def cert(identity: Identity) -> bytes:
        return issue(ca, identity.public_key, "bench-node", groups=["ops", "edge"], not_before=now - 60,
                     not_after=now + 86400, serial=os.urandom(16)).encoded

    admission = Admission([ca.public_key], cert(Identity.generate()), max_peers=count + 1)
    revoked = [(Identity.generate().public_key, 0) for _ in range(64)]
    admission.adopt(sign_revocations(ca, revoked, sequence=1, issued_at=now).encoded, now)
    peers = [Identity.generate() for _ in range(count)]
    certs = [cert(p) for p in peers]
    checks = []
    for peer, data in zip(peers, certs):
        t0 = time.perf_counter_ns()
        admission.present(peer.node_id, data, time.time())
        checks.append((time.perf_counter_ns() - t0) / 1000)
    signer = nacl.signing.SigningKey.generate()
    verify_key = signer.verify_key
    message = os.urandom(150)  # about the size of a certificate's signed fields
    signature = signer.sign(message).signature
    verifies = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        verify_key.verify(message, signature)
        verifies.append((time.perf_counter_ns() - t0) / 1000)
    assert len(admission) == count
    emit({"checks_us": checks, "verify_us": verifies, "cert_bytes": len(certs[0])})


# -- child: one join ---------------------------------------------------------------------------------------


def role_join(mode: str, nodes: int, timeout: float) -> None:
    prepare_node_process(verbose=False)
    run(_join(mode, nodes, timeout))


async def _join(mode: str, count: int, timeout: float) -> None:
    from zmqagents.certs import issue
    from zmqagents.identity import Identity
    from zmqagents.node import Node, NodeConfig
    from zmqagents.transport.fleet import FleetConfig

    ca = Identity.generate()
    now = int(time.time())

    def make(bootstrap) -> Node:
        identity = Identity.generate()
        config = NodeConfig()
        if mode == "fleet":
            cert = issue(ca, identity.public_key, "n", not_before=now - 60, not_after=now + 3600,
                         serial=os.urandom(16)).encoded
            config.fleet = FleetConfig(cas=(ca.public_key,), certificate=cert)
        return Node(identity, bootstrap=bootstrap, config=config)

    seed = make([])
    await seed.start()
    nodes = [seed] + [make([seed.contact]) for _ in range(count - 1)]
    ids = {n.node_id for n in nodes}
    t0 = time.monotonic()
    await asyncio.gather(*(n.start() for n in nodes[1:]))
    started = time.monotonic() - t0
    deadline = t0 + timeout
    while not all(ids - {n.node_id} <= {e.node_id for e in n.routing.table} for n in nodes):
        if time.monotonic() > deadline:
            raise BenchError(f"{mode}: {count} nodes did not all see each other within {timeout} s")
        await asyncio.sleep(0.01)
    converged = time.monotonic() - t0
    out = {"mode": mode, "start_s": started, "join_s": converged,
           "drops": sum(sum(n.transport.drops.values()) for n in nodes)}
    if mode == "fleet":
        gates = [n.transport.fleet for n in nodes]
        out["admissions_per_node"] = sum(g.stats["admitted"] for g in gates) / count
        out["held_frames_per_node"] = sum(g.stats["held"] for g in gates) / count
        out["uncertified_drops"] = sum(n.transport.drops.get("uncertified", 0) for n in nodes)
    for n in nodes:
        n.config.leave_timeout = 0
    await asyncio.gather(*(n.close() for n in nodes))
    emit(out)


# -- orchestrator --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["check", "join"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["open", "fleet"], help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode")
    parser.add_argument("--checks", type=int, default=2000, help="certificates checked (distinct peers)")
    parser.add_argument("--timeout", type=float, default=60.0, help="s a join may take before the run fails")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.role == "check":
        role_check(args.checks)
        return 0
    if args.role == "join":
        role_join(args.mode, args.nodes, args.timeout)
        return 0
    if args.quick:
        args.nodes, args.repeat, args.checks = 8, 1, 200
    children: list[Child] = []
    try:
        log(f"fleet: checking {args.checks} certificates")
        check = Child(SCRIPT, "check", "--checks", str(args.checks))
        children.append(check)
        checked = check.read(timeout=120)
        check.wait(10)
        runs = []
        for i in range(args.repeat):
            for mode in ("open", "fleet") if i % 2 == 0 else ("fleet", "open"):
                log(f"fleet: join of {args.nodes} nodes, {mode}, run {i + 1}/{args.repeat}")
                child = Child(SCRIPT, "join", "--mode", mode, "--nodes", str(args.nodes),
                              "--timeout", str(args.timeout))
                children.append(child)
                runs.append(child.read(timeout=args.timeout + 60))
                child.wait(30)
    except BenchError as exc:
        return failed("fleet", exc, children)
    finally:
        stop_all(children)

    def of(mode: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["mode"] == mode]

    check_p50 = percentile(checked["checks_us"], 0.5)
    verify_p50 = percentile(checked["verify_us"], 0.5)
    join_open, join_fleet = median(of("open", "join_s")), median(of("fleet", "join_s"))
    emit({
        "benchmark": "fleet",
        "nodes": args.nodes,
        "cert_bytes": checked["cert_bytes"],
        "cert_check_us_p50": round(check_p50, 1),
        "cert_check_us_p99": round(percentile(checked["checks_us"], 0.99), 1),
        "ed25519_verify_us_p50": round(verify_p50, 1),
        "cert_check_vs_verify": round(check_p50 / verify_p50, 2),
        "join_open_s": round(join_open, 3),
        "join_fleet_s": round(join_fleet, 3),
        "join_fleet_vs_open": round(join_fleet / join_open, 2),
        "start_open_s": round(median(of("open", "start_s")), 3),
        "start_fleet_s": round(median(of("fleet", "start_s")), 3),
        "fleet_admissions_per_node": round(median(of("fleet", "admissions_per_node")), 1),
        "fleet_held_frames_per_node": round(median(of("fleet", "held_frames_per_node")), 1),
        "fleet_uncertified_drops": sum(of("fleet", "uncertified_drops")),
        "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
        "params": {"repeat": args.repeat, "checks": args.checks, "timeout": args.timeout},
        "env": environment(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
