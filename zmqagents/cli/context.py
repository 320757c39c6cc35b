"""Mesh contexts: name the mesh once instead of on every command (like NATS contexts).

    zmqagents context add lab --mesh @/srv/seed.contact     # the first one added becomes current
    zmqagents context use lab
    zmqagents context ls
    zmqagents task summarize < docs.jsonl                     # no --mesh needed

A client command (task, find, dht, peers, publish, subscribe, send, request, agent) first uses a
sidecar running on this host, if one listens at the default local API path or --socket /
ZMQAGENTS_SOCKET names one (--direct opts out): it is in its mesh already. Otherwise, and for
commands that take --mesh and were given none, in this order: ZMQAGENTS_MESH (contacts or
@FILEs separated by spaces or commas), the context named by ZMQAGENTS_CONTEXT, the current
context of the contexts file. The file is JSON at $ZMQAGENTS_CONTEXTS, else
$XDG_CONFIG_HOME/zmqagents/contexts.json (~/.config/...), written atomically with mode 0600.
An @FILE given to ``context add`` is stored as an absolute path and read at each use, so a seed
that restarts on a new port (and rewrites its contact file) is still found.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import click

from .common import Aliased, Failure, contacts_of, emit
from .exits import EXIT_USAGE

MESH_ENV = "ZMQAGENTS_MESH"
CONTEXT_ENV = "ZMQAGENTS_CONTEXT"
FILE_ENV = "ZMQAGENTS_CONTEXTS"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def contexts_path() -> Path:
    if os.environ.get(FILE_ENV):
        return Path(os.environ[FILE_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "zmqagents" / "contexts.json"


def load() -> dict:
    """The contexts file as {"current": NAME | None, "contexts": {NAME: {"mesh": [...]}}}."""
    path = contexts_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"current": None, "contexts": {}}
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read the contexts file {path}: {exc}", EXIT_USAGE) from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts"), dict):
        raise Failure(f"{path} is not a contexts file (remove it or fix it)", EXIT_USAGE)
    return data


def save(data: dict) -> None:
    path = contexts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    tmp.replace(path)


def mesh_from_environment() -> tuple[tuple[str, ...], str]:
    """The contacts to use when no --mesh was given, and where they came from ("" if nowhere)."""
    text = os.environ.get(MESH_ENV, "").strip()
    if text:
        return tuple(part for part in re.split(r"[\s,]+", text) if part), MESH_ENV
    data = load()
    name = os.environ.get(CONTEXT_ENV) or data.get("current")
    if not name:
        return (), ""
    context = data["contexts"].get(name)
    if context is None:
        where = CONTEXT_ENV if os.environ.get(CONTEXT_ENV) else "the current context"
        raise Failure(f"no context named {name!r} ({where}); `zmqagents context ls` lists them", EXIT_USAGE)
    return tuple(context.get("mesh", ())), f"context {name}"


def resolve_mesh(given: tuple[str, ...]) -> tuple[str, ...]:
    """The --mesh contacts, or when none were given the environment's or the current context's."""
    if given:
        return given
    found, source = mesh_from_environment()
    if found:
        logging.getLogger("zmqagents").info("mesh from %s: %s", source, " ".join(found))
    return found


def mesh_option(help: str):
    """--mesh CONTACT (repeatable; the old name --bootstrap still works) into the ``bootstrap`` parameter."""
    return click.option("--mesh", "--bootstrap", "bootstrap", cls=Aliased, multiple=True, metavar="CONTACT", help=help)


def _stored(text: str) -> str:
    """A contact as the file keeps it: @FILE made absolute (and checked now), a contact as given."""
    contacts_of([text], hint="--mesh")  # refuse what would fail at every use
    return "@" + str(Path(text[1:]).resolve()) if text.startswith("@") else text


@click.group("context")
def context_group() -> None:
    """Name the mesh once: commands given no --mesh use ZMQAGENTS_MESH, else the current context.

    See `zmqagents help context`."""


@context_group.command("add")
@click.argument("name")
@click.option("--mesh", "--bootstrap", "mesh", cls=Aliased, multiple=True, required=True, metavar="CONTACT",
              help="Contact (or @FILE) of a node in the mesh (repeatable).")
@click.option("--use", "make_current", is_flag=True, help="Also make it the current context.")
@click.option("--force", is_flag=True, help="Replace a context of that name.")
def context_add(name: str, mesh: tuple[str, ...], make_current: bool, force: bool) -> None:
    """Add context NAME (the first one added also becomes current)."""
    if not NAME.match(name):
        raise click.BadParameter("1-64 letters, digits, '_', '.', '-' (not first)", param_hint="NAME")
    data = load()
    if name in data["contexts"] and not force:
        raise Failure(f"context {name!r} exists; --force replaces it", EXIT_USAGE)
    data["contexts"][name] = {"mesh": [_stored(text) for text in mesh]}
    if make_current or not data.get("current"):
        data["current"] = name
    save(data)
    emit({"context": name, "mesh": data["contexts"][name]["mesh"], "current": data["current"] == name,
          "file": str(contexts_path())})


@context_group.command("use")
@click.argument("name")
def context_use(name: str) -> None:
    """Make NAME the current context."""
    data = load()
    if name not in data["contexts"]:
        raise Failure(f"no context named {name!r}; `zmqagents context ls` lists them", EXIT_USAGE)
    data["current"] = name
    save(data)
    emit({"context": name, "current": True})


@context_group.command("rm")
@click.argument("name")
def context_rm(name: str) -> None:
    """Remove context NAME."""
    data = load()
    if data["contexts"].pop(name, None) is None:
        raise Failure(f"no context named {name!r}", EXIT_USAGE)
    if data.get("current") == name:
        data["current"] = None
    save(data)
    emit({"context": name, "removed": True})


@context_group.command("ls")
def context_ls() -> None:
    """List the contexts, one JSON object each; "current" marks the one in use (ZMQAGENTS_CONTEXT wins)."""
    data = load()
    current = os.environ.get(CONTEXT_ENV) or data.get("current")
    for name in sorted(data["contexts"]):
        emit({"context": name, "mesh": data["contexts"][name].get("mesh", []), "current": name == current})


COMMANDS = (context_group,)
