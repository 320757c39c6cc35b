"""``zmqagents help TOPIC``: the reference tables a shell user looks up (``man``-style).

A topic is a name and a function that returns its text; add one to ``TOPICS``.
"""

from __future__ import annotations

from typing import Callable

import click

from . import context, exits
from .common import Failure


def exit_codes() -> str:
    rows = [f"  {code:<4} {name:<17} {meaning}" for code, name, meaning in exits.TABLE]
    return "\n".join([
        "Exit statuses, the same in every command (a command's --help says which it uses).",
        "Servers (node, relay, reply, agent) exit 0 when a signal stops them.",
        "",
        *rows,
    ])


def contexts() -> str:
    return (context.__doc__ or "").strip() + f"\n\nContexts file here: {context.contexts_path()}"


def presets() -> str:
    """The agent presets `zmqagents agent --preset NAME` can start (shipped, the user's file)."""
    from ..agents.presets import PresetError, load, table

    try:
        return table(load())
    except PresetError as exc:
        raise Failure(str(exc)) from None


TOPICS: dict[str, tuple[str, Callable[[], str]]] = {
    "exit-codes": ("what each exit status means", exit_codes),
    "context": ("naming the mesh once: --mesh, ZMQAGENTS_MESH, contexts", contexts),
    "presets": ("the agent presets (claude-code, codex, openai, ollama, anthropic, yours)", presets),
}


@click.command("help")
@click.argument("topic", required=False)
def help_command(topic: str | None) -> None:
    """Print a reference: exit-codes, context, presets (without TOPIC: the list)."""
    if topic is None:
        for name, (summary, _) in TOPICS.items():
            click.echo(f"  {name:<12} {summary}")
        return
    if topic not in TOPICS:
        raise click.BadParameter(f"no topic {topic!r}; topics: {', '.join(TOPICS)}", param_hint="TOPIC")
    click.echo(TOPICS[topic][1]())


COMMANDS = (help_command,)
