"""Sidecar configuration: one typed schema, four layers, errors that say where.

Layers, later ones win, key by key:

1. defaults (below; they work on a fresh machine and under systemd);
2. the TOML file (``zmqagents node --config FILE``, or ``$ZMQAGENTS_CONFIG``);
3. ``*.toml`` files in the conf.d directory (default: ``conf.d`` next to the file), merged in
   file-name order, so ``10-site.toml`` is overridden by ``50-host.toml``;
4. environment variables ``ZMQAGENTS_<SECTION>_<KEY>`` (e.g. ``ZMQAGENTS_NODE_LISTEN``,
   ``ZMQAGENTS_LOCAL_API_PATH``);
5. command-line flags (``--listen``, ``--set spool.fsync=always``, ...).

A later layer replaces a key's value whole (a list is replaced, not appended to).

Every value is checked when it is read, so an error names the key *and* where it came from::

    /etc/zmqagents/node.toml: [spool] fsync: must be one of always, batch, never (got 'sometimes')
    environment ZMQAGENTS_SPOOL_MAX_BYTES: [spool] max_bytes: must be a size such as 67108864 or "64MiB"

Values from the environment and from ``--set`` are text: booleans are true/false/1/0/yes/no/on/off,
lists are comma-separated, modes are octal (``0660``). Relative paths in a file are relative to
that file's directory; elsewhere to the working directory.

Sections and keys other engineers rely on: ``[node]`` key, listen, bootstrap, peers, allowlist,
join, ca, cert, revocations, secure, outbound_only, relays, seal, profile, contact_file, drain_timeout; ``[local_api]`` enabled, path,
mode; ``[spool]`` dir, max_bytes, fsync; ``[mdns]`` enabled, service; ``[admin]`` enabled, listen;
``[log]`` format, level. To add a key, add a ``setting(...)`` to its section's dataclass: parsing,
env vars, ``config check`` and the error messages follow from it.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from ..errors import Error

ENV_PREFIX = "ZMQAGENTS_"
ENV_CONFIG = "ZMQAGENTS_CONFIG"  # path of the config file when --config is not given
ENV_CONF_D = "ZMQAGENTS_CONF_D"  # conf.d directory when --conf-d is not given
DEFAULT_ORIGIN = "default"


class ConfigError(Error, ValueError):
    """The configuration cannot be used; the message names the key and the file, variable or flag."""


# -- where things live by default -------------------------------------------------------------------------


def _first_dir(variable: str, env: Mapping[str, str]) -> Path | None:
    """systemd's StateDirectory=/RuntimeDirectory= export colon-separated absolute paths."""
    value = env.get(variable, "").split(":")[0]
    return Path(value) if value.startswith("/") else None


def state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the key and the spool live: $STATE_DIRECTORY (systemd), /var/lib/zmqagents as root,
    else ~/.zmqagents."""
    found = _first_dir("STATE_DIRECTORY", env)
    if found:
        return found
    if os.geteuid() == 0:
        return Path("/var/lib/zmqagents")
    return Path(env.get("HOME") or Path.home()) / ".zmqagents"


def runtime_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the local API socket lives: $RUNTIME_DIRECTORY (systemd), /run/zmqagents as root,
    $XDG_RUNTIME_DIR/zmqagents for a user session, else ~/.zmqagents."""
    found = _first_dir("RUNTIME_DIRECTORY", env)
    if found:
        return found
    if os.geteuid() == 0:
        return Path("/run/zmqagents")
    xdg = _first_dir("XDG_RUNTIME_DIR", env)
    if xdg:
        return xdg / "zmqagents"
    return Path(env.get("HOME") or Path.home()) / ".zmqagents"


# -- value kinds: how a value is checked, from TOML and from text ----------------------------------------


class Kind:
    """How one setting's value is read. ``from_toml`` takes what tomllib produced, ``from_text`` a
    string from the environment or a flag; both raise ValueError with the reason."""

    def from_toml(self, value: Any) -> Any:
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        return self.from_toml(text)

    def show(self, value: Any) -> Any:
        """The value as ``config check`` prints it (JSON-compatible)."""
        return value


class Text(Kind):
    def __init__(self, allow_empty: bool = False):
        self.allow_empty = allow_empty

    def from_toml(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if not value and not self.allow_empty:
            raise ValueError("must not be empty")
        return value


class PathKind(Kind):
    """A file system path; "" means unset where ``optional``. Resolved by the loader (see module doc)."""

    def __init__(self, optional: bool = False):
        self.optional = optional

    def from_toml(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a path (a string)")
        if not value and not self.optional:
            raise ValueError("must not be empty")
        if "\0" in value:
            raise ValueError("must not contain a NUL byte")
        return value


class CaKey(PathKind):
    """A CA public key: its base32 text (kept as it is) or a file holding it (a path, resolved as paths are)."""

    def from_toml(self, value: Any) -> str:
        value = super().from_toml(value)
        if value and self.literal(value):
            from ..identity import IdentityError, parse_public_key

            try:
                parse_public_key(value)
            except IdentityError as exc:
                raise ValueError(str(exc)) from None
        return value

    @staticmethod
    def literal(value: str) -> bool:
        """52 characters of base32 and no path separator: a key, not a file name."""
        return len(value) == 52 and "/" not in value and value.isalnum()


class Bool(Kind):
    TRUE = {"1", "true", "yes", "on"}
    FALSE = {"0", "false", "no", "off"}

    def from_toml(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value

    def from_text(self, text: str) -> bool:
        word = text.strip().lower()
        if word in self.TRUE:
            return True
        if word in self.FALSE:
            return False
        raise ValueError("must be true or false (or 1/0, yes/no, on/off)")


class Switch(Bool):
    """true, false, or "auto": the service decides from the rest of the configuration (its doc says how)."""

    AUTO = "auto"

    def from_toml(self, value: Any) -> bool | str:
        if isinstance(value, str) and value.strip().lower() == self.AUTO:
            return self.AUTO
        if not isinstance(value, bool):
            raise ValueError('must be true, false or "auto"')
        return value

    def from_text(self, text: str) -> bool | str:
        if text.strip().lower() == self.AUTO:
            return self.AUTO
        try:
            return super().from_text(text)
        except ValueError:
            raise ValueError("must be true, false or auto (or 1/0, yes/no, on/off)") from None


class Number(Kind):
    def __init__(self, minimum: float = 0.0, maximum: float = float("inf")):
        self.minimum, self.maximum = minimum, maximum

    def from_toml(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be between {self.minimum:g} and {self.maximum:g}")
        return float(value)

    def from_text(self, text: str) -> float:
        try:
            return self.from_toml(float(text))
        except ValueError as exc:
            raise ValueError(str(exc) if "between" in str(exc) else "must be a number") from None


class Choice(Kind):
    def __init__(self, *options: str):
        self.options = options

    def from_toml(self, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in self.options:
            raise ValueError(f"must be one of {', '.join(self.options)}")
        return value.lower()


_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


class Size(Kind):
    """Bytes: an integer, or a string with a unit (kB/MB/GB = powers of 1000, KiB/MiB/GiB = of 1024)."""

    def __init__(self, minimum: int = 0):
        self.minimum = minimum

    def from_toml(self, value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError('must be a size such as 67108864 or "64MiB"')
        if isinstance(value, int):
            size = value
        elif isinstance(value, str) and (m := _SIZE.match(value)):
            size = int(m.group(1)) * _UNITS[m.group(2).lower() if m.group(2) else None]
        else:
            raise ValueError('must be a size such as 67108864 or "64MiB"')
        if size < self.minimum:
            raise ValueError(f"must be at least {self.minimum} bytes")
        return size


class Mode(Kind):
    """File permission bits: a TOML integer (write it in octal, ``0o660``) or an octal string ("0660")."""

    def from_toml(self, value: Any) -> int:
        if isinstance(value, str):
            text = value.strip().lower().removeprefix("0o")
            if not text or not all(c in "01234567" for c in text):
                raise ValueError('must be an octal mode such as 0o660 or "0660"')
            value = int(text, 8)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ValueError('must be an octal mode such as 0o660 or "0660"')
        if not 0 <= value <= 0o777:
            raise ValueError('must be a mode from 0o000 to 0o777 (in TOML write 0o660, not 660)')
        return value

    def show(self, value: int) -> str:
        return f"0o{value:03o}"


class Endpoint(Kind):
    """Where a ZeroMQ socket binds: tcp://HOST:PORT (port 0 = any free port) or ipc://PATH."""

    def from_toml(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be an endpoint string such as tcp://127.0.0.1:7100")
        if value.startswith("ipc://") and len(value) > len("ipc://"):
            return value
        if value.startswith("tcp://"):
            host, sep, port = value[len("tcp://"):].rpartition(":")
            if sep and host and port.isascii() and port.isdigit() and int(port) < 65536:
                return value
        raise ValueError("must be tcp://HOST:PORT (port 0 picks a free one) or ipc://PATH")


class HostPort(Kind):
    """HOST:PORT for an HTTP listener, e.g. 127.0.0.1:9464 or [::1]:9464."""

    def from_toml(self, value: Any) -> str:
        if isinstance(value, str):
            host, sep, port = value.rpartition(":")
            if sep and host and port.isascii() and port.isdigit() and int(port) < 65536:
                return value
        raise ValueError("must be HOST:PORT such as 127.0.0.1:9464")


class ContactList(Kind):
    """Contacts PUBLICKEY@ENDPOINT, or @FILE to read one from a file when the node starts."""

    def from_toml(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError('must be a list of contacts such as ["PUBLICKEY@tcp://10.0.0.2:7100"]')
        from ..identity import Contact, IdentityError

        for item in value:
            if item.startswith("@"):
                if len(item) == 1:
                    raise ValueError("@FILE needs a file name")
                continue
            try:
                Contact.parse(item)
            except IdentityError as exc:
                raise ValueError(str(exc)) from None
        return tuple(value)

    def from_text(self, text: str) -> tuple[str, ...]:
        return self.from_toml([part.strip() for part in text.split(",") if part.strip()])

    def show(self, value: tuple[str, ...]) -> list[str]:
        return list(value)


def setting(kind: Kind, default: Any = MISSING, *, factory: Callable[[], Any] | None = None, doc: str,
            reloadable: bool = False) -> Any:
    """One key of a section: its kind, default, one-line doc, and whether SIGHUP can change it
    without a restart (for service sections, the service's ``reload`` decides)."""
    meta = {"kind": kind, "doc": doc, "reloadable": reloadable}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# -- the schema --------------------------------------------------------------------------------------------


def _membership_profiles() -> tuple[str, ...]:
    from ..core.membership import PROFILES

    return tuple(PROFILES)


@dataclass(frozen=True)
class NodeSection:
    """The mesh node itself."""

    key: str = setting(PathKind(), factory=lambda: str(state_dir() / "node.key"),
                       doc="Node key file; created (mode 0600) on first start if missing")
    listen: str = setting(Endpoint(), "tcp://127.0.0.1:7100",
                          doc="Inbox endpoint peers connect to (use the LAN address to join other hosts)")
    bootstrap: tuple[str, ...] = setting(ContactList(), (), doc="Contacts of nodes in the mesh to join through")
    peers: tuple[str, ...] = setting(ContactList(), (), doc="Contacts of neighbours to connect to directly")
    allowlist: str = setting(PathKind(optional=True), "", reloadable=True,
                             doc="File of node ids/keys/contacts allowed to talk to this node (empty: anyone)")
    join: str = setting(Choice("open", "allowlist", "fleet"), "open",
                        doc="Who may talk to this node: open (anyone), allowlist (the allowlist file), or fleet "
                            "(certificates from [node] ca; protocols/certificates.md). An allowlist applies "
                            "whenever it is set")
    ca: str = setting(CaKey(optional=True), "", doc="join = fleet: the CA public key, or a file holding it (ca.pub)")
    cert: str = setting(PathKind(optional=True), "", reloadable=True,
                        doc="join = fleet: this node's certificate file from `zmqagents ca sign`")
    revocations: str = setting(PathKind(optional=True), "", reloadable=True,
                               doc="join = fleet: revocation list file from `zmqagents ca revoke` (re-read on SIGHUP)")
    secure: bool = setting(Bool(), True, doc="CURVE on every link; false only for debugging on a trusted host")
    outbound_only: bool = setting(Bool(), False, doc="Behind NAT: accept nothing inbound, be reached through relays")
    relays: tuple[str, ...] = setting(ContactList(), (), doc="Contacts of relays an outbound-only node connects to")
    seal: bool = setting(Bool(), False, doc="Encrypt end to end (NaCl Box) what goes through a relay")
    profile: str = setting(Choice(*_membership_profiles()), "lan",
                           doc="Membership timing profile: lan, wan or edge (protocols/membership.md)")
    contact_file: str = setting(PathKind(optional=True), "", doc="Write this node's contact here once it listens")
    drain_timeout: float = setting(Number(0, 3600), 5.0,
                                   doc="Seconds SIGTERM lets services (the outbox) drain before the node leaves")


def _default_socket() -> str:
    return str(runtime_dir() / "node.sock")


@dataclass(frozen=True)
class LocalApiSection:
    """The unix socket local applications talk to."""

    enabled: bool = setting(Bool(), True, doc="Serve local applications on a unix socket")
    path: str = setting(PathKind(), factory=_default_socket, doc="Unix socket path")
    mode: int = setting(Mode(), 0o660, doc="Socket file permissions: who may use the sidecar")


@dataclass(frozen=True)
class SpoolSection:
    """The durable outbox for messages accepted from local applications."""

    dir: str = setting(PathKind(), factory=lambda: str(state_dir() / "spool"), doc="Spool directory")
    max_bytes: int = setting(Size(minimum=4096), 64 * 2**20, doc="Spool size bound; beyond it sends are refused")
    fsync: str = setting(Choice("always", "batch", "never"), "batch",
                         doc="always: per message; batch: per write burst; never: leave it to the OS")
    inbound_max_bytes: int = setting(Size(minimum=4 * 2**20), 64 * 2**20,
                                     doc="Bound of the inbound spool (dir/inbound): received messages waiting "
                                         "for local clients; beyond it senders retry later")


@dataclass(frozen=True)
class MdnsSection:
    """LAN discovery with mDNS/DNS-SD."""

    enabled: bool | str = setting(Switch(), Switch.AUTO,
                                  doc="Announce this node and find others on the LAN; auto: unless [node] listen "
                                      "is a loopback address")
    service: str = setting(Text(), "_zmqagents._tcp.local.", doc="DNS-SD service type")


def mdns_wanted(config: "SidecarConfig") -> bool:
    """Whether the sidecar runs mDNS discovery: ``[mdns] enabled``, where "auto" (the default) means on
    unless the inbox listens on a loopback address.

    Why "auto" and not plain on: an inbox on loopback can only be announced on loopback (a peer on
    another host would dial its own 127.0.0.1), and Linux's loopback carries no multicast unless an
    administrator turns it on, so there discovery finds nobody while zeroconf still costs about
    3 MB of resident memory (python bench/footprint.py --sidecar). The default inbox is on
    loopback; the setting that lets other hosts in at all (``[node] listen`` on a LAN address or
    0.0.0.0) is the one that turns discovery on. ``true`` forces it on (several sidecars on one host
    with a multicast loopback), ``false`` off."""
    enabled = config.mdns.enabled
    if enabled == Switch.AUTO:
        return not is_loopback_endpoint(config.node.listen)
    return bool(enabled)


def is_loopback_endpoint(endpoint: str) -> bool:
    """A tcp:// endpoint on a loopback address (127.0.0.0/8, localhost, ::1): reachable from this host only."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    return host.startswith("127.") or host in ("localhost", "::1")


@dataclass(frozen=True)
class AdminSection:
    """Prometheus metrics, /livez and /readyz over HTTP."""

    enabled: bool = setting(Bool(), False, doc="Serve metrics and health checks")
    listen: str = setting(HostPort(), "127.0.0.1:9464", doc="HOST:PORT of the admin HTTP server")


@dataclass(frozen=True)
class LimitsSection:
    """What one peer, or all of them, may make this node hold and process (protocols/node.md, "Limits")."""

    inbox_messages: float = setting(Number(1, 10_000_000), 10_000,
                                    doc="Received messages waiting for local clients; beyond it senders retry later")
    inbox_bytes: int = setting(Size(minimum=65536), 4 * 2**20,
                               doc="Memory those messages may hold (decoded, as Envelope.cost counts it)")
    peer_share: float = setting(Number(0.01, 1), 0.5,
                                doc="Fraction of the inbox bounds one peer may hold, so others keep room")
    peer_messages_per_s: float = setting(Number(1, 10_000_000), 50_000,  # core/ratelimit.py says why
                                         doc="Messages a second accepted from one peer; more are dropped unacked "
                                             "(retransmitted later)")
    link_read_ahead: float = setting(Number(1, 1_000_000), 16,  # transport.config.RECV_HWM, which says why
                                     doc="Messages ZeroMQ reads ahead on one connection before it leaves the rest "
                                         "in TCP (each may hold up to the size limit)")
    read_backlog_bytes: int = setting(Size(minimum=65536), 2 * 2**20,  # transport/backlog.py says why
                                      doc="Frames read off the inbox and waiting to be decoded; one peer may hold "
                                          "half, small frames a quarter more; beyond it senders retry later")
    peer_bytes_per_s: int = setting(Size(minimum=65536), 8 * 2**20,
                                    doc="Bytes a second accepted from one peer (decoded size: many small values "
                                        "count for what they cost)")


@dataclass(frozen=True)
class LogSection:
    """Log lines on stderr."""

    format: str = setting(Choice("text", "json"), "text", reloadable=True,
                          doc="text, or json: one object per line with ts, level, logger, msg")
    level: str = setting(Choice("debug", "info", "warning", "error"), "info", reloadable=True, doc="Least severe level logged")


SECTIONS: dict[str, type] = {
    "node": NodeSection,
    "local_api": LocalApiSection,
    "spool": SpoolSection,
    "mdns": MdnsSection,
    "admin": AdminSection,
    "limits": LimitsSection,
    "log": LogSection,
}


@dataclass(frozen=True)
class SidecarConfig:
    """The effective configuration. ``sources["spool.fsync"]`` says where each value came from
    ("default", a file path, "environment ZMQAGENTS_...", "flag --...")."""

    node: NodeSection = field(default_factory=NodeSection)
    local_api: LocalApiSection = field(default_factory=LocalApiSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    mdns: MdnsSection = field(default_factory=MdnsSection)
    admin: AdminSection = field(default_factory=AdminSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    log: LogSection = field(default_factory=LogSection)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    files: tuple[str, ...] = field(default=(), compare=False)  # config files read, in order

    def get(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return getattr(getattr(self, section), key)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every key's effective value, JSON-compatible, section by section."""
        out: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: f.metadata["kind"].show(getattr(section, f.name)) for f in fields(section)}
        return out

    def updated(self, other: "SidecarConfig", dotted: Iterable[str]) -> "SidecarConfig":
        """A copy with the given keys (and their sources) taken from ``other``."""
        sections: dict[str, dict[str, Any]] = {}
        sources = dict(self.sources)
        for key in dotted:
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = other.get(key)
            sources[key] = other.sources.get(key, DEFAULT_ORIGIN)
        changes = {section: replace(getattr(self, section), **values) for section, values in sections.items()}
        return replace(self, **changes, sources=sources)

    def changed(self, other: "SidecarConfig") -> list[str]:
        """Dotted keys whose value differs in ``other``."""
        return [key for key in keys() if self.get(key) != other.get(key)]


def keys() -> list[str]:
    """Every dotted key of the schema, in schema order."""
    return [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)]


def describe(dotted: str) -> tuple[Kind, str, bool]:
    """(kind, doc, reloadable) of a dotted key."""
    section, key = dotted.split(".", 1)
    f = next(f for f in fields(SECTIONS[section]) if f.name == key)
    return f.metadata["kind"], f.metadata["doc"], f.metadata["reloadable"]


def env_name(dotted: str) -> str:
    """The environment variable of a dotted key: node.listen -> ZMQAGENTS_NODE_LISTEN."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


# -- loading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """A value given outside any file: ``value`` is text (parsed by the key's kind) or already
    a TOML-like value (a list for repeated flags, a bool for switches). ``origin`` names it in errors."""

    key: str
    value: Any
    origin: str


def _suggest(word: str, options: Iterable[str]) -> str:
    import difflib  # only on the error path: not worth its memory in a healthy sidecar

    options = list(options)
    close = difflib.get_close_matches(word, options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (known: {', '.join(options)}){hint}"


def _check(dotted: str, value: Any, origin: str, *, text: bool) -> Any:
    kind = describe(dotted)[0]
    try:
        return kind.from_text(value) if text else kind.from_toml(value)
    except ValueError as exc:
        section, key = dotted.split(".", 1)
        raise ConfigError(f"{origin}: [{section}] {key}: {exc} (got {value!r})") from None


def _resolve_path(dotted: str, value: Any, base: Path | None) -> Any:
    """Paths are expanded (~) and, from a file, made relative to the file's directory."""
    kind = describe(dotted)[0]
    if isinstance(kind, PathKind) and value and not (isinstance(kind, CaKey) and kind.literal(value)):
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return str(path)
    return value


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """One TOML file, checked: {dotted key: value}. Raises ConfigError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    origin = str(path)
    base = path.parent.resolve()
    values: dict[str, Any] = {}
    for section, table in doc.items():
        if section not in SECTIONS:
            if not isinstance(table, dict):
                raise ConfigError(f"{origin}: key {section!r} must be inside a section such as [node]")
            raise ConfigError(f"{origin}: unknown section [{section}]{_suggest(section, SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: {section} must be a section ([{section}]), not a value")
        known = [f.name for f in fields(SECTIONS[section])]
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"{origin}: unknown key {key!r} in [{section}]{_suggest(key, known)}")
            dotted = f"{section}.{key}"
            values[dotted] = _resolve_path(dotted, _check(dotted, value, origin, text=False), base)
    return values


def conf_d_files(directory: str | os.PathLike) -> list[Path]:
    """The ``*.toml`` files of a conf.d directory in name order (a missing directory has none)."""
    directory = Path(directory)
    try:
        names = sorted(entry.name for entry in os.scandir(directory) if entry.name.endswith(".toml"))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError(f"conf.d {directory} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read conf.d directory {directory}: {exc.strerror}") from None
    return [directory / name for name in names]


def read_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """``ZMQAGENTS_<SECTION>_<KEY>`` variables: {dotted key: (value, origin)}.

    A variable naming a known section but an unknown key is an error (a typo would otherwise be
    ignored); other ``ZMQAGENTS_*`` variables (ZMQAGENTS_CONFIG, ZMQAGENTS_FROM, ...) are not config.
    """
    by_name = {env_name(k): k for k in keys()}
    prefixes = sorted((ENV_PREFIX + s.upper() + "_" for s in SECTIONS), key=len, reverse=True)
    out: dict[str, tuple[Any, str]] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        origin = f"environment {name}"
        if name in by_name:
            dotted = by_name[name]
            out[dotted] = (_resolve_path(dotted, _check(dotted, env[name], origin, text=True), None), origin)
            continue
        for prefix in prefixes:
            if name.startswith(prefix):
                section = prefix[len(ENV_PREFIX):-1].lower()
                known = [env_name(f"{section}.{f.name}") for f in fields(SECTIONS[section])]
                raise ConfigError(f"{origin}: unknown key in [{section}]{_suggest(name, known)}")
    return out


def parse_set(text: str, origin: str = "flag --set") -> Override:
    """``--set SECTION.KEY=VALUE`` as an Override (the value is text, as in the environment)."""
    dotted, sep, value = text.partition("=")
    dotted = dotted.strip()
    if not sep or "." not in dotted:
        raise ConfigError(f"{origin} {text!r}: expected SECTION.KEY=VALUE, e.g. spool.fsync=always")
    section, key = dotted.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"{origin} {text!r}: unknown section [{section}]{_suggest(section, SECTIONS)}")
    known = [f.name for f in fields(SECTIONS[section])]
    if key not in known:
        raise ConfigError(f"{origin} {text!r}: unknown key {key!r} in [{section}]{_suggest(key, known)}")
    return Override(dotted, value, f"{origin} {dotted}")


def load(
    path: str | os.PathLike | None = None,
    *,
    conf_d: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Iterable[Override] = (),
) -> SidecarConfig:
    """Build the effective configuration from defaults < file < conf.d < env < overrides (flags).

    ``conf_d`` defaults to the ``conf.d`` directory next to ``path``. ``env`` (default
    ``os.environ``) supplies the ``ZMQAGENTS_*`` layer; the default *paths* always follow the
    process environment ($STATE_DIRECTORY, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, $HOME).
    Raises ConfigError naming the offending key and its origin.
    """
    env = os.environ if env is None else env
    layers: list[tuple[dict[str, Any], str | None]] = []  # (values, origin or None = per file)
    files: list[str] = []
    if path is not None:
        path = Path(path)
        layers.append((read_file(path), str(path)))
        files.append(str(path))
        if conf_d is None:
            conf_d = path.parent / "conf.d"
    if conf_d is not None:
        for extra in conf_d_files(conf_d):
            layers.append((read_file(extra), str(extra)))
            files.append(str(extra))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer, origin in layers:
        for dotted, value in layer.items():
            values[dotted] = value
            sources[dotted] = origin
    for dotted, (value, origin) in read_env(env).items():
        values[dotted] = value
        sources[dotted] = origin
    for item in overrides:
        if item.value is None:
            continue
        raw = list(item.value) if isinstance(item.value, tuple) else item.value
        value = _check(item.key, raw, item.origin, text=isinstance(raw, str))
        values[item.key] = _resolve_path(item.key, value, None)
        sources[item.key] = item.origin
    sections = {}
    for name, cls in SECTIONS.items():
        given = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(name + ".")}
        sections[name] = cls(**given)
    full = {k: sources.get(k, DEFAULT_ORIGIN) for k in keys()}
    config = SidecarConfig(**sections, sources=full, files=tuple(files))
    _cross_check(config)
    return config


def _cross_check(config: SidecarConfig) -> None:
    """Rules that involve more than one key; the error names each key's origin."""
    def where(key: str) -> str:
        return f"{key} (from {config.sources[key]})"

    if config.node.outbound_only and not config.node.relays:
        raise ConfigError(f"{where('node.outbound_only')} is true but {where('node.relays')} is empty: "
                          "an outbound-only node needs at least one relay to be reachable")
    if config.node.relays and not config.node.outbound_only:
        raise ConfigError(f"{where('node.relays')} is set but {where('node.outbound_only')} is false: "
                          "relays are for outbound-only nodes")
    node = config.node
    if node.join == "fleet" and not (node.ca and node.cert):
        raise ConfigError(f"{where('node.join')} is fleet but {where('node.ca' if not node.ca else 'node.cert')} "
                          "is empty: a fleet node needs the CA public key (ca) and its certificate (cert); "
                          "see `zmqagents ca --help`")
    if node.join != "fleet" and (node.ca or node.cert or node.revocations):
        key = "node.ca" if node.ca else "node.cert" if node.cert else "node.revocations"
        raise ConfigError(f"{where(key)} is set but {where('node.join')} is {node.join}: set join = \"fleet\" "
                          "to admit nodes by certificate")
    if node.join == "allowlist" and not node.allowlist:
        raise ConfigError(f"{where('node.join')} is allowlist but {where('node.allowlist')} is empty")
    if config.local_api.enabled and config.local_api.path == config.node.key:
        raise ConfigError(f"{where('local_api.path')} is the same file as {where('node.key')}")



def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def to_toml(config: SidecarConfig) -> str:
    """The effective configuration as TOML, each key commented with its origin (``config check``);
    the output is itself a valid config file."""
    lines = []
    for name in SECTIONS:
        lines.append(f"[{name}]")
        section = getattr(config, name)
        for f in fields(section):
            value = getattr(section, f.name)
            text = f"0o{value:03o}" if isinstance(f.metadata["kind"], Mode) else _toml_value(value)
            lines.append(f"{f.name} = {text}  # {config.sources.get(f'{name}.{f.name}', DEFAULT_ORIGIN)}")
        lines.append("")
    return "\n".join(lines)
