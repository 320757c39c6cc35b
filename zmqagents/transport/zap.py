"""ZAP handler: admits CURVE clients and labels each connection with its CURVE key.

libzmq asks a ZAP handler (RFC 27, rfc.zeromq.org/spec/27) about every new
secured connection. The request carries the client's CURVE public key but
*not* the client's routing id (the "identity" frame is the server socket's
own), so the binding "this connection speaks for node X" cannot be decided
here. Instead the handler sets the connection's User-Id to the hex CURVE key;
libzmq then attaches it to every message on that connection, and the inbox
checks per message that the claimed routing id (the sender's Ed25519 verify
key) converts to exactly that CURVE key.

The handler is a non-blocking REP socket served from the event loop, so no
thread is needed.
"""

from __future__ import annotations

import logging
from typing import Callable

import zmq

from .sockio import NOBLOCK, readable

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "zmqagents"
PUB_DOMAIN = "zmqagents.pub"  # the XPUB of a fleet node: subscribers must be admitted fleet members

log = logging.getLogger(__name__)


class ZapHandler:
    """Answers ZAP requests for one zmq.Context."""

    def __init__(self, ctx: zmq.Context, *, admit_subscriber: Callable[[bytes], bool] | None = None):
        """``admit_subscriber(curve_key)``: whether a client may connect to the PUB_DOMAIN socket (a fleet
        node's XPUB, which a SUB connects to without ever sending a message that could carry a
        certificate); without it that domain is refused."""
        self.admit_subscriber = admit_subscriber
        self.socket = ctx.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)
        self.stats = {"zap_accepted": 0, "zap_refused": 0}

    def drain(self) -> None:
        """Answer every pending request (called when the socket's FD is readable)."""
        sock = self.socket
        while not sock.closed and readable(sock):
            request = sock.recv_multipart(NOBLOCK)
            sock.send_multipart(self._answer(request))

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            log.warning("malformed ZAP request with %d frames", len(request))
            version, request_id = (request + [b"1.0", b""])[:2]
            return [version, request_id, b"500", b"malformed request", b"", b""]
        version, request_id, domain, _address, _identity, mechanism = request[:6]
        credentials = request[6:]
        if mechanism == b"NULL":
            # Plaintext nodes (--insecure) do not install a ZAP domain; nothing to check.
            self.stats["zap_accepted"] += 1
            return [version, request_id, b"200", b"OK", b"", b""]
        if mechanism != b"CURVE" or not credentials or len(credentials[0]) != 32:
            self.stats["zap_refused"] += 1
            return [version, request_id, b"400", b"CURVE required", b"", b""]
        key = credentials[0]
        if domain == PUB_DOMAIN.encode() and (self.admit_subscriber is None or not self.admit_subscriber(key)):
            self.stats["zap_refused"] += 1
            return [version, request_id, b"400", b"not an admitted fleet member", b"", b""]
        self.stats["zap_accepted"] += 1
        return [version, request_id, b"200", b"OK", key.hex().encode("ascii"), b""]

    def close(self) -> None:
        self.socket.close(linger=0)
