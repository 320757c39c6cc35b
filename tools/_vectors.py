"""What the test-vector generators in tools/ share.

Each generator (make_envelope_vectors.py, make_dht_vectors.py, make_relay_vectors.py) builds a dict from
fixed inputs and writes it under protocols/. They share the fixed test identities, the tagged JSON form of
msgpack values, the JSON layout and the command line (rewrite the file, or ``--check`` that it is current),
so the three files read alike and a reader of one can check the others.

The generators are scripts (``python tools/make_x_vectors.py``): Python puts tools/ on ``sys.path``, which
is how they import this module and each other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

from zmqagents.identity import Identity

ROOT = Path(__file__).resolve().parent.parent


def identity(name: str) -> Identity:
    """A test identity whose seed is sha256 of its name: reproducible anywhere."""
    return Identity.from_seed(hashlib.sha256(f"zmqagents test identity {name}".encode()).digest())


def tag(value) -> list:
    """A msgpack value in the tagged JSON form, so that types and map order survive JSON.

    ``["nil", null]``, ``["bool", b]``, ``["int", n]``, ``["float", x]``, ``["str", s]``, ``["bin", hex]``,
    ``["array", [v, ...]]`` and ``["map", [[k, v], ...]]`` (entries in the order given).
    """
    if value is None:
        return ["nil", None]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["float", value]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, bytes):
        return ["bin", value.hex()]
    if isinstance(value, list):
        return ["array", [tag(v) for v in value]]
    if isinstance(value, dict):
        return ["map", [[tag(k), tag(v)] for k, v in value.items()]]
    raise TypeError(f"no tagged form for {type(value).__name__}")


def to_json(vectors: dict) -> str:
    """The text of a vectors file: one layout for all of them, so regenerating gives byte-identical files."""
    return json.dumps(vectors, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str], generator: str, doc: str, output: Path, render: Callable[[], str]) -> int:
    """A generator's command line: write ``render()`` to ``output``, or with --check exit 1 if it differs.

    ``generator`` is the script's ``__file__``, named in the message that says how to refresh a stale file.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the file on disk")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not output.exists() or output.read_text(encoding="utf-8") != text:
            script = Path(generator).resolve().relative_to(ROOT)
            print(f"{output} is stale: run python {script}", file=sys.stderr)
            return 1
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0
