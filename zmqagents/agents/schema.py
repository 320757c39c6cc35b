"""A small subset of JSON Schema, enough to check a task's input before it is sent.

Supported keywords: ``type`` (a name or a list of names), ``enum``, ``const``, ``properties``,
``required``, ``additionalProperties`` (bool or schema), ``items`` (one schema),
``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum`` (numbers), ``minLength``/
``maxLength``, ``minItems``/``maxItems``. Other keywords are ignored, as JSON Schema ignores
unknown ones, so a richer schema still works (only less strictly). ``pattern`` is left out on
purpose: schemas come from other nodes, and a hostile regular expression could stall the caller.

Values are what msgpack/JSON decode to: dict, list, str, int, float, bool, None.

Two questions about schemas themselves serve workflow checks (``workflow_check.py``): what the
schema of a field inside a value is (:func:`follow`), and whether values of one schema can ever
fit another (:func:`conflicts`). Both answer "cannot tell" whenever a schema says too little, so
they never report a problem that a real value might not have.
"""

from __future__ import annotations

from typing import Any

TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
MAX_ERRORS = 20  # errors reported per validation; enough to fix an input, bounded for a huge one
MAX_SCHEMA_DEPTH = 32


class SchemaError(ValueError):
    """The schema itself is not valid for this subset (wrong keyword types, unknown type names)."""


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


def check_schema(schema: Any, path: str = "#", depth: int = 0) -> None:
    """Raise SchemaError if ``schema`` misuses a supported keyword."""
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"{path}: schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: a schema is an object (or true/false), got {type(schema).__name__}")
    typ = schema.get("type")
    if typ is not None:
        names = typ if isinstance(typ, list) else [typ]
        for name in names:
            if name not in TYPES:
                raise SchemaError(f"{path}/type: unknown type {name!r} (one of {', '.join(TYPES)})")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise SchemaError(f"{path}/enum: must be an array")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema and not _number(schema[key]):
            raise SchemaError(f"{path}/{key}: must be a number")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and (not isinstance(schema[key], int) or isinstance(schema[key], bool) or schema[key] < 0):
            raise SchemaError(f"{path}/{key}: must be a non-negative integer")
    if "required" in schema and not (isinstance(schema["required"], list)
                                     and all(isinstance(k, str) for k in schema["required"])):
        raise SchemaError(f"{path}/required: must be an array of strings")
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise SchemaError(f"{path}/properties: must be an object")
        for name, sub in props.items():
            check_schema(sub, f"{path}/properties/{name}", depth + 1)
    for key in ("items", "additionalProperties"):
        if key in schema:
            check_schema(schema[key], f"{path}/{key}", depth + 1)


def validate(schema: Any, value: Any, path: str = "") -> list[str]:
    """Problems of ``value`` against ``schema``, each as "PATH: what is wrong"; empty when valid.

    PATH is a JSON pointer into the value ("" is the value itself), below ``path`` when the value
    sits inside a larger one. ``schema`` must pass :func:`check_schema` (call it once when the
    schema is received).
    """
    errors: list[str] = []
    _validate(schema, value, path, errors)
    return errors[:MAX_ERRORS]


def _validate(schema: Any, value: Any, path: str, errors: list[str]) -> None:
    if len(errors) >= MAX_ERRORS:
        return
    where = path or "(input)"
    if schema is True or schema == {}:
        return
    if schema is False:
        errors.append(f"{where}: no value is allowed here")
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
    if _number(value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} must be above {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{where}: {value} must be below {schema['exclusiveMaximum']}")
    elif isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
    elif isinstance(value, (list, tuple)):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                _validate(schema["items"], item, f"{path}/{i}", errors)
    elif isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                errors.append(f"{where}: missing required property {name!r}")
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            sub = f"{path}/{_escape(str(name))}"
            if name in props:
                _validate(props[name], item, sub, errors)
            elif extra is False:
                errors.append(f"{sub}: property not allowed")
            elif extra is not True:
                _validate(extra, item, sub, errors)


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
        if _says_nothing(cur) or cur is False:
            return None, None
        at = f"{root}, field {'.'.join(path[:i])}," if i else root
        types = types_of(cur)
        props = cur.get("properties") or {}
        may_be_object = types is None or "object" in types
        may_be_array = types is None or "array" in types
        if may_be_object and part in props:
            cur = props[part]
        elif may_be_array and part.isdigit() and "items" in cur:
            cur = cur["items"]
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
        if all(validate(target, v) for v in values):
            shown = repr(values[0]) if len(values) == 1 else f"one of {values!r:.120}"
            why = validate(target, values[0])[0].split(": ", 1)[-1]
            return [f"{where}: {shown}, none of which fits ({why})"]
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

