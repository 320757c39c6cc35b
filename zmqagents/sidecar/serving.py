"""Local applications serve the mesh through the sidecar: capabilities (tasks) and plain requests.

The local API (``localapi.py``) reads the clients' frames; this module keeps what they offer and the
work in flight (``protocols/local-api.md`` §5). A client

* offers a capability (``serve``): the sidecar serves it with the task runtime
  (:class:`~zmqagents.agents.runtime.Agents`: DHT provider record, registry entry, input schema
  check, concurrency and queue limits of the capability, deadlines, cancel), and each task that
  starts is pushed to the client as a ``task``; the client streams ``progress`` and ends it with
  ``result`` or ``fail``; a cancel (the caller's, or the deadline) is pushed as ``cancel``;
* or takes the node's plain requests (``handle``): each is pushed as a ``request`` and answered
  with ``result`` or ``fail``; with no such client the node's own handler answers as before.

A serving client holds a lease: it must send something (any operation; ``ping`` does) at least every
``lease_ms``. When the lease runs out, or a push to it fails (its connection is gone), it is
*dropped*: its capabilities are withdrawn (their DHT records are no longer refreshed), and all its
work in flight is rejected with a reason the caller sees. The mesh never waits on a dead application
for longer than a lease.

Everything a client can make this hold is bounded: capabilities per client and in all, the work in
flight (each capability's ``max_concurrency`` and ``queue``, checked by the task core; requests by the
node's ``max_handlers``), the time a request waits for its answer (``REQUEST_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..envelope import Envelope
from ..errors import Error

log = logging.getLogger(__name__)

MAX_CAPABILITIES_PER_CLIENT = 32
MAX_CAPABILITIES = 256  # served through the local API, all clients together
DEFAULT_LEASE_MS = 10_000
MIN_LEASE_MS = 1_000
MAX_LEASE_MS = 300_000
REQUEST_TIMEOUT = 60.0  # s a mesh request waits for a local handler's answer (its requester has its own)


class WorkRejected(Error):
    """A task or request could not be done by the application: ``str()`` is what the caller is told."""


class ServingError(Error):
    """A serving operation is refused; ``code`` is the local API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Work:
    """A task or request pushed to a client, waiting for its answer."""

    id: bytes  # the pushed envelope's id: the client's answers name it in ``re``
    rid: bytes
    kind: str  # "task" or "request"
    future: asyncio.Future
    ctx: Any = None  # tasks: their TaskContext, where progress goes


@dataclass
class _Server:
    """A client that serves: its lease and what it offers."""

    rid: bytes
    lease: float  # seconds
    heard: float  # monotonic time of its last frame
    capabilities: set[str] = field(default_factory=set)
    requests: bool = False
    work: set[bytes] = field(default_factory=set)  # ids of _Work pushed to it


# What the local API gives us to reach a client: push(rid, envelope) -> False if the client is gone.
Push = Callable[[bytes, Envelope], bool]


class LocalServing:
    """What local clients serve, and the work pushed to them."""

    def __init__(self, node, push: Push):
        self.node = node
        self._push_to = push
        self._agents = None  # the task runtime, made on the first serve (it costs a route and a watcher)
        self._servers: dict[bytes, _Server] = {}
        self._owner: dict[str, bytes] = {}  # capability name -> the client serving it
        self._work: dict[bytes, _Work] = {}
        self._fallback = None  # the node's own request handler, used while no client handles requests
        self._request_client: bytes | None = None
        self.stats: dict[str, int] = dict.fromkeys((
            "served", "withdrawn", "tasks_pushed", "requests_pushed", "results", "failures", "progress",
            "cancels_pushed", "unknown_work", "leases_expired", "servers_gone", "work_rejected",
        ), 0)

    # -- registering ----------------------------------------------------------------------------

    def heard(self, rid: bytes) -> None:
        """A frame from ``rid``: its lease runs from now."""
        server = self._servers.get(rid)
        if server is not None:
            server.heard = time.monotonic()

    def _server(self, rid: bytes, lease_ms: Any) -> _Server:
        if lease_ms is None:
            lease_ms = DEFAULT_LEASE_MS
        if type(lease_ms) is not int or not MIN_LEASE_MS <= lease_ms <= MAX_LEASE_MS:
            raise ServingError("bad_request", f"lease_ms must be an integer {MIN_LEASE_MS}..{MAX_LEASE_MS}")
        server = self._servers.get(rid)
        if server is None:
            server = self._servers[rid] = _Server(rid, lease_ms / 1000, time.monotonic())
        else:
            server.lease = lease_ms / 1000
        return server

    async def serve(self, rid: bytes, body: Any) -> dict:
        """``serve``: body ``{"capability": RECORD, "lease_ms": N, "publish": bool}``."""
        if not isinstance(body, dict):
            raise ServingError("bad_request", "serve needs a map body with a 'capability' record")
        # The task layer is imported when a client first serves: a sidecar nobody serves through
        # does not pay for it (schemas, the runtime: ~2 MB of RSS).
        from ..agents.capability import Capability, CapabilityError

        try:
            cap = Capability.from_record(body.get("capability"))
            cap.check_strict()  # a schema keyword the validator would not enforce is refused, not ignored
        except CapabilityError as exc:
            raise ServingError("bad_request", f"capability: {exc}") from None
        owner = self._owner.get(cap.name)
        if owner is not None and owner != rid:
            raise ServingError("conflict", f"another local client serves {cap.name!r}")
        current = self._servers.get(rid)
        mine = len(current.capabilities) if current is not None else 0
        if owner is None and (mine >= MAX_CAPABILITIES_PER_CLIENT or len(self._owner) >= MAX_CAPABILITIES):
            raise ServingError("busy", f"at most {MAX_CAPABILITIES_PER_CLIENT} capabilities per client and "
                               f"{MAX_CAPABILITIES} in all")
        server = self._server(rid, body.get("lease_ms"))
        server.capabilities.add(cap.name)
        self._owner[cap.name] = rid
        agents = self.runtime()
        publish = body.get("publish", True) is not False
        self.stats["served"] += 1
        published = True
        try:
            await agents.serve(cap, self._agent_for(cap.name), publish=publish, timeout=10.0)
        except Exception as exc:  # no peer took the DHT record yet: served anyway, refreshed while we run
            log.info("capability %s served, but not yet published: %s", cap.name, exc)
            published = False
        return {"capability": cap.name, "published": publish and published, "lease_ms": int(server.lease * 1000)}

    def withdraw(self, rid: bytes, body: Any) -> dict:
        """``withdraw``: body ``{"capability": NAME}``; its queued and running tasks fail with a reason."""
        name = body.get("capability") if isinstance(body, dict) else None
        if type(name) is not str or self._owner.get(name) != rid:
            raise ServingError("bad_request", "withdraw needs {'capability': NAME} of a capability this client serves")
        self._withdraw(name, "the application withdrew the capability")
        server = self._servers[rid]
        server.capabilities.discard(name)
        self._forget_if_idle(server)
        return {"capability": name}

    def handle(self, rid: bytes, body: Any) -> dict:
        """``handle``: this client answers the node's plain requests (one client at a time)."""
        body = body if isinstance(body, dict) else {}
        if self._request_client is not None and self._request_client != rid:
            raise ServingError("conflict", "another local client handles this node's requests")
        server = self._server(rid, body.get("lease_ms"))
        server.requests = True
        if self._request_client is None:
            if self.node.request_handler != self._on_request:  # the first time: take over, keep the fallback
                self._fallback = self.node.request_handler
                self.node.on_request(self._on_request)
            self._request_client = rid
        return {"requests": True, "lease_ms": int(server.lease * 1000)}

    def runtime(self):
        """The sidecar's one task runtime (made on first use): what clients serve, and the tasks they submit."""
        if self._agents is None:
            from ..agents.runtime import Agents

            self._agents = Agents(self.node)
        return self._agents

    # -- work pushed to clients -------------------------------------------------------------------

    def _agent_for(self, name: str):
        from ..agents.base import AgentError

        async def agent(value: Any, ctx) -> Any:
            rid = self._owner.get(name)
            if rid is None:
                raise AgentError(f"{name!r} is no longer served here")
            body = {"capability": name, "input": value, "caller": ctx.caller,
                    "timeout_ms": int(ctx.timeout * 1000) if ctx.timeout is not None else 0}
            work = _Work(os.urandom(16), rid, "task", asyncio.get_running_loop().create_future(), ctx)
            try:
                return await self._dispatch(work, "task", body)
            except WorkRejected as exc:
                raise AgentError(str(exc)) from None  # the runtime fails the task with this text
            except asyncio.CancelledError:
                if rid in self._servers:
                    self._push(rid, Envelope(os.urandom(16), self.node.node_id, "cancel",
                                             {"reason": "canceled (by the caller, or its deadline passed)"},
                                             re=work.id))
                self.stats["cancels_pushed"] += 1
                raise
        return agent

    async def _on_request(self, body: Any, message) -> Any:
        rid = self._request_client
        if rid is None:  # the client left between delivery and now
            return await self._fall_back(body, message)
        work = _Work(os.urandom(16), rid, "request", asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(self._dispatch(work, "request", body, src=message.src), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            raise WorkRejected(f"the local application did not answer within {REQUEST_TIMEOUT:g} s") from None

    async def _fall_back(self, body: Any, message) -> Any:
        if self._fallback is None:
            raise WorkRejected("this node serves no requests")
        result = self._fallback(body, message)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def _dispatch(self, work: _Work, typ: str, body: Any, *, src: bytes | None = None) -> Any:
        work_id = work.id
        self._work[work_id] = work
        server = self._servers.get(work.rid)
        try:
            if server is None:
                raise WorkRejected("the local application serving this left")
            server.work.add(work_id)
            env = Envelope(work_id, src or self.node.node_id, typ, body)
            self.stats["tasks_pushed" if typ == "task" else "requests_pushed"] += 1
            if not self._push(work.rid, env):
                raise WorkRejected("the local application serving this is gone")
            return await work.future
        finally:
            self._work.pop(work_id, None)
            if server is not None:
                server.work.discard(work_id)

    def _push(self, rid: bytes, env: Envelope) -> bool:
        if self._push_to(rid, env):
            return True
        self.drop(rid, "its connection is gone")
        return False

    # -- answers from clients --------------------------------------------------------------------

    def answer(self, rid: bytes, op: str, re: bytes | None, body: Any) -> None:
        """``progress``, ``result`` or ``fail`` for the work ``re``."""
        work = self._work.get(re) if re is not None else None
        if work is None or work.rid != rid:
            self.stats["unknown_work"] += 1
            raise ServingError("unknown_work", "no task or request of this client has that id (it ended: done, "
                               "canceled, timed out)")
        if op == "progress":
            if work.ctx is None:
                raise ServingError("bad_request", "progress is for tasks, not requests")
            self.stats["progress"] += 1
            work.ctx.progress(body)
            return
        if work.future.done():
            raise ServingError("unknown_work", "that work already ended")
        if op == "result":
            self.stats["results"] += 1
            work.future.set_result(body)
            return
        self.stats["failures"] += 1
        text = body.get("error") if isinstance(body, dict) else body
        work.future.set_exception(WorkRejected(str(text)[:1000] if text is not None else "the application failed"))

    # -- leases and departures ------------------------------------------------------------------------

    def expire(self) -> None:
        """Drop every serving client whose lease ran out (the local API calls this every second)."""
        now = time.monotonic()
        for server in [s for s in self._servers.values() if now - s.heard > s.lease]:
            self.stats["leases_expired"] += 1
            self.drop(server.rid, f"silent for more than its {server.lease:g} s lease")

    def drop(self, rid: bytes, why: str) -> None:
        """The client is gone: withdraw what it serves and reject its work with the reason."""
        server = self._servers.pop(rid, None)
        if server is None:
            return
        self.stats["servers_gone"] += 1
        log.warning("local client serving %s dropped: %s", ", ".join(sorted(server.capabilities)) or "requests", why)
        for name in list(server.capabilities):
            self._withdraw(name, f"the application serving {name!r} disconnected ({why})")
        if self._request_client == rid:
            self._request_client = None  # _on_request falls back to the node's own handler from now on
        for work_id in list(server.work):
            work = self._work.get(work_id)
            if work is not None and not work.future.done():
                self.stats["work_rejected"] += 1
                work.future.set_exception(WorkRejected(f"the local application disconnected ({why})"))

    def _withdraw(self, name: str, why: str) -> None:
        rid = self._owner.pop(name, None)
        self.stats["withdrawn"] += 1
        if self._agents is not None:
            self._agents.withdraw(name)
        server = self._servers.get(rid) if rid is not None else None
        if server is None:
            return
        for work_id in list(server.work):
            work = self._work.get(work_id)
            if work is not None and work.kind == "task" and not work.future.done() \
                    and work.ctx is not None and work.ctx.capability == name:
                self.stats["work_rejected"] += 1
                work.future.set_exception(WorkRejected(why))

    def _forget_if_idle(self, server: _Server) -> None:
        if not server.capabilities and not server.requests:
            self._servers.pop(server.rid, None)

    # -- the rest -----------------------------------------------------------------------------------

    def status(self) -> dict:
        return {**self.stats, "servers": len(self._servers), "capabilities": sorted(self._owner),
                "work": len(self._work), "requests_client": self._request_client is not None}

    async def close(self) -> None:
        for rid in list(self._servers):
            self.drop(rid, "the sidecar is stopping")
        if self._agents is not None:
            await self._agents.close()
