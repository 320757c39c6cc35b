"""The sidecar daemon: one Node plus the optional services its configuration enables.

``zmqagents node --config FILE`` builds a :class:`Sidecar` and calls :meth:`Sidecar.serve`.

Lifecycle
---------
* start: load (or create, mode 0600) the node key, start the Node (bind, hello the peers, join
  through the bootstrap contacts), start each wanted service in :data:`SERVICES` order, write the
  contact file, tell systemd ``READY=1``.
* SIGTERM or SIGINT: ``STOPPING=1``; services close in reverse order, sharing one drain budget of
  ``[node] drain_timeout`` seconds (the local API stops accepting first, then the outbox drains
  while the node can still deliver); then the Node announces its leave (peers report "left", not
  "failed") and closes. Exit status 0.
  The leave comes *after* the drain, not before: peers forget a left node's delivery state, so
  acks for messages drained after a leave could be lost, and those messages would be sent again
  after the next start.
* a second SIGTERM/SIGINT during that stop: exit at once with status 128 + signal number
  (143 for SIGTERM, 130 for SIGINT), without draining. Messages the outbox accepted stay on disk
  and are sent after the next start.
* SIGHUP: re-read the same file, conf.d and environment (flags still win). Applied in place:
  ``[log] level`` and ``format``, the ``[node] allowlist`` (the file is re-read even when its
  path is unchanged), the fleet's ``[node] revocations`` and ``cert`` files (re-read likewise: a
  newer revocation list cuts revoked peers off, a renewed certificate is shown from then on), and whatever a service's ``reload`` applies. Anything else that changed
  is logged as "needs a restart" and keeps its running value. A config that no longer
  validates is logged and ignored: the sidecar keeps running as it was.

Adding a service (for the outbox, local API, mDNS and admin engineers)
-----------------------------------------------------------------------
1. Write a module with a factory ``create(sidecar: Sidecar) -> Service``. The factory must not
   do IO; read your section from ``sidecar.config`` (e.g. ``sidecar.config.spool``), use
   ``sidecar.node`` (started before any service starts), and find services that started before
   yours in ``sidecar.services`` (by name).
2. Add one :class:`ServiceSpec` line to :data:`SERVICES`, in start order. Its module is imported
   only when ``wanted(config)`` is true, so a disabled service costs no import and no memory::

       ServiceSpec("outbox", "zmqagents.sidecar.outbox:create", lambda c: c.local_api.enabled),
       ServiceSpec("local_api", "zmqagents.sidecar.localapi:create", lambda c: c.local_api.enabled),
       ServiceSpec("mdns", "zmqagents.sidecar.mdns:create", mdns_wanted),
       ServiceSpec("admin", "zmqagents.sidecar.admin:create", lambda c: c.admin.enabled),

The Service protocol (:class:`Service`):

* ``async start()`` — bind sockets, start tasks. Raise on failure: the sidecar closes what
  started and exits 1 (raise :class:`~.config.ConfigError` for a bad setting: exit 2).
* ``async close(drain_timeout: float)`` — stop accepting, finish or persist in-flight work
  within ``drain_timeout`` seconds (the node is still running), release everything. Called once,
  also after a failed start of a later service.
* optional ``ready() -> bool`` — False while the service cannot do its job (``/readyz`` uses
  :meth:`Sidecar.ready`, which is the AND of all of them and "not stopping").
* optional ``async reload(config: SidecarConfig) -> Iterable[str]`` — apply what it can of the
  new config and return the dotted keys it applied (e.g. ``["mdns.service"]``); any other changed
  key is reported as needing a restart.
* optional attribute ``consumes_messages = True`` — the service reads ``node.messages()`` itself
  (the local API hands them to applications), so the ``node`` command stops printing them.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Protocol, runtime_checkable

from ..identity import (
    Contact,
    Identity,
    IdentityError,
    InsecureKeyFileWarning,
    format_node_id,
    format_public_key,
    load_allowlist,
)
from ..cli.exits import EXIT_FAILED, EXIT_OK
from ..node import Node, NodeConfig
from ..core.membership import MembershipConfig
from ..core.ratelimit import RateLimitConfig
from . import logs, memory, systemd
from .config import ConfigError, SidecarConfig, mdns_wanted
from .inbound import INBOUND_DIR, SpoolInbox
from .spool import SpoolConfig, SpoolError

log = logging.getLogger(__name__)

CLOSE_GRACE = 1.0  # s a service's close() may overrun its drain budget before it is abandoned


@runtime_checkable
class Service(Protocol):
    """What the daemon needs from an optional service (see the module docstring for the optional parts)."""

    async def start(self) -> None: ...

    async def close(self, drain_timeout: float) -> None: ...


@dataclass(frozen=True)
class ServiceSpec:
    """A service the daemon may start: ``target`` is "package.module:factory", imported only when
    ``wanted(config)`` is true."""

    name: str
    target: str
    wanted: Callable[[SidecarConfig], bool]

    def load(self) -> Callable[["Sidecar"], Service]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


# Start order; closed in reverse. One line per service: see "Adding a service" above.
SERVICES: list[ServiceSpec] = [
    # The outbox first: the local API hands it what clients send; closing in reverse, the local API
    # stops accepting before the outbox drains.
    ServiceSpec("outbox", "zmqagents.sidecar.outbox:create", lambda c: c.local_api.enabled),
    ServiceSpec("local_api", "zmqagents.sidecar.localapi:create", lambda c: c.local_api.enabled),
    ServiceSpec("mdns", "zmqagents.sidecar.mdns:create", mdns_wanted),  # [mdns] enabled; "auto": config.py
    ServiceSpec("admin", "zmqagents.sidecar.admin:create", lambda c: c.admin.enabled),
]


def load_identity(config: SidecarConfig) -> Identity:
    """The node key at ``[node] key``; created with mode 0600 (in a 0700 directory) if missing."""
    path = Path(config.node.key)
    origin = config.sources.get("node.key", "default")
    try:
        if not os.path.lexists(path):
            identity = Identity.generate()
            if not path.parent.exists():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            identity.save(path)
            log.warning("created a new node key %s (mode 0600): node id %s", path, format_node_id(identity.node_id))
            return identity
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InsecureKeyFileWarning)
            identity = Identity.load(path)
        for w in caught:
            log.warning("%s", w.message)
        return identity
    except IdentityError as exc:
        raise ConfigError(f"[node] key (from {origin}): {exc}") from None
    except OSError as exc:
        raise ConfigError(f"[node] key (from {origin}): cannot create {path.parent}: {exc.strerror}") from None


def describe_key(config: SidecarConfig) -> dict[str, Any]:
    """Public facts about the key file for ``config check``: path, exists, node_id, public_key.
    Never the secret. Raises ConfigError if the file exists but cannot be used."""
    path = config.node.key
    info: dict[str, Any] = {"path": path, "exists": os.path.lexists(path)}
    if info["exists"]:
        try:
            identity = Identity.load(path)
        except IdentityError as exc:
            raise ConfigError(f"[node] key (from {config.sources.get('node.key', 'default')}): {exc}") from None
        info.update(node_id=format_node_id(identity.node_id), public_key=format_public_key(identity.public_key))
    return info


def read_contacts(config: SidecarConfig, key: str) -> list[Contact]:
    """A contact list setting, with each @FILE read now (the file may be written by another node)."""
    out = []
    for text in config.get(key):
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{key} (from {config.sources[key]}): cannot read contact file "
                                  f"{text[1:]}: {exc.strerror}") from None
        try:
            out.append(Contact.parse(text))
        except IdentityError as exc:
            raise ConfigError(f"{key} (from {config.sources[key]}): {exc}") from None
    return out


def read_allowlist(config: SidecarConfig) -> frozenset[bytes] | None:
    """The allowed node ids, or None when ``[node] allowlist`` is empty (anyone may talk to us)."""
    if not config.node.allowlist:
        return None
    try:
        return load_allowlist(config.node.allowlist)
    except IdentityError as exc:
        raise ConfigError(f"node.allowlist (from {config.sources['node.allowlist']}): {exc}") from None


def read_fleet(config: SidecarConfig) -> "FleetConfig | None":
    """The fleet settings of ``join = "fleet"`` with the CA key, certificate and revocation list read now;
    None for another join policy. ConfigError names the key and the file."""
    node = config.node
    if node.join != "fleet":
        return None
    from ..certs import CertError, parse_ca, read_certificate, read_revocations
    from ..transport.fleet import FleetConfig

    try:
        ca = parse_ca(node.ca)
    except IdentityError as exc:
        raise ConfigError(f"node.ca (from {config.sources['node.ca']}): {exc}") from None
    try:
        cert = read_certificate(node.cert)
    except CertError as exc:
        raise ConfigError(f"node.cert (from {config.sources['node.cert']}): {exc}") from None
    revocations = None
    if node.revocations:
        try:
            revocations = read_revocations(node.revocations)
        except CertError as exc:
            raise ConfigError(f"node.revocations (from {config.sources['node.revocations']}): {exc}") from None
    return FleetConfig(cas=(ca,), certificate=cert, revocations=revocations)


class Sidecar:
    """A Node plus optional services, driven by a :class:`SidecarConfig`.

    ``loader`` re-reads the configuration on SIGHUP (the CLI passes the same file, conf.d,
    environment and flags it started with); without one, SIGHUP only re-reads the allowlist.
    Construction loads the key, the allowlist and the contacts, so a bad one fails before
    anything binds (ConfigError).
    """

    def __init__(self, config: SidecarConfig, *, loader: Callable[[], SidecarConfig] | None = None):
        self.config = config
        self._loader = loader
        self.identity = load_identity(config)
        node_config = NodeConfig(member=True, membership=MembershipConfig.profile(config.node.profile),
                                 outbound_only=config.node.outbound_only, relays=read_contacts(config, "node.relays"))
        node_config.transport.seal_relayed = config.node.seal
        limits = config.limits
        node_config.inbox_limit = int(limits.inbox_messages)
        node_config.inbox_bytes = limits.inbox_bytes
        node_config.inbox_share = limits.peer_share
        node_config.transport.recv_hwm = int(limits.link_read_ahead)
        node_config.transport.read_backlog_bytes = limits.read_backlog_bytes
        # A burst of one second's worth (the defaults' proportions); the bytes burst holds two of the
        # largest envelopes, or they could never pass.
        node_config.transport.rate_limit = RateLimitConfig(
            messages=limits.peer_messages_per_s, message_burst=limits.peer_messages_per_s,
            bytes=limits.peer_bytes_per_s,
            byte_burst=max(limits.peer_bytes_per_s, 2 * node_config.transport.max_message_size))
        node_config.fleet = read_fleet(config)
        # With a local API, received messages wait on disk until a client acknowledges them
        # (sidecar/inbound.py): nothing the node acknowledged to its sender is lost to a crash.
        self.inbox: SpoolInbox | None = None
        if config.local_api.enabled:
            window = node_config.delivery.dedup_window
            self.inbox = SpoolInbox(
                SpoolConfig(str(Path(config.spool.dir) / INBOUND_DIR), max_bytes=config.spool.inbound_max_bytes,
                            fsync=config.spool.fsync, keep_done=window),
                limit=int(limits.inbox_messages), share=limits.peer_share, node_id=self.identity.node_id,
                dedup_window=window)
        try:
            self.node = Node(
                self.identity,
                listen=config.node.listen,
                peers=read_contacts(config, "node.peers"),
                bootstrap=read_contacts(config, "node.bootstrap"),
                secure=config.node.secure,
                allowlist=read_allowlist(config),
                config=node_config,
                inbox=self.inbox,
            )
        except ValueError as exc:  # a combination the Node refuses; the config checks should catch it first
            raise ConfigError(f"[node]: {exc}") from None
        self.services: dict[str, Service] = {}
        self.stopping = False
        self.restart_needed: set[str] = set()  # keys changed by a reload that only a restart applies
        self._started = False
        self._closed = False
        self._reloading: asyncio.Task | None = None
        self._trimmer = memory.Trimmer()  # hands freed heap back to the OS after start and then periodically

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> "Sidecar":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the node, then each wanted service; on a failure, close what started and re-raise."""
        self._started = True
        started = time.monotonic()
        if self.inbox is not None:
            try:
                delivered = self.inbox.open()
            except SpoolError as exc:
                raise ConfigError(f"[spool] dir: {exc}") from None
            for src, ids in delivered.items():  # the dedup memory of the previous run
                self.node.delivery.remember_delivered(src, ids)
        await self.node.start()
        try:
            for spec in SERVICES:
                if not spec.wanted(self.config):
                    continue
                service = spec.load()(self)
                await service.start()
                self.services[spec.name] = service
                log.info("service %s started", spec.name)
        except BaseException:
            await self.close()
            raise
        self._write_contact()
        self._trimmer.start()
        log.info("node %s listening as %s (started in %.2f s; services: %s)", self.identity.short_id,
                 self.node.contact, time.monotonic() - started, ", ".join(self.services) or "none")

    def _write_contact(self) -> None:
        path = self.config.node.contact_file
        if not path:
            return
        tmp = Path(path + ".tmp")
        tmp.write_text(str(self.node.contact) + "\n")
        tmp.replace(path)

    def ready(self) -> bool:
        """Started, not stopping, and every service that can tell says it is ready."""
        if not self._started or self.stopping or self._closed:
            return False
        return all(getattr(s, "ready", lambda: True)() for s in self.services.values())

    @property
    def consumes_messages(self) -> bool:
        """Whether a service reads the node's direct messages (then nobody else should)."""
        return any(getattr(s, "consumes_messages", False) for s in self.services.values())

    async def close(self) -> None:
        """Close services in reverse start order within ``[node] drain_timeout`` in total, then the node
        (which announces the leave). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.stopping = True
        self._trimmer.stop()
        budget = self.config.node.drain_timeout
        deadline = time.monotonic() + budget
        for name, service in reversed(list(self.services.items())):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(service.close(remaining), remaining + CLOSE_GRACE)
            except asyncio.TimeoutError:
                log.warning("service %s did not close within %.1f s; abandoned", name, remaining + CLOSE_GRACE)
            except Exception:
                log.exception("service %s failed to close", name)
        await self.node.close()
        if self.inbox is not None:
            self.inbox.close()
        log.info("node %s stopped", self.identity.short_id)

    async def serve(self, app: Callable[["Sidecar"], Awaitable[Any]] | None = None) -> int:
        """Run until SIGTERM/SIGINT (or until ``app(self)`` returns); returns the exit status.

        ``app`` runs once the sidecar is ready (the CLI prints the contact and incoming messages).
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        seen: list[int] = []

        def on_stop(signum: int) -> None:
            name = signal.Signals(signum).name
            if seen:
                log.error("second signal (%s): exiting now with status %d, without draining", name, 128 + signum)
                logging.shutdown()
                os._exit(128 + signum)
            seen.append(signum)
            log.info("%s: stopping (drain budget %g s)", name, self.config.node.drain_timeout)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        app_task: asyncio.Task | None = None
        stopped = asyncio.ensure_future(stop.wait())
        status = EXIT_OK
        try:
            starting = asyncio.ensure_future(self.start())
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # stopped during the bootstrap join: do not wait for it
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            else:
                starting.result()  # a failed start raises here
            if not stop.is_set():
                systemd.notify(f"READY=1\nSTATUS=node {self.identity.short_id} at {self.node.contact.endpoint}")
                waiters = {stopped}
                if app is not None:
                    app_task = asyncio.ensure_future(app(self))
                    waiters.add(app_task)
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if app_task is not None and app_task.done() and not app_task.cancelled() and app_task.exception():
                log.error("the application task failed: %r", app_task.exception())
                status = EXIT_FAILED
        finally:
            stopped.cancel()
            systemd.notify("STOPPING=1")
            if app_task is not None and not app_task.done():
                app_task.cancel()
                await asyncio.gather(app_task, return_exceptions=True)
            await self.close()
            # Keep the stop handlers installed through close(): a second signal must still exit at once.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return status

    # -- reload ----------------------------------------------------------------------------------

    def _on_hup(self) -> None:
        if self.stopping:
            log.warning("SIGHUP while stopping: ignored")
            return
        if self._reloading is not None and not self._reloading.done():
            log.warning("SIGHUP: a reload is already running; ignored")
            return
        self._reloading = asyncio.ensure_future(self.reload())

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the configuration and apply what can change in place.

        Returns {"applied": [...], "restart": [...]} (dotted keys). A configuration that does not
        validate changes nothing and is reported in the log.
        """
        old = self.config
        log.debug("reload: re-reading %s", ", ".join(old.files) or "the environment and flags")
        try:
            new = self._loader() if self._loader is not None else old
        except ConfigError as exc:
            log.error("reload failed; still running the previous configuration: %s", exc)
            return {"applied": [], "restart": []}
        changed = old.changed(new)
        applied: list[str] = []
        if "log.format" in changed or "log.level" in changed:
            logs.configure(new.log.format, new.log.level)
            applied += [k for k in ("log.format", "log.level") if k in changed]
        applied += self._reload_allowlist(new, "node.allowlist" in changed)
        applied += self._reload_fleet(new, changed)
        for name, service in self.services.items():
            reload = getattr(service, "reload", None)
            if reload is None:
                continue
            try:
                applied += list(await reload(new))
            except Exception:
                log.exception("service %s failed to reload", name)
        restart = [k for k in changed if k not in applied]
        self.restart_needed.update(restart)
        # What runs now: the new values of the applied keys, the old values of the others.
        self.config = old.updated(new, applied)
        for key in applied:
            log.info("reload: %s = %r (from %s)", key, new.get(key), new.sources.get(key))
        for key in restart:
            log.warning("reload: %s changed to %r (from %s) but needs a restart; still %r",
                        key, new.get(key), new.sources.get(key), old.get(key))
        if not changed:
            log.info("reload: configuration unchanged")
        return {"applied": applied, "restart": restart}

    def _reload_fleet(self, new: SidecarConfig, changed: list[str]) -> list[str]:
        """Re-read the fleet's revocation list and certificate files (they may change under the same path)."""
        gate = self.node.transport.fleet
        if gate is None or new.node.join != "fleet":
            return []
        from ..certs import CertError

        try:
            fleet = read_fleet(new)
        except ConfigError as exc:
            log.error("reload: keeping the previous fleet certificate and revocation list: %s", exc)
            return []
        applied = []
        if fleet.revocations is not None:
            try:
                gone = self.node.revoke(fleet.revocations)
                log.info("reload: revocation list %d in force (%d peer(s) cut off)",
                         gate.admission.revocations.sequence(gate.admission.certificate.issuer), len(gone))
                applied.append("node.revocations")
            except CertError as exc:
                log.error("reload: revocation list %s refused: %s", new.node.revocations, exc)
        if fleet.certificate != gate.admission.certificate.encoded:
            previous = gate.admission.certificate.encoded
            gate.admission.replace_certificate(fleet.certificate)
            try:
                gate.admission.check_own(self.identity.public_key, time.time())
                log.info("reload: this node now shows certificate %s", new.node.cert)
            except CertError as exc:
                gate.admission.replace_certificate(previous)
                log.error("reload: keeping the previous certificate; %s cannot be used: %s", new.node.cert, exc)
        applied.append("node.cert")
        return [k for k in applied if k in changed]

    def _reload_allowlist(self, new: SidecarConfig, path_changed: bool) -> list[str]:
        """Re-read the allowlist (the file may have changed even if its path did not)."""
        try:
            allow = read_allowlist(new)
        except ConfigError as exc:
            log.error("reload: keeping the previous allowlist: %s", exc)
            return []
        before = self.node.transport.allow
        self.node.transport.allow = allow
        if before != allow:
            describe = lambda ids: "anyone" if ids is None else f"{len(ids)} node id(s)"  # noqa: E731
            log.info("reload: allowlist now admits %s (was %s)", describe(allow), describe(before))
        return ["node.allowlist"] if path_changed else []
