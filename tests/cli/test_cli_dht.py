"""`zmqagents dht put|get` and `zmqagents find` as a shell user runs them: real node processes, real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import ExitStack

from helpers.cli import server, zmqa

from zmqagents.identity import Identity

PROVIDER = """
import asyncio, sys
from zmqagents.identity import Contact
from zmqagents.node import Node

async def main():
    async with Node(bootstrap=[Contact.parse(open(sys.argv[1]).read())]) as node:
        await node.provide("summarize", meta={"model": "small"})
        print(node.node_id.hex(), flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def test_dht_put_get_and_find_through_a_mesh_of_node_processes(tmp_path):
    with ExitStack() as stack:
        seed, _ = stack.enter_context(server(tmp_path, "node", name="seed"))
        for i in range(3):
            stack.enter_context(server(tmp_path, "node", "--bootstrap", seed, name=f"n{i}"))
        boot = ["--bootstrap", seed]

        put = zmqa("dht", "put", "site/7", '{"interval": 30}', "--ttl", "600", *boot)
        assert put.returncode == 0, put.stderr
        info = json.loads(put.stdout)
        assert info["stored"] >= 1 and len(info["key"]) == 64 and info["expires"] > time.time() + 500

        got = zmqa("dht", "get", "site/7", *boot)
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout) == {"interval": 30}
        full = json.loads(zmqa("dht", "get", "site/7", "--json", *boot).stdout)
        assert full["value"] == {"interval": 30} and full["seq"] == info["seq"] and full["key"] == info["key"]

        missing = zmqa("dht", "get", "nobody/put/this", *boot)
        assert missing.returncode == 3 and "no node holds" in missing.stderr and missing.stdout == ""

        # The key belongs to its publisher: another (throwaway) identity is refused; the same key file updates it.
        hijack = zmqa("dht", "put", "site/7", "mine", *boot)
        assert hijack.returncode == 1 and "another publisher" in hijack.stderr
        keyfile = tmp_path / "publisher.key"
        assert zmqa("keygen", str(keyfile)).returncode == 0
        assert zmqa("dht", "put", "owned", "v1", "--key", str(keyfile), *boot).returncode == 0
        assert zmqa("dht", "put", "owned", "v2", "--key", str(keyfile), *boot).returncode == 0
        assert json.loads(zmqa("dht", "get", "owned", *boot).stdout) == "v2"

        # Too big a value is a usage error; so is a garbage contact; a dead bootstrap is a failure.
        big = zmqa("dht", "put", "big", "x" * 10_000, *boot)
        assert big.returncode == 2 and "exceeds the limit" in big.stderr
        assert zmqa("dht", "get", "k", "--bootstrap", "garbage").returncode == 2
        dead = Identity.generate().contact("tcp://127.0.0.1:9")  # nothing listens there
        nobody = zmqa("dht", "get", "k", "--bootstrap", str(dead), "--timeout", "10")
        assert nobody.returncode == 8 and "no mesh node answered (unreachable)" in nobody.stderr

        assert zmqa("find", "summarize", *boot).returncode == 3
        provider = subprocess.Popen([sys.executable, "-c", PROVIDER, seed[1:]], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            provider_id = provider.stdout.readline().strip()
            assert len(provider_id) == 64, provider.stderr.read()
            found = zmqa("find", "summarize", "--json", *boot)
            assert found.returncode == 0, found.stderr
            rows = [json.loads(line) for line in found.stdout.splitlines()]
            assert [r["node_id"] for r in rows] == [provider_id] and rows[0]["meta"] == {"model": "small"}
            # the contact it prints reaches the provider
            table = zmqa("find", "summarize", *boot)
            assert table.returncode == 0 and provider_id[:12] in table.stdout
            answer = zmqa("request", "--to", rows[0]["contact"], '"hi"', "--timeout", "5")
            assert answer.returncode == 1 and "serves no requests" in answer.stderr
        finally:
            provider.kill()
            provider.wait()
