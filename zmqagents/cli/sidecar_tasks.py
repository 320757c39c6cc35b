"""``task``, ``subscribe``, ``publish``, ``peers``, ``find`` and ``dht`` through a running sidecar's local API
(``protocols/local-api.md`` §4.4-4.8) instead of a node of the command's own.

Same output lines, same exit statuses as with a node of its own: the sidecar's error codes map onto
them (``not_found`` 3, ``unreachable`` 8, ``timeout`` 124, the rest 1). What differs is who signs:
publications and DHT records are the sidecar node's (its key), and providers and the mesh are what
the sidecar's node sees.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..identity import format_node_id
from .common import StdoutClosed, emit, jsonable, parse_body, run_main
from .exits import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE
from .lines import BAD, stdin_values, terminal_hint
from .taskrun import TaskRun, aiter_items

CODE_EXIT = {"not_found": EXIT_NOT_FOUND, "unreachable": EXIT_UNREACHABLE, "unknown_peer": EXIT_UNREACHABLE,
             "timeout": EXIT_TIMEOUT, "bad_request": EXIT_USAGE}
SLACK = 5.0  # s the command waits for the sidecar beyond the operation's own deadline


def _error_of(env) -> tuple[str, str]:
    detail = env.body if isinstance(env.body, dict) else {}
    return str(detail.get("code", env.type)), str(detail.get("error", env.type))


def _fail(env) -> int:
    """An ``error`` answer on stderr; the exit status its code means."""
    code, text = _error_of(env)
    click.echo(f"error: {text}" + (" (unreachable)" if code == "unreachable" else ""), err=True)
    return CODE_EXIT.get(code, EXIT_FAILED)


async def _session(path: Path, work) -> int:
    from ..sidecar.localclient import LocalClient

    client = LocalClient(path)
    try:
        return await work(client)
    except asyncio.TimeoutError:
        click.echo(f"error: no answer from the sidecar at {path}", err=True)
        return EXIT_TIMEOUT
    finally:
        await client.close()


def run_sidecar(path: Path, work) -> None:
    """Run ``work(client)`` against the sidecar at ``path`` under the rules of every command; exit."""
    sys.exit(run_main(_session(path, work)))


# -- task --------------------------------------------------------------------------------------------


class SidecarTaskRun(TaskRun):
    """`zmqagents task` whose tasks the sidecar runs: one ``submit`` per line, progress and result pushed."""

    def __init__(self, client, capability: str, opts: dict):
        self.client = client
        self.direct = False
        self._lines_init(capability, opts)
        self._streams: dict[int, Any] = {}  # line -> its submit stream, while it runs
        self._cancels: list[asyncio.Future] = []  # cancels sent for lines cut short, awaited before exit

    async def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    async def cancel_all(self) -> None:
        """After a signal: ask the sidecar to cancel each unfinished task (it tells their providers)."""
        calls = [self.client.call("cancel", {"reason": "the caller was interrupted"}, re=stream.id, timeout=2.0)
                 for stream in self._streams.values()]
        await asyncio.gather(*calls, *self._cancels, return_exceptions=True)

    async def run(self, body: str | None) -> int:
        self._run_task = asyncio.current_task()
        if body is not None:
            await self._pipeline(aiter_items([(1, parse_body(body))]))
        else:
            terminal_hint()
            await self._pipeline(stdin_values())
        return self._exit_code()

    def _submit_body(self, value: Any) -> dict:
        o = self.opts
        body: dict[str, Any] = {"capability": self.capability, "input": value, "idempotent": o["idempotent"],
                                "priority": o["priority"], "stream": o["stream"], "validate": o["validate"]}
        for name, seconds in (("timeout_ms", o["timeout"]), ("idle_timeout_ms", o["idle_timeout"])):
            if seconds is not None:
                body[name] = max(1, int(seconds * 1000))
        return body

    async def _one(self, number: int, value: Any) -> dict:
        self.total += 1
        if value is BAD:
            self.counts["invalid"] += 1
            return {"line": number, "state": "invalid", "error": {"code": "bad-input", "msg": "not a JSON value"}}
        try:
            stream = await self.client.stream("submit", self._submit_body(value))
        except Exception as exc:  # a value the envelope cannot carry
            self.counts["invalid"] += 1
            click.echo(f"line {number}: {exc}", err=True)
            return {"line": number, "state": "invalid", "error": {"code": "bad-input", "msg": str(exc)}}
        self._streams[number] = stream
        try:
            return await self._follow(number, stream)
        except asyncio.CancelledError:
            if number in self.task_of:  # tell the sidecar, which tells the provider
                self._cancels.append(asyncio.ensure_future(self.client.call(
                    "cancel", {"reason": "the caller was interrupted"}, re=stream.id, timeout=2.0)))
            raise
        finally:
            self._streams.pop(number, None)
            stream.close()

    async def _follow(self, number: int, stream) -> dict:
        first = await stream.next()
        if first.type == "error":
            return self._refused(number, *_error_of(first))
        task_id = first.body.get("task") if isinstance(first.body, dict) else None
        self.task_of[number] = task_id
        self.inflight[task_id] = number
        try:
            while True:
                env = await stream.next()
                if env.type == "progress" and isinstance(env.body, dict):
                    if self.opts["stream"]:
                        self._progress(number, task_id, env.body)
                elif env.type == "done" and isinstance(env.body, dict):
                    break
        finally:
            self.inflight.pop(task_id, None)
        self.task_of.pop(number, None)
        res = env.body
        self.record(res.get("state"), res.get("error"))
        out = {"line": number, "task": _hex(res.get("task")), "state": res.get("state")}
        if res.get("state") == "completed":
            out["output"] = res.get("output")
        else:
            out["error"] = res.get("error")
            if res.get("maybe_ran"):
                out["maybe_ran"] = True
        out["provider"] = _hex(res.get("provider"))
        out["attempts"] = res.get("attempts")
        out["ms"] = res.get("ms")
        if res.get("lost_updates"):
            out["lost_updates"] = res["lost_updates"]
        return out

    def _progress(self, number: int, task_id: bytes, body: dict) -> None:
        try:
            self._print({"line": number, "task": _hex(task_id), "seq": body.get("seq"), "progress": body.get("data")},
                        bar=False)
        except StdoutClosed:
            if not self.stdout_closed and self._run_task is not None:
                self.stdout_closed = True
                self._run_task.cancel()

    def _refused(self, number: int, code: str, text: str) -> dict:
        """A line the sidecar would not start: its result line, counted as the direct run counts it."""
        if code == "invalid":
            self.counts["invalid"] += 1
            click.echo(f"line {number}: {text}", err=True)
            return {"line": number, "state": "invalid", "error": {"code": "bad-input", "msg": text}}
        if code == "not_found":
            self.counts["no_provider"] += 1
            return {"line": number, "state": "failed", "error": {"code": "no-provider", "msg": text}}
        if code == "unreachable":
            self.counts["unreachable"] += 1
            return {"line": number, "state": "failed", "error": {"code": "unreachable", "msg": text}}
        self.counts["failed"] += 1
        return {"line": number, "state": "failed", "error": {"code": code, "msg": text}}


def task_via_sidecar(path: Path, capability: str, body: str | None, opts: dict) -> None:
    async def work(client) -> int:
        run_ = SidecarTaskRun(client, capability, opts)
        try:
            return await run_.run(body)
        except (asyncio.CancelledError, StdoutClosed):
            await run_.cancel_all()
            if run_.stdout_closed:
                raise StdoutClosed() from None
            raise
        finally:
            await run_.close()

    run_sidecar(path, work)


# -- publish / subscribe -----------------------------------------------------------------------------


def publish_via_sidecar(path: Path, topic: str, body: str | None) -> None:
    async def work(client) -> int:
        async def one(value: Any) -> bool:
            answer = await client.call("publish", value, topic=topic)
            if answer.type == "error":
                _fail(answer)
                return False
            return True

        if body is not None:
            return EXIT_OK if await one(parse_body(body)) else EXIT_FAILED
        bad = 0
        async for _, value in stdin_values():
            if value is BAD or not await one(value):
                bad += 1
        return EXIT_FAILED if bad else EXIT_OK

    run_sidecar(path, work)


def subscribe_via_sidecar(path: Path, topic: str, count: int | None, timeout: float | None) -> None:
    async def work(client) -> int:
        stream = await client.stream("subscribe", {"topic": topic})
        try:
            first = await stream.next(timeout=SLACK)
            if first.type == "error":
                return _fail(first)
            seen = 0
            deadline = None if timeout is None else time.monotonic() + timeout
            while count is None or seen < count:
                try:
                    env = await stream.next(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    click.echo(f"error: no publication for {timeout:g} s", err=True)
                    return EXIT_TIMEOUT
                if env.type != "pub" or not isinstance(env.body, dict):
                    continue  # `ping`: the sidecar checking that we are still here
                seen += 1
                if timeout is not None:
                    deadline = time.monotonic() + timeout
                pub = env.body
                origin = pub.get("origin") if isinstance(pub.get("origin"), bytes) else b""
                emit({"topic": pub.get("topic"), "origin": origin.hex(), "seq": pub.get("seq"),
                      "from": origin.hex()[:12], "body": pub.get("body")})
            if stream.dropped:
                click.echo(f"warning: {stream.dropped} publication(s) dropped: this command read too slowly", err=True)
            return EXIT_OK
        finally:
            stream.close()
            try:
                await client.call("unsubscribe", re=stream.id, timeout=1.0)
            except Exception:  # the sidecar finds a subscriber gone by itself (its next push or ping)
                pass

    run_sidecar(path, work)


# -- peers, find, dht --------------------------------------------------------------------------------


def peers_via_sidecar(path: Path, to: str | None, timeout: float, show) -> None:
    async def work(client) -> int:
        answer = await client.call("peers", to=to, ttl_ms=max(1, int(timeout * 1000)), timeout=timeout + SLACK)
        if answer.type == "error":
            return _fail(answer)
        show(answer.body)
        return EXIT_OK

    run_sidecar(path, work)


def find_via_sidecar(path: Path, capability: str, timeout: float, show) -> None:
    async def work(client) -> int:
        answer = await client.call("find", {"name": capability, "timeout_ms": max(1, int(timeout * 1000))},
                                   timeout=timeout + SLACK)
        if answer.type == "error":
            return _fail(answer)
        if not answer.body:
            click.echo(f"error: no node provides {capability!r}", err=True)
            return EXIT_NOT_FOUND
        show(answer.body)
        return EXIT_OK

    run_sidecar(path, work)


def dht_get_via_sidecar(path: Path, key_text: str, timeout: float, as_json: bool) -> None:
    from ..dht import key_for

    async def work(client) -> int:
        answer = await client.call("dht_get", {"key": key_text, "timeout_ms": max(1, int(timeout * 1000))},
                                   timeout=timeout + SLACK)
        if answer.type == "error":
            return _fail(answer)
        record = answer.body if isinstance(answer.body, dict) else {}
        if not record.get("found"):
            click.echo(f"error: no node holds a record for {key_text!r}", err=True)
            return EXIT_NOT_FOUND
        if as_json:
            emit({"key": key_for(key_text).hex(), "value": record.get("value"),
                  "publisher": format_node_id(record["publisher"]), "seq": record.get("seq"),
                  "expires": record.get("expires")})
        else:
            sys.stdout.write(json.dumps(jsonable(record.get("value")), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        return EXIT_OK

    run_sidecar(path, work)


def dht_put_via_sidecar(path: Path, key_text: str, value: Any, ttl: float, timeout: float) -> None:
    from ..dht import key_for

    async def work(client) -> int:
        answer = await client.call("dht_put", {"key": key_text, "value": value, "ttl_s": ttl,
                                               "timeout_ms": max(1, int(timeout * 1000))}, timeout=timeout + SLACK)
        if answer.type == "error":
            return _fail(answer)
        stored = answer.body
        emit({"key": key_for(key_text).hex(), "stored": stored.get("stored"), "seq": stored.get("seq"),
              "expires": stored.get("expires")})
        return EXIT_OK

    run_sidecar(path, work)


def _hex(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value
