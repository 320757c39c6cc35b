"""Routes through relays, and the end-to-end wrapping that keeps a relay honest.

A destination that accepts no connections (its contact is ``KEY@relay://R1,R2``) is reached by
sending a ``relay.fwd`` to one of its relays; the relay passes the body on as ``relay.dlv`` over
the connection the destination opened to it. The body carries the original envelope *signed by
its sender*, so the destination verifies who wrote it and that nothing changed, whatever the relay
did; optionally it is also sealed (NaCl Box) to the destination's key, so the relay cannot read it.

:class:`RelayPaths` keeps, per destination, the relays to use (most recently working first),
learns return paths from what arrives (a message that came through relay R is answered through R),
rotates to the next relay when the same message is sent again (a retransmit: the first relay did
not get it through), and counts every refusal. It lives in the transport shell because it signs,
seals and picks sockets; the decisions with timers in them are in ``zmqagents/core/relay.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import nacl.exceptions
import nacl.public

from ..core.relay import RELAY_PREFIX
from ..envelope import BadSignature, Envelope, EnvelopeError, decode
from ..identity import IdentityError, curve_public_of, node_id_of

MAX_BOXES = 256  # NaCl Box objects (a precomputed shared key each, ~50 µs to make) kept per node
MAX_ATTEMPTS = 4096  # message ids whose send count is remembered, to rotate relays on retransmit

DropFn = Callable[[str, bytes, object], None]


class RelayPaths:
    """Which destinations go through which relays; wrap for sending, unwrap and verify on arrival."""

    def __init__(self, identity, *, max_entries: int, max_size: int, drop: DropFn, seal_all: bool = False):
        self.identity = identity
        self.max_entries = max_entries
        self.max_size = max_size
        self.seal_all = seal_all  # seal every relayed envelope (the sender asked for end-to-end encryption)
        self._drop = drop
        self.via: OrderedDict[bytes, list[bytes]] = OrderedDict()  # destination -> relays, preferred first
        self.edge: list[bytes] = []  # an outbound-only node's own relays, the ones that are up first
        self.keys: OrderedDict[bytes, bytes] = OrderedDict()  # node id -> public key learned from signed envelopes
        self._sealed_by: OrderedDict[bytes, None] = OrderedDict()  # peers that sealed to us: we seal back
        self._boxes: OrderedDict[bytes, nacl.public.Box] = OrderedDict()
        self._attempts: OrderedDict[bytes, list[bytes]] = OrderedDict()  # message id -> relays tried, in order
        self.misses: dict[bytes, int] = {}  # relay id -> messages that had to be re-sent through another relay
        self._secret = nacl.public.PrivateKey(identity.curve_secret)
        self.stats: dict[str, int] = {"wrapped": 0, "sealed": 0, "unwrapped": 0, "opened": 0, "rotated": 0}

    # -- routes ------------------------------------------------------------------

    def set_route(self, dst: bytes, relays: list[bytes]) -> None:
        """``dst`` is reached through ``relays`` (from its contact); we ourselves are never one of them."""
        relays = [r for r in relays if r != self.identity.node_id and r != dst]
        if not relays:
            self.via.pop(dst, None)
            return
        self._put(dst, relays)

    def learned(self, dst: bytes, relay: bytes) -> None:
        """A message from ``dst`` arrived through ``relay``: that relay works for ``dst``, use it first."""
        relays = self.via.get(dst)
        if relays is None:
            self._put(dst, [relay] + [r for r in self.edge if r != relay])
        elif relays[0] != relay:
            self._put(dst, [relay] + [r for r in relays if r != relay])
        else:
            self.via.move_to_end(dst)

    def demote(self, relay: bytes, dst: bytes | None = None) -> None:
        """``relay`` failed (for ``dst``, or for everyone): try it last from now on."""
        targets = [dst] if dst is not None else list(self.via)
        for d in targets:
            relays = self.via.get(d)
            if relays is not None and relay in relays and relays[-1] != relay:
                relays.remove(relay)
                relays.append(relay)
        if dst is None and relay in self.edge:
            self.edge.remove(relay)
            self.edge.append(relay)

    def remove_relay(self, relay: bytes) -> None:
        """``relay`` is gone for good (membership confirmed it dead): stop listing it anywhere."""
        for d in [d for d, relays in self.via.items() if relay in relays]:
            relays = self.via[d]
            relays.remove(relay)
            if not relays:
                spare = [r for r in self.edge if r != relay]  # an edge node still has its other relays
                if spare:
                    relays.extend(spare)
                else:
                    del self.via[d]

    def forget(self, node_id: bytes) -> None:
        self.via.pop(node_id, None)
        self._sealed_by.pop(node_id, None)
        self._boxes.pop(node_id, None)

    def _put(self, dst: bytes, relays: list[bytes]) -> None:
        self.via[dst] = relays
        self.via.move_to_end(dst)
        while len(self.via) > self.max_entries:
            self.via.popitem(last=False)

    def pick(self, env: Envelope) -> bytes:
        """The relay for this send: the destination's preferred one, or, when the same message is sent
        again (a retransmit: the last relay did not get it through), the best one not yet tried for it.
        The relay that failed is counted (``misses``) and moved to the end of the destination's list,
        so new messages avoid it too until it carries something back."""
        dst = env.dst
        relays = self.via[dst]
        attempts = self._attempts
        tried = attempts.pop(env.id, None)
        if tried is None:
            tried = []
        else:
            failed = tried[-1]
            self.misses[failed] = self.misses.pop(failed, 0) + 1
            if len(self.misses) > self.max_entries:
                self.misses.pop(next(iter(self.misses)))
            self.demote(failed, dst)
            self.stats["rotated"] += 1
            if len(tried) >= len(relays):
                tried = []  # every relay had its turn: start over, in preference order
        choice = relays[0]
        for relay in relays:
            if relay not in tried:
                choice = relay
                break
        tried.append(choice)
        attempts[env.id] = tried
        if len(attempts) > MAX_ATTEMPTS:
            attempts.popitem(last=False)
        return choice

    # -- wrapping ------------------------------------------------------------------

    def wrap(self, env: Envelope, public_key: bytes | None) -> dict:
        """The ``relay.fwd`` body for ``env``: signed by us, and sealed to the destination if asked.

        Raises EnvelopeError if it cannot be encoded, IdentityError if sealing needs a key we lack.
        """
        before = env.pk, env.sig
        env.sign(self.identity)
        try:
            frame = env.encode(max_size=self.max_size)
        finally:
            env.pk, env.sig = before  # the caller's envelope stays as it was (it may be sent again, direct)
        self.stats["wrapped"] += 1
        dst = env.dst
        if not (self.seal_all or dst in self._sealed_by):
            return {"to": dst, "e": frame}
        if public_key is None:
            raise IdentityError("no public key known for the destination: cannot seal to it")
        self.stats["sealed"] += 1
        return {"to": dst, "from": self.identity.public_key, "box": self._box(dst, public_key).encrypt(frame)}

    def _box(self, peer: bytes, public_key: bytes) -> nacl.public.Box:
        box = self._boxes.get(peer)
        if box is None:
            box = self._boxes[peer] = nacl.public.Box(self._secret, nacl.public.PublicKey(curve_public_of(public_key)))
            if len(self._boxes) > MAX_BOXES:
                self._boxes.popitem(last=False)
        return box

    def unwrap(self, outer: Envelope) -> Envelope | None:
        """The envelope inside a ``relay.dlv`` from relay ``outer.src``, verified; None (dropped, counted) if
        it is malformed, not for us, undecryptable, unsigned, signed by a key that does not own its
        ``src``, or altered. A relay that delivers a bad one is tried last from then on."""
        relay = outer.src
        body = outer.body
        me = self.identity.node_id
        if type(body) is not dict or body.get("to") != me:
            self._drop("relay_malformed", relay, "relay.dlv body is not a map addressed to us")
            return None
        frame = body.get("e")
        sealed_from = None
        if frame is None:
            sender_key, box = body.get("from"), body.get("box")
            if type(sender_key) is not bytes or type(box) is not bytes:
                self._drop("relay_malformed", relay, "relay.dlv carries neither 'e' nor 'from'+'box'")
                return None
            try:
                frame = self._box(node_id_of(sender_key), sender_key).decrypt(box)
            except (IdentityError, nacl.exceptions.CryptoError, ValueError, TypeError):
                self._tampered("relay_undecryptable", relay, "sealed body does not open (altered, or not for us)")
                return None
            sealed_from = node_id_of(sender_key)
            self.stats["opened"] += 1
        elif type(frame) is not bytes:
            self._drop("relay_malformed", relay, "relay.dlv 'e' is not bytes")
            return None
        try:
            inner = decode(frame, max_size=self.max_size)
        except EnvelopeError as exc:
            self._tampered("relay_malformed", relay, exc)
            return None
        if inner.dst != me or inner.src == me:
            self._drop("relay_wrong_dst", relay, "relayed envelope is not addressed to us")
            return None
        if inner.type.startswith(RELAY_PREFIX):
            self._drop("relay_nested", relay, "relayed envelopes do not nest")
            return None
        if inner.pk is None or node_id_of(inner.pk) != inner.src or (sealed_from is not None and sealed_from != inner.src):
            self._tampered("relay_forged", relay, "relayed envelope's key does not own its src")
            return None
        try:
            inner.verify()
        except BadSignature:
            self._tampered("relay_bad_signature", relay, "relayed envelope's signature does not verify (altered)")
            return None
        src = inner.src
        keys = self.keys
        if keys.get(src) != inner.pk:
            keys[src] = inner.pk
            if len(keys) > self.max_entries:
                keys.popitem(last=False)
        if sealed_from is not None and src not in self._sealed_by:
            self._sealed_by[src] = None  # it sealed to us: we seal what we send back
            if len(self._sealed_by) > self.max_entries:
                self._sealed_by.popitem(last=False)
        self.learned(src, relay)
        self.stats["unwrapped"] += 1
        return inner

    def _tampered(self, reason: str, relay: bytes, detail: object) -> None:
        self._drop(reason, relay, detail)
        self.demote(relay)
