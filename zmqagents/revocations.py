"""Revocation lists travel through the DHT (protocols/certificates.md, section 6).

The operator hands a new list to one node (its ``[node] revocations`` file and SIGHUP, or
``Node.revoke``); every fleet node publishes the newest list it holds under the DHT key
``revocation_record_key(ca_fingerprint, sequence)`` and looks, every ``revocation_poll`` seconds
(sooner when a peer's ``fleet.cert`` says it holds a newer one), for the list with the next sequence
number. A list is trusted for the CA's signature on it, never for who stored it, so any node may
publish it and the DHT record's own publisher does not matter.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

from .certs import Admission, CertError, revocation_record_key
from .dht import Dht, DhtError

log = logging.getLogger(__name__)

MAX_STEPS = 16  # lists fetched one after the other in one look (a node far behind catches up over several)
FETCH_TIMEOUT = 10.0


class RevocationSync:
    """Keeps one fleet node's revocation lists current through the DHT. Driven by the node: ``start()``
    once it runs, ``poke()`` to look now, ``close()`` when it stops. ``revoke`` is the node's
    (Node.revoke: adopt a list and cut peers off); records are stored with lifetime ``ttl``."""

    def __init__(self, dht: Dht, revoke: Callable[[bytes], list[bytes]], admission: Admission, *,
                 interval: float, ttl: float, rng: random.Random):
        self._dht = dht
        self._revoke = revoke
        self._ttl = ttl
        self._admission = admission
        self._interval = interval
        self._rng = rng
        self._poked = False
        self._closing = False
        self._waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._published: dict[bytes, int] = {}  # issuer -> the sequence we stored in the DHT
        self.stats = {"fetched": 0, "published": 0, "refused": 0}

    def start(self) -> None:
        # Revocation keys are predictable (the CA and a sequence number): a node, the revoked one first,
        # could store garbage under the next ones before the CA signs them. The store gives such a key to
        # the CA's list whoever was first, and never lets anything else replace it.
        self._dht.vouch_with(self._admission.revocations.vouches)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def poke(self) -> None:
        """Look for a newer list (and publish ours) now rather than at the next interval."""
        self._poked = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def close(self) -> None:
        self._closing = True  # ends the loop even if a DHT call swallowed the cancellation (asyncio.wait_for, 3.11)
        self.poke()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._publish()
                await self._fetch()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop revocation for good: log it, try again later
                log.exception("revocation list sync failed")
            await self._pause(self._interval * self._rng.uniform(0.9, 1.1))

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or until poke()."""
        if self._poked or self._closing:
            self._poked = False
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(delay, lambda: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
            self._poked = False

    async def _publish(self) -> None:
        dht, ttl = self._dht, self._ttl
        for issuer, crl in list(self._admission.revocations.lists.items()):
            if self._published.get(issuer, 0) >= crl.sequence:
                continue
            try:
                await dht.put(revocation_record_key(issuer, crl.sequence), crl.encoded, ttl=ttl)
            except DhtError as exc:
                if exc.reason != "owner":  # "owner": another node stored this list first (a squatter would have been displaced: vouches)
                    log.debug("could not publish revocation list %d yet: %s", crl.sequence, exc)
                    continue
            self._published[issuer] = crl.sequence
            self.stats["published"] += 1

    async def _fetch(self) -> None:
        revocations = self._admission.revocations
        issuer = self._admission.certificate.issuer  # the CA of our own certificate: the one whose lists matter
        for _ in range(MAX_STEPS):
            held = revocations.sequence(issuer)
            try:
                record = await self._dht.get_record(revocation_record_key(issuer, held + 1),
                                                         timeout=FETCH_TIMEOUT)
            except DhtError as exc:
                log.debug("could not look for revocation list %d: %s", held + 1, exc)
                return
            if record is None:
                return
            if type(record.value) is not bytes:
                self.stats["refused"] += 1
                return
            try:
                gone = self._revoke(record.value)
            except CertError as exc:
                self.stats["refused"] += 1
                log.warning("refused the revocation list stored under sequence %d: %s", held + 1, exc)
                return
            self.stats["fetched"] += 1
            log.info("took revocation list %d from the DHT (%d peer(s) cut off)",
                     revocations.sequence(issuer), len(gone))
            if revocations.sequence(issuer) <= held:
                return  # it was not newer after all (stored under the wrong key): nothing more to walk
