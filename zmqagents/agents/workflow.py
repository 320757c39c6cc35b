"""Workflows: steps with dependencies run as tasks across the mesh, checked before anything runs.

A workflow file is TOML or JSON::

    name = "digest"

    [[steps]]
    name = "fetch"
    agent = "capability:fetch"
    input = {url = "${input.url}"}

    [[steps]]
    name = "summarize"
    agent = ["capability:summarize", "tag:small"]    # every selector must hold
    input = {text = "${steps.fetch.output.text}"}     # implies depends_on = ["fetch"]
    retries = 2
    timeout = 60

Step keys: ``name`` (letters, digits, ``_``, ``-``), ``agent`` (selectors: one
``capability:NAME``, plus optional ``tag:TAG`` and ``node:HEX-PREFIX`` filters on its providers),
``input`` (any JSON; strings may hold references), ``depends_on`` (step names), ``retries``
(extra attempts after a failure, default 0), ``timeout`` (seconds per attempt), ``idempotent``.

Collaboration steps (``mode``, default ``"task"``: one task as above) run one of the patterns of
``collab.py`` as a single step, over capabilities named by ``capability:NAME`` selectors:

* ``mode = "sequential"``, ``chain = ["capability:draft", "capability:polish"]``: the input goes
  to the first, each output to the next; the step's output is the last one.
* ``mode = "parallel"``, ``agent``, ``limit`` (default 8): the input is an array; each item is a
  task; the output is the array of outputs (the step fails if any task does).
* ``mode = "map-reduce"``, ``agent`` (the map), ``reduce = "capability:R"``, ``limit``: the input is
  an array; the reduce task gets the array of mapped outputs; its output is the step's.
* ``mode = "vote"``, ``agent``, ``voters`` (default 3), ``quorum`` (default a majority): the same
  input to that many distinct providers; the output is ``{"output", "votes", "voters"}``.
* ``mode = "debate"``, ``debaters = [...]``, ``judge``, ``rounds`` (default 2): the input is the
  question; the output is ``{"verdict", "transcript"}``.

``retries``, ``timeout`` (per task) and ``idempotent`` apply to collaboration steps too (a retry
runs the whole pattern again); ``tag:`` and ``node:`` selectors only narrow a plain task step.

References: ``${input.A.B}`` reads the workflow's input, ``${steps.NAME.output.A.B}`` a step's
output (``${steps.NAME.output}`` all of it). A string that is exactly one reference becomes the
referenced value, whatever its type; a reference inside a longer string is replaced by its text
(JSON for non-strings). A reference to a step makes it a dependency.

An optional ``schemas`` table declares the input and output JSON schemas of capabilities whose
providers publish none (a shell agent started without ``--output-schema``, say)::

    [schemas.count]
    output = {type = "object", properties = {n = {type = "integer"}}, required = ["n"]}

:func:`load` checks the file itself and reports every problem it finds at once (each naming its
step): unknown keys and wrong types, duplicate or unknown step names, malformed selectors and
references, bad schemas, and cycles (the error names one). ``workflow_check.py`` then checks the
references and literal inputs against the capabilities' schemas, still before any task runs.
Steps run as soon as their dependencies completed, so independent branches run in parallel; a
step whose dependency did not complete is ``skipped``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import tasks as T
from .schema import SchemaError, check_schema
from ..errors import Error

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REF_RE = re.compile(r"\$\{([^}]*)\}")
STEP_KEYS = {"name", "agent", "input", "depends_on", "retries", "timeout", "idempotent", "mode", "chain", "reduce",
             "limit", "voters", "quorum", "debaters", "judge", "rounds"}
MODES = ("task", "sequential", "parallel", "map-reduce", "vote", "debate")
# per mode: the keys that must be there, and those that may be
MODE_KEYS = {"task": ({"agent"}, set()), "sequential": ({"chain"}, set()), "parallel": ({"agent"}, {"limit"}),
             "map-reduce": ({"agent", "reduce"}, {"limit"}), "vote": ({"agent"}, {"voters", "quorum"}),
             "debate": ({"debaters", "judge"}, {"rounds"})}
MAX_STEPS = 1000


class WorkflowError(Error, ValueError):
    """The workflow file is not valid: ``problems`` lists every problem found, each naming its step."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Step:
    name: str
    capability: str
    tags: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()  # hex prefixes of allowed node ids
    input: Any = None
    depends_on: tuple[str, ...] = ()
    retries: int = 0
    timeout: float | None = None
    idempotent: bool = False
    mode: str = "task"
    chain: tuple[str, ...] = ()  # sequential: capabilities in order
    reduce: str | None = None  # map-reduce
    debaters: tuple[str, ...] = ()  # debate (capability is the judge)
    limit: int = 8  # parallel, map-reduce: tasks in flight
    voters: int = 3
    quorum: int | None = None
    rounds: int = 2

    def capabilities(self) -> list[str]:
        """Every capability the step runs, the main one (``capability``) first."""
        names = [self.capability, *self.chain, *([self.reduce] if self.reduce else []), *self.debaters]
        return list(dict.fromkeys(names))


@dataclass
class Workflow:
    name: str
    steps: dict[str, Step]
    order: list[str]  # a topological order
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)  # capability -> {"input"?, "output"?}


@dataclass
class StepResult:
    name: str
    state: str  # completed, failed, rejected, canceled, or skipped
    output: Any = None
    error: dict | None = None
    provider: str | None = None
    attempts: int = 0
    started_ms: float = 0.0
    elapsed_ms: float = 0.0

    def to_json(self) -> dict:
        out: dict[str, Any] = {"step": self.name, "state": self.state}
        if self.state == T.COMPLETED:
            out["output"] = self.output
        elif self.error is not None:
            out["error"] = self.error
        out.update(provider=self.provider, attempts=self.attempts, started_ms=round(self.started_ms, 3),
                   elapsed_ms=round(self.elapsed_ms, 3))
        return out


def load(path: str | Path) -> Workflow:
    """Read and check a workflow file (``.toml``, else JSON)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise WorkflowError(f"cannot read {p}: {exc.strerror}") from None
    if p.suffix == ".toml":
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise WorkflowError(f"{p}: not valid TOML: {exc}") from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise WorkflowError(f"{p}: not valid JSON: {exc}") from None
    return parse(doc)


def parse(doc: Any) -> Workflow:
    """Check a workflow document (as parsed from TOML/JSON) and return it ready to run.

    Raises WorkflowError listing every problem found (a cycle is looked for once the rest is sound).
    """
    if not isinstance(doc, dict):
        raise WorkflowError("a workflow is a table/object with a 'steps' array")
    problems: list[str] = []
    name = doc.get("name", "workflow")
    if not isinstance(name, str):
        problems.append("'name' must be a string")
    schemas = _schemas(doc.get("schemas"), problems)
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise WorkflowError(problems + ["'steps' must be a non-empty array of tables"])
    if len(raw_steps) > MAX_STEPS:
        raise WorkflowError(problems + [f"at most {MAX_STEPS} steps"])
    # names of every step, even one with problems, so its dependents are not also told it is missing
    declared = {raw["name"] for raw in raw_steps if isinstance(raw, dict) and isinstance(raw.get("name"), str)}
    steps: dict[str, Step] = {}
    for i, raw in enumerate(raw_steps, 1):
        step = _step(raw, i, problems)
        if step is None:
            continue
        if step.name in steps:
            problems.append(f"step {i}: the name {step.name!r} is used twice")
            continue
        steps[step.name] = step
    for step in steps.values():
        deps = list(step.depends_on)
        for ref in _refs(step.input):
            parts = ref.split(".")
            if parts[0] == "input":
                continue
            if parts[0] != "steps" or len(parts) < 3 or parts[2] != "output":
                problems.append(f"step {step.name!r}: bad reference ${{{ref}}} "
                                "(use ${input.FIELD} or ${steps.NAME.output.FIELD})")
            elif parts[1] == step.name:
                problems.append(f"step {step.name!r}: reference ${{{ref}}} names the step itself")
            elif parts[1] not in declared:
                problems.append(f"step {step.name!r}: reference ${{{ref}}} names no step {parts[1]!r}")
            elif parts[1] not in deps:
                deps.append(parts[1])
        for dep in deps:
            if dep not in declared:
                problems.append(f"step {step.name!r}: depends_on names no step {dep!r}")
        step.depends_on = tuple(deps)
    if problems:
        raise WorkflowError(problems)
    return Workflow(name, steps, _topological(steps), schemas)


def _schemas(raw: Any, problems: list[str]) -> dict[str, dict[str, Any]]:
    """The ``schemas`` table: capability name -> {"input": schema, "output": schema} (either optional)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append("'schemas' must be a table of CAPABILITY = {input = SCHEMA, output = SCHEMA}")
        return {}
    out: dict[str, dict[str, Any]] = {}
    for cap, entry in raw.items():
        if not isinstance(entry, dict) or not entry or set(entry) - {"input", "output"}:
            problems.append(f"schemas.{cap}: must be a table with 'input' and/or 'output' (JSON schemas)")
            continue
        for kind, schema in entry.items():
            try:
                check_schema(schema, strict=True)
            except SchemaError as exc:
                problems.append(f"schemas.{cap}.{kind}: {exc}")
                continue
            out.setdefault(cap, {})[kind] = schema
    return out


def _step(raw: Any, i: int, problems: list[str]) -> Step | None:
    """The step, or None after adding each of its problems to ``problems``."""
    if not isinstance(raw, dict):
        problems.append(f"step {i}: must be a table/object")
        return None
    found: list[str] = []
    unknown = set(raw) - STEP_KEYS
    if unknown:
        found.append(f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(STEP_KEYS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(f"step {i}: 'name' must be 1..64 letters, digits, _ or -")
        problems.extend(f"step {i}: {p}" for p in found)
        return None
    mode = raw.get("mode", "task")
    if mode not in MODES:
        found.append(f"'mode' must be one of {', '.join(MODES)}")
        mode = "task"
    needed, optional = MODE_KEYS[mode]
    mode_keys = {k for keys in MODE_KEYS.values() for k in keys[0] | keys[1]} - {"agent"}
    for key in sorted(needed - set(raw)):
        found.append(f"mode {mode!r} needs {key!r}")
    for key in sorted((set(raw) & mode_keys) - needed - optional):
        found.append(f"{key!r} does not apply to mode {mode!r}")
    if mode in ("sequential", "debate") and "agent" in raw:
        found.append(f"'agent' does not apply to mode {mode!r} (it names its capabilities in "
                     f"{'chain' if mode == 'sequential' else 'debaters and judge'})")
    capability, tags, nodes = _selectors(raw.get("agent"), found) if "agent" in raw else (None, [], [])
    if mode != "task" and (tags or nodes):
        found.append("tag: and node: selectors only narrow a plain task step (mode = \"task\")")
    extra: dict[str, Any] = {}
    if mode == "sequential":
        chain = _capability_list(raw.get("chain"), "chain", found)
        extra["chain"] = tuple(chain)
        capability = chain[0] if chain else None
    elif mode == "debate":
        extra["debaters"] = tuple(_capability_list(raw.get("debaters"), "debaters", found))
        capability = _one_capability(raw.get("judge"), "judge", found)
    if mode == "map-reduce":
        extra["reduce"] = _one_capability(raw.get("reduce"), "reduce", found)
    for key, low, high in (("limit", 1, 4096), ("voters", 1, 100), ("quorum", 1, 100), ("rounds", 1, 100)):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                found.append(f"{key!r} must be an integer {low}..{high}")
            else:
                extra[key] = value
    if "quorum" in extra and extra["quorum"] > extra.get("voters", 3):
        found.append("'quorum' cannot exceed 'voters'")
    deps = raw.get("depends_on", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        found.append("'depends_on' must be an array of step names")
        deps = []
    retries = raw.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        found.append("'retries' must be an integer 0..100")
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        found.append("'timeout' must be a positive number of seconds")
    idempotent = raw.get("idempotent", False)
    if not isinstance(idempotent, bool):
        found.append("'idempotent' must be true or false")
    for ref in _refs(raw.get("input")):
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", ref):
            found.append(f"malformed reference ${{{ref}}}")
    if found:
        problems.extend(f"step {name!r}: {p}" for p in found)
        return None
    assert capability is not None  # every way to a missing capability added a problem above
    return Step(name, capability, tuple(tags), tuple(nodes), raw.get("input"), tuple(deps), retries,
                None if timeout is None else float(timeout), idempotent, mode, **extra)


def _selectors(agent: Any, found: list[str]) -> tuple[str | None, list[str], list[str]]:
    """An ``agent`` value: (capability, tags, node prefixes), each problem added to ``found``."""
    selectors = [agent] if isinstance(agent, str) else agent
    capability, tags, nodes = None, [], []
    if not isinstance(selectors, list) or not selectors or not all(isinstance(s, str) for s in selectors):
        found.append("'agent' must be a selector string or an array of them")
        selectors = []
    for sel in selectors:
        kind, _, value = sel.partition(":")
        if not value:
            found.append(f"selector {sel!r} must be capability:NAME, tag:TAG or node:ID")
        elif kind == "capability":
            if capability is not None:
                found.append("more than one capability selector")
            capability = value
        elif kind == "tag":
            tags.append(value)
        elif kind == "node":
            if not re.fullmatch(r"[0-9a-fA-F]{4,64}", value):
                found.append(f"node selector {sel!r} needs a hex node id (prefix of 4+ digits)")
            nodes.append(value.lower())
        else:
            found.append(f"unknown selector kind {kind!r} (capability, tag, node)")
    if capability is None and selectors:
        found.append("needs a capability:NAME selector (tag and node only narrow its providers)")
    return capability, tags, nodes


def _one_capability(value: Any, key: str, found: list[str]) -> str | None:
    if isinstance(value, str) and value.startswith("capability:") and len(value) > len("capability:"):
        return value.partition(":")[2]
    found.append(f"{key!r} must be a capability:NAME selector")
    return None


def _capability_list(value: Any, key: str, found: list[str]) -> list[str]:
    if not isinstance(value, list) or not value:
        found.append(f"{key!r} must be a non-empty array of capability:NAME selectors")
        return []
    names = [_one_capability(v, key, found) for v in value]
    return [n for n in names if n is not None]


def _refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return REF_RE.findall(value)
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    return []


def _topological(steps: dict[str, Step]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise WorkflowError("the steps form a cycle: " + " -> ".join(cycle))
        state[name] = 1
        for dep in steps[name].depends_on:
            visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for name in steps:
        visit(name, [])
    return order


def resolve(value: Any, context: dict) -> Any:
    """``value`` with every reference replaced from ``context`` ({"input": ..., "steps": {name: {"output"}}})."""
    if isinstance(value, str):
        whole = REF_RE.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), context)

        def text(m: re.Match) -> str:
            v = _lookup(m.group(1), context)
            return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

        return REF_RE.sub(text, value)
    if isinstance(value, list):
        return [resolve(v, context) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, context) for k, v in value.items()}
    return value


def _lookup(ref: str, context: dict) -> Any:
    cur: Any = context
    for part in ref.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise WorkflowError(f"reference ${{{ref}}} does not resolve: no {part!r} there")
    return cur


async def run(agents, workflow: Workflow, value: Any = None) -> dict[str, StepResult]:
    """Run every step as soon as its dependencies completed; returns each step's result."""
    start = time.perf_counter()
    results: dict[str, StepResult] = {}
    done_events = {name: asyncio.Event() for name in workflow.steps}
    context: dict[str, Any] = {"input": value, "steps": {}}

    async def one(step: Step) -> None:
        try:
            for dep in step.depends_on:
                await done_events[dep].wait()
            failed = [d for d in step.depends_on if results[d].state != T.COMPLETED]
            if failed:
                results[step.name] = StepResult(step.name, "skipped", error={
                    "code": "dependency", "msg": f"did not run: {', '.join(failed)} did not complete"})
                return
            results[step.name] = await _run_step(agents, step, context, start)
            if results[step.name].state == T.COMPLETED:
                context["steps"][step.name] = {"output": results[step.name].output}
        finally:
            done_events[step.name].set()

    await asyncio.gather(*(one(workflow.steps[name]) for name in workflow.order))
    return {name: results[name] for name in workflow.order}


async def _run_step(agents, step: Step, context: dict, start: float) -> StepResult:
    began = time.perf_counter()
    result = StepResult(step.name, T.FAILED, started_ms=(began - start) * 1000)
    try:
        task_input = resolve(step.input, context)
    except WorkflowError as exc:
        result.error = {"code": "reference", "msg": str(exc)}
        return result
    for attempt in range(step.retries + 1):
        if step.mode != "task":
            result.attempts += 1
            result.state, result.output, result.error = await run_collab(agents, step, task_input)
            if result.state == T.COMPLETED:
                break
            continue
        try:
            candidates = await _select(agents, step)
        except Exception as exc:
            result.error = {"code": T.E_NO_PROVIDER, "msg": f"provider lookup failed: {exc}"}
            continue
        from ..core.tasks import TaskSpec

        try:
            _, fut = await agents.submit(TaskSpec(step.capability, task_input, deadline=step.timeout,
                                                  idempotent=step.idempotent), candidates=candidates)
        except ValueError as exc:  # the input fails the capability's schema: retrying cannot help
            result.error = {"code": "bad-input", "msg": str(exc)}
            break
        done = await fut
        result.attempts += done.attempts
        result.provider = done.provider.hex() if done.provider else None
        result.state = done.state
        result.output = done.output
        result.error = done.error
        if done.state == T.COMPLETED:
            break
    result.elapsed_ms = (time.perf_counter() - began) * 1000
    return result


async def run_collab(agents, step: Step, value: Any) -> tuple[str, Any, dict | None]:
    """One run of a collaboration step's pattern: (state, output, error). A failed task's own state
    (failed, rejected, canceled) becomes the step's, with its error."""
    from . import collab

    spec: dict[str, Any] = {"deadline": step.timeout, "idempotent": step.idempotent}
    try:
        if step.mode in ("parallel", "map-reduce") and not isinstance(value, list):
            return T.FAILED, None, {"code": "bad-input",
                                    "msg": f"mode {step.mode!r} needs an array input, got {type(value).__name__}"}
        if step.mode == "sequential":
            return T.COMPLETED, await collab.sequential(agents, step.chain, value, **spec), None
        if step.mode == "parallel":
            outcomes = await collab.parallel(agents, step.capability, value, limit=step.limit, **spec)
            for i, done in enumerate(outcomes):
                if done.state != T.COMPLETED:
                    raise collab.CollabError(f"item {i + 1} ({step.capability})", done)
            return T.COMPLETED, [done.output for done in outcomes], None
        if step.mode == "map-reduce":
            assert step.reduce is not None
            return T.COMPLETED, await collab.map_reduce(agents, step.capability, step.reduce, value,
                                                        limit=step.limit, **spec), None
        if step.mode == "vote":
            won = await collab.vote(agents, step.capability, value, n=step.voters, quorum=step.quorum, **spec)
            return T.COMPLETED, {"output": won.output, "votes": won.votes, "voters": won.voters}, None
        return T.COMPLETED, await collab.debate(agents, step.debaters, step.capability, value, rounds=step.rounds,
                                                **spec), None
    except collab.CollabError as exc:
        state = exc.done.state if exc.done is not None and exc.done.state != T.COMPLETED else T.FAILED
        code = (exc.done.error or {}).get("code", "collab") if exc.done is not None else "collab"
        return state, None, {"code": code, "msg": str(exc)}
    except ValueError as exc:  # an input that fails a capability's schema
        return T.FAILED, None, {"code": "bad-input", "msg": str(exc)}
    except Exception as exc:  # the provider lookup failed (the DHT did not answer)
        return T.FAILED, None, {"code": T.E_NO_PROVIDER, "msg": f"provider lookup failed: {exc}"}


async def _select(agents, step: Step) -> list:
    candidates = await agents.candidates(step.capability)
    if step.nodes:
        candidates = [c for c in candidates if any(c.node_id.hex().startswith(p) for p in step.nodes)]
    if step.tags:
        keep = []
        for c in candidates:
            cap = await agents.describe(step.capability, [c])
            if cap is not None and all(t in cap.tags for t in step.tags):
                keep.append(c)
        candidates = keep
    return candidates
