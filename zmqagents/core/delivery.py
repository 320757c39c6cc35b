"""Reliable direct delivery: ack, retransmit, dedup, per-sender order, request/reply.

A sans-IO state machine (the wire rules are in ``protocols/delivery.md``):
the driver hands it envelopes and the current time, then drains the
envelopes it wants sent and the events it reports. It never reads a clock,
never touches a socket and draws every random number from the injected
``random.Random``, so a real node and the simulator run the same code.

Per peer it keeps our stream to the peer (epoch, next sequence number, the
unacked messages) and the peer's stream to us (its epoch, the cumulative
sequence delivered, a reorder buffer, the ids recently delivered). Every
piece of state has a bound; hitting a bound or dropping anything bumps a
counter in ``stats``.

Envelopes are never mutated after they are handed out (a retransmission
sends the same object again), so a driver may pass them around by reference.

Seven modules, one core (:class:`Delivery` is built from the three base classes, lowest first):

* :mod:`~zmqagents.core.delivery_config`: the reserved types, wire bounds, counters and
  :class:`DeliveryConfig`; :mod:`~zmqagents.core.delivery_events`: what the core reports and raises;
  :mod:`~zmqagents.core.delivery_streams`: the per-peer records (data only).
* :mod:`~zmqagents.core.delivery_timers`: the hashed timer wheel (O(1) per message).
* :mod:`~zmqagents.core.delivery_watchdog`: the stall watchdog (every change of a stall clock).
* :mod:`~zmqagents.core.delivery_retransmit`: our stream to each peer (every change to it: sequencing,
  acks, retransmission, the floor and fwds, reopening) and the acks we send.
* this module: the public API, the peer's stream to us (epochs, order, the reorder buffer, dedup),
  requests and their deadlines, the peer table and its bounds. Every public name of the core is
  importable from here.
"""

from __future__ import annotations

import builtins
import random
from collections import OrderedDict
from typing import Any, Iterable, Sequence

from ..envelope import ID_LEN, Envelope
from ..errors import InvalidArgument
from .delivery_config import (
    ACK_TYPE, EPOCH_MOD, ERROR_TYPE, FWD_TYPE, MAX_SACK_ACCEPTED, RANDOM_EPOCH_BITS, REOPEN_GAP, REPLY_TYPE,
    RESERVED_TYPES, STAT_KEYS, DeliveryConfig,
)
from .delivery_events import (
    Acked, Delivered, Replied, RequestFailed, SendFailed, Stalled, TooManyRequests, WindowFull, WindowOpen,
)
from .delivery_retransmit import Retransmission
from .delivery_streams import (
    ACK_TIMER, CONFIRM, ENV, REQ, WATCH_TIMER, Peer, PendingRequest, ack_ok, stream_state, ttl_ms,
)

__all__ = [
    "ACK_TYPE", "EPOCH_MOD", "ERROR_TYPE", "FWD_TYPE", "MAX_SACK_ACCEPTED", "RANDOM_EPOCH_BITS", "REOPEN_GAP",
    "REPLY_TYPE", "RESERVED_TYPES", "STAT_KEYS", "Acked", "Delivered", "Delivery", "DeliveryConfig", "Replied",
    "RequestFailed", "SendFailed", "Stalled", "TooManyRequests", "WindowFull", "WindowOpen",
]


class Delivery(Retransmission):
    """The reliable delivery core of one node. Call a method, then drain take_outgoing() and take_events().

    ``now`` is any monotonic clock in seconds, never negative, the same one for every call.
    """

    def __init__(self, node_id: bytes, rng: random.Random, config: DeliveryConfig | None = None,
                 epoch: int | None = None):
        self.node_id = node_id
        self.config = cfg = config or DeliveryConfig()
        self._rng = rng
        # Stream epochs are base + n, n counting the streams this instance opened: a stream re-opened
        # after forget() or eviction gets a higher epoch, and a receiver moves only to higher epochs,
        # so a late frame of the old stream can never retire the new one (protocols/delivery.md §3).
        # The driver passes a base above every epoch its previous runs used (a clock in microseconds);
        # a random base is the fallback, and a receiver that holds a higher epoch of ours tells us (§5.3).
        if epoch is None:
            epoch = rng.getrandbits(RANDOM_EPOCH_BITS)
        elif not 0 <= epoch < EPOCH_MOD:
            raise InvalidArgument(f"epoch must be in [0, 2^63), got {epoch!r}")
        self.epoch = epoch
        self._streams = 0
        self._peers: OrderedDict[bytes, Peer] = OrderedDict()
        self._requests: dict[bytes, PendingRequest] = {}
        self._buffered = 0  # out-of-order envelopes held, all senders
        self._buffered_bytes = 0  # ...and their Envelope.cost
        # node id -> (ids, ring, ring_pos, highest epoch seen) of peers whose state was dropped (kept_dedup)
        self._kept: OrderedDict[bytes, tuple[Any, ...]] = OrderedDict()
        # Senders whose ids are remembered (live peers and kept memories), least recently delivered
        # first, and how many ids that is in all: the dedup_total bound drops from the front.
        self._dedup_lru: OrderedDict[bytes, None] = OrderedDict()
        self._dedup_ids = 0
        Retransmission.__init__(self, cfg)  # the timer wheel, the stall watchdog, our streams' counters
        self._ack_delay = cfg.ack_delay
        self._dedup_window = cfg.dedup_window
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    # -- application side ----------------------------------------------------------

    def can_send(self, dst: bytes) -> bool:
        peer = self._peers.get(dst)
        return peer is None or len(peer.out) < self.config.window

    def send(self, dst: bytes, body: Any, now: float, *, type: str = "msg", msg_id: bytes | None = None,
             confirm: bool = False) -> bytes:
        """Queue a reliable message; returns its id. Raises WindowFull if can_send(dst) is false.

        ``msg_id`` (16 bytes) re-sends a message under the id it had before, e.g. from a durable
        outbox after a restart: the receiver's dedup memory (§6 of protocols/delivery.md) then
        delivers it at most once even if the earlier copy arrived. ``confirm`` asks for an
        :class:`Acked` event once ``dst`` has it (failure is reported as SendFailed either way).
        """
        if type in RESERVED_TYPES:
            raise InvalidArgument(f"message type {type!r} is reserved by the delivery protocol")
        if msg_id is not None and (builtins.type(msg_id) is not bytes or len(msg_id) != ID_LEN):
            raise InvalidArgument(f"msg_id must be {ID_LEN} bytes, got {msg_id!r:.60}")
        peer = self._peers.get(dst)
        if peer is None or len(peer.out) >= self.config.window:
            peer = self._sending_peer(dst)
        else:
            self._peers.move_to_end(dst)
        p = self._transmit(peer, type, body, now, None, msg_id)
        if confirm:
            p[CONFIRM] = True
        mid: bytes = p[ENV].id
        return mid

    def send_many(self, dst: bytes, bodies: Sequence[Any], now: float, *, type: str = "msg") -> list[bytes]:
        """Queue messages to ``dst``, in order, as many as its window takes; returns their ids.

        Fewer ids than ``bodies`` means the window filled: the rest are the caller's to send once
        WindowOpen reports room (as after WindowFull). Raises WindowFull if not even the first fits.
        Each message is what :meth:`send` would have made of it (same ids, seqs, timers, random
        draws); the batch pays the type check, the peer lookup and the window check once.
        """
        if type in RESERVED_TYPES:
            raise InvalidArgument(f"message type {type!r} is reserved by the delivery protocol")
        if not bodies:
            return []
        peer = self._sending_peer(dst)
        room = self.config.window - len(peer.out)
        if len(bodies) > room:
            bodies = bodies[:room]
            peer.blocked = True  # the rest waits for room: report WindowOpen then
            self.stats["window_full"] += 1
        transmit = self._transmit
        return [transmit(peer, type, body, now, None)[ENV].id for body in bodies]

    def request(self, dst: bytes, body: Any, now: float, *, timeout: float, type: str = "req") -> bytes:
        """Send a request; its reply comes as Replied, or RequestFailed. Returns the request (= message) id."""
        if type in RESERVED_TYPES:
            raise InvalidArgument(f"request type {type!r} is reserved by the delivery protocol")
        if not timeout > 0:
            raise InvalidArgument(f"request timeout must be positive, got {timeout!r}")
        if len(self._requests) >= self.config.max_requests:
            self.stats["request_limit"] += 1
            raise TooManyRequests(f"{len(self._requests)} requests already await a reply")
        peer = self._sending_peer(dst)
        deadline = now + timeout
        p = self._transmit(peer, type, body, now, None, None, ttl_ms(deadline, now))
        rid: bytes = p[ENV].id
        r = PendingRequest(rid, peer, p, deadline)
        p[REQ] = r
        if peer.requests is None:
            peer.requests = {}
        peer.requests[rid] = r
        self._requests[rid] = r
        self._arm(r, deadline)
        return rid

    def reply(self, request: Envelope, body: Any, now: float, *, error: bool = False) -> bytes:
        """Answer a delivered request (type "rep", or "err" if ``error``); reliable like send().

        A reply may exceed the window up to twice its size: it answers a request the peer
        already paid window for, and an application must not be made to hold answers back.
        Only a peer that leaves that many replies unacked gets WindowFull here.
        """
        typ = ERROR_TYPE if error else REPLY_TYPE
        peer = self._sending_peer(request.src, 2 * self.config.window)
        mid: bytes = self._transmit(peer, typ, body, now, request.id)[ENV].id
        return mid

    def cancel_request(self, request_id: bytes) -> None:
        """Stop waiting for a reply; a late one is dropped. The request stays reliable: an unacked one is
        still retransmitted (it was accepted for delivery), but its failure is no longer reported."""
        r = self._requests.pop(request_id, None)
        if r is None:
            return
        self._cancel(r)
        requests = r.peer.requests
        assert requests is not None  # it holds r
        del requests[request_id]
        self.stats["requests_cancelled"] += 1

    def pending(self, dst: bytes | None = None) -> int:
        """Unacked messages to ``dst``, or to everyone."""
        if dst is None:
            return self._npending
        peer = self._peers.get(dst)
        return 0 if peer is None else len(peer.out)

    def buffered(self, src: bytes | None = None) -> tuple[int, int]:
        """(count, bytes) of out-of-order envelopes held from ``src``, or from everyone: accepted, not yet delivered."""
        if src is None:
            return self._buffered, self._buffered_bytes
        peer = self._peers.get(src)
        return (0, 0) if peer is None else (len(peer.buf), peer.buf_bytes)

    def releases(self, env: Envelope) -> tuple[int, int]:
        """(count, bytes) of what ``env`` would hand to the application if it arrived now: itself and the
        out-of-order envelopes it completes. (0, 0) if it would wait in the reorder buffer or is a duplicate.

        A driver that bounds what the application holds admits or refuses ``env`` on this, so the
        envelopes a reorder buffer releases all at once fit its bound too.
        """
        seq = env.seq
        peer = self._peers.get(env.src)
        if seq is None or peer is None or env.ep != peer.in_ep or env.type in RESERVED_TYPES:
            return 1, env.cost  # unsequenced (refused), or the first of a stream: delivered alone
        if seq != peer.cum + 1:
            return 0, 0
        count, cost = 1, env.cost
        buf = peer.buf
        while buf:
            seq += 1
            nxt = buf.get(seq)
            if nxt is None:
                break
            count += 1
            cost += nxt.cost
        return count, cost

    def heard(self, src: bytes, now: float) -> None:
        """``src`` sent us something that was not for this core (a membership probe or its answer, a
        lookup): the path from it works now. If our floor to it has gone unanswered (its timer fired
        at least once), send it again at once, as on a repeated ack (§5.3), rather than on a timer
        that backed off while the path was down: after a peer's restart, a healed cut or a relay's
        restart, membership speaks first and the stream's next copy was up to rto_max (+jitter) away
        (bench/chaos.py: a relay down 2.3 s, the stream behind it resumed 5 s after it was back). For
        the watchdog (§7.3) this is the peer talking, like any envelope of ours."""
        peer = self._peers.get(src)
        if peer is None or not peer.out:
            return
        self._talked(peer, now, now - peer.heard_at)
        peer.heard_at = now
        if now - peer.nudged_at >= self._rto_initial:
            self._resend_floor(peer, self._floor(peer), now)

    def ack(self, src: bytes, now: float) -> None:
        """Send ``src`` an ack of its stream to us now (nothing if we hold none).

        For a driver that refused ``src``'s messages for want of room (they reached no core, so no
        ack said anything) and has room again: the ack repeats our cumulative seq, which makes the
        sender resend its floor at once (§5.2) instead of on its backed-off timer. A window update,
        as TCP's receiver sends when its window opens again (RFC 9293 section 3.8.6.2.2)."""
        peer = self._peers.get(src)
        if peer is not None and peer.in_ep is not None:
            self._send_ack(peer, now)

    def stream_state(self, dst: bytes, now: float) -> dict[str, Any]:
        """Both streams with ``dst`` as this core sees them, for a log line when something looks wrong
        (the watchdog's Stalled carries it): our stream (epoch, next seq, pending seqs, how often they
        were sent, what the peer acked and when) and the peer's stream to us (the epoch we hold, its
        cumulative seq, the reorder buffer). Times are seconds before ``now``. O(pending)."""
        peer = self._peers.get(dst)
        return {} if peer is None else stream_state(peer, now, self.config.window)

    def forget(self, peer: bytes) -> None:
        """Drop all state for a peer (it left or was declared dead); what is in flight to it fails "unreachable"."""
        state = self._peers.pop(peer, None)
        if state is not None:
            self._fail_peer(state, "unreachable")
            self._keep_dedup(state)

    def remember_delivered(self, src: bytes, ids: Iterable[bytes]) -> None:
        """Restore what a previous run of this node delivered from ``src`` (ids, oldest first): they
        enter its dedup memory, so a copy the sender re-sends after our restart is not delivered
        again (protocols/delivery.md §8.1). The driver reads them from durable storage (the
        sidecar's inbound spool) before it receives anything."""
        peer = self._peers.get(src)
        if peer is None:
            peer = self._new_peer(src)
        for mid in ids:
            self._remember(peer, mid)

    # -- network side --------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        """Process one envelope whose ``src`` the transport has authenticated. Bad input is counted, never raised."""
        stats = self.stats
        stats["received"] += 1
        ack = env.ack
        if ack is not None and not ack_ok(ack):
            stats["malformed"] += 1
            return
        typ = env.type
        seq = env.seq
        ep = env.ep
        if typ == ACK_TYPE:
            if ack is None:
                stats["malformed"] += 1
                return
        elif seq is None or ep is None:
            stats["unsequenced"] += 1
            return
        src = env.src
        peers = self._peers
        peer = peers.get(src)
        if peer is None:
            peer = self._new_peer(src)
        else:
            peers.move_to_end(src)
        silent = now - peer.heard_at
        peer.heard_at = now
        if ack is not None and not self._on_ack(peer, ack, now):
            return
        if peer.out and peer.acked_at != now:  # (an envelope that acked progress starts no clock)
            self._talked(peer, now, silent)
            if silent > self._quiet and now - peer.nudged_at >= self._rto_initial:
                # Back from a silence (restarted, or a path healed): as when membership hears it first.
                self._resend_floor(peer, self._floor(peer), now)
        if typ == ACK_TYPE:
            return
        assert seq is not None and ep is not None  # checked above for every type but ack
        if ep != peer.in_ep and not self._enter_epoch(peer, ep):
            pass  # a late frame of an older stream: dropped, but acked, so its sender learns our epoch
        elif typ == FWD_TYPE:
            self._on_fwd(peer, seq)
        else:
            cum = peer.cum
            buf = peer.buf
            if seq == cum + 1:
                self._deliver(peer, env)
                if buf:
                    nxt = buf.pop(seq + 1, None)
                    while nxt is not None:
                        seq += 1
                        self._unbuffered(peer, nxt)
                        self._deliver(peer, nxt)
                        nxt = buf.pop(seq + 1, None)
                peer.cum = seq
            elif seq <= cum:
                stats["duplicates"] += 1
            elif seq in buf:
                stats["duplicates"] += 1
                buf[seq] = buf.pop(seq)  # newest again, so the next ack's selective list reports it
            elif seq - cum > self.config.reorder_limit or len(buf) >= self.config.reorder_limit:
                stats["reorder_overflow"] += 1  # dropped, in no ack: the sender retransmits it later
            elif (buf and peer.buf_bytes + env.cost > self.config.reorder_bytes) or (
                    self._buffered and self._buffered_bytes + env.cost > self.config.reorder_bytes_total):
                stats["reorder_bytes_full"] += 1  # likewise
            else:
                buf[seq] = env
                peer.buf_bytes += env.cost
                self._buffered += 1
                self._buffered_bytes += env.cost
                stats["out_of_order"] += 1
        owed = peer.owed + 1
        peer.owed = owed
        if owed >= self._ack_every:
            self._send_ack(peer, now)
        elif owed == 1:
            self._arm(peer, now + self._ack_delay)

    def tick(self, now: float) -> None:
        """Fire every timer due by ``now``: retransmits, give-ups, request deadlines, delayed acks, fwds,
        the stall watchdog."""
        for e in self._due(now):
            if type(e) is list:
                self._retransmit(e, now)
                continue
            kind = e.kind
            if kind == ACK_TIMER:
                if e.owed:
                    self._send_ack(e, now)
            elif kind == WATCH_TIMER:
                self._watchdog(e, now)
            else:
                self._deadline(e)
        if self._fwd_due:
            # One fwd per peer for all the messages abandoned in this tick.
            for peer in self._fwd_due.values():
                if self._peers.get(peer.id) is peer and self._floor(peer) > peer.rcum + 1:
                    self._send_fwd(peer, now)
            self._fwd_due.clear()

    # -- sending -------------------------------------------------------------------

    def _sending_peer(self, dst: bytes, limit: int = 0) -> Peer:
        peer = self._peers.get(dst)
        if peer is None:
            return self._new_peer(dst)
        self._peers.move_to_end(dst)
        if len(peer.out) >= (limit or self.config.window):
            peer.blocked = True
            self.stats["window_full"] += 1
            raise WindowFull(f"{len(peer.out)} messages to {dst.hex()[:12]} are unacked (window {self.config.window})")
        return peer

    # -- receiving -----------------------------------------------------------------

    def _enter_epoch(self, peer: Peer, ep: int) -> bool:
        """A sequenced envelope from an epoch we are not in: a newer stream (higher epoch), which
        replaces the one we hold, or a late packet of an older one (lower epoch), which is stale."""
        old = peer.in_ep
        if old is not None:
            if ep < old:
                self.stats["stale_epoch"] += 1
                return False
            self.stats["epoch_resets"] += 1
            self._discard_buffer(peer)
        peer.in_ep = ep
        peer.cum = 0
        return True

    def _on_fwd(self, peer: Peer, floor: int) -> None:
        """The sender no longer sends anything below ``floor`` that we lack: deliver around the holes."""
        self.stats["fwd_received"] += 1
        cum = peer.cum
        if floor - 1 <= cum:
            return
        buf = peer.buf
        below = sorted(s for s in buf if s < floor)
        for s in below:
            env = buf.pop(s)
            self._unbuffered(peer, env)
            self._deliver(peer, env)
        self.stats["skipped"] += floor - 1 - cum - len(below)
        cum = floor - 1
        nxt = buf.pop(cum + 1, None)
        while nxt is not None:
            cum += 1
            self._unbuffered(peer, nxt)
            self._deliver(peer, nxt)
            nxt = buf.pop(cum + 1, None)
        peer.cum = cum

    def _unbuffered(self, peer: Peer, env: Envelope) -> None:
        """Account for an envelope just taken out of ``peer``'s reorder buffer."""
        peer.buf_bytes -= env.cost
        self._buffered -= 1
        self._buffered_bytes -= env.cost

    def _discard_buffer(self, peer: Peer) -> None:
        """Throw away ``peer``'s reorder buffer (a new epoch, or its state is dropped)."""
        self.stats["buffer_discarded"] += len(peer.buf)
        self._buffered -= len(peer.buf)
        self._buffered_bytes -= peer.buf_bytes
        peer.buf.clear()
        peer.buf_bytes = 0

    def _deliver(self, peer: Peer, env: Envelope) -> None:
        """Hand an in-order envelope to the application, unless its id was delivered recently."""
        if not self._remember(peer, env.id):
            self.stats["duplicates"] += 1
            return
        typ = env.type
        if typ == REPLY_TYPE or typ == ERROR_TYPE:
            self._on_reply(peer, env)
        else:
            self.stats["delivered"] += 1
            self._events.append(Delivered(env))

    def _remember(self, peer: Peer, mid: bytes) -> bool:
        """Add a delivered id to the peer's dedup memory (the oldest beyond dedup_window is forgotten);
        False if it is already there."""
        ids = peer.ids
        if ids is None:
            ids = peer.ids = set()
        elif mid in ids:
            return False
        ids.add(mid)
        lru = self._dedup_lru
        lru[peer.id] = None
        lru.move_to_end(peer.id)
        ring = peer.ring
        if len(ring) < self._dedup_window:
            ring.append(mid)
            self._dedup_ids += 1
            if self._dedup_ids > self.config.dedup_total:
                self._drop_oldest_dedup(peer.id)
        else:
            pos = peer.ring_pos
            ids.discard(ring[pos])
            ring[pos] = mid
            peer.ring_pos = (pos + 1) % len(ring)
        return True

    def _drop_oldest_dedup(self, keep: bytes) -> None:
        """Over dedup_total: forget whole memories, the sender that delivered least recently first
        (never ``keep``, the one delivering now: a single sender is bounded by dedup_window)."""
        lru = self._dedup_lru
        while self._dedup_ids > self.config.dedup_total and len(lru) > 1:
            pid = next(iter(lru))
            if pid == keep:
                lru.move_to_end(pid)
                continue
            del lru[pid]
            peer = self._peers.get(pid)
            if peer is not None:
                self._dedup_ids -= len(peer.ring)
                peer.ids, peer.ring, peer.ring_pos = None, [], 0
            else:
                kept = self._kept.pop(pid, None)
                if kept is not None:
                    self._dedup_ids -= len(kept[1])
            self.stats["dedup_dropped"] += 1

    def _on_reply(self, peer: Peer, env: Envelope) -> None:
        r = peer.requests.pop(env.re, None) if peer.requests and env.re is not None else None
        if r is None:
            self.stats["replies_unmatched"] += 1  # late (timed out, cancelled) or never asked of this peer
            return
        del self._requests[r.id]
        self._cancel(r)
        self.stats["replies"] += 1
        self._events.append(Replied(r.id, env))

    def _deadline(self, r: PendingRequest) -> None:
        """The request's deadline passed: fail it, and stop retransmitting it if it is still unacked."""
        del self._requests[r.id]
        requests = r.peer.requests
        assert requests is not None  # it holds r
        del requests[r.id]
        if r.pending[ENV] is not None:
            self._abandon(r.pending)
        self.stats["requests_timed_out"] += 1
        self._events.append(RequestFailed(r.id, r.peer.id, "timeout"))

    # -- bookkeeping -----------------------------------------------------------------

    def _new_peer(self, pid: bytes) -> Peer:
        peers = self._peers
        if len(peers) >= self.config.max_peers:
            _, old = peers.popitem(last=False)
            self.stats["peers_evicted"] += 1
            self._fail_peer(old, "evicted")
            self._keep_dedup(old)
        peer = Peer(pid, self._next_epoch())
        peers[pid] = peer
        kept = self._kept.pop(pid, None) if self._kept else None
        if kept is not None:
            # The same sender again (restarted, or back after being declared dead): what it re-sends
            # from before is still recognised, and its older epochs cannot reset the new stream. The
            # stream we held goes on from cum 0, as if we had lost its state (§7.2).
            peer.ids, peer.ring, peer.ring_pos, peer.in_ep = kept
            self.stats["dedup_restored"] += 1
        return peer

    def _keep_dedup(self, peer: Peer) -> None:
        """Remember a dropped peer's delivered ids (and its epoch) for when it comes back."""
        limit = self.config.kept_dedup
        if not peer.ids:
            return
        if not limit:
            self._dedup_ids -= len(peer.ring)
            self._dedup_lru.pop(peer.id, None)
            return
        kept = self._kept
        kept[peer.id] = (peer.ids, peer.ring, peer.ring_pos, peer.in_ep)
        kept.move_to_end(peer.id)
        while len(kept) > limit:
            pid, (_, ring, _, _) = kept.popitem(last=False)
            self._dedup_ids -= len(ring)
            self._dedup_lru.pop(pid, None)

    def _fail_peer(self, peer: Peer, reason: str) -> None:
        """Fail everything in flight to a peer whose state is being dropped, and disarm its timers."""
        events = self._events
        for p in peer.out.values():
            if p[REQ] is None:
                self.stats["send_failed"] += 1
                events.append(SendFailed(p[ENV].id, peer.id, reason))
            self._settle(p)
        self._npending -= len(peer.out)
        self.stats["abandoned"] += len(peer.out)
        peer.out.clear()
        for r in (peer.requests or {}).values():
            self._cancel(r)
            del self._requests[r.id]
            self.stats["requests_failed"] += 1
            events.append(RequestFailed(r.id, peer.id, reason))
        peer.requests = None
        self._cancel(peer)
        self._unwatch(peer)
        if peer.blocked:
            events.append(WindowOpen(peer.id))  # can_send() is true again: the state is gone
        self._discard_buffer(peer)
