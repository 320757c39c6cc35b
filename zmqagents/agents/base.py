"""What every agent adapter gets and gives: the task's context in, progress chunks and an output out.

An agent is any ``async def agent(input, ctx) -> output``: a plain coroutine function, or an
object with such an ``__call__`` (ShellAgent, OpenAIChatAgent, AnthropicAgent). It reports
progress with ``ctx.progress(chunk)``, returns the output, and raises :class:`AgentError` to
fail the task with a message the caller sees. Cancellation (the caller canceled, the deadline
passed) arrives as ``asyncio.CancelledError``; an adapter must release what it holds (kill its
process group, close its connection) and let the error propagate.

An agent that needs more from the caller mid-task awaits ``ctx.ask(prompt)``: the task moves to
input-required (A2A), the caller's answer comes back as the awaited value and the task is
working again. The wait is bounded by the task's deadline and ends early on a cancel (the caller
may decline to answer: that cancels the task), both arriving as ``asyncio.CancelledError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol
from ..errors import Error


class AgentError(Error):
    """The agent could not do the task; ``str()`` is what the caller is told (keep secrets out of it)."""


@dataclass
class TaskContext:
    """The task an agent runs, as the runtime hands it over."""

    task_id: str  # hex of the provider-side task id
    capability: str
    caller: str = ""  # hex node id of the caller
    timeout: float | None = None  # seconds left until the task's deadline, None: no deadline
    progress: Callable[[Any], None] = field(default=lambda chunk: None, repr=False)
    ask: Callable[[Any], Awaitable[Any]] = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.ask is None:
            self.ask = _cannot_ask


async def _cannot_ask(prompt: Any) -> Any:
    raise AgentError("this task cannot ask its caller for input (no runtime to carry the question)")


class Agent(Protocol):
    def __call__(self, input: Any, ctx: TaskContext) -> Awaitable[Any]: ...


def effective_timeout(*limits: float | None) -> float | None:
    """The smallest of the limits that are set, or None."""
    known = [t for t in limits if t is not None]
    return min(known) if known else None
