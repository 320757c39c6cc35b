"""``zmqagents --version``: what an operator needs to know before mixing builds on one mesh.

Besides the package version it prints the wire protocol versions this build speaks (read from the
constants the code checks on the wire, so the text cannot drift from what is enforced) and the
directory of the installed wire specs, example sidecar config and systemd unit that help texts and
the README refer to (``zmqagents/_data`` in the package; see ``[options.package_data]`` in setup.cfg).
"""

from __future__ import annotations

from typing import Any

import click


def protocol_versions() -> dict[str, int]:
    """Each versioned wire format, named as its spec file in ``protocols/``, and the version spoken."""
    from ..certs import CERT_VERSION
    from ..envelope import VERSION as ENVELOPE_VERSION
    from ..sidecar.localapi import VERSION as LOCAL_API_VERSION
    from ..sidecar.mdns import TXT_VERSION

    return {"envelope": ENVELOPE_VERSION, "local-api": LOCAL_API_VERSION,
            "certificates": CERT_VERSION, "mdns": int(TXT_VERSION)}


def data_dir() -> str:
    """Where the specs (``protocols/``), ``node.example.toml`` and ``zmqagents.service`` are installed."""
    # imported here: importlib.resources brings tempfile, shutil, bz2, lzma and random (~0.5 MB of RSS)
    # into every process that builds the command group, such as a long-running `zmqagents node`
    from importlib import resources

    return str(resources.files("zmqagents") / "_data")


def version_text() -> str:
    from .. import __version__

    wire = ", ".join(f"{name} {version}" for name, version in protocol_versions().items())
    return (f"zmqagents, version {__version__}\n"
            f"wire protocols: {wire}\n"
            f"specs (protocols/), example config, systemd unit: {data_dir()}")


def _show(ctx: click.Context, _param: Any, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(version_text())
    ctx.exit()


version_option = click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_show,
    help="Show the version, the wire protocol versions and where the specs, example config and "
         "systemd unit are installed, then exit.")
