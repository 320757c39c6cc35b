"""The ``zmqagents`` console script: a thin launcher in front of :mod:`zmqagents.cli` (the package).

Why a launcher: what a process imports first, it carries for its whole life. ``zmqagents node``
(the sidecar) never makes a TLS connection, yet ``import asyncio`` pulls in :mod:`ssl`, and
:mod:`hashlib` loads OpenSSL's libcrypto just to compute sha256. With uvloop, which cannot be
imported without ssl, that is about 6.5 MB of an idle sidecar's RSS (27.5 instead of 34.2 MB
with every optional service off; ``python bench/footprint.py --sidecar`` measures it). So for
the ``node`` command only, the launcher keeps ``ssl`` and ``_hashlib`` out of the process
before anything else is imported:

* hashlib falls back to CPython's built-in sha256/sha512/blake2/sha3 (the same digests);
* asyncio runs without TLS support, which nothing in a node uses (links are CurveZMQ, the
  local API is a unix socket, the admin endpoint is plain HTTP on loopback);
* the node runs on the stdlib event loop instead of uvloop: the transport drains sockets in
  batches, where uvloop measured no faster (DESIGN.md, budgets).

Every other command, and ``import zmqagents`` in an application, is untouched.
"""

from __future__ import annotations

import sys

from .tlsguard import keep_tls_out

LEAN_COMMANDS = frozenset({"node"})


def command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (after the group's own options), or None."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    if command_of(sys.argv[1:]) in LEAN_COMMANDS:
        keep_tls_out()
    from .cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":  # python -m zmqagents.launch node ... (what the console script runs)
    main()
