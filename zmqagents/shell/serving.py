"""What a Node does with what is delivered to it: the inbox, the request handler, routed components.

Delivery hands over each message once, in order per sender (``Delivered``). A plain message goes to
the inbox (its room was checked before delivery acknowledged it: :mod:`.loop`), and the inbox is
flushed before anything else delivered is acted on, so no ack leaves for what a durable inbox has not
written yet (:meth:`Serving.store`); a request of a type
the node answers itself (hello, the peer list) is answered by the function registered for it; a
type a component claimed with ``Node.route`` goes to that component; any other request runs the
application's handler, inline if it is a plain function, as a task (at most ``max_handlers`` at
once, skipped if its deadline passed while it waited) if it is a coroutine function.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine

from ..core.delivery import Delivered, Delivery, WindowFull
from ..envelope import Envelope
from ..queues import BoundedQueue
from .loop import NodeLoop
from .types import EXPIRED, Message, RequestHandler, message_cost

log = logging.getLogger("zmqagents.node")

Answer = Callable[[Envelope], Any]  # a request type the node answers itself: the reply body


class Serving:
    """Serves a node's delivered messages and requests (see the module docstring)."""

    def __init__(self, delivery: Delivery, loop: NodeLoop, inbox: BoundedQueue[Message], stats: dict[str, int],
                 *, max_handlers: int, answers: dict[str, Answer]):
        self.delivery = delivery
        self.loop = loop
        self.inbox = inbox
        self._stats = stats  # the node's counters
        self._answers = answers
        self._routes: list[tuple[str, Callable[[Envelope], None]]] = []  # type prefix -> component
        self._handler: RequestHandler | None = None
        self._handler_is_async = False
        self._slots = asyncio.Semaphore(max_handlers)
        self._tasks: set[asyncio.Task] = set()

    @property
    def handlers_running(self) -> int:
        """Request handlers (and the node's own background hellos) running now."""
        return len(self._tasks)

    @property
    def handler(self) -> RequestHandler | None:
        return self._handler

    def on_request(self, handler: RequestHandler) -> None:
        self._handler = handler
        self._handler_is_async = asyncio.iscoroutinefunction(handler) or asyncio.iscoroutinefunction(
            getattr(handler, "__call__", None)
        )

    def route(self, prefix: str, handler: Callable[[Envelope], None]) -> None:
        self._routes.append((prefix, handler))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that :meth:`close` cancels, like a handler."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel every running handler and wait for them to end."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what delivery hands over -------------------------------------------------------------

    def store(self, events: list) -> None:
        """Put the direct messages among delivery's ``events`` in the inbox, then flush it: first, before
        any other event is acted on (a reply or a send would carry acks for these messages)."""
        inbox = self.inbox
        for event in events:
            if isinstance(event, Delivered):
                env = event.env
                if env.type == "msg":
                    cost = message_cost(env.cost)
                    inbox.put(Message(env.src, env.body, env.type, env.id, None, cost), env.src, cost)
        inbox.flush()

    def delivered(self, env: Envelope) -> None:
        """One message or request, delivered once and in order (a direct message was stored already)."""
        typ = env.type
        if typ == "msg":
            return
        answer = self._answers.get(typ)
        if answer is not None:
            self.reply(env, answer(env))
        elif not (self._routes and self._route(env)):
            self._start_handler(env)

    def _route(self, env: Envelope) -> bool:
        for prefix, handler in self._routes:
            if env.type.startswith(prefix):
                try:
                    handler(env)
                except Exception:  # a component's bug must not take the node down
                    self._stats["handler_errors"] += 1
                    log.exception("handler for %s messages failed", prefix)
                return True
        return False

    def _start_handler(self, env: Envelope) -> None:
        if self._handler is None:
            self._reply_error(env, "this node serves no requests", "NoHandler")
            return
        if self._handler_is_async:
            # The requester's deadline on our clock: its ttl counts from now, when we read it (clocks of
            # different hosts are not compared; protocols/delivery.md §8.2). A plain function below runs
            # at once, so only a request that waits for a handler slot can outlive it.
            deadline = self.loop.now() + env.ttl / 1000 if env.ttl else None
            self.spawn(self._run_handler(env, deadline))
            return
        # A plain function answers inline: no task, no extra loop turn on the latency path.
        try:
            result = self._handler(env.body, Message(env.src, env.body, env.type, env.id))
        except Exception as exc:  # the handler is the application's code: report, never crash the node
            self._reply_error(env, str(exc) or type(exc).__name__, type(exc).__name__)
            return
        self.reply(env, result)

    async def _run_handler(self, env: Envelope, deadline: float | None) -> None:
        async with self._slots:
            if deadline is not None and self.loop.now() >= deadline:
                # It waited for a slot until its requester gave up: running it would be work nobody
                # reads. Refused and counted; the error reply reaches a requester still listening.
                self._stats["requests_expired"] += 1
                self.reply(env, {"error": "the request's deadline passed before a handler was free; it was not run",
                                 "type": EXPIRED}, error=True)
                self.loop.pump()
                return
            handler = self._handler  # the one set now (on_request may have replaced it while this waited)
            assert handler is not None  # a handler is never unset
            try:
                result = await handler(env.body, Message(env.src, env.body, env.type, env.id))
                self.reply(env, result)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._reply_error(env, str(exc) or type(exc).__name__, type(exc).__name__)
            self.loop.pump()

    def reply(self, env: Envelope, body: Any, *, error: bool = False) -> None:
        """Answer ``env``; the caller sends it (the loop's pump or ``send_new``)."""
        try:
            self.delivery.reply(env, body, self.loop.now(), error=error)
        except WindowFull:
            # The requester leaves twice a window of replies unacked: drop this one (it times out)
            # rather than buffer without bound.
            self._stats["replies_dropped"] += 1

    def _reply_error(self, env: Envelope, message: str, kind: str) -> None:
        self._stats["handler_errors"] += 1
        self.reply(env, {"error": message, "type": kind}, error=True)
