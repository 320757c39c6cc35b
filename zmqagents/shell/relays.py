"""The shell's side of relaying (protocols/node.md, "Relaying"): what the relay cores leave to sockets.

The decisions live in :mod:`zmqagents.core.relay` and are wired into the node by NodeCore. What is
left here needs the transport: an outbound-only node advertises its relays as its endpoint and keeps
their order in the transport's relay paths (the live ones first); a relayed delivery is unwrapped
and checked by those paths; a relay request to a node that serves none is refused; a refusal from a
relay demotes that path; a relay that comes back after being down is greeted again.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Callable

from ..core.relay import (
    ASK,
    DELIVER,
    FORWARD,
    NOT_FORWARDED,
    REFUSED,
    REGISTER,
    RelayAcker,
    RelayClient,
    RelayConfig,
    RelayDown,
    RelayServer,
    RelayUp,
)
from ..envelope import Envelope
from ..identity import Contact, short_id
from ..transport.mesh import Transport
from .types import MemberEvent

log = logging.getLogger("zmqagents.node")


class Relays:
    """A node's relay glue: the client side on an outbound-only node (``relays``: its relays, preferred
    first), the server side with ``serve``. ``emit`` reports relay_up/relay_down member events;
    ``greet(contact)`` says hello to a relay again."""

    def __init__(self, transport: Transport, relays: list[Contact], config: RelayConfig, rng: random.Random,
                 stats: dict[str, int], *, outbound_only: bool, serve: bool,
                 emit: Callable[[MemberEvent], None], greet: Callable[[Contact], None]):
        self.transport = transport
        self.relays = relays
        self.config = config
        self._rng = rng
        self._stats = stats  # the node's counters: relay_not_served, relay_refusals_received
        self._outbound_only = outbound_only
        self._serve = serve
        self._emit = emit
        self._greet = greet
        self.client: RelayClient | None = None  # on an outbound-only node
        self.server: RelayServer | None = None  # with serve
        self.acker: RelayAcker | None = None  # made when a relay first delivers to us
        self._seen_up: set[bytes] = set()

    def start(self) -> None:
        """Once the transport is started: advertise the relays (outbound-only), make the relay cores."""
        transport = self.transport
        node_id = transport.identity.node_id
        if self._outbound_only:
            transport.advertised = Contact.via(transport.identity.public_key, self.relays)
            paths = transport.paths()
            paths.edge = [r.node_id for r in self.relays]
            for relay in self.relays:
                transport.add_contact(relay)
            self.client = RelayClient(node_id, paths.edge[:], self._rng, self.config)
        if self._serve:
            self.server = RelayServer(node_id, self._rng, self.config, direct_route=transport.direct_route)

    def on_envelope(self, env: Envelope, batch: list[Envelope]) -> None:
        """The relay envelopes NodeCore leaves to the shell: a relayed delivery (unwrapped by the
        transport's paths), a relay request when we serve none, a refusal that demotes a relay path."""
        typ = env.type
        transport = self.transport
        if typ == DELIVER:
            self._acker().delivered(env)  # read, so the relay may forward more (valid or not)
            self._send_acks()
            inner = transport.paths().unwrap(env)  # verified, or dropped and counted
            if inner is not None and transport.admits(inner):  # a fleet takes certified senders only
                batch.append(inner)  # the caller's loop handles it next, like any other arrival
        elif typ == ASK:
            self._acker().asked(env)
            self._send_acks()
        elif typ == FORWARD or typ == REGISTER:  # we serve no relay (NodeCore took it otherwise)
            self._stats["relay_not_served"] += 1
            body = {"to": env.body.get("to") if isinstance(env.body, dict) else None, "why": "not_a_relay"}
            if typ == REGISTER:
                body = {"n": 0, "why": "not_a_relay"}
            transport.send(Envelope(id=os.urandom(16), src=transport.identity.node_id, dst=env.src,
                                    type=NOT_FORWARDED if typ == FORWARD else REFUSED, body=body, re=env.id))
        elif typ == NOT_FORWARDED:
            self._stats["relay_refusals_received"] += 1
            to = env.body.get("to") if isinstance(env.body, dict) else None
            if type(to) is bytes and transport.relaying is not None:
                transport.relaying.demote(env.src, to)  # try that destination's next relay first

    def _acker(self) -> RelayAcker:
        if self.acker is None:
            self.acker = RelayAcker(self.transport.identity.node_id, self._rng, self.config)
        return self.acker

    def _send_acks(self) -> None:
        for ack in self._acker().take_outgoing():
            self.transport.send(ack)

    def on_event(self, event: RelayUp | RelayDown) -> None:
        """One of our relays started or stopped answering our keepalive (outbound-only nodes)."""
        client = self.client
        assert client is not None  # only the relay client reports these
        paths = self.transport.paths()
        active = client.active()
        paths.edge = active + [r for r in paths.edge if r not in active]
        if isinstance(event, RelayDown):
            log.warning("relay %s is down (%s); %d relay(s) up", short_id(event.node_id), event.reason, len(active))
            paths.demote(event.node_id)
            self._emit(MemberEvent("relay_down", event.node_id))
        else:
            log.info("relay %s is up", short_id(event.node_id))
            self._emit(MemberEvent("relay_up", event.node_id))
            if event.node_id in self._seen_up:
                # Back after being down (perhaps restarted, its table empty): introduce ourselves again,
                # so it hands our relayed contact out in lookups once more.
                self._greet(next(c for c in self.relays if c.node_id == event.node_id))
            self._seen_up.add(event.node_id)
