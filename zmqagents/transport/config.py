"""The bounds of the socket layer, in one place: what the sidecar's ``[limits]`` and flags set.

Kept apart from the sockets so that configuration code (the sidecar, the Node's options) can name
them without importing the transport's machinery."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.ratelimit import RateLimitConfig
from ..envelope import DEFAULT_MAX_SIZE

# Messages libzmq's I/O thread reads ahead on one connection before it leaves the rest in the kernel's
# TCP buffers (ZMQ_RCVHWM). libzmq bounds that queue in messages only, and what a message holds is not
# its length: a frame near the size limit holds ~1 MiB, and a small frame read in the same recv() as
# few others keeps alive the whole ~18 KB receive buffer it was decoded into (libzmq 4.3's zero-copy
# decoder, decoder_allocators.cpp, shares one buffer between the messages it decoded from it: 8 KiB
# of data and a table of 249 reference records of 40 bytes). So a connection can make libzmq hold up
# to (RECV_HWM + 1) x the size limit, or RECV_HWM x ~18 KB, while the event loop is behind: measured
# with bench/hostile.py and the loop held for 1.5 s, 10,000 (the old value) let a flood of small
# messages pin 83 MB of buffers and four senders of 1 MiB frames 53 MB. The read backlog
# (backlog.py) takes everything libzmq holds each turn of the loop, so libzmq keeps only what
# arrives during one turn; the mark matters while the loop is busy.
# Why 16 and not 8: a full queue stops the I/O thread, and the application's reads wake it again
# each time it is half empty, so a low mark costs system calls on every busy connection. Counted with
# strace -f -c over bench/throughput.py --only oneway --impl za --messages 20000 (both processes,
# start-up included, 2026-12-07, loaded box): 695k system calls at 8, 165k at 16, 109k at 32, 75k at 64,
# about 31, 6.5, 3.7 and 2.1 a message. 16 takes most of that gain for one more maximum-size frame of
# read-ahead per connection than 32 would double again (17 MiB against 9 MiB at 8; bench/hostile.py with
# unpaced senders of 1 MiB frames peaked alike at 8 and 64, as the backlog drains each turn).
RECV_HWM = 16
# Frames libzmq may queue for one connection before a send to it is refused (ZMQ_SNDHWM; refused frames
# are counted as send_hwm drops and the delivery core sends them again later). It too counts messages,
# and a peer that stops reading decides how many are queued: one that asks and never reads what comes
# back has its replies and their retransmissions piled up to this mark. At 10,000 (the old value),
# bench/hostile.py --shapes values,wide,gap,ask (four identities asking 5,000 times a second each and
# never reading) took a default sidecar to 73.7 MB; at 2,048, 63.8 MB (2026-12-08, one run each, the
# same box). Twice the delivery window (DeliveryConfig.window, 1,024 unacknowledged messages to a peer)
# leaves room for a whole window plus the acks, replies and membership traffic written beside it:
# bench/throughput.py --only oneway,rr (30,000 one-way messages, 10,000 requests) had no send_hwm drop
# and no retransmission at 2,048, and 869 drops at 1,024.
SEND_HWM = 2048


@dataclass(slots=True)
class TransportConfig:
    """Bounds of the socket layer. Each one, when hit, is counted in ``Transport.stats``."""

    listen: str = "tcp://127.0.0.1:0"  # inbox endpoint; port 0 picks a free port
    pub_listen: str | None = None  # PUB endpoint; default: same host, a free port
    secure: bool = True  # CURVE on every link; False only with an explicit --insecure
    max_dealers: int = 256  # outgoing connections kept open (LRU); ~30 KB each
    # An outgoing connection with no traffic either way for this long (s) is closed, and reopened on the
    # next send (core/linkpool.py); 0: kept until max_dealers pushes it out. Shorter saves fds and libzmq
    # buffers and costs a CURVE handshake per reopening (zmqagents swarm --link-idle, 100 nodes idle on a
    # loaded 2-core box, 2026-12-08: 10 s held 10.8 DEALERs a node at the end against 27 with 0, fds
    # 41 against 91 a node, at 3x the CPU). 30 s only closes links to peers not heard from for that long.
    link_idle_timeout: float = 30.0
    max_subscribers: int = 64  # neighbours whose PUB we subscribe to
    max_known_keys: int = 4096  # public key -> (CURVE key, node id) cache entries
    hwm: int = SEND_HWM  # ZeroMQ send high-water mark per connection, messages (see SEND_HWM)
    recv_hwm: int = RECV_HWM  # ZeroMQ receive high-water mark per connection, messages (see RECV_HWM)
    max_message_size: int = DEFAULT_MAX_SIZE  # enforced by libzmq (MAXMSGSIZE) and by the decoder
    reconnect_ivl_ms: int = 100
    # libzmq doubles the wait between connection attempts (100 ms, 200 ms, ...) up to this, so a peer
    # back after d seconds is redialled up to min(d, this) late. 1 s, not 5: after a relay's restart
    # its outbound-only clients and the senders to them came back up to 5 s late (bench/chaos.py
    # --rounds 6 --seed 1, the two settings side by side: kill_relay recovery p50 3.2 -> 1.0 s, p99
    # 6.0 -> 1.9 s). The cost: one TCP SYN a second per DEALER to a dead peer (max_dealers bounds them,
    # and membership forgets the dead).
    reconnect_ivl_max_ms: int = 1000
    close_linger_ms: int = 0  # how long close() may wait for queued frames to leave (a CLI publisher wants some)
    seal_relayed: bool = False  # encrypt (NaCl Box) every envelope sent through a relay to its destination
    # Frames read off the inbox and waiting to be decoded (transport/backlog.py): one peer may hold half,
    # and frames of up to 4 KB a quarter more, so that peers sending large frames cannot crowd out requests.
    read_backlog_bytes: int = 2 << 20
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)  # per peer, on every frame received
