"""``zmqagents config check``: validate a sidecar configuration and show the effective one."""

from __future__ import annotations

import warnings

import click

from ..identity import InsecureKeyFileWarning
from .common import Failure, emit
from .exits import EXIT_USAGE

@click.group()
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
    from ..sidecar.config import ConfigError, load, parse_set
    from ..sidecar.daemon import describe_key, read_allowlist, read_fleet

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
        emit({"ok": True, "files": list(cfg.files), "config": cfg.as_dict(), "sources": dict(cfg.sources), "key": key})
        return
    from ..sidecar.config import to_toml

    click.echo(f"# effective configuration from: {', '.join(cfg.files)}")
    click.echo(to_toml(cfg), nl=False)
    if key["exists"]:
        click.echo(f"# node key {key['path']}: node id {key['node_id']}, public key {key['public_key']}")
    else:
        click.echo(f"# node key {key['path']} does not exist yet; `zmqagents node` creates it (mode 0600)")


# -- DHT: records and providers -------------------------------------------------------------------



COMMANDS = (config,)
