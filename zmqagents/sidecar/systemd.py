"""``sd_notify`` without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

systemd's ``Type=notify`` waits for ``READY=1`` before it counts the service as started, so units
ordered after the sidecar start only once its socket and mesh links exist. ``STOPPING=1`` tells it
a graceful stop is under way. The protocol is newline-separated ``KEY=VALUE`` text sent to a unix
datagram socket; a path starting with ``@`` is in the abstract namespace. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; True if it was sent.

    A failure is logged, never raised: the sidecar must not die because the manager went away.
    """
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("ignoring NOTIFY_SOCKET=%r: not an absolute path or @abstract name", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", state.split("\n", 1)[0], exc)
        return False
    return True
