"""The provider half of tasks (sans-IO): admit or reject what callers submit, tell the driver what to run
or stop, and report every state change and progress chunk to the caller, numbered.

:class:`TaskProvider` admits or rejects submitted tasks (unknown capability, allow list, max concurrency,
bad request), queues by priority when a capability has a wait queue, enforces deadlines, replays known
results for a repeated idempotency key, and numbers every update it sends. The shared states and codes
are in :mod:`zmqagents.core.tasks_states`; the wire rules in ``protocols/tasks.md``.
"""

from __future__ import annotations

import heapq
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..envelope import Envelope
from .outputs import CoreOutputs
from .tasks_states import (
    CANCEL, CANCELED, CHUNK, COMPLETED, E_AGENT, E_BAD_REQUEST, E_BUSY, E_CALLER_GONE, E_CANCELED, E_DEADLINE,
    E_DENIED, E_OUTPUT_TOO_LARGE, E_PROVIDER_STOPPED, E_UNKNOWN_CAPABILITY, FAILED, INPUT, INPUT_REQUIRED,
    MAX_CAPABILITY_LEN, MAX_KEY_LEN, MAX_PRIORITY, REJECTED, STATUS, SUBMIT, SUBMITTED, WORKING,
    InvalidTransition, check_transition, error_body, is_task_id, packed_size,
)
from ..errors import InvalidArgument


@dataclass(frozen=True)
class CapabilityPolicy:
    """How a provider serves one capability.

    ``allow`` names who may call it (None: anyone the transport admits): node ids (``bytes``)
    and group names (``str``), which the provider resolves through its own group table
    (:meth:`TaskProvider.set_group`) at admission, so a group can change without re-offering.
    ``queue`` is how many admitted tasks may wait for a free slot (0: reject at once when
    ``max_concurrency`` tasks run, so the caller routes elsewhere).
    """

    max_concurrency: int = 4
    queue: int = 0
    allow: frozenset[bytes | str] | None = None

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.queue < 0:
            raise InvalidArgument("CapabilityPolicy needs max_concurrency >= 1 and queue >= 0")
        for entry in self.allow or ():
            if isinstance(entry, str):
                check_group_name(entry)
            elif not isinstance(entry, bytes):
                raise InvalidArgument("an allow list holds node ids (bytes) and group names (str)")

    @property
    def groups(self) -> tuple[str, ...]:
        """The group names in the allow list, sorted."""
        return tuple(sorted(e for e in self.allow or () if isinstance(e, str)))


GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_group_name(name: Any) -> str:
    """Raise ValueError unless ``name`` is a group name: 1..64 letters, digits, _ . - (no "@")."""
    if not isinstance(name, str) or not GROUP_NAME_RE.match(name):
        raise InvalidArgument(f"group name {name!r:.80} must be 1..64 letters, digits, _ . - starting with a letter "
                         "or digit (write it without the @ that the command line puts in front)")
    return name


@dataclass
class ProviderConfig:
    max_tasks: int = 10_000  # tasks running or queued across capabilities; beyond that: busy
    max_chunk_bytes: int = 256 * 1024  # one progress chunk, packed; larger fails the task
    max_output_bytes: int = 900 * 1024  # the final output, packed (an envelope holds 1 MiB)
    result_cache: int = 1000  # finished results kept for idempotency keys (LRU)
    result_ttl: float = 600.0  # seconds a finished result answers a repeated key


@dataclass(slots=True)
class StartTask:
    """Run ``capability`` on ``input`` for ``caller``; report back with progress/complete/fail."""

    task_id: bytes
    capability: str
    input: Any
    caller: bytes
    priority: int
    deadline: float | None


@dataclass(slots=True)
class StopTask:
    """Stop running ``task_id`` (canceled, deadline passed, caller gone); later reports are ignored."""

    task_id: bytes
    reason: str


@dataclass(slots=True)
class TaskInput:
    """The caller answered input-required: hand ``input`` to the running agent."""

    task_id: bytes
    input: Any


class _Watcher:
    """One caller-side task id that receives a task's updates, with its own sequence numbers."""

    __slots__ = ("dst", "id", "seq")

    def __init__(self, dst: bytes, wire_id: bytes):
        self.dst = dst
        self.id = wire_id
        self.seq = 0


class _Job:
    __slots__ = ("id", "cap", "input", "caller", "prio", "deadline", "state", "key", "watchers", "order", "stream", "prompt")

    def __init__(self, wire_id: bytes, cap: str, body_in: Any, caller: bytes, prio: int, deadline: float | None,
                 key: str | bytes | None, stream: bool, order: int) -> None:
        self.id = wire_id
        self.cap = cap
        self.input = body_in
        self.caller = caller
        self.prio = prio
        self.deadline = deadline
        self.state = SUBMITTED
        self.key = key
        self.stream = stream
        self.order = order
        self.prompt = None
        self.watchers = [_Watcher(caller, wire_id)]


PROVIDER_STATS = (
    "received", "malformed", "rejected", "denied", "busy", "unknown_capability", "started", "queued",
    "completed", "failed", "canceled", "deadline", "replayed", "attached", "duplicate_submit",
    "unknown_task", "not_owner", "bad_input_state", "late_report", "output_too_large", "chunks",
    "chunks_suppressed", "caller_gone", "input_required", "inputs", "stopped", "expired",
)


class TaskProvider(CoreOutputs):
    """The provider half: admits tasks, tells the driver what to run or stop, reports to callers."""

    def __init__(self, node_id: bytes, rng: random.Random, config: ProviderConfig | None = None):
        super().__init__()
        self.node_id = node_id
        self._rng = rng
        self.config = config or ProviderConfig()
        self._policies: dict[str, CapabilityPolicy] = {}
        self._groups: dict[str, frozenset[bytes]] = {}  # group name -> member node ids (for allow lists)
        self._group_source: Callable[[bytes], frozenset[str]] | None = None  # caller -> groups it is certified in
        self._jobs: dict[bytes, _Job] = {}  # wire id -> job (running, queued, or input-required)
        self._running: dict[str, int] = {}
        self._limits: dict[str, int] = {}  # max_concurrency, kept after withdraw() for tasks still admitted
        self._queues: dict[str, list[Any]] = {}  # capability -> heap of (-priority, order, job)
        self._keys: dict[tuple[Any, ...], _Job] = {}  # (caller, capability, key) -> unfinished job
        self._results: OrderedDict[tuple[Any, ...], tuple[float, str, Any]] = OrderedDict()  # key -> (expires, state, payload)
        self._deadlines: list[tuple[float, int, bytes]] = []
        self._order = 0
        self.stats = dict.fromkeys(PROVIDER_STATS, 0)

    # -- capabilities ------------------------------------------------------------------

    def offer(self, capability: str, policy: CapabilityPolicy | None = None) -> None:
        """Serve ``capability`` (or change its policy; tasks already admitted keep running)."""
        if not isinstance(capability, str) or not 0 < len(capability) <= MAX_CAPABILITY_LEN:
            raise InvalidArgument(f"a capability name is 1..{MAX_CAPABILITY_LEN} characters")
        policy = policy or CapabilityPolicy()
        self._policies[capability] = policy
        self._limits[capability] = policy.max_concurrency
        self._running.setdefault(capability, 0)
        self._queues.setdefault(capability, [])

    def withdraw(self, capability: str) -> None:
        """Stop admitting ``capability``; tasks already admitted finish."""
        self._policies.pop(capability, None)

    def capabilities(self) -> dict[str, CapabilityPolicy]:
        return dict(self._policies)

    def set_group(self, name: str, members: Iterable[bytes] | None) -> None:
        """Define (or with None, drop) the group ``name`` that allow lists may name; takes effect for
        the next submit (tasks already admitted keep running)."""
        check_group_name(name)
        if members is None:
            self._groups.pop(name, None)
            return
        ids = frozenset(members)
        if not all(isinstance(m, bytes) and len(m) == 32 for m in ids):
            raise InvalidArgument(f"group {name!r}: members are 32-byte node ids")
        self._groups[name] = ids

    def groups(self) -> dict[str, frozenset[bytes]]:
        return dict(self._groups)

    def set_group_source(self, source: Callable[[bytes], frozenset[str]] | None) -> None:
        """Also count a caller as a member of the groups ``source(caller)`` names: in a fleet, the groups
        of the certificate the caller presented (protocols/certificates.md), checked by the transport
        before any task message got here. A group then needs no local definition."""
        self._group_source = source

    def _denial(self, policy: CapabilityPolicy, src: bytes, cap: str) -> str | None:
        """None if ``src`` may call ``cap``, else the reason it may not (names the groups it is not in)."""
        allow = policy.allow
        if allow is None or src in allow:
            return None
        groups = policy.groups
        if any(src in self._groups.get(g, ()) for g in groups):
            return None
        if groups and self._group_source is not None and not self._group_source(src).isdisjoint(groups):
            return None
        why = f"caller {src.hex()[:12]} is not on the allow list of {cap!r}"
        if groups:
            undefined = [g for g in groups if g not in self._groups] if self._group_source is None else []
            why += " and not in its group(s) " + ", ".join("@" + g for g in groups)
            if undefined:
                why += " (not defined on this provider: " + ", ".join("@" + g for g in undefined) + ")"
        return why

    def load(self, capability: str) -> float:
        """(running + queued) / max_concurrency: 1.0 means a new task would wait or be refused."""
        policy = self._policies.get(capability)
        if policy is None:
            return 1.0
        return (self._running.get(capability, 0) + len(self._queues.get(capability, ()))) / policy.max_concurrency

    def active(self) -> int:
        return len(self._jobs)

    def counts_by_state(self) -> dict[str, int]:
        """Tasks admitted here and not finished, by state (submitted: waiting in a queue; working;
        input-required): what an operator's gauge shows."""
        counts = dict.fromkeys((SUBMITTED, WORKING, INPUT_REQUIRED), 0)
        for job in self._jobs.values():
            counts[job.state] = counts.get(job.state, 0) + 1
        return counts

    def queue_depth(self) -> int:
        """Tasks waiting for a free slot of their capability, all capabilities together."""
        return sum(len(queue) for queue in self._queues.values())

    # -- input from peers -----------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """A ``task.*`` envelope from a caller (delivered in order, exactly once, by delivery)."""
        self.stats["received"] += 1
        body = env.body
        if not isinstance(body, dict) or not is_task_id(body.get("id")):
            self.stats["malformed"] += 1
            return
        typ = env.type
        if typ == SUBMIT:
            self._on_submit(env.src, body, now)
        elif typ == CANCEL:
            job = self._owned(env.src, body["id"])
            if job is not None:
                why = body.get("why")
                reason = why if isinstance(why, str) else "canceled by the caller"
                self._finish(job, CANCELED, {"err": error_body(E_CANCELED, reason)}, now, stop=True)
        elif typ == INPUT:
            job = self._owned(env.src, body["id"])
            if job is None:
                return
            if job.state != INPUT_REQUIRED or "in" not in body:
                self.stats["bad_input_state"] += 1
                return
            self.stats["inputs"] += 1
            job.prompt = None
            self._set(job, WORKING, {}, now)
            self._events.append(TaskInput(job.id, body["in"]))
        else:
            self.stats["malformed"] += 1

    def caller_gone(self, caller: bytes, now: float) -> None:
        """The caller died or left (membership): stop its tasks, nobody is waiting for them."""
        jobs = {j.id: j for j in self._jobs.values() if j.caller == caller}  # attached ids map to one job
        for job in jobs.values():
            self.stats["caller_gone"] += 1
            self._finish(job, CANCELED, {"err": error_body(E_CALLER_GONE, "the caller is gone")}, now, stop=True)

    def stop_all(self, now: float, reason: str = "the provider is shutting down") -> int:
        """Shut down: admit nothing more, and end every admitted task (running, queued or waiting
        for input) ``canceled`` with code ``provider-stopped``, telling the driver to stop the
        running ones. The callers hear it at once instead of waiting for membership to notice the
        node is gone; an idempotent task is then re-sent elsewhere. Returns how many tasks ended."""
        self._policies.clear()
        jobs = {j.id: j for j in self._jobs.values()}  # attached ids map to one job
        # Queued ones first: ending a running task would start the next queued one only to stop it.
        for job in sorted(jobs.values(), key=lambda j: j.state != SUBMITTED):
            self.stats["stopped"] += 1
            self._finish(job, CANCELED, {"err": error_body(E_PROVIDER_STOPPED, reason)}, now, stop=True)
        return len(jobs)

    def _owned(self, src: bytes, wire_id: bytes) -> _Job | None:
        job = self._jobs.get(wire_id)
        if job is None:
            self.stats["unknown_task"] += 1  # finished already, or never ours: nothing to do
            return None
        if job.caller != src:
            self.stats["not_owner"] += 1  # only the caller that submitted a task may steer it
            return None
        return job

    def _on_submit(self, src: bytes, body: dict[Any, Any], now: float) -> None:
        wire_id = body["id"]
        if wire_id in self._jobs:
            self.stats["duplicate_submit"] += 1
            return
        problem = _check_submit(body)
        if problem is not None:
            self.stats["malformed"] += 1
            self._reject_new(src, wire_id, E_BAD_REQUEST, problem, 1.0)
            return
        cap = body["cap"]
        policy = self._policies.get(cap)
        if policy is None:
            self.stats["unknown_capability"] += 1
            self._reject_new(src, wire_id, E_UNKNOWN_CAPABILITY, f"this node does not offer {cap!r}", 1.0)
            return
        denial = self._denial(policy, src, cap)
        if denial is not None:
            self.stats["denied"] += 1
            self._reject_new(src, wire_id, E_DENIED, denial, 1.0)
            return
        key = body.get("key")
        if key is not None:
            kk = (src, cap, key)
            cached = self._results.get(kk)
            if cached is not None and cached[0] > now:
                # Same key seen and finished: answer with the known outcome, do not run again.
                self.stats["replayed"] += 1
                _, state, payload = cached
                w = _Watcher(src, wire_id)
                self._send_status(w, state, payload, self.load(cap))
                return
            running = self._keys.get(kk)
            if running is not None:
                # Same key, still running: this id gets the remaining updates too.
                self.stats["attached"] += 1
                w = _Watcher(src, wire_id)
                running.watchers.append(w)
                self._jobs[wire_id] = running
                load = self.load(cap)
                if running.state == SUBMITTED:
                    self._send_status(w, SUBMITTED, {}, load)
                else:  # walk the new id up the table: working, then input-required if it waits
                    self._send_status(w, WORKING, {}, load)
                    if running.state == INPUT_REQUIRED:
                        self._send_status(w, INPUT_REQUIRED, {"prompt": running.prompt}, load)
                return
        running_n = self._running[cap]
        queue = self._queues[cap]
        if running_n >= policy.max_concurrency and len(queue) >= policy.queue or len(self._jobs) >= self.config.max_tasks:
            self.stats["busy"] += 1
            self._reject_new(src, wire_id, E_BUSY, f"{cap!r} is at its limit of {policy.max_concurrency} running task(s)",
                             self.load(cap))
            return
        ttl = body.get("ttl")
        deadline = None if ttl is None else now + ttl / 1000.0
        self._order += 1
        job = _Job(wire_id, cap, body.get("in"), src, body.get("prio", 0), deadline, key, body.get("stream", True),
                   self._order)
        self._jobs[wire_id] = job
        if key is not None:
            self._keys[(src, cap, key)] = job
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, job.order, wire_id))
        if running_n < policy.max_concurrency:
            self._start(job, now)
        else:
            self.stats["queued"] += 1
            heapq.heappush(queue, (-job.prio, job.order, job))
            self._send_all(job, STATUS, {"state": SUBMITTED, "load": self.load(cap)})

    def _reject_new(self, dst: bytes, wire_id: bytes, code: str, message: str, load: float) -> None:
        self.stats["rejected"] += 1
        self._send_status(_Watcher(dst, wire_id), REJECTED, {"err": error_body(code, message)}, load)

    def _start(self, job: _Job, now: float) -> None:
        self._running[job.cap] += 1
        self.stats["started"] += 1
        self._set(job, WORKING, {}, now)
        self._events.append(StartTask(job.id, job.cap, job.input, job.caller, job.prio, job.deadline))
        job.input = None  # the driver has it now; do not hold a second reference for the task's life

    # -- reports from the driver -------------------------------------------------------------

    def progress(self, task_id: bytes, data: Any, now: float) -> bool:
        """A progress chunk from the running agent. False if the task is no longer running here."""
        job = self._live(task_id)
        if job is None:
            return False
        if job.state != WORKING:
            raise InvalidTransition(f"progress reported for a task in state {job.state!r}")
        if self._fails_oversize(job, "a progress chunk", data, now):
            return False
        if not job.stream:
            self.stats["chunks_suppressed"] += 1
            return True
        self.stats["chunks"] += 1
        self._send_all(job, CHUNK, {"data": data})
        return True

    def need_input(self, task_id: bytes, prompt: Any, now: float) -> bool:
        """The agent waits for more input from the caller (A2A input-required).

        False if the task is no longer running here, or if ``prompt`` is over ``max_chunk_bytes``
        packed (or not encodable): that fails the task (output-too-large) and stops the agent, as an
        oversize progress chunk does. InvalidTransition unless the task is working (one question at
        a time: the agent asks again only after the answer came).
        """
        job = self._live(task_id)
        if job is None:
            return False
        if job.state != WORKING:
            raise InvalidTransition(f"input asked for a task in state {job.state!r}")
        if self._fails_oversize(job, "an input-required prompt", prompt, now):
            return False
        self.stats["input_required"] += 1
        job.prompt = prompt
        self._set(job, INPUT_REQUIRED, {"prompt": prompt}, now)
        return True

    def _fails_oversize(self, job: _Job, what: str, value: Any, now: float) -> bool:
        """Fail ``job`` (output-too-large, the agent stopped) if ``value`` packs to more than
        max_chunk_bytes or cannot be packed: one chunk in flight to the caller must stay bounded."""
        size = packed_size(value)
        if size is not None and size <= self.config.max_chunk_bytes:
            return False
        self.stats["output_too_large"] += 1
        why = (f"{what} of {size} bytes exceeds the {self.config.max_chunk_bytes}-byte limit"
               if size else f"{what} is not encodable")
        self._finish(job, FAILED, {"err": error_body(E_OUTPUT_TOO_LARGE, why)}, now, stop=True)
        return True

    def complete(self, task_id: bytes, output: Any, now: float) -> bool:
        """The agent finished; ``output`` goes to the caller. False if the task was already stopped."""
        job = self._live(task_id)
        if job is None:
            return False
        size = packed_size(output)
        if size is None or size > self.config.max_output_bytes:
            self.stats["output_too_large"] += 1
            why = (f"output of {size} bytes exceeds the {self.config.max_output_bytes}-byte limit"
                   if size else "the output is not encodable")
            self._finish(job, FAILED, {"err": error_body(E_OUTPUT_TOO_LARGE, why)}, now)
            return True
        self._finish(job, COMPLETED, {"out": output}, now)
        return True

    def fail(self, task_id: bytes, message: str, now: float, *, code: str = E_AGENT) -> bool:
        """The agent failed; ``message`` (e.g. the stderr tail) goes to the caller."""
        job = self._live(task_id)
        if job is None:
            return False
        self._finish(job, FAILED, {"err": error_body(code, message)}, now)
        return True

    def _live(self, task_id: bytes) -> _Job | None:
        job = self._jobs.get(task_id)
        if job is None or job.id != task_id:  # an attached id is not the job's own: the driver never knew it
            self.stats["late_report"] += 1
            return None
        return job

    # -- timers ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Fail tasks whose deadline passed (telling the driver to stop them); expire cached results."""
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, wire_id = heapq.heappop(heap)
            job = self._jobs.get(wire_id)
            if job is not None and job.id == wire_id:
                if job.state == SUBMITTED:
                    self._expire(job, now)
                else:
                    self.stats["deadline"] += 1
                    self._finish(job, FAILED, {"err": error_body(E_DEADLINE, "the task's deadline passed at the provider")},
                                 now, stop=True)
        results = self._results
        while results:
            k, (expires, _, _) = next(iter(results.items()))
            if expires > now:
                break
            del results[k]

    def next_timer(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][2] not in self._jobs:
            heapq.heappop(heap)
        at = heap[0][0] if heap else None
        if self._results:
            first = next(iter(self._results.values()))[0]
            at = first if at is None else min(at, first)
        return at

    # -- state changes -------------------------------------------------------------------------

    def _set(self, job: _Job, state: str, extra: dict[Any, Any], now: float) -> None:
        check_transition(job.state, state)
        job.state = state
        self._send_all(job, STATUS, {"state": state, **extra, "load": self.load(job.cap)})

    def _expire(self, job: _Job, now: float, *, promote: bool = True) -> None:
        """A queued task's deadline passed before a slot freed: it fails without ever running, since its
        caller gave up (counted in ``deadline`` and ``expired``)."""
        self.stats["deadline"] += 1
        self.stats["expired"] += 1
        self._finish(job, FAILED, {"err": error_body(E_DEADLINE, "the task's deadline passed while it waited in the "
                                               "provider's queue; it was not run")}, now, stop=True, promote=promote)

    def _finish(self, job: _Job, state: str, extra: dict[Any, Any], now: float, *, stop: bool = False,
                promote: bool = True) -> None:
        """Move ``job`` to a terminal state, free its slot, start the next queued task.

        ``stop``: the end comes from this side (cancel, deadline, caller gone, an oversize chunk),
        not from the agent, so a running agent must be told to stop. Only outcomes that come from
        the agent itself are kept for a repeated idempotency key: a deadline or a cancel is not
        the task's result, and asking again should run it.
        """
        was_running = job.state in (WORKING, INPUT_REQUIRED)
        check_transition(job.state, state)
        cap = job.cap
        for w in job.watchers:
            self._jobs.pop(w.id, None)
        if job.key is not None:
            kk = (job.caller, cap, job.key)
            self._keys.pop(kk, None)
            if not stop and state in (COMPLETED, FAILED) and self.config.result_cache:
                self._results[kk] = (now + self.config.result_ttl, state, extra)
                self._results.move_to_end(kk)
                while len(self._results) > self.config.result_cache:
                    self._results.popitem(last=False)
        if was_running:
            self._running[cap] -= 1
            if stop:
                self._events.append(StopTask(job.id, extra["err"]["code"]))
        else:
            queue = self._queues[cap]
            for i, item in enumerate(queue):
                if item[2] is job:
                    queue[i] = queue[-1]
                    queue.pop()
                    heapq.heapify(queue)
                    break
        self.stats[{COMPLETED: "completed", FAILED: "failed", CANCELED: "canceled"}[state]] += 1
        job.state = state
        self._send_all(job, STATUS, {"state": state, **extra, "load": self.load(cap)})
        if promote:
            self._promote(cap, now)

    def _promote(self, cap: str, now: float) -> None:
        """Start queued tasks while ``cap`` has free slots. One whose deadline passed (its timer has not
        fired yet: the driver was late) is not started but expired, without recursing into here."""
        queue = self._queues[cap]
        limit = self._limits[cap]
        while queue and self._running[cap] < limit:
            job: _Job = heapq.heappop(queue)[2]  # (-priority, order, job)
            if self._jobs.get(job.id) is not job:
                continue
            if job.deadline is not None and job.deadline <= now:
                self._expire(job, now, promote=False)
            else:
                self._start(job, now)

    def _send_all(self, job: _Job, typ: str, body: dict[Any, Any]) -> None:
        for w in job.watchers:
            self._send(w, typ, body)

    def _send_status(self, w: _Watcher, state: str, extra: dict[Any, Any], load: float) -> None:
        self._send(w, STATUS, {"state": state, **extra, "load": load})

    def _send(self, w: _Watcher, typ: str, body: dict[Any, Any]) -> None:
        w.seq += 1
        self._out.append(Envelope(self._rng.getrandbits(128).to_bytes(16, "big"), self.node_id, typ,
                                  {"id": w.id, "seq": w.seq, **body}, w.dst))



def _check_submit(body: dict[Any, Any]) -> str | None:
    """What is wrong with a submit body, or None."""
    cap = body.get("cap")
    if type(cap) is not str or not 0 < len(cap) <= MAX_CAPABILITY_LEN:
        return f"'cap' must be a string of 1..{MAX_CAPABILITY_LEN} characters"
    key = body.get("key")
    if key is not None and (type(key) not in (str, bytes) or not 0 < len(key) <= MAX_KEY_LEN):
        return f"'key' must be a string or bytes of 1..{MAX_KEY_LEN}"
    ttl = body.get("ttl")
    if ttl is not None and (type(ttl) is not int or ttl <= 0):
        return "'ttl' must be a positive integer (milliseconds)"
    prio = body.get("prio", 0)
    if type(prio) is not int or not 0 <= prio <= MAX_PRIORITY:
        return f"'prio' must be an integer 0..{MAX_PRIORITY}"
    if type(body.get("stream", True)) is not bool:
        return "'stream' must be a boolean"
    return None
