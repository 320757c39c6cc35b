"""``zmqagents agent`` through a running sidecar: the capability is served by the sidecar's node (its
identity, its place in the mesh, its DHT provider record) and each task is run here, by the same runner
(a shell command or a preset) a node of the agent's own would use (``protocols/local-api.md`` §5).

The sidecar hands over each task as a ``task`` push, checked against the input schema and bounded by
the capability's ``max_concurrency``; this process runs it and answers ``progress``, ``result`` or
``fail``; a ``cancel`` push stops it. A ``ping`` every few seconds keeps the lease: if this process dies,
the sidecar withdraws the capability within the lease and fails its tasks with a reason.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from .common import emit
from .exits import EXIT_FAILED, EXIT_OK

log = logging.getLogger(__name__)

LEASE_MS = 10_000  # the sidecar drops a serving client silent for this long
PING_EVERY = 3.0  # s between pings: three chances per lease


async def serve_via_sidecar(path: Path, cap, runner, contact_file: str | None) -> int:
    """Serve ``cap`` with ``runner`` through the sidecar at ``path`` until cancelled (a signal)."""
    from ..sidecar.localclient import LocalClient

    client = LocalClient(path)
    pushes = client.pushes()
    running: dict[bytes, asyncio.Task] = {}
    pinger: asyncio.Task | None = None
    try:
        answer = await client.call("serve", {"capability": cap.to_record(), "lease_ms": LEASE_MS})
        if answer.type == "error":
            detail = answer.body if isinstance(answer.body, dict) else {}
            click.echo(f"error: the sidecar at {path} refused to serve {cap.name!r} ({detail.get('code')}): "
                       f"{detail.get('error')}", err=True)
            return EXIT_FAILED
        if not answer.body.get("published"):
            click.echo("warning: provider record not stored yet; the sidecar retries while it runs", err=True)
        status = (await client.call("status")).body
        if contact_file:
            tmp = Path(contact_file + ".tmp")
            tmp.write_text(status["contact"] + "\n")
            tmp.replace(contact_file)
        emit({"contact": status["contact"], "node_id": status["node_id"], "sidecar": str(path)})
        pinger = asyncio.ensure_future(_ping(client))
        while True:
            env = await pushes.next()
            if env.type == "task" and isinstance(env.body, dict):
                task = running[env.id] = asyncio.ensure_future(_run(client, cap.name, runner, env))
                task.add_done_callback(lambda _, key=env.id: running.pop(key, None))
            elif env.type == "cancel" and env.re in running:
                running[env.re].cancel()
    finally:
        for task in [pinger, *running.values()]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [pinger, *running.values()] if t is not None), return_exceptions=True)
        try:  # its tasks in flight fail at their callers with the reason, at once rather than at the lease
            await client.call("withdraw", {"capability": cap.name}, timeout=2.0)
        except Exception:
            pass
        await client.close()
    return EXIT_OK


async def _ping(client) -> None:
    while True:
        await asyncio.sleep(PING_EVERY)
        try:
            await client.call("ping", timeout=PING_EVERY)
        except asyncio.TimeoutError:
            log.warning("the sidecar did not answer a ping within %g s", PING_EVERY)


async def _run(client, name: str, runner, env) -> None:
    """Run one pushed task and answer it."""
    from ..agents.base import AgentError, TaskContext

    body = env.body
    timeout_ms = body.get("timeout_ms") or 0
    sent: list[asyncio.Future] = []

    def progress(chunk: Any) -> None:
        sent.append(asyncio.ensure_future(client.call("progress", chunk, re=env.id)))

    ctx = TaskContext(task_id=env.id.hex(), capability=name, caller=str(body.get("caller", "")),
                      timeout=timeout_ms / 1000 if timeout_ms else None, progress=progress)
    try:
        output = await runner(body.get("input"), ctx)
    except AgentError as exc:
        op, answer = "fail", {"error": str(exc)[:1000]}
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a runner's bug: the caller hears of it, the agent keeps serving
        op, answer = "fail", {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    else:
        op, answer = "result", output
    await asyncio.gather(*sent, return_exceptions=True)  # progress before the end, in order
    await client.call(op, answer, re=env.id)
