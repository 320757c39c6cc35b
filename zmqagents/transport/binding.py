"""Who a frame on the inbox comes from: routing ids bound to the CURVE key a connection proved.

* every socket that connects out (DEALER) sets its routing id to the node's 32-byte Ed25519
  verify key followed by 16 random bytes, fresh for each socket (:func:`dealer_routing_id`), and
  authenticates with the CURVE key derived from the verify key;
* the ZAP handler labels each inbound connection with its CURVE key (User-Id);
* for every message the inbox checks that the key in the routing id converts to that CURVE key
  (:class:`PeerBinding`) and that the envelope's ``src`` is ``sha256(key)``. Anything else is
  dropped and counted: nobody can speak for another node id.

Why the 16 random bytes: libzmq's ROUTER picks the connection to send on by routing id alone, and
the routing id is whatever the peer claimed. Were it only the public key (known to anyone who holds
the contact), a peer with its own key could claim it: with ROUTER_HANDOVER it would take the
victim's connection over, and after the victim's connection closed it would receive what we still
sent to that id. So the inbox answers over a connection only to a routing id it learned from a
message that passed the check above, and only to the unguessable 48-byte form: the id is held by
the connection that proved the key, or by nobody (then ROUTER_MANDATORY fails the send and the
DEALER is used). Only the same DEALER socket, reconnecting, can present that id again, so
ROUTER_HANDOVER stays on for it: a DEALER that reconnects while our end of its old TCP connection is
still open (a NAT that forgot the mapping) takes its id over at once instead of being ignored until
TCP gives up. (protocols/node.md, "Connections".)
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections import OrderedDict
from typing import Callable

from ..identity import IdentityError, curve_public_of, node_id_of, short_id

log = logging.getLogger(__name__)

KEY_SIZE = 32  # an Ed25519 verify key
ROUTING_NONCE_SIZE = 16  # random bytes after the key in a DEALER's routing id
ROUTING_ID_SIZE = KEY_SIZE + ROUTING_NONCE_SIZE


@functools.cache
def seed_libzmq_counters() -> bool:
    """Seed the C library's ``rand()`` from the OS, once per process, before any ROUTER exists.

    libzmq 4.3.5 gives a peer that sends no routing id the next value of a per-ROUTER counter (a zero
    byte, then 4 counter bytes) without checking that no peer chose that very id itself, and aborts the
    process when one did (``zmq_assert`` in ``routing_socket_base_t::add_out_pipe``). The counter starts
    at ``rand()``, which libzmq never seeds, so unseeded it starts at the same value in every process:
    one connection squatting that id and one without an id would crash any node. Seeded, the start is
    one of 2^32 values nobody outside knows. ``rand()`` is the process's, so this covers every ROUTER
    made after it, the sidecar's local API included (the daemon makes its Node first). False if the C
    library could not be reached (then the counters stay predictable; logged)."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "big")))
    except (OSError, AttributeError) as exc:
        log.warning("could not seed libzmq's routing id counters (%s): they are predictable", exc)
        return False
    return True


def dealer_routing_id(public_key: bytes) -> bytes:
    """The routing id a DEALER presents to a node's inbox: its verify key, then 16 fresh random bytes.

    The key says who the connection speaks for (checked against the CURVE key it authenticated
    with); the random bytes make the id unguessable, so no other connection can ever claim it."""
    return public_key + os.urandom(ROUTING_NONCE_SIZE)


class PeerBinding:
    """Checks a routing id against the CURVE key its connection authenticated with.

    Converting an Ed25519 key to its CURVE key and node id costs a few tens of microseconds, so the
    results are kept for the ``max_keys`` keys seen last (an LRU): a peer making up keys only evicts."""

    def __init__(self, *, secure: bool, max_keys: int, drop: Callable[[str, bytes, object], None]):
        self._secure = secure
        self._max_keys = max_keys
        self._drop = drop
        self._keys: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()  # public key -> (curve hex, node id)

    def sender(self, rid: bytes, user_id: str | None, allow: frozenset[bytes] | None) -> bytes | None:
        """The node id a ROUTER message comes from, or None (dropped and counted) if the binding fails.

        ``rid`` is the routing id, ``user_id`` the CURVE key (hex) ZAP labelled the connection with.
        The routing id is a public key and 16 random bytes (or, from nodes before that form, the key
        alone: accepted, but never answered over); the key must convert to that CURVE key, and its node
        must be in ``allow`` when there is one."""
        size = len(rid)
        if size != ROUTING_ID_SIZE and size != KEY_SIZE:
            self._drop("bad_routing_id", rid, "routing id is not a public key and 16 random bytes")
            return None
        key = rid[:KEY_SIZE]
        keys = self._keys
        known = keys.get(key)
        if known is None:
            try:
                curve_hex = curve_public_of(key).hex() if self._secure else ""
            except IdentityError:
                self._drop("bad_routing_id", key, "routing id does not start with a valid public key")
                return None
            known = (curve_hex, node_id_of(key))
            keys[key] = known
            if len(keys) > self._max_keys:
                keys.popitem(last=False)
        curve_hex, node_id = known
        if self._secure and user_id != curve_hex:
            # A connection claims a key it did not authenticate with: a takeover attempt, or a broken client.
            self._drop("identity_mismatch", bytes.fromhex(user_id) if user_id else key,
                       f"the link's CURVE key {(user_id or '?')[:12]} is not node {short_id(node_id)}'s")
            return None
        if allow is not None and node_id not in allow:
            self._drop("not_allowed", node_id, "node is not on the allowlist")
            return None
        return node_id
