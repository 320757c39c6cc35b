"""DHT records through the simulator: every node runs the real routing, membership (SWIM) and DHT cores
over zmqagents.sim's engine; holders crash, SWIM declares them dead, the survivors re-replicate, and
every record is still found."""

from __future__ import annotations

import hashlib
import random

from zmqagents.core.dht import DhtConfig, DhtCore, DhtDone, key_for
from zmqagents.core.composition import NodeCore
from zmqagents.core.membership import Membership, MembershipConfig
from zmqagents.core.routing import RoutingCore
from zmqagents.identity import Identity
from zmqagents.sim.engine import Simulator

N = 100
KEYS = 20


def test_records_survive_holder_crashes_after_re_replication():
    identities = [Identity.from_seed(hashlib.sha256(b"sim dht %d" % i).digest()) for i in range(N)]
    contacts = [idt.contact(f"tcp://10.0.{i // 200}.{i % 200 + 1}:7000") for i, idt in enumerate(identities)]
    ids = [c.node_id for c in contacts]
    mcfg = MembershipConfig.profile("lan")
    # Republishing is pushed past the end of the run: only holders' re-replication can save the records.
    dcfg = DhtConfig(republish_interval=1000, provider_ttl=2000, replicate_check=5)
    # Each node is the composition a real node drives (zmqagents.core.composition): it does the wiring.
    nodes: dict[bytes, NodeCore] = {}
    done: dict[tuple, DhtDone] = {}

    def on_event(simnode, ev, now):
        if type(ev) is DhtDone:
            done[(simnode.id, ev.op_id)] = ev  # op ids are per node

    sim = Simulator(11, latency="lognormal:5ms:0.5", on_event=on_event)
    for i in range(N):
        def factory(nid, rng, i=i):
            routing = RoutingCore(contacts[i], random.Random(rng.getrandbits(64)))
            mem = Membership(contacts[i], rng, mcfg)
            mem.set_network_size(N)
            nodes[nid] = NodeCore(routing, mem, DhtCore(routing, identities[i], random.Random(rng.getrandbits(64)), dcfg))
            return [nodes[nid]]
        sim.add_node(factory, node_id=ids[i])
    rng = random.Random(3)
    # Warm start (as zmqagents.sim.overlay does at scale): every table is filled as if its node had joined
    # (full buckets keep a bounded replacement cache), and membership probes the table's contacts.
    for i, nid in enumerate(ids):
        node = nodes[nid]
        for j in rng.sample(range(N), N):
            if j != i:
                node.routing.observe(contacts[j], 0.0)
        node.sync(0.0)
        sim.flush(sim.nodes[i])
    keys = [key_for(f"sim/{j}") for j in range(KEYS)]
    puts = {}
    for j, k in enumerate(keys):
        who = sim.nodes[rng.randrange(N)]
        sim.at(2 + 0.1 * j, lambda now, k=k, j=j, who=who: puts.__setitem__(j, (who.id, nodes[who.id].dht.put(k, j, now))), who)
    sim.run(until=7)
    assert all(done[op].ok and done[op].stored == 3 for op in puts.values()), [done.get(op) for op in puts.values()]

    def closest(k, alive, n=3):
        return sorted(alive, key=lambda x: int.from_bytes(x, "big") ^ int.from_bytes(k, "big"))[:n]

    alive = set(ids)
    original = {k: set(closest(k, alive)) for k in keys}
    assert all(nodes[x].dht.held(k) is not None for k in keys for x in original[k])
    # Wave 1: two of the three holders of the first 10 keys, plus random others: ~25 % of the mesh.
    victims: set[bytes] = set()
    for k in keys[:10]:
        for x in sorted(original[k]):
            if len(original[k] & victims) < 2 and all(len(original[j] & (victims | {x})) <= 2 for j in keys):
                victims.add(x)
    assert sum(len(original[k] & victims) == 2 for k in keys) >= 8  # most keys lose two of their three holders
    holding = {x for k in keys for x in original[k]}  # no other key loses all its holders at once
    victims.update(rng.sample(sorted(set(ids) - holding), N // 4 - len(victims)))
    for x in victims:
        sim.crash(x)
    alive -= victims
    sim.run(until=35)  # SWIM confirms the deaths; the checks re-replicate
    # Wave 2: every remaining original holder of those keys.
    wave2 = {x for k in keys[:10] for x in original[k]} & alive
    for x in wave2:
        sim.crash(x)
    alive -= wave2
    sim.run(until=60)
    for k in keys:
        holders = {x for x in alive if nodes[x].dht.held(k) is not None}
        assert not holders & (original[k] if k in keys[:10] else set()), "an original holder survived"
        assert len(holders & set(closest(k, alive))) >= 2, k.hex()
    gets = {}
    readers = sorted(alive)
    for j, k in enumerate(keys):
        who = sim.node(readers[rng.randrange(len(readers))])
        sim.at(60 + 0.05 * j, lambda now, k=k, j=j, who=who: gets.__setitem__(j, (who.id, nodes[who.id].dht.get(k, now))), who)
    sim.run(until=66)
    results = [done[gets[j]] for j in range(KEYS)]
    assert all(r.ok and r.record is not None and r.record.value == j for j, r in enumerate(results)), [(j, r.ok, r.reason, r.record and r.record.value) for j, r in enumerate(results)]
    assert max(r.duration for r in results) < 2.0  # no get waited a hard timeout on a dead peer
    assert sum(nodes[x].dht.stats["replicated"] for x in ids) > 0
