"""The ``zmqagents`` command group, and the one place where commands are registered.

A new command lives in the module of its group (or a new module) and is exported in that module's
``COMMANDS``; its name and module go in ``COMMAND_MODULES`` below. The group imports a command's
module only when that command runs (or when ``--help`` lists them all): what a process imports it
carries for its whole life, and importing every command module costs a long-running
``zmqagents node`` about 1.4 MB of RSS (certificates, pipelines, the dashboard renderer, bz2/lzma
through ``top``) that it never uses. Command modules import heavy things inside the commands too,
so ``zmqagents --help`` and the lean ``zmqagents node`` start fast (see launch.py).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

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

# command name -> the module of this package that defines it (in its COMMANDS), in the order `--help`
# used to list them before (click sorts them by name anyway)
COMMAND_MODULES: dict[str, str] = {
    "keygen": "keys",
    "node": "serve", "relay": "serve", "reply": "serve",
    "send": "messages", "request": "messages", "peers": "messages", "publish": "messages", "subscribe": "messages",
    "config": "config",
    "context": "context",
    "dht": "dht", "find": "dht",
    "agent": "agents", "agents": "agents",
    "task": "tasks",
    "collab": "collab",
    "workflow": "workflow",
    "ca": "fleet",
    "mesh": "mesh",
    "sim": "sim",
    "swarm": "swarm",
    "help": "reference",
    "members": "members",
    "top": "top",
}


class LazyGroup(click.Group):
    """A group whose commands are imported from their module the first time one is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            load(COMMAND_MODULES[cmd_name])
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EXIT_CODES_HELP)
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


def _with_verbosity(command: click.Command) -> None:
    """-v and -q on every command, so they work after the subcommand too (`zmqagents task ... -v`)."""
    command.params.extend(verbosity_params())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_verbosity(sub)


def load(module_name: str) -> None:
    """Import one command module and add its COMMANDS to the group (with -v/-q on each)."""
    module = importlib.import_module(f".{module_name}", __package__)
    for command in module.COMMANDS:
        if command.name not in COMMAND_MODULES:
            raise RuntimeError(f"zmqagents.cli.{module_name} exports {command.name!r}: add it to COMMAND_MODULES")
        if module_name != "sim":  # LazySim: its arguments all go to the simulator's own parser
            _with_verbosity(command)
        cli.add_command(command)


cli.params.extend(verbosity_params())


def main() -> None:
    cli(prog_name="zmqagents")
