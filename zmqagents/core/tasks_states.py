"""The task lifecycle both sides share: message types, states and their transitions, outcome codes, limits.

The wire rules are in ``protocols/tasks.md``; the provider half is :mod:`zmqagents.core.tasks_provider`, the
caller half :mod:`zmqagents.core.tasks_caller`, and :mod:`zmqagents.core.tasks` gathers all three. States
follow the A2A task lifecycle; :data:`TRANSITIONS` is the table both sides check every state change against.
"""

from __future__ import annotations

from typing import Any

import msgpack
from ..errors import Error

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


class TaskError(Error):
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


def error_body(code: str, message: str) -> dict[Any, Any]:
    """The ``err`` map of a failed, rejected or canceled outcome (the message cut to MAX_REASON_LEN)."""
    return {"code": code, "msg": message[:MAX_REASON_LEN]}


def is_task_id(value: Any) -> bool:
    """Whether ``value`` is a task id on the wire (16 bytes)."""
    return type(value) is bytes and len(value) == ID_LEN
