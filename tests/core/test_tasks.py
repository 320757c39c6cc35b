"""Unit tests of the sans-IO task cores (caller and provider), wired together on a fake clock."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqagents.core import tasks as T
from zmqagents.core.tasks import (
    COMPLETED, FAILED, CANCELED, REJECTED, WORKING, INPUT_REQUIRED, SUBMITTED,
    CallerConfig, Candidate, CapabilityPolicy, InvalidTransition, Progress, ProviderConfig, Rerouted,
    StartTask, StateChanged, StopTask, TaskCaller, TaskDone, TaskInput, TaskProvider, TaskSpec,
    TaskTooLarge, Weights,
)
from zmqagents.envelope import Envelope

from helpers.fakenet import DirectNet

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "protocols" / "tasks-vectors.json").read_text())

C = bytes([0xC] * 32)  # the caller
P1 = bytes([0x1] * 32)
P2 = bytes([0x2] * 32)
P3 = bytes([0x3] * 32)


class Mesh(DirectNet):
    """One caller and some providers passing envelopes directly (through encode/decode: bytes in bodies
    stay bytes), on a fake clock. ``events``: the caller's; ``pevents``: each provider's.

    ``hold(env)`` returns True to keep an envelope back (released by ``release``), so tests can
    reorder, drop or duplicate what the task layer sees.
    """

    def __init__(self, *providers: bytes, caller_config: CallerConfig | None = None,
                 provider_config: ProviderConfig | None = None, policy: CapabilityPolicy | None = None):
        self.caller = TaskCaller(C, random.Random(1), caller_config)
        self.providers = {p: TaskProvider(p, random.Random(i), provider_config) for i, p in enumerate(providers)}
        super().__init__([self.caller, *self.providers.values()], encode=True)
        for prov in self.providers.values():
            prov.offer("echo", policy)
        self.events = self.reported[C]
        self.pevents = self.reported
        self.held: list[Envelope] = []
        self.hold: Callable[[Envelope], bool] = lambda env: False
        self.drop = self._held

    def _held(self, env: Envelope) -> bool:
        if self.hold(env):
            self.held.append(env)
            return True
        return False

    def release(self, order: Callable[[list], list] = lambda x: x) -> None:
        held, self.held = self.held, []
        for env in order(held):
            self.deliver(env)
        self.flush()

    def tick_all(self, dt: float) -> None:
        """``dt`` seconds later, one tick of every core (not each timer at its own time)."""
        self.now += dt
        self.caller.tick(self.now)
        for prov in self.providers.values():
            prov.tick(self.now)
        self.flush()

    def submit(self, spec: TaskSpec, providers=None) -> bytes:
        cands = [Candidate(p) for p in (providers or self.providers)]
        tid = self.caller.submit(spec, cands, self.now)
        self.flush()
        return tid

    def starts(self, pid: bytes) -> list[StartTask]:
        return [e for e in self.pevents[pid] if isinstance(e, StartTask)]

    def done(self) -> list[TaskDone]:
        return [e for e in self.events if isinstance(e, TaskDone)]


# -- the transition table ----------------------------------------------------------------------------


def test_transition_table_matches_the_spec_vectors():
    assert list(T.STATES) == VECTORS["states"]
    assert {k: sorted(v) for k, v in T.TRANSITIONS.items()} == {k: sorted(v) for k, v in VECTORS["transitions"].items()}
    assert sorted(T.TERMINAL) == sorted(s for s, nxt in VECTORS["transitions"].items() if not nxt)


@pytest.mark.parametrize("old", T.STATES)
@pytest.mark.parametrize("new", T.STATES)
def test_check_transition_follows_the_table(old, new):
    if new in VECTORS["transitions"][old]:
        T.check_transition(old, new)
    else:
        with pytest.raises(InvalidTransition):
            T.check_transition(old, new)


@pytest.mark.parametrize("case", VECTORS["submit"], ids=lambda c: c["name"])
def test_submit_vectors(case):
    """Each vector body is admitted or rejected with the code the spec names."""
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo", CapabilityPolicy(max_concurrency=1))
    body = dict(case["body"])
    if "id" in body:
        body["id"] = bytes.fromhex(body["id"])
    prov.receive(Envelope(b"\0" * 16, C, T.SUBMIT, body, P1), 0.0)
    out = prov.take_outgoing()
    if case["expect"] == "dropped":
        assert out == [] and prov.stats["malformed"] == 1
        return
    assert len(out) == 1 and out[0].type == T.STATUS and out[0].dst == C
    assert out[0].body["state"] == case["expect"] and out[0].body["seq"] == 1
    if case["expect"] == REJECTED:
        assert out[0].body["err"]["code"] == case["code"]
    else:
        assert [type(e) for e in prov.take_events()] == [StartTask]


@pytest.mark.parametrize("case", VECTORS["deadline"], ids=lambda c: c["name"])
def test_deadline_vectors(case):
    """A caller that never cancels: the provider's own deadline decides what runs (tasks.md §4)."""
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo", CapabilityPolicy(max_concurrency=case["max_concurrency"], queue=case["queue"]))
    statuses: dict[str, list[str]] = {}
    started: list[str] = []

    def drain() -> None:
        for env in prov.take_outgoing():
            b = env.body
            state = b["state"] + (":" + b["err"]["code"] if b["state"] == FAILED else "")
            statuses.setdefault(b["id"].hex(), []).append(state)
        started.extend(e.task_id.hex() for e in prov.take_events() if isinstance(e, StartTask))

    for op, ms, *rest in case["steps"]:
        now = ms / 1000
        arg = rest[0] if rest else None
        if op == "submit":
            body = dict(arg, id=bytes.fromhex(arg["id"]))
            prov.receive(Envelope(b"\0" * 16, C, T.SUBMIT, body, P1), now)
        elif op == "complete":
            assert prov.complete(bytes.fromhex(arg), arg, now)
        else:
            prov.tick(now)
        drain()
    assert statuses == case["statuses"]
    assert started == case["started"]


# -- the happy path, ordering, duplicates, gaps --------------------------------------------------------


def test_progress_then_completion_in_order():
    m = Mesh(P1)
    tid = m.submit(TaskSpec("echo", {"x": 1}))
    (start,) = m.starts(P1)
    assert start.input == {"x": 1} and start.caller == C and start.capability == "echo"
    prov = m.providers[P1]
    for i in range(3):
        assert prov.progress(start.task_id, f"part {i}", m.now)
    assert prov.complete(start.task_id, {"y": 2}, m.now)
    m.flush()
    kinds = [(type(e).__name__, getattr(e, "data", getattr(e, "state", None))) for e in m.events]
    assert kinds == [("StateChanged", WORKING), ("Progress", "part 0"), ("Progress", "part 1"), ("Progress", "part 2"),
                     ("TaskDone", COMPLETED)]
    (done,) = m.done()
    assert done.task_id == tid and done.output == {"y": 2} and done.provider == P1 and done.attempts == 1
    assert m.caller.unfinished() == 0 and prov.active() == 0 and prov.load("echo") == 0


def test_updates_reordered_on_the_way_come_out_in_order():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1))
    (start,) = m.starts(P1)
    m.hold = lambda env: env.dst == C
    prov = m.providers[P1]
    for i in range(5):
        prov.progress(start.task_id, i, m.now)
    prov.complete(start.task_id, "end", m.now)
    m.flush()
    m.release(lambda held: held[::-1])  # the completion arrives first
    assert [e.data for e in m.events if isinstance(e, Progress)] == [0, 1, 2, 3, 4]
    assert [e.seq for e in m.events if isinstance(e, Progress)] == [2, 3, 4, 5, 6]
    assert m.done()[0].state == COMPLETED and m.done()[0].lost_updates == 0
    assert m.caller.stats["out_of_order"] == 5  # all but the first chunk wait in the buffer


def test_duplicate_updates_are_counted_not_repeated():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1))
    (start,) = m.starts(P1)
    m.hold = lambda env: env.dst == C
    m.providers[P1].progress(start.task_id, "a", m.now)
    m.flush()
    m.release(lambda held: held + held + held)
    assert [e.data for e in m.events if isinstance(e, Progress)] == ["a"]
    assert m.caller.stats["duplicates"] == 2


def test_a_gap_that_does_not_fill_is_skipped_after_gap_timeout():
    m = Mesh(P1, caller_config=CallerConfig(gap_timeout=1.0))
    m.submit(TaskSpec("echo", 1))
    (start,) = m.starts(P1)
    m.hold = lambda env: env.type == T.CHUNK and env.body["data"] == "lost"
    prov = m.providers[P1]
    prov.progress(start.task_id, "lost", m.now)
    prov.progress(start.task_id, "kept", m.now)
    prov.complete(start.task_id, "out", m.now)
    m.flush()
    assert m.done() == []  # the completion waits behind the hole
    assert m.caller.next_timer() == pytest.approx(1.0)
    m.tick_all(0.9)
    assert m.done() == []
    m.tick_all(0.2)
    assert [e.data for e in m.events if isinstance(e, Progress)] == ["kept"]
    (done,) = m.done()
    assert done.state == COMPLETED and done.lost_updates == 1
    assert m.caller.stats["gaps_skipped"] == 1
    m.release()  # the lost chunk turns up after all: its task is finished
    assert m.caller.stats["unknown_task"] == 1


def test_reorder_overflow_is_bounded_and_counted():
    m = Mesh(P1, caller_config=CallerConfig(reorder_limit=4, gap_timeout=1.0))
    m.submit(TaskSpec("echo", 1))
    (start,) = m.starts(P1)
    first = [True]

    def hold(env):
        if env.type == T.CHUNK and first[0]:
            first[0] = False
            return True
        return False

    m.hold = hold
    for i in range(10):
        m.providers[P1].progress(start.task_id, i, m.now)
    m.flush()
    # chunks 1..4 wait behind the hole left by chunk 0; chunk 5 finds no room: the hole is given up,
    # and everything goes on in order without waiting
    assert m.caller.stats["reorder_overflow"] == 1
    assert [e.data for e in m.events if isinstance(e, Progress)] == list(range(1, 10))
    assert next(iter(m.caller._calls.values())).buf == {}
    m.providers[P1].complete(start.task_id, "end", m.now)
    m.flush()
    assert m.done()[0].lost_updates == 1
    m.release()  # chunk 0 turns up late: a duplicate now
    assert m.caller.stats["duplicates"] == 0 and m.caller.stats["unknown_task"] == 1


def test_an_update_far_ahead_skips_the_hole_rather_than_being_dropped():
    m = Mesh(P1, caller_config=CallerConfig(reorder_limit=4))
    m.submit(TaskSpec("echo", 1))
    (start,) = m.starts(P1)
    m.hold = lambda env: env.type == T.CHUNK
    for i in range(6):
        m.providers[P1].progress(start.task_id, i, m.now)
    m.providers[P1].complete(start.task_id, "end", m.now)  # seq 8, 6 ahead of the expected 2
    m.flush()
    (done,) = m.done()
    assert done.output == "end" and done.lost_updates == 6  # the skipped hole and the five dropped for want of room


def test_updates_from_another_node_or_for_unknown_tasks_are_dropped():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1))
    (start,) = m.starts(P1)
    wire_id = start.task_id
    m.caller.receive(Envelope(b"\1" * 16, P2, T.STATUS, {"id": wire_id, "seq": 2, "state": COMPLETED, "out": "forged"}, C), 0)
    m.caller.receive(Envelope(b"\2" * 16, P1, T.STATUS, {"id": b"\x09" * 16, "seq": 1, "state": COMPLETED}, C), 0)
    assert m.caller.stats["foreign"] == 1 and m.caller.stats["unknown_task"] == 1
    assert m.caller.take_events() == []


def test_invalid_transitions_from_a_provider_are_dropped():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1))
    (start,) = m.starts(P1)
    wire_id = start.task_id
    # seq 2: back to submitted after working; seq 3: a completion, accepted
    m.caller.receive(Envelope(b"\1" * 16, P1, T.STATUS, {"id": wire_id, "seq": 2, "state": SUBMITTED}, C), 0)
    m.caller.receive(Envelope(b"\2" * 16, P1, T.STATUS, {"id": wire_id, "seq": 3, "state": INPUT_REQUIRED}, C), 0)
    m.caller.receive(Envelope(b"\3" * 16, P1, T.CHUNK, {"id": wire_id, "seq": 4, "data": "x"}, C), 0)
    assert m.caller.stats["invalid_transition"] == 2  # submitted after working; a chunk while input-required
    events = m.caller.take_events()
    assert [type(e) for e in events] == [StateChanged]  # only input-required


def test_provider_refuses_reports_that_break_the_table():
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo")
    prov.receive(Envelope(b"\0" * 16, C, T.SUBMIT, {"id": b"t" * 16, "cap": "echo", "in": 1}, P1), 0)
    assert prov.need_input(b"t" * 16, "more?", 0)
    with pytest.raises(InvalidTransition):
        prov.progress(b"t" * 16, "chunk while waiting for input", 0)
    with pytest.raises(InvalidTransition):
        prov.complete(b"t" * 16, "completed without the input it asked for", 0)
    assert prov.fail(b"t" * 16, "gave up waiting", 0)
    assert prov.complete(b"t" * 16, "again", 0) is False  # finished: a late report is ignored
    assert prov.progress(b"u" * 16, "x", 0) is False and prov.fail(b"u" * 16, "x", 0) is False
    assert prov.stats["late_report"] >= 3


# -- provider admission: capability, allow list, concurrency, queue, priority ---------------------------


def test_unknown_capability_and_no_provider():
    m = Mesh(P1)
    m.submit(TaskSpec("nope", 1))
    (done,) = m.done()
    assert done.state == REJECTED and done.error["code"] == T.E_UNKNOWN_CAPABILITY
    m.events.clear()
    m.caller.submit(TaskSpec("echo", 1), [], m.now)
    m.flush()
    (done,) = m.done()
    assert done.state == REJECTED and done.error["code"] == T.E_NO_PROVIDER and done.provider is None


def test_caller_not_on_the_allow_list_is_rejected_with_a_reason():
    m = Mesh(P1, policy=CapabilityPolicy(allow=frozenset({P2})))
    m.submit(TaskSpec("echo", 1))
    (done,) = m.done()
    assert done.state == REJECTED and done.error["code"] == T.E_DENIED and "allow list" in done.error["msg"]
    assert m.starts(P1) == [] and m.providers[P1].stats["denied"] == 1


def test_allow_list_groups_admit_members_and_the_denial_names_the_groups():
    m = Mesh(P1, policy=CapabilityPolicy(allow=frozenset({P3, "ops", "admins"})))
    provider = m.providers[P1]
    m.submit(TaskSpec("echo", 1))
    (done,) = m.done()
    assert done.state == REJECTED and done.error["code"] == T.E_DENIED
    msg = done.error["msg"]
    assert "allow list of 'echo'" in msg and "@admins, @ops" in msg and "not defined on this provider: @admins, @ops" in msg
    provider.set_group("ops", {C})  # the caller (C) joins a named group: admitted from now on
    m.events.clear()
    m.submit(TaskSpec("echo", 2))
    assert [s.input for s in m.starts(P1)] == [2]
    provider.set_group("ops", {P3})  # membership changes take effect for the next submit
    m.events.clear()
    m.submit(TaskSpec("echo", 3))
    (done,) = m.done()
    assert done.state == REJECTED and "not defined on this provider: @admins)" in done.error["msg"]
    assert provider.stats["denied"] == 2
    with pytest.raises(ValueError, match="group name"):
        provider.set_group("@ops", {P2})
    with pytest.raises(ValueError, match="32-byte"):
        provider.set_group("ops", {b"short"})
    with pytest.raises(ValueError, match="group name"):
        CapabilityPolicy(allow=frozenset({"has space"}))


def test_full_provider_rejects_and_the_caller_routes_to_another():
    m = Mesh(P1, P2, policy=CapabilityPolicy(max_concurrency=1))
    m.caller.submit(TaskSpec("echo", "a"), [Candidate(P1)], m.now)
    m.flush()
    assert len(m.starts(P1)) == 1
    tid = m.caller.submit(TaskSpec("echo", "b"), [Candidate(P1), Candidate(P2)], m.now)
    # The caller counts its own in-flight task at P1 only if it knows P1's limit; make the first choice P1.
    m.flush()
    got = [e for e in m.events if isinstance(e, Rerouted)]
    if got:  # it tried P1 first: busy, then P2
        assert got[0].task_id == tid and got[0].old == P1 and got[0].new == P2 and got[0].reason == T.E_BUSY
        assert m.providers[P1].stats["busy"] == 1
    assert [s.input for s in m.starts(P2)] == ["b"]


def test_busy_everywhere_ends_rejected_without_busy_wait():
    m = Mesh(P1, policy=CapabilityPolicy(max_concurrency=1), caller_config=CallerConfig(busy_wait=0))
    m.submit(TaskSpec("echo", "a"))
    m.submit(TaskSpec("echo", "b"))
    (done,) = m.done()
    assert done.state == REJECTED and done.error["code"] == T.E_BUSY and done.attempts == 1


def test_busy_everywhere_waits_for_room_then_runs():
    m = Mesh(P1, P2, policy=CapabilityPolicy(max_concurrency=1), caller_config=CallerConfig(busy_wait=5.0))
    m.submit(TaskSpec("echo", "a"), [P1])
    m.submit(TaskSpec("echo", "b"), [P2])
    tid = m.submit(TaskSpec("echo", "c"))
    assert m.done() == [] and m.caller.stats["busy_waits"] == 1
    assert m.caller.next_timer() is not None and m.caller.next_timer() <= 0.15
    m.tick_all(0.2)  # a second round: still busy everywhere
    assert m.caller.stats["busy_waits"] == 2 and m.done() == []
    (a,) = m.starts(P1)
    m.providers[P1].complete(a.task_id, "A", m.now)
    m.flush()
    m.tick_all(0.5)
    assert [s.input for s in m.starts(P1)] == ["a", "c"]
    m.providers[P1].complete(m.starts(P1)[1].task_id, "C", m.now)
    m.flush()
    done = {d.task_id: d for d in m.done()}
    assert done[tid].state == COMPLETED and done[tid].output == "C" and done[tid].attempts >= 5  # two busy rounds of two, then P1


def test_idempotent_task_waits_for_a_busy_provider_when_the_other_one_is_silent():
    m = Mesh(P1, P2, policy=CapabilityPolicy(max_concurrency=1),
             caller_config=CallerConfig(accept_timeout=1.0, busy_wait=10.0))
    m.submit(TaskSpec("echo", "a"), [P1])
    m.hold = lambda env: env.dst == P2  # P2 died without anyone noticing yet
    tid = m.submit(TaskSpec("echo", "c", idempotent=True))
    for _ in range(15):
        m.tick_all(0.1)
    assert m.done() == []  # P2 timed out (excluded for good), P1 answers busy: wait for room
    (a,) = m.starts(P1)
    m.providers[P1].complete(a.task_id, "A", m.now)
    m.flush()
    for _ in range(30):
        m.tick_all(0.1)
    starts = m.starts(P1)
    assert [s.input for s in starts] == ["a", "c"]
    m.providers[P1].complete(starts[1].task_id, "C", m.now)
    m.flush()
    done = {d.task_id: d for d in m.done()}
    assert done[tid].state == COMPLETED and done[tid].provider == P1


def test_busy_wait_is_bounded():
    m = Mesh(P1, policy=CapabilityPolicy(max_concurrency=1), caller_config=CallerConfig(busy_wait=1.0))
    m.submit(TaskSpec("echo", "a"))
    m.submit(TaskSpec("echo", "b"))
    for _ in range(40):
        m.tick_all(0.1)
    (done,) = m.done()
    assert done.state == REJECTED and done.error["code"] == T.E_BUSY and done.elapsed >= 1.0


def test_queue_runs_waiting_tasks_by_priority():
    m = Mesh(P1, policy=CapabilityPolicy(max_concurrency=1, queue=3), caller_config=CallerConfig(busy_wait=0))
    m.submit(TaskSpec("echo", "first"))
    for name, prio in (("low", 0), ("high", 9), ("mid", 5)):
        m.submit(TaskSpec("echo", name, priority=prio))
    m.submit(TaskSpec("echo", "overflow"))
    assert [d.error["code"] for d in m.done()] == [T.E_BUSY]
    assert [e.state for e in m.events if isinstance(e, StateChanged)].count(SUBMITTED) == 3
    prov = m.providers[P1]
    assert prov.load("echo") == 4.0
    order = []
    for _ in range(4):
        start = m.starts(P1)[len(order)]
        order.append(start.input)
        prov.complete(start.task_id, start.input, m.now)
        m.flush()
    assert order == ["first", "high", "mid", "low"]
    assert [d.output for d in m.done() if d.state == COMPLETED] == order


# -- cancel, deadline, input-required -----------------------------------------------------------------


def test_cancel_stops_the_agent_and_frees_the_slot():
    m = Mesh(P1, policy=CapabilityPolicy(max_concurrency=1))
    tid = m.submit(TaskSpec("echo", 1))
    (start,) = m.starts(P1)
    assert m.caller.cancel(tid, m.now)
    m.flush()
    (done,) = m.done()
    assert done.state == CANCELED
    assert [e for e in m.pevents[P1] if isinstance(e, StopTask)] == [StopTask(start.task_id, T.E_CANCELED)]
    assert m.providers[P1].load("echo") == 0
    assert m.providers[P1].complete(start.task_id, "too late", m.now) is False
    assert m.caller.cancel(tid, m.now) is False
    m.submit(TaskSpec("echo", 2))
    assert len(m.starts(P1)) == 2


def test_only_the_submitting_caller_may_cancel():
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo")
    prov.receive(Envelope(b"\0" * 16, C, T.SUBMIT, {"id": b"t" * 16, "cap": "echo"}, P1), 0)
    prov.receive(Envelope(b"\1" * 16, P2, T.CANCEL, {"id": b"t" * 16}, P1), 0)
    assert prov.stats["not_owner"] == 1 and prov.active() == 1


def test_deadline_at_the_provider_fails_and_stops_the_task():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1, deadline=5.0))
    (start,) = m.starts(P1)
    assert start.deadline == pytest.approx(5.0)
    assert m.providers[P1].next_timer() == pytest.approx(5.0)
    m.hold = lambda env: env.dst == C  # the caller hears nothing: its own deadline is equal
    m.tick_all(5.0)
    assert [e for e in m.pevents[P1] if isinstance(e, StopTask)] == [StopTask(start.task_id, T.E_DEADLINE)]
    (done,) = m.done()
    assert done.state == FAILED and done.error["code"] == T.E_DEADLINE


def _submit_raw(prov: TaskProvider, n: int, now: float, **body) -> bytes:
    """A task.submit from the caller C straight into ``prov`` (no caller core: nobody cancels it)."""
    wire = bytes([n]) * 16
    prov.receive(Envelope(bytes([n, 0xFF]) * 8, C, T.SUBMIT, {"id": wire, "cap": "echo", **body}, P1), now)
    return wire


def _statuses(prov: TaskProvider, wire: bytes) -> list[dict]:
    return [e.body for e in prov.take_outgoing() if e.type == T.STATUS and e.body["id"] == wire]


def test_a_queued_task_whose_deadline_passes_is_never_run():
    """The caller gave up while its task waited for a slot (its cancel lost, or it is gone): the provider
    fails the task at the deadline without starting it, says so, and counts it as expired."""
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo", CapabilityPolicy(max_concurrency=1, queue=2))
    first = _submit_raw(prov, 1, 0.0)
    late = _submit_raw(prov, 2, 0.0, ttl=300)
    assert [s["state"] for s in _statuses(prov, late)] == [SUBMITTED]
    prov.tick(0.3)
    (end,) = _statuses(prov, late)
    assert end["state"] == FAILED and end["err"]["code"] == T.E_DEADLINE and "not run" in end["err"]["msg"]
    assert prov.stats["expired"] == 1 and prov.stats["deadline"] == 1
    prov.complete(first, "done", 1.0)
    assert [e.task_id for e in prov.take_events() if isinstance(e, StartTask)] == [first]  # only the first ran


def test_a_queued_task_past_its_deadline_is_not_started_when_a_slot_frees_before_its_timer():
    """The driver was late (a stalled loop): the slot frees after the queued task's deadline but before
    the tick that would fail it. It is expired, not started, and the next queued task runs instead."""
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo", CapabilityPolicy(max_concurrency=1, queue=2))
    first = _submit_raw(prov, 1, 0.0)
    late = _submit_raw(prov, 2, 0.0, ttl=100, prio=9)
    patient = _submit_raw(prov, 3, 0.0)
    prov.take_outgoing()
    prov.complete(first, "done", 0.5)  # no tick in between
    starts = [e.task_id for e in prov.take_events() if isinstance(e, StartTask)]
    assert starts == [first, patient]
    (end,) = _statuses(prov, late)
    assert end["state"] == FAILED and end["err"]["code"] == T.E_DEADLINE
    assert prov.stats["expired"] == 1 and prov.load("echo") == 1.0


def test_a_running_task_at_its_deadline_is_not_counted_as_expired():
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo", CapabilityPolicy(max_concurrency=1))
    _submit_raw(prov, 1, 0.0, ttl=100)
    prov.tick(0.1)
    assert prov.stats["deadline"] == 1 and prov.stats["expired"] == 0


def test_input_required_round_trip():
    m = Mesh(P1)
    tid = m.submit(TaskSpec("echo", "q"))
    (start,) = m.starts(P1)
    m.providers[P1].need_input(start.task_id, "which one?", m.now)
    m.flush()
    assert m.events[-1] == StateChanged(tid, INPUT_REQUIRED, P1, "which one?")
    m.caller.provide_input(tid, "the second", m.now)
    m.flush()
    assert [e for e in m.pevents[P1] if isinstance(e, TaskInput)] == [TaskInput(start.task_id, "the second")]
    assert m.caller.state_of(tid) == WORKING
    with pytest.raises(InvalidTransition):
        m.caller.provide_input(tid, "again", m.now)


def test_input_for_a_task_not_waiting_is_counted():
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo")
    prov.receive(Envelope(b"\0" * 16, C, T.SUBMIT, {"id": b"t" * 16, "cap": "echo"}, P1), 0)
    prov.receive(Envelope(b"\1" * 16, C, T.INPUT, {"id": b"t" * 16, "in": 1}, P1), 0)
    assert prov.stats["bad_input_state"] == 1


def test_deadline_and_cancel_end_a_task_waiting_for_input():
    m = Mesh(P1)
    waiting = m.submit(TaskSpec("echo", 1, deadline=5.0))
    asked = m.submit(TaskSpec("echo", 2))
    first, second = m.starts(P1)
    for start in (first, second):
        assert m.providers[P1].need_input(start.task_id, "?", m.now)
    m.flush()
    assert m.caller.state_of(waiting) == m.caller.state_of(asked) == INPUT_REQUIRED
    assert m.caller.next_timer() == pytest.approx(5.0)  # no idle timeout while it is the caller's turn
    m.tick_all(5.0)
    assert m.caller.cancel(asked, m.now, "no answer")
    m.flush()
    done = {d.task_id: d for d in m.done()}
    assert done[waiting].state == FAILED and done[waiting].error["code"] == T.E_DEADLINE
    assert done[asked].state == CANCELED and done[asked].error == {"code": T.E_CANCELED, "msg": "no answer"}
    stops = [e for e in m.pevents[P1] if isinstance(e, StopTask)]
    assert sorted(s.task_id for s in stops) == sorted([first.task_id, second.task_id])
    assert m.providers[P1].active() == 0 and m.providers[P1].load("echo") == 0


def test_a_prompt_or_an_answer_over_the_limit_is_refused():
    m = Mesh(P1, provider_config=ProviderConfig(max_chunk_bytes=100), caller_config=CallerConfig(max_input_bytes=100))
    big = m.submit(TaskSpec("echo", 1))
    small = m.submit(TaskSpec("echo", 2))
    a, b = m.starts(P1)
    prov = m.providers[P1]
    assert prov.need_input(a.task_id, "x" * 500, m.now) is False  # fails the task, stops the agent
    assert prov.need_input(b.task_id, "which?", m.now)
    with pytest.raises(InvalidTransition):
        prov.need_input(b.task_id, "and another?", m.now)  # one question at a time
    m.flush()
    (done,) = m.done()
    assert done.task_id == big and done.error["code"] == T.E_OUTPUT_TOO_LARGE and "prompt" in done.error["msg"]
    with pytest.raises(TaskTooLarge):
        m.caller.provide_input(small, "y" * 500, m.now)
    with pytest.raises(TaskTooLarge):
        m.caller.provide_input(small, object(), m.now)
    m.caller.provide_input(small, "fits", m.now)
    m.flush()
    assert [e.input for e in m.pevents[P1] if isinstance(e, TaskInput)] == ["fits"]
    assert prov.stats["input_required"] == 1 and prov.stats["inputs"] == 1 and m.caller.stats["inputs"] == 1


def test_a_provider_that_stops_cancels_its_tasks_and_idempotent_ones_move():
    m = Mesh(P1, P2, policy=CapabilityPolicy(max_concurrency=2, queue=1))
    plain = m.submit(TaskSpec("echo", 1), providers=[P1])
    idem = m.caller.submit(TaskSpec("echo", 2, idempotent=True), [Candidate(P1), Candidate(P2, cost=1.0)], m.now)
    queued = m.submit(TaskSpec("echo", 3), providers=[P1])
    running = [s.task_id for s in m.starts(P1)]
    assert len(running) == 2 and m.caller._calls[idem].provider == P1 and m.providers[P1].load("echo") == 1.5
    assert m.providers[P1].stop_all(m.now) == 3
    m.flush()
    done = {d.task_id: d for d in m.done()}
    for tid in (plain, queued):
        assert done[tid].state == CANCELED and done[tid].error["code"] == T.E_PROVIDER_STOPPED
        assert done[tid].error["msg"] == "the provider is shutting down" and done[tid].maybe_ran
    assert idem not in done and m.caller._calls[idem].provider == P2 and len(m.starts(P2)) == 1  # moved
    # the queued task was dropped, not started just to be stopped
    assert len(m.starts(P1)) == 2 and sorted(e.task_id for e in m.pevents[P1] if isinstance(e, StopTask)) == sorted(running)
    m.submit(TaskSpec("echo", 4), providers=[P1])  # a stopped provider admits nothing more
    assert m.done()[-1].state == REJECTED and m.done()[-1].error["code"] == T.E_UNKNOWN_CAPABILITY


def test_caller_gone_cancels_its_tasks_at_the_provider():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1))
    m.submit(TaskSpec("echo", 2))
    prov = m.providers[P1]
    prov.caller_gone(C, m.now)
    assert len([e for e in prov.take_events() if isinstance(e, StopTask)]) == 2
    assert prov.active() == 0 and prov.stats["caller_gone"] == 2


# -- idempotency ----------------------------------------------------------------------------------------


def test_repeated_key_returns_the_known_result_without_running_again():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1, key="k1"))
    (start,) = m.starts(P1)
    m.providers[P1].complete(start.task_id, "result", m.now)
    m.flush()
    m.submit(TaskSpec("echo", 1, key="k1"))
    assert len(m.starts(P1)) == 1
    assert [(d.state, d.output) for d in m.done()] == [(COMPLETED, "result"), (COMPLETED, "result")]
    assert m.providers[P1].stats["replayed"] == 1
    m.submit(TaskSpec("echo", 1, key="k2"))
    assert len(m.starts(P1)) == 2


def test_repeated_key_while_running_attaches_to_the_running_task():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1, key="k"))
    m.submit(TaskSpec("echo", 1, key="k"))
    (start,) = m.starts(P1)
    m.providers[P1].progress(start.task_id, "p", m.now)
    m.providers[P1].complete(start.task_id, "r", m.now)
    m.flush()
    assert [(d.state, d.output) for d in m.done()] == [(COMPLETED, "r"), (COMPLETED, "r")]
    assert len([e for e in m.events if isinstance(e, Progress)]) == 2
    assert m.providers[P1].stats["attached"] == 1 and m.providers[P1].active() == 0


def test_results_of_a_key_are_per_caller_and_expire():
    prov = TaskProvider(P1, random.Random(0), ProviderConfig(result_ttl=10.0))
    prov.offer("echo")
    prov.receive(Envelope(b"\0" * 16, C, T.SUBMIT, {"id": b"a" * 16, "cap": "echo", "key": "k"}, P1), 0)
    prov.complete(b"a" * 16, "mine", 0)
    prov.receive(Envelope(b"\1" * 16, P2, T.SUBMIT, {"id": b"b" * 16, "cap": "echo", "key": "k"}, P1), 1)
    assert prov.stats["replayed"] == 0 and prov.stats["started"] == 2  # another caller's key is another key
    prov.complete(b"b" * 16, "theirs", 1)
    prov.tick(10.5)
    prov.receive(Envelope(b"\2" * 16, C, T.SUBMIT, {"id": b"c" * 16, "cap": "echo", "key": "k"}, P1), 10.5)
    assert prov.stats["replayed"] == 0 and prov.stats["started"] == 3


def test_a_canceled_or_timed_out_task_is_not_cached_for_its_key():
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo")
    prov.receive(Envelope(b"\0" * 16, C, T.SUBMIT, {"id": b"a" * 16, "cap": "echo", "key": "k", "ttl": 1000}, P1), 0)
    prov.tick(1.0)
    prov.receive(Envelope(b"\1" * 16, C, T.SUBMIT, {"id": b"b" * 16, "cap": "echo", "key": "k"}, P1), 1)
    assert prov.stats["replayed"] == 0 and prov.stats["started"] == 2


# -- failover decisions -------------------------------------------------------------------------------------


def test_non_idempotent_task_is_not_rerun_when_its_provider_dies():
    m = Mesh(P1, P2)
    m.submit(TaskSpec("echo", 1))
    started = [p for p in (P1, P2) if m.starts(p)]
    assert len(started) == 1
    m.caller.provider_gone(started[0], m.now)
    m.flush()
    (done,) = m.done()
    assert done.state == FAILED and done.error["code"] == T.E_PROVIDER_GONE and done.maybe_ran
    assert "not idempotent" in done.error["msg"]
    assert sum(len(m.starts(p)) for p in (P1, P2)) == 1


def test_idempotent_task_fails_over_when_its_provider_dies():
    m = Mesh(P1, P2)
    tid = m.submit(TaskSpec("echo", 1, idempotent=True))
    first = next(p for p in (P1, P2) if m.starts(p))
    other = P2 if first == P1 else P1
    m.caller.provider_gone(first, m.now)
    m.flush()
    assert [e for e in m.events if isinstance(e, Rerouted)] == [Rerouted(tid, first, other, T.E_PROVIDER_GONE)]
    (start,) = m.starts(other)
    m.providers[other].complete(start.task_id, "done", m.now)
    m.flush()
    (done,) = m.done()
    assert done.state == COMPLETED and done.provider == other and done.attempts == 2
    # a late update from the dead provider's attempt is ignored
    m.providers[first].complete(m.starts(first)[0].task_id, "zombie", m.now)
    m.flush()
    assert len(m.done()) == 1 and m.caller.stats["unknown_task"] == 1


def test_silent_provider_times_out_and_keyed_task_is_resent_to_it_not_elsewhere():
    m = Mesh(P1, P2, caller_config=CallerConfig(accept_timeout=2.0))
    m.hold = lambda env: env.dst == C and len([w for w in m.wire if w.dst == C]) == 1  # the first answer is lost
    m.submit(TaskSpec("echo", 1, key="k"))
    first = next(p for p in (P1, P2) if m.starts(p))
    m.hold = lambda env: False
    m.tick_all(2.0)
    assert m.caller.stats["timeouts"] == 1
    # re-sent to the same provider, which attached it to the running task
    assert m.providers[first].stats["attached"] == 1
    assert sum(len(m.starts(p)) for p in (P1, P2)) == 1
    m.providers[first].complete(m.starts(first)[0].task_id, "once", m.now)
    m.flush()
    (done,) = m.done()
    assert done.state == COMPLETED and done.output == "once" and done.attempts == 2


def test_silent_provider_fails_a_plain_task_without_rerunning_it():
    m = Mesh(P1, P2, caller_config=CallerConfig(accept_timeout=2.0))
    m.hold = lambda env: env.dst == C
    m.submit(TaskSpec("echo", 1))
    m.tick_all(2.0)
    (done,) = m.done()
    assert done.state == FAILED and done.error["code"] == T.E_TIMEOUT and done.maybe_ran
    assert sum(len(m.starts(p)) for p in (P1, P2)) == 1


def test_idle_timeout_on_a_working_task():
    m = Mesh(P1, caller_config=CallerConfig(accept_timeout=1.0))
    m.submit(TaskSpec("echo", 1, idle_timeout=3.0))
    (start,) = m.starts(P1)
    m.tick_all(2.5)
    m.providers[P1].progress(start.task_id, "still here", m.now)
    m.flush()
    m.tick_all(2.9)
    assert m.done() == []
    m.tick_all(0.2)
    (done,) = m.done()
    assert done.error["code"] == T.E_TIMEOUT


def test_max_attempts_bounds_failover():
    m = Mesh(P1, P2, P3, caller_config=CallerConfig(max_attempts=2), policy=CapabilityPolicy(allow=frozenset()))
    m.submit(TaskSpec("echo", 1))
    (done,) = m.done()
    assert done.state == REJECTED and done.attempts == 2 and done.error["code"] == T.E_DENIED


# -- scoring --------------------------------------------------------------------------------------------------


def test_score_prefers_low_rtt_low_cost_and_reliable_providers():
    caller = TaskCaller(C, random.Random(0), CallerConfig(weights=Weights(load=1, rtt=1, cost=1, failure=1)))
    near, far = Candidate(P1, rtt=0.001), Candidate(P2, rtt=0.200)
    assert [c.node_id for c in caller.rank([far, near], 0)] == [P1, P2]
    cheap, dear = Candidate(P1, cost=1.0), Candidate(P2, cost=10.0)
    assert [c.node_id for c in caller.rank([dear, cheap], 0)] == [P1, P2]
    for _ in range(5):
        caller._record(P1, ok=False)
        caller._record(P2, ok=True)
    assert [c.node_id for c in caller.rank([Candidate(P1), Candidate(P2)], 0)] == [P2, P1]
    # cost only matters relative to the other candidates; weights switch terms off
    only_rtt = TaskCaller(C, random.Random(0), CallerConfig(weights=Weights(load=0, rtt=1, cost=0, failure=0)))
    assert [c.node_id for c in only_rtt.rank([Candidate(P1, cost=0, rtt=0.3), Candidate(P2, cost=99, rtt=0.01)], 0)] == [P2, P1]


def test_score_counts_own_in_flight_tasks_against_the_advertised_limit():
    m = Mesh(P1, P2)
    cands = [Candidate(P1, max_concurrency=2), Candidate(P2, max_concurrency=2)]
    for i in range(4):
        m.caller.submit(TaskSpec("echo", i), cands, m.now)
    m.flush()
    assert len(m.starts(P1)) == len(m.starts(P2)) == 2  # spread, not piled on one


def test_ties_are_broken_at_random():
    caller = TaskCaller(C, random.Random(7))
    firsts = {caller.rank([Candidate(P1), Candidate(P2), Candidate(P3)], 0)[0].node_id for _ in range(50)}
    assert firsts == {P1, P2, P3}


# -- bad input ---------------------------------------------------------------------------------------------------


def test_oversize_or_unencodable_input_is_refused_before_sending():
    caller = TaskCaller(C, random.Random(0), CallerConfig(max_input_bytes=1000))
    with pytest.raises(TaskTooLarge, match="exceeds"):
        caller.submit(TaskSpec("echo", "x" * 2000), [Candidate(P1)], 0)
    with pytest.raises(TaskTooLarge, match="encoded"):
        caller.submit(TaskSpec("echo", {1, 2}), [Candidate(P1)], 0)
    with pytest.raises(ValueError):
        caller.submit(TaskSpec("echo", 1, priority=10), [Candidate(P1)], 0)
    assert caller.take_outgoing() == [] and caller.unfinished() == 0


def test_oversize_output_or_chunk_fails_the_task():
    m = Mesh(P1, provider_config=ProviderConfig(max_chunk_bytes=100, max_output_bytes=200))
    m.submit(TaskSpec("echo", 1))
    m.submit(TaskSpec("echo", 2))
    a, b = m.starts(P1)
    assert m.providers[P1].progress(a.task_id, "x" * 500, m.now) is False
    assert m.providers[P1].complete(b.task_id, "y" * 500, m.now) is True
    m.flush()
    assert [d.error["code"] for d in m.done()] == [T.E_OUTPUT_TOO_LARGE] * 2
    assert [e for e in m.pevents[P1] if isinstance(e, StopTask)] == [StopTask(a.task_id, T.E_OUTPUT_TOO_LARGE)]


def test_stream_false_suppresses_chunks():
    m = Mesh(P1)
    m.submit(TaskSpec("echo", 1, stream=False))
    (start,) = m.starts(P1)
    assert m.providers[P1].progress(start.task_id, "quiet", m.now)
    m.providers[P1].complete(start.task_id, "out", m.now)
    m.flush()
    assert not [e for e in m.events if isinstance(e, Progress)] and m.done()[0].output == "out"


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=12,
)
bodies = st.fixed_dictionaries(
    {}, optional={"id": st.sampled_from([b"t" * 16, b"short"]) | junk, "cap": st.sampled_from(["echo", ""]) | junk,
                  "seq": junk, "state": st.sampled_from(list(T.STATES)) | junk, "key": junk, "ttl": junk,
                  "prio": junk, "stream": junk, "in": junk, "err": junk, "load": junk, "data": junk},
) | junk


@settings(max_examples=300, deadline=None)
@given(typ=st.sampled_from([T.SUBMIT, T.CANCEL, T.INPUT, T.STATUS, T.CHUNK, "task.bogus"]), body=bodies)
def test_garbage_never_raises_and_is_counted(typ, body):
    prov = TaskProvider(P1, random.Random(0))
    prov.offer("echo", CapabilityPolicy(max_concurrency=1))
    prov.receive(Envelope(b"\0" * 16, C, T.SUBMIT, {"id": b"t" * 16, "cap": "echo"}, P1), 0)
    prov.take_outgoing()
    env = Envelope(b"\1" * 16, C, typ, body, P1)
    prov.receive(env, 1)
    prov.tick(2)
    for out in prov.take_outgoing():
        out.encode()  # whatever it answers is sendable
    caller = TaskCaller(C, random.Random(0))
    caller.submit(TaskSpec("echo", 1), [Candidate(P1)], 0)
    wire_id = caller.take_outgoing()[0].body["id"]
    if isinstance(body, dict) and body.get("id") == b"t" * 16:
        body = {**body, "id": wire_id}
    caller.receive(Envelope(b"\2" * 16, P1, typ, body, C), 1)
    caller.tick(3)
    for ev in caller.take_events():
        if isinstance(ev, TaskDone):
            assert ev.state in T.TERMINAL
