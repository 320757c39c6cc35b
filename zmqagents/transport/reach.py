"""Whether this host can open a connection to an endpoint at all, asked before relying on it.

An outbound-only node reaches other nodes by dialling them and is answered through its relays.
Where a firewall leaves it no egress but its relays, ZeroMQ would keep retrying a bootstrap node
it can never reach, silently. One plain TCP connect (closed at once, before any ZeroMQ greeting, so
the far end sees nothing but a dropped connection) tells the node at start, with the operating
system's reason, so it can say why and join another way.
"""

from __future__ import annotations

import asyncio
import os
import stat


async def dial_problem(endpoint: str, timeout: float) -> str | None:
    """None if a connection to ``endpoint`` (``tcp://HOST:PORT`` or ``ipc://PATH``) can be opened within
    ``timeout`` seconds; else why not, in words. Other schemes (``relay://``) are not dialled: None."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        try:
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                return f"{path} is not a socket"
        except OSError as exc:
            return exc.strerror or str(exc)
        return None
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except asyncio.TimeoutError:
        return f"no answer within {timeout:g} s"
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    writer.close()
    return None
