"""Keep ``ssl`` (and OpenSSL's libcrypto behind ``_hashlib``) out of a process.

:mod:`zmqagents.launch` calls :func:`keep_tls_out` before anything else is imported when it starts
``zmqagents node`` (why: its docstring). No sidecar service needs ``ssl``: the admin endpoint
writes its metrics itself (``sidecar/exposition.py``) rather than importing prometheus_client, whose
``exposition`` module imports ``ssl`` unconditionally. A module of its own, importing nothing of
the package, so the launcher stays light.
"""

from __future__ import annotations

import sys

KEPT_OUT = ("ssl", "_ssl", "_hashlib")


def keep_tls_out() -> None:
    """Make ``import ssl`` and ``import _hashlib`` fail (as on a Python built without OpenSSL),
    unless something already imported them."""
    for name in KEPT_OUT:
        sys.modules.setdefault(name, None)

