"""``zmqagents sim``: the command lives with the simulator (zmqagents/sim/command.py); this stand-in
registers it without importing the simulator on every start, and passes its arguments through."""

from __future__ import annotations

import click


class LazySim(click.Command):
    def __init__(self) -> None:
        super().__init__("sim", help="Simulate a mesh of N nodes running the real protocol cores (see --help).",
                         context_settings={"ignore_unknown_options": True, "help_option_names": []})
        self.params = [click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)]

    def invoke(self, ctx: click.Context):
        from ..sim.command import sim

        return sim.main(list(ctx.params["args"]), prog_name="zmqagents sim", standalone_mode=True,
                        help_option_names=["-h", "--help"])


COMMANDS = (LazySim(),)
