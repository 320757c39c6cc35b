"""Property and fuzz tests: whatever bytes arrive, decode() returns an Envelope or raises an EnvelopeError.

Runs are derandomized (the same examples every time) and sized to take a few
seconds in all. For a longer hunt, raise ``max_examples`` locally.
"""

from __future__ import annotations

import copy
import json
import struct
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqagents import envelope as E
from zmqagents.identity import Identity

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "protocols" / "envelope-vectors.json").read_text(encoding="utf-8"))
SEEDS = [bytes.fromhex(v["encoded"]) for v in VECTORS["valid"] + VECTORS["decode_only"]]
ALICE = Identity.from_seed(bytes.fromhex(VECTORS["identities"][0]["seed"]))
KNOWN_FIELDS = {"v", "id", "src", "t", "dst", "ts", "ttl", "b", "seq", "ep", "re", "ak", "pk", "sig"}


def fuzz(n: int):
    return settings(max_examples=n, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def check(data: bytes) -> E.Envelope | None:
    """Decode; anything but an EnvelopeError escaping fails the test. A decoded envelope must be usable."""
    try:
        env = E.decode(data)
    except E.EnvelopeError:
        return None
    reencoded = env.encode()  # what the decoder accepts, the encoder can send on (a relay)
    assert E.decode(reencoded).encode() == reencoded
    try:
        env.verify()
    except E.BadSignature:
        pass
    repr(env)  # nothing in a decoded body is deep enough to break repr, ==, deepcopy
    copy.deepcopy(env.body)
    return env


# -- strategies ---------------------------------------------------------------

ints = st.integers(-(2**63), 2**64 - 1)
scalars = st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=12)
# What an envelope body may hold: maps with str/bin keys, arrays, scalars.
keys = st.text(max_size=6) | st.binary(max_size=6)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
# Anything msgpack can carry, including what the envelope refuses: ext types, non-string keys.
wild = st.recursive(
    scalars | st.floats() | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(scalars, inner, max_size=4),
    max_leaves=12,
)


def good_or_wild(good):
    return st.one_of(good, wild)


envelope_like_maps = st.fixed_dictionaries(
    {
        "v": good_or_wild(st.just(1) | st.integers(0, 3)),
        "id": good_or_wild(st.binary(min_size=16, max_size=16)),
        "src": good_or_wild(st.binary(min_size=32, max_size=32)),
        "t": good_or_wild(st.text(min_size=1, max_size=70)),
    },
    optional={
        "dst": good_or_wild(st.binary(min_size=32, max_size=32)),
        "ts": good_or_wild(ints), "ttl": good_or_wild(ints), "seq": good_or_wild(ints), "ep": good_or_wild(ints),
        "re": good_or_wild(st.binary(min_size=16, max_size=16)),
        "ak": good_or_wild(st.lists(values, max_size=3)),
        "pk": good_or_wild(st.binary(min_size=32, max_size=32)),
        "sig": good_or_wild(st.binary(min_size=64, max_size=64)),
        "b": wild, "zz": wild,
    },
)

opt_bytes = lambda n: st.none() | st.binary(min_size=n, max_size=n)  # noqa: E731
opt_uint = st.none() | st.integers(0, 2**64 - 1)
envelopes = st.builds(
    E.Envelope,
    id=st.binary(min_size=16, max_size=16),
    src=st.binary(min_size=32, max_size=32),
    type=st.text(min_size=1, max_size=64),
    body=values,
    dst=opt_bytes(32),
    ts=st.integers(0, 2**64 - 1),
    ttl=st.integers(0, 2**64 - 1),
    seq=opt_uint,
    ep=st.none() | st.integers(0, E.MAX_EPOCH),
    re=opt_bytes(16),
    ack=st.none() | st.lists(values, max_size=3),
    extra=st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda k: k not in KNOWN_FIELDS), values, max_size=2),
)


@st.composite
def mutations(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "prefix", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=16))
    elif kind == "prefix":
        data[:4] = struct.pack(">I", draw(st.integers(0, 2**32 - 1) | st.integers(len(data) - 8, len(data))))
    else:  # replace a run inside the payload, then fix the prefix so the frame length is right
        i = draw(st.integers(4, len(data) - 1))
        data[i:i + draw(st.integers(0, 8))] = draw(st.binary(max_size=8))
        data[:4] = struct.pack(">I", len(data) - 4)
    return bytes(data)


# -- decode never raises anything but EnvelopeError -------------------------------

@fuzz(300)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    check(data)


@fuzz(300)
@given(st.binary(max_size=200))
def test_random_payload_behind_a_valid_prefix(payload):
    check(frame(payload))


@fuzz(200)
@given(wild)
def test_random_msgpack_values(value):
    check(frame(msgpack.packb(value, use_bin_type=True)))


@fuzz(200)
@given(envelope_like_maps)
def test_envelope_like_maps(m):
    check(frame(msgpack.packb(m, use_bin_type=True)))


@fuzz(600)
@given(mutations())
def test_mutated_valid_envelopes(data):
    check(data)


def nested_frame(opener: bytes, depth: int) -> bytes:
    head = msgpack.packb({"v": 1, "id": bytes(16), "src": bytes(32), "t": "x"}, use_bin_type=True)
    return frame(bytes([head[0] + 1]) + head[1:] + b"\xa1b" + opener * depth + b"\x00")


@pytest.mark.parametrize("opener", [b"\x91", b"\x81\xa0"], ids=["arrays", "maps"])
@pytest.mark.parametrize("depth", [1, E.MAX_DEPTH - 2, E.MAX_DEPTH - 1, E.MAX_DEPTH, 500, 1022, 1023, 1024, 1025, 5000])
def test_nesting_depths(opener, depth):
    env = check(nested_frame(opener, depth))
    assert (env is not None) == (depth < E.MAX_DEPTH)  # the envelope map is level 1


def test_100k_nested_arrays_within_1_mib():
    data = nested_frame(b"\x91", 100_000)
    assert len(data) < E.DEFAULT_MAX_SIZE
    with pytest.raises(E.TooManyValues):  # counted before anything is built
        E.decode(data)
    with pytest.raises(E.MalformedEnvelope):  # with room for them, the depth check refuses it
        E.decode(data, max_values=200_000)


# -- memory stays bounded ------------------------------------------------------------

def peak_while(fn) -> int:
    """Peak bytes allocated (as tracemalloc sees them) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def raises(exc, fn, *args):
    def run():
        with pytest.raises(exc):
            fn(*args)
    return run


def test_a_4_gib_prefix_is_refused_before_any_allocation():
    data = b"\xff\xff\xff\xff" + bytes(1 << 16)
    assert peak_while(raises(E.OversizeEnvelope, E.decode, data)) < 16 * 1024


def test_stream_refuses_a_4_gib_prefix_without_buffering_for_it():
    def run():
        dec = E.StreamDecoder()
        with pytest.raises(E.OversizeEnvelope):
            list(dec.feed(b"\xff\xff\xff\xff"))
    assert peak_while(run) < 16 * 1024


@pytest.mark.parametrize("header", [b"\xdd", b"\xdf", b"\xc6", b"\xdb"], ids=["array32", "map32", "bin32", "str32"])
def test_a_huge_msgpack_length_inside_a_small_frame_allocates_little(header):
    data = frame(header + b"\xff\xff\xff\xff" + bytes(64))
    assert peak_while(raises(E.MalformedEnvelope, E.decode, data)) < 64 * 1024


def test_decoded_size_is_bounded_by_the_frame_size():
    # The worst case is a body of empty containers: about 80 bytes of Python
    # objects per payload byte (see protocols/envelope.md, "Limits").
    n = 1 << 16
    head = msgpack.packb({"v": 1, "id": bytes(16), "src": bytes(32), "t": "x"}, use_bin_type=True)
    data = frame(bytes([head[0] + 1]) + head[1:] + b"\xa1b\xdd" + struct.pack(">I", n) + b"\x90" * n)
    assert peak_while(lambda: E.decode(data, max_values=2 * n)) < 100 * len(data)


def test_too_many_values_are_refused_before_they_are_built():
    # A 1 MiB payload of empty maps would take ~75 MB decoded; counting its headers takes nothing.
    n = E.DEFAULT_MAX_SIZE - 128
    head = msgpack.packb({"v": 1, "id": bytes(16), "src": bytes(32), "t": "x"}, use_bin_type=True)
    data = frame(bytes([head[0] + 1]) + head[1:] + b"\xa1b\xdd" + struct.pack(">I", n) + b"\x80" * n)
    assert len(data) <= E.DEFAULT_MAX_SIZE + 4
    assert peak_while(raises(E.TooManyValues, E.decode, data)) < 16 * 1024


countable = st.recursive(
    scalars | st.text(min_size=30, max_size=40) | st.binary(min_size=250, max_size=300),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(scalars, inner, max_size=20),
    max_leaves=60,
)


@fuzz(200)
@given(countable)
def test_count_values_counts_every_value(value):
    def values(v) -> int:
        if isinstance(v, dict):
            return 1 + sum(values(k) + values(x) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return 1 + sum(values(x) for x in v)
        return 1
    payload = msgpack.packb(value, use_bin_type=True)
    n = values(value)
    assert E.count_values(payload, n) == n
    with pytest.raises(E.TooManyValues):
        E.count_values(payload, n - 1)


# -- round trip and signatures -----------------------------------------------------

@fuzz(150)
@given(envelopes)
def test_encode_then_decode_round_trips(env):
    data = env.encode()
    back = E.decode(data)
    assert back == env and back.extra == env.extra
    assert back.encode() == data


@fuzz(100)
@given(envelopes, st.data())
def test_any_single_byte_change_breaks_a_signature(env, data):
    env.src = ALICE.node_id
    env.sign(ALICE)
    signed = env.encode()
    E.decode(signed).verify()
    i = data.draw(st.integers(0, len(signed) - 1), label="index")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != signed[i]), label="byte")
    changed = signed[:i] + bytes([new]) + signed[i + 1:]
    try:
        got = E.decode(changed)
    except E.EnvelopeError:
        return
    with pytest.raises(E.BadSignature):
        got.verify()
