"""Per-pair timelines of an overlay run: why one observer declared one subject dead, or was slow to
hold it alive again.

A run's summary says *that* a pair was slow to revive or was a false positive; this says *why*, from
what the two nodes sent each other and what the observer reported. It is an instrument of the
simulator, off by default, and it only reads: it draws no random number and calls no core method that
changes state, so a traced run is the same run (same sends, same figures) as an untraced one.

For each traced (observer ``i``, subject ``j``) pair the timeline holds, in virtual time order:

* every message between ``i`` and ``j``, both ways, with its fate (``delivered +D ms``, ``lost``, or
  ``cut`` by the partition) and what it is: a sync ping (anti-entropy pull), a check ping (``i``
  holds ``j`` as a tombstone), a probe, an ack, a gossip; the rumors it carries about ``i`` or ``j``;
* the indirect probes of ``j`` that ``i`` asked for (``swim.ping_req`` to a helper ``h``), and while
  each is open, the helper's ping of ``j``, ``j``'s answer and the helper's ack or nack to ``i``;
* rumors about ``j`` that reach ``i`` from anyone else (a suspicion, a death, an alive hint);
* what ``i`` reported about ``j`` (``Suspect``, ``Failed``, ``Alive``; the table's ``TableAdded`` /
  ``TableDropped``) and ``j``'s own ``Refuted``;
* with each entry ``i`` sent or reported, how ``i`` held ``j`` then (alive, suspect, dead, none) and
  ``i``'s local health multiplier (Lifeguard's LHM stretches its timers);
* ``first_heard_across``: the first message ``i`` received from across the cut after the heal (how
  and when ``i`` could first learn that the partition healed).

Bounds: at most :data:`MAX_PAIRS` pairs, ``limit`` entries each (the rest counted in ``dropped``),
and an optional time window. Pairs are named by node number (``zmqagents sim --trace-pair I:J``);
``--trace-slowest K`` lists the slowest revivals and the false positives of a run, so a second run
of the same seed can trace them (a run is a pure function of its seed and scenario).
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.composition import TableAdded, TableDropped
from ..core.membership import ACK, GOSSIP, NACK, PING, PING_REQ, Alive, Failed, Refuted, Suspect
from ..envelope import Envelope
from ..identity import node_id_of

__all__ = ["PairTrace", "MAX_PAIRS", "merge"]

MAX_PAIRS = 16
_KINDS = ("alive", "suspect", "dead", "left")
_SHORT = {PING: "ping", ACK: "ack", PING_REQ: "ping_req", NACK: "nack", GOSSIP: "gossip"}


class _Pair:
    __slots__ = ("i", "j", "entries", "dropped", "helpers")

    def __init__(self, i: int, j: int):
        self.i = i
        self.j = j
        self.entries: list[tuple[float, str, str]] = []
        self.dropped = 0
        self.helpers: dict[int, float] = {}  # helper asked to ping j for i -> until when its relay is open


class PairTrace:
    """Timelines of chosen pairs. Wire :meth:`tap` to the simulator's ``tap`` and call :meth:`event`
    with every event a node reports; :meth:`result` is the report's part.

    ``ids``/``keys``: node ids and public keys by node number; ``view(i)``: node ``i``'s membership core,
    or None where another worker runs it; ``cut``: the side cut off (empty if no partition) and
    ``part``: (start, end) of the partition.
    """

    def __init__(self, pairs: list[tuple[int, int]], ids: list[bytes], keys: list[bytes],
                 view: Callable[[int], Any], cut: set[int], part: tuple[float, float] | None,
                 window: tuple[float, float] | None = None, limit: int = 400):
        if len(pairs) > MAX_PAIRS:
            raise ValueError(f"at most {MAX_PAIRS} pairs can be traced, got {len(pairs)}")
        n = len(ids)
        for i, j in pairs:
            if not (0 <= i < n and 0 <= j < n) or i == j:
                raise ValueError(f"pair {i}:{j}: two different node numbers below {n} are needed")
        self.ids = ids
        self.keys = keys
        self.index = {nid: k for k, nid in enumerate(ids)}
        self.view = view
        self.cut = cut
        self.part = part
        self.window = window
        self.limit = limit
        self.pairs = [_Pair(i, j) for i, j in dict.fromkeys(pairs)]
        self.by_node: dict[int, list[_Pair]] = {}
        for p in self.pairs:
            self.by_node.setdefault(p.i, []).append(p)
            self.by_node.setdefault(p.j, []).append(p)
        self.helping: dict[int, list[_Pair]] = {}  # helper -> pairs it has an open relay for
        self.observers = {p.i for p in self.pairs}
        self.first_across: dict[int, tuple[float, int, str]] = {}  # observer -> (arrival, from, type)

    # -- recording ------------------------------------------------------------------------------------

    def _add(self, p: _Pair, t: float, what: str, fate: str) -> None:
        w = self.window
        if w is not None and not w[0] <= t <= w[1]:
            return
        if len(p.entries) >= self.limit:
            p.dropped += 1
            return
        p.entries.append((t, what, fate))

    def _name(self, p: _Pair, k: int) -> str:
        return "i" if k == p.i else "j" if k == p.j else f"h{k}"

    def _holds(self, p: _Pair) -> str:
        """How observer ``i`` holds ``j`` now, and its LHM (empty where another worker runs ``i``)."""
        m = self.view(p.i)
        if m is None:
            return ""
        return f" [i holds j: {m.state_of(self.ids[p.j]) or 'none'}, lhm {m.local_health}]"

    def _fate(self, now: float, src: int, dst: int, delay: float | None) -> str:
        if delay is not None:
            return f"delivered +{delay * 1000:.1f} ms"
        part = self.part
        if part is not None and part[0] <= now < part[1] and (src in self.cut) != (dst in self.cut):
            return "cut"
        return "lost"

    def _rumors(self, p: _Pair, body: Any) -> str:
        """The rumors of a swim body that are about i or j, as text."""
        if type(body) is not list or len(body) < 3 or type(body[2]) is not list:
            return ""
        out = []
        for r in body[2]:
            if type(r) is not list or len(r) < 3 or type(r[0]) is not int or not 0 <= r[0] <= 3:
                continue
            if r[0] == 0:
                who = self.index.get(node_id_of(r[2])) if type(r[2]) is bytes and len(r[2]) == 32 else None
                inc = r[1]
            else:
                who = self.index.get(r[1]) if type(r[1]) is bytes else None
                inc = r[2]
            if who == p.i or who == p.j:
                extra = f" by {len(r[3])}" if r[0] == 1 and len(r) > 3 and type(r[3]) is list else ""
                out.append(f"{_KINDS[r[0]]} {self._name(p, who)}@{inc}{extra}")
        return " {" + ", ".join(out) + "}" if out else ""

    def _describe(self, p: _Pair, src: int, dst: int, env: Envelope) -> str:
        body = env.body
        typ = env.type
        what = f"{self._name(p, src)}>{self._name(p, dst)} {_SHORT.get(typ, typ)}"
        if typ == PING and type(body) is list:
            if len(body) > 3 and body[3] == 1:
                what += " sync"
            elif src == p.i and dst == p.j:
                m = self.view(p.i)
                if m is not None and m.state_of(self.ids[p.j]) in ("dead", "left"):
                    what += " check"
        if typ.startswith("swim.") and type(body) is list and len(body) > 1:
            what += f" inc {body[1]}"
        what += self._rumors(p, body)
        if src == p.i:
            what += self._holds(p)
        return what

    def tap(self, now: float, src: int, dst: int, env: Envelope, delay: float | None) -> None:
        """Every message sent (the simulator's tap): keep those that concern a traced pair."""
        part = self.part
        if part is not None and dst in self.observers and now >= part[1] and delay is not None \
                and (src in self.cut) != (dst in self.cut):
            first = self.first_across.get(dst)
            if first is None or now + delay < first[0]:
                self.first_across[dst] = (now + delay, src, env.type)
        by_node = self.by_node
        if src in by_node or dst in by_node:
            for p in by_node.get(src, ()):
                self._tap_pair(p, now, src, dst, env, delay)
            if dst in by_node:
                for p in by_node[dst]:
                    if p.i != src and p.j != src:
                        self._tap_pair(p, now, src, dst, env, delay)
        helping = self.helping
        if helping and (src in helping or dst in helping):
            for h in (src, dst):
                for p in helping.get(h, ()):
                    until = p.helpers.get(h)
                    if until is None or now > until:
                        continue
                    other = dst if h == src else src
                    if other == p.j or (h == src and other == p.i and env.type in (ACK, NACK)):
                        self._add(p, now, self._describe(p, src, dst, env), self._fate(now, src, dst, delay))

    def _tap_pair(self, p: _Pair, now: float, src: int, dst: int, env: Envelope, delay: float | None) -> None:
        i, j = p.i, p.j
        if (src == i and dst == j) or (src == j and dst == i):
            self._add(p, now, self._describe(p, src, dst, env), self._fate(now, src, dst, delay))
            return
        body = env.body
        if src == i and env.type == PING_REQ and type(body) is list and len(body) > 4 and body[3] == self.keys[j]:
            window = body[5] / 1000 if len(body) > 5 and type(body[5]) is int else 1.0
            p.helpers[dst] = now + window + 0.5
            pairs = self.helping.setdefault(dst, [])
            if p not in pairs:
                pairs.append(p)
            self._add(p, now, self._describe(p, src, dst, env), self._fate(now, src, dst, delay))
        elif dst == i and src != j and env.type.startswith("swim."):
            about = self._rumors(p, body)
            if "j@" in about:
                self._add(p, now, f"h{src}>i {_SHORT.get(env.type, env.type)}{about}",
                          self._fate(now, src, dst, delay))

    def event(self, i: int, ev: object, now: float) -> None:
        """An event node ``i`` reported (the run's on_event)."""
        pairs = self.by_node.get(i)
        if not pairs:
            return
        t = type(ev)
        if t is Refuted:
            for p in pairs:
                if p.j == i:
                    self._add(p, now, f"j reports Refuted (its incarnation is now {ev.incarnation})", "")  # type: ignore[attr-defined]
            return
        if t is Alive:
            nid = node_id_of(ev.contact.public_key)  # type: ignore[attr-defined]
        elif t in (Suspect, Failed, TableAdded, TableDropped):
            nid = ev.node_id  # type: ignore[attr-defined]
        else:
            return
        for p in pairs:
            if p.i == i and nid == self.ids[p.j]:
                self._add(p, now, f"i reports {t.__name__}{self._holds(p)}", "")

    # -- the report -----------------------------------------------------------------------------------

    def result(self) -> list[dict]:
        side = self.cut
        out = []
        for p in self.pairs:
            fa = self.first_across.get(p.i)
            out.append({
                "observer": p.i, "subject": p.j,
                "sides": ("cut" if p.i in side else "rest", "cut" if p.j in side else "rest") if side else None,
                "first_heard_across": None if fa is None else {"at": round(fa[0], 4), "from": fa[1], "type": fa[2]},
                "timeline": [[round(t, 4), what, fate] for t, what, fate in p.entries],
                "dropped": p.dropped,
            })
        return out


def merge(parts: list[list[dict]]) -> list[dict]:
    """The timelines of a parallel run's workers (each saw the sends of its own nodes) as one."""
    if not parts:
        return []
    merged = [dict(d, timeline=list(d["timeline"])) for d in parts[0]]
    for part in parts[1:]:
        for d, other in zip(merged, part):
            d["timeline"] += other["timeline"]
            d["dropped"] += other["dropped"]
            fa = other["first_heard_across"]
            if fa is not None and (d["first_heard_across"] is None or fa["at"] < d["first_heard_across"]["at"]):
                d["first_heard_across"] = fa
    for d in merged:
        d["timeline"].sort(key=lambda e: e[0])
    return merged
