"""The ``zmqagents`` command group, and the one place where commands are registered.

A new command lives in the module of its group (or a new module, listed in ``GROUPS`` below) and
exports it in that module's ``COMMANDS``. Command modules import heavy things inside the
commands, so ``zmqagents --help`` and the lean ``zmqagents node`` start fast (see launch.py).
"""

from __future__ import annotations

import logging
import sys

import click

from . import (agents, collab, config, context, dht, fleet, keys, members, mesh, messages, reference, serve, sim, swarm,
               tasks, top, workflow)
from .common import VERBOSITY, verbosity_params
from .version import version_option

EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    something failed (a request, a line of input, a peer)
  2    usage error (bad flags, arguments, key or contact)
  3    not found (dht get, find, task: no provider)
  8    unreachable (the mesh, or the node named, said nothing at all)
  124  timed out (it answered, not in time)
  (all of them: `zmqagents help exit-codes`)
  130  node: a second SIGINT while stopping (143: a second SIGTERM)
"""

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EXIT_CODES_HELP)
@version_option
@click.pass_context
def cli(ctx: click.Context) -> None:
    """A brokerless message bus for AI agents.

    Nodes talk over CURVE-encrypted ZeroMQ; each node's identity is one
    Ed25519 key. A node is reached by its contact, PUBLICKEY@ENDPOINT, which
    `zmqagents node` prints when it starts. Wherever a contact is expected you
    may pass @FILE to read it from a file written with --contact-file.

    \b
    Naming the mesh: --mesh CONTACT on any command (a node to join or talk
    through; repeatable), else ZMQAGENTS_MESH, else the current context
    (`zmqagents help context`). A sidecar running on this host comes first:
    client commands work through it (--direct opts out).

    \b
    Try it:
      zmqagents reply --exec 'tr a-z A-Z' --contact-file /tmp/w.contact &
      echo '"hello"' | zmqagents request --to @/tmp/w.contact
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    VERBOSITY.apply(ctx)  # -v/-q given before the command; those after it apply as they are parsed


# Each module's COMMANDS are added to the group; click lists them by name.
GROUPS = (keys, serve, messages, config, context, dht, agents, tasks, collab, workflow, fleet, mesh, sim, swarm, reference,
          members, top)

def _with_verbosity(command: click.Command) -> None:
    """-v and -q on every command, so they work after the subcommand too (`zmqagents task ... -v`)."""
    command.params.extend(verbosity_params())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_verbosity(sub)


cli.params.extend(verbosity_params())
for _module in GROUPS:
    for _command in _module.COMMANDS:
        if not isinstance(_command, sim.LazySim):  # its arguments all go to the simulator's own parser
            _with_verbosity(_command)
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="zmqagents")
