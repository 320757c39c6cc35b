"""One node's protocol cores wired together, sans-IO: the wiring a real node and the simulator share.

The cores (routing, membership, the DHT, the relay's two sides) are each complete on their own; what
makes them one node is a handful of rules, and :class:`NodeCore` is the one place they are written:

* **who gets an envelope**: ``kad.`` to the routing core, ``dht.`` to the DHT core (both refresh or
  add the sender in the table themselves), ``swim.`` to membership, ``relay.reg``/``relay.fwd`` to
  the relay server and ``relay.ok``/``relay.no`` to the relay client when the node has them. Every
  envelope other than ``kad.``/``dht.`` is also evidence that its sender is alive: it refreshes a
  contact the table already holds (it never adds one: the table admits only advertised contacts).
* **membership probes exactly the table's contacts**: contacts entering the table are ``add``-ed to
  membership, contacts leaving it ``remove``-d. The table is diffed against what membership holds
  only when its change counters (``table_added`` + ``table_removed`` + ``table_replaced``) moved
  since the last look, right after each call that can change it, so the common message costs one
  integer sum and a replacement is probed at once (not on a timer).
* **gone means forgotten everywhere**: membership ``Failed``/``Left`` -> the routing table forgets
  it (its freshest replacement is promoted, then added to membership by the diff), the DHT drops
  its provider entries, the relay server its registration, and :class:`PeerGone` tells the shell to
  drop its link and delivery state. A contact the table gave up on its own (RPCs to it failed)
  before membership concluded is removed from membership (we would never hear its ``Failed``) and
  its provider entries go (:class:`TableDropped`; its link stays: it may be alive).
* **alive again**: membership ``Alive`` (a dead member answered, a suspicion cleared) -> the routing
  table observes the contact.
* **where to send**: :meth:`contact_for` is the contact any core knows for a destination, for the
  shell to dial before it sends what :meth:`take_outgoing` returned.

Delivery (:mod:`zmqagents.core.delivery`) stays beside this object, driven by the shell: it shares no
state with these cores (its only wiring is "forget a gone peer", which :class:`PeerGone` carries) and
its input is gated by the shell's inbox before the core sees it, so putting it here would move the
inbox's admission into the composition for no shared rule.

The driver calls :meth:`receive` with each authenticated envelope, :meth:`tick` at
:meth:`next_timer`, and after either drains :meth:`take_outgoing` and then :meth:`take_events`
(draining events applies the wiring above, which may queue more to send: drain until no events).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Union

from ..envelope import Envelope
from ..identity import Contact
from .broadcast import Broadcast, Delivered, Gap
from .broadcast_sample import PeerSample
from .broadcast_wire import PREFIX as BROADCAST_PREFIX
from .dht import PREFIX as DHT_PREFIX
from .dht import DhtCore, DhtDone
from .membership import Alive, Failed, Left, Membership, Refuted, Suspect
from .outputs import CoreOutputs
from .relay import ACKNOWLEDGE, FORWARD, REFUSED, REGISTER, REGISTERED, RelayClient, RelayDown, RelayServer, RelayUp
from .routing import PREFIX as ROUTING_PREFIX
from .routing import Introduced, Joined, LookupDone, RoutingCore


MEMBERSHIP_PREFIX = "swim."  # every type the membership core handles starts with it


@dataclass(slots=True, frozen=True)
class PeerGone:
    """Membership concluded ``node_id`` failed or left; the cores here forgot it. The shell drops its
    link and its delivery state. Follows the ``Failed``/``Left`` event it comes from."""

    node_id: bytes


@dataclass(slots=True, frozen=True)
class TableAdded:
    """The routing table took ``node_id`` (on its own word: a query from it or its answer to ours) and
    membership now probes it as alive; a tombstone membership kept of it is gone, so a member declared
    dead and back in the table is alive again without an ``Alive`` event."""

    node_id: bytes


@dataclass(slots=True, frozen=True)
class TableDropped:
    """The routing table gave ``node_id`` up (queries to it failed) before membership concluded:
    membership stopped probing it and the DHT dropped its provider entries. Its link stays (it may be
    alive and come back through a lookup)."""

    node_id: bytes


# Everything take_events() yields, each a small dataclass (h11/wsproto style: dispatch on the type).
# Member events (report them): Alive, Suspect, Failed, Left, Refuted. Routing: LookupDone (resolve a
# lookup), Joined, Introduced (the peer's own word on its endpoint: relocate its link). DHT: DhtDone.
# Relay client: RelayUp, RelayDown. Broadcast: Delivered, Gap. This module: PeerGone, TableAdded, TableDropped.
NodeEvent = Union[Alive, Suspect, Failed, Left, Refuted, LookupDone, Joined, Introduced, DhtDone,
                  RelayUp, RelayDown, PeerGone, TableAdded, TableDropped, Delivered, Gap]


class NodeCore(CoreOutputs):
    """Routing, membership and (optionally) the DHT and relay cores of one node, wired as one.

    The cores are public attributes: a shell starts lookups, joins, puts and gets on them directly,
    then drains this object. Whatever changes the routing table outside :meth:`receive`/:meth:`tick`
    (a join, a hello's contact) reaches membership at the next of those calls, or at once through
    :meth:`observe`/:meth:`sync`.

    ``contacts`` (optional, read only): node id -> Contact objects to hand membership instead of
    the table's own, when they name the same endpoint; a simulation of many nodes shares one map so
    each contact exists once in memory.
    """

    __slots__ = ("routing", "membership", "dht", "relay_server", "relay_client", "broadcast", "held", "_contacts",
                 "_stats", "_mark", "_now", "_ticked", "_sampler")

    def __init__(self, routing: RoutingCore, membership: Membership, dht: DhtCore | None = None, *,
                 relay_server: RelayServer | None = None, relay_client: RelayClient | None = None,
                 broadcast: Broadcast | None = None, sampler: PeerSample | None = None,
                 contacts: Mapping[bytes, Contact] | None = None):
        super().__init__()
        self.routing = routing
        self.membership = membership
        self.dht = dht
        self.relay_server = relay_server
        self.relay_client = relay_client
        self.broadcast = broadcast
        if broadcast is not None and sampler is None:
            cfg = broadcast.config
            sampler = PeerSample(routing.node_id, random.Random(routing.node_id), cfg.per_bucket, cfg.near)
        self._sampler = sampler
        self.held: set[bytes] = set()  # node ids handed to membership from the table
        self._contacts = contacts
        self._stats = routing.stats
        self._mark = 0  # the table's change counters at the last sync
        self._now = 0.0  # the time of the latest input: the wiring done while draining events uses it
        # The other cores whose timers, output and events are drained with routing's and membership's.
        self._ticked: tuple[DhtCore | RelayServer | RelayClient | Broadcast, ...] = tuple(
            c for c in (dht, relay_server, relay_client, broadcast) if c is not None)

    # -- input ------------------------------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> bool:
        """Hand one authenticated envelope to the core it is for. False if it is for none of them
        (delivery's messages, relayed deliveries and refusals, a relay request to a node that serves
        none): the shell handles it; its sender has been refreshed in the table all the same."""
        self._now = now
        t = env.type
        if t.startswith(MEMBERSHIP_PREFIX):  # an unknown swim. type is counted there, not handed on
            self.routing.table.touch(env.src, now)
            self.membership.receive(env, now)
            return True
        if t.startswith(ROUTING_PREFIX):
            self.routing.receive(env, now)
            self.sync(now)
            return True
        dht = self.dht
        if dht is not None and t.startswith(DHT_PREFIX):
            dht.receive(env, now)
            self.sync(now)
            return True
        self.routing.table.touch(env.src, now)
        if t.startswith(BROADCAST_PREFIX):
            if self.broadcast is not None:
                self.broadcast.receive(env, now)
                return True
            return False
        if t == FORWARD or t == REGISTER or t == ACKNOWLEDGE:
            if self.relay_server is not None:
                self.relay_server.receive(env, now)
                return True
        elif t == REGISTERED or t == REFUSED:
            if self.relay_client is not None:
                self.relay_client.receive(env, now)
                return True
        return False

    def observe(self, who: Contact | bytes, now: float) -> None:
        """Evidence that a peer is alive from outside the protocols here (a hello, a delivery ack):
        a Contact is added to or updated in the table (and membership follows), an id only refreshes."""
        self._now = now
        self.routing.observe(who, now)
        self.sync(now)

    def tick(self, now: float) -> None:
        """Fire every core's due timers."""
        self._now = now
        self.routing.tick(now)
        self.sync(now)
        self.membership.tick(now)
        dht = self.dht
        if dht is not None:
            d = dht.next_timer()
            if d is not None and d <= now:
                dht.tick(now)
                self.sync(now)  # a query's hard timeout may have taken a contact out of the table
        if self.relay_server is not None:
            self.relay_server.tick(now)
        if self.relay_client is not None:
            self.relay_client.tick(now)
        b = self.broadcast
        if b is not None:
            d = b.next_timer()
            if d is not None and d <= now:
                b.tick(now)

    def next_timer(self) -> float | None:
        """The earliest deadline of any core, None if none is armed."""
        t = self.routing.next_timer()
        m = self.membership.next_timer()
        if t is None or (m is not None and m < t):
            t = m
        for core in self._ticked:
            d = core.next_timer()
            if t is None or (d is not None and d < t):
                t = d
        return t

    def forget(self, node_id: bytes, now: float) -> None:
        """The shell cut ``node_id`` off on its own authority (a revoked certificate): every core here
        forgets it as if membership had declared it dead, and :class:`PeerGone` follows."""
        self._now = now
        self.membership.remove(node_id)
        self._forget(node_id, now)

    # -- the table-to-membership sync --------------------------------------------------------------

    def sync(self, now: float) -> None:
        """Make membership hold exactly the table's contacts; cheap when the table did not change.

        In id order: set order follows the (per-process, randomized) hash of bytes, and the order of
        add/remove reaches membership's random choices, so a run would depend on PYTHONHASHSEED."""
        s = self._stats
        mark = s["table_added"] + s["table_removed"] + s["table_replaced"]
        if mark == self._mark:
            return
        self._mark = mark
        cur = {e.node_id: e for e in self.routing.table}
        held = self.held
        mem = self.membership
        dht = self.dht
        for nid in sorted(held - cur.keys()):
            held.discard(nid)
            mem.remove(nid)
            if dht is not None:
                dht.forget(nid)  # a live provider re-stores at its next refresh
            self._events.append(TableDropped(nid))
        shared = self._contacts
        for nid in sorted(cur.keys() - held):
            e = cur[nid]
            c = None if shared is None else shared.get(nid)
            if c is None or c.endpoint != e.endpoint:
                c = e.contact
            if mem.add(c, now):
                held.add(nid)
                self._events.append(TableAdded(nid))
            elif nid in mem:
                held.add(nid)  # membership held it already (an endpoint change is taken over)
            # else refused (the max_members bound): not held, so the next table change offers it again
        if self.broadcast is not None and self._sampler is not None:
            self.broadcast.set_sample(self._sampler.pick(self.routing.table), now)

    # -- output -------------------------------------------------------------------------------------

    def contact_for(self, node_id: bytes) -> Contact | None:
        """Where to reach ``node_id`` for an envelope from :meth:`take_outgoing` that the shell has no
        link for: the contact whichever core addressed it knows (a lookup candidate, a member, a node
        we ping for another prober). None: answer on the connection the request came in on."""
        c = self.routing.contact_for(node_id)
        if c is None:
            c = self.membership.contact_for(node_id)
        if c is None and self.dht is not None:
            c = self.dht.contact_for(node_id)
        return c

    def take_outgoing(self) -> list[Envelope]:
        """Every core's envelopes to send: routing's, membership's, then the others' in order."""
        out = self.routing.take_outgoing()
        more = self.membership.take_outgoing()
        if more:
            if out:
                out.extend(more)
            else:
                out = more
        for core in self._ticked:
            more = core.take_outgoing()
            if more:
                if out:
                    out.extend(more)
                else:
                    out = more
        return out

    def take_events(self) -> list[NodeEvent]:
        """What the shell must act on, in order; draining applies the wiring (module docstring), which
        may queue envelopes: call :meth:`take_outgoing` again when this returned anything."""
        out: list[NodeEvent] = self._events
        r = self.routing.take_events()
        if r:
            out.extend(r)
        m = self.membership.take_events()
        if m:
            now = self._now
            for ev in m:
                out.append(ev)
                t = type(ev)
                if t is Failed or t is Left:
                    self._forget(ev.node_id, now)
                elif t is Alive:
                    self.routing.observe(ev.contact, now)
                    self.sync(now)  # appends to ``out`` (our own queue), after this event
        for core in self._ticked:
            more = core.take_events()
            if more:
                out.extend(more)
        if not out:
            return []
        self._events = []
        return out

    def _forget(self, nid: bytes, now: float) -> None:
        if self.dht is not None:
            self.dht.forget(nid)  # its provider entries: it no longer provides anything
        self.held.discard(nid)
        self.routing.forget(nid)  # its freshest replacement is promoted
        if self.relay_server is not None:
            self.relay_server.forget(nid)
        if self.broadcast is not None:
            self.broadcast.peer_down(nid)
        self._events.append(PeerGone(nid))
        self.sync(now)  # the promoted replacement is probed at once
