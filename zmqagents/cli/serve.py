"""Commands that run a mesh member until a signal: ``node`` (plain, or the sidecar with --config),
``relay`` and ``reply``."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from ..identity import format_node_id
from .common import (
    SEAL_HELP, VERBOSITY, Aliased, Failure, admin_option, announce, contacts_of, emit, make_node,
    mesh_member_options, node_options, run_loop, run_main, start_admin,
)
from .context import mesh_option
from .exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE

log = logging.getLogger("zmqagents")

@click.command()
@node_options
@mesh_member_options
@click.option("--echo", is_flag=True, help="Answer every request with its own body (handy for testing).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="ZMQAGENTS_CONFIG",
              help="Run as a sidecar configured by this TOML file (env: ZMQAGENTS_CONFIG).")
@click.option("--conf-d", type=click.Path(file_okay=False), envvar="ZMQAGENTS_CONF_D",
              help="Directory of *.toml files merged over --config in name order (default: conf.d next to it).")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config key, e.g. --set spool.fsync=always (repeatable; sidecar only).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log lines on stderr as text or one JSON object each.")
@click.option("--mdns/--no-mdns", default=None,
              help="Announce this node and find others on the LAN with mDNS (sidecar mode; default [mdns] enabled = \"auto\": "
                   "on unless --listen is a loopback address).")
@click.pass_context
@click.option("--outbound-only", is_flag=True,
              help="This node cannot accept connections (NAT, firewall): others reach it through its --relay nodes.")
@click.option("--relay", "relays", multiple=True, metavar="CONTACT",
              help="Contact of a relay (`zmqagents relay`) to register with; repeat for failover, preferred first.")
@click.option("--seal", is_flag=True, help=SEAL_HELP)
@admin_option
def node(ctx, key, listen, insecure, peers, bootstrap, contact_file, allowlist, echo, config_file, conf_d, settings,
         log_format, outbound_only, relays, seal, mdns, admin) -> None:
    """Run a node until SIGINT/SIGTERM.

    With --mesh it joins the mesh (Kademlia lookup of its own id, then of
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
    As a sidecar listening on a LAN address it finds nodes on the same LAN by
    mDNS, trusting each only after a CURVE-authenticated hello (--no-mdns or
    [mdns] enabled = false to turn off; a loopback --listen, the default,
    leaves it off unless --mdns forces it, and is announced on loopback only). With
    [admin] enabled = true (or --set admin.enabled=true) it serves /metrics,
    /livez and /readyz on http://127.0.0.1:9464 ([admin] listen); --admin
    HOST:PORT does both, with or without --config.
    """
    verbose = VERBOSITY.of(ctx)
    if config_file is None and conf_d is None and not settings and mdns is None:
        if bool(outbound_only) != bool(relays):
            raise click.UsageError("--outbound-only and --relay go together: name at least one --relay CONTACT")
        if log_format is not None:
            from ..sidecar import logs

            logs.configure(log_format, logging.getLogger().level)
        _run_plain_node(key, listen, insecure, peers, bootstrap, contact_file, allowlist, echo,
                        outbound_only=outbound_only, relays=relays, seal=seal, admin=admin)
        return
    overrides = _sidecar_overrides(ctx, key=key, listen=listen, insecure=insecure, peers=peers, bootstrap=bootstrap,
                                   contact_file=contact_file, allowlist=allowlist, log_format=log_format,
                                   verbose=verbose, settings=settings, outbound_only=outbound_only, relays=relays,
                                   seal=seal, mdns=mdns, admin=admin)
    sys.exit(_run_sidecar(config_file, conf_d, overrides, echo))


def _request_handler(echo: bool):
    """What ``zmqagents node`` answers a request with: its own body (--echo), or {"ok": true} after
    printing the request as one JSON line on stdout."""
    if echo:
        return lambda body, msg: body

    def show(body, msg):
        emit({"type": msg.type, "from": msg.sender, "body": body})
        return {"ok": True}
    return show


def _sidecar_overrides(ctx, *, key, listen, insecure, peers, bootstrap, contact_file, allowlist, log_format, verbose,
                       settings, outbound_only=False, relays=(), seal=False, mdns=None, admin=None) -> list:
    """The flags given on the command line as config overrides (flags that were not given do not override)."""
    from click.core import ParameterSource
    from ..sidecar.config import ConfigError, Override, parse_set

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    overrides = []
    try:
        overrides += [parse_set(text) for text in settings]
    except ConfigError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    flags = [("node.key", key, "--key"), ("node.listen", listen if given("listen") else None, "--listen"),
             ("node.secure", False if insecure else None, "--insecure"),
             ("node.peers", list(peers) or None, "--peer"), ("node.bootstrap", list(bootstrap) or None, "--mesh"),
             ("node.contact_file", contact_file, "--contact-file"), ("node.allowlist", allowlist, "--allowlist"),
             ("node.outbound_only", True if outbound_only else None, "--outbound-only"),
             ("node.relays", list(relays) or None, "--relay"), ("node.seal", True if seal else None, "--seal"),
             ("log.format", log_format, "--log-format"),
             ("mdns.enabled", mdns, "--mdns" if mdns else "--no-mdns"),
             ("admin.enabled", True if admin else None, "--admin"), ("admin.listen", admin, "--admin"),
             ("log.level", {0: None, 1: "info", -1: "warning"}.get(verbose, "debug" if verbose > 0 else "error"),
              "-v/-q")]
    overrides += [Override(dotted, value, f"flag {flag}") for dotted, value, flag in flags if value is not None]
    from .fleetjoin import fleet_overrides

    return overrides + fleet_overrides(ctx)


def _run_sidecar(config_file: str | None, conf_d: str | None, overrides: list, echo: bool) -> int:
    from ..sidecar import logs
    from ..sidecar.config import ConfigError, load
    from ..sidecar.daemon import Sidecar

    def loader():
        return load(config_file, conf_d=conf_d, overrides=overrides)

    try:
        config = loader()
        logs.configure(config.log.format, config.log.level)
        sidecar = Sidecar(config, loader=loader)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    sidecar.node.on_request(_request_handler(echo))

    async def app(sc) -> None:
        admin = sc.services.get("admin")
        announce(sc.node, None, admin=admin.address if admin is not None else None)
        if sc.consumes_messages:
            await asyncio.Event().wait()
        async for msg in sc.node.messages():
            emit({"type": msg.type, "from": msg.sender, "body": msg.body})

    async def main() -> int:
        # Logging is configured by now: errors go through it, so a JSON log stays one object per line.
        try:
            return await sidecar.serve(app)
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        except Exception as exc:  # e.g. the listen address is taken: one clear line, details at debug level
            log.debug("sidecar failed", exc_info=True)
            log.error("the sidecar failed: %s", exc)
            return EXIT_FAILED

    return run_loop(main())


def _run_plain_node(key, listen, insecure, peers, bootstrap, contact_file, allowlist, echo, *,
                    outbound_only: bool = False, relays=(), seal: bool = False, admin: str | None = None) -> None:
    from ..node import NodeConfig

    config = NodeConfig(outbound_only=outbound_only, relays=contacts_of(relays, hint="--relay"))
    n = make_node(key, listen, contacts_of(peers), insecure, allowlist, contacts_of(bootstrap), member=True,
                   config=config, seal=seal)

    async def main() -> int:
        async with n:
            n.on_request(_request_handler(echo))
            server = await start_admin(n, admin, expect_peers=bool(bootstrap))
            try:
                announce(n, contact_file, admin=server.address if server is not None else None)
                async for msg in n.messages():
                    emit({"type": msg.type, "from": msg.sender, "body": msg.body})
            finally:
                if server is not None:
                    await server.close()
        return EXIT_OK

    sys.exit(run_main(main(), server=True))


@click.command()
@node_options
@mesh_member_options
@click.option("--max-clients", default=1024, show_default=True, type=click.IntRange(1), help="Registered outbound-only nodes at most; more are refused.")
@click.option("--client-rate", default=2000.0, show_default=True, type=click.FloatRange(min=0.001), help="Forwards per second per sender (burst: twice as many).")
@click.option("--total-rate", default=20000.0, show_default=True, type=click.FloatRange(min=0.001), help="Forwards per second over all senders (burst: twice as many).")
@click.option("--expire", default=10.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds of silence after which a client's registration is dropped.")
@admin_option
def relay(key, listen, insecure, peers, bootstrap, contact_file, allowlist, max_clients, client_rate, total_rate, expire,
          admin) -> None:
    """Run a node that relays for outbound-only nodes, until SIGINT/SIGTERM.

    Outbound-only nodes (`zmqagents node --outbound-only --relay CONTACT`)
    connect here and register; anyone may then send to them through this
    relay, and they send back through it. What passes through is signed by its
    sender (and sealed if the sender used --seal), so the relay can neither
    alter nor forge it. Forwards over the rate limits and to unknown nodes are
    refused and counted. Listen on an address the clients can reach, e.g.
    --listen tcp://0.0.0.0:7000 (the printed contact must be reachable, so
    prefer the real address). Prints {"contact": ...} first and
    {"relay_stats": ...} when it stops. With --admin HOST:PORT it serves
    /metrics (the node's, plus zmqagents_relay_clients and
    zmqagents_relay_events_total by outcome), /livez and /readyz.
    """
    from ..core.relay import RelayConfig
    from ..node import NodeConfig

    config = NodeConfig(serve_relay=True, relay=RelayConfig(
        max_clients=max_clients, client_rate=client_rate, client_burst=2 * client_rate, total_rate=total_rate,
        total_burst=2 * total_rate, expire=expire))
    n = make_node(key, listen, contacts_of(peers), insecure, allowlist, contacts_of(bootstrap), member=True, config=config)

    async def main() -> int:
        from ..sidecar.runtime_metrics import RelayMetrics

        async with n:
            server = await start_admin(n, admin, [RelayMetrics(n)], expect_peers=bool(bootstrap))
            announce(n, contact_file, admin=server.address if server is not None else None)
            try:
                await asyncio.Event().wait()
            finally:
                emit({"relay_stats": n.relay_server.stats, "clients": len(n.relay_server)})
                if server is not None:
                    await server.close()
        return EXIT_OK

    sys.exit(run_main(main(), server=True))



@click.command()
@node_options
@click.option("--exec", "command", required=True, help="Shell command run per request: body on stdin, stdout is the reply.")
@mesh_option(help="Contact (or @FILE) of a node in the mesh to join through (repeatable; without it callers "
                  "reach this node with --to its contact).")
@click.option("--peer", "peers", multiple=True, hidden=True,
              help="Old: a node to connect to directly without joining through it; use --mesh.")
@click.option("--contact-file", type=click.Path(dir_okay=False), help="Also write this node's contact to a file.")
@click.option("--exec-timeout", "--timeout", "timeout", cls=Aliased, default=60.0, show_default=True,
              help="Seconds a command may run before its process group is killed.")
@click.option("--parallel", "--concurrency", "concurrency", cls=Aliased, default=4, show_default=True,
              type=click.IntRange(1, 1024), help="Commands run at once.")
def reply(key, listen, insecure, command, bootstrap, peers, contact_file, timeout, concurrency) -> None:
    """Serve requests by running a shell command.

    \b
    The request body goes to the command's stdin: a string as it is, anything
    else as one JSON line. Its stdout is the reply (parsed as JSON when it is
    JSON, else text). A non-zero exit becomes an error reply carrying the tail
    of stderr. The command sees ZMQAGENTS_FROM (the caller's node id).
    """
    from ..agents.shell import decode_output, encode_input, run_command

    from ..node import NodeConfig

    # (given to the node as it is made: its request slots are counted out then, so setting
    # n.config.max_handlers afterwards, as this command did, left every reply server at the default 64)
    n = make_node(key, listen, contacts_of(peers), insecure, None, contacts_of(bootstrap, hint="--mesh"),
                  member=True, config=NodeConfig(max_handlers=concurrency))

    async def handle(body, msg):
        result = await run_command(command, encode_input(body), timeout=timeout, env={"ZMQAGENTS_FROM": format_node_id(msg.src)})
        return decode_output(result.stdout)

    async def main() -> int:
        async with n:
            n.on_request(handle)
            announce(n, contact_file)
            await asyncio.Event().wait()
        return EXIT_OK

    sys.exit(run_main(main(), server=True))




COMMANDS = (node, relay, reply)
