"""The caller half of tasks (sans-IO): pick a provider, send the task, put its updates back in order,
and fail over when that is safe.

:class:`TaskCaller` scores the candidate providers, sends the task, puts the numbered updates back in
order (dropping duplicates, skipping a gap that does not fill), times out silent providers, and fails over
to the next provider when the task provably never ran (a rejection), or when the caller said it may run
twice. The shared states and codes are in :mod:`zmqagents.core.tasks_states`; the wire rules in
``protocols/tasks.md``.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..envelope import Envelope
from .outputs import CoreOutputs
from .tasks_states import (
    CANCEL, CANCELED, CHUNK, COMPLETED, E_AGENT, E_BAD_REQUEST, E_BUSY, E_CANCELED, E_DEADLINE, E_NO_PROVIDER,
    E_PROVIDER_GONE, E_PROVIDER_STOPPED, E_TIMEOUT, FAILED, INPUT, INPUT_REQUIRED, MAX_KEY_LEN, MAX_PRIORITY,
    MAX_REASON_LEN, REJECTED, STATES, STATUS, SUBMIT, SUBMITTED, TERMINAL, TRANSITIONS, WORKING,
    InvalidTransition, TaskTooLarge, TooManyTasks, error_body, is_task_id, packed_size,
)
from ..errors import InvalidArgument


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
            raise InvalidArgument("CallerConfig needs max_attempts, reorder_limit and max_tasks >= 1")
        if not 0 < self.success_decay < 1:
            raise InvalidArgument("CallerConfig.success_decay must be in (0, 1)")


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
            raise InvalidArgument(f"priority must be 0..{MAX_PRIORITY}")
        if spec.key is not None and not 0 < len(spec.key) <= MAX_KEY_LEN:
            raise InvalidArgument(f"an idempotency key is 1..{MAX_KEY_LEN} characters or bytes")
        if spec.deadline is not None and not spec.deadline > 0:
            raise InvalidArgument("a deadline is a positive number of seconds")
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
        self._done(call, CANCELED, now, error=error_body(E_CANCELED, reason))
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
        if env.type not in (STATUS, CHUNK) or not isinstance(body, dict) or not is_task_id(body.get("id")):
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
                self._done(call, FAILED, now, error=error_body(E_DEADLINE, f"no outcome within the {call.spec.deadline:g} s deadline"),
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
            err: Any = body.get("err") if isinstance(body.get("err"), dict) else error_body(E_BAD_REQUEST, "rejected")
            code = err.get("code") if isinstance(err.get("code"), str) else "rejected"
            if code == E_BUSY:
                self._stats_of(call.provider).busy_until = now + self.config.busy_penalty
            # A rejected task never ran: always safe to try the next provider.
            self._reroute(call, code, now, final=(REJECTED, err, False))
            return
        if state in TERMINAL:
            err = body.get("err") if state != COMPLETED else None
            if state != COMPLETED and not isinstance(err, dict):
                err = error_body(E_AGENT, state)
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
            self._reroute(call, code, now, final=(FAILED, error_body(code, message), True))
        elif spec.key is not None and code == E_TIMEOUT and call.round_attempts < self.config.max_attempts:
            # The provider may be alive but slow to answer: ask it again under the same key; it
            # attaches us to the running task or replays its result rather than running it twice.
            self._resend_same(call, now)
        else:
            self._done(call, FAILED, now, error=error_body(code, message + "; not re-sent: the task is not idempotent"),
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
                self._done(call, REJECTED, now, error=error_body(E_NO_PROVIDER, f"no provider offers {call.spec.capability!r}"))
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
