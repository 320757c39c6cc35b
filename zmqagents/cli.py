"""``zmqagents``: run nodes and talk to them from a shell.

Every command that reads stdin takes one JSON value per line and writes one
JSON object per line to stdout; diagnostics go to stderr. Commands never prompt.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import click

from .identity import Contact, Identity, IdentityError, InsecureKeyFileWarning, format_node_id, format_public_key

EXIT_OK = 0
EXIT_FAILED = 1  # a request/line failed, a peer was unreachable, or another runtime error
EXIT_USAGE = 2  # bad flags or arguments (click's convention)
EXIT_TIMEOUT = 124  # a deadline passed (the coreutils `timeout` convention)

EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    something failed (a request, a line of input, a peer)
  2    usage error (bad flags, arguments, key or contact)
  3    not found (dht get, find)
  124  timed out
  130  node: a second SIGINT while stopping (143: a second SIGTERM)
"""

log = logging.getLogger("zmqagents")


class Failure(click.ClickException):
    """A runtime error: message on stderr, exit status 1 (or the given code)."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = code


def _jsonable(value: Any) -> Any:
    """msgpack values as JSON: text bytes become strings, other bytes {"base64": ...}."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _parse_body(text: str) -> Any:
    """A body argument: JSON if it parses, otherwise the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _load_identity(key: str | None) -> Identity:
    if key is None:
        return Identity.generate()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InsecureKeyFileWarning)
            identity = Identity.load(key)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        return identity
    except IdentityError as exc:
        raise click.UsageError(str(exc)) from None


def _contacts(texts: Iterable[str], hint: str = "--to/--peer") -> list[Contact]:
    out = []
    for text in texts:
        if text.startswith("@"):  # @FILE: a contact written by `zmqagents node --contact-file`
            try:
                text = Path(text[1:]).read_text().strip()
            except OSError as exc:
                raise click.UsageError(f"cannot read contact file {text[1:]}: {exc.strerror}") from None
        try:
            out.append(Contact.parse(text))
        except IdentityError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    return out


def _make_node(key: str | None, listen: str, peers: list[Contact], insecure: bool, allowlist: str | None = None,
               bootstrap: list[Contact] = (), *, member: bool = False, config=None, seal: bool = False):
    """A node for one command. Only long-running commands (node, reply, subscribe) are mesh members;
    the others are clients that peers keep out of their routing tables."""
    from .node import Node, NodeConfig

    allow = _read_allowlist(allowlist) if allowlist else None
    from .fleet_commands import fleet_config

    config = config or NodeConfig()
    config.fleet = config.fleet or fleet_config()
    config.member = member
    config.transport.seal_relayed = seal
    try:
        return Node(_load_identity(key), listen=listen, peers=peers, bootstrap=bootstrap, secure=not insecure,
                    allowlist=allow, config=config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


_SEAL_HELP = ("Encrypt end to end (NaCl Box) whatever goes through a relay, so the relay cannot read it "
              "(it is always signed, so a relay can never alter it).")


def _read_allowlist(path: str) -> frozenset[bytes]:
    """One node id (hex), public key (base32) or contact per line; '#' starts a comment."""
    from .identity import load_allowlist

    try:
        return load_allowlist(path)
    except IdentityError as exc:
        raise click.UsageError(str(exc)) from None


def _run(coro) -> int:
    """Run a command's coroutine; SIGINT/SIGTERM cancel it cleanly (exit 0 for servers)."""
    from .node import run

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await coro
        except asyncio.CancelledError:
            return EXIT_OK

    return run(main())


def _common_node_options(f):
    f = click.option("--insecure", is_flag=True, help="Plaintext links (no CURVE). Only for debugging on a trusted host.")(f)
    f = click.option("--listen", default="tcp://127.0.0.1:0", show_default=True, help="Inbox endpoint (port 0 = any free port).")(f)
    f = click.option("--key", type=click.Path(dir_okay=False), help="Key file from `zmqagents keygen` (default: a throwaway identity).")(f)
    from .fleet_commands import fleet_options  # --ca/--cert/--revocations: join a fleet (zmqagents ca)

    return fleet_options(f)


def _mesh_member_options(f):
    """The options of a node that stays in the mesh (``node``, ``relay``): whom to reach and whom to accept."""
    f = click.option("--allowlist", type=click.Path(dir_okay=False), help="Only accept nodes listed in this file (ids, keys or contacts).")(f)
    f = click.option("--contact-file", type=click.Path(dir_okay=False), help="Also write this node's contact to a file.")(f)
    f = click.option("--bootstrap", multiple=True, help="Contact of a node already in the mesh to join through (repeatable).")(f)
    f = click.option("--peer", "peers", multiple=True, help="Contact of a neighbour to connect to directly (repeatable).")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EXIT_CODES_HELP)
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.version_option(package_name="zmqagents")
def cli(verbose: int) -> None:
    """A brokerless message bus for AI agents.

    Nodes talk over CURVE-encrypted ZeroMQ; each node's identity is one
    Ed25519 key. A node is reached by its contact, PUBLICKEY@ENDPOINT, which
    `zmqagents node` prints when it starts. Wherever a contact is expected you
    may pass @FILE to read it from a file written with --contact-file.

    \b
    Try it:
      zmqagents reply --exec 'tr a-z A-Z' --contact-file /tmp/w.contact &
      echo '"hello"' | zmqagents request --to @/tmp/w.contact
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing key file (the old identity is lost).")
def keygen(path: str, force: bool) -> None:
    """Create a node key file at PATH (mode 0600) and print the node id and public key."""
    from .identity import KeyFileError

    identity = Identity.generate()
    try:
        identity.save(path, force=force)
    except KeyFileError as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc.strerror}") from None
    _emit({"path": path, "node_id": format_node_id(identity.node_id), "public_key": format_public_key(identity.public_key)})


@cli.command()
@_common_node_options
@_mesh_member_options
@click.option("--echo", is_flag=True, help="Answer every request with its own body (handy for testing).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="ZMQAGENTS_CONFIG",
              help="Run as a sidecar configured by this TOML file (env: ZMQAGENTS_CONFIG).")
@click.option("--conf-d", type=click.Path(file_okay=False), envvar="ZMQAGENTS_CONF_D",
              help="Directory of *.toml files merged over --config in name order (default: conf.d next to it).")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config key, e.g. --set spool.fsync=always (repeatable; sidecar only).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log lines on stderr as text or one JSON object each.")
@click.option("--mdns/--no-mdns", default=None,
              help="Announce this node and find others on the LAN with mDNS (sidecar mode; on unless [mdns] enabled = false).")
@click.pass_context
@click.option("--outbound-only", is_flag=True,
              help="This node cannot accept connections (NAT, firewall): others reach it through its --relay nodes.")
@click.option("--relay", "relays", multiple=True, metavar="CONTACT",
              help="Contact of a relay (`zmqagents relay`) to register with; repeat for failover, preferred first.")
@click.option("--seal", is_flag=True, help=_SEAL_HELP)
def node(ctx, key, listen, insecure, peers, bootstrap, contact_file, allowlist, echo, config_file, conf_d, settings,
         log_format, outbound_only, relays, seal, mdns) -> None:
    """Run a node until SIGINT/SIGTERM.

    With --bootstrap it joins the mesh (Kademlia lookup of its own id, then of
    far buckets). Prints {"contact": ...} first, then every direct message and
    request it receives as one JSON line.

    \b
    Behind NAT, connect out to relays and be reached through them:
      zmqagents node --outbound-only --relay @relay1.contact --relay @relay2.contact
    The printed contact then reads PUBLICKEY@relay://RELAY1,RELAY2; pass it to
    others like any contact.

    \b
    With --config FILE it runs as a sidecar: settings come from FILE, then
    conf.d/*.toml, then ZMQAGENTS_<SECTION>_<KEY> variables, then flags (flags
    win). `zmqagents config check FILE` shows the result. The key file is
    created on first start. Signals: SIGTERM/SIGINT drain, announce the leave
    and exit 0; a second one exits at once with 128+signal (143/130); SIGHUP
    reloads the log settings and the allowlist (and logs what needs a restart).

    \b
    As a sidecar it finds nodes on the same LAN by mDNS, trusting each only
    after a CURVE-authenticated hello (--no-mdns or [mdns] enabled = false to
    turn off; a loopback --listen is announced on loopback only). With
    [admin] enabled = true (or --set admin.enabled=true) it serves /metrics,
    /livez and /readyz on http://127.0.0.1:9464 ([admin] listen).
    """
    verbose = ctx.find_root().params.get("verbose", 0)
    if config_file is None and conf_d is None and not settings and mdns is None:
        if bool(outbound_only) != bool(relays):
            raise click.UsageError("--outbound-only and --relay go together: name at least one --relay CONTACT")
        if log_format is not None:
            from .sidecar import logs

            logs.configure(log_format, logging.getLogger().level)
        _run_plain_node(key, listen, insecure, peers, bootstrap, contact_file, allowlist, echo,
                        outbound_only=outbound_only, relays=relays, seal=seal)
        return
    overrides = _sidecar_overrides(ctx, key=key, listen=listen, insecure=insecure, peers=peers, bootstrap=bootstrap,
                                   contact_file=contact_file, allowlist=allowlist, log_format=log_format,
                                   verbose=verbose, settings=settings, outbound_only=outbound_only, relays=relays,
                                   seal=seal, mdns=mdns)
    sys.exit(_run_sidecar(config_file, conf_d, overrides, echo))


def _request_handler(echo: bool):
    """What ``zmqagents node`` answers a request with: its own body (--echo), or {"ok": true} after
    printing the request as one JSON line on stdout."""
    if echo:
        return lambda body, msg: body

    def show(body, msg):
        _emit({"type": msg.type, "from": msg.sender, "body": body})
        return {"ok": True}
    return show


def _sidecar_overrides(ctx, *, key, listen, insecure, peers, bootstrap, contact_file, allowlist, log_format, verbose,
                       settings, outbound_only=False, relays=(), seal=False, mdns=None) -> list:
    """The flags given on the command line as config overrides (flags that were not given do not override)."""
    from click.core import ParameterSource
    from .sidecar.config import ConfigError, Override, parse_set

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    overrides = []
    try:
        overrides += [parse_set(text) for text in settings]
    except ConfigError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    flags = [("node.key", key, "--key"), ("node.listen", listen if given("listen") else None, "--listen"),
             ("node.secure", False if insecure else None, "--insecure"),
             ("node.peers", list(peers) or None, "--peer"), ("node.bootstrap", list(bootstrap) or None, "--bootstrap"),
             ("node.contact_file", contact_file, "--contact-file"), ("node.allowlist", allowlist, "--allowlist"),
             ("node.outbound_only", True if outbound_only else None, "--outbound-only"),
             ("node.relays", list(relays) or None, "--relay"), ("node.seal", True if seal else None, "--seal"),
             ("log.format", log_format, "--log-format"),
             ("mdns.enabled", mdns, "--mdns" if mdns else "--no-mdns"),
             ("log.level", {0: None, 1: "info"}.get(verbose, "debug"), "-v")]
    overrides += [Override(dotted, value, f"flag {flag}") for dotted, value, flag in flags if value is not None]
    from .fleet_commands import fleet_overrides

    return overrides + fleet_overrides(ctx)


def _run_sidecar(config_file: str | None, conf_d: str | None, overrides: list, echo: bool) -> int:
    from .node import run
    from .sidecar import logs
    from .sidecar.config import ConfigError, load
    from .sidecar.daemon import EXIT_CONFIG, Sidecar

    def loader():
        return load(config_file, conf_d=conf_d, overrides=overrides)

    try:
        config = loader()
        logs.configure(config.log.format, config.log.level)
        sidecar = Sidecar(config, loader=loader)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_CONFIG
    sidecar.node.on_request(_request_handler(echo))

    async def app(sc) -> None:
        admin = sc.services.get("admin")
        _announce(sc.node, None, admin=admin.address if admin is not None else None)
        if sc.consumes_messages:
            await asyncio.Event().wait()
        async for msg in sc.node.messages():
            _emit({"type": msg.type, "from": msg.sender, "body": msg.body})

    async def main() -> int:
        # Logging is configured by now: errors go through it, so a JSON log stays one object per line.
        try:
            return await sidecar.serve(app)
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        except Exception as exc:  # e.g. the listen address is taken: one clear line, details at debug level
            log.debug("sidecar failed", exc_info=True)
            log.error("the sidecar failed: %s", exc)
            return EXIT_FAILED

    return run(main())


def _run_plain_node(key, listen, insecure, peers, bootstrap, contact_file, allowlist, echo, *,
                    outbound_only: bool = False, relays=(), seal: bool = False) -> None:
    from .node import NodeConfig

    config = NodeConfig(outbound_only=outbound_only, relays=_contacts(relays, hint="--relay"))
    n = _make_node(key, listen, _contacts(peers), insecure, allowlist, _contacts(bootstrap), member=True,
                   config=config, seal=seal)

    async def main() -> int:
        async with n:
            n.on_request(_request_handler(echo))
            _announce(n, contact_file)
            async for msg in n.messages():
                _emit({"type": msg.type, "from": msg.sender, "body": msg.body})
        return EXIT_OK

    sys.exit(_run(main()))


@cli.command()
@_common_node_options
@_mesh_member_options
@click.option("--max-clients", default=1024, show_default=True, type=click.IntRange(1), help="Registered outbound-only nodes at most; more are refused.")
@click.option("--client-rate", default=2000.0, show_default=True, type=click.FloatRange(min=0.001), help="Forwards per second per sender (burst: twice as many).")
@click.option("--total-rate", default=20000.0, show_default=True, type=click.FloatRange(min=0.001), help="Forwards per second over all senders (burst: twice as many).")
@click.option("--expire", default=10.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds of silence after which a client's registration is dropped.")
def relay(key, listen, insecure, peers, bootstrap, contact_file, allowlist, max_clients, client_rate, total_rate, expire) -> None:
    """Run a node that relays for outbound-only nodes, until SIGINT/SIGTERM.

    Outbound-only nodes (`zmqagents node --outbound-only --relay CONTACT`)
    connect here and register; anyone may then send to them through this
    relay, and they send back through it. What passes through is signed by its
    sender (and sealed if the sender used --seal), so the relay can neither
    alter nor forge it. Forwards over the rate limits and to unknown nodes are
    refused and counted. Listen on an address the clients can reach, e.g.
    --listen tcp://0.0.0.0:7000 (the printed contact must be reachable, so
    prefer the real address). Prints {"contact": ...} first and
    {"relay_stats": ...} when it stops.
    """
    from .core.relay import RelayConfig
    from .node import NodeConfig

    config = NodeConfig(serve_relay=True, relay=RelayConfig(
        max_clients=max_clients, client_rate=client_rate, client_burst=2 * client_rate, total_rate=total_rate,
        total_burst=2 * total_rate, expire=expire))
    n = _make_node(key, listen, _contacts(peers), insecure, allowlist, _contacts(bootstrap), member=True, config=config)

    async def main() -> int:
        async with n:
            _announce(n, contact_file)
            try:
                await asyncio.Event().wait()
            finally:
                _emit({"relay_stats": n.relay_server.stats, "clients": len(n.relay_server)})
        return EXIT_OK

    sys.exit(_run(main()))


def _announce(n, contact_file: str | None, *, admin: str | None = None) -> None:
    contact = str(n.contact)
    if contact_file:
        tmp = Path(contact_file + ".tmp")
        tmp.write_text(contact + "\n")
        tmp.replace(contact_file)
    line = {"contact": contact, "node_id": format_node_id(n.node_id), "pub": n.transport.pub_endpoint}
    if admin:
        line["admin"] = admin  # HOST:PORT of /metrics, /livez, /readyz (useful with port 0)
    _emit(line)


@cli.command()
@_common_node_options
@click.option("--exec", "command", required=True, help="Shell command run per request: body on stdin, stdout is the reply.")
@click.option("--peer", "peers", multiple=True, help="Contact of a node to connect to (repeatable).")
@click.option("--contact-file", type=click.Path(dir_okay=False), help="Also write this node's contact to a file.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds a command may run before its process group is killed.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 1024), help="Commands run at once.")
def reply(key, listen, insecure, command, peers, contact_file, timeout, concurrency) -> None:
    """Serve requests by running a shell command.

    \b
    The request body goes to the command's stdin: a string as it is, anything
    else as one JSON line. Its stdout is the reply (parsed as JSON when it is
    JSON, else text). A non-zero exit becomes an error reply carrying the tail
    of stderr. The command sees ZMQAGENTS_FROM (the caller's node id).
    """
    from .agents.shell import decode_output, encode_input, run_command

    n = _make_node(key, listen, _contacts(peers), insecure, member=True)
    n.config.max_handlers = concurrency

    async def handle(body, msg):
        result = await run_command(command, encode_input(body), timeout=timeout, env={"ZMQAGENTS_FROM": format_node_id(msg.src)})
        return decode_output(result.stdout)

    async def main() -> int:
        async with n:
            n.on_request(handle)
            _announce(n, contact_file)
            await asyncio.Event().wait()
        return EXIT_OK

    sys.exit(_run(main()))


def _targets(to: tuple[str, ...]) -> list[Contact]:
    if not to:
        raise click.UsageError("name at least one peer with --to CONTACT (or --to @FILE)")
    return _contacts(to)


async def _read_lines():
    """Yield stdin lines without blocking the event loop."""
    loop = asyncio.get_running_loop()
    reader = sys.stdin.buffer
    while True:
        line = await loop.run_in_executor(None, reader.readline)
        if not line:
            return
        yield line


def _sidecar_options(f):
    f = click.option("--direct", is_flag=True,
                     help="Never use a running sidecar: always start a temporary node.")(f)
    f = click.option("--socket", "socket_path", type=click.Path(dir_okay=False), envvar="ZMQAGENTS_LOCAL_API_PATH",
                     help="Local API socket of a running sidecar (default: the sidecar's default path, used "
                          "when a sidecar listens there; env: ZMQAGENTS_LOCAL_API_PATH).")(f)
    return f


def _sidecar_socket(ctx: click.Context, socket_path: str | None, direct: bool) -> Path | None:
    """The local API socket this command should use, or None to start a temporary node.

    An explicit --socket must have a sidecar behind it. Otherwise the default path is used when a
    sidecar listens there and no flag asks for a node of our own (--key, --listen, --insecure, --seal).
    """
    from click.core import ParameterSource

    from .sidecar.localapi import sidecar_listening

    if direct:
        return None
    if socket_path is None:
        if any(ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
               for name in ("key", "listen", "insecure", "seal") if name in ctx.params):
            return None
        from .sidecar.config import LocalApiSection

        path = Path(LocalApiSection().path)
        return path if sidecar_listening(path) else None
    path = Path(socket_path)
    if not sidecar_listening(path):
        raise Failure(f"no sidecar is listening on {path}: start one (`zmqagents node --config FILE`), "
                      "or leave out --socket to send through a temporary node")
    return path


def _sidecar_targets(to: tuple[str, ...]) -> list[str]:
    """--to values for the sidecar: contacts (or @FILE) or 64-hex node ids it already knows."""
    from .identity import parse_node_id

    if not to:
        raise click.UsageError("name at least one peer with --to CONTACT, --to @FILE or --to NODE_ID")
    out = []
    for text in to:
        if text.startswith("@") or "@" in text:
            out.append(str(_contacts([text])[0]))
            continue
        try:
            parse_node_id(text)
        except IdentityError as exc:
            raise click.BadParameter(f"{exc}; pass a contact PUBLICKEY@ENDPOINT or a node id",
                                     param_hint="--to") from None
        out.append(text.lower())
    return out


@cli.command()
@_common_node_options
@click.option("--to", "to", multiple=True, help="Contact of the receiving node (repeat to spread lines round-robin).")
@_sidecar_options
@click.option("--seal", is_flag=True, help=_SEAL_HELP)
@click.argument("body", required=False)
@click.pass_context
def send(ctx, key, listen, insecure, to, socket_path, direct, seal, body) -> None:
    """Send reliable one-way messages.

    With BODY, send it (JSON if it parses, else text). Without, send each stdin
    line (one JSON value per line; bad lines are reported on stderr and
    skipped). Waits until every message is acknowledged.

    \b
    When a sidecar runs on this host (`zmqagents node --config`, socket at
    its default path or --socket), messages go through it instead: the
    command returns once the sidecar has *accepted* them (written them to its
    durable outbox), and the sidecar delivers them even across restarts and
    while the peer is away. --to may then also be a node id the sidecar knows.
    """
    path = _sidecar_socket(ctx, socket_path, direct)
    if path is not None and seal:
        raise click.UsageError("--seal applies to this command's own node, not to a sidecar: drop --socket")
    if path is not None:
        sys.exit(_run(_send_via_sidecar(path, _sidecar_targets(to), body)))
    targets = _targets(to)
    n = _make_node(key, listen, targets, insecure, seal=seal)

    async def main() -> int:
        from .node import SendError

        failed = 0
        sent = 0
        async with n:
            ids = [c.node_id for c in targets]
            if body is not None:
                await n.send(ids[0], _parse_body(body))
                sent = 1
            else:
                async for _, value in _stdin_values():
                    if value is _BAD:
                        failed += 1
                        continue
                    await n.send(ids[sent % len(ids)], value)
                    sent += 1
            try:
                await n.flush(timeout=60)
            except SendError as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_FAILED
            except asyncio.TimeoutError:
                click.echo("error: messages not acknowledged within 60 s", err=True)
                return EXIT_TIMEOUT
        if failed:
            click.echo(f"error: {failed} input line(s) were not valid JSON; {sent} sent", err=True)
        return EXIT_FAILED if failed else EXIT_OK

    sys.exit(_run(main()))


async def _send_via_sidecar(path: Path, targets: list[str], body: str | None) -> int:
    """Hand messages to the sidecar's outbox; exit 0 once every one is accepted."""
    from .sidecar.localapi import LocalClient

    client = LocalClient(path)
    slots = asyncio.Semaphore(256)  # sends awaiting the sidecar's answer
    counts = {"bad": 0, "refused": 0, "silent": 0, "sent": 0}

    async def one(value: Any, number: int) -> None:
        try:
            reply = await client.call("send", value, to=targets[counts["sent"] % len(targets)])
        except asyncio.TimeoutError:
            counts["silent"] += 1
            click.echo(f"line {number}: no answer from the sidecar at {path} within 30 s", err=True)
            return
        except Exception as exc:  # a value the envelope cannot carry
            counts["refused"] += 1
            click.echo(f"line {number}: {exc}", err=True)
            return
        finally:
            slots.release()
        if reply.type != "accepted":
            counts["refused"] += 1
            detail = reply.body if isinstance(reply.body, dict) else {}
            click.echo(f"line {number}: refused by the sidecar ({detail.get('code')}): {detail.get('error')}",
                       err=True)

    tasks = []
    try:
        if body is not None:
            await slots.acquire()
            await one(_parse_body(body), 1)
        else:
            async for number, value in _stdin_values():
                if value is _BAD:
                    counts["bad"] += 1
                    continue
                await slots.acquire()
                tasks.append(asyncio.ensure_future(one(value, number)))
                counts["sent"] += 1
            await asyncio.gather(*tasks)
    finally:
        await client.close()
    bad, refused, silent = counts["bad"], counts["refused"], counts["silent"]
    if bad or refused or silent:
        click.echo(f"error: {bad} bad line(s), {refused} refused, {silent} unanswered", err=True)
    if silent and not (bad or refused):
        return EXIT_TIMEOUT
    return EXIT_FAILED if (bad or refused or silent) else EXIT_OK


_BAD = object()


async def _stdin_values():
    """Yield (line number, JSON value) for each stdin line; a bad line is reported on stderr and yields _BAD."""
    number = 0
    async for line in _read_lines():
        number += 1
        yield number, _parse_line(line, number)


def _parse_line(line: bytes, number: int) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        click.echo(f"line {number}: not UTF-8; skipped", err=True)
        return _BAD
    if not text.strip():
        click.echo(f"line {number}: empty; skipped", err=True)
        return _BAD
    try:
        return json.loads(text)
    except ValueError as exc:
        click.echo(f"line {number}: invalid JSON ({exc}); skipped", err=True)
        return _BAD


@cli.command()
@_common_node_options
@click.option("--to", "to", multiple=True, help="Contact of the serving node (repeat to spread requests round-robin).")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for each reply.")
@click.option("--parallel", default=16, show_default=True, type=click.IntRange(1, 4096), help="Requests in flight at once.")
@_sidecar_options
@click.option("--seal", is_flag=True, help=_SEAL_HELP)
@click.argument("body", required=False)
@click.pass_context
def request(ctx, key, listen, insecure, to, timeout, parallel, socket_path, direct, seal, body) -> None:
    """Send requests and print replies, one JSON object per line.

    With BODY, one request (JSON if it parses, else text): prints the reply
    body. Without, each stdin line is a request body; output lines come in
    input order as {"line": N, "ok": true, "reply": ..., "ms": ...} or
    {"line": N, "ok": false, "error": ...}. Invalid lines are reported on
    stderr and skipped; the others still go through. Through a running
    sidecar (see `send --help`) when there is one.
    """
    path = _sidecar_socket(ctx, socket_path, direct)
    if path is not None and seal:
        raise click.UsageError("--seal applies to this command's own node, not to a sidecar: drop --socket")
    if path is not None:
        sys.exit(_run(_request_via_sidecar(path, _sidecar_targets(to), timeout, parallel, body)))
    targets = _targets(to)
    n = _make_node(key, listen, targets, insecure, seal=seal)

    async def one(dst: bytes, value: Any, number: int) -> dict:
        from .node import NodeError, RequestTimeout

        start = time.perf_counter()
        try:
            reply_body = await n.request(dst, value, timeout=timeout)
        except RequestTimeout as exc:
            return {"line": number, "ok": False, "error": str(exc), "timeout": True}
        except NodeError as exc:
            return {"line": number, "ok": False, "error": str(exc)}
        return {"line": number, "ok": True, "reply": reply_body, "ms": round((time.perf_counter() - start) * 1000, 3)}

    async def main() -> int:
        async with n:
            ids = [c.node_id for c in targets]
            if body is not None:
                result = await one(ids[0], _parse_body(body), 1)
                if result["ok"]:
                    _emit({"reply": result["reply"]}) if not isinstance(result["reply"], dict) else _emit(result["reply"])
                    return EXIT_OK
                click.echo(f"error: {result['error']}", err=True)
                return EXIT_TIMEOUT if result.get("timeout") else EXIT_FAILED
            return await _request_lines(ids, one, parallel)

    sys.exit(_run(main()))


async def _request_via_sidecar(path: Path, targets: list[str], timeout: float, parallel: int,
                               body: str | None) -> int:
    """`request` through the sidecar's local API: same output and exit codes as with a node."""
    from .sidecar.localapi import LocalClient

    client = LocalClient(path)

    async def one(to: str, value: Any, number: int) -> dict:
        start = time.perf_counter()
        try:
            reply = await client.call("request", value, to=to, ttl_ms=max(1, int(timeout * 1000)),
                                      timeout=timeout + 5)
        except asyncio.TimeoutError:
            return {"line": number, "ok": False, "error": f"no answer from the sidecar at {path}", "timeout": True}
        except Exception as exc:  # a value the envelope cannot carry
            return {"line": number, "ok": False, "error": str(exc)}
        if reply.type == "reply":
            return {"line": number, "ok": True, "reply": reply.body,
                    "ms": round((time.perf_counter() - start) * 1000, 3)}
        detail = reply.body if isinstance(reply.body, dict) else {}
        result = {"line": number, "ok": False, "error": str(detail.get("error", reply.type))}
        if detail.get("code") == "timeout":
            result["timeout"] = True
        return result

    try:
        if body is not None:
            result = await one(targets[0], _parse_body(body), 1)
            if result["ok"]:
                _emit(result["reply"]) if isinstance(result["reply"], dict) else _emit({"reply": result["reply"]})
                return EXIT_OK
            click.echo(f"error: {result['error']}", err=True)
            return EXIT_TIMEOUT if result.get("timeout") else EXIT_FAILED
        return await _request_lines(targets, one, parallel)
    finally:
        await client.close()


async def _request_lines(ids: list[bytes], one, parallel: int) -> int:
    """Pipeline stdin lines through ``one`` with at most ``parallel`` in flight, output in input order."""
    pending: asyncio.Queue = asyncio.Queue(maxsize=parallel)
    counts = {"bad": 0, "failed": 0, "timeouts": 0}

    async def writer() -> None:
        while (task := await pending.get()) is not None:
            result = await task
            if not result["ok"]:
                counts["timeouts" if result.get("timeout") else "failed"] += 1
            _emit(result)

    out = asyncio.ensure_future(writer())
    number = sent = 0
    try:
        async for number, value in _stdin_values():
            if value is _BAD:
                counts["bad"] += 1
                continue
            await pending.put(asyncio.ensure_future(one(ids[sent % len(ids)], value, number)))
            sent += 1
    finally:
        await pending.put(None)
        await out
    bad, failed, timeouts = counts["bad"], counts["failed"], counts["timeouts"]
    if bad or failed or timeouts:
        click.echo(f"error: {bad} bad line(s), {failed} failed, {timeouts} timed out, of {number} line(s)", err=True)
    if timeouts and not (bad or failed):
        return EXIT_TIMEOUT
    return EXIT_FAILED if (bad or failed or timeouts) else EXIT_OK


@cli.command()
@_common_node_options
@click.option("--to", "to", required=True, help="Contact of the node to ask.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per contact instead of a table.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the answer.")
def peers(key, listen, insecure, to, as_json, timeout) -> None:
    """List the contacts in a node's routing table."""
    from .node import PEERS, NodeError, RequestTimeout

    targets = _contacts([to])
    n = _make_node(key, listen, targets, insecure)

    async def main() -> int:
        async with n:
            try:
                table = await n.request(targets[0].node_id, None, timeout=timeout, type=PEERS)
            except RequestTimeout as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_TIMEOUT
            except NodeError as exc:
                click.echo(f"error: {exc}", err=True)
                return EXIT_FAILED
        now = time.time()
        if as_json:
            for row in table:
                _emit(row)
        else:
            click.echo(f"{'NODE':14} {'STATE':9} {'INC':>4} {'RTT ms':>8} {'SEEN s ago':>10}  ENDPOINT")
            for row in table:
                rtt = "-" if row["rtt_ms"] is None else f"{row['rtt_ms']:.2f}"
                endpoint = row["contact"].split("@", 1)[1]
                click.echo(f"{row['node_id'][:12]:14} {row['state']:9} {row['incarnation']:>4} {rtt:>8} "
                           f"{now - row['last_seen']:>10.1f}  {endpoint}")
        return EXIT_OK

    sys.exit(_run(main()))


@cli.command()
@_common_node_options
@click.option("--to", "to", multiple=True, help="Contact of a neighbour that subscribes (repeatable).")
@click.option("--wait", default=5.0, show_default=True, help="Seconds to wait for a subscriber before publishing.")
@click.argument("topic")
@click.argument("body", required=False)
def publish(key, listen, insecure, to, wait, topic, body) -> None:
    """Publish BODY (or each stdin line) on TOPIC to subscribed neighbours.

    Publications are one hop and best effort. The command connects to the
    --to nodes, waits until one of them subscribes to TOPIC (exit 124 if none
    does within --wait), publishes, and lingers briefly so the data leaves.
    """
    targets = _targets(to)
    n = _make_node(key, listen, targets, insecure)
    n.config.transport.close_linger_ms = 2000

    async def main() -> int:
        async with n:
            if not await n.wait_for_subscriber(topic, wait):
                click.echo(f"error: no neighbour subscribed to {topic!r} within {wait:g} s", err=True)
                return EXIT_TIMEOUT
            if body is not None:
                await n.publish(topic, _parse_body(body))
                return EXIT_OK
            bad = 0
            async for _, value in _stdin_values():
                if value is _BAD:
                    bad += 1
                else:
                    await n.publish(topic, value)
            return EXIT_FAILED if bad else EXIT_OK

    sys.exit(_run(main()))


@cli.command()
@_common_node_options
@click.option("--to", "to", multiple=True, help="Contact of a neighbour to listen to (repeatable).")
@click.option("--contact-file", type=click.Path(dir_okay=False), help="Write this node's contact here so publishers can connect.")
@click.option("--count", type=click.IntRange(1), help="Exit after this many publications.")
@click.option("--timeout", type=float, help="Exit with 124 if nothing arrives for this many seconds.")
@click.argument("topic", default="")
def subscribe(key, listen, insecure, to, contact_file, count, timeout, topic) -> None:
    """Print publications whose topic starts with TOPIC, one JSON line each.

    Publications travel one hop, so the publisher must be a neighbour: either
    name it with --to, or let it connect here (`publish --to` this node's
    contact, printed first as {"contact": ...}).
    """
    n = _make_node(key, listen, _contacts(to), insecure, member=True)

    async def main() -> int:
        async with n:
            _announce(n, contact_file)
            seen = 0
            stream = n.subscribe(topic)
            while count is None or seen < count:
                try:
                    msg = await asyncio.wait_for(stream.__anext__(), timeout)
                except asyncio.TimeoutError:
                    click.echo(f"error: no publication for {timeout:g} s", err=True)
                    return EXIT_TIMEOUT
                except StopAsyncIteration:
                    break
                seen += 1
                _emit({"topic": msg.topic, "from": msg.sender, "body": msg.body})
            await stream.aclose()
        return EXIT_OK

    sys.exit(_run(main()))


@cli.group()
def config() -> None:
    """Check sidecar configuration files (see `zmqagents node --config`)."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--conf-d", type=click.Path(file_okay=False), envvar="ZMQAGENTS_CONF_D",
              help="Directory of *.toml files merged over PATH in name order (default: conf.d next to it).")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one key, as `node --set`.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of TOML.")
def config_check(path, conf_d, settings, as_json) -> None:
    """Validate PATH (+ conf.d, ZMQAGENTS_* variables, --set) and print the effective configuration.

    \b
    Each key is printed with where its value came from. The node key file is
    checked if it exists; only its node id and public key are printed, never
    the secret. Exit 0 if the configuration is usable, 2 (error on stderr,
    naming the key and the file, variable or flag) if not.
    """
    from .sidecar.config import ConfigError, load, parse_set
    from .sidecar.daemon import describe_key, read_allowlist, read_fleet

    try:
        cfg = load(path, conf_d=conf_d, overrides=[parse_set(text) for text in settings])
        read_allowlist(cfg)
        read_fleet(cfg)  # join = "fleet": the CA key, certificate and revocation list files parse
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InsecureKeyFileWarning)
            key = describe_key(cfg)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
    except ConfigError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    if as_json:
        _emit({"ok": True, "files": list(cfg.files), "config": cfg.as_dict(), "sources": dict(cfg.sources), "key": key})
        return
    from .sidecar.config import to_toml

    click.echo(f"# effective configuration from: {', '.join(cfg.files)}")
    click.echo(to_toml(cfg), nl=False)
    if key["exists"]:
        click.echo(f"# node key {key['path']}: node id {key['node_id']}, public key {key['public_key']}")
    else:
        click.echo(f"# node key {key['path']} does not exist yet; `zmqagents node` creates it (mode 0600)")


# -- DHT: records and providers -------------------------------------------------------------------

EXIT_NOT_FOUND = 3  # dht get / find: the lookup worked, and no node holds what was asked for

DHT_EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    failed: the bootstrap or the mesh did not answer, or the holders refused the record
  2    usage error (bad flags, arguments, key file, contact, value)
  3    not found: the lookup converged and no node holds it
  124  timed out
"""


def _dht_options(f):
    f = click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Seconds the whole command may take (joining included).")(f)
    f = click.option("--bootstrap", multiple=True, required=True,
                     help="Contact (or @FILE) of a mesh node to join through (repeatable).")(f)
    return _common_node_options(f)


async def _dht_session(n, bootstrap: list[Contact], timeout: float, work) -> int:
    """Start a client node, join the mesh through ``bootstrap``, run ``work()`` within ``timeout``."""
    from .dht import DhtError, DhtTimeout

    deadline = time.monotonic() + timeout
    async with n:
        if not await n.join(bootstrap, timeout=timeout):
            click.echo("error: no bootstrap contact answered; check --bootstrap (is that node running?)", err=True)
            return EXIT_FAILED
        try:
            return await asyncio.wait_for(work(max(0.1, deadline - time.monotonic())), max(0.1, deadline - time.monotonic()))
        except (DhtTimeout, asyncio.TimeoutError):
            click.echo(f"error: no answer within {timeout:g} s", err=True)
            return EXIT_TIMEOUT
        except DhtError as exc:
            click.echo(f"error: {exc}", err=True)
            return EXIT_FAILED


@cli.group(epilog=DHT_EXIT_CODES_HELP)
def dht() -> None:
    """Store and fetch small signed records in the mesh (a distributed hash table).

    \b
    KEY is any text; the DHT key is sha256 of its UTF-8 bytes, so the same
    text names the same record everywhere. A record is signed by the
    publisher's key and lives on the 3 nodes closest to its key until it
    expires; while it lives, the key belongs to that publisher (use the same
    --key to update it). Mesh nodes re-replicate it when holders die.

    \b
      zmqagents dht put site/7 '{"interval": 30}' --ttl 600 --bootstrap @seed.contact
      zmqagents dht get site/7 --bootstrap @seed.contact
    """


@dht.command("put", epilog=DHT_EXIT_CODES_HELP)
@_dht_options
@click.option("--ttl", default=3600.0, show_default=True, type=click.FloatRange(min=1, max=86400),
              help="Seconds the record lives (at most a day).")
@click.argument("key_text", metavar="KEY")
@click.argument("value")
def dht_put(key, listen, insecure, bootstrap, timeout, ttl, key_text, value) -> None:
    """Store VALUE under KEY (JSON if VALUE parses as JSON, else the text).

    Prints {"key": hex, "stored": replicas, "seq": n, "expires": unix_s}.
    This command exits after storing: nobody republishes the record, but
    the nodes holding it keep it, and re-replicate it, until it expires.
    """
    from .dht import key_for

    n = _make_node(key, listen, [], insecure)
    body = _parse_body(value)

    async def work(left: float) -> int:
        try:
            result = await n.dht.put(key_text, body, ttl=ttl, timeout=left)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            return EXIT_USAGE
        _emit({"key": key_for(key_text).hex(), "stored": result.stored, "seq": result.seq, "expires": result.expires})
        return EXIT_OK

    sys.exit(_run(_dht_session(n, _contacts(bootstrap), timeout, work)))


@dht.command("get", epilog=DHT_EXIT_CODES_HELP)
@_dht_options
@click.option("--json", "as_json", is_flag=True,
              help='Print {"key", "value", "publisher", "seq", "expires"} instead of the value alone.')
@click.argument("key_text", metavar="KEY")
def dht_get(key, listen, insecure, bootstrap, timeout, as_json, key_text) -> None:
    """Print the value stored under KEY as one JSON line (exit 3 if none).

    The first record found whose signature, key and expiry check out is
    printed; bytes that are not UTF-8 print as {"base64": ...}.
    """
    from .dht import key_for

    n = _make_node(key, listen, [], insecure)

    async def work(left: float) -> int:
        record = await n.dht.get_record(key_text, timeout=left)
        if record is None:
            click.echo(f"error: no node holds a record for {key_text!r}", err=True)
            return EXIT_NOT_FOUND
        if as_json:
            _emit({"key": key_for(key_text).hex(), "value": record.value, "publisher": format_node_id(record.publisher),
                   "seq": record.seq, "expires": record.expires})
        else:
            sys.stdout.write(json.dumps(_jsonable(record.value), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        return EXIT_OK

    sys.exit(_run(_dht_session(n, _contacts(bootstrap), timeout, work)))


@cli.command(epilog=DHT_EXIT_CODES_HELP)
@_dht_options
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per provider ({"node_id", "contact", "expires", "meta"}) instead of a table.')
@click.argument("capability")
def find(key, listen, insecure, bootstrap, timeout, as_json, capability) -> None:
    """List the nodes that provide CAPABILITY (a capability or topic name).

    Providers announce themselves in the DHT (Node.provide); the name is
    hashed with sha256 like a `dht` KEY. Exit 3 if nobody provides it.
    Pass a printed contact to `zmqagents request --to CONTACT` to use one.
    """
    n = _make_node(key, listen, [], insecure)

    async def work(left: float) -> int:
        found = await n.find_providers(capability, timeout=left)
        if not found:
            click.echo(f"error: no node provides {capability!r}", err=True)
            return EXIT_NOT_FOUND
        now = time.time()
        if as_json:
            for p in found:
                _emit({"node_id": format_node_id(p.node_id), "contact": str(p.contact), "expires": p.expires,
                       "meta": p.meta})
        else:
            click.echo(f"{'NODE':14} {'EXPIRES IN s':>12}  CONTACT")
            for p in found:
                click.echo(f"{p.node_id.hex()[:12]:14} {p.expires - now:>12.0f}  {p.contact}")
        return EXIT_OK

    sys.exit(_run(_dht_session(n, _contacts(bootstrap), timeout, work)))


def _register_sim() -> None:
    """`zmqagents sim` lives with the simulator; register it without importing it on every start."""

    class LazySim(click.Command):
        def __init__(self):
            super().__init__("sim", help="Simulate a mesh of N nodes running the real protocol cores (see --help).",
                             context_settings={"ignore_unknown_options": True, "help_option_names": []})
            self.params = [click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)]

        def invoke(self, ctx):
            from .sim.command import sim

            return sim.main(list(ctx.params["args"]), prog_name="zmqagents sim", standalone_mode=True)

    cli.add_command(LazySim())


_register_sim()


def _register_agents() -> None:
    """`zmqagents agent`, `task` and `agents` live with the agents package and use this module's helpers.

    Run as ``python -m zmqagents.cli`` this module is ``__main__``; naming it ``zmqagents.cli`` too
    keeps their ``from ..cli import`` from loading (and registering) a second copy.
    """
    sys.modules.setdefault("zmqagents.cli", sys.modules[__name__])
    from .agents.commands import register

    register(cli)


_register_agents()


def _register_fleet() -> None:
    """`zmqagents ca` (fleet certificates) lives in fleet_commands.py."""
    from .fleet_commands import register

    register(cli)


_register_fleet()


def main() -> None:
    cli(prog_name="zmqagents")


if __name__ == "__main__":
    main()
