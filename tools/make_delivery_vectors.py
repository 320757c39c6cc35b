"""Generate protocols/delivery-vectors.json, the test vectors for streams and epochs (protocols/delivery.md).

Every input is fixed (identities, message ids, epochs, times), so the output is the same on every run.
The vectors pin what a receiver does with the frames of several streams of one sender arriving in a
given order (ordered epochs, §3): which message ids it delivers at each step and the ack it sends
``ack_delay`` later (§5.2); and what a sender does with an ack that names another epoch of its own
stream (§5.1, §5.3). Frames are whole envelopes as on the wire (4-byte length, msgpack map), in hex.

    python tools/make_delivery_vectors.py           # rewrite the file
    python tools/make_delivery_vectors.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import random
import sys

from zmqagents.core.delivery import REOPEN_GAP, Delivered, Delivery
from zmqagents.envelope import Envelope

import _vectors
from make_envelope_vectors import ALICE, BOB, TS  # alice sends, bob receives

OUTPUT = _vectors.ROOT / "protocols" / "delivery-vectors.json"

OLD, NEW = 1_000_000, 2_000_000  # two epochs of alice's streams to bob: OLD is the dead one
ACK_DELAY = 0.005


def _id(n: int) -> bytes:
    return bytes([n]) * 16


def data(ep: int, seq: int, mid: int, body: str) -> Envelope:
    return Envelope(id=_id(mid), src=ALICE.node_id, dst=BOB.node_id, type="msg", body=body, ts=TS, seq=seq, ep=ep)


def fwd(ep: int, floor: int, mid: int) -> Envelope:
    return Envelope(id=_id(mid), src=ALICE.node_id, dst=BOB.node_id, type="fwd", ts=TS, seq=floor, ep=ep)


RECEIVER_CASES = [
    ("late_frame_of_a_dead_stream",
     "the issue-12 sequence: bob (restarted) takes up alice's new stream, then a frame of her dead "
     "stream arrives over a late connection; it is stale (lower epoch): dropped, acked with the epoch held",
     [data(NEW, 1, 11, "m1"), data(OLD, 7, 1, "old"), data(NEW, 2, 12, "m2")]),
    ("dead_stream_first",
     "frames of the dead stream arrive first and are taken up (they are alice's messages), then the new "
     "stream replaces it (higher epoch: the buffer is discarded, seq restarts); the re-sent ids are not "
     "delivered twice; a later frame of the dead stream is stale",
     [data(OLD, 1, 1, "o1"), data(OLD, 3, 3, "o3"), data(NEW, 1, 1, "o1"), data(NEW, 2, 2, "o2"),
      data(NEW, 3, 3, "o3"), data(OLD, 2, 2, "o2")]),
    ("fwd_of_a_newer_stream",
     "a fwd of a higher epoch starts the stream at its floor; a fwd of a lower one is stale",
     [data(OLD, 1, 1, "o1"), fwd(NEW, 3, 20), data(NEW, 3, 13, "n3"), fwd(OLD, 9, 21)]),
]


def receiver_vector(name: str, description: str, frames: list[Envelope]) -> dict:
    bob = Delivery(BOB.node_id, random.Random(0))
    steps = []
    now = 1.0
    for env in frames:
        bob.receive(env, now)
        delivered = [e.env.id.hex() for e in bob.take_events() if isinstance(e, Delivered)]
        now += 2 * ACK_DELAY  # the delayed ack is due ack_delay after the arrival (plus timer granularity)
        bob.tick(now)
        acks = [out.ack for out in bob.take_outgoing()]
        assert len(acks) == 1, acks
        steps.append({"frame": env.encode().hex(), "ep": env.ep, "seq": env.seq, "type": env.type,
                      "delivered": delivered, "ack_after_delay": acks[0]})
        now += 1.0
    return {"name": name, "description": description, "steps": steps}


def sender_vectors() -> list[dict]:
    """Alice (epoch base 500) has two messages pending to bob; then bob's ack names an epoch."""
    out = []
    cases = [
        ("ack_of_a_higher_epoch_reopens", 1_000_000, 0,
         "bob holds a newer stream of alice (an earlier run of hers): she renumbers her pending messages "
         "from seq 1 on an epoch in [held + 2^32, held + 2^33) and sends them at once"),
        ("ack_of_a_lower_epoch_is_stale", 400, 0, "about an older stream of alice's: ignored (acks_stale)"),
        ("ack_without_room_above_is_malformed", (1 << 63) - (1 << 33), 0,
         "no epoch 2^32 above it fits in 63 bits: the whole envelope is dropped (malformed)"),
    ]
    for name, held, cum, description in cases:
        alice = Delivery(ALICE.node_id, random.Random(0), epoch=500)
        sent = []
        for n, body in ((1, "p1"), (2, "p2")):
            alice.send(BOB.node_id, body, TS / 1000, msg_id=_id(n))
        sent = [env.encode().hex() for env in alice.take_outgoing()]
        ack = Envelope(id=_id(30), src=BOB.node_id, dst=ALICE.node_id, type="ack", ts=TS, ack=[held, cum, []])
        alice.receive(ack, TS / 1000 + 0.01)
        after = alice.take_outgoing()
        vector = {"name": name, "description": description, "sent": sent, "ack_frame": ack.encode().hex(),
                  "held": held}
        if after:
            eps = {env.ep for env in after}
            (ep,) = eps
            assert held + REOPEN_GAP <= ep < held + 2 * REOPEN_GAP
            vector["resent"] = [{"id": env.id.hex(), "seq": env.seq, "type": env.type, "body": env.body}
                                for env in after]
        else:
            vector["resent"] = []
        vector["counter"] = "stream_reopens" if after else ("acks_stale" if held < 500 else "malformed")
        assert alice.stats[vector["counter"]] == 1
        out.append(vector)
    return out


def build() -> dict:
    return {
        "spec": "protocols/delivery.md, sections 3, 5 and 7.3",
        "generator": "tools/make_delivery_vectors.py",
        "sender": ALICE.node_id.hex(),
        "receiver": BOB.node_id.hex(),
        "ack_delay_s": ACK_DELAY,
        "reopen_gap": REOPEN_GAP,
        "receiver_cases": [receiver_vector(*case) for case in RECEIVER_CASES],
        "sender_cases": sender_vectors(),
    }


def render() -> str:
    return _vectors.to_json(build())


if __name__ == "__main__":
    sys.exit(_vectors.main(sys.argv[1:], __file__, __doc__, OUTPUT, render))
