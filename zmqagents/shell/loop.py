"""The driving loop of a Node: one clock, one timer, and the pump between the transport and the cores.

A node runs two sans-IO objects, :class:`~zmqagents.core.composition.NodeCore` (routing, membership,
the DHT, the relay cores) and :class:`~zmqagents.core.delivery.Delivery` beside it. This module is
what drives them, and nothing else:

* **one clock** (:class:`Clock`): monotonic, so a wall-clock step (NTP, a suspended VM) cannot look
  like a stall to membership or fire every retransmit at once, and anchored to Unix time once, so the
  times it yields (``last_seen`` in ``Node.peers()``, task deadlines) still read as Unix time. Every
  part of a node reads this one clock: its cores, the DHT facade, the task runtime (``Agents``).
* **the pump**: a batch from the transport goes to the cores (the inbox's admission first, so a full
  inbox refuses a message before delivery acknowledges it); then what they queued is sent, their
  events are handed to the shell's handlers, and that repeats until no core has anything left. A
  sender the full inbox refused is owed a window update once the application made room
  (:meth:`NodeLoop.offer_room`).
* **one timer** at the earliest deadline of every core, and of any other :class:`Ticker` attached
  (the task runtime's cores), re-armed only when a deadline comes earlier than the pending one.

What the events mean to the application (futures, the inbox, member events) is decided by the
handlers the Node passes in; this module only moves envelopes and time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol

from ..core.composition import NodeCore
from ..core.delivery import Delivery
from ..core.relay import RELAY_TYPES
from ..coretimer import CoreTimer
from ..envelope import ENVELOPE_COST, Envelope
from ..queues import BoundedQueue
from ..transport.mesh import Transport
from .types import INBOX_REFUSALS, message_cost

MAX_REFUSED_SENDERS = 1024  # senders remembered for a window update once the inbox has room (others wait for timers)


class Clock:
    """Seconds on a node's clock: ``time.monotonic()`` plus an offset taken once, when it is made, so
    that it reads as Unix time without ever stepping with the wall clock."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()

    def now(self) -> float:
        return time.monotonic() + self.offset


class Ticker(Protocol):
    """Something else with deadlines on the node's clock (the task runtime's cores) that the loop's
    one timer also serves: ``tick(now)`` is called when the timer fires, with the node's cores."""

    def next_timer(self) -> float | None: ...

    def tick(self, now: float) -> None: ...


DeliveryEvents = Callable[[list], None]  # the Delivery core's events, in order, for the shell to act on
CoreEvent = Callable[[object], None]  # one NodeCore event
# A relay envelope NodeCore leaves to the shell, and the batch it came in (a relayed delivery is
# unwrapped and appended to it, so it is handled next like any arrival)
RelayEnvelope = Callable[[Envelope, list], None]


class NodeLoop:
    """Feeds what the transport receives into the cores, sends what they queue, keeps one timer.

    Made with the node; :meth:`start` gives it the composition and the inbox (both exist only once
    the node's inbox is bound), :meth:`halt` stops it for good.
    """

    def __init__(self, clock: Clock, delivery: Delivery, transport: Transport, stats: dict[str, int], *,
                 on_delivery: DeliveryEvents, on_core_event: CoreEvent, on_relay: RelayEnvelope):
        self.clock = clock
        self.now = clock.now
        self.delivery = delivery
        self.transport = transport
        self.core: NodeCore | None = None
        self._stats = stats  # the node's counters: inbox refusals are counted here
        self._on_delivery = on_delivery
        self._on_core_event = on_core_event
        self._on_relay = on_relay
        self._inbox: BoundedQueue | None = None
        self._refused: set[bytes] = set()  # senders whose messages the inbox refused, owed a window update
        self._tickers: list[Ticker] = []
        self._timer = CoreTimer(clock.now, self._on_timer)
        self._idle: asyncio.Event | None = None
        self._halted = False
        self._paused = False  # pause(): no ticks until resume()

    def start(self, core: NodeCore, inbox: BoundedQueue) -> None:
        """Drive ``core`` from now on, and admit arriving messages into ``inbox``."""
        self.core = core
        self._inbox = inbox
        self._idle = asyncio.Event()
        self._idle.set()
        self.pump()

    def halt(self) -> None:
        """Stop the timer for good: nothing is ticked or re-armed any more (the node is closing)."""
        self._halted = True
        self._timer.cancel()

    @property
    def halted(self) -> bool:
        return self._halted

    def pause(self) -> None:
        """Fire no timer until :meth:`resume`: with the transport paused too, the node stalls as a
        stopped process does (``Node.pause``; fault injection for ``zmqagents swarm --pause``)."""
        self._paused = True
        self._timer.cancel()

    def resume(self) -> None:
        """Tick again: deadlines that passed meanwhile fire at once, as in a process that was stopped."""
        self._paused = False
        self._arm()

    @property
    def timer_at(self) -> float | None:
        """The pending timer's deadline on :attr:`clock`, None when none is armed."""
        return self._timer.at

    # -- other deadlines on the same timer -------------------------------------------------------

    def attach(self, ticker: Ticker) -> None:
        """Serve ``ticker``'s deadlines with this loop's timer (see :meth:`wake`)."""
        self._tickers.append(ticker)

    def detach(self, ticker: Ticker) -> None:
        if ticker in self._tickers:
            self._tickers.remove(ticker)

    def wake(self, at: float | None) -> None:
        """An attached ticker's next deadline is ``at``: arm the timer for it if it is the earliest."""
        if not (self._halted or self._paused):
            self._timer.arm((at,))

    # -- the pump ------------------------------------------------------------------------------

    def on_batch(self, batch: list[Envelope]) -> None:
        """The transport's callback: a batch of authenticated envelopes, read until EAGAIN.

        Senders with a direct message in the batch are served last, after what the others sent has
        been answered and written: storing direct messages may block the loop (a sidecar's inbox
        fsyncs them before their acks leave, 4-16 ms on a busy disk), and a request from another peer
        must not wait for that. Each sender's envelopes stay together and in order.
        """
        if len(batch) > 1:
            storing = {env.src for env in batch if env.type == "msg"}
            if storing:
                first = [env for env in batch if env.src not in storing]
                if first:
                    self._admit(first)
                    self.transport.write_now()
                    batch = [env for env in batch if env.src in storing]
        self._admit(batch)

    def _admit(self, batch: list[Envelope]) -> None:
        """Hand ``batch`` to the cores (a full inbox refusing messages first), then pump."""
        delivery = self.delivery
        core = self.core
        inbox = self._inbox
        # Accepted for the inbox but not in it yet: this batch's messages, delivered into the inbox
        # when the batch is pumped. They count as if queued.
        held_n = held_b = 0
        in_batch: dict[bytes, list[int]] = {}
        now = self.now()
        for env in batch:
            # Routing, membership, the DHT and the relay cores take theirs (and any message refreshes
            # its sender in the table); what is left is delivery's, or a relay path's.
            if core.receive(env, now):
                delivery.heard(env.src, now)  # the path from it works: a stalled floor to it goes again now
                continue
            typ = env.type
            if typ in RELAY_TYPES:
                self._on_relay(env, batch)
                continue
            # A full inbox refuses data before the core sees it: no ack, so the sender
            # retransmits later and nothing accepted is ever thrown away.
            if typ == "msg":
                src = env.src
                # In order, it enters the inbox with the out-of-order ones it completes, which must
                # fit; out of order, it waits in the delivery core's reorder buffer (bounded there).
                need, cost = delivery.releases(env)
                if need:
                    cost = message_cost(cost, need)
                    mine = in_batch.get(src)
                    if mine is None:
                        mine = in_batch[src] = [0, 0]
                    why = inbox.refuses(src, cost, need=need, held=(held_n, held_b), sender_held=(mine[0], mine[1]))
                    if why is not None:
                        self._stats[INBOX_REFUSALS[why]] += 1
                        if len(self._refused) < MAX_REFUSED_SENDERS:
                            self._refused.add(src)
                        continue
                    held_n += need
                    held_b += cost
                    mine[0] += need
                    mine[1] += cost
            delivery.receive(env, now)
        self.pump()

    def pump(self) -> None:
        """Send what the cores want sent, act on their events, re-arm the timer."""
        delivery = self.delivery
        send = self.transport.send
        events = delivery.take_events()
        if events:
            self._on_delivery(events)  # first: received messages are stored before their acks leave
        for env in delivery.take_outgoing():
            send(env)
        if self.core is not None:
            self._pump_core()
        if self._idle is not None and not delivery.pending():
            self._idle.set()
        self._arm()

    def _pump_core(self) -> None:
        """Send what routing, membership, the DHT and the relay cores queued, and act on their events
        until none is left (acting on one may queue more). A destination the transport has no link to
        yet (a lookup candidate, a ping relayed for another prober) is reached at the contact the
        cores know for it (``contact_for``)."""
        core = self.core
        transport = self.transport
        on_event = self._on_core_event
        while True:
            for env in core.take_outgoing():
                if not transport.known(env.dst):
                    contact = core.contact_for(env.dst)
                    if contact is not None:
                        transport.add_contact(contact)
                transport.send(env)
            events = core.take_events()
            if not events:
                return
            for event in events:
                on_event(event)

    def send_new(self) -> None:
        """After a send, request or reply: delivery has new envelopes but, unlike after receive or
        tick, no events. Send them and re-arm the timer only if the new deadline is the earliest."""
        delivery = self.delivery
        send = self.transport.send
        for env in delivery.take_outgoing():
            send(env)
        if not (self._halted or self._paused):
            self._timer.arm((delivery.next_timer(),))  # earlier than the pending timer, or none pending

    # -- window updates: the inbox has room again ------------------------------------------------

    @property
    def owes_window_update(self) -> bool:
        """Some sender's messages were refused by the full inbox and it has not been told of room yet."""
        return bool(self._refused)

    def offer_room(self) -> None:
        """The application took a message: ack each sender whose messages the full inbox refused, once
        what its reorder buffer would release with the next one fits again (a window update). Refused
        messages reached no core and got no ack; without this the sender resent them on its backed-off
        timer, up to 6 s later (a restarted sidecar whose inbox filled before its local API started:
        bench/chaos.py, seed 35)."""
        inbox = self._inbox
        delivery = self.delivery
        now = self.now()
        for src in list(self._refused):
            n, held = delivery.buffered(src)
            if inbox.refuses(src, message_cost(held + (held // n if n else ENVELOPE_COST), n + 1), need=n + 1) is None:
                self._refused.discard(src)
                delivery.ack(src, now)
                self._stats["window_updates"] += 1
        self.pump()

    # -- idle: every sent message acknowledged or failed -------------------------------------------

    def busy(self) -> None:
        """Delivery has unacknowledged messages again (a send was handed to it)."""
        self._idle.clear()

    async def settled(self) -> None:
        """Wait until delivery has nothing unacknowledged."""
        while self.delivery.pending():
            self._idle.clear()
            await self._idle.wait()

    # -- the timer -------------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._halted or self._paused:
            return
        deadlines = [self.delivery.next_timer()]
        if self.core is not None:
            deadlines.append(self.core.next_timer())
        for ticker in self._tickers:
            deadlines.append(ticker.next_timer())
        self._timer.arm(deadlines)

    def _on_timer(self) -> None:
        now = self.now()
        self.delivery.tick(now)
        if self.core is not None:
            self.core.tick(now)
        for ticker in list(self._tickers):
            ticker.tick(now)
        self.pump()
