#!/usr/bin/env python3
"""What reaching a node through a relay costs: request/reply through a relay against direct.

Subjects, each in its own process (tcp on 127.0.0.1, CURVE on every link): two relays
(``serve_relay``), an outbound-only *edge* node registered with both (the first preferred), and a
*direct* node; edge and direct answer every request with its body. The orchestrating process runs the client node and measures,
for each route, after a warm-up:

* **request/reply** -- N requests with W in flight; rate = N / time from the first to the last reply;
  every reply must equal its request's body;
* **ping-pong** -- one request at a time; p50 and p99 of the round trip.

Routes: ``direct`` (client -> direct node), ``relayed`` (client -> relay -> edge node, each
envelope signed by its sender and verified by its destination), ``sealed`` (the same, bodies also
sealed with NaCl Box both ways). ``relay_cpu_us_per_request`` is the first relay's CPU time (all
threads) during the relayed request/reply run divided by its requests: what one request and its
reply (and their acks) cost the relay.

Failover, at the end: the first relay is killed with SIGKILL mid-conversation;
``failover_first_request_s`` is how long the next request takes (the client's retransmit goes to
the second relay), ``failover_pingpong_p50_us`` the round trip afterwards, through the second relay.

Why: relaying adds a hop, an Ed25519 signature and verification per envelope (and a Box when
sealed); this shows what that costs next to a direct link, measured in the same run.

Prints one JSON object on stdout; progress goes to stderr. Exits non-zero if a check fails.

    python bench/relay.py            # full run
    python bench/relay.py --quick    # seconds; what the smoke test runs
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BenchError, Child, cpu_ns, emit, environment, log, median, run, stop_all  # noqa: E402

SCRIPT = Path(__file__).resolve()


# -- children -----------------------------------------------------------------------


async def _serve(role: str, relays: list[str]) -> None:
    from zmqagents.node import Node, NodeConfig

    if role == "relay":
        config = NodeConfig(serve_relay=True)
        config.relay.client_rate = config.relay.total_rate = 1e6  # measure the path, not the limits
        config.relay.client_burst = config.relay.total_burst = 1e6
    elif role == "edge":
        config = NodeConfig(outbound_only=True, relays=relays)
    else:
        config = NodeConfig()
    node = Node(config=config)
    node.on_request(lambda body, msg: body)
    async with node:
        emit({"contact": str(node.contact)})
        loop = asyncio.get_running_loop()
        while True:  # a line asks for the counters; EOF (the orchestrator closed stdin) ends the child
            line = await loop.run_in_executor(None, sys.stdin.readline)
            stats = node.relay_server.stats if node.relay_server is not None else {}
            emit({"relay_stats": dict(stats), "drops": dict(node.transport.drops)})
            if not line:
                return


# -- the measuring side ----------------------------------------------------------------


async def _measure(contacts: dict, relay: Child, n: int, window: int, samples: int, warmup: int) -> dict:
    out = await _routes(contacts, relay, n, window, samples, warmup)
    relay.send({})
    out["_relay_final"] = relay.read(20)  # the first relay's counters, before it is killed
    out.update(await _failover(contacts, relay, samples))
    return out


async def _failover(contacts: dict, relay: Child, samples: int) -> dict:
    from zmqagents.identity import Contact
    from zmqagents.node import Node, NodeConfig

    target = Contact.parse(contacts["edge"])
    async with Node(peers=[target], config=NodeConfig(member=False)) as client:
        for i in range(20):
            await client.request(target.node_id, i, timeout=10)
        relay.kill()  # SIGKILL: the first relay vanishes mid-conversation
        t = time.perf_counter()
        if await client.request(target.node_id, "after", timeout=30) != "after":
            raise BenchError("failover: wrong reply")
        first = time.perf_counter() - t
        rtts = []
        for i in range(samples):
            t = time.perf_counter()
            await client.request(target.node_id, i, timeout=10)
            rtts.append((time.perf_counter() - t) * 1e6)
        return {"failover_first_request_s": round(first, 3), "failover_pingpong_p50_us": round(median(rtts), 1),
                "failover_misses": sum(client.transport.relaying.misses.values())}


async def _routes(contacts: dict, relay: Child, n: int, window: int, samples: int, warmup: int) -> dict:
    from zmqagents.identity import Contact
    from zmqagents.node import Node, NodeConfig

    out: dict = {}
    for route in ("direct", "relayed", "sealed"):
        target = Contact.parse(contacts["direct" if route == "direct" else "edge"])
        config = NodeConfig(member=False)
        config.transport.seal_relayed = route == "sealed"
        async with Node(peers=[target], config=config) as client:
            dst = target.node_id
            body = "x" * 100
            for i in range(warmup):
                if await client.request(dst, [i, body], timeout=10) != [i, body]:
                    raise BenchError(f"{route}: wrong reply during warm-up")
            # request/reply with a window in flight
            queue: asyncio.Queue = asyncio.Queue()
            for i in range(n):
                queue.put_nowait(i)
            bad = []

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    if await client.request(dst, [i, body], timeout=30) != [i, body]:
                        bad.append(i)

            cpu0 = cpu_ns(relay.pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(window)))
            elapsed = time.perf_counter() - t0
            relay_cpu = cpu_ns(relay.pid) - cpu0
            if bad:
                raise BenchError(f"{route}: {len(bad)} wrong replies")
            out[f"{route}_rr_msgs_per_s"] = round(n / elapsed, 1)
            if route == "relayed":
                out["_relayed_cpu_ns"] = relay_cpu
            # ping-pong
            rtts = []
            for i in range(samples):
                t = time.perf_counter()
                await client.request(dst, i, timeout=10)
                rtts.append((time.perf_counter() - t) * 1e6)
            rtts.sort()
            out[f"{route}_pingpong_p50_us"] = round(median(rtts), 1)
            out[f"{route}_pingpong_p99_us"] = round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], 1)
            relaying = client.transport.relaying
            out[f"{route}_client_relay_stats"] = dict(relaying.stats) if relaying is not None else {}
            out[f"{route}_client_drops"] = dict(client.transport.drops)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["relay", "edge", "direct"], help=argparse.SUPPRESS)
    parser.add_argument("--relay", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small run for the smoke test")
    parser.add_argument("--messages", type=int, help="requests per request/reply run")
    parser.add_argument("--window", type=int, default=32, help="requests in flight")
    args = parser.parse_args(argv)
    if args.role:
        run(_serve(args.role, args.relay))
        return 0
    n = args.messages or (500 if args.quick else 5000)
    samples, warmup = (100, 50) if args.quick else (1000, 200)
    started = time.monotonic()
    children: list[Child] = []
    try:
        relay = Child(SCRIPT, "relay")
        children.append(relay)
        relay2 = Child(SCRIPT, "relay", name="relay2")
        children.append(relay2)
        relay_contact, relay2_contact = relay.read(20)["contact"], relay2.read(20)["contact"]
        edge = Child(SCRIPT, "edge", "--relay", relay_contact, "--relay", relay2_contact)
        direct = Child(SCRIPT, "direct")
        children += [edge, direct]
        contacts = {"edge": edge.read(20)["contact"], "direct": direct.read(20)["contact"]}
        log(f"relay bench: {n} requests, window {args.window}, {samples} ping-pongs per route")
        result = run(_measure(contacts, relay, n, args.window, samples, warmup))
        final = {"relay": result.pop("_relay_final")}
        alive = [child for child in children if child.proc.poll() is None]  # the first relay was killed
        for child in alive:
            child.proc.stdin.close()
        final.update({child.name: child.read(20) for child in alive})
        for child in alive:
            child.wait(10)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        stop_all(children)
    relay_cpu = result.pop("_relayed_cpu_ns")
    report = {
        "benchmark": "relay",
        **result,
        "relayed_ratio": round(result["relayed_rr_msgs_per_s"] / result["direct_rr_msgs_per_s"], 3),
        "sealed_ratio": round(result["sealed_rr_msgs_per_s"] / result["direct_rr_msgs_per_s"], 3),
        "relay_cpu_us_per_request": round(relay_cpu / 1000 / n, 2),
        "relay_stats": final["relay"]["relay_stats"],
        "drops": {name: final[name]["drops"] for name in final},
        "params": {"messages": n, "window": args.window, "pingpong_samples": samples, "warmup": warmup,
                   "quick": args.quick, "body_bytes": 100, "transport": "tcp://127.0.0.1", "curve": True},
        "env": environment(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    emit(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
