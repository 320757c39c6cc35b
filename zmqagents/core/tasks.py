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

Three modules, gathered here (import from this one): :mod:`~zmqagents.core.tasks_states` (message types,
states and transitions, outcome codes, limits), :mod:`~zmqagents.core.tasks_provider` and
:mod:`~zmqagents.core.tasks_caller`.
"""

from __future__ import annotations

from .tasks_caller import (
    Candidate, Weights, CallerConfig, TaskSpec, Progress, StateChanged, Rerouted, TaskDone, CALLER_STATS,
    TaskCaller,
)
from .tasks_provider import (
    CapabilityPolicy, GROUP_NAME_RE, check_group_name, ProviderConfig, StartTask, StopTask, TaskInput,
    PROVIDER_STATS, TaskProvider,
)
from .tasks_states import (
    PREFIX, SUBMIT, CANCEL, INPUT, STATUS, CHUNK, SUBMITTED, WORKING, INPUT_REQUIRED, COMPLETED, FAILED,
    CANCELED, REJECTED, STATES, TERMINAL, TRANSITIONS, E_UNKNOWN_CAPABILITY, E_DENIED, E_BUSY, E_BAD_REQUEST,
    E_DEADLINE, E_TIMEOUT, E_PROVIDER_GONE, E_NO_PROVIDER, E_OUTPUT_TOO_LARGE, E_AGENT, E_CALLER_GONE,
    E_CANCELED, E_PROVIDER_STOPPED, ID_LEN, MAX_KEY_LEN, MAX_CAPABILITY_LEN, MAX_REASON_LEN, MAX_PRIORITY,
    TaskError, InvalidTransition, TaskTooLarge, TooManyTasks, check_transition, packed_size,
)

__all__ = [
    "PREFIX", "SUBMIT", "CANCEL", "INPUT", "STATUS", "CHUNK", "SUBMITTED", "WORKING", "INPUT_REQUIRED",
    "COMPLETED", "FAILED", "CANCELED", "REJECTED", "STATES", "TERMINAL", "TRANSITIONS",
    "E_UNKNOWN_CAPABILITY", "E_DENIED", "E_BUSY", "E_BAD_REQUEST", "E_DEADLINE", "E_TIMEOUT",
    "E_PROVIDER_GONE", "E_NO_PROVIDER", "E_OUTPUT_TOO_LARGE", "E_AGENT", "E_CALLER_GONE", "E_CANCELED",
    "E_PROVIDER_STOPPED", "ID_LEN", "MAX_KEY_LEN", "MAX_CAPABILITY_LEN", "MAX_REASON_LEN", "MAX_PRIORITY",
    "TaskError", "InvalidTransition", "TaskTooLarge", "TooManyTasks", "check_transition", "packed_size",
    "CapabilityPolicy", "GROUP_NAME_RE", "check_group_name", "ProviderConfig",
    "StartTask", "StopTask", "TaskInput", "PROVIDER_STATS", "TaskProvider", "Candidate", "Weights",
    "CallerConfig", "TaskSpec", "Progress", "StateChanged", "Rerouted", "TaskDone", "CALLER_STATS",
    "TaskCaller",
]
