"""Tasks: one caller asks one provider to run a capability, and hears progress and the outcome.

A sans-IO pair of state machines (the wire rules are in ``protocols/tasks.md``):

* :class:`TaskProvider` runs on the node that offers capabilities. It admits or rejects
  submitted tasks (unknown capability, allow list, max concurrency, bad request), queues by
  priority when a capability has a wait queue, enforces deadlines, replays known results for a
  repeated idempotency key, and numbers every update it sends to the caller.
* :class:`TaskCaller` runs on the node that asks. It scores the candidate providers, sends the
  task, puts the numbered updates back in order (dropping duplicates, skipping a gap that does
  not fill), times out silent providers, and fails over to the next provider when the task
  provably never ran (a rejection), or when the caller said it may run twice.

Neither touches a socket or a clock. Messages they want sent come out of ``take_outgoing()`` as
envelopes with ``dst``, ``type`` and ``body`` set: the driver hands them to the reliable delivery
core (``Delivery.send``), which gives them ids, sequence numbers and retransmission. The task
layer relies on delivery for at-least-once transport and per-sender order; its own sequence
numbers exist because delivery may give up on a message (then a ``fwd`` skips it), and because
updates of one task may reach the caller from an old attempt after a failover.

States follow the A2A task lifecycle; :data:`TRANSITIONS` is the table both sides check.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import msgpack

from ..envelope import Envelope
from .outputs import CoreOutputs

PREFIX = "task."
SUBMIT = "task.submit"  # caller -> provider
CANCEL = "task.cancel"  # caller -> provider
INPUT = "task.input"  # caller -> provider, answers input-required
STATUS = "task.status"  # provider -> caller: a state change
CHUNK = "task.chunk"  # provider -> caller: a progress chunk

SUBMITTED = "submitted"
WORKING = "working"
INPUT_REQUIRED = "input-required"
COMPLETED = "completed"
FAILED = "failed"
CANCELED = "canceled"
REJECTED = "rejected"

STATES = (SUBMITTED, WORKING, INPUT_REQUIRED, COMPLETED, FAILED, CANCELED, REJECTED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED, REJECTED})

# state -> the states it may move to. Both sides check every change against this table; a task
# starts in "submitted" (the caller sends it, the provider admits it). A provider that replays a
# known result goes from submitted straight to the final state.
TRANSITIONS: dict[str, frozenset[str]] = {
    SUBMITTED: frozenset({WORKING, COMPLETED, FAILED, CANCELED, REJECTED}),
    WORKING: frozenset({INPUT_REQUIRED, COMPLETED, FAILED, CANCELED}),
    INPUT_REQUIRED: frozenset({WORKING, FAILED, CANCELED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELED: frozenset(),
    REJECTED: frozenset(),
}

# Error codes carried in ``err.code`` of failed/rejected/canceled outcomes.
E_UNKNOWN_CAPABILITY = "unknown-capability"  # rejected: the provider does not offer it
E_DENIED = "denied"  # rejected: the caller is not on the capability's allow list
E_BUSY = "busy"  # rejected: max concurrency reached and the wait queue (if any) is full
E_BAD_REQUEST = "bad-request"  # rejected: the submit body is malformed or oversize
E_DEADLINE = "deadline"  # failed: the deadline passed (at the provider or the caller)
E_TIMEOUT = "timeout"  # failed: the provider said nothing for accept/idle timeout
E_PROVIDER_GONE = "provider-gone"  # failed: the provider died, left or became unreachable
E_NO_PROVIDER = "no-provider"  # rejected locally: no candidate (left) to send it to
E_OUTPUT_TOO_LARGE = "output-too-large"  # failed: a chunk or the output exceeds the limit
E_AGENT = "agent-error"  # failed: the agent itself failed (its message says how)
E_CALLER_GONE = "caller-gone"  # canceled at the provider: the caller died or left
E_CANCELED = "canceled"  # canceled on the caller's request
E_PROVIDER_STOPPED = "provider-stopped"  # canceled at the provider: it shut down while the task was admitted

ID_LEN = 16
MAX_KEY_LEN = 256  # idempotency key, characters or bytes
MAX_CAPABILITY_LEN = 128
MAX_REASON_LEN = 1000
MAX_PRIORITY = 9


class TaskError(Exception):
    """Base of the errors the task cores raise at their caller (the driver), never at a peer."""


class InvalidTransition(TaskError):
    """A state change the table does not allow."""


class TaskTooLarge(TaskError, ValueError):
    """An input (caller side) does not fit the size limit."""


class TooManyTasks(TaskError):
    """The caller already tracks ``max_tasks`` unfinished tasks."""


def check_transition(old: str, new: str) -> None:
    """Raise InvalidTransition unless ``old -> new`` is in :data:`TRANSITIONS`."""
    allowed = TRANSITIONS.get(old)
    if allowed is None or new not in allowed:
        raise InvalidTransition(f"task state {old!r} cannot become {new!r}")


def packed_size(value: Any) -> int | None:
    """Bytes ``value`` takes as msgpack, or None if msgpack cannot encode it."""
    try:
        return len(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        return None


def _err(code: str, message: str) -> dict[Any, Any]:
    return {"code": code, "msg": message[:MAX_REASON_LEN]}


# =====================================================================================
# Provider side
# =====================================================================================


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
            raise ValueError("CapabilityPolicy needs max_concurrency >= 1 and queue >= 0")
        for entry in self.allow or ():
            if isinstance(entry, str):
                check_group_name(entry)
            elif not isinstance(entry, bytes):
                raise ValueError("an allow list holds node ids (bytes) and group names (str)")

    @property
    def groups(self) -> tuple[str, ...]:
        """The group names in the allow list, sorted."""
        return tuple(sorted(e for e in self.allow or () if isinstance(e, str)))


GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_group_name(name: Any) -> str:
    """Raise ValueError unless ``name`` is a group name: 1..64 letters, digits, _ . - (no "@")."""
    if not isinstance(name, str) or not GROUP_NAME_RE.match(name):
        raise ValueError(f"group name {name!r:.80} must be 1..64 letters, digits, _ . - starting with a letter "
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
            raise ValueError(f"a capability name is 1..{MAX_CAPABILITY_LEN} characters")
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
            raise ValueError(f"group {name!r}: members are 32-byte node ids")
        self._groups[name] = ids

    def groups(self) -> dict[str, frozenset[bytes]]:
        return dict(self._groups)

    def _denial(self, policy: CapabilityPolicy, src: bytes, cap: str) -> str | None:
        """None if ``src`` may call ``cap``, else the reason it may not (names the groups it is not in)."""
        allow = policy.allow
        if allow is None or src in allow:
            return None
        groups = policy.groups
        if any(src in self._groups.get(g, ()) for g in groups):
            return None
        why = f"caller {src.hex()[:12]} is not on the allow list of {cap!r}"
        if groups:
            undefined = [g for g in groups if g not in self._groups]
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

    # -- input from peers -----------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """A ``task.*`` envelope from a caller (delivered in order, exactly once, by delivery)."""
        self.stats["received"] += 1
        body = env.body
        if not isinstance(body, dict) or not _is_id(body.get("id")):
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
                self._finish(job, CANCELED, {"err": _err(E_CANCELED, reason)}, now, stop=True)
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
            self._finish(job, CANCELED, {"err": _err(E_CALLER_GONE, "the caller is gone")}, now, stop=True)

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
            self._finish(job, CANCELED, {"err": _err(E_PROVIDER_STOPPED, reason)}, now, stop=True)
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
        self._send_status(_Watcher(dst, wire_id), REJECTED, {"err": _err(code, message)}, load)

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
        self._finish(job, FAILED, {"err": _err(E_OUTPUT_TOO_LARGE, why)}, now, stop=True)
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
            self._finish(job, FAILED, {"err": _err(E_OUTPUT_TOO_LARGE, why)}, now)
            return True
        self._finish(job, COMPLETED, {"out": output}, now)
        return True

    def fail(self, task_id: bytes, message: str, now: float, *, code: str = E_AGENT) -> bool:
        """The agent failed; ``message`` (e.g. the stderr tail) goes to the caller."""
        job = self._live(task_id)
        if job is None:
            return False
        self._finish(job, FAILED, {"err": _err(code, message)}, now)
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
                    self._finish(job, FAILED, {"err": _err(E_DEADLINE, "the task's deadline passed at the provider")},
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
        self._finish(job, FAILED, {"err": _err(E_DEADLINE, "the task's deadline passed while it waited in the "
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


def _is_id(value: Any) -> bool:
    return type(value) is bytes and len(value) == ID_LEN


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


# =====================================================================================
# Caller side
# =====================================================================================


@dataclass(frozen=True)
class Candidate:
    """A node that offers the capability, as the provider lookup found it.

    ``cost`` is the provider's advertised cost per call (any unit, compared only among
    candidates); ``max_concurrency`` its advertised limit (None: unknown); ``rtt`` seconds from
    membership probes (None: never measured).
    """

    node_id: bytes
    cost: float = 0.0
    max_concurrency: int | None = None
    rtt: float | None = None


@dataclass(frozen=True)
class Weights:
    """Weights of the provider score (lower score wins); see ``protocols/tasks.md`` §6."""

    load: float = 1.0
    rtt: float = 0.5
    cost: float = 0.5
    failure: float = 1.0


@dataclass
class CallerConfig:
    weights: Weights = field(default_factory=Weights)
    rtt_ref: float = 0.05  # s: an RTT of this much scores 0.5 on the RTT term
    accept_timeout: float = 10.0  # s without any update after sending: the provider is presumed gone
    gap_timeout: float = 2.0  # s a hole in the update sequence may stay open before it is skipped
    max_attempts: int = 3  # providers tried per task (the first included)
    reorder_limit: int = 256  # out-of-order updates buffered per task; more are dropped and counted
    max_tasks: int = 65_536  # unfinished tasks tracked at once
    max_input_bytes: int = 900 * 1024  # packed input; an envelope holds 1 MiB
    load_memory: float = 10.0  # s a provider's reported load counts in its score
    busy_penalty: float = 2.0  # s a provider that answered busy counts as fully loaded
    busy_wait: float = 30.0  # s a task may wait for a free provider when every one answered busy (0: reject)
    busy_retry: float = 0.1  # s before the first retry round when all were busy; doubles per round, jittered
    busy_retry_max: float = 2.0
    success_decay: float = 0.9  # weight kept by older outcomes in the success rate, per outcome
    max_providers: int = 10_000  # per-provider statistics kept (LRU)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.reorder_limit < 1 or self.max_tasks < 1:
            raise ValueError("CallerConfig needs max_attempts, reorder_limit and max_tasks >= 1")
        if not 0 < self.success_decay < 1:
            raise ValueError("CallerConfig.success_decay must be in (0, 1)")


@dataclass(frozen=True)
class TaskSpec:
    """What the caller asks for.

    ``idempotent``: running the task twice is harmless, so a task whose provider went silent or
    died may be sent to another provider. Otherwise it is re-sent only where it provably did
    not run (a rejection), or — when it has an idempotency ``key`` — to the same provider, which
    answers a repeated key with the known result instead of running it again.
    """

    capability: str
    input: Any = None
    key: str | bytes | None = None
    idempotent: bool = False
    priority: int = 0
    deadline: float | None = None  # seconds from submission; None: no deadline
    idle_timeout: float | None = None  # s without an update once working; None: wait as long as the deadline
    stream: bool = True  # ask for progress chunks


@dataclass(slots=True)
class Progress:
    """A progress chunk of ``task_id``, in the provider's order."""

    task_id: bytes
    seq: int
    data: Any


@dataclass(slots=True)
class StateChanged:
    """``task_id`` moved to a non-terminal ``state`` (submitted, working, input-required)."""

    task_id: bytes
    state: str
    provider: bytes
    prompt: Any = None


@dataclass(slots=True)
class Rerouted:
    """``task_id`` left ``old`` (for ``reason``, an error code) and was sent to ``new``."""

    task_id: bytes
    old: bytes
    new: bytes
    reason: str


@dataclass(slots=True)
class TaskDone:
    """``task_id`` reached a terminal state. ``error`` is {"code", "msg"} unless completed.

    ``maybe_ran``: a failed task whose provider went silent or died: it may have run (in part).
    ``lost_updates``: updates skipped because a gap in their sequence never filled.
    """

    task_id: bytes
    state: str
    output: Any = None
    error: dict[Any, Any] | None = None
    provider: bytes | None = None
    attempts: int = 0
    elapsed: float = 0.0
    maybe_ran: bool = False
    lost_updates: int = 0


class _ProviderStats:
    __slots__ = ("inflight", "load", "load_at", "ok", "bad", "busy_until")

    def __init__(self) -> None:
        self.inflight = 0
        self.load = 0.0
        self.load_at = -math.inf
        self.ok = 0.0
        self.bad = 0.0
        self.busy_until = -math.inf


class _Call:
    __slots__ = ("id", "spec", "wire", "provider", "state", "tried", "candidates", "attempts", "started",
                 "deadline", "next_seq", "buf", "gap_at", "last_heard", "lost", "heard", "busy_rounds", "retry_at",
                 "round_attempts", "excluded")

    def __init__(self, task_id: bytes, spec: TaskSpec, candidates: list[Candidate], now: float):
        self.id = task_id
        self.spec = spec
        self.wire = b""  # the id of the current attempt on the wire
        self.provider = b""
        self.state = SUBMITTED
        self.tried: set[bytes] = set()
        self.candidates = candidates
        self.attempts = 0
        self.started = now
        self.deadline = None if spec.deadline is None else now + spec.deadline
        self.next_seq = 1
        self.buf: dict[int, tuple[str, dict[Any, Any]]] = {}
        self.gap_at: float | None = None
        self.last_heard = now
        self.lost = 0
        self.heard = False  # any update of the current attempt arrived
        self.busy_rounds = 0  # rounds in which every candidate answered busy
        self.retry_at: float | None = None  # when the next round starts (no attempt in flight meanwhile)
        self.round_attempts = 0  # attempts since the last busy round: what max_attempts bounds
        self.excluded: set[bytes] = set()  # providers never to try again for this task (all but busy ones)


CALLER_STATS = (
    "submitted", "completed", "failed", "rejected", "canceled", "rerouted", "updates", "duplicates",
    "out_of_order", "reorder_overflow", "gaps_skipped", "unknown_task", "foreign", "malformed",
    "invalid_transition", "timeouts", "provider_gone", "busy_waits", "inputs",
)


class TaskCaller(CoreOutputs):
    """The caller half: scores providers, sends tasks, orders updates, fails over, reports outcomes."""

    def __init__(self, node_id: bytes, rng: random.Random, config: CallerConfig | None = None):
        super().__init__()
        self.node_id = node_id
        self._rng = rng
        self.config = config or CallerConfig()
        self._calls: dict[bytes, _Call] = {}  # task id -> call
        self._wires: dict[bytes, _Call] = {}  # wire id of the current attempt -> call
        self._providers: OrderedDict[bytes, _ProviderStats] = OrderedDict()
        self.stats = dict.fromkeys(CALLER_STATS, 0)

    # -- scoring -----------------------------------------------------------------------------

    def score(self, c: Candidate, now: float, max_cost: float) -> float:
        """Lower is better: weighted load, RTT, relative cost and failure rate, each in [0, 1]."""
        cfg = self.config
        w = cfg.weights
        st = self._providers.get(c.node_id)
        load = fail = 0.0  # an unknown provider is presumed idle and reliable until shown otherwise
        if st is not None:
            if c.max_concurrency:
                load = st.inflight / c.max_concurrency
            if now - st.load_at <= cfg.load_memory:
                load = max(load, st.load)
            if now < st.busy_until:
                load = max(load, 1.0)
            fail = st.bad / (st.ok + st.bad + 1.0)  # decayed counts: recent outcomes weigh most
        load = min(load, 1.0)
        rtt = 0.5 if c.rtt is None else c.rtt / (c.rtt + cfg.rtt_ref)
        cost = c.cost / max_cost if max_cost > 0 else 0.0
        return w.load * load + w.rtt * rtt + w.cost * cost + w.failure * fail

    def rank(self, candidates: Iterable[Candidate], now: float, exclude: set[bytes] | frozenset[bytes] = frozenset()) -> list[Candidate]:
        """Candidates best first; ties broken at random so equal providers share the work."""
        pool = [c for c in candidates if c.node_id not in exclude]
        if not pool:
            return []
        max_cost = max(c.cost for c in pool)
        keyed = [(self.score(c, now, max_cost), self._rng.random(), i) for i, c in enumerate(pool)]
        keyed.sort()
        return [pool[i] for _, _, i in keyed]

    # -- the application's side ---------------------------------------------------------------------

    def submit(self, spec: TaskSpec, candidates: Iterable[Candidate], now: float) -> bytes:
        """Start a task; returns its id. With no candidate it ends at once (rejected, no-provider)."""
        if len(self._calls) >= self.config.max_tasks:
            raise TooManyTasks(f"{len(self._calls)} tasks are unfinished (max_tasks {self.config.max_tasks})")
        if not 0 <= spec.priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be 0..{MAX_PRIORITY}")
        if spec.key is not None and not 0 < len(spec.key) <= MAX_KEY_LEN:
            raise ValueError(f"an idempotency key is 1..{MAX_KEY_LEN} characters or bytes")
        if spec.deadline is not None and not spec.deadline > 0:
            raise ValueError("a deadline is a positive number of seconds")
        size = packed_size(spec.input)
        if size is None:
            raise TaskTooLarge("the task input cannot be encoded (msgpack types only)")
        if size > self.config.max_input_bytes:
            raise TaskTooLarge(f"task input of {size} bytes exceeds the {self.config.max_input_bytes}-byte limit")
        task_id = self._new_id()
        call = _Call(task_id, spec, list(candidates), now)
        self._calls[task_id] = call
        self.stats["submitted"] += 1
        self._attempt(call, now, None)
        return task_id

    def cancel(self, task_id: bytes, now: float, reason: str = "canceled by the caller") -> bool:
        """Cancel: the provider is told to stop; the task ends canceled now. False if already done."""
        call = self._calls.get(task_id)
        if call is None:
            return False
        if call.provider:
            self._send(call.provider, CANCEL, {"id": call.wire, "why": reason[:MAX_REASON_LEN]})
        self._done(call, CANCELED, now, error=_err(E_CANCELED, reason))
        return True

    def provide_input(self, task_id: bytes, value: Any, now: float) -> None:
        """Answer a task waiting in input-required.

        InvalidTransition if it is not waiting (ended, or not asked); TaskTooLarge if ``value``
        cannot be encoded or packs to more than ``max_input_bytes`` (nothing is sent then).
        """
        call = self._calls.get(task_id)
        if call is None or call.state != INPUT_REQUIRED:
            raise InvalidTransition("the task is not waiting for input")
        size = packed_size(value)
        if size is None:
            raise TaskTooLarge("the answer cannot be encoded (msgpack types only)")
        if size > self.config.max_input_bytes:
            raise TaskTooLarge(f"an answer of {size} bytes exceeds the {self.config.max_input_bytes}-byte limit")
        self.stats["inputs"] += 1
        self._send(call.provider, INPUT, {"id": call.wire, "in": value})

    def state_of(self, task_id: bytes) -> str | None:
        call = self._calls.get(task_id)
        return None if call is None else call.state

    def unfinished(self) -> int:
        return len(self._calls)

    # -- input from providers and membership -----------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """A ``task.status`` or ``task.chunk`` from a provider."""
        body = env.body
        if env.type not in (STATUS, CHUNK) or not isinstance(body, dict) or not _is_id(body.get("id")):
            self.stats["malformed"] += 1
            return
        seq = body.get("seq")
        if type(seq) is not int or seq < 1:
            self.stats["malformed"] += 1
            return
        if env.type == STATUS and body.get("state") not in STATES:
            self.stats["malformed"] += 1
            return
        call = self._wires.get(body["id"])
        if call is None:
            self.stats["unknown_task"] += 1  # finished, canceled, or an old attempt's late update
            return
        if env.src != call.provider:
            self.stats["foreign"] += 1  # only the provider we sent the attempt to speaks for it
            return
        self.stats["updates"] += 1
        call.last_heard = now
        call.heard = True
        load: Any = body.get("load")
        if type(load) in (int, float) and 0 <= load < 1e6:
            st = self._stats_of(call.provider)
            st.load, st.load_at = float(load), now
        if seq < call.next_seq or seq in call.buf:
            self.stats["duplicates"] += 1
            return
        if seq > call.next_seq:
            if seq - call.next_seq > self.config.reorder_limit or len(call.buf) >= self.config.reorder_limit:
                # No room to wait for the hole: give up on it now (bounded memory), keep the order,
                # and never drop what did arrive (it may be the outcome).
                self.stats["reorder_overflow"] += 1
                self._skip_to(call, seq, now)
                if call.id in self._calls:
                    self._apply(call, env.type, body, now)
                    self._drain(call, now)
                return
            self.stats["out_of_order"] += 1
            call.buf[seq] = (env.type, body)
            if call.gap_at is None:
                call.gap_at = now + self.config.gap_timeout
            return
        self._apply(call, env.type, body, now)
        self._drain(call, now)

    def provider_gone(self, node_id: bytes, now: float) -> None:
        """Membership reports ``node_id`` failed or left, or delivery gave up on it."""
        for call in self._calls.values():
            if any(c.node_id == node_id for c in call.candidates):
                call.candidates = [c for c in call.candidates if c.node_id != node_id]
        for call in [c for c in self._calls.values() if c.provider == node_id]:
            self.stats["provider_gone"] += 1
            self._lost_provider(call, E_PROVIDER_GONE, f"provider {node_id.hex()[:12]} is gone", now)
        self._providers.pop(node_id, None)

    # -- timers ---------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Deadlines, accept/idle timeouts and gaps that did not fill."""
        cfg = self.config
        for call in list(self._calls.values()):
            if call.deadline is not None and now >= call.deadline:
                if call.provider:
                    self._send(call.provider, CANCEL, {"id": call.wire, "why": "deadline passed at the caller"})
                self._done(call, FAILED, now, error=_err(E_DEADLINE, f"no outcome within the {call.spec.deadline:g} s deadline"),
                           maybe_ran=call.heard or bool(call.provider))
                continue
            if call.retry_at is not None and now >= call.retry_at:
                call.retry_at = None
                self._attempt(call, now, None)
                continue
            if call.gap_at is not None and now >= call.gap_at:
                self._skip_gap(call, now)
                if call.id not in self._calls:
                    continue
            limit = self._silence_limit(call)
            if limit is not None and now - call.last_heard >= limit:
                self.stats["timeouts"] += 1
                self._lost_provider(call, E_TIMEOUT, f"provider {call.provider.hex()[:12]} said nothing for {limit:g} s", now)

    def next_timer(self) -> float | None:
        at = None
        for call in self._calls.values():
            for t in (call.deadline, call.gap_at, call.retry_at,
                      None if (lim := self._silence_limit(call)) is None else call.last_heard + lim):
                if t is not None and (at is None or t < at):
                    at = t
        return at

    def _silence_limit(self, call: _Call) -> float | None:
        if not call.provider:
            return None
        if not call.heard:
            return self.config.accept_timeout
        if call.state == INPUT_REQUIRED:
            return None  # the caller's turn
        return call.spec.idle_timeout

    # -- internals -----------------------------------------------------------------------------------

    def _apply(self, call: _Call, typ: str, body: dict[Any, Any], now: float) -> None:
        call.next_seq += 1
        if typ == CHUNK:
            if call.state not in (WORKING,):
                self.stats["invalid_transition"] += 1
                return
            self._events.append(Progress(call.id, call.next_seq - 1, body.get("data")))
            return
        state = body["state"]
        if state == SUBMITTED and call.state == SUBMITTED:
            self._events.append(StateChanged(call.id, SUBMITTED, call.provider))  # queued at the provider
            return
        if state not in TRANSITIONS[call.state]:
            self.stats["invalid_transition"] += 1
            return
        if state == REJECTED:
            err: Any = body.get("err") if isinstance(body.get("err"), dict) else _err(E_BAD_REQUEST, "rejected")
            code = err.get("code") if isinstance(err.get("code"), str) else "rejected"
            if code == E_BUSY:
                self._stats_of(call.provider).busy_until = now + self.config.busy_penalty
            # A rejected task never ran: always safe to try the next provider.
            self._reroute(call, code, now, final=(REJECTED, err, False))
            return
        if state in TERMINAL:
            err = body.get("err") if state != COMPLETED else None
            if state != COMPLETED and not isinstance(err, dict):
                err = _err(E_AGENT, state)
            if state == CANCELED and err.get("code") == E_PROVIDER_STOPPED and call.spec.idempotent:
                # The provider shut down under the task: like a provider that died, but said so.
                self._reroute(call, E_PROVIDER_STOPPED, now, final=(CANCELED, err, True))
                return
            self._done(call, state, now, output=body.get("out"), error=err,
                       maybe_ran=state == CANCELED and err.get("code") == E_PROVIDER_STOPPED)
            return
        call.state = state
        self._events.append(StateChanged(call.id, state, call.provider, body.get("prompt")))

    def _drain(self, call: _Call, now: float) -> None:
        buf = call.buf
        while buf and call.id in self._calls:
            nxt = buf.pop(call.next_seq, None)
            if nxt is None:
                break
            self._apply(call, nxt[0], nxt[1], now)
        if not buf:
            call.gap_at = None
        elif call.gap_at is None:
            call.gap_at = now + self.config.gap_timeout

    def _skip_gap(self, call: _Call, now: float) -> None:
        """A hole stayed open for gap_timeout: what it held is lost; go on from the next buffered update."""
        call.gap_at = None
        if call.buf:
            self.stats["gaps_skipped"] += 1
            low = min(call.buf)
            call.lost += low - call.next_seq
            call.next_seq = low
            self._drain(call, now)

    def _skip_to(self, call: _Call, seq: int, now: float) -> None:
        """Apply everything buffered below ``seq`` in order, counting the holes as lost; next expected is ``seq``."""
        buf = call.buf
        for s in sorted(k for k in buf if k < seq):
            if call.id not in self._calls:
                return
            call.lost += s - call.next_seq
            call.next_seq = s
            typ, body = buf.pop(s)
            self._apply(call, typ, body, now)
        call.lost += seq - call.next_seq
        call.next_seq = seq
        if not buf:
            call.gap_at = None

    def _lost_provider(self, call: _Call, code: str, message: str, now: float) -> None:
        """The provider went silent or away: re-send only where that cannot run the task twice."""
        spec = call.spec
        if spec.idempotent:
            if code != E_PROVIDER_GONE:  # a silent provider may still be working on it: stop it
                self._send(call.provider, CANCEL, {"id": call.wire, "why": message})
            self._reroute(call, code, now, final=(FAILED, _err(code, message), True))
        elif spec.key is not None and code == E_TIMEOUT and call.round_attempts < self.config.max_attempts:
            # The provider may be alive but slow to answer: ask it again under the same key; it
            # attaches us to the running task or replays its result rather than running it twice.
            self._resend_same(call, now)
        else:
            self._done(call, FAILED, now, error=_err(code, message + "; not re-sent: the task is not idempotent"),
                       maybe_ran=True)

    def _reroute(self, call: _Call, code: str, now: float, *, final: tuple[str, dict[Any, Any], bool]) -> None:
        old = call.provider
        if code != E_BUSY:  # busy is load, scored for busy_penalty seconds, not unreliability
            self._record(old, ok=False)
            call.excluded.add(old)
        if call.round_attempts < self.config.max_attempts:
            ranked = self.rank(call.candidates, now, call.tried)
            if ranked:
                self._attempt(call, now, ranked[0])
                self.stats["rerouted"] += 1
                self._events.append(Rerouted(call.id, old, ranked[0].node_id, code))
                return
        busy_here = [n for n in call.tried if n not in call.excluded]  # answered busy this round
        if busy_here and now - call.started < self.config.busy_wait and (
                call.deadline is None or now < call.deadline):
            # Every provider is full and none ran it: wait for room and go round again, rather than
            # fail a task that only came at a busy moment.
            self._wires.pop(call.wire, None)
            call.wire = b""
            self._stats_of(old).inflight -= 1
            call.provider = b""
            call.tried = set(call.excluded)
            call.busy_rounds += 1
            call.round_attempts = 0
            self.stats["busy_waits"] += 1
            delay = min(self.config.busy_retry * 2 ** (call.busy_rounds - 1), self.config.busy_retry_max)
            call.retry_at = now + delay * (0.5 + self._rng.random())
            return
        state, err, maybe = final
        self._done(call, state, now, error=err, maybe_ran=maybe)

    def _attempt(self, call: _Call, now: float, chosen: Candidate | None) -> None:
        if chosen is None:
            ranked = self.rank(call.candidates, now, call.tried)
            if not ranked:
                self._done(call, REJECTED, now, error=_err(E_NO_PROVIDER, f"no provider offers {call.spec.capability!r}"))
                return
            chosen = ranked[0]
        call.tried.add(chosen.node_id)
        self._wire_to(call, chosen.node_id, now)

    def _resend_same(self, call: _Call, now: float) -> None:
        self._wire_to(call, call.provider, now)

    def _wire_to(self, call: _Call, provider: bytes, now: float) -> None:
        if call.wire:
            self._wires.pop(call.wire, None)
            if call.provider:
                self._stats_of(call.provider).inflight -= 1
        call.attempts += 1
        call.round_attempts += 1
        call.wire = self._new_id()
        call.provider = provider
        call.state = SUBMITTED
        call.next_seq = 1
        call.buf.clear()
        call.gap_at = None
        call.heard = False
        call.last_heard = now
        self._wires[call.wire] = call
        self._stats_of(provider).inflight += 1
        spec = call.spec
        body: dict[str, Any] = {"id": call.wire, "cap": spec.capability, "in": spec.input}
        if spec.key is not None:
            body["key"] = spec.key
        if call.deadline is not None:
            body["ttl"] = max(1, int((call.deadline - now) * 1000))
        if spec.priority:
            body["prio"] = spec.priority
        if not spec.stream:
            body["stream"] = False
        self._send(provider, SUBMIT, body)

    def _done(self, call: _Call, state: str, now: float, *, output: Any = None, error: dict[Any, Any] | None = None,
              maybe_ran: bool = False) -> None:
        del self._calls[call.id]
        if call.wire:
            self._wires.pop(call.wire, None)
        if call.provider:
            st = self._stats_of(call.provider)
            st.inflight -= 1
            if state == COMPLETED:
                self._record(call.provider, ok=True)
            elif state == FAILED:
                self._record(call.provider, ok=False)
        self.stats[state] += 1
        call.state = state
        self._events.append(TaskDone(call.id, state, output, error, call.provider or None, call.attempts,
                                     now - call.started, maybe_ran, call.lost))

    def _record(self, provider: bytes, *, ok: bool) -> None:
        st = self._stats_of(provider)
        d = self.config.success_decay
        st.ok *= d
        st.bad *= d
        if ok:
            st.ok += 1.0
        else:
            st.bad += 1.0

    def _stats_of(self, provider: bytes) -> _ProviderStats:
        st = self._providers.get(provider)
        if st is None:
            st = self._providers[provider] = _ProviderStats()
            if len(self._providers) > self.config.max_providers:
                self._providers.popitem(last=False)
        else:
            self._providers.move_to_end(provider)
        return st

    def _send(self, dst: bytes, typ: str, body: dict[Any, Any]) -> None:
        self._out.append(Envelope(self._new_id(), self.node_id, typ, body, dst))

    def _new_id(self) -> bytes:
        return self._rng.getrandbits(128).to_bytes(16, "big")
