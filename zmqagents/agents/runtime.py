"""Tasks on a real Node: serve capabilities with agents, and call capabilities across the mesh.

:class:`Agents` drives the two sans-IO task cores (``core/tasks.py``) with a Node: ``task.*``
envelopes reach it through ``Node.route``, what the cores want sent goes out over the node's
reliable delivery, their deadlines are served by the node's one timer on the node's one clock
(``node.now()``, ``node.attach``), and membership deaths and delivery failures become
``provider_gone``/``caller_gone``.

    async with Node(bootstrap=[seed]) as node:
        agents = Agents(node)
        await agents.serve(Capability("upper"), ShellAgent("tr a-z A-Z", stdin="text"))
        done = await agents.request("upper", "hello")      # TaskDone(state="completed", output="HELLO", ...)

An agent may ask its caller mid-task (``answer = await ctx.ask(prompt)``: the task is in
input-required until the answer comes); the caller answers through ``request(..., on_input=...)``,
an ``async (prompt) -> answer``. A caller without one cancels such a task with a reason saying so,
so nothing waits forever for an answer nobody will give.

Providers are found through a :class:`ProviderLookup`. The default, :class:`DhtLookup`, reads the
DHT provider records that ``serve`` publishes (``node.provide``); :class:`DirectLookup` asks a
fixed set of nodes what they offer (``task.describe``), for a caller that knows its providers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Protocol

from ..core import tasks as T
from ..core.delivery import WindowFull
from ..core.tasks import (
    CallerConfig, Candidate, Progress, ProviderConfig, Rerouted, StartTask, StateChanged, StopTask, TaskCaller,
    TaskDone, TaskInput, TaskProvider, TaskSpec,
)
from ..envelope import Envelope
from ..identity import Contact
from . import registry
from .base import Agent, AgentError, TaskContext
from .capability import DESCRIBE, Capability, CapabilityError, describe
from ..errors import Error

if TYPE_CHECKING:
    from ..shell.api import NodeAPI

log = logging.getLogger(__name__)

LOOKUP_TTL = 5.0  # s a provider lookup result is reused: one DHT lookup per capability, not per task
DEAD_MEMORY = 60.0  # s a node reported gone is left out of candidates
DESCRIBE_TIMEOUT = 3.0  # s a provider has to describe its capabilities before the schema check skips it
DESCRIBE_MEMORY = 60.0  # s a description (or a failure to get one) is reused
REGISTRY_SPACING = 1.05  # s between registry entry updates: provider expiries are whole seconds (wait_listed)
# Upper bounds (s) of the run-time histogram of tasks served here: from a shell command's milliseconds
# to an LLM's minutes.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class TaskMetrics:
    """What the tasks this node serves look like now (a read-only view for metrics).

    ``by_state``: tasks admitted and not finished, by state; ``queue_depth``: those waiting for a
    free slot; ``outcomes``: agent runs ended, by outcome (completed, failed, canceled);
    ``duration_counts[i]``: runs that took at most ``DURATION_BUCKETS[i]`` seconds (cumulative, as
    Prometheus histograms count), ``duration_count`` all runs, ``duration_sum`` their seconds.
    """

    by_state: dict[str, int]
    queue_depth: int
    outcomes: dict[str, int]
    duration_counts: tuple[int, ...]
    duration_count: int
    duration_sum: float


@dataclass(frozen=True)
class Provider:
    """A node offering a capability, as a lookup found it."""

    node_id: bytes
    contact: Contact | None = None
    cost: float = 0.0
    max_concurrency: int | None = None


class ProviderLookup(Protocol):
    """Where the caller learns who offers a capability: the one seam between tasks and discovery."""

    async def find(self, capability: str) -> list[Provider]: ...


class DhtLookup:
    """Providers from DHT provider records (``node.find_providers``), cached for ``ttl`` seconds."""

    def __init__(self, node: NodeAPI, *, ttl: float = LOOKUP_TTL, timeout: float = 10.0):
        self.node = node
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, list[Provider]]] = {}
        self._inflight: dict[str, asyncio.Future] = {}

    async def find(self, capability: str) -> list[Provider]:
        hit = self._cache.get(capability)
        if hit is not None and hit[0] > self.node.now():
            return hit[1]
        running = self._inflight.get(capability)
        if running is None:  # one lookup per capability at a time, however many tasks ask
            running = self._inflight[capability] = asyncio.ensure_future(self._find(capability))
            running.add_done_callback(lambda _: self._inflight.pop(capability, None))
        return await asyncio.shield(running)

    async def _find(self, capability: str) -> list[Provider]:
        now = self.node.now()
        found = []
        try:
            infos = await self.node.find_providers(capability, timeout=self.timeout)
        except Exception as exc:
            stale = self._cache.get(capability)
            if stale is None:
                raise
            # The lookup failed (every node it asked is gone, say): the last answer is better than none.
            log.info("provider lookup for %r failed (%s); using the previous answer", capability, exc)
            return stale[1]
        for info in infos:
            meta = info.meta if isinstance(info.meta, dict) else {}
            cost = meta.get("cost", 0.0)
            mc = meta.get("mc")
            found.append(Provider(
                info.node_id, info.contact,
                float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0 else 0.0,
                mc if isinstance(mc, int) and not isinstance(mc, bool) and mc > 0 else None,
            ))
        self._cache[capability] = (now + self.ttl, found)
        if len(self._cache) > 1000:
            self._cache.pop(next(iter(self._cache)))
        return found

    def forget(self, node_id: bytes) -> None:
        for key, (exp, providers) in list(self._cache.items()):
            self._cache[key] = (exp, [p for p in providers if p.node_id != node_id])


class DirectLookup:
    """Providers among a fixed set of nodes, each asked once what it serves (``task.describe``)."""

    def __init__(self, node: NodeAPI, contacts: Iterable[Contact], *, timeout: float = 10.0):
        self.node = node
        self.contacts = list(contacts)
        self.timeout = timeout
        self._served: dict[bytes, list[Capability]] | None = None

    async def find(self, capability: str) -> list[Provider]:
        if self._served is None:
            served = {}
            for contact, caps in zip(self.contacts, await asyncio.gather(
                    *(describe(self.node, c, timeout=self.timeout) for c in self.contacts), return_exceptions=True)):
                if isinstance(caps, BaseException):
                    log.warning("provider %s did not say what it serves: %s", contact, caps)
                    continue
                served[contact.node_id] = caps
            self._served = served
        by_id = {c.node_id: c for c in self.contacts}
        return [Provider(nid, by_id[nid], c.cost_per_call, c.max_concurrency)
                for nid, caps in self._served.items() for c in caps if c.name == capability]

    def forget(self, node_id: bytes) -> None:
        if self._served is not None:
            self._served.pop(node_id, None)


class NoAnswer(Error):
    """Raised by an ``on_input`` callback that will not answer: the task is canceled with ``str()`` as the reason."""


NO_ON_INPUT = "the task asked for input (input-required) and the caller has no way to answer it (no on_input)"

OnInput = Callable[[Any], Awaitable[Any]]


class _Pending:
    """What submit()/request() wait on for one task."""

    __slots__ = ("done", "queue", "on_progress", "on_input")

    def __init__(self, on_progress: Callable[[Progress], None] | None, queue: asyncio.Queue | None,
                 on_input: OnInput | None = None):
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.on_progress = on_progress
        self.queue = queue
        self.on_input = on_input


class Agents:
    """The task layer of one Node: serves capabilities and runs tasks on other nodes."""

    def __init__(self, node: NodeAPI, *, lookup: ProviderLookup | None = None, caller: CallerConfig | None = None,
                 provider: ProviderConfig | None = None, groups: dict[str, Iterable[bytes]] | None = None):
        self.node = node
        self.lookup = lookup or DhtLookup(node)
        rng = random.Random()  # task and attempt ids: unguessable per process, the cores never see a global RNG
        self.caller = TaskCaller(node.node_id, rng, caller)
        self.provider = TaskProvider(node.node_id, rng, provider)
        for name, members in (groups or {}).items():
            self.set_group(name, members)
        if node.transport.fleet is not None:  # a fleet: @group in allow lists also means its certificates
            self.provider.set_group_source(node.certified_groups)
        self._served: dict[str, tuple[Capability, Agent]] = {}
        self._listed: set[str] = set()  # published names, listed in our registry entry (registry.py)
        self._registry_task: asyncio.Task | None = None
        self._registry_dirty = False
        self._registry_at = 0.0  # node.now() (reads as Unix seconds, like provider expiry) of our last registry store
        self._running: dict[bytes, asyncio.Task] = {}
        self._questions: dict[bytes, asyncio.Future] = {}  # provider task id -> the answer its agent awaits
        self._pending: dict[bytes, _Pending] = {}
        self._answering: dict[bytes, asyncio.Task] = {}  # caller task id -> its on_input call
        self._backlog: dict[bytes, deque] = {}  # destination -> envelopes waiting for window room
        self._flushers: dict[bytes, asyncio.Task] = {}
        self._ticks = _TaskTimers(self)
        node.attach(self._ticks)  # the node's one timer serves the task cores' deadlines
        self._descriptions: dict[bytes, tuple[float, dict[str, Capability]]] = {}
        self._describing: dict[bytes, asyncio.Future] = {}
        # Nodes membership or delivery reported gone: their DHT provider records outlive them until
        # expiry, so candidates skip them for DEAD_MEMORY seconds (or until they are seen alive again).
        self._dead: dict[bytes, float] = {}
        self.stats = {"reroutes": 0, "agent_errors": 0, "send_backlog": 0, "questions": 0, "answers": 0,
                      "answered": 0, "unanswered": 0}
        self._outcomes = dict.fromkeys(("completed", "failed", "canceled"), 0)
        self._durations = [0] * len(DURATION_BUCKETS)  # runs per bucket (not cumulative)
        self._duration_sum = 0.0
        self._watcher = asyncio.get_running_loop().create_task(self._watch_members())
        node.route(T.PREFIX, self._on_envelope)
        node.on_settled(self._on_settled)

    async def close(self, *, flush: float = 2.0) -> None:
        """Stop serving and calling (the node itself is closed by its owner).

        Every task admitted here ends ``canceled`` with code ``provider-stopped`` (its agent is
        stopped), and we wait up to ``flush`` seconds for those outcomes to reach their callers,
        so they learn it now rather than when membership notices the node left (a node closed
        first cannot tell them: its callers see it gone, as if it died).
        """
        if self.provider.stop_all(self._now()) and self.node.running:
            self._pump()
            try:
                await self.node.flush(timeout=flush)
            except Exception as exc:  # a caller that is gone, or the time is up: we are leaving anyway
                log.info("not every caller heard that its task was stopped: %s", exc)
        self._watcher.cancel()
        extra = [self._registry_task] if self._registry_task is not None else []
        for task in [*self._running.values(), *self._answering.values(), *self._flushers.values(), *extra]:
            task.cancel()
        await asyncio.gather(self._watcher, *self._running.values(), *self._answering.values(),
                             *self._flushers.values(), *extra, return_exceptions=True)
        self.node.detach(self._ticks)
        for pending in self._pending.values():
            if not pending.done.done():
                pending.done.set_exception(asyncio.CancelledError())

    # -- serving -----------------------------------------------------------------------------------

    async def serve(self, capability: Capability, agent: Agent, *, publish: bool = True, timeout: float = 30.0) -> None:
        """Offer ``capability``, run by ``agent`` (``async (input, ctx) -> output``), and publish it.

        Publishing is a DHT provider record with metadata ``{"cost", "mc"}`` (the DHT caps an
        entry at 1 KiB, so the full descriptor is served by ``task.describe`` instead), and our
        entry in the capability registry (``registry.py``) naming what we publish, for `agents ls`.
        A schema using a keyword the validator does not check is refused here (CapabilityError).
        """
        capability.check_strict()
        self._served[capability.name] = (capability, agent)
        self.provider.offer(capability.name, capability.policy())
        if publish:
            meta = {"cost": capability.cost_per_call, "mc": capability.max_concurrency}
            self._listed.add(capability.name)
            try:
                await self.node.provide(capability.name, meta=meta, timeout=timeout)
            finally:  # listed even if that store failed: both entries are retried while the node runs
                self._registry_changed()

    async def wait_listed(self) -> None:
        """Wait until our registry entry names every published capability (or its store failed, logged).

        ``serve`` updates the entry in the background: the DHT's provider entries expire in whole
        seconds and holders refuse an update that does not expire later than the entry it replaces,
        so updates are coalesced at most one per second instead of making every ``serve`` wait."""
        while self._registry_task is not None and not self._registry_task.done():
            await asyncio.shield(self._registry_task)

    def _registry_changed(self) -> None:
        self._registry_dirty = True
        if self._registry_task is None or self._registry_task.done():
            self._registry_task = asyncio.get_running_loop().create_task(self._registry_loop())

    async def _registry_loop(self) -> None:
        while self._registry_dirty:
            wait = self._registry_at + REGISTRY_SPACING - self._now()
            if wait > 0:
                await asyncio.sleep(wait)
            self._registry_dirty = False
            await self._publish_registry()
            self._registry_at = self._now()

    async def _publish_registry(self, timeout: float = 30.0) -> None:
        """Provide our registry shard with the names we publish, so `agents ls` finds them (registry.py).

        A failure is logged, not raised: the capability itself is published, and the DHT core keeps
        refreshing the entry (a full shard is the known limit, protocols/tasks.md §3.3)."""
        key = registry.shard_key(self.node.node_id)
        if not self._listed:
            try:
                self.node.unprovide(key)
            except Exception:
                pass
            return
        for budget in (registry.META_BUDGET, registry.META_BUDGET // 2, registry.META_BUDGET // 4, 0):
            meta = registry.registry_meta(self._listed, budget) if budget else {"caps": [], "more": True}
            try:
                await self.node.provide(key, meta=meta, timeout=timeout)
                return
            except ValueError:  # a long endpoint left less room in the 1 KiB entry: list fewer names
                continue
            except Exception as exc:
                log.warning("could not list our capabilities in the registry (%s): `agents ls` may miss them", exc)
                return
        log.warning("our contact leaves no room for a registry entry: `agents ls` will not list this node")

    def set_group(self, name: str, members: Iterable[bytes] | None) -> None:
        """Define the group ``name`` (member node ids) that capability allow lists may name, or drop
        it with None. Applies to the next task submitted; ValueError on a bad name or member."""
        self.provider.set_group(name, members)

    def withdraw(self, name: str) -> None:
        self._served.pop(name, None)
        self.provider.withdraw(name)
        try:
            self.node.unprovide(name)
        except Exception:  # not published, or no DHT: nothing to stop
            pass
        if name in self._listed:
            self._listed.discard(name)
            self._registry_changed()

    def _start(self, ev: StartTask) -> None:
        served = self._served.get(ev.capability)
        if served is None:
            self.provider.fail(ev.task_id, f"{ev.capability!r} was withdrawn", self._now())
            return
        cap, agent = served
        timeout = None if ev.deadline is None else max(0.001, ev.deadline - self._now())
        ctx = TaskContext(ev.task_id.hex(), ev.capability, ev.caller.hex(), timeout,
                          progress=lambda chunk, tid=ev.task_id: self._progress(tid, chunk),
                          ask=lambda prompt, tid=ev.task_id: self._ask(tid, prompt))
        task = asyncio.get_running_loop().create_task(self._run_agent(ev.task_id, cap, agent, ev.input, ctx,
                                                                      self._now()))
        self._running[ev.task_id] = task

    def _progress(self, task_id: bytes, chunk: Any) -> None:
        if task_id in self._running:
            self.provider.progress(task_id, chunk, self._now())
            self._pump()

    async def _ask(self, task_id: bytes, prompt: Any) -> Any:
        """``ctx.ask``: put the task in input-required with ``prompt`` and wait for the caller's answer.

        A cancel, the deadline, or a prompt over the chunk limit (which fails the task) stop the
        agent while it waits: they arrive here as CancelledError, like any stop.
        """
        if task_id in self._questions:
            raise AgentError("the agent asked a second question before its first was answered")
        answer = asyncio.get_running_loop().create_future()
        self._questions[task_id] = answer
        try:
            asked = self.provider.need_input(task_id, prompt, self._now())
            self._pump()
            if not asked:  # over the limit (the core failed the task) or already ended: we are being stopped
                raise asyncio.CancelledError
            self.stats["questions"] += 1
            return await answer
        finally:
            self._questions.pop(task_id, None)

    async def _run_agent(self, task_id: bytes, cap: Capability, agent: Agent, value: Any, ctx: TaskContext,
                         started: float) -> None:
        outcome = "failed"
        try:
            try:
                cap.check_input(value)
            except CapabilityError as exc:
                raise AgentError(str(exc)) from None
            output = await agent(value, ctx)
            outcome = "completed"
        except asyncio.CancelledError:
            outcome = "canceled"
            return  # stopped by the core (cancel, deadline, caller gone): it already told the caller
        except AgentError as exc:
            self.stats["agent_errors"] += 1
            self.provider.fail(task_id, str(exc), self._now())
        except Exception as exc:  # the agent is application code: report, never crash the node
            self.stats["agent_errors"] += 1
            log.warning("agent for %s raised %s", cap.name, type(exc).__name__, exc_info=True)
            self.provider.fail(task_id, f"{type(exc).__name__}: {exc}", self._now())
        else:
            self.provider.complete(task_id, output, self._now())
        finally:
            self._running.pop(task_id, None)
            self._observe(outcome, self._now() - started)
        self._pump()

    def _observe(self, outcome: str, seconds: float) -> None:
        self._outcomes[outcome] += 1
        self._duration_sum += seconds
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self._durations[i] += 1
                break

    def task_metrics(self) -> TaskMetrics:
        """The tasks served here, for metrics (see :class:`TaskMetrics`)."""
        cumulative, total = [], 0
        for n in self._durations:
            total += n
            cumulative.append(total)
        return TaskMetrics(self.provider.counts_by_state(), self.provider.queue_depth(), dict(self._outcomes),
                           tuple(cumulative), sum(self._outcomes.values()), self._duration_sum)

    # -- calling -----------------------------------------------------------------------------------------

    async def candidates(self, capability: str) -> list[Candidate]:
        """Who offers ``capability``, with what membership knows of each one's RTT."""
        providers = await self.lookup.find(capability)
        membership = self.node.membership
        now = self._now()
        out = []
        for p in providers:
            dead_until = self._dead.get(p.node_id)
            if dead_until is not None:
                if dead_until > now:
                    continue
                del self._dead[p.node_id]
            if p.contact is not None:
                self.node.transport.add_contact(p.contact)
            elif not self.node.transport.known(p.node_id):
                continue
            rtt = membership.rtt(p.node_id) if membership is not None else None
            out.append(Candidate(p.node_id, p.cost, p.max_concurrency, rtt))
        return out

    def rank(self, candidates: list[Candidate]) -> list[Candidate]:
        """Candidates best first by the caller's score (protocols/tasks.md §6)."""
        return self.caller.rank(candidates, self._now())

    async def describe(self, capability: str, candidates: list[Candidate]) -> Capability | None:
        """The descriptor of ``capability`` from the first candidate that describes it (cached per node)."""
        for c in candidates:
            known = await self._description(c.node_id)
            if capability in known:
                return known[capability]
        return None

    async def _description(self, node_id: bytes) -> dict[str, Capability]:
        """What ``node_id`` serves; a node that does not answer counts as describing nothing, for a while."""
        hit = self._descriptions.get(node_id)
        if hit is not None and hit[0] > self._now():
            return hit[1]
        running = self._describing.get(node_id)
        if running is None:  # one describe per node at a time, however many tasks ask
            async def fetch() -> dict[str, Capability]:
                try:
                    known = {cap.name: cap for cap in await describe(self.node, node_id, timeout=DESCRIBE_TIMEOUT)}
                except Exception as exc:
                    log.info("could not describe %s: %s", node_id.hex()[:12], exc)
                    known = {}
                self._descriptions[node_id] = (self._now() + DESCRIBE_MEMORY, known)
                if len(self._descriptions) > 1000:
                    self._descriptions.pop(next(iter(self._descriptions)))
                return known

            running = self._describing[node_id] = asyncio.ensure_future(fetch())
            running.add_done_callback(lambda _: self._describing.pop(node_id, None))
        return await asyncio.shield(running)

    async def submit(self, spec: TaskSpec, *, candidates: list[Candidate] | None = None, validate: bool = True,
                     on_progress: Callable[[Progress], None] | None = None,
                     queue: asyncio.Queue | None = None, on_input: OnInput | None = None) -> tuple[bytes, asyncio.Future]:
        """Start a task; returns its id and a future resolving to its TaskDone.

        With ``validate`` the input is checked against the capability's input schema (from the
        first provider that describes it) before anything is sent: CapabilityError if it fails.
        ``on_input(prompt)`` answers the agent's questions (input-required); it may raise NoAnswer
        to cancel the task with its message as the reason. Without it such a task is canceled.
        """
        if candidates is None:
            candidates = await self.candidates(spec.capability)
        if validate and candidates:
            cap = await self.describe(spec.capability, candidates)
            if cap is not None:
                cap.check_input(spec.input)
        pending = _Pending(on_progress, queue, on_input)
        task_id = self.caller.submit(spec, candidates, self._now())
        self._pending[task_id] = pending
        self._pump()
        return task_id, pending.done

    async def request(self, capability: str, value: Any = None, *, on_progress: Callable[[Progress], None] | None = None,
                      on_input: OnInput | None = None, validate: bool = True, **spec: Any) -> TaskDone:
        """Run ``capability`` on ``value`` somewhere on the mesh and wait for the outcome.

        ``spec`` takes the TaskSpec fields: key, idempotent, priority, deadline, idle_timeout, stream.
        ``on_input``: ``async (prompt) -> answer`` for an agent that asks mid-task (see submit).
        Cancelling the awaiting coroutine cancels the task at its provider.
        """
        task_id, done = await self.submit(TaskSpec(capability, value, **spec), validate=validate,
                                          on_progress=on_progress, on_input=on_input)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self.cancel(task_id)
            raise

    def cancel(self, task_id: bytes, reason: str = "canceled by the caller") -> bool:
        ok = self.caller.cancel(task_id, self._now(), reason)
        self._pump()
        return ok

    def cancel_all(self, reason: str = "canceled by the caller") -> int:
        """Cancel every unfinished task this node asked for; returns how many."""
        ids = list(self._pending)
        now = self._now()
        n = sum(self.caller.cancel(task_id, now, reason) for task_id in ids)
        self._pump()
        return n

    # -- driving the cores ------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.node.now()  # the node's one clock: task deadlines, provider memory, registry spacing

    def _on_envelope(self, env: Envelope) -> None:
        now = self._now()
        typ = env.type
        if typ == DESCRIBE:
            self.node.reply(env, [cap.to_record() for cap, _ in self._served.values()])
            return
        if typ in (T.STATUS, T.CHUNK):
            self.caller.receive(env, now)
        else:
            self.provider.receive(env, now)
        self._pump()

    def _on_settled(self, msg_id: bytes, dst: bytes, reason: str | None) -> None:
        if reason is not None:  # delivery gave up on this peer: whatever ran there or for it is lost
            self._gone(dst)

    async def _watch_members(self) -> None:
        async for event in self.node.events():
            if event.kind in ("failed", "left"):
                self._gone(event.node_id)
            elif event.kind == "alive":
                self._dead.pop(event.node_id, None)

    def _gone(self, node_id: bytes) -> None:
        now = self._now()
        self._dead[node_id] = now + DEAD_MEMORY
        if len(self._dead) > 10_000:
            self._dead.pop(next(iter(self._dead)))
        self.caller.provider_gone(node_id, now)
        self.provider.caller_gone(node_id, now)
        forget = getattr(self.lookup, "forget", None)
        if forget is not None:
            forget(node_id)
        self._descriptions.pop(node_id, None)
        self._pump()

    def _pump(self) -> None:
        for core in (self.provider, self.caller):
            for env in core.take_outgoing():
                self._send(env)
        for ev in self.provider.take_events():
            if isinstance(ev, StartTask):
                self._start(ev)
            elif isinstance(ev, StopTask):
                task = self._running.pop(ev.task_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(ev, TaskInput):
                answer = self._questions.get(ev.task_id)
                if answer is not None and not answer.done():
                    self.stats["answers"] += 1
                    answer.set_result(ev.input)
                else:  # the core emits it only for a task in input-required, so its agent is waiting
                    log.warning("task %s got input nobody waits for", ev.task_id.hex()[:12])
        for ev in self.caller.take_events():
            self._deliver(ev)
        for core in (self.provider, self.caller):  # handling events may have produced more
            for env in core.take_outgoing():
                self._send(env)
        self._arm()

    def _deliver(self, ev: Any) -> None:
        pending = self._pending.get(ev.task_id)
        if isinstance(ev, Rerouted):
            self.stats["reroutes"] += 1
        if isinstance(ev, (Rerouted, TaskDone)):  # an answer being sought is for an attempt that ended
            asking = self._answering.pop(ev.task_id, None)
            if asking is not None:
                asking.cancel()
        if pending is None:
            return
        if isinstance(ev, StateChanged) and ev.state == T.INPUT_REQUIRED:
            self._answering[ev.task_id] = asyncio.get_running_loop().create_task(
                self._answer(ev.task_id, pending.on_input, ev.prompt))
        if isinstance(ev, TaskDone):
            del self._pending[ev.task_id]
            if pending.queue is not None:
                pending.queue.put_nowait(ev)
            if not pending.done.done():
                pending.done.set_result(ev)
            return
        if isinstance(ev, Progress) and pending.on_progress is not None:
            try:
                pending.on_progress(ev)
            except Exception:
                log.exception("on_progress callback failed")
        if pending.queue is not None:
            pending.queue.put_nowait(ev)

    async def _answer(self, task_id: bytes, on_input: OnInput | None, prompt: Any) -> None:
        """Get the caller's answer to ``prompt`` and send it, or cancel the task saying why not."""
        try:
            if on_input is None:
                raise NoAnswer(NO_ON_INPUT)
            value = await on_input(prompt)
        except asyncio.CancelledError:
            return  # the task ended or moved meanwhile; close() also lands here
        except NoAnswer as exc:
            reason = str(exc) or "the caller declined to answer the task's question"
        except Exception as exc:  # the callback is application code: never leave the task waiting
            log.warning("on_input raised %s", type(exc).__name__, exc_info=True)
            reason = f"the caller could not answer the task's question: {type(exc).__name__}: {exc}"
        else:
            self._answering.pop(task_id, None)
            try:
                self.caller.provide_input(task_id, value, self._now())
            except T.TaskTooLarge as exc:
                reason = f"the caller's answer was not sent: {exc}"
            except T.InvalidTransition:
                return  # the task ended meanwhile (an ended task cancels this first, so not expected)
            else:
                self.stats["answered"] += 1
                self._pump()
                return
        self._answering.pop(task_id, None)
        self.stats["unanswered"] += 1
        self.cancel(task_id, reason)

    def _send(self, env: Envelope) -> None:
        backlog = self._backlog.get(env.dst)
        if backlog is None:
            try:
                self.node.send_nowait(env.dst, env.body, type=env.type)
                return
            except WindowFull:
                backlog = self._backlog[env.dst] = deque()
                self._flushers[env.dst] = asyncio.get_running_loop().create_task(self._flush(env.dst))
            except Exception as exc:  # an unknown peer (forgotten after it died): nobody to tell
                log.info("cannot send %s to %s: %s", env.type, env.dst.hex()[:12], exc)
                return
        self.stats["send_backlog"] += 1
        backlog.append(env)

    async def _flush(self, dst: bytes) -> None:
        """Send what waited for window room to ``dst``, in order (node.send waits for room)."""
        backlog = self._backlog[dst]
        try:
            while backlog:
                env = backlog[0]
                await self.node.send(dst, env.body, type=env.type)
                backlog.popleft()
        except Exception as exc:
            log.info("dropping %d task message(s) to %s: %s", len(backlog), dst.hex()[:12], exc)
        finally:
            del self._backlog[dst]
            self._flushers.pop(dst, None)

    def _arm(self) -> None:
        self.node.wake(self._ticks.next_timer())


class _TaskTimers:
    """The two task cores' deadlines, as a Ticker the node's one timer serves (Node.attach)."""

    __slots__ = ("agents",)

    def __init__(self, agents: Agents):
        self.agents = agents

    def next_timer(self) -> float | None:
        a = self.agents.provider.next_timer()
        b = self.agents.caller.next_timer()
        return a if b is None else b if a is None else min(a, b)

    def tick(self, now: float) -> None:
        agents = self.agents
        agents.provider.tick(now)
        agents.caller.tick(now)
        agents._pump()
