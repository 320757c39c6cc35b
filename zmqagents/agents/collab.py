"""Collaboration patterns over tasks: plain async functions on top of :meth:`Agents.request`.

Each takes the node's :class:`~zmqagents.agents.runtime.Agents` and capability names, runs tasks
across whatever providers the mesh has, and raises :class:`CollabError` (carrying the failed
task's outcome) when a task it depends on does not complete. They hold no state of their own.

* :func:`sequential` — a chain: each step's output is the next step's input.
* :func:`parallel` — one capability over many inputs, at most ``limit`` at once, results in order.
* :func:`map_reduce` — map every item, then one reduce task over the list of mapped outputs.
* :func:`vote` — the same input to ``n`` *different* providers; the majority output wins if it
  reaches the quorum.
* :func:`debate` — debaters answer in turn for ``rounds`` rounds, each seeing the transcript so
  far; a judge gets the whole transcript and gives the verdict.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..core import tasks as T
from ..core.tasks import TaskDone, TaskSpec
from ..errors import Error, InvalidArgument


class CollabError(Error):
    """A task the pattern needed did not complete; ``done`` is its outcome."""

    def __init__(self, what: str, done: TaskDone | None):
        self.done = done
        detail = "" if done is None else f": {done.state}" + (f" ({done.error.get('code')}: {done.error.get('msg')})"
                                                               if done.error else "")
        super().__init__(what + detail)


def _output(done: TaskDone, what: str) -> Any:
    if done.state != T.COMPLETED:
        raise CollabError(what, done)
    return done.output


async def sequential(agents, steps: Sequence[str], value: Any, **spec: Any) -> Any:
    """Run ``steps`` (capability names) in order, feeding each output to the next; the last output."""
    for i, capability in enumerate(steps):
        done = await agents.request(capability, value, **spec)
        value = _output(done, f"step {i + 1} ({capability})")
    return value


async def parallel(agents, capability: str, values: Iterable[Any], *, limit: int = 8, **spec: Any) -> list[TaskDone]:
    """``capability`` over every value, at most ``limit`` in flight; the outcomes in input order.

    Failures are returned, not raised: the caller decides what a partial result is worth.
    """
    slots = asyncio.Semaphore(limit)

    async def one(value: Any) -> TaskDone:
        async with slots:
            return await agents.request(capability, value, **spec)

    return list(await asyncio.gather(*(one(v) for v in values)))


async def map_reduce(agents, map_capability: str, reduce_capability: str, items: Iterable[Any], *,
                     limit: int = 8, **spec: Any) -> Any:
    """Map every item, then reduce the list of mapped outputs (in item order) with one task."""
    mapped = await parallel(agents, map_capability, items, limit=limit, **spec)
    outputs = [_output(done, f"map of item {i + 1} ({map_capability})") for i, done in enumerate(mapped)]
    return _output(await agents.request(reduce_capability, outputs, **spec), f"reduce ({reduce_capability})")


@dataclass(frozen=True)
class Vote:
    """The winning output, how many of the ``voters`` agreed, and every outcome."""

    output: Any
    votes: int
    voters: int
    outcomes: list[TaskDone]


def _canonical(output: Any) -> str:
    return json.dumps(output, sort_keys=True, default=repr)


async def vote(agents, capability: str, value: Any, *, n: int = 3, quorum: int | None = None,
               key: Callable[[Any], Any] = _canonical, **spec: Any) -> Vote:
    """Ask ``n`` different providers; the most common output (compared by ``key``) wins.

    ``quorum`` (default: a strict majority of ``n``) is how many must agree; fewer raises
    CollabError. Fewer than ``n`` providers offering the capability also raises.
    """
    quorum = n // 2 + 1 if quorum is None else quorum
    ranked = agents.rank(await agents.candidates(capability))
    if len(ranked) < n:
        raise CollabError(f"vote needs {n} providers of {capability!r}, the mesh has {len(ranked)}", None)
    futures = []
    for candidate in ranked[:n]:  # one voter per provider: a vote of one provider with itself is no vote
        _, done = await agents.submit(TaskSpec(capability, value, **spec), candidates=[candidate])
        futures.append(done)
    outcomes = list(await asyncio.gather(*futures))
    tally: Counter = Counter()
    first: dict[Any, Any] = {}
    for done in outcomes:
        if done.state == T.COMPLETED:
            k = key(done.output)
            tally[k] += 1
            first.setdefault(k, done.output)
    if not tally:
        raise CollabError(f"no voter for {capability!r} completed", outcomes[0])
    (best, count), = tally.most_common(1)
    if count < quorum:
        raise CollabError(f"no quorum for {capability!r}: the largest agreement is {count} of {n}, "
                          f"{quorum} needed", None)
    return Vote(first[best], count, n, outcomes)


async def debate(agents, debaters: Sequence[str], judge: str, question: Any, *, rounds: int = 2,
                 **spec: Any) -> dict:
    """Debaters (capabilities) answer in turn for ``rounds`` rounds; then the judge decides.

    Each debater gets ``{"question", "round", "transcript"}`` where the transcript lists every
    earlier turn as ``{"round", "speaker", "said"}``; the judge gets ``{"question", "transcript"}``.
    Returns ``{"verdict": judge output, "transcript": [...]}``.
    """
    if rounds < 1 or not debaters:
        raise InvalidArgument("a debate needs at least one round and one debater")
    transcript: list[dict] = []
    for r in range(1, rounds + 1):
        for speaker in debaters:
            done = await agents.request(speaker, {"question": question, "round": r, "transcript": list(transcript)},
                                        **spec)
            transcript.append({"round": r, "speaker": speaker, "said": _output(done, f"round {r}, {speaker}")})
    done = await agents.request(judge, {"question": question, "transcript": transcript}, **spec)
    return {"verdict": _output(done, f"judge ({judge})"), "transcript": transcript}
