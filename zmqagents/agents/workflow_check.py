"""Workflow type checks: step inputs against the capabilities' schemas, before any task runs.

``workflow.load`` checks a workflow file on its own (structure, step references, cycles). What it
cannot know is what each capability takes and gives: that is in their JSON schemas, which the
providers publish (``task.describe``, see :func:`gather_schemas`) or the workflow file declares
(its ``schemas`` table; a provider's schema wins where both exist). With those, :func:`check`
looks at every step's input:

- each ``${steps.A.output.F}`` reference: can A's output have the field F? Not if the value on
  the way is not an object, or its schema lists its properties with ``additionalProperties:
  false`` and F is not one of them. Does what is there fit the place the reference puts it in
  the step's input (types, and the properties and items both schemas declare, schema.conflicts)?
- each literal part of the input, and each ``${input...}`` reference once the workflow input is
  known: does it validate against the input schema at that place? Does the reference resolve?
- a string with references inside it is a string: does the input schema take one there?

Where a schema is unknown (no provider found now, a provider that publishes none and no
``schemas`` entry, an open object, ``{}``) nothing is said: the check never reports a problem a
real run might not have. It reports every problem, not only the first.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from .schema import _OPAQUE, SchemaError, _escape, _says_nothing, conflicts, describe_types, follow, types_of, validate
from .workflow import REF_RE, Step, Workflow, WorkflowError, _lookup, _refs, _select

log = logging.getLogger(__name__)

UNKNOWN = object()  # the workflow's input is not known (checking without one): ${input...} is not checked


@dataclass(frozen=True)
class Schemas:
    """What is known of one step's capability: its input and output schemas (None: unknown)."""

    input: Any = None
    output: Any = None
    provider_found: bool = False  # some provider matched the step's selectors when the schemas were gathered
    # a collaboration step's hand-overs between its capabilities: (from, to, what from gives, what to takes)
    links: tuple[tuple[str, str, Any, Any], ...] = ()


@dataclass(frozen=True)
class Problem:
    """One reason the workflow cannot run as written."""

    step: str
    message: str
    ref: str | None = None  # the reference as written, "${steps.a.output.n}"
    at: str | None = None  # JSON pointer into the step's input ("" is the whole input)

    def __str__(self) -> str:
        where = f"step {self.step!r}"
        if self.at is not None:
            where += f", input {self.at or '(whole)'}"
        return f"{where}: {self.ref + ': ' if self.ref else ''}{self.message}"

    def to_json(self) -> dict:
        return {"step": self.step, "at": self.at, "ref": self.ref, "problem": self.message}


def file_schemas(workflow: Workflow) -> dict[str, Schemas]:
    """Each step's schemas as the workflow file's ``schemas`` table declares them (no mesh asked)."""
    return {name: _compose(step, {c: _merged(workflow, c, None, False) for c in step.capabilities()})
            for name, step in workflow.steps.items()}


async def gather_schemas(agents, workflow: Workflow) -> dict[str, Schemas]:
    """Each step's schemas: its capabilities as the first provider matching the step's selectors
    describes them (``Agents.describe``, cached, so the run that follows asks nobody twice), else the
    workflow file's ``schemas`` entry, else unknown; a collaboration step's are composed from its
    capabilities' (:func:`_compose`). A lookup that fails leaves the schemas unknown."""

    async def one(step: Step, name: str) -> Schemas:
        cap, found = None, False
        try:
            candidates = await _select(agents, step) if name == step.capability else await agents.candidates(name)
            found = bool(candidates)
            if found:
                cap = await agents.describe(name, candidates)
        except Exception as exc:
            log.info("step %s: could not look up the schemas of %r: %s", step.name, name, exc)
        return _merged(workflow, name, cap, found)

    async def step_schemas(step: Step) -> Schemas:
        names = step.capabilities()
        found = await asyncio.gather(*(one(step, name) for name in names))
        return _compose(step, dict(zip(names, found)))

    steps = list(workflow.steps.values())
    return dict(zip((s.name for s in steps), await asyncio.gather(*(step_schemas(s) for s in steps))))


def _merged(workflow: Workflow, name: str, cap, found: bool) -> Schemas:
    declared = workflow.schemas.get(name, {})
    published_in = None if cap is None else cap.input_schema
    published_out = None if cap is None else cap.output_schema
    return Schemas(published_in if published_in is not None else declared.get("input"),
                   published_out if published_out is not None else declared.get("output"), found)


def _array(items: Any) -> dict:
    return {"type": "array"} if items is None else {"type": "array", "items": items}


def _compose(step: Step, caps: dict[str, Schemas]) -> Schemas:
    """A step's input and output schemas from its capabilities', by mode: what its pattern takes and
    gives (collab.py). ``links`` are the hand-overs inside the pattern, checked like references."""
    main = caps[step.capability]
    found = all(s.provider_found for s in caps.values())
    if step.mode == "task":
        return main
    if step.mode == "sequential":
        first, last = caps[step.chain[0]], caps[step.chain[-1]]
        links = tuple((a, b, caps[a].output, caps[b].input) for a, b in zip(step.chain, step.chain[1:]))
        return Schemas(first.input, last.output, found, links)
    if step.mode == "parallel":
        return Schemas(_array(main.input), _array(main.output), found)
    if step.mode == "map-reduce":
        assert step.reduce is not None
        reduce = caps[step.reduce]
        link = (step.capability, step.reduce, None if main.output is None else _array(main.output), reduce.input)
        return Schemas(_array(main.input), reduce.output, found, (link,))
    if step.mode == "vote":
        out = {"type": "object", "required": ["output", "votes", "voters"], "additionalProperties": False,
               "properties": {"output": True if main.output is None else main.output,
                              "votes": {"type": "integer"}, "voters": {"type": "integer"}}}
        return Schemas(main.input, out, found)
    out = {"type": "object", "required": ["verdict", "transcript"], "additionalProperties": False,
           "properties": {"verdict": True if main.output is None else main.output, "transcript": {"type": "array"}}}
    return Schemas(None, out, found)  # debate: any question


def check(workflow: Workflow, schemas: dict[str, Schemas], given: Any = UNKNOWN) -> list[Problem]:
    """Every problem of ``workflow``'s step inputs against ``schemas`` (from :func:`gather_schemas` or
    :func:`file_schemas`); ``given`` is the workflow's input, or UNKNOWN. Empty when none is found."""
    problems: list[Problem] = []
    for name in workflow.order:
        _StepCheck(workflow, schemas, workflow.steps[name], problems).run(given)
    return problems


@dataclass(frozen=True)
class _StepRef:
    """A string that is exactly one step reference: the referenced value itself takes its place."""

    text: str
    step: str
    field: tuple[str, ...]


@dataclass(frozen=True)
class _Text:
    """A string with references inside: a string, whatever they hold."""

    text: str


@dataclass(frozen=True)
class _Opaque:
    """A value that is not known before the run (``${input...}`` without the input)."""


def _marked(value: Any) -> bool:
    """Whether ``value`` holds anything not known before the run."""
    if isinstance(value, (_StepRef, _Text, _Opaque)):
        return True
    if isinstance(value, list):
        return any(_marked(v) for v in value)
    if isinstance(value, dict):
        return any(_marked(v) for v in value.values())
    return False


class _StepCheck:
    def __init__(self, workflow: Workflow, schemas: dict[str, Schemas], step: Step, problems: list[Problem]):
        self.workflow = workflow
        self.schemas = schemas
        self.step = step
        self.problems = problems
        self.known = schemas.get(step.name, Schemas())

    def problem(self, message: str, *, ref: str | None = None, at: str | None = None) -> None:
        self.problems.append(Problem(self.step.name, message, ref, at))

    def run(self, given: Any) -> None:
        for source, target, gives, takes in self.known.links:
            if gives is not None and takes is not None:
                for conflict in conflicts(gives, takes):
                    sub, _, what = conflict.partition(": ")
                    self.problem(f"{source!r} hands {target!r} what it cannot take: {what} "
                                 f"(at {'the whole value' if sub == '(value)' else sub})")
        template = self.prepare(self.step.input, given)
        for ref in _refs(self.step.input):
            parts = ref.split(".")
            if parts[0] == "steps":
                self.source(_StepRef(f"${{{ref}}}", parts[1], tuple(parts[3:])), report=True)
        self.fit(template, self.known.input, "")

    # -- the input with what is known before the run filled in ---------------------------------------

    def prepare(self, value: Any, given: Any) -> Any:
        if isinstance(value, str):
            whole = REF_RE.fullmatch(value)
            if whole:
                ref = whole.group(1)
                parts = ref.split(".")
                if parts[0] != "input":
                    return _StepRef(value, parts[1], tuple(parts[3:]))
                return self.input_value(ref, given)
            refs = REF_RE.findall(value)
            if not refs:
                return value
            for ref in refs:
                if ref.split(".")[0] == "input":
                    self.input_value(ref, given)  # only to report one that does not resolve
            return _Text(value)
        if isinstance(value, list):
            return [self.prepare(v, given) for v in value]
        if isinstance(value, dict):
            return {k: self.prepare(v, given) for k, v in value.items()}
        return value

    def input_value(self, ref: str, given: Any) -> Any:
        if given is UNKNOWN:
            return _Opaque()
        try:
            return _lookup(ref, {"input": given})
        except WorkflowError as exc:
            why = str(exc).rpartition("does not resolve: ")[2]
            self.problem(f"does not resolve in the workflow's input ({why})", ref=f"${{{ref}}}")
            return _Opaque()

    # -- references to other steps' outputs ------------------------------------------------------------

    def source(self, ref: _StepRef, *, report: bool = False) -> Any:
        """The schema of what ``ref`` reads (None when unknown); with ``report``, say if it cannot exist."""
        src = self.workflow.steps[ref.step]
        schema, why = follow(self.schemas.get(ref.step, Schemas()).output, list(ref.field),
                             root=f"the output of step {ref.step!r} ({src.capability!r})")
        if why and report:
            self.problem(why, ref=ref.text)
        return schema

    # -- fitting the input to the input schema -------------------------------------------------------

    def fit(self, value: Any, schema: Any, at: str) -> None:
        cap = self.step.capability
        if isinstance(value, _Opaque) or _says_nothing(schema):
            return  # references inside were checked for existence in run(); nothing to fit them to
        if schema is False:
            self.problem(f"no value is allowed here (the input schema of {cap!r})", at=at)
            return
        if isinstance(value, _StepRef):
            source = self.source(value)
            if source is not None:
                src_cap = self.workflow.steps[value.step].capability
                for conflict in conflicts(source, schema):
                    sub, _, what = conflict.partition(": ")
                    self.problem(f"{what} (the output schema of {src_cap!r} against the input schema of {cap!r})",
                                 ref=value.text, at=at + ("" if sub == "(value)" else sub))
            return
        if not _marked(value):
            try:
                errors = validate(schema, value, at)
            except SchemaError:  # a $ref out of the part of the schema taken here: cannot tell
                return
            for error in errors:
                where, _, what = error.partition(": ")
                self.problem(f"{what} (the input schema of {cap!r})", at="" if where == "(input)" else where)
            return
        if isinstance(schema, dict) and any(k in schema for k in _OPAQUE):
            return  # combinations, references, patterns: what a marked value may be there is not worked out
        types = types_of(schema)
        if isinstance(value, _Text):
            if types is not None and "string" not in types:
                self.problem(f"text {value.text!r:.80} where {describe_types(types)} is expected "
                             f"(the input schema of {cap!r})", at=at)
            return
        if isinstance(value, list):
            if types is not None and "array" not in types:
                self.problem(f"an array where {describe_types(types)} is expected (the input schema of {cap!r})", at=at)
                return
            if "minItems" in schema and len(value) < schema["minItems"]:
                self.problem(f"fewer than {schema['minItems']} items (the input schema of {cap!r})", at=at)
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                self.problem(f"more than {schema['maxItems']} items (the input schema of {cap!r})", at=at)
            for i, item in enumerate(value):
                self.fit(item, schema.get("items"), f"{at}/{i}")
            return
        # a dict holding references
        if types is not None and "object" not in types:
            self.problem(f"an object where {describe_types(types)} is expected (the input schema of {cap!r})", at=at)
            return
        for name in schema.get("required", ()):
            if name not in value:
                self.problem(f"missing required property {name!r} (the input schema of {cap!r})", at=at)
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = f"{at}/{_escape(key)}"
            if key in props:
                self.fit(item, props[key], sub)
            elif extra is False:
                self.problem(f"property not allowed (the input schema of {cap!r})", at=sub)
            elif isinstance(extra, dict):
                self.fit(item, extra, sub)
