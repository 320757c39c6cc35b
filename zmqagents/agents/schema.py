"""A small subset of JSON Schema, enough to check a task's input before it is sent.

Supported keywords: ``type`` (a name or a list of names), ``enum``, ``const``, ``properties``,
``required``, ``additionalProperties`` (bool or schema), ``items`` (one schema),
``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum`` (numbers), ``minLength``/
``maxLength``, ``minItems``/``maxItems``. Other keywords are ignored, as JSON Schema ignores
unknown ones, so a richer schema still works (only less strictly). ``pattern`` is left out on
purpose: schemas come from other nodes, and a hostile regular expression could stall the caller.

Values are what msgpack/JSON decode to: dict, list, str, int, float, bool, None.
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


def validate(schema: Any, value: Any) -> list[str]:
    """Problems of ``value`` against ``schema``, each as "PATH: what is wrong"; empty when valid.

    PATH is a JSON pointer into the value ("" is the value itself). ``schema`` must pass
    :func:`check_schema` (call it once when the schema is received).
    """
    errors: list[str] = []
    _validate(schema, value, "", errors)
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
