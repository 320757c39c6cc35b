"""The outbox service: messages accepted from local applications go to the spool, then to the mesh.

A message is *accepted* once it is in the :class:`~.spool.Spool` (written, and fsynced per the
``[spool] fsync`` policy). From then on the outbox sends it with the node's reliable delivery
under its own message id, asks for a confirmation (``confirm=True``), and marks the spool record
done only when the destination has acknowledged it. A message that fails (the destination is
unreachable for the ~26 s of retries, or was declared dead) stays in the spool and is sent again
after a back-off, under the same id; after a restart, every record not marked done is sent again,
oldest first, before anything new. The receiver's dedup memory (``protocols/delivery.md`` §8.1)
makes those re-sends invisible to its application.

Per destination, the outbox keeps a FIFO of spool references (8 bytes per waiting message: the
envelopes themselves stay on disk until sent) and feeds the node only while the destination's
delivery window has room, so one unreachable destination never holds back the others.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from array import array
from typing import TYPE_CHECKING, Any

from ..core.delivery import WindowFull
from ..envelope import Envelope, EnvelopeError
from ..identity import Contact, IdentityError, short_id
from ..errors import Error
from .spool import Spool, SpoolConfig, SpoolError

if TYPE_CHECKING:
    from ..shell.api import NodeAPI

log = logging.getLogger(__name__)

RETRY_DELAY = 1.0  # s before re-sending to a destination whose messages failed; doubles per failure...
RETRY_MAX = 5.0  # ...up to this: with one probe at a time a dead peer costs little, and one that returns is found soon
FEED_INTERVAL = 1.0  # s between safety-net passes (window room freed by others' messages, ends of back-off)
TO_FIELD = "to"  # envelope field of a spool record: the destination's contact, when the application gave one


class OutboxClosed(Error, RuntimeError):
    """The outbox is starting or stopping: it takes no message now."""


class _Dest:
    """What the outbox knows about one destination."""

    __slots__ = ("id", "queue", "head", "retry", "inflight", "contact", "not_before", "failures")

    def __init__(self, node_id: bytes):
        self.id = node_id
        self.queue = array("Q")  # spool references waiting to be sent, oldest first
        self.head = 0  # queue[head:] is still waiting
        self.retry: list[int] = []  # heap of references that failed and go before the queue
        self.inflight = 0
        self.contact: Contact | None = None
        self.not_before = 0.0  # monotonic time before which nothing is sent (back-off)
        self.failures = 0

    def waiting(self) -> int:
        return len(self.queue) - self.head + len(self.retry)

    def next_ref(self) -> int | None:
        if self.retry:
            return self.retry[0]
        if self.head < len(self.queue):
            return self.queue[self.head]
        return None

    def pop_ref(self) -> None:
        if self.retry:
            heapq.heappop(self.retry)
            return
        self.head += 1
        if self.head > 4096 and self.head * 2 > len(self.queue):
            del self.queue[:self.head]  # reclaim the consumed part now and then (amortised O(1))
            self.head = 0


class Outbox:
    """Feeds spooled messages to a started :class:`~zmqagents.node.Node` until acknowledged."""

    metric_name = "outbox"  # the admin endpoint exports stats as zmqagents_outbox_events_total{outcome=...}

    def __init__(self, node: NodeAPI, spool: SpoolConfig, *, retry_delay: float = RETRY_DELAY,
                 retry_max: float = RETRY_MAX):
        self.node = node
        self.spool_config = spool
        self.spool: Spool | None = None  # opened by start()
        self.retry_delay = retry_delay
        self.retry_max = retry_max
        self._dests: dict[bytes, _Dest] = {}
        self._inflight: dict[bytes, tuple[int, _Dest]] = {}  # message id -> (spool reference, destination)
        self._feed_scheduled = False
        self._commit_scheduled = False
        self._sync_handle: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None
        self._lookups: set[bytes] = set()
        self.accepting = False
        self._closed = False
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "delivered", "send_failures", "refused", "unknown_destination", "unreadable"), 0)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool, queue every record it still holds (oldest first), then start sending."""
        self.spool = Spool(self.spool_config, node_id=self.node.node_id)
        self.node.on_settled(self._on_settled)
        loaded = 0
        for ref, env in self.spool.undone():
            self._enqueue(ref, env)
            loaded += 1
        if loaded:
            log.info("outbox: %d message(s) from before the restart to send (%d destination(s))", loaded,
                     len(self._dests))
        self._drained = asyncio.Event()
        self.accepting = True
        self._feed()
        self._tick()

    async def close(self, drain_timeout: float) -> None:
        """Stop accepting; wait up to ``drain_timeout`` s for the spool to empty; close the spool.

        What is not acknowledged by then stays in the spool and is sent after the next start.
        """
        self.accepting = False
        if self.spool is None or self._closed:
            return
        if drain_timeout > 0 and self.spool.undone_count:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except asyncio.TimeoutError:
                log.warning("outbox: %d message(s) not acknowledged within %g s; they stay in the spool %s",
                            self.spool.undone_count, drain_timeout, self.spool.directory)
        for handle in (self._ticker, self._sync_handle):
            if handle is not None:
                handle.cancel()
        self._ticker = self._sync_handle = None
        self._closed = True
        self.spool.close()

    @property
    def pending(self) -> int:
        """Messages accepted and not yet acknowledged (a gauge: zmqagents_outbox_pending)."""
        return self.spool.undone_count if self.spool is not None else 0

    def ready(self) -> bool:
        return self.accepting and self.spool is not None and self.spool.bytes < self.spool.config.max_bytes

    # -- accepting ------------------------------------------------------------------------------------

    def accept(self, messages: list[tuple[bytes, Contact | None, Any, bytes]]) -> list[Exception | None]:
        """Spool ``(destination id, contact or None, body, message id)`` tuples; per message, None if
        it was accepted, else the SpoolFull / SpoolError / EnvelopeError that refused it.

        A burst is written at once (one write, one fsync per policy); only if that fails are the
        messages tried one by one, so each caller learns exactly which of its messages are accepted.
        Accepted means written (and fsynced, per policy) when this returns.
        """
        if not self.accepting:
            raise OutboxClosed("the outbox is not accepting messages (starting or stopping)")
        ts = int(time.time() * 1000)
        src = self.node.node_id
        envs = []
        for dst, contact, body, msg_id in messages:
            env = Envelope(msg_id, src, "msg", body, dst, ts)
            if contact is None:
                contact = self._known_contact(dst)  # kept with the record: reachable after a restart too
            if contact is not None:
                env.extra[TO_FIELD] = str(contact)
            envs.append(env)
        append = self.spool.append
        try:
            stored = list(zip(append(envs), envs))
            results: list[Exception | None] = [None] * len(envs)
        except (SpoolError, EnvelopeError) as exc:
            if len(envs) == 1:
                stored, results = [], [exc]
            else:
                stored, results = [], []
                for env in envs:
                    try:
                        stored.append((append([env])[0], env))
                        results.append(None)
                    except (SpoolError, EnvelopeError) as one:
                        results.append(one)
        for ref, env in stored:
            self._enqueue(ref, env)
        self.stats["accepted"] += len(stored)
        self.stats["refused"] += len(envs) - len(stored)
        if stored:
            self._schedule_feed()
        return results

    def _known_contact(self, dst: bytes) -> Contact | None:
        """A contact for ``dst`` this node already has (outbox, routing table or transport), if any."""
        dest = self._dests.get(dst)
        if dest is not None and dest.contact is not None:
            return dest.contact
        routing = getattr(self.node, "routing", None)
        contact = routing.contact_for(dst) if routing is not None else None
        if contact is None:
            contact = next((c for c in self.node.transport.contacts() if c.node_id == dst), None)
        return contact

    def _enqueue(self, ref: int, env: Envelope) -> None:
        dest = self._dests.get(env.dst)
        if dest is None:
            dest = self._dests[env.dst] = _Dest(env.dst)
        to = env.extra.get(TO_FIELD)
        if type(to) is str and (dest.contact is None or str(dest.contact) != to):
            try:
                contact = Contact.parse(to)
            except IdentityError:
                contact = None
            if contact is not None and contact.node_id == env.dst:
                dest.contact = contact
        dest.queue.append(ref)

    # -- sending ----------------------------------------------------------------------------------------

    def _schedule_feed(self) -> None:
        if not self._feed_scheduled:
            self._feed_scheduled = True
            asyncio.get_running_loop().call_soon(self._feed)

    def _feed(self) -> None:
        """Hand waiting messages to the node while each destination's window has room."""
        self._feed_scheduled = False
        if self._closed or not self.accepting and self.spool is None:
            return
        now = time.monotonic()
        node = self.node
        can_send = node.delivery.can_send
        known = node.transport.known
        inflight = self._inflight
        for dest in list(self._dests.values()):
            if dest.not_before > now:
                continue
            # While a destination fails, one message at a time probes it: an unreachable peer then
            # costs one message's retransmissions, not a window's.
            while can_send(dest.id) and not (dest.failures and dest.inflight):
                ref = dest.next_ref()
                if ref is None:
                    break
                try:
                    env = self.spool.read(ref)
                except KeyError:  # acknowledged meanwhile (a duplicate record)
                    dest.pop_ref()
                    continue
                except SpoolError as exc:  # damaged on disk since it was written: it cannot be sent
                    log.error("outbox: %s; that message is dropped", exc)
                    self.stats["unreadable"] += 1
                    dest.pop_ref()
                    self.spool.mark_done(ref)
                    self._schedule_commit()
                    continue
                if env.id in inflight:
                    break  # the same id is on its way (a client re-sent it): wait for that copy to settle
                # A contact the node already has is newer than the one kept with the record: the
                # record's is only for a node that has none (e.g. just restarted).
                peer = dest.id if dest.contact is None or known(dest.id) else dest.contact
                try:
                    node.send_nowait(peer, env.body, msg_id=env.id, confirm=True)
                except WindowFull:
                    break
                except Exception as exc:  # UnknownPeer: no contact and no connection from it
                    self.stats["unknown_destination"] += 1
                    self._back_off(dest, now, f"{exc}")
                    self._find(dest)
                    break
                dest.pop_ref()
                dest.inflight += 1
                inflight[env.id] = (ref, dest)
            if not dest.waiting() and not dest.inflight and not dest.failures:
                del self._dests[dest.id]

    def _find(self, dest: _Dest) -> None:
        """Look the destination up in the mesh (Kademlia), so a node id alone can be reached."""
        if dest.id in self._lookups or getattr(self.node, "routing", None) is None:
            return
        self._lookups.add(dest.id)

        async def lookup() -> None:
            try:
                for contact in await self.node.lookup(dest.id, timeout=10):
                    if contact.node_id == dest.id:
                        dest.contact = contact
                        dest.not_before = 0.0
                        self._schedule_feed()
            except Exception as exc:
                log.debug("outbox: lookup of %s failed: %s", short_id(dest.id), exc)
            finally:
                self._lookups.discard(dest.id)

        asyncio.get_running_loop().create_task(lookup())

    def _back_off(self, dest: _Dest, now: float, why: str) -> None:
        delay = min(self.retry_delay * 2 ** min(dest.failures, 16), self.retry_max)
        if dest.failures == 0:
            log.warning("outbox: cannot deliver to %s (%s); %d message(s) kept, retrying in %g s",
                        short_id(dest.id), why, dest.waiting() + dest.inflight, delay)
        dest.failures += 1
        dest.not_before = now + delay

    def _on_settled(self, msg_id: bytes, dst: bytes, reason: str | None) -> None:
        entry = self._inflight.pop(msg_id, None)
        if entry is None or self._closed:
            return  # not ours, or after close (the record stays in the spool: sent again next start)
        ref, dest = entry
        dest.inflight -= 1
        if reason is None:
            self.spool.mark_done(ref)
            self.stats["delivered"] += 1
            if dest.failures:
                log.info("outbox: %s reachable again", short_id(dest.id))
            dest.failures = 0
            dest.not_before = 0.0
            self._schedule_commit()
        else:
            self.stats["send_failures"] += 1
            heapq.heappush(dest.retry, ref)
            if dest.not_before <= time.monotonic():
                self._back_off(dest, time.monotonic(), reason)
        self._schedule_feed()

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self._commit_scheduled = False
        self.spool.commit()
        if self.spool.sync_pending and self._sync_handle is None:
            self._sync_handle = asyncio.get_running_loop().call_later(self.spool.config.sync_interval, self._sync)
        if not self.spool.undone_count and self._drained is not None:
            self._drained.set()

    def _sync(self) -> None:
        self._sync_handle = None
        self.spool.sync()

    def _tick(self) -> None:
        """The safety net: once a second, feed what back-offs or others' acknowledgements let through."""
        self._feed()
        self._ticker = asyncio.get_running_loop().call_later(FEED_INTERVAL, self._tick)

    # -- reporting --------------------------------------------------------------------------------------

    def status(self) -> dict:
        return {
            **self.stats,
            "queued": self.spool.undone_count,
            "inflight": len(self._inflight),
            "destinations": len(self._dests),
            "spool_bytes": self.spool.bytes,
            "spool_max_bytes": self.spool.config.max_bytes,
            "spool_segments": self.spool.segments,
            **{f"spool_{k}": v for k, v in self.spool.stats.items()},
        }


def create(sidecar) -> Outbox:
    """The daemon's factory: the ``[spool]`` section (dir, max_bytes, fsync). No IO until start()."""
    cfg = sidecar.config.spool
    return Outbox(sidecar.node, SpoolConfig(cfg.dir, max_bytes=cfg.max_bytes, fsync=cfg.fsync))
