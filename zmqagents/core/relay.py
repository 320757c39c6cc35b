"""Relaying for nodes that cannot accept connections (sans-IO).

A node behind NAT (an *edge* node, ``outbound_only``) connects out to one or more relay nodes and
registers with each. A relay forwards envelopes addressed to its registered clients back over the
connection the client opened, and forwards its clients' envelopes to the nodes it can reach. The
forwarded envelope is signed by its original sender (and optionally sealed to the destination), so
the relay can neither forge nor alter it: wrapping and unwrapping live in
``zmqagents/transport/relaying.py``; this module holds the decisions with state and time in them.

* :class:`RelayServer` runs on a relay: registrations (expiring when a client goes quiet),
  per-sender and total rate limits (token buckets), refusal of unknown destinations, counters.
* :class:`RelayClient` runs on an edge node: a keepalive registration per relay, and the
  up/down state of each relay from the answers, so the node fails over to another relay.

The wire messages (all plain, unreliable envelopes; see ``protocols/node.md``, "Relaying"):

=============  ==================  ==========================================================
type           direction           body
=============  ==================  ==========================================================
``relay.reg``  client -> relay     ``{"n": int}``: register or refresh; ``n`` echoes back
``relay.ok``   relay -> client     ``{"n": int, "exp": ms}``: registered until ``exp`` ms of silence
``relay.no``   relay -> client     ``{"n": int, "why": str}``: refused (``full``, ``not_a_relay``)
``relay.fwd``  anyone -> relay     ``{"to": id, "e": frame}`` or ``{"to": id, "from": key, "box": bytes}``
``relay.dlv``  relay -> ``to``     the ``relay.fwd`` body, unchanged
``relay.err``  relay -> sender     ``{"to": id, "why": str}``: not forwarded (``unknown``, ``rate``, ...)
``relay.ack``  ``to`` -> relay     ``{"w": token}``: every ``relay.dlv`` up to the one that carried ``w`` arrived
``relay.ask``  relay -> ``to``     ``{"w": token}``: the window is full; acknowledge up to ``w`` if it arrived
=============  ==================  ==========================================================

A relay holds what it forwards until the destination reads it, so what it may have outstanding per
destination is bounded in bytes (a *window*): each ``relay.dlv`` carries a fresh random token ``w``,
the destination acknowledges the tokens it receives (:class:`RelayAcker`), and a forward that would
exceed the window is refused until an acknowledgement frees it. The tokens are random so that a
destination cannot open its window without reading what was sent to it.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from ..envelope import Envelope
from .outputs import CoreOutputs
from .ratelimit import TokenBucket
from ..errors import InvalidArgument

RELAY_PREFIX = "relay."
REGISTER = "relay.reg"
REGISTERED = "relay.ok"
REFUSED = "relay.no"
FORWARD = "relay.fwd"
DELIVER = "relay.dlv"
NOT_FORWARDED = "relay.err"
ACKNOWLEDGE = "relay.ack"
ASK = "relay.ask"
# Every relay message type: a set lookup costs the receive path of ordinary traffic less than a prefix test.
RELAY_TYPES = frozenset({REGISTER, REGISTERED, REFUSED, FORWARD, DELIVER, NOT_FORWARDED, ACKNOWLEDGE, ASK})

NODE_ID_LEN = 32
TOKEN_LEN = 8  # bytes of a relay.dlv's window token
ENTRY_BYTES = 64  # charged to a window per forward besides its payload: what the relay keeps about it


@dataclass
class RelayConfig:
    """Limits of a relay and timers of a relay client. A limit that is hit is counted, never queued."""

    # -- relay side --
    max_clients: int = 1024  # registrations held; a new client beyond it is refused ("full")
    expire: float = 10.0  # s of silence from a client after which its registration is dropped
    client_rate: float = 2000.0  # forwards per second per sender (token bucket refill) ...
    client_burst: float = 4000.0  # ... and the bucket's size: a sender may burst this many at once
    total_rate: float = 20000.0  # forwards per second over all senders ...
    total_burst: float = 40000.0  # ... and that bucket's size
    max_senders: int = 4096  # senders whose buckets are remembered (LRU); a forgotten one starts full
    # Bytes forwarded to one destination and not yet acknowledged by it; a forward beyond is refused. Two
    # maximum-size envelopes, or ~7,000 small ones: far more than a destination's delivery window needs
    # in flight over one relay, and what a destination that stops reading can make the relay hold.
    window_bytes: int = 2 << 20
    total_window_bytes: int = 32 << 20  # ... over all destinations together
    ask_after: float = 1.0  # s between two relay.ask to a destination whose window stays full
    # -- client side --
    keepalive: float = 2.0  # s between registrations sent to each relay (well under ``expire``)
    dead_after: float = 5.0  # s without an answer after which a relay counts as down
    # -- destination side (any node a relay delivers to) --
    ack_bytes: int = 64 << 10  # acknowledge a relay's deliveries once this many payload bytes are unacknowledged...
    ack_count: int = 32  # ... or this many deliveries (and always when asked)

    def __post_init__(self) -> None:
        for name in ("max_clients", "expire", "client_rate", "client_burst", "total_rate", "total_burst",
                     "max_senders", "window_bytes", "total_window_bytes", "ask_after", "keepalive", "dead_after",
                     "ack_bytes", "ack_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgument(f"RelayConfig.{name} must be a positive number, got {value!r}")


@dataclass(slots=True, frozen=True)
class RelayUp:
    """A relay answered a registration (first time, or again after being down)."""

    node_id: bytes


@dataclass(slots=True, frozen=True)
class RelayDown:
    """A relay stopped answering (``dead_after`` without an answer) or refused us."""

    node_id: bytes
    reason: str


RELAY_SERVER_STATS = (
    "registered",  # new registrations
    "refreshed",  # keepalives from registered clients
    "expired",  # registrations dropped after ``expire`` of silence
    "refused_full",  # registrations refused: max_clients reached
    "forwarded",  # relay.fwd passed on as relay.dlv
    "forwarded_bytes",  # payload bytes of those
    "refused_unknown",  # destination neither a client nor (for a client's own traffic) directly reachable
    "refused_client_rate",  # sender over its token bucket
    "refused_total_rate",  # the relay over its total bucket
    "refused_malformed",  # body not a map with a 32-byte "to" and bytes payload
    "refused_loop",  # forward to the sender itself or to the relay
    "refused_window",  # the destination's window is full (it has not acknowledged what it was sent)
    "refused_total_window",  # the windows of all destinations together are full
    "asked",  # relay.ask sent to a destination whose window was full
    "acked_bytes",  # bytes freed by relay.ack
    "acks_unknown",  # relay.ack naming no outstanding token of its sender (stale, or made up)
)


class _Window:
    """What a relay forwarded to one destination and has not had acknowledged: (token, bytes), oldest first."""

    __slots__ = ("sent", "tokens", "bytes", "asked_at")

    def __init__(self) -> None:
        self.sent: deque[tuple[bytes, int]] = deque()
        self.tokens: set[bytes] = set()
        self.bytes = 0
        self.asked_at = float("-inf")


class RelayServer(CoreOutputs):
    """The relay's side: who is registered, what may be forwarded, and counters for all of it.

    ``direct_route(node_id)`` tells whether this node reaches ``node_id`` without a relay of its own
    (an open connection, or a direct contact). It is asked only for traffic *from* a registered client:
    a relay serves its clients' outgoing traffic like a NAT gateway, but forwards traffic from anyone
    else only *to* its registered clients. Nothing is queued here: a forward is decided and emitted
    at once, and the sockets' high-water marks bound what waits below.
    """

    def __init__(self, node_id: bytes, rng: random.Random, config: RelayConfig | None = None, *,
                 direct_route: Callable[[bytes], bool] = lambda node_id: False):
        super().__init__()
        self.node_id = node_id
        self.config = config or RelayConfig()
        self._rng = rng
        self._direct_route = direct_route
        self._clients: dict[bytes, float] = {}  # client id -> last heard (our clock)
        self._buckets: dict[bytes, TokenBucket] = {}  # sender id -> its token bucket (insertion = LRU order)
        self._total: TokenBucket | None = None
        self._windows: dict[bytes, _Window] = {}  # destination -> what it has not acknowledged (none: no entry)
        self.window_total = 0  # bytes outstanding over all destinations
        self.stats: dict[str, int] = {name: 0 for name in RELAY_SERVER_STATS}

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._clients

    def __len__(self) -> int:
        return len(self._clients)

    def clients(self) -> list[bytes]:
        return list(self._clients)

    def receive(self, env: Envelope, now: float) -> None:
        """Handle a ``relay.reg`` or ``relay.fwd`` (other types are ignored)."""
        src = env.src
        clients = self._clients
        if src in clients:
            clients[src] = now  # any traffic from a client keeps its registration
        if env.type == REGISTER:
            self._register(env, now)
        elif env.type == FORWARD:
            self._forward(env, now)
        elif env.type == ACKNOWLEDGE:
            self._acknowledged(env)

    def _register(self, env: Envelope, now: float) -> None:
        body = env.body
        nonce = body.get("n") if isinstance(body, dict) else None
        if type(nonce) is not int:
            nonce = 0
        src = env.src
        if src in self._clients:
            self.stats["refreshed"] += 1
        elif len(self._clients) >= self.config.max_clients:
            self.stats["refused_full"] += 1
            self._send(src, REFUSED, {"n": nonce, "why": "full"}, env.id)
            return
        else:
            self._clients[src] = now
            self.stats["registered"] += 1
        self._send(src, REGISTERED, {"n": nonce, "exp": int(self.config.expire * 1000)}, env.id)

    def _forward(self, env: Envelope, now: float) -> None:
        body = env.body
        to = body.get("to") if type(body) is dict else None
        payload = (body.get("e") or body.get("box")) if to is not None else None
        if type(to) is not bytes or len(to) != NODE_ID_LEN or type(payload) is not bytes:
            self.stats["refused_malformed"] += 1
            return
        src = env.src
        if to == src or to == self.node_id:
            self.stats["refused_loop"] += 1
            self._refuse(env, to, "loop")
            return
        if to not in self._clients and not (src in self._clients and self._direct_route(to)):
            self.stats["refused_unknown"] += 1
            self._refuse(env, to, "unknown")
            return
        cfg = self.config
        size = len(payload) + ENTRY_BYTES
        window = self._windows.get(to)
        if window is not None and window.bytes + size > cfg.window_bytes:  # an empty window takes any one
            self.stats["refused_window"] += 1
            if now - window.asked_at >= cfg.ask_after:  # perhaps only the acknowledgement was lost
                window.asked_at = now
                self.stats["asked"] += 1
                self._send(to, ASK, {"w": window.sent[-1][0]})
            return  # not answered, like a rate refusal: the sender retransmits later
        if self.window_total + size > cfg.total_window_bytes:
            self.stats["refused_total_window"] += 1
            return
        bucket = self._buckets.pop(src, None)  # re-inserted below: most recently used last
        if bucket is None:
            bucket = TokenBucket(cfg.client_burst, now)
            if len(self._buckets) >= cfg.max_senders:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[src] = bucket
        if not bucket.take(now, cfg.client_rate, cfg.client_burst):
            self.stats["refused_client_rate"] += 1
            self._refuse(env, to, "rate")
            return
        total = self._total
        if total is None:
            total = self._total = TokenBucket(cfg.total_burst, now)
        if not total.take(now, cfg.total_rate, cfg.total_burst):
            bucket.tokens += 1.0  # not this sender's fault: give its token back
            self.stats["refused_total_rate"] += 1
            self._refuse(env, to, "busy")
            return
        self.stats["forwarded"] += 1
        self.stats["forwarded_bytes"] += len(payload)
        if window is None:
            window = self._windows[to] = _Window()
        token = self._rng.randbytes(TOKEN_LEN)
        window.sent.append((token, size))
        window.tokens.add(token)
        window.bytes += size
        self.window_total += size
        self._out.append(Envelope(id=self._rng.randbytes(16), src=self.node_id, dst=to, type=DELIVER,
                                  body={**body, "w": token}))

    def _acknowledged(self, env: Envelope) -> None:
        """``relay.ack``: the sender received every delivery up to the one with token ``w`` (or they
        were lost on the way: either way the relay no longer holds them)."""
        body = env.body
        token = body.get("w") if type(body) is dict else None
        window = self._windows.get(env.src)
        if window is None or token not in window.tokens:
            self.stats["acks_unknown"] += 1
            return
        freed = 0
        while True:
            sent, size = window.sent.popleft()
            window.tokens.discard(sent)
            freed += size
            if sent == token:
                break
        window.bytes -= freed
        self.window_total -= freed
        self.stats["acked_bytes"] += freed
        if not window.sent:
            del self._windows[env.src]

    def outstanding(self, node_id: bytes) -> int:
        """Bytes forwarded to ``node_id`` and not acknowledged yet."""
        window = self._windows.get(node_id)
        return 0 if window is None else window.bytes

    def _refuse(self, env: Envelope, to: bytes, why: str) -> None:
        """Tell the sender at once, so it tries another relay rather than wait for a retransmit.
        Rate refusals are not answered per message: that would double the load that caused them."""
        if why in ("rate", "busy"):
            return
        self._send(env.src, NOT_FORWARDED, {"to": to, "why": why}, env.id)

    def _send(self, dst: bytes, typ: str, body: Any, re: bytes | None = None) -> None:
        self._out.append(Envelope(id=self._rng.randbytes(16), src=self.node_id, dst=dst, type=typ, body=body, re=re))

    def forget(self, node_id: bytes) -> None:
        """The node is gone (membership confirmed it dead, or it left): drop its registration, and its
        window (the transport drops what it still queued for it)."""
        self._clients.pop(node_id, None)
        window = self._windows.pop(node_id, None)
        if window is not None:
            self.window_total -= window.bytes

    def tick(self, now: float) -> None:
        limit = now - self.config.expire
        stale = [nid for nid, heard in self._clients.items() if heard <= limit]
        for nid in stale:
            del self._clients[nid]
            self.stats["expired"] += 1

    def next_timer(self) -> float | None:
        if not self._clients:
            return None
        return min(self._clients.values()) + self.config.expire


class _RelayState:
    __slots__ = ("node_id", "up", "last_ok", "sent_at", "nonce")

    def __init__(self, node_id: bytes):
        self.node_id = node_id
        self.up = False
        self.last_ok: float | None = None
        self.sent_at: float | None = None
        self.nonce = 0


class RelayClient(CoreOutputs):
    """An edge node's side: register with every relay every ``keepalive`` s, and track which answer.

    A relay is *up* from its first ``relay.ok`` until ``dead_after`` s pass without one (or it sends
    ``relay.no``); the events say when that changes. :meth:`active` lists the relays that are up, in
    the configured order, which is the order the node uses them in.
    """

    def __init__(self, node_id: bytes, relays: list[bytes], rng: random.Random, config: RelayConfig | None = None):
        super().__init__()
        self.node_id = node_id
        if not relays:
            raise InvalidArgument("a relay client needs at least one relay")
        self.config = config or RelayConfig()
        self._rng = rng
        self._relays = {nid: _RelayState(nid) for nid in relays}
        self._order = list(relays)
        self._started_at: float | None = None
        self._next_at: float | None = None
        self.stats = {"registrations_sent": 0, "answers": 0, "refusals": 0, "went_down": 0, "came_up": 0,
                      "answers_unexpected": 0}

    def start(self, now: float) -> None:
        self._started_at = now
        self._send_all(now)

    def active(self) -> list[bytes]:
        return [nid for nid in self._order if self._relays[nid].up]

    def receive(self, env: Envelope, now: float) -> None:
        state = self._relays.get(env.src)
        if state is None:
            self.stats["answers_unexpected"] += 1
            return
        if env.type == REGISTERED:
            self.stats["answers"] += 1
            state.last_ok = now
            if not state.up:
                state.up = True
                self.stats["came_up"] += 1
                self._events.append(RelayUp(state.node_id))
        elif env.type == REFUSED:
            self.stats["refusals"] += 1
            why = env.body.get("why") if isinstance(env.body, dict) else None
            self._down(state, f"refused: {why if isinstance(why, str) else 'no reason'}")

    def _down(self, state: _RelayState, reason: str) -> None:
        if state.up:
            state.up = False
            self.stats["went_down"] += 1
            self._events.append(RelayDown(state.node_id, reason))

    def tick(self, now: float) -> None:
        if self._started_at is None:
            return
        dead_after = self.config.dead_after
        for state in self._relays.values():
            heard = state.last_ok if state.last_ok is not None else self._started_at
            if state.up and now - heard >= dead_after:
                self._down(state, f"no answer for {now - heard:.1f} s")
        if self._next_at is not None and now >= self._next_at:
            self._send_all(now)

    def _send_all(self, now: float) -> None:
        for state in self._relays.values():
            state.nonce += 1
            state.sent_at = now
            self.stats["registrations_sent"] += 1
            self._out.append(Envelope(id=self._rng.randbytes(16), src=self.node_id, dst=state.node_id, type=REGISTER,
                                      body={"n": state.nonce}))
        self._next_at = now + self.config.keepalive

    def next_timer(self) -> float | None:
        at = self._next_at
        for state in self._relays.values():
            if state.up and state.last_ok is not None:
                due = state.last_ok + self.config.dead_after
                if at is None or due < at:
                    at = due
        return at


class RelayAcker(CoreOutputs):
    """A destination's side of the relay windows: acknowledge what relays deliver.

    Every node a relay delivers to runs one (an edge node, and any node that an edge node's traffic
    reaches through a relay). Acknowledgements are cumulative, so one per ``ack_bytes`` of payload or
    ``ack_count`` deliveries from a relay keeps its window open; a ``relay.ask`` is answered at once.
    Memory: two counters per relay that delivered since its last acknowledgement, at most ``max_relays``."""

    def __init__(self, node_id: bytes, rng: random.Random, config: RelayConfig | None = None, *,
                 max_relays: int = 4096):
        super().__init__()
        self.node_id = node_id
        self.config = config or RelayConfig()
        self._rng = rng
        self._max_relays = max_relays
        self._pending: dict[bytes, list[int]] = {}  # relay -> [bytes, deliveries] not yet acknowledged
        self.stats = {"acks_sent": 0, "asks_answered": 0}

    def delivered(self, env: Envelope) -> None:
        """A ``relay.dlv`` from ``env.src`` was read (whether or not what it carried was valid)."""
        body = env.body
        token = body.get("w") if type(body) is dict else None
        if type(token) is not bytes:
            return  # a relay that keeps no window
        payload = body.get("e") or body.get("box")
        pending = self._pending.get(env.src)
        if pending is None:
            if len(self._pending) >= self._max_relays:
                self._pending.pop(next(iter(self._pending)))  # that relay is asked before it stalls
            pending = self._pending[env.src] = [0, 0]
        pending[0] += len(payload) if type(payload) is bytes else 0
        pending[1] += 1
        if pending[0] >= self.config.ack_bytes or pending[1] >= self.config.ack_count:
            del self._pending[env.src]
            self._ack(env.src, token)

    def asked(self, env: Envelope) -> None:
        """A ``relay.ask``: everything the relay sent before it has arrived or is lost, so acknowledge it."""
        body = env.body
        token = body.get("w") if type(body) is dict else None
        if type(token) is bytes:
            self._pending.pop(env.src, None)
            self.stats["asks_answered"] += 1
            self._ack(env.src, token)

    def _ack(self, relay: bytes, token: bytes) -> None:
        self.stats["acks_sent"] += 1
        self._out.append(Envelope(id=self._rng.randbytes(16), src=self.node_id, dst=relay, type=ACKNOWLEDGE,
                                  body={"w": token}))
