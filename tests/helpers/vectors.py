"""Reading the test-vector files in protocols/ and checking them against their generators in tools/.

The tests read the files with this small parser of their own rather than the generators' code, so that
a mistake in a generator cannot hide the same mistake in the implementation.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict:
    """protocols/<name> as parsed JSON."""
    return json.loads((ROOT / "protocols" / name).read_text(encoding="utf-8"))


def untag(t):
    """A value in the tagged form the vectors files use (see tools/_vectors.py) as the msgpack value."""
    kind, value = t
    if kind == "bin":
        return bytes.fromhex(value)
    if kind == "array":
        return [untag(v) for v in value]
    if kind == "map":
        return {untag(k): untag(v) for k, v in value}
    assert kind in ("nil", "bool", "int", "float", "str"), kind
    return value


def assert_generated_by(name: str, generator: str) -> None:
    """protocols/<name> is exactly what tools/<generator>.py writes today.

    The generators import each other and tools/_vectors.py as scripts do, from tools/ on ``sys.path``;
    it goes at the end so that nothing there can shadow another module.
    """
    tools = str(ROOT / "tools")
    if tools not in sys.path:
        sys.path.append(tools)
    gen = importlib.import_module(generator)
    assert gen.render() == (ROOT / "protocols" / name).read_text(encoding="utf-8"), (
        f"vectors are stale: run python tools/{generator}.py and review the diff")
