"""The capability registry: how `zmqagents agents ls` lists every capability in the mesh.

The DHT finds the providers of a *known* name but cannot enumerate names. So every agent also
provides a well-known registry key whose provider-entry metadata names the capabilities it
serves; listing the mesh is a provider lookup of the registry keys, no enumeration needed.

The DHT keeps at most ``max_providers_per_key`` (20) entries per key, so the registry is split
into :data:`SHARDS` keys, ``zmqagents/capabilities/0`` .. ``/15``; a node provides the shard
``node_id[0] % SHARDS`` and a reader looks up all of them. An entry is capped at 1 KiB with the
contact and signature, so the metadata lists names only while it packs into
:data:`META_BUDGET` bytes, sorted, and says ``"more": true`` when it left some out; the reader
then asks that node (``task.describe``) for the full list. Spec: protocols/tasks.md §3.3.

A holder drops a node's provider entries once its own failure detector confirms that node failed or
left (``DhtStore.forget``); until then, and on holders that never knew the node, an entry outlives its
node until its TTL, so a listing says which nodes are still there: one this node's membership knows to be dead is marked ``dead`` without a
word sent; one membership knows alive (with a measured RTT) is ``alive``; every other one is asked
``task.describe`` (at most :data:`PROBE_PARALLEL` at once, each within a probe timeout), and is
``alive`` with the measured round trip if it answers, else ``unreachable``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from ..core.tasks import MAX_CAPABILITY_LEN, packed_size
from ..identity import Contact
from .capability import NAME_RE, describe

if TYPE_CHECKING:
    from ..shell.api import NodeAPI

log = logging.getLogger(__name__)

PREFIX = "zmqagents/capabilities"
SHARDS = 16
META_BUDGET = 600  # bytes of packed metadata: a provider entry is at most 1024 with contact and signature
PROBE_TIMEOUT = 2.0  # s a listed node has to answer the liveness probe before it counts as unreachable
PROBE_PARALLEL = 32  # probes in flight at once: 320 listed nodes (16 shards x 20) take at most 10 rounds

ALIVE, UNREACHABLE, DEAD = "alive", "unreachable", "dead"


def shard_key(node_id: bytes) -> str:
    """The registry key ``node_id`` provides (its name; the DHT hashes it)."""
    return f"{PREFIX}/{node_id[0] % SHARDS}"


def all_keys() -> list[str]:
    return [f"{PREFIX}/{i}" for i in range(SHARDS)]


def registry_meta(names: Iterable[str], budget: int = META_BUDGET) -> dict:
    """``{"caps": [names...]}`` (sorted) packing into ``budget`` bytes, plus ``"more": True`` if some
    names did not fit."""
    all_names = sorted(set(names))
    caps: list[str] = []
    for name in all_names:
        candidate = {"caps": caps + [name], "more": True}
        size = packed_size(candidate)
        if size is None or size > budget:
            break
        caps.append(name)
    meta: dict[str, Any] = {"caps": caps}
    if len(caps) < len(all_names):
        meta["more"] = True
    return meta


def parse_meta(meta: Any) -> tuple[list[str], bool]:
    """The names a registry entry lists, and whether to ask the node for the rest. Names that break
    the capability-name rules are dropped (and make the reader ask the node itself)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("caps"), list):
        return [], True
    names = [n for n in meta["caps"] if isinstance(n, str) and 0 < len(n) <= MAX_CAPABILITY_LEN and NAME_RE.match(n)]
    return names, meta.get("more") is True or len(names) != len(meta["caps"])


@dataclass(frozen=True)
class Listed:
    """One node found in the registry, the capabilities it serves, and whether it is still there."""

    node_id: bytes
    contact: Contact
    capabilities: tuple[str, ...]
    complete: bool  # False: it said there were more names but did not answer task.describe
    state: str = ALIVE  # ALIVE, UNREACHABLE (did not answer the probe) or DEAD (membership says so)
    rtt: float | None = None  # s: membership's smoothed probe RTT, or this listing's probe round trip


async def list_mesh(node: NodeAPI, *, timeout: float = 10.0, probe_timeout: float = PROBE_TIMEOUT,
                    parallel: int = PROBE_PARALLEL) -> list[Listed]:
    """Every node in the registry, with its capabilities and liveness; raises DhtError only if every
    shard lookup failed (a lookup of an empty shard succeeds with no providers)."""
    from ..node import RemoteError

    results = await asyncio.gather(*(node.find_providers(k, timeout=timeout) for k in all_keys()),
                                   return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if len(errors) == len(results):
        raise errors[0]
    for exc in errors:
        log.info("a registry shard lookup failed: %s", exc)
    seen: dict[bytes, Any] = {}
    for infos in results:
        if not isinstance(infos, BaseException):
            for info in infos:
                seen.setdefault(info.node_id, info)
    slots = asyncio.Semaphore(parallel)
    membership = node.membership

    async def one(info) -> Listed:
        names, more = parse_meta(info.meta)
        known = membership.state_of(info.node_id) if membership is not None else None
        if known in ("dead", "left"):
            return Listed(info.node_id, info.contact, tuple(names), not more, DEAD)
        rtt = membership.rtt(info.node_id) if known == "alive" else None
        if rtt is not None and not more:
            return Listed(info.node_id, info.contact, tuple(names), True, ALIVE, rtt)
        async with slots:  # the probe is task.describe: it also fetches the full list when `more` says so
            began = time.monotonic()
            try:
                caps = await describe(node, info.contact, timeout=probe_timeout)
            except RemoteError as exc:  # it answered, with an error: there, but not describing itself
                log.info("%s did not describe itself: %s", info.node_id.hex()[:12], exc)
                return Listed(info.node_id, info.contact, tuple(names), not more, ALIVE, time.monotonic() - began)
            except Exception as exc:
                log.info("%s did not answer the liveness probe: %s", info.node_id.hex()[:12], exc)
                return Listed(info.node_id, info.contact, tuple(names), not more, UNREACHABLE)
            rtt = time.monotonic() - began
        if more:
            names = sorted(c.name for c in caps)
        return Listed(info.node_id, info.contact, tuple(names), True, ALIVE, rtt)

    return list(await asyncio.gather(*(one(i) for i in seen.values())))
