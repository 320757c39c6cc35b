#!/usr/bin/env python3
"""Serve the mesh through a running zmqagents sidecar with only pyzmq and msgpack (protocols/local-api.md §5).

  local_serve.py SOCKET NAME    # serve capability NAME (upper-cases its text input, one progress chunk
                                # per word) and this node's plain requests (answered {"echo": body})

Prints one JSON line when registered, then one per piece of work; stops on SIGINT/SIGTERM.
"""
import json, os, signal, struct, sys, time

import msgpack, zmq


def envelope(op, body=None, **fields):  # 4-byte big-endian length + msgpack map
    payload = msgpack.packb({"v": 1, "id": os.urandom(16), "src": bytes(32), "t": op, "b": body, **fields})
    return struct.pack(">I", len(payload)) + payload


def decode(frame):
    return msgpack.unpackb(frame[4:4 + struct.unpack(">I", frame[:4])[0]])


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sock = zmq.Context().socket(zmq.DEALER)
sock.connect("ipc://" + sys.argv[1])
LEASE_MS = 4000  # we must say something at least this often, or the sidecar drops our capability
cap = {"name": sys.argv[2], "description": "upper-cases text", "input_schema": {"type": "string"},
       "max_concurrency": 4}
sock.send(envelope("serve", {"capability": cap, "lease_ms": LEASE_MS}))
sock.send(envelope("handle", {"lease_ms": LEASE_MS}))
last = time.monotonic()
while True:
    if sock.poll(LEASE_MS // 4):
        env = decode(sock.recv())
        t = env["t"]
        if t == "ok" and isinstance(env.get("b"), dict):  # serve / handle registered
            print(json.dumps({"registered": env["b"]}), flush=True)
        elif t == "error":
            print(json.dumps({"error": env["b"]}), flush=True)
        elif t == "task":  # a task from the mesh: stream one chunk per word, then the result
            words = env["b"]["input"].split()
            for word in words:
                sock.send(envelope("progress", word.upper(), re=env["id"]))
            sock.send(envelope("result", " ".join(words).upper(), re=env["id"]))
            print(json.dumps({"task": env["id"].hex(), "input": env["b"]["input"]}), flush=True)
        elif t == "request":  # a plain request from the mesh
            sock.send(envelope("result", {"echo": env.get("b")}, re=env["id"]))
            print(json.dumps({"request": env["id"].hex(), "from": env["src"].hex()}), flush=True)
        elif t == "cancel":
            print(json.dumps({"canceled": env["re"].hex()}), flush=True)
    if time.monotonic() - last > LEASE_MS / 4000:  # keep the lease
        sock.send(envelope("ping"))
        last = time.monotonic()
