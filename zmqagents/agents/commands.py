"""CLI commands for agents and tasks: ``zmqagents agent``, ``zmqagents task``, ``zmqagents agents``.

Registered on the main ``zmqagents`` group by ``zmqagents/cli.py``; heavy imports happen inside
the commands so ``zmqagents --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..cli import (
    _BAD, EXIT_OK, EXIT_USAGE, _common_node_options, _contacts, _emit, _make_node, _parse_body, _parse_line,
    _read_allowlist, _read_lines,
)

EXIT_NO_PROVIDER = 3
EXIT_SOME_FAILED = 4
EXIT_REJECTED = 5
EXIT_CANCELED = 6
EXIT_WORKFLOW_INVALID = 7  # workflow run/check: the file or its step inputs failed the checks
EXIT_TIMEOUT = 124
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

TASK_EXIT_HELP = """\b
Exit codes (the first that applies):
  130  interrupted by SIGINT (in-flight tasks were canceled first)
  143  terminated by SIGTERM (likewise)
  3    no provider offers the capability
  4    some task failed, or some input line was invalid (bad JSON, schema)
  124  some task timed out (--timeout, --idle-timeout, or a silent provider)
  5    some task was rejected by every provider tried (busy, denied)
  6    some task was canceled (it asked for input and nothing answered it,
       or its provider shut down)
  0    every task completed
  2    usage error
"""


def register(cli: click.Group) -> None:
    cli.add_command(agent)
    cli.add_command(task)
    cli.add_command(agents_group)
    cli.add_command(workflow_group)


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
    from .groups import GroupsError, load_groups

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
            entries |= _read_allowlist(value)
        else:
            try:
                entries.add(parse_peer_ref(value))
            except IdentityError as exc:
                raise click.BadParameter(f"{value!r:.80} is not a node id, public key, contact, @GROUP or an "
                                         f"existing allowlist file ({exc})", param_hint="--allow") from None
    return frozenset(entries)


def _lookup_for(node, to: tuple[str, ...]):
    from .runtime import DhtLookup, DirectLookup

    return DirectLookup(node, _contacts(to, hint="--to")) if to else DhtLookup(node)


@click.command()
@_common_node_options
@click.option("--capability", "name", required=True, help="Name of the capability this agent serves.")
@click.option("--exec", "command", required=True,
              help="Shell command run per task: input JSON on stdin, stdout lines stream as progress, stdout is the output.")
@click.option("--bootstrap", multiple=True, help="Contact of a node already in the mesh (repeatable); without it this node is a seed.")
@click.option("--peer", "peers", multiple=True, help="Contact of a neighbour to connect to directly (repeatable).")
@click.option("--contact-file", type=click.Path(dir_okay=False), help="Also write this node's contact to a file.")
@click.option("--description", default="", help="What the capability does (shown by `agents info` and A2A cards).")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--cost", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Cost per call, compared among providers.")
@click.option("--max-concurrency", default=4, show_default=True, type=click.IntRange(1, 100000), help="Tasks run at once; more are rejected (busy) so callers go elsewhere.")
@click.option("--queue", default=0, show_default=True, type=click.IntRange(0, 100000), help="Tasks allowed to wait for a free slot (by priority).")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0.001), help="Seconds a command may run; then its process group is killed.")
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
def agent(key, listen, insecure, name, command, bootstrap, peers, contact_file, description, tags, cost,
          max_concurrency, queue, timeout, stdin_mode, ask, input_schema, output_schema, allow, groups_file) -> None:
    """Serve a capability on the mesh by running a shell command per task.

    \b
    The node joins the mesh through --bootstrap, publishes a DHT provider record
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
    meanwhile; --timeout includes the wait. Such lines are not progress or output.
      zmqagents agent --capability greet --ask --exec \\
        'read -r in; echo "{\\"input_required\\": \\"name?\\"}"; read -r name; echo "hello $name"'

    \b
    Example:
      zmqagents agent --capability upper --stdin text --exec 'tr a-z A-Z' --contact-file /tmp/a.contact &
      echo '"hello"' | zmqagents task upper --bootstrap @/tmp/a.contact

    \b
    Only some callers (a groups file is TOML: ops = ["<node id>", ...]):
      zmqagents agent --capability deploy --exec ./deploy.sh --allow @ops --allow <node id> --groups groups.toml
    """
    from .capability import Capability, CapabilityError
    from .shell import ShellAgent
    from ..cli import _announce

    if ask and stdin_mode != "json":
        raise click.UsageError("--ask needs --stdin json: the input and each answer are one JSON line each")
    groups = _groups_option(groups_file, allow)
    n = _make_node(key, listen, _contacts(peers), insecure, None, _contacts(bootstrap, hint="--bootstrap"), member=True)
    try:
        cap = Capability(name, description=description, tags=tuple(tags), cost_per_call=cost,
                         max_concurrency=max_concurrency, queue=queue,
                         input_schema=_schema_option(input_schema, "--input-schema"),
                         output_schema=_schema_option(output_schema, "--output-schema"),
                         allow=_allow_option(allow, groups, fleet=n.transport.fleet is not None) if allow else None)
        cap.check_strict()
    except CapabilityError as exc:
        raise click.UsageError(str(exc)) from None

    async def main() -> int:
        from .runtime import Agents

        async with n:
            agents = Agents(n, groups=groups)
            try:
                try:
                    await agents.serve(cap, ShellAgent(command, timeout=timeout, stdin=stdin_mode, ask=ask), timeout=10)
                except Exception as exc:  # alone, or the DHT did not answer: still reachable with --to
                    click.echo(f"warning: provider record not stored yet ({exc}); it is retried while the node runs",
                               err=True)
                await agents.wait_listed()  # in the registry (`agents ls`) before we say we are up
                _announce(n, contact_file)
                await asyncio.Event().wait()
            finally:
                await agents.close()
        return EXIT_OK

    from ..cli import _run
    sys.exit(_run(main()))


@click.command(epilog=TASK_EXIT_HELP)
@_common_node_options
@click.argument("capability")
@click.argument("body", required=False)
@click.option("--bootstrap", multiple=True, help="Contact of a node in the mesh; providers are found in the DHT through it.")
@click.option("--to", "to", multiple=True, help="Contact of a provider to use directly instead of the DHT (repeatable).")
@click.option("--parallel", default=8, show_default=True, type=click.IntRange(1, 4096), help="Tasks in flight at once.")
@click.option("--timeout", type=click.FloatRange(min=0.001), help="Deadline per task in seconds (none by default).")
@click.option("--idle-timeout", type=click.FloatRange(min=0.001), help="Fail a task whose provider sends nothing for this long (LLM streams are slow: be generous).")
@click.option("--accept-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001), help="Seconds a provider has to acknowledge a task.")
@click.option("--stream", is_flag=True, help='Also print progress chunks as {"line", "task", "seq", "progress"} lines as they arrive.')
@click.option("--unordered", is_flag=True, help="Print results as they finish instead of in input order.")
@click.option("--idempotent", is_flag=True, help="Tasks may run twice: a task whose provider died or went silent is sent to another.")
@click.option("--priority", default=0, show_default=True, type=click.IntRange(0, 9), help="Priority in providers' wait queues (9 first).")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1, 100), help="Providers tried per task.")
@click.option("--no-validate", is_flag=True, help="Do not check input against the capability's input schema before sending.")
@click.option("--answer-exec", metavar="CMD",
              help="Answer a task that asks for input: CMD gets the prompt as one JSON line on stdin; its stdout is "
                   "the answer (JSON if it parses, else text). Without it such a task is canceled.")
@click.option("--answer-timeout", default=300.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds --answer-exec may take; then it is killed and the task canceled.")
def task(key, listen, insecure, capability, body, bootstrap, to, parallel, timeout, idle_timeout, accept_timeout,
         stream, unordered, idempotent, priority, max_attempts, no_validate, answer_exec, answer_timeout) -> None:
    """Run CAPABILITY on the mesh for BODY, or for each JSON line on stdin.

    \b
    One JSON result per input line on stdout, in input order (unless --unordered):
      {"line": N, "task": ID, "state": "completed", "output": ..., "provider": ID, "attempts": 1, "ms": 12.3}
      {"line": N, "task": ID, "state": "failed", "error": {"code": ..., "msg": ...}, ...}
    A line that is not JSON, or does not match the capability's input schema, is
    reported as {"line": N, "state": "invalid", "error": ...} (and on stderr); the
    other lines still run. A progress bar goes to stderr when it is a terminal.

    \b
    A task may ask for more input mid-task (state input-required). With
    --answer-exec CMD, CMD runs per question with the prompt as one JSON line on
    stdin (env: ZMQAGENTS_TASK_ID, ZMQAGENTS_CAPABILITY, ZMQAGENTS_LINE), and
    its stdout is sent back as the answer. A non-zero exit, a timeout, or no
    --answer-exec at all cancels the task with the reason in its result line
    (state canceled, exit 6).
      ... | zmqagents task greet --bootstrap @seed.contact --answer-exec 'echo Ann'

    \b
    Example:
      jq -c '.[]' docs.json | zmqagents task summarize --bootstrap @seed.contact --parallel 8 | jq -r .output.text
    """
    if not bootstrap and not to:
        raise click.UsageError("say where the providers are: --bootstrap CONTACT (find them in the DHT) or --to CONTACT")
    from ..core.tasks import CallerConfig

    n = _make_node(key, listen, [], insecure, None, _contacts(bootstrap, hint="--bootstrap"))
    config = CallerConfig(accept_timeout=accept_timeout, max_attempts=max_attempts)
    opts = dict(timeout=timeout, idle_timeout=idle_timeout, stream=stream, unordered=unordered, idempotent=idempotent,
                priority=priority, validate=not no_validate, parallel=parallel, answer_exec=answer_exec,
                answer_timeout=answer_timeout)
    sys.exit(_run_task(n, capability, body, to, config, opts))


def _run_task(n, capability: str, body: str | None, to, config, opts) -> int:
    from ..node import run

    got: dict[str, int] = {}

    async def main() -> int:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()

        def on_signal(signum: int) -> None:
            if not got:
                got["signal"] = signum
                me.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        async with n:
            run_ = _TaskRun(n, capability, to, config, opts)
            try:
                return await run_.run(body)
            except asyncio.CancelledError:
                if not got:
                    raise
                await run_.cancel_all()
                return EXIT_SIGINT if got["signal"] == signal.SIGINT else EXIT_SIGTERM
            finally:
                await run_.close()

    return run(main())


class _TaskRun:
    """One `zmqagents task` invocation: reads lines, keeps --parallel tasks in flight, prints results."""

    def __init__(self, node, capability: str, to, config, opts: dict):
        from .runtime import Agents

        self.node = node
        self.capability = capability
        self.opts = opts
        self.agents = Agents(node, lookup=_lookup_for(node, to), caller=config)
        self.inflight: dict[bytes, int] = {}
        self.counts = {"completed": 0, "failed": 0, "timeout": 0, "rejected": 0, "canceled": 0, "invalid": 0,
                       "no_provider": 0}
        self.total = 0
        self.tty = sys.stderr.isatty()
        self._bar_at = 0.0

    async def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        await self.agents.close()

    async def cancel_all(self) -> None:
        """After a signal: every unfinished task is canceled at its provider before we exit."""
        self.agents.cancel_all("the caller was interrupted")
        try:
            await self.node.flush(timeout=2.0)  # let the cancels reach the providers
        except Exception:
            pass

    async def run(self, body: str | None) -> int:
        from .capability import CapabilityError

        try:
            candidates = await self.agents.candidates(self.capability)
        except Exception as exc:
            click.echo(f"error: looking for providers of {self.capability!r} failed: {exc}", err=True)
            return EXIT_NO_PROVIDER
        if not candidates:
            click.echo(f"error: no provider offers {self.capability!r}", err=True)
            return EXIT_NO_PROVIDER
        del candidates  # each task looks again (cached for a few seconds): providers come and go
        if body is not None:
            values = [(1, _parse_body(body))]
            await self._pipeline(_aiter(values))
        else:
            await self._pipeline(self._stdin_values())
        return self._exit_code()

    async def _stdin_values(self):
        number = 0
        async for line in _read_lines():
            number += 1
            value = _parse_line(line, number)  # reports a bad line on stderr
            if value is _BAD:
                yield number, _BAD
            else:
                yield number, value

    async def _pipeline(self, values) -> None:
        """Keep --parallel tasks in flight; print in input order (or as they finish with --unordered).

        On a signal (cancellation) every task still running is canceled rather than awaited, so
        each one's provider is told to stop it (``_one`` does that when canceled).
        """
        parallel = self.opts["parallel"]
        running: set[asyncio.Task] = set()

        def spawn(coro) -> asyncio.Task:
            t = asyncio.ensure_future(coro)
            running.add(t)
            t.add_done_callback(running.discard)
            return t

        try:
            if self.opts["unordered"]:
                slots = asyncio.Semaphore(parallel)

                async def one_unordered(number, value):
                    try:
                        self._print(await self._one(number, value))
                    finally:
                        slots.release()

                async for number, value in values:
                    await slots.acquire()
                    spawn(one_unordered(number, value))
                if running:
                    await asyncio.gather(*running)
                return
            pending: asyncio.Queue = asyncio.Queue(maxsize=parallel)

            async def writer() -> None:
                while (t := await pending.get()) is not None:
                    self._print(await t)

            out = spawn(writer())
            async for number, value in values:
                await pending.put(spawn(self._one(number, value)))
            await pending.put(None)
            await out
        except BaseException:
            for t in list(running):
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise

    async def _one(self, number: int, value: Any) -> dict:
        from ..core import tasks as T
        from ..core.tasks import TaskSpec, TaskTooLarge
        from .capability import CapabilityError

        self.total += 1
        if value is _BAD:
            self.counts["invalid"] += 1
            return {"line": number, "state": "invalid", "error": {"code": "bad-input", "msg": "not a JSON value"}}
        spec = TaskSpec(self.capability, value, idempotent=self.opts["idempotent"], priority=self.opts["priority"],
                        deadline=self.opts["timeout"], idle_timeout=self.opts["idle_timeout"], stream=self.opts["stream"])
        on_progress = None
        if self.opts["stream"]:
            def on_progress(p, number=number):
                self._print({"line": number, "task": p.task_id.hex(), "seq": p.seq, "progress": p.data}, bar=False)
        ids: list[bytes] = []  # the task id, for the answer command's environment (known before any question)

        async def on_input(prompt: Any) -> Any:
            return await self._answer(prompt, number, ids[0])

        try:
            task_id, done = await self.agents.submit(spec, validate=self.opts["validate"], on_progress=on_progress,
                                                     on_input=on_input)
            ids.append(task_id)
        except (CapabilityError, TaskTooLarge, ValueError) as exc:
            self.counts["invalid"] += 1
            click.echo(f"line {number}: {exc}", err=True)
            return {"line": number, "state": "invalid", "error": {"code": "bad-input", "msg": str(exc)}}
        self.inflight[task_id] = number
        try:
            res = await done
        except asyncio.CancelledError:
            self.agents.cancel(task_id, "the caller was interrupted")  # tell the provider to stop it
            raise
        finally:
            self.inflight.pop(task_id, None)
        out = {"line": number, "task": res.task_id.hex(), "state": res.state}
        if res.state == T.COMPLETED:
            out["output"] = res.output
            self.counts["completed"] += 1
        else:
            out["error"] = res.error
            code = (res.error or {}).get("code")
            if code == T.E_NO_PROVIDER:
                self.counts["no_provider"] += 1
            elif code in (T.E_TIMEOUT, T.E_DEADLINE):
                self.counts["timeout"] += 1
            elif res.state == T.FAILED:
                self.counts["failed"] += 1
            elif res.state == T.REJECTED:
                self.counts["rejected"] += 1
            else:
                self.counts["canceled"] += 1
            if res.maybe_ran:
                out["maybe_ran"] = True
        out["provider"] = res.provider.hex() if res.provider else None
        out["attempts"] = res.attempts
        out["ms"] = round(res.elapsed * 1000, 3)
        if res.lost_updates:
            out["lost_updates"] = res.lost_updates
        return out

    async def _answer(self, prompt: Any, number: int, task_id: bytes) -> Any:
        """The answer to a task's question from --answer-exec; NoAnswer (the task is canceled) without one."""
        from ..cli import _jsonable
        from .runtime import NoAnswer
        from .shell import CommandFailed, decode_output, run_command

        shown = json.dumps(_jsonable(prompt), ensure_ascii=False)
        command = self.opts["answer_exec"]
        if command is None:
            raise NoAnswer(f"input required ({shown[:200]}); pass --answer-exec CMD to answer it")
        env = {"ZMQAGENTS_TASK_ID": task_id.hex(), "ZMQAGENTS_CAPABILITY": self.capability, "ZMQAGENTS_LINE": str(number)}
        try:
            res = await run_command(command, (shown + "\n").encode(), timeout=self.opts["answer_timeout"], env=env)
        except CommandFailed as exc:
            raise NoAnswer(f"input required ({shown[:200]}); --answer-exec gave no answer: {exc}") from None
        return decode_output(res.stdout)

    def _print(self, obj: dict, *, bar: bool = True) -> None:
        _emit(obj)
        if self.tty and bar:
            now = time.monotonic()
            if now - self._bar_at >= 0.1:
                self._bar_at = now
                c = self.counts
                done = sum(c.values())
                sys.stderr.write(f"\r\033[K{done}/{self.total} done  {c['completed']} ok  "
                                 f"{done - c['completed']} not ok  {len(self.inflight)} running")
                sys.stderr.flush()

    def _exit_code(self) -> int:
        c = self.counts
        bad = sum(v for k, v in c.items() if k != "completed")
        if bad:
            click.echo("error: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items() if v and k != "completed")
                       + f" of {self.total} task(s)", err=True)
        if c["no_provider"]:
            return EXIT_NO_PROVIDER
        if c["failed"] or c["invalid"]:
            return EXIT_SOME_FAILED
        if c["timeout"]:
            return EXIT_TIMEOUT
        if c["rejected"]:
            return EXIT_REJECTED
        if c["canceled"]:
            return EXIT_CANCELED
        return EXIT_OK


async def _aiter(items):
    for item in items:
        yield item


@click.group("agents")
def agents_group() -> None:
    """Inspect the capabilities nodes serve: who offers what, and A2A agent cards."""


@agents_group.command("info")
@_common_node_options
@click.argument("capability")
@click.option("--bootstrap", multiple=True, help="Contact of a node in the mesh (providers are found in the DHT).")
@click.option("--to", "to", multiple=True, help="Contact of a node to ask directly instead (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per provider.")
def agents_info(key, listen, insecure, capability, bootstrap, to, as_json) -> None:
    """Who provides CAPABILITY, with its description, schemas, cost and concurrency."""
    if not bootstrap and not to:
        raise click.UsageError("say where to look: --bootstrap CONTACT or --to CONTACT")
    n = _make_node(key, listen, [], insecure, None, _contacts(bootstrap, hint="--bootstrap"))

    async def main() -> int:
        from .capability import describe
        from .runtime import Agents

        async with n:
            agents = Agents(n, lookup=_lookup_for(n, to))
            try:
                candidates = await agents.candidates(capability)
                if not candidates:
                    click.echo(f"error: no provider offers {capability!r}", err=True)
                    return EXIT_NO_PROVIDER
                for c in candidates:
                    try:
                        caps = {cap.name: cap for cap in await describe(n, c.node_id, timeout=5)}
                    except Exception as exc:
                        click.echo(f"warning: {c.node_id.hex()[:12]} did not describe itself: {exc}", err=True)
                        caps = {}
                    rec = caps[capability].to_record() if capability in caps else {"name": capability}
                    row = {"node_id": c.node_id.hex(), "rtt_ms": None if c.rtt is None else round(c.rtt * 1000, 3), **rec}
                    if as_json:
                        _emit(row)
                    else:
                        click.echo(f"{row['node_id'][:12]}  {capability}  max_concurrency={rec.get('max_concurrency', '?')} "
                                   f"cost={rec.get('cost_per_call', 0)}  rtt_ms={row['rtt_ms']}  {rec.get('description', '')}")
            finally:
                await agents.close()
        return EXIT_OK

    from ..cli import _run
    sys.exit(_run(main()))


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
@_common_node_options
@click.option("--bootstrap", multiple=True, help="Contact of a node in the mesh: list every capability in the mesh (DHT registry).")
@click.option("--to", "to", multiple=True, help="Contact of a node to ask directly instead (repeatable): list what it serves.")
@click.option("--all", "show_all", is_flag=True, help="Also list providers that are unreachable or dead (see States).")
@click.option("--probe-timeout", default=2.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds a listed node has to answer the liveness probe (probes run in parallel, 32 at once).")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per capability: {"name", "providers": [{"node_id", "contact", "state", "rtt_ms"}]}.')
def agents_ls(key, listen, insecure, bootstrap, to, show_all, probe_timeout, as_json) -> None:
    """List the capabilities in the mesh, each with the nodes that provide it and whether they are alive.

    \b
    With --bootstrap every agent in the mesh is found through the capability
    registry in the DHT (each agent lists its capability names under a well-known
    key, protocols/tasks.md 3.3), then each listed node is probed; with --to only
    the given nodes are asked. `zmqagents agents info CAPABILITY` shows one
    capability's full description.

    \b
    Example:
      zmqagents agents ls --bootstrap @/tmp/seed.contact
      zmqagents agents ls --bootstrap @/tmp/seed.contact --all --json | jq -c '.providers[] | [.node_id, .state]'
    """
    if not bootstrap and not to:
        raise click.UsageError("say where to look: --bootstrap CONTACT (the whole mesh) or --to CONTACT")
    targets = _contacts(to, hint="--to") if to else []
    n = _make_node(key, listen, [], insecure, None, _contacts(bootstrap, hint="--bootstrap"))

    async def main() -> int:
        from .registry import ALIVE, list_mesh
        from .capability import describe

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
                    return EXIT_NO_PROVIDER
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
            return EXIT_NO_PROVIDER if status == EXIT_OK else status
        if not as_json:
            click.echo(f"{'CAPABILITY':24} {'NODE':12}  {'STATE':11} {'RTT ms':>8}")
        for name in sorted(providers):
            rows = sorted(providers[name], key=lambda row: row[0].node_id)
            if as_json:
                _emit({"name": name, "providers": [
                    {"node_id": c.node_id.hex(), "contact": str(c), "state": state,
                     "rtt_ms": None if rtt is None else round(rtt * 1000, 3)} for c, state, rtt in rows]})
            else:
                for c, state, rtt in rows:
                    shown = "-" if rtt is None else f"{rtt * 1000:.2f}"
                    click.echo(f"{name:24} {c.node_id.hex()[:12]}  {state:11} {shown:>8}")
        return status

    from ..cli import _run
    sys.exit(_run(main()))


@agents_group.command("card")
@_common_node_options
@click.option("--to", "to", required=True, help="Contact of the node to describe.")
@click.option("--a2a", is_flag=True, help="Print an A2A Agent Card (required: the only format so far).")
@click.option("--url", default="", help="The URL an A2A client would use (a bridge's address); default: the node's endpoint.")
@click.option("--name", "card_name", help="Agent name in the card (default: the node id).")
def agents_card(key, listen, insecure, to, a2a, url, card_name) -> None:
    """Print a node's capabilities as an A2A Agent Card (JSON)."""
    if not a2a:
        raise click.UsageError("pass --a2a: the A2A Agent Card is the only card format")
    (target,) = _contacts([to], hint="--to")
    n = _make_node(key, listen, [], insecure)

    async def main() -> int:
        from .capability import agent_card
        from .capability import describe

        async with n:
            try:
                caps = await describe(n, target, timeout=5)
            except Exception as exc:
                click.echo(f"error: {target.node_id.hex()[:12]} did not answer: {exc}", err=True)
                return 1
        _emit(agent_card(card_name or target.node_id.hex()[:12], caps, url=url or target.endpoint))
        return EXIT_OK

    from ..cli import _run
    sys.exit(_run(main()))


@click.group("workflow")
def workflow_group() -> None:
    """Check and run workflow files: steps with dependencies, run as tasks across the mesh."""


WORKFLOW_CHECKS_HELP = """\b
Checks (all before any task runs; every problem is printed, not just the first):
  the file: keys and types, step names, selectors, depends_on, ${...}
    references, the optional [schemas.CAPABILITY] input/output tables, cycles
  types: each ${steps.A.output.F} against A's output schema (can it have F?)
    and against the step's input schema where it lands (do the types fit?);
    literal inputs and ${input...} (once the input is known) against the
    input schema. Schemas come from the first provider matching the step's
    selectors (task.describe), else from the file's [schemas] table. Where a
    schema is unknown nothing is said: no provider yet, none published, an
    open object.
"""


def _load_workflow(path: str):
    """The checked workflow file, or exit EXIT_WORKFLOW_INVALID printing every problem."""
    from .workflow import WorkflowError, load

    try:
        return load(path)
    except WorkflowError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(f"error: {path}: {len(exc.problems)} problem(s); nothing ran", err=True)
        sys.exit(EXIT_WORKFLOW_INVALID)


@workflow_group.command("run", epilog=WORKFLOW_CHECKS_HELP + """
\b
Exit codes:
  0  every step completed
  4  some step failed, was rejected or skipped
  7  the workflow failed its checks (each problem on stderr); nothing ran
  2  usage error
""")
@_common_node_options
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_text", help="The workflow's input (JSON), read by ${input...} references.")
@click.option("--bootstrap", multiple=True, help="Contact of a node in the mesh (providers are found in the DHT).")
@click.option("--to", "to", multiple=True, help="Contact of a provider to use directly instead (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per step instead of a table.")
def workflow_run(key, listen, insecure, path, input_text, bootstrap, to, as_json) -> None:
    """Run the workflow in PATH (TOML or JSON; see zmqagents/agents/workflow.py for the format).

    The file and the step inputs are checked first (see Checks below): a workflow that fails
    exits 7, printing every problem, before any task runs. Then each step runs as soon as its
    dependencies completed; per-step state and timing are printed when all are done.
    """
    wf = _load_workflow(path)
    if not bootstrap and not to:
        raise click.UsageError("say where the providers are: --bootstrap CONTACT or --to CONTACT")
    value = _parse_body(input_text) if input_text is not None else None
    n = _make_node(key, listen, [], insecure, None, _contacts(bootstrap, hint="--bootstrap"))

    async def main() -> int:
        from .runtime import Agents
        from .workflow import run as run_workflow
        from .workflow_check import check, gather_schemas

        async with n:
            agents = Agents(n, lookup=_lookup_for(n, to))
            try:
                problems = check(wf, await gather_schemas(agents, wf), value)
                if problems:
                    for problem in problems:
                        click.echo(f"error: {problem}", err=True)
                    click.echo(f"error: {path}: {len(problems)} problem(s); nothing ran", err=True)
                    return EXIT_WORKFLOW_INVALID
                results = await run_workflow(agents, wf, value)
            finally:
                await agents.close()
        ok = all(r.state == "completed" for r in results.values())
        for r in results.values():
            if as_json:
                _emit(r.to_json())
            else:
                detail = json.dumps(r.output, ensure_ascii=False) if r.state == "completed" else (r.error or {}).get("msg", "")
                click.echo(f"{r.name:20} {r.state:10} {r.started_ms:9.1f} ms +{r.elapsed_ms:8.1f} ms  {detail[:100]}")
        if not ok:
            click.echo(f"error: {sum(r.state != 'completed' for r in results.values())} of {len(results)} step(s) "
                       f"did not complete", err=True)
        return EXIT_OK if ok else EXIT_SOME_FAILED

    from ..cli import _run
    sys.exit(_run(main()))


@workflow_group.command("check", epilog=WORKFLOW_CHECKS_HELP + """
\b
Exit codes:
  0  no problem found
  7  the workflow failed its checks (each problem on stdout)
  2  usage error
""")
@_common_node_options
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_text", help="The workflow's input (JSON): ${input...} references are checked with it.")
@click.option("--bootstrap", multiple=True, help="Contact of a node in the mesh: fetch the capabilities' schemas from their providers.")
@click.option("--to", "to", multiple=True, help="Contact of a provider to ask for schemas directly instead (repeatable).")
@click.option("--json", "as_json", is_flag=True, help='One JSON object per problem: {"step", "at", "ref", "problem"}.')
def workflow_check(key, listen, insecure, path, input_text, bootstrap, to, as_json) -> None:
    """Check the workflow in PATH as `workflow run` would, without running anything.

    \b
    The capabilities' schemas are published by their providers, so to check
    types against them say where the mesh is (--bootstrap or --to). Without
    either, only the file itself and the schemas its [schemas] table declares
    are checked. A summary goes to stderr: how many steps had a provider and
    known schemas (unknown ones are not checked).

    \b
    Example:
      zmqagents workflow check flow.toml --bootstrap @/tmp/seed.contact --input '{"text": "hi"}'
    """
    from .workflow_check import UNKNOWN, file_schemas, gather_schemas

    wf = _load_workflow(path)
    value = _parse_body(input_text) if input_text is not None else UNKNOWN
    if not bootstrap and not to:
        click.echo("note: no --bootstrap/--to: checking with the file's [schemas] only", err=True)
        sys.exit(_report_check(path, wf, file_schemas(wf), value, as_json, asked_mesh=False))
    n = _make_node(key, listen, [], insecure, None, _contacts(bootstrap, hint="--bootstrap"))

    async def main() -> int:
        from .runtime import Agents

        async with n:
            agents = Agents(n, lookup=_lookup_for(n, to))
            try:
                schemas = await gather_schemas(agents, wf)
            finally:
                await agents.close()
        return _report_check(path, wf, schemas, value, as_json, asked_mesh=True)

    from ..cli import _run
    sys.exit(_run(main()))


def _report_check(path: str, wf, schemas: dict, value: Any, as_json: bool, *, asked_mesh: bool) -> int:
    """Print every problem (stdout) and a summary of what could be checked (stderr); the exit code."""
    from .workflow_check import UNKNOWN, check

    problems = check(wf, schemas, value)
    for problem in problems:
        if as_json:
            _emit(problem.to_json())
        else:
            click.echo(str(problem))
    steps = len(wf.steps)
    known = (f"input schema known for {sum(s.input is not None for s in schemas.values())}/{steps} step(s), "
             f"output schema for {sum(s.output is not None for s in schemas.values())}/{steps}")
    if asked_mesh:
        missing = [name for name, s in schemas.items() if not s.provider_found]
        known += f"; no provider found for {', '.join(missing)}" if missing else "; every step has a provider"
    if value is UNKNOWN:
        known += "; ${input...} not checked (no --input)"
    click.echo(f"{path}: {len(problems)} problem(s); {known}", err=True)
    return EXIT_WORKFLOW_INVALID if problems else EXIT_OK
