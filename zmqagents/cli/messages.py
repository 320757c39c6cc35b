"""Client commands that talk to named nodes: ``send``, ``request``, ``peers``, ``publish`` and
``subscribe`` (which stays a member until it has what it waited for). ``send`` and ``request`` go
through a running sidecar when there is one."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click

from .common import (
    SEAL_HELP, SIDECAR_HELP, announce, contacts_of, emit, make_node, node_options, parse_body, run_main,
    sidecar_options, sidecar_socket, sidecar_targets, targets_of,
)
from .context import mesh_option, resolve_mesh
from .exits import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE
from .lines import BAD, run_lines, stdin_values, terminal_hint


@click.command()
@node_options
@click.option("--to", "to", multiple=True, help="Contact of the receiving node (repeat to spread lines round-robin).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds for every message to be acknowledged, counted from the start for BODY and from "
                   "the end of stdin for lines (the node's hello included).")
@sidecar_options
@click.option("--seal", is_flag=True, help=SEAL_HELP)
@click.argument("body", required=False)
@click.pass_context
def send(ctx, key, listen, insecure, to, timeout, socket_path, direct, seal, body) -> None:
    """Send reliable one-way messages.

    With BODY, send it (JSON if it parses, else text). Without, send each stdin
    line (one JSON value per line; bad lines are reported on stderr and
    skipped). Waits until every message is acknowledged.

    \b
    When a sidecar runs on this host (`zmqagents node --config`, socket at
    its default path or --socket), messages go through it instead: the
    command returns once the sidecar has *accepted* them (written them to its
    durable outbox), and the sidecar delivers them even across restarts and
    while the peer is away. --to may then also be a node id the sidecar knows.
    """
    path = sidecar_socket(ctx, socket_path, direct)
    if path is not None and seal:
        raise click.UsageError("--seal applies to this command's own node, not to a sidecar: drop --socket")
    if path is not None:
        sys.exit(run_main(_send_via_sidecar(path, sidecar_targets(to), body)))
    targets = targets_of(to)
    n = make_node(key, listen, targets, insecure, seal=seal)
    n.config.hello_timeout = min(n.config.hello_timeout, timeout)

    async def main() -> int:
        from ..node import SendError

        failed = 0
        sent = 0
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + timeout
        async with n:
            ids = [c.node_id for c in targets]
            if body is not None:
                await n.send(ids[0], parse_body(body))
                sent = 1
            else:
                terminal_hint()
                async for _, value in stdin_values():
                    if value is BAD:
                        failed += 1
                        continue
                    await n.send(ids[sent % len(ids)], value)
                    sent += 1
                deadline = loop.time() + timeout
            try:
                await n.flush(timeout=max(0.001, deadline - loop.time()))
            except SendError as exc:  # delivery gave up: the peer never acknowledged them
                click.echo(f"error: {exc} (unreachable)", err=True)
                return EXIT_UNREACHABLE
            except asyncio.TimeoutError:
                silent = [i for i in ids if not _heard(n, i, loop.time() - began)]
                if silent:
                    click.echo(f"error: {', '.join(i.hex()[:12] for i in silent)} did not answer within {timeout:g} s "
                               "(unreachable)", err=True)
                    return EXIT_UNREACHABLE
                click.echo(f"error: messages not acknowledged within {timeout:g} s", err=True)
                return EXIT_TIMEOUT
        if failed:
            click.echo(f"error: {failed} input line(s) were not valid JSON; {sent} sent", err=True)
        return EXIT_FAILED if failed else EXIT_OK

    sys.exit(run_main(main()))


async def _send_via_sidecar(path: Path, targets: list[str], body: str | None) -> int:
    """Hand messages to the sidecar's outbox; exit 0 once every one is accepted."""
    from ..sidecar.localclient import LocalClient

    client = LocalClient(path)
    slots = asyncio.Semaphore(256)  # sends awaiting the sidecar's answer
    counts = {"bad": 0, "refused": 0, "silent": 0, "sent": 0}

    async def one(value: Any, number: int) -> None:
        try:
            reply = await client.call("send", value, to=targets[counts["sent"] % len(targets)])
        except asyncio.TimeoutError:
            counts["silent"] += 1
            click.echo(f"line {number}: no answer from the sidecar at {path} within 30 s", err=True)
            return
        except Exception as exc:  # a value the envelope cannot carry
            counts["refused"] += 1
            click.echo(f"line {number}: {exc}", err=True)
            return
        finally:
            slots.release()
        if reply.type != "accepted":
            counts["refused"] += 1
            detail = reply.body if isinstance(reply.body, dict) else {}
            click.echo(f"line {number}: refused by the sidecar ({detail.get('code')}): {detail.get('error')}",
                       err=True)

    tasks = []
    try:
        if body is not None:
            await slots.acquire()
            await one(parse_body(body), 1)
        else:
            async for number, value in stdin_values():
                if value is BAD:
                    counts["bad"] += 1
                    continue
                await slots.acquire()
                tasks.append(asyncio.ensure_future(one(value, number)))
                counts["sent"] += 1
            await asyncio.gather(*tasks)
    finally:
        await client.close()
    bad, refused, silent = counts["bad"], counts["refused"], counts["silent"]
    if bad or refused or silent:
        click.echo(f"error: {bad} bad line(s), {refused} refused, {silent} unanswered", err=True)
    if silent and not (bad or refused):
        return EXIT_TIMEOUT
    return EXIT_FAILED if (bad or refused or silent) else EXIT_OK


@click.command()
@node_options
@click.option("--to", "to", multiple=True, help="Contact of the serving node (repeat to spread requests round-robin).")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds each request may take, connecting included.")
@click.option("--parallel", default=16, show_default=True, type=click.IntRange(1, 4096), help="Requests in flight at once.")
@sidecar_options
@click.option("--seal", is_flag=True, help=SEAL_HELP)
@click.argument("body", required=False)
@click.pass_context
def request(ctx, key, listen, insecure, to, timeout, parallel, socket_path, direct, seal, body) -> None:
    """Send requests and print replies, one JSON object per line.

    With BODY, one request (JSON if it parses, else text): prints the reply
    body. Without, each stdin line is a request body; output lines come in
    input order as {"line": N, "ok": true, "reply": ..., "ms": ...} or
    {"line": N, "ok": false, "error": ...}. Invalid lines are reported on
    stderr and skipped; the others still go through. Through a running
    sidecar (see `send --help`) when there is one.

    \b
    --timeout counts from when each request starts, which for the first ones
    is before the node has connected and said hello: nothing waits longer. On
    SIGINT/SIGTERM the
    requests in flight are dropped, each gets {"line": N, "ok": false,
    "state": "canceled", ...}, and the command exits 130/143.
    """
    path = sidecar_socket(ctx, socket_path, direct)
    if path is not None and seal:
        raise click.UsageError("--seal applies to this command's own node, not to a sidecar: drop --socket")
    if path is not None:
        sys.exit(run_main(_request_via_sidecar(path, sidecar_targets(to), timeout, parallel, body)))
    targets = targets_of(to)
    n = make_node(key, listen, targets, insecure, seal=seal)
    n.config.hello_timeout = min(n.config.hello_timeout, timeout)

    async def main() -> int:
        from ..node import NodeError, PeerUnreachable, RequestTimeout

        loop = asyncio.get_running_loop()
        began = loop.time()
        # The node starts (and says hello) while the first lines are read: both count against --timeout.
        starting = asyncio.ensure_future(n.start())

        async def one(dst: bytes, value: Any, number: int, read_at: float) -> dict:
            deadline = read_at + timeout
            start = time.perf_counter()
            try:
                await asyncio.wait_for(asyncio.shield(starting), max(0.0, deadline - loop.time()))
                reply_body = await n.request(dst, value, timeout=max(0.001, deadline - loop.time()))
            except (RequestTimeout, asyncio.TimeoutError):
                if not _heard(n, dst, loop.time() - began):
                    return _unreachable(number, dst, timeout)
                return {"line": number, "ok": False, "error": f"no reply within {timeout:g} s", "timeout": True}
            except PeerUnreachable:
                return _unreachable(number, dst, timeout)
            except NodeError as exc:
                return {"line": number, "ok": False, "error": str(exc)}
            return {"line": number, "ok": True, "reply": reply_body,
                    "ms": round((time.perf_counter() - start) * 1000, 3)}

        try:
            ids = [c.node_id for c in targets]
            if body is not None:
                result = await one(ids[0], parse_body(body), 1, began)
                if result["ok"]:
                    emit({"reply": result["reply"]}) if not isinstance(result["reply"], dict) else emit(result["reply"])
                    return EXIT_OK
                return _single_failure(result)
            status = await _request_lines(ids, lambda dst, value, number: one(dst, value, number, loop.time()),
                                          parallel)
            await starting  # a node that could not start is an error even when stdin was empty
            return status
        finally:
            if not starting.done():
                starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await n.close()

    sys.exit(run_main(main()))


async def _request_via_sidecar(path: Path, targets: list[str], timeout: float, parallel: int,
                               body: str | None) -> int:
    """`request` through the sidecar's local API: same output and exit codes as with a node."""
    from ..sidecar.localclient import LocalClient

    client = LocalClient(path)

    async def one(to: str, value: Any, number: int) -> dict:
        start = time.perf_counter()
        try:
            reply = await client.call("request", value, to=to, ttl_ms=max(1, int(timeout * 1000)),
                                      timeout=timeout + 5)
        except asyncio.TimeoutError:
            return {"line": number, "ok": False, "error": f"no answer from the sidecar at {path}", "timeout": True}
        except Exception as exc:  # a value the envelope cannot carry
            return {"line": number, "ok": False, "error": str(exc)}
        if reply.type == "reply":
            return {"line": number, "ok": True, "reply": reply.body,
                    "ms": round((time.perf_counter() - start) * 1000, 3)}
        detail = reply.body if isinstance(reply.body, dict) else {}
        result = {"line": number, "ok": False, "error": str(detail.get("error", reply.type))}
        if detail.get("code") == "timeout":
            result["timeout"] = True
        elif detail.get("code") in ("unreachable", "unknown_peer"):
            result["unreachable"] = True
        return result

    try:
        if body is not None:
            result = await one(targets[0], parse_body(body), 1)
            if result["ok"]:
                emit(result["reply"]) if isinstance(result["reply"], dict) else emit({"reply": result["reply"]})
                return EXIT_OK
            return _single_failure(result)
        return await _request_lines(targets, one, parallel)
    finally:
        await client.close()


async def _request_lines(ids: list, one, parallel: int) -> int:
    """Run stdin lines through ``one(dst, value, number)``, at most ``parallel`` in flight, output in input
    order; destinations round-robin over ``ids``."""
    counts = {"bad": 0, "failed": 0, "timeouts": 0, "unreachable": 0, "lines": 0}

    async def values():
        sent = 0
        async for number, value in stdin_values():
            counts["lines"] = number
            if value is BAD:
                counts["bad"] += 1
                continue
            yield number, (ids[sent % len(ids)], value)
            sent += 1

    def show(result: dict) -> None:
        if not result["ok"] and result.get("state") != "canceled":
            counts["timeouts" if result.get("timeout") else "unreachable" if result.get("unreachable") else "failed"] += 1
        emit(result)

    def canceled(number: int) -> dict:
        return {"line": number, "ok": False, "state": "canceled", "error": "the command was interrupted"}

    terminal_hint()
    await run_lines(values(), lambda number, item: one(item[0], item[1], number), parallel, ordered=True,
                    show=show, canceled=canceled)
    bad, failed, timeouts, unreachable = counts["bad"], counts["failed"], counts["timeouts"], counts["unreachable"]
    if bad or failed or timeouts or unreachable:
        click.echo(f"error: {bad} bad line(s), {failed} failed, {timeouts} timed out, {unreachable} unreachable, "
                   f"of {counts['lines']} line(s)", err=True)
    if bad or failed:
        return EXIT_FAILED
    if unreachable and not timeouts:
        return EXIT_UNREACHABLE
    return EXIT_TIMEOUT if (timeouts or unreachable) else EXIT_OK


def _heard(n, dst: bytes, seconds: float) -> bool:
    """Whether ``dst`` said anything to this command's node (a hello, an acknowledgement) in ``seconds``."""
    from ..sidecar.localmesh import heard_within

    return dst in n.neighbours() or heard_within(n, dst, seconds)


def _unreachable(number: int, dst: bytes, timeout: float) -> dict:
    return {"line": number, "ok": False, "unreachable": True,
            "error": f"{dst.hex()[:12]} did not answer within {timeout:g} s (unreachable)"}


def _single_failure(result: dict) -> int:
    """The exit status of a single request (BODY) that failed, its error on stderr."""
    click.echo(f"error: {result['error']}", err=True)
    if result.get("timeout"):
        return EXIT_TIMEOUT
    return EXIT_UNREACHABLE if result.get("unreachable") else EXIT_FAILED


def _one_hop_mesh(mesh: tuple[str, ...], to: tuple[str, ...], one_hop: bool) -> tuple[tuple[str, ...], bool]:
    """--mesh and the old --to (hidden: --mesh with --one-hop) as (contacts, one hop?)."""
    if to and mesh:
        raise click.UsageError("--to is the old name of --mesh ... --one-hop: give --mesh only")
    return (to, True) if to else (mesh, one_hop)


def _show_table(table: list, as_json: bool) -> None:
    now = time.time()
    if as_json:
        for row in table:
            emit(row)
        return
    click.echo(f"{'NODE':14} {'STATE':9} {'INC':>4} {'RTT ms':>8} {'SEEN s ago':>10}  ENDPOINT")
    for row in table:
        rtt = "-" if row["rtt_ms"] is None else f"{row['rtt_ms']:.2f}"
        endpoint = row["contact"].split("@", 1)[1]
        click.echo(f"{row['node_id'][:12]:14} {row['state']:9} {row['incarnation']:>4} {rtt:>8} "
                   f"{now - row['last_seen']:>10.1f}  {endpoint}")


@click.command(epilog=SIDECAR_HELP)
@node_options
@mesh_option(help="Contact (or @FILE) of the node whose table to show (default: the sidecar's own table, "
                  "else ZMQAGENTS_MESH or the context's first node).")
@click.option("--to", "to", hidden=True, help="Old name of --mesh.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per contact instead of a table.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds to wait for the answer (connecting included).")
@sidecar_options
@click.pass_context
def peers(ctx, key, listen, insecure, bootstrap, to, as_json, timeout, socket_path, direct) -> None:
    """List the contacts in a node's routing table (with no --mesh, the sidecar's own)."""
    from ..node import PEERS, NodeError, RequestTimeout

    if to and bootstrap:
        raise click.UsageError("--to is the old name of --mesh: give --mesh only")
    named = bootstrap or ((to,) if to else ())
    path = sidecar_socket(ctx, socket_path, direct)
    if path is not None:
        from .sidecar_tasks import peers_via_sidecar

        ask = str(contacts_of(named[:1], hint="--mesh")[0]) if named else None
        peers_via_sidecar(path, ask, timeout, lambda table: _show_table(table, as_json))
    named = resolve_mesh(named)
    if not named:
        raise click.UsageError("say whose table: --mesh CONTACT (or a context, see `zmqagents help context`), "
                               "or run a sidecar on this host")
    targets = contacts_of(named[:1], hint="--mesh")
    n = make_node(key, listen, targets, insecure)
    n.config.hello_timeout = min(n.config.hello_timeout, timeout)

    async def main() -> int:
        async with n:
            try:
                table = await n.request(targets[0].node_id, None, timeout=timeout, type=PEERS)
            except RequestTimeout as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_TIMEOUT
            except NodeError as exc:
                click.echo(f"error: {exc} (unreachable)", err=True)
                return EXIT_UNREACHABLE
        _show_table(table, as_json)
        return EXIT_OK

    sys.exit(run_main(main()))


@click.command(epilog=SIDECAR_HELP + "  (for this command also: --one-hop, --wait)\n")
@node_options
@mesh_option(help="Contact (or @FILE) of a node in the mesh (repeatable; default: ZMQAGENTS_MESH or the context): "
                  "publish mesh-wide, to every subscriber of TOPIC. With --one-hop: the neighbours to publish to.")
@click.option("--one-hop", is_flag=True, help="Publish only to the --mesh nodes that subscribe, one hop, best effort.")
@click.option("--to", "to", multiple=True, hidden=True, help="Old name of --mesh with --one-hop.")
@click.option("--wait", default=5.0, show_default=True, help="With --one-hop: seconds to wait for a subscriber before publishing.")
@sidecar_options
@click.argument("topic")
@click.argument("body", required=False)
@click.pass_context
def publish(ctx, key, listen, insecure, bootstrap, one_hop, to, wait, socket_path, direct, topic, body) -> None:
    """Publish BODY (or each stdin line) on TOPIC.

    \b
    The publication reaches every node subscribed to TOPIC anywhere in the
    mesh (signed by the publishing node, carried by the mesh's broadcast
    tree; protocols/broadcast.md). Without a sidecar the command joins
    through --mesh, publishes, and lingers briefly so the data leaves.

    \b
    With --one-hop it travels one hop, best effort: the command connects to
    the --mesh nodes, waits until one of them subscribes to TOPIC (exit 124
    if none does within --wait) and publishes to the subscribed ones.
    """
    mesh, one_hop = _one_hop_mesh(bootstrap, to, one_hop)
    path = None if one_hop else sidecar_socket(ctx, socket_path, direct, own=("wait",))
    if path is not None:
        from .sidecar_tasks import publish_via_sidecar

        publish_via_sidecar(path, topic, body)
    mesh = mesh if one_hop else resolve_mesh(mesh)
    if not mesh:
        raise click.UsageError("say where to publish: --mesh CONTACT (or a context, see `zmqagents help context`), "
                               "or run a sidecar on this host")
    if one_hop:
        n = make_node(key, listen, contacts_of(mesh, hint="--mesh"), insecure)
    else:
        n = make_node(key, listen, [], insecure, None, contacts_of(mesh, hint="--mesh"))
    n.config.transport.close_linger_ms = 2000

    async def pub(value: Any) -> None:
        await n.publish(topic, value, one_hop=one_hop)

    async def main() -> int:
        async with n:
            if one_hop and not await n.wait_for_subscriber(topic, wait):
                click.echo(f"error: no neighbour subscribed to {topic!r} within {wait:g} s", err=True)
                return EXIT_TIMEOUT
            try:
                if body is not None:
                    await pub(parse_body(body))
                    return EXIT_OK
                bad = 0
                async for _, value in stdin_values():
                    if value is BAD:
                        bad += 1
                    else:
                        await pub(value)
            except ValueError as exc:  # too large for a broadcast, or over this origin's rate
                click.echo(f"error: {exc}", err=True)
                return EXIT_FAILED
            return EXIT_FAILED if bad else EXIT_OK

    sys.exit(run_main(main()))


@click.command(epilog=SIDECAR_HELP + "  (for this command also: --one-hop, --contact-file)\n")
@node_options
@mesh_option(help="Contact (or @FILE) of a node in the mesh (repeatable; default: ZMQAGENTS_MESH or the context): "
                  "hear TOPIC's publications from anywhere in the mesh. With --one-hop: the neighbours to listen to.")
@click.option("--one-hop", is_flag=True, help="Only publications of neighbours (--mesh, or publishers that connect here).")
@click.option("--to", "to", multiple=True, hidden=True, help="Old name of --mesh with --one-hop.")
@click.option("--contact-file", type=click.Path(dir_okay=False), help="Write this node's contact here so publishers can connect.")
@click.option("--count", type=click.IntRange(1), help="Exit after this many publications.")
@click.option("--timeout", type=click.FloatRange(min=0.001), help="Exit with 124 if nothing arrives for this many seconds.")
@sidecar_options
@click.argument("topic", default="")
@click.pass_context
def subscribe(ctx, key, listen, insecure, bootstrap, one_hop, to, contact_file, count, timeout, socket_path, direct,
              topic) -> None:
    """Print publications on TOPIC, one JSON line each.

    \b
    Every publication on exactly TOPIC ("" = mesh-wide broadcasts) from any
    node of the mesh: {"topic", "origin" (node id), "seq" (the origin's
    sequence number on the topic: a jump is a gap), "from" (short id),
    "body"}. Without a sidecar this command's node joins through --mesh (as
    a member) and listens; with no mesh named anywhere it listens one hop.

    \b
    With --one-hop publications travel one hop and match by prefix: the
    publisher must be a neighbour: either name it with --mesh, or let it
    connect here (`publish --one-hop --mesh` this node's contact, printed
    first as {"contact": ...}).
    """
    mesh, one_hop = _one_hop_mesh(bootstrap, to, one_hop)
    path = None if one_hop else sidecar_socket(ctx, socket_path, direct, own=("contact_file",))
    if path is not None:
        from .sidecar_tasks import subscribe_via_sidecar

        subscribe_via_sidecar(path, topic, count, timeout)
    if not one_hop:
        mesh = resolve_mesh(mesh)
        one_hop = not mesh  # no mesh anywhere: listen for neighbours that connect here (as before --mesh)
    neighbours = contacts_of(mesh, hint="--mesh") if one_hop else []
    n = make_node(key, listen, neighbours, insecure, None, [] if one_hop else contacts_of(mesh, hint="--mesh"),
                  member=True)

    async def main() -> int:
        async with n:
            announce(n, contact_file)
            seen = 0
            stream = n.subscribe(topic, one_hop=one_hop)
            while count is None or seen < count:
                try:
                    msg = await asyncio.wait_for(stream.__anext__(), timeout)
                except asyncio.TimeoutError:
                    click.echo(f"error: no publication for {timeout:g} s", err=True)
                    return EXIT_TIMEOUT
                except StopAsyncIteration:
                    break
                seen += 1
                if one_hop:
                    emit({"topic": msg.topic, "from": msg.sender, "body": msg.body})
                else:
                    emit({"topic": msg.topic, "origin": msg.src.hex(), "seq": msg.seq, "from": msg.sender,
                          "body": msg.body})
            await stream.aclose()
        return EXIT_OK

    sys.exit(run_main(main()))


COMMANDS = (send, request, peers, publish, subscribe)
