"""Capability descriptors, their records and A2A card export, and the JSON-schema subset."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqagents.agents.capability import (
    MAX_RECORD_BYTES, Capability, CapabilityError, InvalidInput, agent_card,
)
from zmqagents.agents.schema import SchemaError, check_schema, conflicts, follow, validate

SUMMARIZE_IN = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 100},
        "words": {"type": "integer", "minimum": 5, "maximum": 500},
        "style": {"enum": ["plain", "bullets"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "additionalProperties": False,
}


# -- schema subset -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    {"text": "hi"},
    {"text": "hi", "words": 5, "style": "bullets", "tags": ["a", "b"]},
    {"text": "hi", "words": 50.0},  # 50.0 is an integer in JSON Schema
])
def test_valid_inputs_pass(value):
    assert validate(SUMMARIZE_IN, value) == []


@pytest.mark.parametrize("value, expected", [
    ("just text", ["(input): expected object, got string"]),
    ({}, ["(input): missing required property 'text'"]),
    ({"text": ""}, ["/text: shorter than 1 characters"]),
    ({"text": "x" * 101}, ["/text: longer than 100 characters"]),
    ({"text": "x", "words": 4}, ["/words: 4 is below the minimum 5"]),
    ({"text": "x", "words": 501}, ["/words: 501 is above the maximum 500"]),
    ({"text": "x", "words": 5.5}, ["/words: expected integer, got number"]),
    ({"text": "x", "words": True}, ["/words: expected integer, got boolean"]),
    ({"text": "x", "style": "fancy"}, ["/style: must be one of ['plain', 'bullets']"]),
    ({"text": "x", "tags": ["a", 1]}, ["/tags/1: expected string, got integer"]),
    ({"text": "x", "tags": ["a"] * 4}, ["/tags: more than 3 items"]),
    ({"text": "x", "colour": "red"}, ["/colour: property not allowed"]),
    ({"text": 1, "words": "many"}, ["/text: expected string, got integer", "/words: expected integer, got string"]),
])
def test_invalid_inputs_say_where_and_why(value, expected):
    assert validate(SUMMARIZE_IN, value) == expected


def test_more_keywords():
    assert validate({"type": ["string", "null"]}, None) == []
    assert validate({"type": ["string", "null"]}, 3) == ["(input): expected string or null, got integer"]
    assert validate({"const": 1}, True) == ["(input): must be 1"]  # JSON: true is not 1
    assert validate({"enum": [1, [2]]}, [2]) == []
    assert validate({"exclusiveMinimum": 0, "exclusiveMaximum": 1}, 0) == ["(input): 0 must be above 0"]
    assert validate({"minItems": 1}, []) == ["(input): fewer than 1 items"]
    assert validate({"additionalProperties": {"type": "integer"}}, {"a": 1, "b": "x"}) == ["/b: expected integer, got string"]
    assert validate({"properties": {"a/b": {"type": "null"}}}, {"a/b": 0}) == ["/a~1b: expected null, got integer"]
    assert validate(False, 1) == ["(input): no value is allowed here"] and validate(True, 1) == []
    # the pattern that stalls a backtracking engine is checked by the bounded one (tests/agents/test_schema.py)
    assert validate({"pattern": "^(a+)+$", "x-unknown": 1}, "a" * 40 + "!") == [
        "(input): does not match the pattern '^(a+)+$'"]


def test_errors_are_bounded():
    errors = validate({"type": "array", "items": {"type": "string"}}, list(range(1000)))
    assert len(errors) == 20


@pytest.mark.parametrize("schema, message", [
    ({"type": "text"}, "unknown type 'text'"),
    ({"required": "text"}, "required: must be an array of strings"),
    ({"minimum": "1"}, "minimum: must be a number"),
    ({"maxLength": -1}, "maxLength: must be a non-negative integer"),
    ({"properties": {"a": 3}}, "#/properties/a: a schema is an object"),
    ({"items": {"enum": 3}}, "#/items/enum: must be an array"),
    ([], "a schema is an object"),
])
def test_bad_schemas_are_refused(schema, message):
    with pytest.raises(SchemaError, match=message.replace("(", r"\(")):
        check_schema(schema)


def test_deep_schema_is_refused():
    schema: dict = {}
    for _ in range(40):
        schema = {"items": schema}
    with pytest.raises(SchemaError, match="deeper"):
        check_schema(schema)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_validation_never_raises(value):
    assert isinstance(validate(SUMMARIZE_IN, value), list)


# -- capability descriptors ---------------------------------------------------------------------------


def cap(**kw) -> Capability:
    base = dict(name="summarize", description="Summarize a text", input_schema=SUMMARIZE_IN,
                output_schema={"type": "object"}, tags=("text", "llm"), examples=("summarize this memo",),
                cost_per_call=0.5, max_concurrency=2)
    return Capability(**{**base, **kw})


def test_record_round_trip_through_msgpack_and_json():
    c = cap(cost_per_token=0.001, queue=3)
    rec = c.to_record()
    assert "queue" not in rec and "allow" not in rec  # policy, not description
    for wire in (msgpack.unpackb(msgpack.packb(rec)), json.loads(json.dumps(rec))):
        back = Capability.from_record(wire)
        assert back.to_record() == rec
        assert back.name == "summarize" and back.tags == ("text", "llm") and back.max_concurrency == 2


def test_check_input_raises_with_every_problem():
    with pytest.raises(InvalidInput) as info:
        cap().check_input({"words": 1})
    assert info.value.errors == ["(input): missing required property 'text'", "/words: 1 is below the minimum 5"]
    cap().check_input({"text": "ok"})
    Capability("anything").check_input(object())  # no schema: anything goes


def test_policy_carries_concurrency_queue_and_allow_list():
    p = cap(queue=2, allow=frozenset({b"x" * 32})).policy()
    assert (p.max_concurrency, p.queue, p.allow) == (2, 2, frozenset({b"x" * 32}))


@pytest.mark.parametrize("rec, message", [
    ("summarize", "is a map"),
    ({}, "needs a name"),
    ({"name": "has space"}, "capability name"),
    ({"name": "x" * 200}, "capability name"),
    ({"name": "ok", "tags": "a,b"}, "tags must be an array"),
    ({"name": "ok", "tags": [1]}, "each entry is a string"),
    ({"name": "ok", "tags": ["t"] * 40}, "at most 32"),
    ({"name": "ok", "cost_per_call": -1}, "cost_per_call"),
    ({"name": "ok", "cost_per_call": True}, "cost_per_call"),
    ({"name": "ok", "max_concurrency": 0}, "max_concurrency"),
    ({"name": "ok", "max_concurrency": "4"}, "max_concurrency"),
    ({"name": "ok", "input_schema": {"type": "blob"}}, "input_schema: .*unknown type"),
    ({"name": "ok", "description": "d" * 3000}, "description"),
    ({"name": "ok", "description": "d" * 1900, "examples": ["e" * 1900] * 8, "more": "m" * 5000}, "at most 16384 bytes"),
])
def test_bad_records_are_refused(rec, message):
    with pytest.raises(CapabilityError, match=message):
        Capability.from_record(rec)


def test_unknown_record_keys_are_ignored():
    assert Capability.from_record({"name": "ok", "future_field": [1, 2]}).name == "ok"
    assert MAX_RECORD_BYTES == 16 * 1024


def test_a2a_card_export():
    card = agent_card("worker-1", [cap(), Capability("echo")], url="https://bridge.example/a2a")
    assert card["skills"] == [
        {"id": "summarize", "name": "summarize", "description": "Summarize a text", "tags": ["text", "llm"],
         "examples": ["summarize this memo"], "inputModes": ["application/json"], "outputModes": ["application/json"]},
        {"id": "echo", "name": "echo", "description": "echo", "tags": [], "inputModes": ["application/json"],
         "outputModes": ["application/json"]},
    ]
    assert card["capabilities"]["streaming"] is True
    for key in ("protocolVersion", "name", "description", "url", "version", "defaultInputModes", "defaultOutputModes"):
        assert card[key]
    json.dumps(card)


# -- comparing schemas (workflow checks) -----------------------------------------------------------

OUT = {"type": "object", "required": ["n"], "additionalProperties": False,
       "properties": {"n": {"type": "integer"}, "words": {"type": "array", "items": {"type": "string"}},
                      "meta": {"type": "object"}}}


@pytest.mark.parametrize("path, schema, why", [
    ([], OUT, None),
    (["n"], {"type": "integer"}, None),
    (["words", "3"], {"type": "string"}, None),
    (["meta", "anything"], None, None),  # an open object: cannot tell
    (["nope"], None, "has no field 'nope' (its schema allows only: meta, n, words)"),
    (["n", "x"], None, "the value, field n, is integer: it has no field 'x'"),
    (["words", "x"], None, "field words, is array: it has no field 'x'"),
])
def test_follow_finds_a_fields_schema_or_says_why_it_cannot_exist(path, schema, why):
    found, reason = follow(OUT, path)
    assert found == schema
    assert (reason is None) if why is None else why in reason


def test_follow_says_nothing_about_open_or_unknown_schemas():
    assert follow(None, ["a"]) == (None, None)
    assert follow({}, ["a", "b"]) == (None, None)
    assert follow({"type": "object", "properties": {"a": {"type": "string"}}}, ["b"]) == (None, None)
    assert follow({"type": "object", "additionalProperties": {"type": "integer"}}, ["b"]) == ({"type": "integer"}, None)


@pytest.mark.parametrize("source, target, found", [
    ({"type": "string"}, {"type": "integer"}, ["(value): string where integer is expected"]),
    ({"type": "integer"}, {"type": "number"}, []),
    ({"type": "number"}, {"type": "integer"}, []),  # 2.0 is an integer: no false alarm
    ({"type": ["string", "null"]}, {"type": "integer"}, ["(value): null or string where integer is expected"]),
    ({"type": ["string", "integer"]}, {"type": "integer"}, []),
    ({"enum": ["a", "b"]}, {"enum": ["c"]}, ["(value): one of ['a', 'b'], none of which fits (must be one of ['c'])"]),
    ({"const": "b"}, {"enum": ["a", "b"]}, []),
    (OUT, {"type": "object", "properties": {"n": {"type": "string"}}}, ["/n: integer where string is expected"]),
    (OUT, {"type": "object", "properties": {"words": {"type": "array", "items": {"type": "integer"}}}},
     ["/words/*: string where integer is expected"]),
    (OUT, {"type": "object", "required": ["text"]}, ["/text: required, but the source never has it"]),
    (OUT, {"type": "object", "properties": {}, "additionalProperties": False},
     ["/n: always present, but the target does not allow it"]),
    ({"type": "object"}, {"type": "object", "required": ["text"]}, []),  # an open source may have it
    (None, {"type": "integer"}, []),
    ({"type": "string"}, {}, []),
])
def test_conflicts_only_where_no_value_can_fit(source, target, found):
    assert conflicts(source, target) == found
