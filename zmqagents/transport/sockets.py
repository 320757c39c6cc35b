"""How a Transport makes its ZeroMQ sockets: the limits every socket shares and each side's CURVE role.

Kept apart so that the inbox, the XPUB, the outbound links and the subscriptions are all made with
the same bounds (linger, high-water marks, the largest message libzmq will take), whichever module
owns them.
"""

from __future__ import annotations

import zmq

from ..identity import curve_public_of
from .config import TransportConfig
from .zap import ZAP_DOMAIN


class SocketMaker:
    """Makes the sockets of one node: ``server`` for what peers connect to, ``client`` for what connects out."""

    def __init__(self, ctx: zmq.Context, config: TransportConfig, identity):
        self.ctx = ctx
        self.config = config
        self.identity = identity

    def server(self, kind: int, domain: str = ZAP_DOMAIN) -> zmq.Socket:
        """A socket to bind (ROUTER inbox, XPUB): CURVE server, its peers admitted by ZAP in ``domain``."""
        sock = self.ctx.socket(kind)
        self._common_options(sock)
        if self.config.secure:
            sock.curve_server = True
            sock.curve_secretkey = self.identity.curve_secret
            sock.curve_publickey = self.identity.curve_public
            sock.zap_domain = domain.encode()
        return sock

    def client(self, kind: int, peer_public_key: bytes) -> zmq.Socket:
        """A socket to connect (DEALER, SUB) to the peer whose verify key is ``peer_public_key``."""
        sock = self.ctx.socket(kind)
        self._common_options(sock)
        sock.setsockopt(zmq.RECONNECT_IVL, self.config.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.config.reconnect_ivl_max_ms)
        if self.config.secure:
            sock.curve_secretkey = self.identity.curve_secret
            sock.curve_publickey = self.identity.curve_public
            sock.curve_serverkey = curve_public_of(peer_public_key)
        return sock

    def _common_options(self, sock: zmq.Socket) -> None:
        sock.linger = 0
        sock.sndhwm = self.config.hwm
        sock.rcvhwm = self.config.recv_hwm
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size + 4 + 64)
