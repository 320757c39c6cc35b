#!/usr/bin/env python3
"""Talk to a running zmqagents sidecar with only pyzmq and msgpack (protocol: protocols/local-api.md).

  local_client.py SOCKET send TO JSON    # TO: a contact PUBLICKEY@ENDPOINT or a 64-hex node id
  local_client.py SOCKET receive N       # print the next N messages for this host's application
"""
import json, os, struct, sys

import msgpack, zmq


def envelope(op, body=None, **fields):  # 4-byte big-endian length + msgpack map
    payload = msgpack.packb({"v": 1, "id": os.urandom(16), "src": bytes(32), "t": op, "b": body, **fields})
    return struct.pack(">I", len(payload)) + payload


def read(sock):
    frame = sock.recv()
    return msgpack.unpackb(frame[4:4 + struct.unpack(">I", frame[:4])[0]])


sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.RCVTIMEO, 30_000)  # ms; a missing sidecar ends in zmq.Again, not a hang
sock.connect("ipc://" + sys.argv[1])
if sys.argv[2] == "send":
    sock.send(envelope("send", json.loads(sys.argv[4]), to=sys.argv[3]))
    reply = read(sock)  # "accepted": spooled by the sidecar, delivered even if it restarts
    print(json.dumps({"result": reply["t"], "id": reply["re"].hex(), "detail": reply.get("b")}))
    sys.exit(reply["t"] != "accepted")
sock.send(envelope("receive", {"credit": int(sys.argv[3]), "ack": True}))
read(sock)  # "ok": the sidecar now pushes up to N messages, and keeps each on disk until we ack it
ids = []
for _ in range(int(sys.argv[3])):
    msg = read(sock)
    print(json.dumps({"id": msg["id"].hex(), "from": msg["src"].hex(), "body": msg.get("b")}), flush=True)
    ids.append(msg["id"])
sock.send(envelope("ack", {"ids": ids}))  # printed: the sidecar may forget them (unacked, they come again)
read(sock)  # "ok" {"acked": N}
