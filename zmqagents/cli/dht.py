"""``zmqagents dht put|get`` and ``find``: signed records and provider lookups in the mesh's DHT."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import click

from ..identity import Contact, format_node_id
from .common import (
    SIDECAR_HELP, contacts_of, emit, jsonable, make_node, node_options, parse_body, run_main, sidecar_options,
    sidecar_socket,
)
from .context import mesh_option, resolve_mesh
from .exits import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE

DHT_EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    failed: the holders refused the record
  2    usage error (bad flags, arguments, key file, contact, value)
  3    not found: the lookup converged and no node holds it
  8    unreachable: no node named by --mesh (or the context) answered
  124  timed out
"""


def _dht_options(f):
    f = sidecar_options(f)
    f = click.pass_context(f)
    f = click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Seconds the whole command may take (joining included).")(f)
    f = mesh_option(help="Contact (or @FILE) of a mesh node to join through (repeatable; default: "
                         "ZMQAGENTS_MESH or the current context).")(f)
    return node_options(f)


def _mesh(given: tuple[str, ...]) -> list[Contact]:
    """The contacts to join through: --mesh, else the environment's or the current context's."""
    found = resolve_mesh(given)
    if not found:
        raise click.UsageError("say where the mesh is: --mesh CONTACT (or a context, see `zmqagents help context`)")
    return contacts_of(found, hint="--mesh")


async def _dht_session(n, bootstrap: list[Contact], timeout: float, work) -> int:
    """Start a client node, join the mesh through ``bootstrap``, run ``work()`` within ``timeout``."""
    from ..dht import DhtError, DhtTimeout

    deadline = time.monotonic() + timeout
    async with n:
        if not await n.join(bootstrap, timeout=timeout):
            click.echo("error: no mesh node answered (unreachable); check --mesh: is that node running?", err=True)
            return EXIT_UNREACHABLE
        try:
            return await asyncio.wait_for(work(max(0.1, deadline - time.monotonic())), max(0.1, deadline - time.monotonic()))
        except (DhtTimeout, asyncio.TimeoutError):
            click.echo(f"error: no answer within {timeout:g} s", err=True)
            return EXIT_TIMEOUT
        except DhtError as exc:
            click.echo(f"error: {exc}", err=True)
            return EXIT_FAILED


@click.group(epilog=DHT_EXIT_CODES_HELP + "\n" + SIDECAR_HELP)
def dht() -> None:
    """Store and fetch small signed records in the mesh (a distributed hash table).

    \b
    KEY is any text; the DHT key is sha256 of its UTF-8 bytes, so the same
    text names the same record everywhere. A record is signed by the
    publisher's key and lives on the 3 nodes closest to its key until it
    expires; while it lives, the key belongs to that publisher (use the same
    --key to update it). Mesh nodes re-replicate it when holders die.

    \b
      zmqagents dht put site/7 '{"interval": 30}' --ttl 600 --mesh @seed.contact
      zmqagents dht get site/7 --mesh @seed.contact
    """


@dht.command("put", epilog=DHT_EXIT_CODES_HELP + "\n" + SIDECAR_HELP)
@_dht_options
@click.option("--ttl", default=3600.0, show_default=True, type=click.FloatRange(min=1, max=86400),
              help="Seconds the record lives (at most a day).")
@click.argument("key_text", metavar="KEY")
@click.argument("value")
def dht_put(ctx, key, listen, insecure, bootstrap, timeout, socket_path, direct, ttl, key_text, value) -> None:
    """Store VALUE under KEY (JSON if VALUE parses as JSON, else the text).

    Prints {"key": hex, "stored": replicas, "seq": n, "expires": unix_s}.
    This command exits after storing: nobody republishes the record, but
    the nodes holding it keep it, and re-replicate it, until it expires.
    """
    from ..dht import key_for

    body = parse_body(value)
    path = sidecar_socket(ctx, socket_path, direct)
    if path is not None:  # signed by the sidecar's key: --key (a record of your own) makes it direct
        from .sidecar_tasks import dht_put_via_sidecar

        dht_put_via_sidecar(path, key_text, body, ttl, timeout)
    n = make_node(key, listen, [], insecure)

    async def work(left: float) -> int:
        try:
            result = await n.dht.put(key_text, body, ttl=ttl, timeout=left)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            return EXIT_USAGE
        emit({"key": key_for(key_text).hex(), "stored": result.stored, "seq": result.seq, "expires": result.expires})
        return EXIT_OK

    sys.exit(run_main(_dht_session(n, _mesh(bootstrap), timeout, work)))


@dht.command("get", epilog=DHT_EXIT_CODES_HELP + "\n" + SIDECAR_HELP)
@_dht_options
@click.option("--json", "as_json", is_flag=True,
              help='Print {"key", "value", "publisher", "seq", "expires"} instead of the value alone.')
@click.argument("key_text", metavar="KEY")
def dht_get(ctx, key, listen, insecure, bootstrap, timeout, socket_path, direct, as_json, key_text) -> None:
    """Print the value stored under KEY as one JSON line (exit 3 if none).

    The first record found whose signature, key and expiry check out is
    printed; bytes that are not UTF-8 print as {"base64": ...}.
    """
    from ..dht import key_for

    path = sidecar_socket(ctx, socket_path, direct)
    if path is not None:
        from .sidecar_tasks import dht_get_via_sidecar

        dht_get_via_sidecar(path, key_text, timeout, as_json)
    n = make_node(key, listen, [], insecure)

    async def work(left: float) -> int:
        record = await n.dht.get_record(key_text, timeout=left)
        if record is None:
            click.echo(f"error: no node holds a record for {key_text!r}", err=True)
            return EXIT_NOT_FOUND
        if as_json:
            emit({"key": key_for(key_text).hex(), "value": record.value, "publisher": format_node_id(record.publisher),
                   "seq": record.seq, "expires": record.expires})
        else:
            sys.stdout.write(json.dumps(jsonable(record.value), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        return EXIT_OK

    sys.exit(run_main(_dht_session(n, _mesh(bootstrap), timeout, work)))


@click.command(epilog=DHT_EXIT_CODES_HELP + "\n" + SIDECAR_HELP)
@_dht_options
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per provider ({"node_id", "contact", "expires", "meta"}) instead of a table.')
@click.argument("capability")
def find(ctx, key, listen, insecure, bootstrap, timeout, socket_path, direct, as_json, capability) -> None:
    """List the nodes that provide CAPABILITY (a capability or topic name).

    Providers announce themselves in the DHT (Node.provide); the name is
    hashed with sha256 like a `dht` KEY. Exit 3 if nobody provides it.
    Pass a printed contact to `zmqagents request --to CONTACT` to use one.
    """
    def show(rows: list[dict]) -> None:
        now = time.time()
        if as_json:
            for row in rows:
                emit(row)
            return
        click.echo(f"{'NODE':14} {'EXPIRES IN s':>12}  CONTACT")
        for row in rows:
            click.echo(f"{row['node_id'][:12]:14} {row['expires'] - now:>12.0f}  {row['contact']}")

    path = sidecar_socket(ctx, socket_path, direct)
    if path is not None:
        from .sidecar_tasks import find_via_sidecar

        find_via_sidecar(path, capability, timeout, lambda found: show(
            [{**p, "node_id": format_node_id(p["node_id"])} for p in found]))
    n = make_node(key, listen, [], insecure)

    async def work(left: float) -> int:
        found = await n.find_providers(capability, timeout=left)
        if not found:
            click.echo(f"error: no node provides {capability!r}", err=True)
            return EXIT_NOT_FOUND
        show([{"node_id": format_node_id(p.node_id), "contact": str(p.contact), "expires": p.expires, "meta": p.meta}
              for p in found])
        return EXIT_OK

    sys.exit(run_main(_dht_session(n, _mesh(bootstrap), timeout, work)))




COMMANDS = (dht, find)
