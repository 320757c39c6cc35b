"""``zmqagents keygen``: make a node's key file."""

from __future__ import annotations

import click

from ..identity import Identity, format_node_id, format_public_key
from .common import Failure, emit

@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing key file (the old identity is lost).")
def keygen(path: str, force: bool) -> None:
    """Create a node key file at PATH (mode 0600) and print the node id and public key."""
    from ..identity import KeyFileError

    identity = Identity.generate()
    try:
        identity.save(path, force=force)
    except KeyFileError as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc.strerror}") from None
    emit({"path": path, "node_id": format_node_id(identity.node_id), "public_key": format_public_key(identity.public_key)})



COMMANDS = (keygen,)
