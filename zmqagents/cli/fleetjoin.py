"""``--ca``, ``--cert`` and ``--revocations``: the flags of every command that starts a node, to join a fleet.

They live apart from the ``ca`` commands (fleet.py) because every node command is decorated with them:
importing them must not import the certificate code (zmqagents/certs.py), which a node that joins no
fleet never runs; :func:`fleet_config` imports it when a flag asks for a fleet.
"""

from __future__ import annotations

import click

from ..identity import IdentityError

_FLEET_KEYS = ("ca", "cert", "revocations")


def _remember(ctx: click.Context, param: click.Parameter, value):
    if value:
        ctx.meta[f"zmqagents.fleet.{param.name}"] = value
    return value


def fleet_options(f):
    """--ca, --cert and --revocations for a command that starts a node. They are not passed to the
    command function: :func:`fleet_config` and :func:`fleet_overrides` read them from the context."""
    f = click.option("--revocations", type=click.Path(dir_okay=False), expose_value=False, callback=_remember,
                     envvar="ZMQAGENTS_REVOCATIONS",
                     help="Fleet: revocation list from `zmqagents ca revoke` (env: ZMQAGENTS_REVOCATIONS).")(f)
    f = click.option("--cert", type=click.Path(dir_okay=False), expose_value=False, callback=_remember,
                     envvar="ZMQAGENTS_CERT",
                     help="Fleet: this node's certificate from `zmqagents ca sign` (env: ZMQAGENTS_CERT).")(f)
    f = click.option("--ca", metavar="KEY|FILE", expose_value=False, callback=_remember, envvar="ZMQAGENTS_CA",
                     help="Join a fleet: talk only to nodes with a certificate from this CA (public key or "
                          "ca.pub; needs --cert; env: ZMQAGENTS_CA). See `zmqagents ca --help`.")(f)
    return f


def _given(ctx: click.Context | None) -> dict[str, str]:
    if ctx is None:
        return {}
    return {k: ctx.meta[f"zmqagents.fleet.{k}"] for k in _FLEET_KEYS if f"zmqagents.fleet.{k}" in ctx.meta}


def fleet_config():
    """The FleetConfig the current command's --ca/--cert/--revocations ask for, or None (UsageError on a bad
    combination or file, with what to do)."""
    from ..transport.fleet import FleetConfig

    given = _given(click.get_current_context(silent=True))
    if not given:
        return None
    if "ca" not in given or "cert" not in given:
        missing = "--cert FILE (this node's certificate)" if "ca" in given else "--ca KEY|FILE (the fleet's CA)"
        raise click.UsageError(f"joining a fleet needs --ca and --cert: add {missing}")
    from ..certs import CertError, parse_ca, read_certificate, read_revocations

    try:
        ca_key = parse_ca(given["ca"])
    except IdentityError as exc:
        raise click.BadParameter(str(exc), param_hint="--ca") from None
    try:
        cert = read_certificate(given["cert"])
        revocations = read_revocations(given["revocations"]) if "revocations" in given else None
    except CertError as exc:
        raise click.UsageError(f"{exc} (make one with `zmqagents ca sign` / `ca revoke`)") from None
    return FleetConfig(cas=(ca_key,), certificate=cert, revocations=revocations)


def fleet_overrides(ctx: click.Context) -> list:
    """The fleet flags as sidecar config overrides ([node] join, ca, cert, revocations)."""
    from ..sidecar.config import Override

    given = _given(ctx)
    out = [Override(f"node.{k}", v, f"flag --{k}") for k, v in given.items()]
    if "ca" in given or "cert" in given:
        out.append(Override("node.join", "fleet", "flag --ca/--cert"))
    return out

