"""Keep ``ssl`` (and OpenSSL's libcrypto behind ``_hashlib``) out of a process, and let it back in.

:mod:`zmqagents.launch` calls :func:`keep_tls_out` before anything else is imported when it starts
``zmqagents node`` (why: its docstring); a sidecar service that needs ``ssl`` at import time calls
:func:`allow_tls` first. A module of its own, importing nothing of the package, so the sidecar can
use it without importing the launcher (which imports the CLI, which imports the sidecar).
"""

from __future__ import annotations

import sys

KEPT_OUT = ("ssl", "_ssl", "_hashlib")


def keep_tls_out() -> None:
    """Make ``import ssl`` and ``import _hashlib`` fail (as on a Python built without OpenSSL),
    unless something already imported them."""
    for name in KEPT_OUT:
        sys.modules.setdefault(name, None)


def allow_tls() -> None:
    """Undo :func:`keep_tls_out` for ``ssl`` before importing a library that needs it at import time
    (prometheus_client does, for its own HTTPS server): the admin endpoint pays for ssl, not the node."""
    for name in ("ssl", "_ssl"):
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
