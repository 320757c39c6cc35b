"""Parameters of the broadcast core (:mod:`zmqagents.core.broadcast`), each with the reason for its default.

What others chose, and what their users ran into (read for this module; figures from their public
documentation): iroh-gossip batches IHAVEs for a few ms, grafts after ~80 ms then ~40 ms per further
announcer, keeps payloads ~30 s for repair and ids ~90 s; its small default message size limit
(4 KiB) surprised users whose larger messages were dropped. The ``plumtree`` crate grafts after
500 ms. go-libp2p-pubsub users reported IHAVE/IWANT amplification and unbounded announcement
queues; Plumtree deployments with many concurrent senders report eager trees that flap when every
origin's first arrivals prune different links. So: every queue here has a bound, a bound hit is a
counter, an oversize publication is refused at the publisher with an error (never dropped
silently in transit), and a tree changes only on a duplicate (PRUNE) or a repair (GRAFT).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from ..errors import InvalidArgument


@dataclass
class BroadcastConfig:
    # -- the peer sample (drawn from the routing table, see broadcast_sample.py) ------------------------
    # One contact from every k-bucket is enough for the sampled graph to be strongly connected (Kademlia's
    # own routing argument: from any node a contact in the bucket holding the target shares a longer
    # prefix with it); with inbound peers a node then has ~2 log2(N/k) neighbours (p50 19 at N=1000).
    # Measured (sim, N=1000, 30 s, 2 publications/s, 1 % loss, 50 nodes crashed in 12-22 s, seed 1): 1 per
    # bucket and near=2 gave delivery 1.0, latency p99 143 ms / max 182 ms, control 2.8 KB/s per node; 2 per
    # bucket and near=3 gave delivery 1.0, p99 149 / max 249 ms, and 1.9x the control traffic. So 1.
    per_bucket: int = 1
    # The closest contacts too: they close the last bits of that argument, and they are the nodes most
    # likely to be in each other's samples (links both ways make one tree serve every origin).
    near: int = 2
    # Peers that push to us but are not in our sample are neighbours too (Plumtree adds the sender of a
    # first copy to its eager set); at most this many, so a crowd of senders cannot widen our fan-out.
    max_inbound: int = 32
    # An inbound neighbour not heard from for this long is dropped: a peer that still samples us sends
    # a payload or an IHAVE for every message, so silence this long means it no longer does.
    inbound_ttl: float = 120.0
    # A node sends an empty IHAVE (a link announcement) to a new sample member, and again to any sample
    # member it sent nothing for this long, so that the member keeps it as an inbound neighbour: every
    # sampled link then works both ways. Without it a node that no one samples and that never
    # publishes is unreachable (sim, 100 nodes, 30 % cut off for 8 s: the directed graph stayed split
    # into 3 strong components for 3 s after the heal and 2 nodes missed 5 publications). A third of
    # inbound_ttl: two announcements may be lost before a link expires. ~0.3 messages/s per node.
    link_refresh: float = 40.0

    # -- timers -----------------------------------------------------------------------------------------
    # IHAVEs are batched for this long: one envelope per chosen peer per batch instead of one per message
    # (iroh-gossip dispatches after a few ms). It adds to the repair time of a lost push only; 50 ms
    # made the sim's tail longer (N=120, 1 % loss, 6 crashes, seed 5: p99 180 ms against 124).
    ihave_interval: float = 0.02
    # Each batch of announcements goes to at most this many lazy neighbours (drawn at random per batch),
    # not to all of them (gossipsub's D_lazy is 6). Announcing to every lazy neighbour made each delivery cost
    # ~25 IHAVE envelopes each way at N=100 (~20 neighbours), more CPU than a loaded box had, so pushes
    # queued behind announcements and grafts fired early (real nodes: RMR 1.6, latency max 3.9 s).
    # A node is then announced each message by ~lazy_fanout neighbours; a hole in a stream is also pulled
    # from the sender of the next message (gap_pull), so a lost push rarely lacks an announcer. Sim,
    # N=1000, 40 s, 2 publications/s, 1 % loss, 50 crashes in 12-28 s, seed 1 (80 ms grafts): 4: delivery
    # 0.99987, latency p99 161 / max 471 ms, control 1.0 KB/s per node; 6: 1.0, 157 / 265 ms, 1.6 KB/s;
    # 8: 0.99998, 177 / 618 ms, 2.0 KB/s. So 6.
    lazy_fanout: int = 6
    # A missing message announced by an IHAVE is grafted after this long without its payload: a few
    # eager-path latencies (LAN 5 ms median), so an eager copy still on its way is not fetched twice.
    # Tried and dropped: a timeout following the observed announcement-to-eager-copy delay (mean + 4
    # deviations, as TCP's retransmission timer). It lengthened every repair where trees are deep: sim
    # N=1000 as below, lazy_fanout 6: latency max 647 ms (all delays sampled) and 548 ms (only early
    # grafts' late copies sampled) against 265 ms fixed; on loaded real nodes it sat at its 1 s cap and
    # made every repair slow (latency p50 1 s after a kill). A graft whose eager copy comes anyway is
    # counted (grafts_late): that is what a short timeout costs.
    graft_timeout: float = 0.08
    # A repair that came before any eager copy, with the eager copy still missing this long after it, shows
    # the tree path broken (the repairer becomes our parent); sooner, it is merely slow. On a loaded box
    # eager copies come hundreds of ms late, and each early verdict grafted one more parent, the duplicates
    # pruned another, and the tree changed on and on. Real nodes (bench/broadcast.py, mesh phase, one
    # run each on the shared box): 0.08 s: 516 tree grafts in 60 publications, latency p50 / max 59 / 794
    # ms, RMR 0.24 (load 4.0); 0.4 s: 212, 16 / 596 ms, 0.08 (load 4.3); 0.2 s: 26, 12 / 167 ms, 0.02
    # (load 6.3). Sim, N=1000 as for want_delay, seeds 1 and 2: 0.08 s: p50 / p99 / max 64 / 253 / 381
    # and 55 / 257 / 385 ms; 0.2 s: 60 / 250 / 386 and 69 / 246 / 302 ms; delivery as before (0.99996
    # against 0.99992 with seed 2); 0.4 s: p50 95 ms with seed 1 (a broken path repaired message by
    # message for longer). So 0.2.
    tree_graft_after: float = 0.2
    # ... then the next announcer is asked every this long (the first may have lost it or be gone).
    graft_retry: float = 0.04
    # A message that leaves a hole in its stream (seq jumps by more than one) makes the holes' ids known
    # (the id is a function of origin, epoch, seq, topic): the newest this many are pulled from its sender
    # after the graft timeout unless they arrive meanwhile. 0 turns it off.
    gap_pull: int = 32
    # Plumtree's optimization (Leitao et al. 3.8): an IHAVE showing a path this many hops shorter than the
    # one our copy came along makes the announcer our parent (GRAFT) and prunes the old one; 0 turns it
    # off. The first copies shape the tree by arrival order under the first messages' flood, so trees get
    # deep. Sim, N=400, 30 s, 2 publications/s, 1 % loss, 20 crashes, seed 1: off: last-delivery hop p50 12
    # max 16, latency p50 40 / max 199 ms, RMR 0.08; 3: hops 8 / 11, 27 / 155 ms, RMR 0.15; 6: hops 10 / 14,
    # 42 / 245 ms, RMR 0.29 (iroh-gossip's default is 7). So 3.
    optimization_threshold: int = 3
    # A node tells its neighbours which topics to push to it (bcast.want: its subscriptions and what its
    # other eager neighbours want, broadcast_topics.py) this long after its tree or topics changed, so one
    # input's changes (a prune and a graft, say) make one declaration. Until it arrives the neighbour
    # pushes by the old one: a node that stopped forwarding a topic gets its payloads for nothing, one that
    # started misses them (repaired, slower), and the repairs change the tree again. 0.5 s made that the
    # main source of topic payloads at nodes with no use for them. Sim, N=1000, 40 s, 2 publications/s on
    # 2 topics and the mesh-wide one, 1 % loss, 50 crashes in 12-28 s, seed 1: 0.5 s: non_subscriber_payloads
    # 1,202, latency p50 / p99 / max 62 / 260 / 392 ms, RMR 0.88, control 1.40 KB/s per node; 0.02 s with
    # want_interval 0.1: 492, 64 / 253 / 381 ms, RMR 0.78, 1.54 KB/s (more declarations, fewer repairs);
    # with want_interval 0.25: 614 and a loss (delivery 0.99996).
    want_delay: float = 0.02
    # ... and at most once per this long (the first change after a quiet spell goes out want_delay after
    # it): a neighbour flipping its declaration makes us re-declare at most 10 times a second.
    want_interval: float = 0.1
    # Topics named in one declaration; a node that would name more declares "every topic" instead (and
    # one received with more is read so): bounds what a neighbour's interest costs us to hold (64 x 128 B).
    max_want_topics: int = 64
    # Housekeeping (expiring caches, inbound neighbours, gap reports) runs at most this often.
    sweep_interval: float = 1.0

    # -- caches -----------------------------------------------------------------------------------------
    # Ids of messages seen (never bodies) are remembered this long: longer than any message stays in
    # flight or in a neighbour's repair cache, so a late copy is still recognised by id.
    seen_ttl: float = 90.0
    # ... and at most this many (~150 B each: ~3 MB). Beyond it the oldest go; the per-origin sequence
    # window below still refuses their replays, so at-most-once does not depend on this bound.
    max_seen: int = 20_000
    # Payloads kept to answer GRAFTs (the repair window), by age and by bytes.
    cache_ttl: float = 30.0
    cache_bytes: int = 4 << 20
    # Per (origin, topic) stream: the highest sequence seen and which of the `window` before it arrived.
    # A sequence number below the window is refused as stale (a replay), one inside it at most once.
    window: int = 1024
    # Streams remembered (LRU); also bounds the origins' rate-limit buckets.
    max_streams: int = 4096

    # -- announcements and repair -------------------------------------------------------------------------
    max_ihave_ids: int = 256  # ids per IHAVE envelope (a longer batch is split; a longer one received is cut)
    max_ihave_queue: int = 1024  # ids waiting for the next IHAVE batch; the oldest beyond it are dropped
    max_missing: int = 4096  # ids announced but not received, waiting for their graft timer
    max_announcers: int = 4  # announcers remembered per missing id (the ones asked in turn)
    max_graft_ids: int = 256  # ids per GRAFT envelope received (the rest are ignored and counted)
    graft_rate: float = 500.0  # payloads a peer may pull with GRAFTs per second ...
    graft_burst: float = 1000.0  # ... and at once: a graft storm costs us at most this

    # -- publications -----------------------------------------------------------------------------------
    # Signed bytes of one message (data + ~80 B of fields). 64 KiB: events and config changes fit many
    # times over; bulk data belongs on a direct stream. Refused at the publisher (an error), counted in transit.
    max_message_bytes: int = 64 << 10
    # Per-origin limits (token buckets): what one origin's publications may cost every node of the mesh.
    origin_rate: float = 200.0  # messages per second ...
    origin_burst: float = 400.0
    origin_bytes: float = 2 << 20  # ... and bytes per second
    origin_byte_burst: float = 4 << 20
    max_hops: int = 255  # a message is not forwarded beyond this many hops (the wire allows up to 255)
    # Delivered-but-unread messages are the shell's: see node.py's subscription queue (bounded, drops counted).
    # A hole in a stream is reported (a Gap event) if still open this long after it was seen: repair
    # (IHAVE/GRAFT from the neighbours' caches) has had its chance by then.
    gap_report_after: float = 5.0
    max_gaps: int = 1024  # holes waiting to be reported; beyond it the oldest are reported at once

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise InvalidArgument(f"BroadcastConfig.{f.name} must be a non-negative number, got {v!r}")
        if self.per_bucket + self.near < 1:
            raise InvalidArgument("BroadcastConfig: per_bucket + near must be at least 1 (a node needs a neighbour)")
        if not 1 <= self.max_hops <= 255:
            raise InvalidArgument("BroadcastConfig.max_hops must be from 1 to 255")
        for name in ("max_ihave_ids", "max_graft_ids", "window", "max_streams", "max_seen", "max_announcers"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"BroadcastConfig.{name} must be at least 1")
