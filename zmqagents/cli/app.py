"""The ``zmqagents`` command group, and the one place where commands are registered.

A new command lives in the module of its group (or a new module, listed in ``GROUPS`` below) and
exports it in that module's ``COMMANDS``. Command modules import heavy things inside the
commands, so ``zmqagents --help`` and the lean ``zmqagents node`` start fast (see launch.py).
"""

from __future__ import annotations

import logging
import sys

import click

from . import agents, collab, config, dht, fleet, keys, messages, serve, sim, tasks, workflow

EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    something failed (a request, a line of input, a peer)
  2    usage error (bad flags, arguments, key or contact)
  3    not found (dht get, find)
  124  timed out
  130  node: a second SIGINT while stopping (143: a second SIGTERM)
"""

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


# Each module's COMMANDS are added to the group; click lists them by name.
GROUPS = (keys, serve, messages, config, dht, agents, tasks, collab, workflow, fleet, sim)

for _module in GROUPS:
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="zmqagents")
