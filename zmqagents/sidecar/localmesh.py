"""Local API operations that use the mesh on a client's behalf (``protocols/local-api.md`` §4.6-4.8):
``subscribe``/``unsubscribe`` (publications on a topic, streamed to the client), ``submit``/``cancel``
(run a task on a capability somewhere in the mesh, its progress streamed), ``find`` (providers of a
name), ``dht_get``/``dht_put`` and ``peers`` of another node.

Why the sidecar does this and not each command: a command that starts its own node gets a new
identity and joins the mesh again (seconds); through the sidecar's node, which is already a member
with a warm routing table, the same work costs one local round trip more than the work itself.

``localapi.py`` reads the frames and hands these operations here. Answers and pushes go back through
the two callables it passes: ``answer(rid, t, re, body)`` (a reply; kept in order, held while the
client's queue is full) and ``push(rid, t, re, body) -> str`` (the same, saying "sent", "held",
"refused" or "gone"); ``held(rid)`` says whether frames still wait for room in a client's queue.
Everything a client can make this hold is bounded: subscriptions per client and in all, operations
in flight, and publications waiting for a slow reader (the node's subscription queue, which drops
its oldest and counts them, ``broadcast_dropped``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..envelope import Envelope
from ..errors import Error
from ..identity import Contact, IdentityError, parse_node_id

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS_PER_CLIENT = 64
MAX_SUBSCRIPTIONS = 1024  # all clients together
MAX_INFLIGHT = 1024  # submit, find, dht_get, dht_put, peers-of operations running at once
MAX_TIMEOUT_MS = 3_600_000
DEFAULT_TIMEOUT_MS = 30_000  # find, dht_get, dht_put, peers: the whole operation
KEEPALIVE = 10.0  # s: a subscriber that was pushed nothing for this long gets a `ping` push, which finds it gone
HELD_WAIT_MIN = 0.0002  # s: the first wait for a subscriber's held frames to drain, doubling...
HELD_WAIT_MAX = 0.005  # ... up to this
OPS = ("subscribe", "unsubscribe", "submit", "cancel", "find", "dht_get", "dht_put")


class MeshOpError(Error):
    """An operation is refused before it starts; ``code`` is the local API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Subscription:
    id: bytes  # the subscribe envelope's id: pushes name it in `re`
    rid: bytes
    topic: str
    pushed_at: float  # monotonic time of the last push to the client
    task: asyncio.Task | None = None
    delivered: int = 0


@dataclass
class _Submitted:
    id: bytes  # the submit envelope's id
    rid: bytes
    task_id: bytes | None = None
    runner: asyncio.Task | None = None
    tasks: set = field(default_factory=set)


class LocalMesh:
    """The mesh operations of the local API: see the module docstring."""

    def __init__(self, node: "Node", runtime: Callable[[], Any], answer: Callable[[bytes, str, bytes | None, Any], None],
                 push: Callable[[bytes, str, bytes | None, Any], str], held: Callable[[bytes], bool]):
        self.node = node
        self._runtime = runtime  # the sidecar's one task runtime (Agents), shared with what clients serve
        self._answer = answer
        self._push = push
        self._held = held
        self._subs: dict[bytes, _Subscription] = {}  # subscribe id -> subscription
        self._submitted: dict[bytes, _Submitted] = {}  # submit id -> task
        self._ops: set[asyncio.Task] = set()
        self.stats: dict[str, int] = dict.fromkeys((
            "subscribes", "publications_pushed", "publications_refused", "subscribers_gone", "submits",
            "tasks_done", "cancels", "finds", "dht_gets", "dht_puts", "peers_of",
        ), 0)

    # -- dispatch -----------------------------------------------------------------------------------

    def operation(self, rid: bytes, env: Envelope) -> None:
        """Start ``env`` (one of OPS); MeshOpError if it is refused before it starts."""
        op = env.type
        if op == "subscribe":
            self._subscribe(rid, env)
        elif op == "unsubscribe":
            self._unsubscribe(rid, env)
        elif op == "cancel":
            self._cancel(rid, env)
        else:
            if len(self._ops) >= MAX_INFLIGHT:
                raise MeshOpError("busy", f"{MAX_INFLIGHT} mesh operations are already in flight; retry later")
            body = env.body if isinstance(env.body, dict) else {}
            if op == "submit":
                self._submit(rid, env, body)
                return
            timeout = _timeout(body)  # the body is checked now, so a bad one is refused (and counted) at once
            if op == "find":
                work = self._find(_name(body), timeout)
            elif op == "dht_get":
                work = self._dht_get(_key(body), timeout)
            else:
                work = self._dht_put(_key(body), _value(body), _ttl(body), timeout)
            self._start(self._guarded(rid, env, work, timeout))

    def peers_of(self, rid: bytes, env: Envelope, to: str) -> None:
        """``peers`` with ``to``: the routing table of that node, asked over the mesh."""
        if len(self._ops) >= MAX_INFLIGHT:
            raise MeshOpError("busy", f"{MAX_INFLIGHT} mesh operations are already in flight; retry later")
        peer = _peer(to)
        timeout = (env.ttl or DEFAULT_TIMEOUT_MS) / 1000
        self.stats["peers_of"] += 1

        async def run() -> tuple[str, Any]:
            from ..node import PEERS

            return "peers", await self.node.request(peer, None, timeout=timeout, type=PEERS)

        self._start(self._guarded(rid, env, run(), timeout))

    def _start(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._ops.add(task)
        task.add_done_callback(self._ops.discard)
        return task

    async def _guarded(self, rid: bytes, env: Envelope, work, timeout: float) -> None:
        """Run ``work`` (answering (t, body)) within ``timeout``; map what fails to an error code."""
        from ..dht import DhtError
        from ..node import NodeError, PeerUnreachable, RemoteError, RequestTimeout, UnknownPeer

        try:
            typ, body = await asyncio.wait_for(work, timeout)
        except (asyncio.TimeoutError, RequestTimeout, TimeoutError):
            self._error(rid, env.id, "timeout", f"no answer within {timeout:g} s")
        except MeshOpError as exc:
            self._error(rid, env.id, exc.code, str(exc))
        except ValueError as exc:  # a value the DHT cannot store
            self._error(rid, env.id, "bad_request", str(exc))
        except RemoteError as exc:
            self._error(rid, env.id, "remote", str(exc))
        except UnknownPeer as exc:
            self._error(rid, env.id, "unknown_peer", str(exc))
        except (PeerUnreachable, NodeError) as exc:
            self._error(rid, env.id, "unreachable", str(exc))
        except DhtError as exc:
            self._error(rid, env.id, "unreachable" if not self.node.peers() else "failed", str(exc))
        else:
            self._answer(rid, typ, env.id, body)

    def _error(self, rid: bytes, re: bytes | None, code: str, message: str) -> None:
        """An operation that started and failed: answered, and counted by code (``failed_CODE``)."""
        key = "failed_" + code
        self.stats[key] = self.stats.get(key, 0) + 1
        self._answer(rid, "error", re, {"code": code, "error": message})

    def _alone(self) -> None:
        """A lookup can only fail for want of peers when there are none: say so as `unreachable`."""
        if not self.node.peers():
            raise MeshOpError("unreachable", "the sidecar's node knows no other node (is it in a mesh?)")

    # -- find and the DHT ---------------------------------------------------------------------------

    async def _find(self, name: str, timeout: float) -> tuple[str, Any]:
        self.stats["finds"] += 1
        self._alone()
        found = await self.node.find_providers(name, timeout=timeout)
        return "ok", [{"node_id": p.node_id, "contact": str(p.contact), "expires": p.expires, "meta": p.meta}
                      for p in found]

    async def _dht_get(self, key: str | bytes, timeout: float) -> tuple[str, Any]:
        self.stats["dht_gets"] += 1
        self._alone()
        record = await self.node.dht.get_record(key, timeout=timeout)
        if record is None:
            return "ok", {"found": False}
        return "ok", {"found": True, "value": record.value, "publisher": record.publisher, "seq": record.seq,
                      "expires": record.expires}

    async def _dht_put(self, key: str | bytes, value: Any, ttl: float | None, timeout: float) -> tuple[str, Any]:
        self.stats["dht_puts"] += 1
        self._alone()
        result = await self.node.dht.put(key, value, ttl=ttl, timeout=timeout)
        return "ok", {"stored": result.stored, "seq": result.seq, "expires": result.expires}

    # -- subscriptions --------------------------------------------------------------------------------

    def _subscribe(self, rid: bytes, env: Envelope) -> None:
        body = env.body if isinstance(env.body, dict) else None
        topic = body.get("topic") if body is not None else None
        if type(topic) is not str or len(topic.encode()) > 255:
            raise MeshOpError("bad_request", "subscribe needs {\"topic\": TEXT} (at most 255 bytes; \"\" is the "
                              "mesh-wide broadcast)")
        mine = sum(1 for s in self._subs.values() if s.rid == rid)
        if mine >= MAX_SUBSCRIPTIONS_PER_CLIENT or len(self._subs) >= MAX_SUBSCRIPTIONS:
            raise MeshOpError("busy", f"subscriptions are bounded: {MAX_SUBSCRIPTIONS_PER_CLIENT} per client, "
                              f"{MAX_SUBSCRIPTIONS} in all")
        sub = _Subscription(env.id, rid, topic, time.monotonic())
        stream = self.node.subscribe(topic)  # subscribed from now on: nothing published after the answer is missed
        self._subs[env.id] = sub
        self.stats["subscribes"] += 1
        self._answer(rid, "ok", env.id, {"topic": topic})
        sub.task = asyncio.get_running_loop().create_task(self._forward(sub, stream))

    async def _forward(self, sub: _Subscription, stream) -> None:
        """Push each publication to the subscriber; while its queue is full, wait (the node's subscription
        queue holds what arrives meanwhile, bounded, dropping its oldest); end when it is gone."""
        try:
            async for msg in stream:
                result = self._push(sub.rid, "pub", sub.id, {"topic": msg.topic.decode("utf-8", "replace"),
                                                              "origin": msg.src, "seq": msg.seq, "body": msg.body})
                sub.pushed_at = time.monotonic()
                if result == "gone":
                    self.stats["subscribers_gone"] += 1
                    return
                if result == "refused":  # over the held replies' bounds: the client is not reading
                    self.stats["publications_refused"] += 1
                    continue
                self.stats["publications_pushed"] += 1
                sub.delivered += 1
                wait = HELD_WAIT_MIN
                while self._held(sub.rid):
                    await asyncio.sleep(wait)
                    wait = min(HELD_WAIT_MAX, 2 * wait)
        finally:
            self._subs.pop(sub.id, None)
            await stream.aclose()

    def _unsubscribe(self, rid: bytes, env: Envelope) -> None:
        sub = self._subs.get(env.re) if env.re is not None else None
        if sub is None or sub.rid != rid:
            raise MeshOpError("bad_request", "unsubscribe: 're' must be the id of one of your subscriptions")
        self._end(sub)
        self._answer(rid, "ok", env.id, {"topic": sub.topic, "delivered": sub.delivered})

    def _end(self, sub: _Subscription) -> None:
        self._subs.pop(sub.id, None)
        if sub.task is not None:
            sub.task.cancel()

    def check(self) -> None:
        """Called every second: a subscriber pushed nothing for KEEPALIVE s is pinged, so one that left
        frees its subscriptions even on a quiet topic."""
        now = time.monotonic()
        for sub in list(self._subs.values()):
            if now - sub.pushed_at >= KEEPALIVE:
                sub.pushed_at = now
                if self._push(sub.rid, "ping", sub.id, None) == "gone":
                    self.stats["subscribers_gone"] += 1
                    self._end(sub)

    # -- tasks -------------------------------------------------------------------------------------

    def _submit(self, rid: bytes, env: Envelope, body: dict) -> None:
        from ..core.tasks import TaskSpec

        spec = _task_spec(body, TaskSpec)
        self.stats["submits"] += 1
        item = self._submitted[env.id] = _Submitted(env.id, rid)
        item.runner = self._start(self._run_task(item, spec, body.get("validate", True) is not False))

    async def _run_task(self, item: _Submitted, spec, validate: bool) -> None:
        """Find providers, submit, answer ``ok`` {"task"}, push each ``progress`` and finally ``done``."""
        from ..agents.capability import CapabilityError
        from ..core.tasks import TaskTooLarge

        agents = self._runtime()
        rid, re = item.rid, item.id
        try:
            try:
                candidates = await agents.candidates(spec.capability)
            except Exception as exc:
                self._error(rid, re, "unreachable", f"the lookup for providers of {spec.capability!r} failed: {exc}")
                return
            if not candidates:
                if not self.node.peers():
                    self._error(rid, re, "unreachable", "the sidecar's node knows no other node (is it in a mesh?)")
                else:
                    self._error(rid, re, "not_found", f"no provider offers {spec.capability!r}")
                return

            def on_progress(p) -> None:
                if self._push(rid, "progress", re, {"seq": p.seq, "data": p.data}) == "gone":
                    agents.cancel(p.task_id, "the local client that asked for it is gone")

            try:
                task_id, done = await agents.submit(spec, candidates=candidates, validate=validate,
                                                    on_progress=on_progress if spec.stream else None)
            except (CapabilityError, TaskTooLarge, ValueError) as exc:
                self._error(rid, re, "invalid", str(exc))
                return
            item.task_id = task_id
            self._answer(rid, "ok", re, {"task": task_id})
            try:
                res = await done
            except asyncio.CancelledError:
                agents.cancel(task_id, "the sidecar is stopping")
                raise
            self.stats["tasks_done"] += 1
            out: dict[str, Any] = {"task": res.task_id, "state": res.state, "provider": res.provider,
                                   "attempts": res.attempts, "ms": round(res.elapsed * 1000, 3)}
            if res.state == "completed":
                out["output"] = res.output
            else:
                out["error"] = res.error
                out["maybe_ran"] = res.maybe_ran
            if res.lost_updates:
                out["lost_updates"] = res.lost_updates
            self._push(rid, "done", re, out)
        finally:
            self._submitted.pop(item.id, None)

    def _cancel(self, rid: bytes, env: Envelope) -> None:
        item = self._submitted.get(env.re) if env.re is not None else None
        if item is None or item.rid != rid:
            raise MeshOpError("unknown_work", "cancel: 're' must be the id of one of your unfinished submits")
        reason = env.body.get("reason") if isinstance(env.body, dict) else None
        reason = reason[:1000] if isinstance(reason, str) else "canceled by the caller"
        self.stats["cancels"] += 1
        if item.task_id is not None:
            self._runtime().cancel(item.task_id, reason)  # its `done` push follows, state canceled
        elif item.runner is not None:
            item.runner.cancel()  # still looking for providers: nothing was sent
            self._error(rid, item.id, "canceled", reason)
        self._answer(rid, "ok", env.id, None)

    # -- the rest -----------------------------------------------------------------------------------

    def status(self) -> dict:
        return {**self.stats, "subscriptions": len(self._subs), "tasks": len(self._submitted),
                "in_flight": len(self._ops), "backlog": self.node.subscription_backlog}

    async def close(self) -> None:
        tasks = [s.task for s in self._subs.values() if s.task is not None] + list(self._ops)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subs.clear()


def heard_within(node: "Node", dst: bytes, seconds: float) -> bool:
    """Whether ``dst`` sent this node anything (an acknowledgement, a hello, any envelope) in the last
    ``seconds``: a request that timed out to a peer that said nothing at all went to one that is down or
    cut off (``unreachable``); one that was heard from is only slow (``timeout``)."""
    ago = node.delivery.stream_state(dst, node.now()).get("heard_s_ago")
    return ago is not None and ago <= seconds


def _timeout(body: dict) -> float:
    ms = body.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if type(ms) is not int or not 1 <= ms <= MAX_TIMEOUT_MS:
        raise MeshOpError("bad_request", f"\"timeout_ms\" must be an integer 1..{MAX_TIMEOUT_MS}")
    return ms / 1000


def _name(body: dict) -> str:
    name = body.get("name")
    if type(name) is not str or not name or len(name) > 255:
        raise MeshOpError("bad_request", "find needs {\"name\": NAME} (a capability or topic name)")
    return name


def _value(body: dict) -> Any:
    if "value" not in body:
        raise MeshOpError("bad_request", "dht_put needs a \"value\"")
    return body["value"]


def _ttl(body: dict) -> float | None:
    ttl = body.get("ttl_s")
    if ttl is not None and (type(ttl) not in (int, float) or not 1 <= ttl <= 86400):
        raise MeshOpError("bad_request", "dht_put: \"ttl_s\" must be a number of seconds, 1..86400")
    return ttl


def _key(body: dict) -> str | bytes:
    key = body.get("key")
    if type(key) not in (str, bytes) or not key or len(key) > 1024:
        raise MeshOpError("bad_request", "needs {\"key\": TEXT or bytes} (1..1024 long)")
    return key


def _peer(to: Any) -> bytes | Contact:
    if type(to) is not str:
        raise MeshOpError("bad_request", "field 'to' must be a contact PUBLICKEY@ENDPOINT or a hex node id")
    try:
        return Contact.parse(to) if "@" in to else parse_node_id(to)
    except IdentityError as exc:
        raise MeshOpError("bad_request", f"field 'to': {exc}") from None


def _task_spec(body: dict, spec_type):
    """The TaskSpec a submit body asks for (MeshOpError naming the first bad field)."""
    name = body.get("capability")
    if type(name) is not str or not name or len(name) > 255:
        raise MeshOpError("bad_request", "submit needs {\"capability\": NAME, \"input\": VALUE, ...}")

    def seconds(field_name: str) -> float | None:
        ms = body.get(field_name)
        if ms is None:
            return None
        if type(ms) is not int or not 1 <= ms <= MAX_TIMEOUT_MS:
            raise MeshOpError("bad_request", f"submit: {field_name!r} must be an integer 1..{MAX_TIMEOUT_MS}")
        return ms / 1000

    priority = body.get("priority", 0)
    if type(priority) is not int or not 0 <= priority <= 9:
        raise MeshOpError("bad_request", "submit: 'priority' must be an integer 0..9")
    flags = {}
    for flag, default in (("idempotent", False), ("stream", False), ("validate", True)):
        value = body.get(flag, default)
        if type(value) is not bool:
            raise MeshOpError("bad_request", f"submit: {flag!r} must be a boolean")
        flags[flag] = value
    return spec_type(name, body.get("input"), idempotent=flags["idempotent"], priority=priority,
                     deadline=seconds("timeout_ms"), idle_timeout=seconds("idle_timeout_ms"), stream=flags["stream"])
