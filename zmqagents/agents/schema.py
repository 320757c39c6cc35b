"""JSON Schema validation for task inputs, with no keyword silently ignored where it matters.

Checked (JSON Schema 2020-12 validation and applicator vocabularies, the parts agents use):
``type`` (a name or a list), ``enum``, ``const``; numbers: ``minimum``, ``maximum``,
``exclusiveMinimum``, ``exclusiveMaximum``, ``multipleOf``; strings: ``minLength``, ``maxLength``
(in code points), ``pattern`` (ECMA-262 syntax run by the bounded engine in ``pattern.py``, since
schemas come from other nodes and a backtracking engine can be made to stall); arrays: ``items``,
``prefixItems``, ``minItems``, ``maxItems``, ``uniqueItems``, ``contains`` (with ``minContains``/
``maxContains``); objects: ``properties``, ``required``, ``additionalProperties``,
``patternProperties``, ``propertyNames``, ``minProperties``, ``maxProperties``,
``dependentRequired``; combinations: ``allOf``, ``anyOf``, ``oneOf``, ``not``, ``if``/``then``/
``else``; references: ``$ref`` to a JSON pointer within the same schema (``#``, ``#/$defs/x``,
``#/definitions/x``), applied together with its sibling keywords as 2020-12 says. Annotations are
accepted and have no effect: ``title``, ``description``, ``default``, ``examples``, ``$comment``,
``$schema``, ``$id`` (at the root only), ``deprecated``, ``readOnly``, ``writeOnly``,
``contentMediaType``, ``contentEncoding``, ``format`` (an annotation by default in 2020-12) and
any ``x-`` keyword.

Two modes of :func:`check_schema`. ``strict=True`` is for registration (a provider serving a
capability, a workflow file declaring schemas): any other keyword is refused with a
:class:`SchemaError` naming it, so a schema never means less than its author wrote. The default
(lenient) mode is for schemas read from peers' capability records: unknown keywords are let
through, because the provider that published them checks its own input strictly, and a newer
peer may check more than this node knows.

Validation is bounded: at most :data:`MAX_STEPS` subschema applications per value (``anyOf``
inside ``anyOf`` can otherwise multiply), recursion through ``$ref`` at most
:data:`MAX_VALIDATE_DEPTH` deep, and ``pattern`` within its engine's budget; past a bound the value
is reported invalid with the reason, never accepted unchecked.

Values are what msgpack/JSON decode to: dict, list, str, int, float, bool, None.

Two questions about schemas themselves serve workflow checks (``workflow_check.py``): what the
schema of a field inside a value is (:func:`follow`), and whether values of one schema can ever
fit another (:func:`conflicts`). Both answer "cannot tell" whenever a schema says too little (or
combines subschemas in ways they do not reason about), so they never report a problem that a real
value might not have.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import unquote

from .pattern import Pattern, PatternError, PatternTooCostly
from ..errors import Error

TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
MAX_ERRORS = 20  # errors reported per validation; enough to fix an input, bounded for a huge one
MAX_SCHEMA_DEPTH = 32
MAX_STEPS = 100_000  # subschema applications per validation
MAX_VALIDATE_DEPTH = 256  # nested applications ($ref recursion, deep values)
MAX_UNIQUE_ITEMS = 10_000  # uniqueItems compares pairs: bounded

ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "$schema", "deprecated",
                         "readOnly", "writeOnly", "contentMediaType", "contentEncoding", "format"})
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "propertyNames", "contains")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
           "maxContains")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
CHECKED = frozenset({"type", "enum", "const", "multipleOf", "pattern", "required", "uniqueItems", "dependentRequired",
                     "$ref", *_SUBSCHEMA, *_SCHEMA_LISTS, *_SCHEMA_MAPS, *_COUNTS, *_BOUNDS})
_PATTERNS: dict[str, Pattern] = {}  # compiled patterns, bounded below
MAX_PATTERNS_CACHED = 256


class SchemaError(Error, ValueError):
    """The schema itself is not valid here (wrong keyword types, unknown type names, a keyword that
    strict mode does not check, a $ref that does not resolve, a pattern the bounded engine refuses)."""


def _type_of(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


def _is_type(value: Any, name: str) -> bool:
    actual = _type_of(value)
    if name == "number":
        return actual in ("integer", "number")
    if name == "integer" and actual == "number":
        return float(value).is_integer()  # JSON Schema: 1.0 is an integer
    return actual == name


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _pattern(source: str) -> Pattern:
    """The compiled pattern (PatternError if the engine refuses it), cached."""
    compiled = _PATTERNS.get(source)
    if compiled is None:
        compiled = Pattern(source)
        if len(_PATTERNS) >= MAX_PATTERNS_CACHED:
            _PATTERNS.pop(next(iter(_PATTERNS)))
        _PATTERNS[source] = compiled
    return compiled


def check_schema(schema: Any, path: str = "#", depth: int = 0, *, strict: bool = False, root: Any = None) -> None:
    """Raise SchemaError if ``schema`` misuses a keyword, or (``strict``) uses one not checked here."""
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"{path}: schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if root is None:
        root = schema
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: a schema is an object (or true/false), got {type(schema).__name__}")
    if strict:
        unknown = sorted(k for k in schema if k not in CHECKED and k not in ANNOTATIONS
                         and not (k == "$id" and depth == 0) and not (isinstance(k, str) and k.startswith("x-")))
        if unknown:
            raise SchemaError(f"{path}: keyword(s) {', '.join(map(repr, unknown))} not supported by zmqagents' "
                              f"validator (it would not check them); supported: {', '.join(sorted(CHECKED))}")
        if isinstance(schema.get("items"), list):
            raise SchemaError(f"{path}/items: an array of schemas is the old tuple form; use prefixItems")
    typ = schema.get("type")
    if typ is not None:
        names = typ if isinstance(typ, list) else [typ]
        for name in names:
            if name not in TYPES:
                raise SchemaError(f"{path}/type: unknown type {name!r} (one of {', '.join(TYPES)})")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise SchemaError(f"{path}/enum: must be an array")
    for key in _BOUNDS:
        if key in schema and not _number(schema[key]):
            raise SchemaError(f"{path}/{key}: must be a number")
    if "multipleOf" in schema and not (_number(schema["multipleOf"]) and schema["multipleOf"] > 0
                                       and math.isfinite(schema["multipleOf"])):
        raise SchemaError(f"{path}/multipleOf: must be a number above 0")
    for key in _COUNTS:
        if key in schema and (not isinstance(schema[key], int) or isinstance(schema[key], bool) or schema[key] < 0):
            raise SchemaError(f"{path}/{key}: must be a non-negative integer")
    if "uniqueItems" in schema and not isinstance(schema["uniqueItems"], bool):
        raise SchemaError(f"{path}/uniqueItems: must be true or false")
    if "required" in schema and not (isinstance(schema["required"], list)
                                     and all(isinstance(k, str) for k in schema["required"])):
        raise SchemaError(f"{path}/required: must be an array of strings")
    deps = schema.get("dependentRequired")
    if deps is not None and not (isinstance(deps, dict) and all(
            isinstance(v, list) and all(isinstance(k, str) for k in v) for v in deps.values())):
        raise SchemaError(f"{path}/dependentRequired: must map property names to arrays of strings")
    if "pattern" in schema:
        try:
            _pattern(schema["pattern"])
        except PatternError as exc:
            raise SchemaError(f"{path}/pattern: {exc}") from None
    for key in _SCHEMA_MAPS:
        sub = schema.get(key)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise SchemaError(f"{path}/{key}: must be an object")
        for name, item in sub.items():
            if key == "patternProperties":
                try:
                    _pattern(name)
                except PatternError as exc:
                    raise SchemaError(f"{path}/patternProperties: {exc}") from None
            check_schema(item, f"{path}/{key}/{name}", depth + 1, strict=strict, root=root)
    for key in _SCHEMA_LISTS:
        if key in schema:
            items = schema[key]
            if not isinstance(items, list) or not items:
                raise SchemaError(f"{path}/{key}: must be a non-empty array of schemas")
            for i, item in enumerate(items):
                check_schema(item, f"{path}/{key}/{i}", depth + 1, strict=strict, root=root)
    for key in _SUBSCHEMA:
        if key in schema and not (key == "items" and isinstance(schema[key], list) and not strict):
            check_schema(schema[key], f"{path}/{key}", depth + 1, strict=strict, root=root)
    if "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str):
            raise SchemaError(f"{path}/$ref: must be a string")
        resolve_ref(root, ref, f"{path}/$ref")


def resolve_ref(root: Any, ref: str, where: str = "$ref") -> Any:
    """The subschema ``ref`` (``#`` or ``#/json/pointer``) names in ``root``; SchemaError if none."""
    if ref != "#" and not ref.startswith("#/"):
        raise SchemaError(f"{where}: {ref!r:.80} is not a reference within this schema (only '#' and '#/...' are "
                          "resolved; nothing is fetched)")
    cur = root
    for raw in ref[2:].split("/") if ref != "#" else ():
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise SchemaError(f"{where}: {ref!r:.80} does not resolve in this schema")
    if not isinstance(cur, (dict, bool)):
        raise SchemaError(f"{where}: {ref!r:.80} names something that is not a schema")
    return cur


def validate(schema: Any, value: Any, path: str = "", *, root: Any = None) -> list[str]:
    """Problems of ``value`` against ``schema``, each as "PATH: what is wrong"; empty when valid.

    PATH is a JSON pointer into the value ("" is the value itself), below ``path`` when the value
    sits inside a larger one. ``schema`` must pass :func:`check_schema` (call it once when the
    schema is received). ``$ref`` resolves against ``root`` (default: ``schema`` itself); one that
    does not resolve raises SchemaError (a subschema taken out of its document).
    """
    run = _Validation(schema if root is None else root)
    run.check(schema, value, path, run.errors, 0)
    return run.errors[:MAX_ERRORS]


class _Validation:
    """One validation: the root that $ref resolves against, the errors, and the work spent."""

    def __init__(self, root: Any):
        self.root = root
        self.errors: list[str] = []
        self.steps = 0
        self.over = False

    def quiet(self, schema: Any, value: Any, path: str, depth: int) -> list[str]:
        """The errors of ``value`` against ``schema`` without reporting them (anyOf, oneOf, not, if)."""
        found: list[str] = []
        self.check(schema, value, path, found, depth)
        return found

    def check(self, schema: Any, value: Any, path: str, errors: list[str], depth: int) -> None:
        if len(errors) >= MAX_ERRORS:
            return
        where = path or "(input)"
        if schema is True or schema == {}:
            return
        if schema is False:
            errors.append(f"{where}: no value is allowed here")
            return
        self.steps += 1
        if self.steps > MAX_STEPS or depth > MAX_VALIDATE_DEPTH:
            if not self.over:  # reported once, even from inside anyOf/oneOf/not, where errors are only counted
                self.over = True
                why = f"over {MAX_STEPS} steps" if self.steps > MAX_STEPS else f"nested over {MAX_VALIDATE_DEPTH} deep"
                self.errors.append(f"{where}: too costly to check against the schema ({why}); refused")
            if errors is not self.errors:
                errors.append(f"{where}: not checked (too costly)")
            return
        typ = schema.get("type")
        if typ is not None:
            names = typ if isinstance(typ, list) else [typ]
            if not any(_is_type(value, n) for n in names):
                errors.append(f"{where}: expected {' or '.join(names)}, got {_type_of(value) or type(value).__name__}")
                return
        if "const" in schema and not _equal(value, schema["const"]):
            errors.append(f"{where}: must be {schema['const']!r}")
        if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
            errors.append(f"{where}: must be one of {schema['enum']!r:.200}")
        if "$ref" in schema:
            self.check(resolve_ref(self.root, schema["$ref"]), value, path, errors, depth + 1)
        self.combinations(schema, value, path, errors, depth)
        if _number(value):
            self.number(schema, value, where, errors)
        elif isinstance(value, str):
            self.string(schema, value, where, errors)
        elif isinstance(value, (list, tuple)):
            self.array(schema, value, path, errors, depth)
        elif isinstance(value, dict):
            self.object(schema, value, path, errors, depth)

    def combinations(self, schema: dict, value: Any, path: str, errors: list[str], depth: int) -> None:
        where = path or "(input)"
        for sub in schema.get("allOf", ()):
            self.check(sub, value, path, errors, depth + 1)
        if "anyOf" in schema:
            failures = []
            for sub in schema["anyOf"]:
                found = self.quiet(sub, value, path, depth + 1)
                if not found:
                    break
                failures.append(found[0])
            else:
                errors.append(f"{where}: matches none of anyOf ({'; '.join(failures)[:300]})")
        if "oneOf" in schema:
            matched = [i for i, sub in enumerate(schema["oneOf"]) if not self.quiet(sub, value, path, depth + 1)]
            if len(matched) != 1:
                errors.append(f"{where}: must match exactly one of oneOf, matches "
                              + (f"{len(matched)} (#{', #'.join(map(str, matched))})" if matched else "none"))
        if "not" in schema and not self.quiet(schema["not"], value, path, depth + 1):
            errors.append(f"{where}: matches the schema under 'not'")
        if "if" in schema:
            branch = "then" if not self.quiet(schema["if"], value, path, depth + 1) else "else"
            if branch in schema:
                self.check(schema[branch], value, path, errors, depth + 1)

    def number(self, schema: dict, value: float, where: str, errors: list[str]) -> None:
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} must be above {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{where}: {value} must be below {schema['exclusiveMaximum']}")
        if "multipleOf" in schema and not _multiple(value, schema["multipleOf"]):
            errors.append(f"{where}: {value} is not a multiple of {schema['multipleOf']}")

    def string(self, schema: dict, value: str, where: str, errors: list[str]) -> None:
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
        if "pattern" in schema:
            try:
                if not _pattern(schema["pattern"]).search(value):
                    errors.append(f"{where}: does not match the pattern {schema['pattern']!r:.100}")
            except PatternTooCostly as exc:
                errors.append(f"{where}: {exc}; refused")

    def array(self, schema: dict, value: Any, path: str, errors: list[str], depth: int) -> None:
        where = path or "(input)"
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        prefix = schema.get("prefixItems", ())
        for i, item in enumerate(value):
            if i < len(prefix):
                self.check(prefix[i], item, f"{path}/{i}", errors, depth + 1)
            elif "items" in schema and not isinstance(schema["items"], list):
                self.check(schema["items"], item, f"{path}/{i}", errors, depth + 1)
        if schema.get("uniqueItems"):
            if len(value) > MAX_UNIQUE_ITEMS:
                errors.append(f"{where}: more than {MAX_UNIQUE_ITEMS} items to check for uniqueness; refused")
            else:
                seen: dict[str, int] = {}
                for i, item in enumerate(value):
                    key = _canonical(item)
                    if key in seen:
                        errors.append(f"{where}: items {seen[key]} and {i} are equal (uniqueItems)")
                        break
                    seen[key] = i
        if "contains" in schema:
            count = sum(1 for i, item in enumerate(value)
                        if not self.quiet(schema["contains"], item, f"{path}/{i}", depth + 1))
            low, high = schema.get("minContains", 1), schema.get("maxContains")
            if count < low:
                errors.append(f"{where}: {count} item(s) match 'contains', at least {low} needed")
            if high is not None and count > high:
                errors.append(f"{where}: {count} item(s) match 'contains', at most {high} allowed")

    def object(self, schema: dict, value: dict, path: str, errors: list[str], depth: int) -> None:
        where = path or "(input)"
        for name in schema.get("required", ()):
            if name not in value:
                errors.append(f"{where}: missing required property {name!r}")
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append(f"{where}: fewer than {schema['minProperties']} properties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{where}: more than {schema['maxProperties']} properties")
        for name, needed in (schema.get("dependentRequired") or {}).items():
            if name in value:
                for other in needed:
                    if other not in value:
                        errors.append(f"{where}: {other!r} is required when {name!r} is present")
        props = schema.get("properties") or {}
        patterns = schema.get("patternProperties") or {}
        extra = schema.get("additionalProperties", True)
        names = schema.get("propertyNames")
        for name, item in value.items():
            sub = f"{path}/{_escape(str(name))}"
            if names is not None:
                for problem in self.quiet(names, name, sub, depth + 1)[:1]:
                    errors.append(f"{sub}: the property name is not allowed ({problem.partition(': ')[2]})")
            matched = name in props
            if matched:
                self.check(props[name], item, sub, errors, depth + 1)
            for source, sub_schema in patterns.items():
                try:
                    hit = isinstance(name, str) and _pattern(source).search(name)
                except PatternTooCostly as exc:
                    errors.append(f"{sub}: {exc}; refused")
                    continue
                if hit:
                    matched = True
                    self.check(sub_schema, item, sub, errors, depth + 1)
            if matched:
                continue
            if extra is False:
                errors.append(f"{sub}: property not allowed")
            elif extra is not True:
                self.check(extra, item, sub, errors, depth + 1)


def _multiple(value: float, step: float) -> bool:
    """``value`` is a whole multiple of ``step`` (exactly for integers, within float error otherwise)."""
    if isinstance(value, int) and isinstance(step, int):
        return value % step == 0
    if not math.isfinite(value):
        return False
    q = value / step
    if not math.isfinite(q):
        return False
    return abs(q - round(q)) <= 1e-9 * max(1.0, abs(q))


def _canonical(value: Any) -> str:
    """A string equal for JSON-equal values (1 and 1.0 alike, true and 1 not): for uniqueItems."""
    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return ["n", float(v) if isinstance(v, float) and not v.is_integer() else int(v)]
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        return repr(v)

    return json.dumps(norm(value), sort_keys=True)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


# keywords whose subschemas follow() and conflicts() do not reason about: where they appear, say nothing
_OPAQUE = ("$ref", "allOf", "anyOf", "oneOf", "not", "if", "patternProperties", "dependentRequired",
           "propertyNames", "prefixItems", "contains")


def _says_nothing(schema: Any) -> bool:
    return schema is None or schema is True or schema == {}


def types_of(schema: Any) -> set[str] | None:
    """The JSON types a value valid under ``schema`` may have; None when the schema does not say."""
    if not isinstance(schema, dict):
        return None
    typ = schema.get("type")
    if typ is not None:
        return set(typ if isinstance(typ, list) else [typ])
    if "const" in schema:
        return {_type_of(schema["const"]) or "?"}
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return {_type_of(v) or "?" for v in schema["enum"]}
    return None


def describe_types(types: set[str]) -> str:
    """``{"integer", "null"}`` as "integer or null" (sorted, so messages are stable)."""
    return " or ".join(sorted(types))


def follow(schema: Any, path: list[str], root: str = "the value") -> tuple[Any, str | None]:
    """The schema of the value at ``path`` (field names, or item indexes as digits) inside a value of
    ``schema``.

    Returns ``(sub_schema, None)``; ``(None, None)`` when the schema does not say what is there
    (no schema, an open object, an array without ``items``); ``(None, why)`` when no valid value
    can have that field: the value there is not an object (or array), or the object's
    ``properties`` leave it out while ``additionalProperties`` is false. ``root`` names the
    whole value in that explanation.
    """
    cur = schema
    for i, part in enumerate(path):
        if isinstance(cur, dict) and "$ref" in cur and set(cur) <= {"$ref", "$defs", "definitions", *ANNOTATIONS}:
            try:
                cur = resolve_ref(schema, cur["$ref"])
            except SchemaError:
                return None, None
        if _says_nothing(cur) or cur is False or not isinstance(cur, dict):
            return None, None
        at = f"{root}, field {'.'.join(path[:i])}," if i else root
        types = types_of(cur)
        props = cur.get("properties") or {}
        may_be_object = types is None or "object" in types
        may_be_array = types is None or "array" in types
        opaque = any(k in cur for k in _OPAQUE)  # other subschemas may allow or describe the field
        if may_be_object and part in props:
            cur = props[part]
        elif may_be_array and part.isdigit() and "prefixItems" in cur:
            prefix = cur["prefixItems"]
            if int(part) < len(prefix):
                cur = prefix[int(part)]
            elif isinstance(cur.get("items"), dict) or isinstance(cur.get("items"), bool):
                cur = cur["items"]
            else:
                return None, None
        elif may_be_array and part.isdigit() and "items" in cur:
            cur = cur["items"]
        elif opaque:
            return None, None
        elif types is not None and not may_be_object and not (may_be_array and part.isdigit()):
            return None, f"{at} is {describe_types(types)}: it has no field {part!r}"
        elif may_be_object and cur.get("additionalProperties") is False and not (may_be_array and part.isdigit()):
            known = ", ".join(sorted(props)) or "none"
            return None, f"{at} has no field {part!r} (its schema allows only: {known})"
        elif may_be_object and isinstance(cur.get("additionalProperties"), dict) and not part.isdigit():
            cur = cur["additionalProperties"]
        else:
            return None, None
    return (None if _says_nothing(cur) else cur), None


def _may_fit(source_type: str, target_types: set[str]) -> bool:
    if source_type in target_types:
        return True
    # an integer is a number; a number may be a whole one (1.0 is an integer in JSON Schema)
    return (source_type == "integer" and "number" in target_types) or (source_type == "number" and "integer" in target_types)


MAX_ENUM_CHECKED = 100  # values of a source enum tried against the target; beyond that, say nothing


def conflicts(source: Any, target: Any, path: str = "", depth: int = 0) -> list[str]:
    """Why values valid under ``source`` do not fit ``target``, each as "PATH: what"; empty when
    they may (or when either schema says too little to tell).

    As a type checker would: the types must overlap; a property both schemas declare, and the items
    of arrays both declare, must be compatible too (even optional ones: when present they clash);
    a property ``target`` requires must be one ``source`` can have; a property ``source`` requires
    must be one ``target`` allows; a ``source`` enum or const needs one value that ``target`` takes.
    Value bounds (minimum, lengths) are not compared.
    """
    where = path or "(value)"
    if _says_nothing(source) or _says_nothing(target) or source is False or depth > MAX_SCHEMA_DEPTH:
        return []
    if target is False:
        return [f"{where}: the target allows no value here"]
    st, tt = types_of(source), types_of(target)
    if st is not None and tt is not None and not any(_may_fit(t, tt) for t in st):
        return [f"{where}: {describe_types(st)} where {describe_types(tt)} is expected"]
    values = [source["const"]] if "const" in source else source.get("enum")
    if isinstance(values, list) and 0 < len(values) <= MAX_ENUM_CHECKED:
        try:
            if all(validate(target, v) for v in values):
                shown = repr(values[0]) if len(values) == 1 else f"one of {values!r:.120}"
                why = validate(target, values[0])[0].split(": ", 1)[-1]
                return [f"{where}: {shown}, none of which fits ({why})"]
        except SchemaError:  # a $ref out of the target's document: cannot tell
            pass
        return []
    if any(k in source or k in target for k in _OPAQUE):
        return []
    out: list[str] = []
    if (st is None or "object" in st) and (tt is None or "object" in tt):
        sp, tp = source.get("properties") or {}, target.get("properties") or {}
        if st == {"object"}:
            if source.get("additionalProperties") is False:
                for name in target.get("required", ()):
                    if name not in sp:
                        out.append(f"{path}/{_escape(name)}: required, but the source never has it")
            if target.get("additionalProperties") is False:
                for name in source.get("required", ()):
                    if name not in tp:
                        out.append(f"{path}/{_escape(name)}: always present, but the target does not allow it")
        for name in sp:
            if name in tp:
                out += conflicts(sp[name], tp[name], f"{path}/{_escape(name)}", depth + 1)
    if (st is None or "array" in st) and (tt is None or "array" in tt) and "items" in source and "items" in target:
        out += conflicts(source["items"], target["items"], f"{path}/*", depth + 1)
    return out[:MAX_ERRORS]

