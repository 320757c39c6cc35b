"""The schema keywords agents use are checked, none is silently ignored at registration, and the
checks stay bounded (pattern engine, combinations, $ref recursion) whatever a peer's schema says."""

from __future__ import annotations

import random
import re

import pytest

from zmqagents.agents.capability import Capability, CapabilityError
from zmqagents.agents.pattern import MAX_WORK, Pattern, PatternError, PatternTooCostly
from zmqagents.agents.schema import SchemaError, check_schema, conflicts, follow, validate


def test_the_issue_case_any_of_integer_or_null():
    schema = {"type": "object", "properties": {"n": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}
    check_schema(schema, strict=True)
    assert validate(schema, {"n": 3}) == [] and validate(schema, {"n": None}) == []
    (error,) = validate(schema, {"n": "oops"})
    assert error.startswith("/n: matches none of anyOf") and "expected integer" in error and "expected null" in error


@pytest.mark.parametrize("schema, good, bad, message", [
    ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, [-1, 0.5, "x"], [3, 5], "exactly one of oneOf"),
    ({"allOf": [{"type": "string"}, {"maxLength": 2}]}, ["ab"], ["abc", 1], ""),
    ({"not": {"type": "string"}}, [1, None], ["x"], "under 'not'"),
    ({"enum": ["a", 1]}, ["a", 1.0], ["b", True], "one of"),
    ({"const": {"k": [1]}}, [{"k": [1.0]}], [{"k": [True]}], "must be"),
    ({"multipleOf": 3}, [0, 9, -3, 6.0], [1, 7.5], "not a multiple of 3"),
    ({"multipleOf": 0.1}, [0.3, 1.2, 7], [0.35], "not a multiple of 0.1"),
    ({"pattern": "^[a-z]+-\\d{2}$"}, ["ab-12"], ["ab-1", "AB-12", "ab-12\n"], "does not match the pattern"),
    ({"minProperties": 1, "maxProperties": 1}, [{"a": 1}], [{}, {"a": 1, "b": 2}], "properties"),
    ({"uniqueItems": True}, [[1, "1", True], []], [[1, 1.0], [{"a": [1]}, {"a": [1]}]], "are equal"),
    ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, [["a", 1, 2], []], [[1], ["a", "b"]], ""),
    ({"contains": {"type": "null"}, "maxContains": 1}, [[1, None]], [[1], [None, None]], "match 'contains'"),
    ({"patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False},
     [{"x-a": 1}], [{"x-a": "s"}, {"y": 1}], ""),
    ({"propertyNames": {"maxLength": 2}}, [{"ab": 1}], [{"abc": 1}], "property name is not allowed"),
    ({"dependentRequired": {"a": ["b"]}}, [{"b": 1}, {"a": 1, "b": 2}], [{"a": 1}], "required when"),
    ({"if": {"type": "integer"}, "then": {"minimum": 10}, "else": {"type": "string"}}, [10, "x"], [5, None], ""),
    ({"$defs": {"pos": {"type": "integer", "minimum": 1}}, "properties": {"n": {"$ref": "#/$defs/pos"}}},
     [{"n": 1}], [{"n": 0}, {"n": "1"}], "/n:"),
    ({"definitions": {"a~b/c": {"type": "null"}}, "$ref": "#/definitions/a~0b~1c"}, [None], [0], ""),
])
def test_keywords_are_checked(schema, good, bad, message):
    check_schema(schema, strict=True)
    for value in good:
        assert validate(schema, value) == [], value
    for value in bad:
        errors = validate(schema, value)
        assert errors and message in " ".join(errors), (value, errors)


def test_recursive_ref_validates_a_tree():
    tree = {"type": "object", "required": ["v"], "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#"}}}, "additionalProperties": False}
    check_schema(tree, strict=True)
    assert validate(tree, {"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}) == []
    assert validate(tree, {"v": 1, "kids": [{"v": 2, "kids": [{"v": "3"}]}]}) == ["/kids/0/kids/0/v: expected integer, got string"]


@pytest.mark.parametrize("schema, message", [
    ({"type": "string", "format": "email", "minContains": 1, "unevaluatedProperties": False}, "'unevaluatedProperties'"),
    ({"properties": {"a": {"dependentSchemas": {}}}}, "#/properties/a: keyword(s) 'dependentSchemas'"),
    ({"anyOf": [{"$dynamicRef": "#x"}]}, "#/anyOf/0: keyword(s) '$dynamicRef'"),
    ({"items": [{"type": "string"}]}, "old tuple form"),
    ({"properties": {"a": {"$id": "x"}}}, "'$id'"),
])
def test_strict_mode_refuses_what_it_would_not_check(schema, message):
    check_schema(schema)  # lenient (a peer's record): let through, its provider enforces it
    with pytest.raises(SchemaError, match=re.escape(message)):
        check_schema(schema, strict=True)


@pytest.mark.parametrize("schema, message", [
    ({"$ref": "#/$defs/missing"}, "does not resolve"),
    ({"$ref": "https://example.com/s.json"}, "nothing is fetched"),
    ({"type": "string", "properties": {"a": {"$ref": "#/type"}}}, "not a schema"),
    ({"pattern": "(a)\\1"}, "backreferences"),
    ({"pattern": "(?=a)"}, "lookaround"),
    ({"patternProperties": {"[": {}}}, "missing ']'"),
    ({"multipleOf": 0}, "above 0"),
    ({"anyOf": []}, "non-empty array"),
    ({"uniqueItems": 1}, "true or false"),
])
def test_bad_schemas_are_refused_in_both_modes(schema, message):
    for strict in (False, True):
        with pytest.raises(SchemaError, match=re.escape(message)):
            check_schema(schema, strict=strict)


def test_serve_refuses_unchecked_keywords_at_registration():
    cap = Capability("x", input_schema={"type": "object", "unevaluatedProperties": False})  # a peer's record: fine
    with pytest.raises(CapabilityError, match="input_schema: .*'unevaluatedProperties'"):
        cap.check_strict()
    Capability("y", input_schema={"anyOf": [{"type": "integer"}, {"type": "null"}]}).check_strict()


def test_cost_is_bounded_whatever_the_schema():
    # a $ref loop that never descends into the value
    loop = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    check_schema(loop, strict=True)
    (error,) = validate(loop, 1)
    assert "too costly to check" in error and "nested over" in error
    # anyOf of anyOf ...: 2**30 applications unless bounded
    blowup: dict = {"$defs": {"l0": {"type": "string"}}}
    for i in range(1, 31):
        blowup["$defs"][f"l{i}"] = {"anyOf": [{"$ref": f"#/$defs/l{i - 1}"}, {"$ref": f"#/$defs/l{i - 1}"}]}
    blowup["$ref"] = "#/$defs/l30"
    check_schema(blowup, strict=True)
    errors = validate(blowup, 1)
    assert any("too costly to check" in e and "steps" in e for e in errors)
    assert validate(blowup, "x") == []  # the first branch that matches ends each anyOf


def test_pattern_engine_is_linear_where_backtracking_is_exponential():
    p = Pattern("^(a+)+$")
    assert not p.search("a" * 200_000 + "!") and p.search("a" * 200_000)
    assert Pattern("^(a|aa)*c$").search("a" * 50_000 + "c")
    # the NFA is bounded when compiled, the work per search when run
    with pytest.raises(PatternError, match="more than 5000 states"):
        Pattern("(((a{100}){100}){100})")
    wide = Pattern("[ab]*a[ab]{200}z")  # its DFA has 2**200 states: nearly every character builds a new one
    rnd = random.Random(7)
    text = "".join(rnd.choice("ab") for _ in range(200_000))
    with pytest.raises(PatternTooCostly):
        wide.search(text)
    assert validate({"pattern": wide.source}, text)[0].endswith("took more than its work budget; refused")
    assert MAX_WORK >= 1_000_000


@pytest.mark.parametrize("pattern", [
    "abc", "^abc$", "a|b", "^(a|b)*c$", "^[a-z]+$", "^\\d{3}-\\d{4}$", "x{2,3}", "^a{2,}$", "^$", "[^abc]",
    "\\w+@\\w+\\.com", "^(?:ab)?c", "^.$", "a.c", "^[\\d\\s]+$", "^(a+)+$", "^\\x41\\u0042$", "^a*?b", "(^a|b$)",
    "a{1,2}c|^$", "^(|a)b", "[a-c-]x", "^[\\-\\]a]+$", "^(?<word>[A-Z][a-z]*)( \\k)?", "^[\\W]+$",
])
def test_pattern_engine_agrees_with_python_re(pattern):
    if "\\k" in pattern:  # a named backreference: refused rather than run
        with pytest.raises(PatternError):
            Pattern(pattern)
        return
    compiled = Pattern(pattern)
    reference = re.compile(pattern.replace("$", r"\Z"))  # ECMA-262 $ is the very end; Python's allows a final \n
    rnd = random.Random(pattern)
    for _ in range(400):
        s = "".join(rnd.choice("abcx -@.\n12AZ]") for _ in range(rnd.randint(0, 8)))
        assert compiled.search(s) == (reference.search(s) is not None), (pattern, s)


def test_workflow_helpers_say_nothing_where_they_do_not_reason():
    # follow through a $ref, and into prefixItems
    schema = {"$defs": {"out": {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False}},
              "$ref": "#/$defs/out"}
    assert follow(schema, ["n"]) == ({"type": "integer"}, None)
    assert "has no field 'm'" in follow(schema, ["m"])[1]
    assert follow({"type": "array", "prefixItems": [{"type": "string"}], "items": False}, ["0"])[0] == {"type": "string"}
    # patternProperties may allow a field additionalProperties alone would not
    assert follow({"type": "object", "patternProperties": {"^x": {}}, "additionalProperties": False}, ["xa"]) == (None, None)
    # combinations: no false alarm, and the type clash is still seen
    assert conflicts({"type": "object", "required": ["a"]},
                     {"type": "object", "patternProperties": {"^a": {}}, "additionalProperties": False}) == []
    assert conflicts({"type": "string"}, {"anyOf": [{"type": "integer"}, {"type": "string"}]}) == []
    assert conflicts({"type": "string"}, {"type": "integer", "not": {"const": 1}}) == ["(value): string where integer is expected"]
    assert conflicts({"enum": ["a"]}, {"properties": {"x": {"$ref": "#/$defs/gone"}}}) == []
