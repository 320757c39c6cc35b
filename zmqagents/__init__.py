"""zmqagents: a brokerless message bus for AI agents.

ZeroMQ ROUTER/DEALER and PUB/SUB links encrypted with CurveZMQ, one Ed25519
key per node, and one length-prefixed msgpack envelope for everything.

The names most programs need are importable from here::

    from zmqagents import Node, Agents, Capability, ShellAgent, Error, run

They are loaded on first use (PEP 562), so ``import zmqagents.envelope`` or the
``zmqagents --help`` of the command line does not pay for ZeroMQ or asyncio.
Every exception the package defines derives from :class:`zmqagents.Error`.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import Error, InvalidArgument

__version__ = "0.1.0"

# name -> "module:attribute". Strings in this form count as imports for tools/check_layers.py (as the
# sidecar's service table does), and keep mypy, which checks the cores and so this root, from
# following the whole package.
_LAZY = {
    "Node": "zmqagents.node:Node", "NodeConfig": "zmqagents.node:NodeConfig", "Message": "zmqagents.node:Message",
    "run": "zmqagents.node:run", "NodeError": "zmqagents.node:NodeError",
    "RequestTimeout": "zmqagents.node:RequestTimeout", "PeerUnreachable": "zmqagents.node:PeerUnreachable",
    "RemoteError": "zmqagents.node:RemoteError",
    "Contact": "zmqagents.identity:Contact", "Identity": "zmqagents.identity:Identity",
    "Agents": "zmqagents.agents.runtime:Agents", "Capability": "zmqagents.agents.capability:Capability",
    "CapabilityError": "zmqagents.agents.capability:CapabilityError",
    "TaskContext": "zmqagents.agents.base:TaskContext", "AgentError": "zmqagents.agents.base:AgentError",
    "ShellAgent": "zmqagents.agents.shell:ShellAgent", "OpenAIChatAgent": "zmqagents.agents.llm:OpenAIChatAgent",
    "AnthropicAgent": "zmqagents.agents.llm:AnthropicAgent", "Preset": "zmqagents.agents.presets:Preset",
    "load_presets": "zmqagents.agents.presets:load", "CollabError": "zmqagents.agents.collab:CollabError",
    "TaskSpec": "zmqagents.core.tasks_caller:TaskSpec", "TaskDone": "zmqagents.core.tasks_caller:TaskDone",
    "Progress": "zmqagents.core.tasks_caller:Progress",
}

__all__ = ["Error", "InvalidArgument", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'zmqagents' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
