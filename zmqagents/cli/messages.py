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
    SEAL_HELP, announce, contacts_of, emit, make_node, node_options, parse_body, run_main, sidecar_options,
    sidecar_socket, sidecar_targets, targets_of,
)
from .exits import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT
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
        deadline = loop.time() + timeout
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
            except SendError as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_FAILED
            except asyncio.TimeoutError:
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
        from ..node import NodeError, RequestTimeout

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
                return {"line": number, "ok": False, "error": f"no reply within {timeout:g} s", "timeout": True}
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
                click.echo(f"error: {result['error']}", err=True)
                return EXIT_TIMEOUT if result.get("timeout") else EXIT_FAILED
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
        return result

    try:
        if body is not None:
            result = await one(targets[0], parse_body(body), 1)
            if result["ok"]:
                emit(result["reply"]) if isinstance(result["reply"], dict) else emit({"reply": result["reply"]})
                return EXIT_OK
            click.echo(f"error: {result['error']}", err=True)
            return EXIT_TIMEOUT if result.get("timeout") else EXIT_FAILED
        return await _request_lines(targets, one, parallel)
    finally:
        await client.close()


async def _request_lines(ids: list, one, parallel: int) -> int:
    """Run stdin lines through ``one(dst, value, number)``, at most ``parallel`` in flight, output in input
    order; destinations round-robin over ``ids``."""
    counts = {"bad": 0, "failed": 0, "timeouts": 0, "lines": 0}

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
            counts["timeouts" if result.get("timeout") else "failed"] += 1
        emit(result)

    def canceled(number: int) -> dict:
        return {"line": number, "ok": False, "state": "canceled", "error": "the command was interrupted"}

    terminal_hint()
    await run_lines(values(), lambda number, item: one(item[0], item[1], number), parallel, ordered=True,
                    show=show, canceled=canceled)
    bad, failed, timeouts = counts["bad"], counts["failed"], counts["timeouts"]
    if bad or failed or timeouts:
        click.echo(f"error: {bad} bad line(s), {failed} failed, {timeouts} timed out, of {counts['lines']} line(s)",
                   err=True)
    if timeouts and not (bad or failed):
        return EXIT_TIMEOUT
    return EXIT_FAILED if (bad or failed or timeouts) else EXIT_OK


@click.command()
@node_options
@click.option("--to", "to", required=True, help="Contact of the node to ask.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per contact instead of a table.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the answer.")
def peers(key, listen, insecure, to, as_json, timeout) -> None:
    """List the contacts in a node's routing table."""
    from ..node import PEERS, NodeError, RequestTimeout

    targets = contacts_of([to])
    n = make_node(key, listen, targets, insecure)

    async def main() -> int:
        async with n:
            try:
                table = await n.request(targets[0].node_id, None, timeout=timeout, type=PEERS)
            except RequestTimeout as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_TIMEOUT
            except NodeError as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_FAILED
        now = time.time()
        if as_json:
            for row in table:
                emit(row)
        else:
            click.echo(f"{'NODE':14} {'STATE':9} {'INC':>4} {'RTT ms':>8} {'SEEN s ago':>10}  ENDPOINT")
            for row in table:
                rtt = "-" if row["rtt_ms"] is None else f"{row['rtt_ms']:.2f}"
                endpoint = row["contact"].split("@", 1)[1]
                click.echo(f"{row['node_id'][:12]:14} {row['state']:9} {row['incarnation']:>4} {rtt:>8} "
                           f"{now - row['last_seen']:>10.1f}  {endpoint}")
        return EXIT_OK

    sys.exit(run_main(main()))


@click.command()
@node_options
@click.option("--bootstrap", multiple=True,
              help="Contact of a node in the mesh (repeatable): publish mesh-wide, to every subscriber of TOPIC.")
@click.option("--to", "to", multiple=True, help="Contact of a neighbour that subscribes (repeatable): one hop only.")
@click.option("--wait", default=5.0, show_default=True, help="With --to: seconds to wait for a subscriber before publishing.")
@click.argument("topic")
@click.argument("body", required=False)
def publish(key, listen, insecure, bootstrap, to, wait, topic, body) -> None:
    """Publish BODY (or each stdin line) on TOPIC.

    \b
    With --bootstrap the publication reaches every node subscribed to TOPIC
    anywhere in the mesh (signed by this node, carried by the mesh's
    broadcast tree; protocols/broadcast.md). The command joins through the
    contact(s), publishes, and lingers briefly so the data leaves.

    \b
    With --to it travels one hop, best effort: the command connects to the
    --to nodes, waits until one of them subscribes to TOPIC (exit 124 if none
    does within --wait) and publishes to the subscribed ones.
    """
    if bool(bootstrap) == bool(to):
        raise click.UsageError("say where to publish: --bootstrap CONTACT (mesh-wide) or --to CONTACT (one hop)")
    if bootstrap:
        n = make_node(key, listen, [], insecure, None, contacts_of(bootstrap, hint="--bootstrap"))
    else:
        n = make_node(key, listen, targets_of(to), insecure)
    n.config.transport.close_linger_ms = 2000

    async def pub(value: Any) -> None:
        if bootstrap:
            await n.publish(topic, value)
        else:
            await n.publish(topic, value, one_hop=True)

    async def main() -> int:
        async with n:
            if not bootstrap and not await n.wait_for_subscriber(topic, wait):
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


@click.command()
@node_options
@click.option("--bootstrap", multiple=True,
              help="Contact of a node in the mesh (repeatable): hear TOPIC's publications from anywhere in the mesh.")
@click.option("--to", "to", multiple=True, help="Contact of a neighbour to listen to (repeatable): one hop only.")
@click.option("--contact-file", type=click.Path(dir_okay=False), help="Write this node's contact here so publishers can connect.")
@click.option("--count", type=click.IntRange(1), help="Exit after this many publications.")
@click.option("--timeout", type=float, help="Exit with 124 if nothing arrives for this many seconds.")
@click.argument("topic", default="")
def subscribe(key, listen, insecure, bootstrap, to, contact_file, count, timeout, topic) -> None:
    """Print publications on TOPIC, one JSON line each.

    \b
    With --bootstrap this node joins the mesh (a member) and prints every
    publication on exactly TOPIC ("" = mesh-wide broadcasts) from any node:
    {"topic", "origin" (node id), "seq" (the origin's sequence number on the
    topic: a jump is a gap), "from" (short id), "body"}.

    \b
    Without it publications travel one hop and match by prefix: the
    publisher must be a neighbour: either name it with --to, or let it
    connect here (`publish --to` this node's contact, printed first as
    {"contact": ...}).
    """
    if bootstrap and to:
        raise click.UsageError("--bootstrap (mesh-wide) and --to (one hop) do not go together")
    n = make_node(key, listen, contacts_of(to), insecure, None, contacts_of(bootstrap, hint="--bootstrap"), member=True)

    async def main() -> int:
        async with n:
            announce(n, contact_file)
            seen = 0
            stream = n.subscribe(topic) if bootstrap else n.subscribe(topic, one_hop=True)
            while count is None or seen < count:
                try:
                    msg = await asyncio.wait_for(stream.__anext__(), timeout)
                except asyncio.TimeoutError:
                    click.echo(f"error: no publication for {timeout:g} s", err=True)
                    return EXIT_TIMEOUT
                except StopAsyncIteration:
                    break
                seen += 1
                if bootstrap:
                    emit({"topic": msg.topic, "origin": msg.src.hex(), "seq": msg.seq, "from": msg.sender,
                          "body": msg.body})
                else:
                    emit({"topic": msg.topic, "from": msg.sender, "body": msg.body})
            await stream.aclose()
        return EXIT_OK

    sys.exit(run_main(main()))



COMMANDS = (send, request, peers, publish, subscribe)
