"""The local API's socket file: where it may be bound, and whether a sidecar listens on it.

Both ends need this: the sidecar (``localapi.py``) prepares the path before it binds, and a client
(the CLI, ``localclient.py``) asks whether a live sidecar is behind a path before it uses it rather
than starting a node of its own. A socket file left by a sidecar that died is told apart from a live
one by connecting to it: the kernel refuses the connection when nobody listens.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from ..errors import Error

MAX_PATH = 107  # sun_path holds 108 bytes with the NUL


class LocalApiError(Error):
    """The local API cannot start (socket path in use, too long, not a socket, ...)."""


def prepare_socket_path(path: Path, mode: int) -> None:
    """Create the parent directory if needed; refuse a path in use; remove a stale socket."""
    if len(os.fsencode(path)) > MAX_PATH:
        raise LocalApiError(f"local API socket path {path} is longer than {MAX_PATH} bytes (a unix socket "
                            "limit); choose a shorter [local_api] path")
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o750 if mode & 0o070 else 0o700, parents=True)
        except OSError as exc:
            raise LocalApiError(f"cannot create {parent} for the local API socket: {exc.strerror}") from None
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise LocalApiError(f"{path} exists and is not a socket; refusing to replace it (check [local_api] path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()  # left behind by a sidecar that died (kill -9, power loss)
        return
    except OSError:
        pass
    else:
        raise LocalApiError(f"another process is serving {path}; stop it or choose another [local_api] path")
    finally:
        probe.close()


def sidecar_listening(path: str | os.PathLike) -> bool:
    """Whether a process accepts connections on the unix socket at ``path`` (not just a stale file)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
