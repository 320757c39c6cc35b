"""NodeCore (zmqagents/core/composition.py): the wiring of routing, membership, the DHT and the relay
cores, tested with the real cores over the simulator's engine (virtual time, no sockets)."""

from __future__ import annotations

import hashlib
import random

from zmqagents.core.composition import NodeCore, PeerGone, TableAdded, TableDropped
from zmqagents.core.dht import DhtConfig, DhtCore, DhtDone, key_for
from zmqagents.core.membership import Failed, Membership, MembershipConfig
from zmqagents.core.relay import REGISTER, RelayServer
from zmqagents.core.routing import RoutingCore
from zmqagents.envelope import Envelope
from zmqagents.identity import Identity
from zmqagents.sim.engine import Simulator

N = 8


class Mesh:
    """N NodeCores, every table filled with every other contact, over the simulator's engine."""

    def __init__(self, seed: int = 5):
        self.ids_ = [Identity.from_seed(hashlib.sha256(b"compose %d" % i).digest()) for i in range(N)]
        self.contacts = [idt.contact(f"tcp://10.0.0.{i + 1}:7000") for i, idt in enumerate(self.ids_)]
        self.ids = [c.node_id for c in self.contacts]
        self.events: dict[int, list] = {i: [] for i in range(N)}
        self.nodes: list[NodeCore] = []
        self.sim = Simulator(seed, latency="const:2ms", on_event=self._on_event)
        mcfg = MembershipConfig.profile("lan")
        dcfg = DhtConfig(republish_interval=1000, provider_ttl=2000)
        for i in range(N):
            def factory(nid, rng, i=i):
                routing = RoutingCore(self.contacts[i], random.Random(rng.getrandbits(64)))
                dht = DhtCore(routing, self.ids_[i], random.Random(rng.getrandbits(64)), dcfg)
                core = NodeCore(routing, Membership(self.contacts[i], rng, mcfg), dht)
                self.nodes.append(core)
                return [core]
            self.sim.add_node(factory, node_id=self.ids[i])
        for i, core in enumerate(self.nodes):
            for j in range(N):
                if j != i:
                    core.observe(self.contacts[j], 0.0)  # membership follows the table at once
            self.sim.flush(self.sim.nodes[i])

    def _on_event(self, simnode, ev, now):
        self.events[simnode.index].append(ev)


def test_membership_probes_exactly_the_tables_contacts_without_a_timer():
    mesh = Mesh()
    for i, core in enumerate(mesh.nodes):
        in_table = {e.node_id for e in core.routing.table}
        assert in_table == set(mesh.ids) - {mesh.ids[i]}
        assert all(nid in core.membership for nid in in_table)  # before any tick ran
        assert sorted(e.node_id for e in mesh.events[i] if isinstance(e, TableAdded)) == sorted(in_table)
    core = mesh.nodes[0]
    gone = mesh.ids[3]
    core.routing.forget(gone)  # the table gives it up on its own (as when queries to it time out)
    core.sync(1.0)
    assert gone not in core.membership
    assert core.take_events() == [TableDropped(gone)]
    core.sync(1.0)  # nothing changed since: nothing to report
    assert core.take_events() == []


def test_a_failed_member_is_forgotten_by_the_table_the_dht_and_the_shell():
    mesh = Mesh()
    sim = mesh.sim
    key = key_for("compose/provided")
    victim = 5
    ops = []
    sim.at(1.0, lambda now: ops.append(mesh.nodes[victim].dht.provide(key, now, meta={"x": 1})), sim.nodes[victim])
    sim.run(until=3.0)
    done = [e for e in mesh.events[victim] if isinstance(e, DhtDone)]
    assert done and done[0].ok and done[0].stored >= 2
    vid = mesh.ids[victim]
    holders = [i for i, c in enumerate(mesh.nodes) if any(p.node_id == vid for p in c.dht.held_providers(key))]
    assert len(holders) >= 2
    sim.crash(vid)
    sim.run(until=40.0)
    for i, core in enumerate(mesh.nodes):
        if i == victim:
            continue
        evs = mesh.events[i]
        at = next(n for n, e in enumerate(evs) if isinstance(e, Failed) and e.node_id == vid)
        assert evs[at + 1] == PeerGone(vid)  # the shell is told right after the member event
        assert core.routing.table.get(vid) is None
        assert vid not in core.membership
        assert not any(p.node_id == vid for p in core.dht.held_providers(key))  # well before its 2000 s ttl


def test_envelopes_go_to_their_core_and_the_rest_back_to_the_shell():
    mesh = Mesh()
    core = mesh.nodes[0]
    src = mesh.ids[1]
    before = core.routing.table.get(src).last_seen
    msg = Envelope(id=b"m" * 16, src=src, dst=mesh.ids[0], type="msg", body=b"x")
    assert core.receive(msg, 9.0) is False  # delivery's: the shell's
    assert core.routing.table.get(src).last_seen == 9.0 > before  # any message says its sender lives
    reg = Envelope(id=b"r" * 16, src=src, dst=mesh.ids[0], type=REGISTER, body={})
    assert core.receive(reg, 9.0) is False  # no relay server: the shell refuses it
    server = RelayServer(mesh.ids[0], random.Random(1))
    relaying = NodeCore(core.routing, core.membership, relay_server=server)
    assert relaying.receive(reg, 9.0) is True
    assert src in server
    assert relaying.take_outgoing()  # its answer


def test_next_timer_is_the_earliest_of_every_core():
    core = Mesh().nodes[0]
    timers = [t for t in (core.routing.next_timer(), core.membership.next_timer(), core.dht.next_timer())
              if t is not None]
    assert core.next_timer() == min(timers)


def test_contact_for_names_the_contact_a_core_addressed():
    mesh = Mesh()
    core = mesh.nodes[0]
    assert core.contact_for(mesh.ids[2]) == mesh.contacts[2]
    assert core.contact_for(hashlib.sha256(b"nobody").digest()) is None


def test_a_contact_the_table_gives_up_loses_its_provider_entries_and_keeps_its_link():
    mesh = Mesh()
    sim = mesh.sim
    key = key_for("compose/dropped")
    provider = 4
    sim.at(1.0, lambda now: mesh.nodes[provider].dht.provide(key, now), sim.nodes[provider])
    sim.run(until=3.0)
    pid = mesh.ids[provider]
    holder = next(c for c in mesh.nodes if any(p.node_id == pid for p in c.dht.held_providers(key)))
    holder.take_events()
    holder.routing.forget(pid)  # queries to it failed: the table gave it up before membership concluded
    holder.sync(3.0)
    assert holder.take_events() == [TableDropped(pid)]  # no PeerGone: the shell keeps its link
    assert pid not in holder.membership
    assert not any(p.node_id == pid for p in holder.dht.held_providers(key))


def test_forget_cuts_a_peer_off_in_every_core_at_once():
    mesh = Mesh()
    core = mesh.nodes[0]
    core.take_events()
    gone = mesh.ids[6]
    core.forget(gone, 1.0)
    assert core.routing.table.get(gone) is None
    assert gone not in core.membership
    assert core.take_events()[0] == PeerGone(gone)
