"""``zmqagents agent`` (serve a capability by running a shell command per task) and the ``agents``
group (``ls``, ``info``, ``card``: who offers what)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from .common import (
    SIDECAR_HELP, Aliased, admin_option, announce, contacts_of, emit, make_node, node_options, read_allowlist, run_main,
    sidecar_options, sidecar_socket, start_admin,
)
from .context import mesh_option, resolve_mesh
from .exits import EXIT_NOT_FOUND, EXIT_OK, EXIT_SOME_FAILED


def _schema_option(text: str | None, name: str) -> Any:
    """A JSON schema given inline or as @FILE."""
    if text is None:
        return None
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        return json.loads(raw)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {text[1:]}: {exc.strerror}", param_hint=name) from None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None


def _groups_option(path: str | None, allow: tuple[str, ...]) -> dict[str, frozenset[bytes]]:
    """The --groups file, checked (exit 2 with the reason on a bad file)."""
    if path is None:
        return {}
    from ..agents.groups import GroupsError, load_groups

    if not any(a.startswith("@") for a in allow):
        raise click.UsageError("--groups only matters with --allow @GROUP (without --allow anyone may call)")
    try:
        return load_groups(path)
    except GroupsError as exc:
        raise click.BadParameter(str(exc), param_hint="--groups") from None


def _allow_option(values: tuple[str, ...], groups: dict[str, frozenset[bytes]], *,
                  fleet: bool = False) -> frozenset[bytes | str]:
    """--allow values as an allow list: node ids and group names (each group must be in --groups, unless the
    node joins a fleet: then @GROUP also admits callers whose certificate names the group)."""
    from ..identity import IdentityError, parse_peer_ref

    entries: set[bytes | str] = set()
    for value in values:
        if value.startswith("@"):
            name = value[1:]
            if name not in groups and not fleet:
                where = "the --groups file" if groups else "--groups FILE (none given)"
                raise click.BadParameter(f"{value}: no group {name!r} in {where}", param_hint="--allow")
            entries.add(name)
        elif Path(value).is_file():
            entries |= read_allowlist(value)
        else:
            try:
                entries.add(parse_peer_ref(value))
            except IdentityError as exc:
                raise click.BadParameter(f"{value!r:.80} is not a node id, public key, contact, @GROUP or an "
                                         f"existing allowlist file ({exc})", param_hint="--allow") from None
    return frozenset(entries)


def _preset_option(preset: str, files: tuple[str, ...], **overrides: Any):
    """The preset named ``preset`` with the flags that override it (exit 2 naming the problem)."""
    from ..agents.presets import PresetError, load

    try:
        presets = load(files)
    except PresetError as exc:
        raise click.BadParameter(str(exc), param_hint="--preset-file") from None
    if preset not in presets:
        raise click.BadParameter(f"no preset {preset!r}; there are: {', '.join(sorted(presets))}", param_hint="--preset")
    chosen = presets[preset]
    if overrides.get("args") and chosen.kind not in ("claude-code", "codex"):
        raise click.UsageError(f"--arg is for the claude-code and codex kinds; {preset!r} is {chosen.kind}")
    if overrides.get("base_url") and chosen.kind not in ("openai", "anthropic"):
        raise click.UsageError(f"--base-url is for the openai and anthropic kinds; {preset!r} is {chosen.kind}")
    overrides["capability"] = overrides.pop("name")
    if overrides.get("args"):
        overrides["args"] = chosen.args + overrides["args"]
    try:
        chosen = chosen.with_overrides(**overrides)
        chosen.to_capability()
    except (PresetError, ValueError) as exc:
        raise click.UsageError(f"--preset {preset}: {exc}") from None
    return chosen


def _preset_agent(chosen):
    """The preset's adapter (exit 2 when it cannot be built: an unset variable, no model)."""
    from ..agents.presets import PresetError

    try:
        return chosen.agent()
    except PresetError as exc:
        raise click.UsageError(str(exc)) from None


def lookup_for(node, to: tuple[str, ...]):
    from ..agents.runtime import DhtLookup, DirectLookup

    return DirectLookup(node, contacts_of(to, hint="--to")) if to else DhtLookup(node)


@click.command(epilog=SIDECAR_HELP + "  (for this command also: --ask, --allow, --groups, --admin, --queue)\n")
@node_options
@click.option("--capability", "name", help="Name of the capability this agent serves (with --preset: the preset's).")
@click.option("--exec", "command",
              help="Shell command run per task: input JSON on stdin, stdout lines stream as progress, stdout is the output.")
@click.option("--preset", metavar="NAME",
              help="Serve a ready-made agent instead of --exec: claude-code, codex, openai, ollama, anthropic, or one of "
                   "your own (see Presets below).")
@click.option("--preset-file", "preset_files", multiple=True, type=click.Path(dir_okay=False),
              help="A TOML file of presets, read after the shipped ones and ~/.config/zmqagents/presets.toml (repeatable).")
@click.option("--model", help="--preset: the model (overrides the preset's).")
@click.option("--base-url", help="--preset openai/anthropic kinds: the API's base URL (vLLM, llama.cpp, a gateway).")
@click.option("--api-key-env", metavar="VAR", help='--preset: the environment variable holding the API key ("" for none).')
@click.option("--arg", "args", multiple=True, help="--preset claude-code/codex kinds: an extra argument for the tool (repeatable).")
@mesh_option(help="Contact of a node already in the mesh (repeatable); without it this node is a seed.")
@click.option("--peer", "peers", multiple=True, hidden=True,
                 help="Old: a neighbour to connect to directly without joining through it; use --mesh.")
@click.option("--contact-file", type=click.Path(dir_okay=False), help="Also write this node's contact to a file.")
@click.option("--description", default="", help="What the capability does (shown by `agents info` and A2A cards).")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--cost", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Cost per call, compared among providers.")
@click.option("--parallel", "--max-concurrency", "max_concurrency", cls=Aliased, type=click.IntRange(1, 100000), help="Tasks run at once; more are rejected (busy) so callers go elsewhere.  [default: 4, or the preset's]")
@click.option("--queue", default=0, show_default=True, type=click.IntRange(0, 100000), help="Tasks allowed to wait for a free slot (by priority).")
@click.option("--exec-timeout", "--timeout", "timeout", cls=Aliased, type=click.FloatRange(min=0.001), help="Seconds a task may run; then its command's process group is killed (or its request closed).  [default: 300, or the preset's]")
@click.option("--stdin", "stdin_mode", type=click.Choice(["json", "text"]), default="json", show_default=True,
              help="Input on stdin as one JSON line, or a string input as raw text.")
@click.option("--ask", is_flag=True,
              help='The command may ask the caller mid-task: a stdout line {"input_required": PROMPT} asks, the '
                   "answer arrives on stdin as one JSON line; stdin stays open (read the input as the first line).")
@click.option("--input-schema", help="JSON schema of the input, inline or @FILE; bad input is refused before it is sent.")
@click.option("--output-schema", help="JSON schema of the output, inline or @FILE (published for callers).")
@click.option("--allow", "allow", multiple=True, metavar="ID|@GROUP|FILE",
              help="Only these callers (repeatable): a node id, public key or contact, @GROUP from --groups (in a "
                   "fleet, --ca/--cert, also any caller whose certificate names GROUP), or an allowlist file (one "
                   "id per line). Others get rejected with code denied.")
@click.option("--groups", "groups_file", type=click.Path(dir_okay=False),
              help="Groups that --allow @GROUP names: TOML (or .json) of group = [node ids, keys or contacts].")
@admin_option
@sidecar_options
@click.pass_context
def agent(ctx, key, listen, insecure, name, command, preset, preset_files, model, base_url, api_key_env, args,
          bootstrap, peers, contact_file, description, tags, cost, max_concurrency, queue, timeout, stdin_mode, ask,
          input_schema, output_schema, allow, groups_file, admin, socket_path, direct) -> None:
    """Serve a capability on the mesh by running a shell command per task, or a ready-made agent (--preset).

    \b
    The node joins the mesh through --mesh, publishes a DHT provider record
    for the capability, and runs COMMAND for each task it admits. The command's
    environment has ZMQAGENTS_TASK_ID, ZMQAGENTS_CAPABILITY and ZMQAGENTS_FROM.
    A non-zero exit fails the task with the tail of stderr. On SIGTERM/SIGINT the
    agent cancels the tasks it runs (callers get state canceled, code
    provider-stopped) before it leaves the mesh.

    \b
    Asking the caller (--ask, with --stdin json): the command reads its input as
    the FIRST stdin line (stdin stays open, so do not read to end of file), and
    asks by printing a line that is exactly {"input_required": PROMPT}; the
    caller's answer is the next stdin line, as JSON. The task is input-required
    meanwhile; --exec-timeout includes the wait. Such lines are not progress or output.
      zmqagents agent --capability greet --ask --exec \\
        'read -r in; echo "{\\"input_required\\": \\"name?\\"}"; read -r name; echo "hello $name"'

    \b
    Example:
      zmqagents agent --capability upper --stdin text --exec 'tr a-z A-Z' --contact-file /tmp/a.contact &
      echo '"hello"' | zmqagents task upper --mesh @/tmp/a.contact

    \b
    Only some callers (a groups file is TOML: ops = ["<node id>", ...]):
      zmqagents agent --capability deploy --exec ./deploy.sh --allow @ops --allow <node id> --groups groups.toml

    \b
    Presets (--preset NAME; data in zmqagents/agents/presets.toml, yours in
    ~/.config/zmqagents/presets.toml or --preset-file, `extends = "openai"`
    to start from one):
      claude-code  `claude -p --output-format stream-json`, capability claude-code
      codex        `codex exec --json -`, capability codex
      openai       chat completions at --base-url ($OPENAI_BASE_URL, default
                   api.openai.com), key in $OPENAI_API_KEY, capability chat
      ollama       a local model at $OLLAMA_HOST (127.0.0.1:11434), no key
      anthropic    the Messages API, key in $ANTHROPIC_API_KEY
    Text and tool use stream as task progress; the output is {"text", ...}.
    HTTP presets honour HTTPS_PROXY/NO_PROXY and retry 429 and 5xx answers.
      zmqagents agent --preset ollama --model qwen2.5 --bootstrap @seed.contact &
      echo '"Say hi"' | zmqagents task chat --bootstrap @seed.contact | jq -r .output.text
      zmqagents agent --preset openai --base-url http://gpu1:8000/v1 --api-key-env "" --model Qwen/Qwen2.5-7B-Instruct

    
    With --admin HOST:PORT it serves /metrics (the node's, plus zmqagents_tasks
    by state, zmqagents_tasks_queued, zmqagents_task_runs_total by outcome and
    the zmqagents_task_duration_seconds histogram), /livez and /readyz.
    """
    from ..agents.capability import Capability, CapabilityError
    from ..agents.shell import ShellAgent

    bootstrap = resolve_mesh(bootstrap)
    if (command is None) == (preset is None):
        raise click.UsageError("give --exec COMMAND or --preset NAME (one of them)")
    if ask and stdin_mode != "json":
        raise click.UsageError("--ask needs --stdin json: the input and each answer are one JSON line each")
    groups = _groups_option(groups_file, allow)
    if preset is None:
        for flag, value in (("--preset-file", preset_files), ("--model", model), ("--base-url", base_url),
                            ("--api-key-env", api_key_env), ("--arg", args)):
            if value:
                raise click.UsageError(f"{flag} goes with --preset")
        if name is None:
            raise click.UsageError("--exec needs --capability NAME")
        runner = ShellAgent(command, timeout=300.0 if timeout is None else timeout, stdin=stdin_mode, ask=ask)
        defaults = {"max_concurrency": 4, "description": "", "tags": (), "input_schema": None, "output_schema": None}
    else:
        if ask or stdin_mode != "json":
            raise click.UsageError("--ask and --stdin are for --exec commands")
        chosen = _preset_option(preset, preset_files, name=name, model=model, base_url=base_url,
                                api_key_env=api_key_env, args=tuple(args) or None, timeout=timeout,
                                max_concurrency=max_concurrency)
        name = chosen.capability
        cap_default = chosen.to_capability()
        runner = _preset_agent(chosen)
        defaults = {"max_concurrency": chosen.max_concurrency, "description": cap_default.description,
                    "tags": cap_default.tags, "input_schema": cap_default.input_schema,
                    "output_schema": cap_default.output_schema}
    path = sidecar_socket(ctx, socket_path, direct, own=("ask", "allow", "groups_file", "admin", "peers", "queue"))
    n = None if path is not None else make_node(key, listen, contacts_of(peers), insecure, None,
                                                contacts_of(bootstrap, hint="--mesh"), member=True)
    try:
        in_schema = _schema_option(input_schema, "--input-schema")
        out_schema = _schema_option(output_schema, "--output-schema")
        cap = Capability(name, description=description or defaults["description"], tags=tuple(tags) or defaults["tags"],
                         cost_per_call=cost, max_concurrency=max_concurrency or defaults["max_concurrency"], queue=queue,
                         input_schema=defaults["input_schema"] if in_schema is None else in_schema,
                         output_schema=defaults["output_schema"] if out_schema is None else out_schema,
                         allow=_allow_option(allow, groups, fleet=n.transport.fleet is not None) if allow else None)
        cap.check_strict()
    except CapabilityError as exc:
        raise click.UsageError(str(exc)) from None
    if path is not None:
        from .sidecar_agent import serve_via_sidecar

        sys.exit(run_main(serve_via_sidecar(path, cap, runner, contact_file), server=True))

    async def main() -> int:
        from ..agents.runtime import Agents

        from ..sidecar.runtime_metrics import AgentsMetrics

        async with n:
            agents = Agents(n, groups=groups)
            server = None
            try:
                server = await start_admin(n, admin, [AgentsMetrics(agents)], expect_peers=bool(bootstrap))
                try:
                    await agents.serve(cap, runner, timeout=10)
                except Exception as exc:  # alone, or the DHT did not answer: still reachable with --to
                    click.echo(f"warning: provider record not stored yet ({exc}); it is retried while the node runs",
                               err=True)
                await agents.wait_listed()  # in the registry (`agents ls`) before we say we are up
                announce(n, contact_file, admin=server.address if server is not None else None)
                await asyncio.Event().wait()
            finally:
                await agents.close()
                if server is not None:
                    await server.close()
        return EXIT_OK

    sys.exit(run_main(main(), server=True))



@click.group("agents")
def agents_group() -> None:
    """Inspect the capabilities nodes serve: who offers what, and A2A agent cards."""


@agents_group.command("info")
@node_options
@click.argument("capability")
@mesh_option(help="Contact of a node in the mesh (providers are found in the DHT).")
@click.option("--to", "to", multiple=True, help="Contact of a node to ask directly instead (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per provider.")
def agents_info(key, listen, insecure, capability, bootstrap, to, as_json) -> None:
    """Who provides CAPABILITY, with its description, schemas, cost and concurrency."""
    bootstrap = bootstrap if to else resolve_mesh(bootstrap)
    if not bootstrap and not to:
        raise click.UsageError("say where to look: --mesh CONTACT (or a context, see `zmqagents help context`) "
                               "or --to CONTACT")
    n = make_node(key, listen, [], insecure, None, contacts_of(bootstrap, hint="--mesh"))

    async def main() -> int:
        from ..agents.capability import describe
        from ..agents.runtime import Agents

        async with n:
            agents = Agents(n, lookup=lookup_for(n, to))
            try:
                candidates = await agents.candidates(capability)
                if not candidates:
                    click.echo(f"error: no provider offers {capability!r}", err=True)
                    return EXIT_NOT_FOUND
                for c in candidates:
                    try:
                        caps = {cap.name: cap for cap in await describe(n, c.node_id, timeout=5)}
                    except Exception as exc:
                        click.echo(f"warning: {c.node_id.hex()[:12]} did not describe itself: {exc}", err=True)
                        caps = {}
                    rec = caps[capability].to_record() if capability in caps else {"name": capability}
                    row = {"node_id": c.node_id.hex(), "rtt_ms": None if c.rtt is None else round(c.rtt * 1000, 3), **rec}
                    if as_json:
                        emit(row)
                    else:
                        click.echo(f"{row['node_id'][:12]}  {capability}  max_concurrency={rec.get('max_concurrency', '?')} "
                                   f"cost={rec.get('cost_per_call', 0)}  rtt_ms={row['rtt_ms']}  {rec.get('description', '')}")
            finally:
                await agents.close()
        return EXIT_OK

    sys.exit(run_main(main()))


@agents_group.command("ls", epilog="""\b
States (the STATE column, "state" in --json):
  alive        answered the probe just now (RTT ms: its round trip), or this
               node's membership knows it alive (RTT ms: membership's estimate)
  unreachable  did not answer the probe within --probe-timeout
  dead         this node's membership knows it failed or left (not probed)
Registry entries outlive their nodes (until they expire), hence the probe.
Only alive providers are listed unless --all is given; the number left out
goes to stderr.

\b
Exit codes:
  0  listed (every node that was asked answered)
  3  no capability found (or no node answered the registry lookup), or
     none with a live provider (without --all)
  4  some node did not say what it serves (the rest is listed)
  2  usage error
""")
@node_options
@mesh_option(help="Contact of a node in the mesh: list every capability in the mesh (DHT registry).")
@click.option("--to", "to", multiple=True, help="Contact of a node to ask directly instead (repeatable): list what it serves.")
@click.option("--all", "show_all", is_flag=True, help="Also list providers that are unreachable or dead (see States).")
@click.option("--probe-timeout", default=2.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds a listed node has to answer the liveness probe (probes run in parallel, 32 at once).")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per capability: {"name", "providers": [{"node_id", "contact", "state", "rtt_ms"}]}.')
def agents_ls(key, listen, insecure, bootstrap, to, show_all, probe_timeout, as_json) -> None:
    """List the capabilities in the mesh, each with the nodes that provide it and whether they are alive.

    \b
    With --mesh every agent in the mesh is found through the capability
    registry in the DHT (each agent lists its capability names under a well-known
    key, protocols/tasks.md 3.3), then each listed node is probed; with --to only
    the given nodes are asked. `zmqagents agents info CAPABILITY` shows one
    capability's full description.

    \b
    Example:
      zmqagents agents ls --mesh @/tmp/seed.contact
      zmqagents agents ls --mesh @/tmp/seed.contact --all --json | jq -c '.providers[] | [.node_id, .state]'
    """
    bootstrap = bootstrap if to else resolve_mesh(bootstrap)
    if not bootstrap and not to:
        raise click.UsageError("say where to look: --mesh CONTACT (the whole mesh; or a context, see "
                               "`zmqagents help context`) or --to CONTACT")
    targets = contacts_of(to, hint="--to") if to else []
    n = make_node(key, listen, [], insecure, None, contacts_of(bootstrap, hint="--mesh"))

    async def main() -> int:
        from ..agents.registry import ALIVE, list_mesh
        from ..agents.capability import describe

        status = EXIT_OK
        providers: dict[str, list] = {}  # name -> [(contact, state, rtt)]
        async with n:
            if targets:
                for contact in targets:
                    began = time.monotonic()
                    try:
                        caps = await describe(n, contact, timeout=max(probe_timeout, 5.0))
                    except Exception as exc:
                        click.echo(f"error: {contact.node_id.hex()[:12]} did not answer: {exc}", err=True)
                        status = EXIT_SOME_FAILED
                        continue
                    rtt = time.monotonic() - began
                    for cap in caps:
                        providers.setdefault(cap.name, []).append((contact, ALIVE, rtt))
            else:
                try:
                    listed = await list_mesh(n, probe_timeout=probe_timeout)
                except Exception as exc:
                    click.echo(f"error: the capability registry lookup failed: {exc}", err=True)
                    return EXIT_NOT_FOUND
                hidden = 0
                for entry in listed:
                    if entry.state != ALIVE and not show_all:
                        hidden += 1
                        continue
                    if not entry.complete and entry.state == ALIVE:
                        click.echo(f"warning: {entry.node_id.hex()[:12]} serves more than it listed and did not "
                                   "describe the rest", err=True)
                        status = EXIT_SOME_FAILED
                    for name in entry.capabilities:
                        providers.setdefault(name, []).append((entry.contact, entry.state, entry.rtt))
                if hidden:
                    click.echo(f"note: {hidden} listed node(s) are unreachable or dead and not shown (--all shows them)",
                               err=True)
        if not providers:
            click.echo("error: no capability found" + ("" if targets else " in the mesh"), err=True)
            return EXIT_NOT_FOUND if status == EXIT_OK else status
        if not as_json:
            click.echo(f"{'CAPABILITY':24} {'NODE':12}  {'STATE':11} {'RTT ms':>8}")
        for name in sorted(providers):
            rows = sorted(providers[name], key=lambda row: row[0].node_id)
            if as_json:
                emit({"name": name, "providers": [
                    {"node_id": c.node_id.hex(), "contact": str(c), "state": state,
                     "rtt_ms": None if rtt is None else round(rtt * 1000, 3)} for c, state, rtt in rows]})
            else:
                for c, state, rtt in rows:
                    shown = "-" if rtt is None else f"{rtt * 1000:.2f}"
                    click.echo(f"{name:24} {c.node_id.hex()[:12]}  {state:11} {shown:>8}")
        return status

    sys.exit(run_main(main()))


@agents_group.command("card")
@node_options
@click.option("--to", "to", required=True, help="Contact of the node to describe.")
@click.option("--a2a", is_flag=True, help="Print an A2A Agent Card (required: the only format so far).")
@click.option("--url", default="", help="The URL an A2A client would use (a bridge's address); default: the node's endpoint.")
@click.option("--name", "card_name", help="Agent name in the card (default: the node id).")
def agents_card(key, listen, insecure, to, a2a, url, card_name) -> None:
    """Print a node's capabilities as an A2A Agent Card (JSON)."""
    if not a2a:
        raise click.UsageError("pass --a2a: the A2A Agent Card is the only card format")
    (target,) = contacts_of([to], hint="--to")
    n = make_node(key, listen, [], insecure)

    async def main() -> int:
        from ..agents.capability import agent_card
        from ..agents.capability import describe

        async with n:
            try:
                caps = await describe(n, target, timeout=5)
            except Exception as exc:
                click.echo(f"error: {target.node_id.hex()[:12]} did not answer: {exc}", err=True)
                return 1
        emit(agent_card(card_name or target.node_id.hex()[:12], caps, url=url or target.endpoint))
        return EXIT_OK

    sys.exit(run_main(main()))




COMMANDS = (agent, agents_group)
