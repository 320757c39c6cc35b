"""Agent presets: a ready agent from one name (``zmqagents agent --preset claude-code``).

A preset is a table of data (``presets.toml`` next to this module lists the shipped ones and every
key): the *kind* of adapter and how to set it up. The kinds are the adapters this package has:

=============  ============================================  ===========================
kind           adapter                                        default capability schema
=============  ============================================  ===========================
claude-code    ``claude -p --output-format stream-json``      prompt in, ``{"text"}`` out
codex          ``codex exec --json -``                        prompt in, ``{"text"}`` out
openai         chat completions (``llm.OpenAIChatAgent``)     prompt or messages in, ``{"text"}`` out
anthropic      Messages API (``llm.AnthropicAgent``)           prompt or messages in, ``{"text"}`` out
=============  ============================================  ===========================

Files are read in order, later ones winning per preset: the shipped table, then
``$XDG_CONFIG_HOME/zmqagents/presets.toml`` (default ``~/.config/...``) if it exists, then each
file given explicitly. ``extends = "NAME"`` starts a preset from another one (resolved after all
files are read, so a user file can extend a shipped preset). Strings in ``model``, ``base_url``,
``command`` and ``args`` may hold ``${VAR}`` or ``${VAR:-default}``, read from the environment when
the agent is built; a ``base_url`` without a scheme gets ``http://`` (``OLLAMA_HOST`` is usually
``host:port``). Every problem is a :class:`PresetError` naming the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from .base import Agent
from .capability import Capability, CapabilityError
from ..errors import Error

BUILTIN = Path(__file__).with_name("presets.toml")
KINDS = ("claude-code", "codex", "openai", "anthropic")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_EXTENDS = 8

PROMPT_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string", "minLength": 1}}},
    ],
}
CHAT_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "object", "properties": {
            "system": {"type": "string"},
            "prompt": {"type": "string"},
            "text": {"type": "string"},
            "messages": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["role", "content"],
                "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}},
        }, "anyOf": [{"required": ["prompt"]}, {"required": ["text"]}, {"required": ["messages"]}]},
    ],
}
TEXT_OUT = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
DEFAULT_SCHEMAS = {"claude-code": (PROMPT_SCHEMA, TEXT_OUT), "codex": (PROMPT_SCHEMA, TEXT_OUT),
                   "openai": (CHAT_SCHEMA, TEXT_OUT), "anthropic": (CHAT_SCHEMA, TEXT_OUT)}

_STR_KEYS = ("kind", "capability", "description", "model", "base_url", "api_key_env", "command", "extends")
_NUM_KEYS = ("timeout", "idle_timeout")
_INT_KEYS = ("max_concurrency", "queue", "retries", "max_tokens")


class PresetError(Error, ValueError):
    """A preset file or table that cannot be used; the message names the file, preset and key."""


@dataclass(frozen=True)
class Preset:
    """One preset, as read (``${VAR}`` not yet expanded: that happens in :meth:`agent`)."""

    name: str
    kind: str
    capability: str
    source: str = ""  # the file it was read from
    description: str = ""
    tags: tuple[str, ...] = ()
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    command: str | None = None
    args: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    max_concurrency: int = 2
    queue: int = 0
    timeout: float = 600.0
    idle_timeout: float | None = None
    retries: int | None = None
    input_schema: Any = None
    output_schema: Any = None

    def with_overrides(self, **changes: Any) -> "Preset":
        """This preset with the given fields changed (None leaves a field as it is)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_capability(self) -> Capability:
        """The capability this preset serves, schemas checked strictly (CapabilityError)."""
        default_in, default_out = DEFAULT_SCHEMAS[self.kind]
        cap = Capability(self.capability, description=self.description, tags=self.tags,
                         input_schema=default_in if self.input_schema is None else self.input_schema,
                         output_schema=default_out if self.output_schema is None else self.output_schema,
                         max_concurrency=self.max_concurrency, queue=self.queue)
        cap.check_strict()
        return cap

    def agent(self, env: Mapping[str, str] | None = None) -> Agent:
        """The adapter, with ``${VAR}`` expanded from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        model = _expand(self.model, env, self, "model")
        if self.kind in ("claude-code", "codex"):
            from .coding import claude_code, codex

            make = claude_code if self.kind == "claude-code" else codex
            command = _expand(self.command, env, self, "command") or ("claude" if self.kind == "claude-code" else "codex")
            args = [_expand(a, env, self, "args") or "" for a in self.args]
            return make(model or None, command=command, args=args, timeout=self.timeout)
        from .llm import AnthropicAgent, OpenAIChatAgent

        if not model:
            raise PresetError(f"preset {self.name!r}: a model is needed (model = ..., or --model)")
        base_url = _expand(self.base_url, env, self, "base_url")
        kw: dict[str, Any] = dict(options=dict(self.options), timeout=self.timeout, api_key_env=self.api_key_env or None)
        if base_url:
            kw["base_url"] = base_url if "://" in base_url else "http://" + base_url
        if self.idle_timeout is not None:
            kw["idle_timeout"] = self.idle_timeout
        if self.retries is not None:
            kw["retries"] = self.retries
        if self.kind == "openai":
            return OpenAIChatAgent(model, **kw)
        if self.max_tokens is not None:
            kw["max_tokens"] = self.max_tokens
        return AnthropicAgent(model, **kw)


def _expand(text: str | None, env: Mapping[str, str], preset: Preset, key: str) -> str | None:
    if text is None:
        return None

    def one(m: re.Match) -> str:
        value = env.get(m.group(1))
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)
        raise PresetError(f"preset {preset.name!r} ({preset.source}): {key} reads ${{{m.group(1)}}}, which is not set")

    return _VAR.sub(one, text)


def user_file() -> Path:
    """Where a user's own presets live: $XDG_CONFIG_HOME/zmqagents/presets.toml."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "zmqagents" / "presets.toml"


def load(files: Iterable[str | Path] = (), *, include_user: bool = True) -> dict[str, Preset]:
    """Every preset: the shipped ones, the user's file, then ``files`` (each must exist)."""
    raw: dict[str, tuple[dict, str]] = {}
    sources: list[tuple[Path, bool]] = [(BUILTIN, True)]
    if include_user:
        sources.append((user_file(), False))
    sources += [(Path(f), True) for f in files]
    for path, required in sources:
        if not required and not path.is_file():
            continue
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as exc:
            raise PresetError(f"cannot read the preset file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PresetError(f"{path}: not valid TOML: {exc}") from None
        for name, table in doc.items():
            if not isinstance(table, dict):
                raise PresetError(f"{path}: {name!r} must be a table ([{name}])")
            raw[name] = (table, str(path))
    return {name: _build(name, raw) for name in raw}


def _build(name: str, raw: dict[str, tuple[dict, str]]) -> Preset:
    """The preset ``name`` with its ``extends`` chain merged in (the nearest table wins per key)."""
    chain: list[str] = []
    current = name
    while True:
        if current in chain or len(chain) > MAX_EXTENDS:
            raise PresetError(f"{raw[name][1]}: preset {name!r}: extends loops or chains deeper than {MAX_EXTENDS} "
                              f"({' -> '.join(chain + [current])})")
        chain.append(current)
        table, source = raw[current]
        parent = table.get("extends")
        if parent is None:
            break
        if not isinstance(parent, str) or parent not in raw:
            raise PresetError(f"{source}: preset {current!r}: extends names no preset {parent!r}")
        current = parent
    merged: dict[str, Any] = {}
    for link in reversed(chain):
        merged.update({k: v for k, v in raw[link][0].items() if k != "extends"})
    return _preset(name, merged, raw[name][1])


def _preset(name: str, t: dict, source: str) -> Preset:
    where = f"{source}: preset {name!r}"
    known = (set(_STR_KEYS) - {"extends"}) | set(_NUM_KEYS) | set(_INT_KEYS) | {"tags", "args", "options", "input_schema", "output_schema"}
    unknown = sorted(set(t) - known)
    if unknown:
        raise PresetError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in _STR_KEYS:
        if key in t and not isinstance(t[key], str):
            raise PresetError(f"{where}: {key} must be a string")
    for key in _NUM_KEYS:
        if key in t and (isinstance(t[key], bool) or not isinstance(t[key], (int, float)) or t[key] <= 0):
            raise PresetError(f"{where}: {key} must be a positive number of seconds")
    for key in _INT_KEYS:
        if key in t and (isinstance(t[key], bool) or not isinstance(t[key], int) or t[key] < 0):
            raise PresetError(f"{where}: {key} must be a non-negative integer")
    for key in ("tags", "args"):
        if key in t and not (isinstance(t[key], list) and all(isinstance(v, str) for v in t[key])):
            raise PresetError(f"{where}: {key} must be an array of strings")
    if "options" in t and not isinstance(t["options"], dict):
        raise PresetError(f"{where}: options must be a table")
    kind = t.get("kind")
    if kind not in KINDS:
        raise PresetError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if "capability" not in t:
        raise PresetError(f"{where}: capability (the name it serves) is missing")
    preset = Preset(
        name=name, kind=kind, capability=t["capability"], source=source, description=t.get("description", ""),
        tags=tuple(t.get("tags", ())), model=t.get("model"), base_url=t.get("base_url"),
        api_key_env=t.get("api_key_env"), command=t.get("command"), args=tuple(t.get("args", ())),
        options=dict(t.get("options", {})), max_tokens=t.get("max_tokens"),
        max_concurrency=t.get("max_concurrency", 2), queue=t.get("queue", 0), timeout=float(t.get("timeout", 600.0)),
        idle_timeout=None if "idle_timeout" not in t else float(t["idle_timeout"]), retries=t.get("retries"),
        input_schema=t.get("input_schema"), output_schema=t.get("output_schema"))
    try:
        preset.to_capability()
    except CapabilityError as exc:
        raise PresetError(f"{where}: {exc}") from None
    return preset


def table(presets: Mapping[str, Preset]) -> str:
    """The presets as a text table (name, kind, capability, model or command, file)."""
    rows = [("NAME", "KIND", "CAPABILITY", "MODEL / COMMAND", "FROM")]
    for p in sorted(presets.values(), key=lambda p: p.name):
        rows.append((p.name, p.kind, p.capability, p.model or p.command or "-",
                     "shipped" if p.source == str(BUILTIN) else p.source))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)
