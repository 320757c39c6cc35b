"""LAN discovery over mDNS / DNS-SD: nodes on one link find each other with no configuration.

Each node registers one service instance of type ``_zmqagents._tcp.local.`` whose TXT record
carries what a peer needs to reach it (see :func:`txt_record`)::

    v=1  id=<node id, 64 hex>  pk=<Ed25519 public key, base32>  ep=<tcp endpoint>[ <tcp endpoint>...]

and browses for the others. An announcement is only a *claim*: anyone on the LAN can multicast
any id. So a node found this way is trusted only after a hello over a CurveZMQ link opened with
the public key it claims (:meth:`Node.introduce`): the handshake fails unless the far end holds
the matching secret key, so an announcement with someone else's id and key never gets into the
routing table, and a node that was alone joins the mesh through the first peer that passes.
Announcements whose id is not ``sha256(pk)`` are refused before any connection is made.

Everything a neighbour can make us do is bounded: TXT records are parsed only up to
``max_txt_bytes``, at most ``max_pending`` service names wait to be examined, at most
``max_inflight`` are examined at once, hellos are rate-limited by a token bucket, and an id
whose claim failed is not tried again for ``retry_after`` seconds. Every refusal is counted in
``stats`` (exported as metrics) and logged once per name.

zeroconf runs on the node's event loop (its asyncio API): no thread of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..identity import Contact, IdentityError, format_public_key, node_id_of, parse_public_key, short_id
from ..errors import Error
from .config import is_loopback_endpoint

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

SERVICE = "_zmqagents._tcp.local."
TXT_VERSION = b"1"
MAX_ENDPOINTS = 4  # endpoints parsed from one announcement (and advertised by us)
WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", "[::]"})

STAT_KEYS = (
    "announcements",  # service names seen added or updated
    "pending_full",  # names refused because max_pending were already waiting
    "unresolved",  # names whose SRV/TXT did not arrive in time
    "bad_txt",  # TXT missing, oversize, garbage, wrong version, id != sha256(pk), bad endpoints
    "self",  # our own announcement
    "known",  # a node already in our address book (its own hello or the mesh told us)
    "duplicate",  # an id already being examined under another name
    "cooldown",  # an id whose claim failed less than retry_after seconds ago
    "verified",  # hello answered over a link authenticated with the claimed key
    "verify_failed",  # no hello answer over any advertised endpoint: handshake refused or nobody there
    "joins",  # joins of the mesh started through a verified peer
)


@dataclass
class MdnsConfig:
    """Knobs of LAN discovery; ``enabled`` and ``service`` come from the sidecar's ``[mdns]`` section."""

    enabled: bool = True
    service: str = SERVICE
    interfaces: list[str] | None = None  # IPv4 addresses to use; None: every interface
    max_txt_bytes: int = 512  # announcements with a longer TXT record are refused unread
    max_pending: int = 128  # service names waiting to be examined
    max_inflight: int = 4  # names examined at once
    resolve_timeout: float = 3.0  # s to wait for a name's SRV/TXT records
    verify_timeout: float = 5.0  # s a hello may take per endpoint before the claim counts as failed
    hello_rate: float = 5.0  # hellos per second to newly found nodes (token bucket refill)
    hello_burst: int = 10  # hellos allowed at once after a quiet period
    retry_after: float = 60.0  # s before a failed id is examined again
    max_failed: int = 1024  # failed ids remembered for retry_after


class TxtError(Error, ValueError):
    """An announcement's TXT record is unusable; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What an announcement says about a node: its public key and where it listens."""

    public_key: bytes
    endpoints: tuple[str, ...]

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.public_key)


def txt_record(public_key: bytes, endpoints: list[str]) -> dict[str, str]:
    """The TXT properties we announce (about 190 bytes with one endpoint)."""
    return {
        "v": TXT_VERSION.decode(),
        "id": node_id_of(public_key).hex(),
        "pk": format_public_key(public_key),
        "ep": " ".join(endpoints[:MAX_ENDPOINTS]),
    }


def parse_txt(text: bytes, max_bytes: int = 512) -> Claim:
    """Read a raw DNS TXT rdata (length-prefixed strings) into a :class:`Claim`; TxtError if unusable.

    Strict and bounded because any host on the LAN can send it: the size is checked before parsing,
    the first occurrence of a key wins (RFC 6763 section 6.4), the id must be ``sha256(pk)``, and
    only ``tcp://HOST:PORT`` endpoints are kept (an ipc path means nothing on another host).
    """
    if not isinstance(text, (bytes, bytearray)):
        raise TxtError("no TXT record")
    if len(text) > max_bytes:
        raise TxtError(f"TXT record of {len(text)} bytes is over the {max_bytes}-byte limit")
    props: dict[bytes, bytes] = {}
    i = 0
    while i < len(text):
        n = text[i]
        item = bytes(text[i + 1:i + 1 + n])
        if len(item) != n:
            raise TxtError("TXT record is truncated")
        i += 1 + n
        key, sep, value = item.partition(b"=")
        if sep and key and key.lower() not in props:
            props[key.lower()] = value
    if props.get(b"v") != TXT_VERSION:
        raise TxtError(f"unsupported TXT version {props.get(b'v')!r:.20}")
    try:
        public_key = parse_public_key(props.get(b"pk", b"").decode("ascii"))
        claimed_id = bytes.fromhex(props.get(b"id", b"").decode("ascii"))
        endpoint_text = props.get(b"ep", b"").decode("ascii")
    except (IdentityError, UnicodeDecodeError, ValueError) as exc:
        raise TxtError(f"bad id, key or endpoint field: {exc}") from None
    if claimed_id != node_id_of(public_key):
        raise TxtError("id is not sha256 of the public key")
    endpoints = []
    for endpoint in endpoint_text.split()[:MAX_ENDPOINTS]:
        try:
            Contact.parse(f"{format_public_key(public_key)}@{endpoint}")
        except IdentityError:
            continue
        host = endpoint[len("tcp://"):].rpartition(":")[0] if endpoint.startswith("tcp://") else None
        if host and host not in WILDCARD_HOSTS and endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise TxtError("no usable tcp:// endpoint")
    return Claim(public_key, tuple(endpoints))


def advertised_endpoints(endpoint: str, interfaces: list[str] | None = None) -> list[str]:
    """Where peers on the LAN can reach an inbox bound at ``endpoint``.

    A wildcard bind (``tcp://0.0.0.0:P``) is advertised as each interface's IPv4 address with
    port P (loopback last, so peers on other hosts try a routable address first). An ipc inbox
    cannot be reached from another host: nothing is advertised.
    """
    if not endpoint.startswith("tcp://"):
        return []
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if host not in WILDCARD_HOSTS:
        return [endpoint]
    addresses = list(interfaces) if interfaces else _ipv4_addresses()
    addresses.sort(key=lambda a: a.startswith("127."))
    return [f"tcp://{a}:{port}" for a in addresses[:MAX_ENDPOINTS]]


def _ipv4_addresses() -> list[str]:
    import ifaddr  # zeroconf's own dependency; imported only for a wildcard bind

    return [str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)]


class TokenBucket:
    """``rate`` events per second on average, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    def delay(self) -> float:
        """Take a token; returns how long to wait before using it (0 if one was there)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class MdnsDiscovery:
    """Announce ``node`` on the LAN and verify and add the nodes found there. A sidecar service."""

    metric_name = "mdns"  # its stats are exported as zmqagents_mdns_events_total{outcome=...}

    def __init__(self, node: "Node", config: MdnsConfig | None = None):
        self.node = node
        self.config = config or MdnsConfig()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._ready = False
        self._zc = None  # AsyncZeroconf
        self._browser = None
        self._info = None  # our registered AsyncServiceInfo
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.config.max_inflight)
        self._bucket = TokenBucket(self.config.hello_rate, self.config.hello_burst)
        self._examining: set[bytes] = set()  # ids being verified now
        self._failed: OrderedDict[bytes, float] = OrderedDict()  # id -> monotonic time its claim failed
        self._logged: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._register: asyncio.Task | None = None
        self._worker: asyncio.Task | None = None
        self._join: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        """Names waiting or being examined (a gauge)."""
        return len(self._pending) + len(self._tasks)

    async def start(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        cfg = self.config
        node = self.node
        interfaces = cfg.interfaces or _scope_of(node.transport.endpoint)
        if interfaces is None:
            from zeroconf import InterfaceChoice

            interfaces = InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        loop = asyncio.get_running_loop()
        endpoints = advertised_endpoints(node.transport.endpoint, cfg.interfaces)
        if endpoints:
            label = f"zmqagents-{node.node_id.hex()[:20]}"
            hosts = [e[len("tcp://"):].rpartition(":")[0] for e in endpoints]
            self._info = AsyncServiceInfo(
                cfg.service,
                f"{label}.{cfg.service}",
                port=int(endpoints[0].rpartition(":")[2]),
                properties=txt_record(node.identity.public_key, endpoints),
                server=f"{label}.local.",
                addresses=[socket.inet_aton(h) for h in hosts if _is_ipv4(h)],
            )
            # Probing for a unique name takes ~1 s of mDNS timers: do it in the background so the
            # sidecar's start is not held up; ready() turns true once we are announced.
            self._register = loop.create_task(self._announce())
        else:
            log.warning("mDNS: inbox %s is not reachable from other hosts; browsing only", node.transport.endpoint)
            self._ready = True
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, cfg.service, handlers=[self._on_change])
        self._worker = loop.create_task(self._work())
        log.info("mDNS: announcing %s as %s", ", ".join(endpoints) or "nothing", cfg.service)

    def ready(self) -> bool:
        """Announcing and browsing."""
        return self._ready

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Say goodbye on the LAN (peers' caches drop us) and stop browsing. Safe to call twice.
        Nothing to drain: ``drain_timeout`` is part of the sidecar's service protocol."""
        self._ready = False
        tasks = [t for t in (self._register, self._worker, self._join, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._register = self._worker = self._join = None
        self._tasks.clear()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            await self._zc.async_close()  # unregisters our service (goodbye packets)
            self._zc = None

    async def _announce(self) -> None:
        # allow_name_change: a host that took our name first (by accident or not) must not stop
        # us from being found; the name is only a label, the TXT record says who we are.
        try:
            await self._zc.async_register_service(self._info, allow_name_change=True)
        except Exception as exc:  # the node still browses and verifies; /readyz shows we are not announced
            log.error("mDNS: cannot announce %s: %s", self._info.name, exc)
            return
        self._ready = True

    # -- browsing ---------------------------------------------------------------------

    def _on_change(self, zeroconf, service_type: str, name: str, state_change) -> None:
        """zeroconf's browser callback (on our loop): queue added/updated names, bounded."""
        if state_change.name not in ("Added", "Updated"):
            return  # a goodbye is not evidence of death: SWIM decides that
        self.stats["announcements"] += 1
        if name in self._pending:
            return
        if len(self._pending) >= self.config.max_pending:
            self.stats["pending_full"] += 1
            self._log_once(name, "mDNS: %d names already waiting; ignoring %s", self.config.max_pending, name)
            return
        self._pending[name] = None
        self._wake.set()

    async def _work(self) -> None:
        """Take names oldest first, at most max_inflight examined at once."""
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            name, _ = self._pending.popitem(last=False)
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._examine(name))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("mDNS: examining an announcement failed", exc_info=task.exception())

    async def _examine(self, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(self.config.service, name)
        if not await info.async_request(self._zc.zeroconf, int(self.config.resolve_timeout * 1000)):
            self.stats["unresolved"] += 1
            return
        try:
            claim = parse_txt(info.text, self.config.max_txt_bytes)
        except TxtError as exc:
            self.stats["bad_txt"] += 1
            self._log_once(name, "mDNS: ignoring %s: %s", name, exc)
            return
        await self._consider(claim, name)

    async def _consider(self, claim: Claim, name: str) -> None:
        """Verify a parsed claim by a hello over CURVE with the claimed key, then add or join."""
        node = self.node
        node_id = claim.node_id
        if node_id == node.node_id:
            self.stats["self"] += 1
            return
        if node.transport.known(node_id):
            self.stats["known"] += 1
            return
        if node_id in self._examining:
            self.stats["duplicate"] += 1
            return
        failed_at = self._failed.get(node_id)
        if failed_at is not None and time.monotonic() - failed_at < self.config.retry_after:
            self.stats["cooldown"] += 1
            return
        self._examining.add(node_id)
        try:
            wait = self._bucket.delay()
            if wait:
                await asyncio.sleep(wait)
            alone = len(node.routing.table) == 0
            for endpoint in claim.endpoints:
                contact = Contact(claim.public_key, endpoint)
                if await node.introduce(contact, timeout=self.config.verify_timeout):
                    break
            else:
                self.stats["verify_failed"] += 1
                self._failed[node_id] = time.monotonic()
                self._failed.move_to_end(node_id)
                while len(self._failed) > self.config.max_failed:
                    self._failed.popitem(last=False)
                self._log_once(name, "mDNS: %s claims id %s but no hello came back over a link with its key",
                               name, short_id(node_id))
                return
        finally:
            self._examining.discard(node_id)
        self.stats["verified"] += 1
        self._failed.pop(node_id, None)
        log.info("mDNS: verified %s at %s", short_id(node_id), contact.endpoint)
        if alone and (self._join is None or self._join.done()):
            # We knew nobody: look ourselves up through this peer to learn the rest of the mesh.
            self.stats["joins"] += 1
            self._join = asyncio.get_running_loop().create_task(node.join([contact], timeout=node.config.join_timeout))

    def _log_once(self, name: str, msg: str, *args) -> None:
        if name not in self._logged and len(self._logged) < 1024:
            self._logged.add(name)
            log.warning(msg, *args)


def _scope_of(endpoint: str) -> list[str] | None:
    """Interfaces worth announcing on: an inbox bound to loopback is reachable from this host
    only, so it is announced on loopback only (peers elsewhere would dial their own 127.0.0.1);
    None means every interface."""
    return ["127.0.0.1"] if is_loopback_endpoint(endpoint) else None


def create(sidecar) -> MdnsDiscovery:
    """The sidecar's factory (``[mdns] enabled``, see config.mdns_wanted): no IO here, :meth:`MdnsDiscovery.start` does it."""
    return MdnsDiscovery(sidecar.node, MdnsConfig(service=sidecar.config.mdns.service))


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3
