"""The transport's gate for ``join = "fleet"``: nothing passes to or from a peer until its certificate did.

The certificate checks are the sans-IO :class:`~zmqagents.certs.Admission`; this module is the shell
around it (protocols/certificates.md, section 5):

* every envelope a node receives -- on its ROUTER, on a DEALER, on a SUB, or unwrapped from a relay --
  goes through :meth:`FleetGate.admit` before any core sees it. A ``fleet.cert`` is consumed here; any
  other envelope from a peer that is not admitted is dropped (``uncertified``) and answered, at most
  once per ``ask_interval``, with our own ``fleet.cert`` asking for the peer's;
* every frame a node sends goes through :meth:`FleetGate.clear` first. A frame for a peer that is not
  *ready* is held (bounded in frames and bytes) and our ``fleet.cert`` goes out ahead of it, so the
  first frame on a new connection is always the certificate. Ready means both ways: we admitted the
  peer, and the peer said it admitted us (``admitted`` in its ``fleet.cert``, or any other envelope
  from it, which it sends only once it has). Admitting alone would not do: our frames may take
  another connection than our certificate did (the peer's own connection to us, say), and arrive first.

ZAP only sees the CURVE key, so the certificate cannot ride the handshake: it is the first message.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from ..certs import REASONS, Admission, Admitted, CertError
from ..envelope import Envelope
from ..identity import curve_public_of, short_id

log = logging.getLogger(__name__)

CERT_TYPE = "fleet.cert"
# What the gate counts in dropped{layer="transport"}: exported at 0 by a fleet node's /metrics from the start.
FLEET_REFUSALS = ("uncertified", "uncertified_destination", "cert_pending_full", "cert_pending_dropped", "cert_rate",
                  *(f"cert_{reason}" for reason in REASONS))


@dataclass
class FleetConfig:
    """What a node needs to join as a fleet member, and the bounds of the gate."""

    cas: tuple[bytes, ...]  # public keys of the CAs whose certificates we accept (one, or two while rotating)
    certificate: bytes  # our own, as ``zmqagents ca sign`` wrote it (decoded)
    revocations: bytes | None = None  # a revocation list to start with (the [node] revocations file)
    ask_interval: float = 1.0  # s: at most one unsolicited fleet.cert per peer per interval
    max_pending_frames: int = 256  # frames held for one peer until its certificate arrives
    max_pending_bytes: int = 4 << 20  # ... and over all peers
    max_peers: int = 4096  # admitted peers remembered (LRU; a forgotten one is asked again)
    revocation_poll: float = 30.0  # s between looks in the DHT for a newer revocation list


DropFn = Callable[[str, bytes, object], None]


class FleetGate:
    """Admission for one transport. ``send_now(dst, env)`` must write an envelope to ``dst`` at once,
    bypassing the gate (it carries our certificate); ``requeue(dst, frames)`` puts held frames back in
    the transport's outgoing queue, in order."""

    def __init__(self, identity, config: FleetConfig, *, drop: DropFn,
                 send_now: Callable[[Envelope], None], requeue: Callable[[bytes, list[bytes]], None],
                 clock: Callable[[], float] = time.time):
        self.identity = identity
        self.config = config
        self.admission = Admission(config.cas, config.certificate, max_peers=config.max_peers)
        if config.revocations is not None:
            self.admission.adopt(config.revocations, clock())
        self._drop = drop
        self._send_now = send_now
        self._requeue = requeue
        self._clock = clock
        self._asked: OrderedDict[bytes, float] = OrderedDict()  # peer -> when we last sent it our certificate
        self._checked: OrderedDict[bytes, float] = OrderedDict()  # peer not admitted -> when we last checked one
        self._confirmed: OrderedDict[bytes, None] = OrderedDict()  # peers that said they admitted us
        self._by_curve: OrderedDict[bytes, bytes] = OrderedDict()  # CURVE key -> node id, of admitted peers
        self._pending: dict[bytes, list[bytes]] = {}
        self._pending_bytes = 0
        self.on_admitted: list[Callable[[bytes, Admitted], None]] = []
        self.on_newer_revocations: list[Callable[[bytes, int], None]] = []  # (issuer, sequence) a peer holds
        # Called with the revoked peers that were let in as subscribers: ZAP decided at their connect,
        # and their connections to our XPUB stay open until the shell cuts them.
        self.on_subscriber_revoked: list[Callable[[list[bytes]], None]] = []
        self._subscribers: OrderedDict[bytes, None] = OrderedDict()  # peers admitted to our XPUB, by node id
        self.stats = {"admitted": 0, "asked": 0, "answered": 0, "held": 0, "released": 0}

    # -- receiving ----------------------------------------------------------------------------------

    def admit(self, env: Envelope) -> bool:
        """True if ``env`` may go on to the cores; False if it was consumed here or dropped."""
        now = self._clock()
        if env.type == CERT_TYPE:
            self._on_cert(env, now)
            return False
        src = env.src
        if self.admission.admitted(src, now):
            if src not in self._confirmed:  # it sends us anything but its certificate only once it admitted us
                self._confirm(src)
            return True
        self._drop("uncertified", src, f"{env.type} before a valid certificate")
        self._offer(src, now)
        return False

    def _on_cert(self, env: Envelope, now: float) -> None:
        src = env.src
        body = env.body
        if type(body) is not dict or type(body.get("cert")) is not bytes or type(body.get("want")) is not bool \
                or type(body.get("admitted")) is not bool:
            self._drop("cert_malformed", src, "fleet.cert body must be a map with cert (bin), want and admitted (bool)")
            return
        known = self.admission.admitted(src, now)
        if not known:
            # A check costs an Ed25519 verification (~40-120 us): a peer that is not admitted gets at most
            # one per ask_interval, so a stream of bad certificates cannot eat the CPU.
            last = self._checked.get(src)
            if last is not None and now - last < self.config.ask_interval:
                self._drop("cert_rate", src, "certificates come faster than one per ask_interval")
                return
            self._checked[src] = now
            self._checked.move_to_end(src)
            while len(self._checked) > self.config.max_peers:
                self._checked.popitem(last=False)
        try:
            peer = self.admission.present(src, body["cert"], now)
        except CertError as exc:
            self._drop(f"cert_{exc.reason}", src, exc)
            self._confirmed.pop(src, None)
            self._release(src, False)
            return
        rev = body.get("rev")
        if type(rev) is int and rev > self.admission.revocations.sequence(self.admission.certificate.issuer):
            for callback in self.on_newer_revocations:
                callback(self.admission.certificate.issuer, rev)
        if not known:
            self.stats["admitted"] += 1
            by_curve = self._by_curve
            by_curve[curve_public_of(peer.public_key)] = src
            while len(by_curve) > self.config.max_peers:
                by_curve.popitem(last=False)
            log.info("admitted %s (%s) to the fleet%s", peer.name, short_id(src),
                     f", groups {', '.join(sorted(peer.groups))}" if peer.groups else "")
            for callback in self.on_admitted:
                callback(src, peer)
        if body["admitted"]:
            self._confirm(src)
        else:
            self._confirmed.pop(src, None)  # it does not know us (it restarted, or forgot us)
        if body["want"]:
            # Answered every time (no interval): the certificate checked out, and an answer asks back only
            # while the sender has not confirmed us, so two nodes settle in at most two answers.
            self.stats["answered"] += 1
            self._send(src, want=src not in self._confirmed)

    # -- sending ------------------------------------------------------------------------------------

    def clear(self, hop: bytes, frame: bytes, dst: bytes) -> bool:
        """True if ``frame`` may be written to ``hop`` now (it goes to ``dst``, reached through ``hop`` when
        they differ). Otherwise it is held for ``hop`` (or, relayed to an uncertified ``dst``, dropped;
        the delivery core sends it again) and our certificate goes out ahead of it."""
        now = self._clock()
        admitted = self.admission.admitted
        confirmed = self._confirmed
        if dst != hop and not (dst in confirmed and admitted(dst, now)):
            self._drop("uncertified_destination", dst, "no valid certificate from it yet")
            self._offer(dst, now)
            return False
        if hop in confirmed and admitted(hop, now):
            return True
        held = self._pending.get(hop)
        if held is None:
            held = self._pending[hop] = []
        if len(held) >= self.config.max_pending_frames or \
                self._pending_bytes + len(frame) > self.config.max_pending_bytes:
            self._drop("cert_pending_full", hop, "too much held for a peer whose certificate has not come")
        else:
            held.append(frame)
            self._pending_bytes += len(frame)
            self.stats["held"] += 1
        self._offer(hop, now)
        return False

    def admits_curve(self, curve_key: bytes) -> bool:
        """Whether the peer that authenticated with ``curve_key`` is admitted: who may subscribe to our
        publications (ZAP asks, with only the CURVE key to go by). A peer let in is remembered as a
        subscriber, so that revoking it can cut its subscription (``on_subscriber_revoked``)."""
        node_id = self._by_curve.get(curve_key)
        if node_id is None or not self.admission.admitted(node_id, self._clock()):
            return False
        subscribers = self._subscribers
        subscribers[node_id] = None
        subscribers.move_to_end(node_id)
        while len(subscribers) > self.config.max_peers:
            subscribers.popitem(last=False)
        return True

    def _confirm(self, peer: bytes) -> None:
        """``peer`` said it admitted us: once we admitted it too, what we held for it goes."""
        confirmed = self._confirmed
        confirmed[peer] = None
        confirmed.move_to_end(peer)
        while len(confirmed) > self.config.max_peers:
            confirmed.popitem(last=False)
        if self.admission.admitted(peer, self._clock()):
            self._release(peer, True)

    def _release(self, peer: bytes, admitted: bool) -> None:
        held = self._pending.pop(peer, None)
        if not held:
            return
        self._pending_bytes -= sum(len(f) for f in held)
        if admitted:
            self.stats["released"] += len(held)
            self._requeue(peer, held)
        else:
            for _ in held:
                self._drop("cert_pending_dropped", peer, "held for a peer that was refused, revoked or forgotten")

    def _offer(self, peer: bytes, now: float) -> None:
        """Send ``peer`` our certificate, asking for its own (and for its word that it admitted us), at most
        once per ask_interval: what a peer that is not ready gets, however much we drop or hold for it."""
        asked = self._asked
        last = asked.get(peer)
        if last is not None and now - last < self.config.ask_interval:
            return
        asked[peer] = now
        asked.move_to_end(peer)
        while len(asked) > self.config.max_peers:
            asked.popitem(last=False)
        self.stats["asked"] += 1
        self._send(peer, want=True)

    def _send(self, peer: bytes, *, want: bool) -> None:
        self._send_now(self.cert_envelope(peer, want=want, admitted=self.admission.admitted(peer, self._clock())))

    def cert_envelope(self, dst: bytes, *, want: bool, admitted: bool) -> Envelope:
        """Our ``fleet.cert`` for ``dst``: ``want`` asks for an answer, ``admitted`` says we admitted ``dst``."""
        adm = self.admission
        body = {"cert": adm.certificate.encoded, "want": want, "admitted": admitted,
                "rev": adm.revocations.sequence(adm.certificate.issuer)}
        return Envelope(id=os.urandom(16), src=self.identity.node_id, dst=dst, type=CERT_TYPE, body=body)

    # -- revocation ---------------------------------------------------------------------------------

    def adopt(self, data: bytes) -> list[bytes]:
        """Take a revocation list (CertError if it cannot be trusted); the node ids it cuts off."""
        gone = self.admission.adopt(data, self._clock())
        subscribed = []
        for nid in gone:
            log.warning("%s is revoked: cut off", short_id(nid))
            self._confirmed.pop(nid, None)
            self._release(nid, False)
            if self._subscribers.pop(nid, 0) is None:
                subscribed.append(nid)
        if subscribed:
            for callback in self.on_subscriber_revoked:
                callback(subscribed)
        return gone

    def forget(self, node_id: bytes) -> None:
        """The peer is gone: drop what was held for it (its admission stays until its certificate ends)."""
        self._release(node_id, False)
        self._asked.pop(node_id, None)
        self._confirmed.pop(node_id, None)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes
