"""What libzmq decides about links before any message reaches us, made visible.

libzmq handshakes, authenticates (ZAP) and cuts links on its own I/O thread: a peer that
speaks plaintext to a CURVE socket, fails the CURVE handshake, sends bytes that are not ZMTP,
or sends a frame over ``ZMQ_MAXMSGSIZE`` is refused there, and the application never sees a
message from it. The only trace is the socket monitor (``zmq_socket_monitor``), so each server
socket (the ROUTER inbox, the XPUB) gets one, read from the event loop like any other socket.

What libzmq 4.3.5 reports, and so what can be counted (checked against real sockets in
``tests/node/test_hostile.py``):

=================================== ============================== ==========================
event (value)                       cause                          counted as
=================================== ============================== ==========================
HANDSHAKE_FAILED_PROTOCOL           the peer did not use CURVE      drop ``plaintext``
(ZMTP_MECHANISM_MISMATCH)           (NULL or PLAIN)
HANDSHAKE_FAILED_PROTOCOL (other)   a bad CURVE handshake (wrong    drop ``handshake_failed``
                                    server key, forged boxes,
                                    malformed commands, bad ZAP)
HANDSHAKE_FAILED_AUTH               the ZAP handler refused         drop ``handshake_refused``
HANDSHAKE_FAILED_NO_DETAIL          the link broke mid-handshake    drop ``handshake_aborted``
ACCEPTED / HANDSHAKE_SUCCEEDED /    links opened, authenticated,    ``links_accepted``,
DISCONNECTED                        closed                          ``links_authenticated``,
                                                                    ``links_closed``
=================================== ============================== ==========================

Two refusals have no event of their own in libzmq 4.3.5: bytes that are not ZMTP (the link is
closed with only DISCONNECTED, so such links are the accepted ones that never completed or
failed a handshake), and a frame over ``ZMQ_MAXMSGSIZE`` on an authenticated link (libzmq closes
it reporting only DISCONNECTED, like a peer that left). The link counters are there so that an
operator can still see them: closed links that outnumber what peers' churn explains.

Why an oversize cut cannot be told from a peer that left (libzmq 4.3.5 source): the decoder refuses
the frame's size header (``v2_decoder_t::size_ready`` sets EMSGSIZE), and
``stream_engine_base_t::in_event_internal`` then calls ``error (protocol_error)``; a peer that closes
makes ``read`` return 0, which ``stream_engine_base_t::read`` turns into EPIPE, and the same
``in_event_internal`` calls ``error (connection_error)``. ``error`` emits a handshake-failure event
only for a non-protocol error while the handshake is still running, so after the handshake both paths
emit exactly one event, ``event_disconnected (endpoint, fd)``: its value is the file descriptor, not
the reason, and the descriptor is closed right after. ``ZMQ_ROUTER_NOTIFY`` would say which routing id
went, not why. Closing this needs libzmq to carry the reason (an errno in DISCONNECTED's value, or an
event of its own), or the size check moved out of libzmq (``ZMQ_MAXMSGSIZE`` off and the envelope
limit checked by us, which would let every connection make libzmq buffer frames of any size).
"""

from __future__ import annotations

from typing import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from .sockio import NOBLOCK

MECHANISM_MISMATCH = 0x11000002  # ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH (zmq.h, libzmq 4.3)
WATCHED = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
READ_BATCH = 256  # events per readable callback

_ACCEPTED = int(zmq.EVENT_ACCEPTED)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_FAILED_PROTOCOL = int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
_FAILED_AUTH = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_FAILED_NO_DETAIL = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

DropFn = Callable[[str, bytes, object], None]


def refusal(event: int, value: int) -> tuple[str, str] | None:
    """The drop reason and a description for a monitor event that is a refused link, else None."""
    if event == _FAILED_PROTOCOL:
        if value == MECHANISM_MISMATCH:
            return "plaintext", "the peer did not use CURVE"
        return "handshake_failed", f"CURVE handshake failed (libzmq protocol error {value:#x})"
    if event == _FAILED_AUTH:
        return "handshake_refused", f"refused by the ZAP handler (status {value})"
    if event == _FAILED_NO_DETAIL:
        return "handshake_aborted", f"link lost during the handshake (errno {value})"
    return None


class LinkWatch:
    """The monitor of one server socket: counts its links in ``stats`` (which must hold the keys
    ``links_accepted``, ``links_authenticated`` and ``links_closed``) and reports refused ones to ``drop``."""

    def __init__(self, sock: zmq.Socket, stats: dict[str, int], drop: DropFn):
        self.socket = sock.get_monitor_socket(WATCHED)
        self.socket.linger = 0
        self._watched = sock
        self._stats = stats
        self._drop = drop

    def drain(self) -> bool:
        """Read the pending events (called when the monitor socket's FD is readable). True if a full
        batch was read, so more may be waiting: the FD is edge-triggered, the caller must call again."""
        sock = self.socket
        stats = self._stats
        for _ in range(READ_BATCH):
            if sock.closed:
                return False
            try:
                parts = sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                return False
            event = parse_monitor_message(parts)
            kind, value = int(event["event"]), int(event["value"])
            if kind == _ACCEPTED:
                stats["links_accepted"] += 1
            elif kind == _SUCCEEDED:
                stats["links_authenticated"] += 1
            elif kind == _DISCONNECTED:
                stats["links_closed"] += 1
            else:
                refused = refusal(kind, value)
                if refused is not None:
                    self._drop(refused[0], b"", refused[1])  # libzmq does not say who: no key yet
        return True

    def close(self) -> None:
        """Stop monitoring and close the monitor socket (before the watched socket is closed)."""
        if not self._watched.closed:
            self._watched.disable_monitor()
        self.socket.close(linger=0)
