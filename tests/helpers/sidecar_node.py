"""A node process for the sidecar-service tests: a real Node plus mDNS discovery and/or the admin
endpoint, driven by one JSON command per line on stdin (answers one JSON line on stdout).

    python tests/helpers/sidecar_node.py [--mdns] [--admin 127.0.0.1:0] [--claim-key PUBLICKEY] [--relay CONTACT]

``--relay`` (repeatable) makes it an outbound-only node reached through those relays; the command
``received`` answers with the bodies of the messages it received so far (a test can stop the process
with SIGSTOP to play a destination that stops reading).

``--claim-key`` makes it an impostor: instead of announcing itself, it announces someone else's
public key (and so their id) with its own endpoint. It still runs a real node there, so the
connection is accepted and only the CURVE handshake can tell the claim is false.
Exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args) -> None:
    from zmqagents.identity import Contact
    from zmqagents.node import Node, NodeConfig

    config = None
    if args.relay:
        config = NodeConfig(outbound_only=True, relays=[Contact.parse(c) for c in args.relay])
    node = Node(listen=args.listen, bootstrap=args.bootstrap, config=config)
    node.on_request(lambda body, msg: {"echo": body})
    services = []
    received: list = []

    async def take() -> None:
        while True:
            received.append((await node.receive()).body)

    async with node:
        taker = asyncio.ensure_future(take())
        if args.mdns:
            from zmqagents.sidecar.mdns import MdnsConfig, MdnsDiscovery

            cfg = MdnsConfig(verify_timeout=args.verify_timeout)  # loopback inbox: announced on loopback
            services.append(("mdns", MdnsDiscovery(node, cfg)))
        if args.admin:
            from zmqagents.sidecar.admin import AdminServer

            services.append(("admin", AdminServer(
                node, args.admin, services=lambda: [s for _, s in services], expect_peers=bool(args.bootstrap)
            )))
        for _, service in services:
            await service.start()
        impostor = None
        if args.claim_key:
            impostor = await announce_claim(args.claim_key, node.transport.endpoint)
        by_name = dict(services)
        emit({
            "contact": str(node.contact), "node_id": node.node_id.hex(),
            "admin": by_name["admin"].address if "admin" in by_name else None,
        })
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "state":
                emit({
                    "peers": [p["node_id"] for p in node.peers()],
                    "neighbours": [n.hex() for n in node.neighbours()],
                    "mdns": dict(by_name["mdns"].stats) if "mdns" in by_name else None,
                })
            elif cmd["cmd"] == "received":
                emit({"bodies": received})
            elif cmd["cmd"] == "request":
                try:
                    reply = await node.request(bytes.fromhex(cmd["to"]), cmd["body"], timeout=5)
                    emit({"reply": reply})
                except Exception as exc:  # report to the test, which asserts on it
                    emit({"error": f"{type(exc).__name__}: {exc}"})
        taker.cancel()
        for _, service in reversed(services):
            await service.close()
        if impostor is not None:
            await impostor.async_close()


async def announce_claim(public_key_text: str, endpoint: str):
    """Register a DNS-SD instance claiming ``public_key_text``'s identity at our endpoint."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from zmqagents.identity import parse_public_key
    from zmqagents.sidecar.mdns import SERVICE, txt_record

    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo(
        SERVICE, f"impostor.{SERVICE}", port=int(endpoint.rpartition(":")[2]),
        properties=txt_record(parse_public_key(public_key_text), [endpoint]), server="impostor.local.",
        parsed_addresses=["127.0.0.1"],
    )
    await zc.async_register_service(info)
    return zc


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="tcp://127.0.0.1:0")
    p.add_argument("--bootstrap", action="append", default=[])
    p.add_argument("--mdns", action="store_true")
    p.add_argument("--admin")
    p.add_argument("--claim-key")
    p.add_argument("--relay", action="append", default=[])
    p.add_argument("--verify-timeout", type=float, default=2.0)
    from zmqagents.node import run

    run(main(p.parse_args()))
