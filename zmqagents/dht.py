"""``node.dht`` and ``node.provide`` / ``node.find_providers``: the async face of the DHT core.

The protocol lives in :mod:`zmqagents.core.dht` (sans-IO); this module turns its operations into
awaitables for a running :class:`~zmqagents.node.Node`, which feeds it ``dht.*`` envelopes and timer
ticks like its other cores. The node hands it the three things it needs from the node's driving loop
(its clock, a way to send what a core queued, and a pump) when it makes it, so this module does not
depend on the Node.

Keys: a ``str`` key or capability name is hashed, ``sha256(name.encode("utf-8"))``, so ``"weather"``
means the same key on every node; 32 ``bytes`` are used as the key itself; other ``bytes`` are hashed.

    async with Node(bootstrap=[contact]) as node:
        await node.dht.put("config/site-7", {"interval": 30}, ttl=3600)   # -> PutResult (replicas that took it)
        value = await node.dht.get("config/site-7")                      # value, or None if no node holds it
        await node.provide("summarize")                                   # refreshed until close() or unprovide()
        for p in await node.find_providers("summarize"):
            reply = await node.request(p.contact, {...})

Errors: :class:`DhtError` (``reason`` says why: "failed" -- no node answered, "no_contacts" -- the
node knows no peer yet, "busy", or the holders' refusal of a put, e.g. "owner": the key belongs to
another publisher's live record); :class:`DhtTimeout` when the operation outlives ``timeout``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from .core.dht import DhtCore, DhtDone, ProviderRecord, Record, key_for
from .core.dht_store import Vouch
from .identity import Contact, short_id
from .errors import Error

__all__ = ["Dht", "DhtError", "DhtTimeout", "PutResult", "ProviderInfo", "key_for"]


class DhtError(Error):
    """A DHT operation failed; ``reason`` is the core's (see the module docstring)."""

    def __init__(self, message: str, reason: str = "failed"):
        super().__init__(message)
        self.reason = reason


class DhtTimeout(DhtError, TimeoutError):
    """The operation did not finish within its timeout."""

    def __init__(self, message: str):
        super().__init__(message, "timeout")


@dataclass(slots=True, frozen=True)
class PutResult:
    """A stored record: ``stored`` replicas acknowledged it before the put returned (this node counts if it
    is one of the closest); a replica slower than about one RTO may still store it just after."""

    key: bytes
    stored: int
    seq: int
    expires: int


@dataclass(slots=True, frozen=True)
class ProviderInfo:
    """A node that provides a name: its id, its contact (pass it to ``request``), when its entry expires
    (Unix seconds; it refreshes it while it runs) and the metadata it announced."""

    node_id: bytes
    contact: Contact
    expires: int
    meta: Any = None

    @property
    def peer(self) -> str:
        return short_id(self.node_id)


_REASONS = {
    "failed": "no node answered the lookup",
    "no_contacts": "this node knows no peer yet (join a mesh with bootstrap contacts first)",
    "busy": "too many DHT operations are queued on this node",
    "owner": "the key is held by another publisher's record until it expires",
    "vouched": "the key holds a value an authority vouches for (a revocation list) and this one is not",
    "conflict": "the holders have a different value with the same sequence number",
    "stale": "the holders have a newer record for this key",
    "full": "the holders' stores are full",
    "providers_full": "the holders already list the maximum number of providers for this name",
}


class Dht:
    """``node.dht``. Operations need a started node (``async with Node(...)``)."""

    def __init__(self, *, now: Callable[[], float], pump: Callable[[], None]):
        """``now``: the clock the node's cores run on; ``pump``: have the node send what its cores
        queued and act on their events (it hands this object each DhtDone: :meth:`settle`), after an
        operation was handed to the core outside the node's own event handling."""
        self._now = now
        self._pump = pump
        self.core: DhtCore | None = None  # made by Node.start(), once the node's contact is known
        self._ops: dict[int, asyncio.Future] = {}

    # -- the API ---------------------------------------------------------------------------------

    def vouch_with(self, vouch: Vouch) -> None:
        """Have this node's store give keys whose value ``vouch(key, value)`` accepts to that value, whoever
        stored something else there first (core/dht_store.py, ``RecordStore.offer_record``)."""
        self._core().store.vouch = vouch

    async def put(self, key: str | bytes, value: Any, *, ttl: float | None = None,
                  timeout: float = 30.0) -> PutResult:
        """Sign ``value`` and store it on the nodes closest to ``key``; it lives ``ttl`` seconds (default
        ``NodeConfig.dht.default_ttl``) and this node republishes it meanwhile. Raises ValueError for a
        value that is too big or not msgpack, DhtError if no replica accepted it."""
        k = key_for(key)
        done = await self._run(lambda now: self._core().put(k, value, now, ttl=ttl), timeout, "put")
        if not done.ok:
            raise DhtError(f"put failed: {_REASONS.get(done.reason, done.reason)}", done.reason)
        return PutResult(k, done.stored, done.record.seq, done.record.expires)

    async def get_record(self, key: str | bytes, *, timeout: float = 30.0) -> Record | None:
        """The first valid record found for ``key`` (signature, key and expiry checked), or None when the
        lookup converged and no node holds one. Raises DhtError if the lookup failed."""
        k = key_for(key)
        done = await self._run(lambda now: self._core().get(k, now), timeout, "get")
        if not done.ok:
            raise DhtError(f"get failed: {_REASONS.get(done.reason, done.reason)}", done.reason)
        return done.record

    async def get(self, key: str | bytes, *, timeout: float = 30.0) -> Any:
        """The value stored under ``key``, or None if no node holds one (see :meth:`get_record` to tell a
        stored None from a missing record). Raises DhtError if the lookup failed."""
        record = await self.get_record(key, timeout=timeout)
        return None if record is None else record.value

    async def provide(self, name: str | bytes, *, meta: Any = None, timeout: float = 30.0) -> int:
        """Announce this node as a provider of ``name`` (with optional small ``meta``); the entry is
        refreshed until the node closes or :meth:`unprovide`. Returns the replicas that accepted it."""
        k = key_for(name)
        done = await self._run(lambda now: self._core().provide(k, now, meta=meta), timeout, "provide")
        if not done.ok:
            raise DhtError(f"provide failed: {_REASONS.get(done.reason, done.reason)}", done.reason)
        return done.stored

    def unprovide(self, name: str | bytes) -> bool:
        """Stop refreshing our entry for ``name``; other nodes drop it when it expires. False if we did
        not provide it."""
        return self._core().unprovide(key_for(name))

    async def find_providers(self, name: str | bytes, *, timeout: float = 30.0) -> list[ProviderInfo]:
        """The nodes that provide ``name``, closest to its key first (empty if none)."""
        k = key_for(name)
        done = await self._run(lambda now: self._core().find_providers(k, now), timeout, "find_providers")
        if not done.ok:
            raise DhtError(f"find_providers failed: {_REASONS.get(done.reason, done.reason)}", done.reason)
        return [_info(p) for p in done.providers]

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._core().stats)

    # -- driven by the node --------------------------------------------------------------------------

    def settle(self, event: DhtDone) -> None:
        """An operation finished (the node's composition reported it): resolve whoever awaits it."""
        future = self._ops.pop(event.op_id, None)
        if future is not None and not future.done():
            future.set_result(event)

    def close(self, error: Exception) -> None:
        for future in self._ops.values():
            if not future.done():
                future.set_exception(error)
        self._ops.clear()

    # -- internals -------------------------------------------------------------------------------------

    def _core(self) -> DhtCore:
        if self.core is None:
            raise DhtError("the node is not started (use `async with Node(...)`)", "not_started")
        return self.core

    async def _run(self, start: Callable[[float], int], timeout: float, what: str) -> DhtDone:
        op_id = start(self._now())
        future = asyncio.get_running_loop().create_future()
        self._ops[op_id] = future
        self._pump()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            raise DhtTimeout(f"{what} did not finish within {timeout:g} s") from None
        finally:
            self._ops.pop(op_id, None)


def _info(p: ProviderRecord) -> ProviderInfo:
    return ProviderInfo(p.node_id, p.contact, p.expires, p.meta)
