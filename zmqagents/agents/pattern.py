"""JSON Schema ``pattern`` with a bounded engine: no input can make a check take exponential time.

Schemas come from other nodes, and Python's :mod:`re` backtracks: ``(a+)+$`` against a long run of
``a`` followed by ``b`` takes time exponential in the run. This module compiles the regular
expressions JSON Schema uses (ECMA-262 syntax; JSON Schema 2020-12, section 6.4 of the validation
vocabulary) into a Thompson NFA and searches with a lazily built DFA (as RE2 does): each input
character costs one dictionary lookup once its state is known, and building a state costs at most
the NFA's size. The cost is bounded three ways: the pattern's length (:data:`MAX_PATTERN`), the NFA's
size after counted repetitions are expanded (:data:`MAX_STATES`), and the work one search may spend
building states (:data:`MAX_WORK`, NFA states visited); a search over budget raises
:class:`PatternTooCostly` rather than answer wrongly. The DFA cache is bounded too: it is dropped and
rebuilt when it holds :data:`MAX_DFA_STATES` states.

Supported: literals, ``.``, ``[...]`` and ``[^...]`` classes with ranges, ``\\d \\D \\w \\W \\s \\S``,
``\\t \\n \\r \\f \\v \\0 \\xHH \\uHHHH`` and escaped punctuation, ``^`` and ``$`` (no multiline
flag exists in a schema), groups ``( )``, ``(?: )``, ``(?<name> )``, alternation, and the
quantifiers ``* + ? {n} {n,} {n,m}`` (greedy or lazy: only whether a match exists matters here).
Refused when the pattern is compiled (:class:`PatternError`, with the position): backreferences,
lookaround, word boundaries, ``\\p{...}`` and anything else the engine cannot decide in linear time.
A pattern matches anywhere in the string (it is not implicitly anchored), as JSON Schema says.
"""

from __future__ import annotations

from dataclasses import dataclass
from ..errors import Error

MAX_PATTERN = 1000  # characters of a pattern
MAX_STATES = 5000  # NFA states after expanding counted repetitions
MAX_REPEAT = 1000  # the largest n or m in {n,m}
MAX_WORK = 1_000_000  # NFA states visited while building DFA states, per search (about 0.5 s)
MAX_DFA_STATES = 2000  # cached DFA states before the cache is dropped

_LINE_TERMINATORS = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))
_DIGIT = ((0x30, 0x39),)
_WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
# ECMA-262 WhiteSpace and LineTerminator: what \s matches
_SPACE = ((0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029),
          (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF))
_CLASSES = {"d": (_DIGIT, False), "D": (_DIGIT, True), "w": (_WORD, False), "W": (_WORD, True),
            "s": (_SPACE, False), "S": (_SPACE, True)}
_CONTROL = {"t": 0x09, "n": 0x0A, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}


class PatternError(Error, ValueError):
    """The pattern is not one this engine runs (bad syntax, an unsupported feature, too large)."""


class PatternTooCostly(Error, RuntimeError):
    """A search spent its work budget; the value could not be checked (treat it as not matching)."""


@dataclass(frozen=True)
class _Set:
    """Characters as inclusive code point ranges, or every character but those with ``negate``."""

    ranges: tuple[tuple[int, int], ...]
    negate: bool = False

    def has(self, ch: str) -> bool:
        o = ord(ch)
        return any(lo <= o <= hi for lo, hi in self.ranges) != self.negate


# AST: ("set", _Set) | ("bol",) | ("eol",) | ("cat", [node]) | ("alt", [node]) | ("rep", node, min, max|None)


class _Parser:
    def __init__(self, src: str):
        self.src = src
        self.i = 0

    def fail(self, what: str) -> PatternError:
        return PatternError(f"pattern {self.src!r:.80} at {self.i}: {what}")

    def peek(self) -> str | None:
        return self.src[self.i] if self.i < len(self.src) else None

    def parse(self) -> tuple:
        node = self.alternation()
        if self.i != len(self.src):
            raise self.fail("unbalanced ')'")
        return node

    def alternation(self) -> tuple:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else ("alt", options)

    def sequence(self) -> tuple:
        items = []
        while (c := self.peek()) is not None and c not in "|)":
            items.append(self.quantified(self.atom()))
        return ("cat", items)

    def atom(self) -> tuple:
        c = self.src[self.i]
        self.i += 1
        if c == "^":
            return ("bol",)
        if c == "$":
            return ("eol",)
        if c == ".":
            return ("set", _Set(_LINE_TERMINATORS, True))
        if c == "[":
            return ("set", self.char_class())
        if c == "(":
            if self.src.startswith("?:", self.i):
                self.i += 2
            elif self.src.startswith("?<", self.i) and self.i + 2 < len(self.src) and self.src[self.i + 2] not in "=!":
                end = self.src.find(">", self.i)
                if end < 0:
                    raise self.fail("unterminated group name")
                self.i = end + 1
            elif self.peek() == "?":
                raise self.fail("lookaround and inline flags are not supported (they cannot be checked in linear time)")
            node = self.alternation()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return node
        if c == "\\":
            return ("set", self.escape(in_class=False))
        if c in "*+?":
            raise self.fail(f"nothing to repeat before {c!r}")
        if c == "{" and self.counted() is not None:
            raise self.fail("nothing to repeat before '{'")
        return ("set", _Set(((ord(c), ord(c)),)))

    def counted(self) -> tuple[int, int | None, int] | None:
        """``{n}``, ``{n,}`` or ``{n,m}`` at self.i - 1 (the '{' already read): (min, max, end) or None
        when the brace is a literal (ECMA-262 Annex B)."""
        end = self.src.find("}", self.i)
        if end < 0:
            return None
        lo, comma, hi = self.src[self.i:end].partition(",")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        return int(lo), (int(hi) if hi else None) if comma else int(lo), end + 1

    def quantified(self, node: tuple) -> tuple:
        c = self.peek()
        if c is None:
            return node
        if c in "*+?":
            self.i += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{":
            self.i += 1
            spec = self.counted()
            if spec is None:
                self.i -= 1
                return node
            lo, hi, self.i = spec
            if max(lo, hi or 0) > MAX_REPEAT:
                raise self.fail(f"a repetition count above {MAX_REPEAT}")
            if hi is not None and hi < lo:
                raise self.fail("a repetition {n,m} with m < n")
        else:
            return node
        if node[0] in ("bol", "eol"):
            raise self.fail("an anchor cannot be repeated")
        if self.peek() == "?":
            self.i += 1  # lazy: the same language
        if (c := self.peek()) is not None and c in "*+?":
            raise self.fail("nothing to repeat (a quantifier after a quantifier)")
        return ("rep", node, lo, hi)

    def escape(self, *, in_class: bool) -> _Set:
        if self.i >= len(self.src):
            raise self.fail("a pattern cannot end with '\\'")
        c = self.src[self.i]
        self.i += 1
        if c in _CLASSES:
            ranges, negate = _CLASSES[c]
            return _Set(ranges, negate)
        if c in _CONTROL:
            if c == "0" and self.peek() is not None and self.peek().isdigit():
                raise self.fail("octal escapes are not supported")
            return _Set(((_CONTROL[c],) * 2,))
        if c == "b" and in_class:
            return _Set(((8, 8),))
        if c in "xu":
            width = 2 if c == "x" else 4
            digits = self.src[self.i:self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {width} hex digits")
            self.i += width
            return _Set(((int(digits, 16),) * 2,))
        if c.isdigit():
            raise self.fail("backreferences are not supported (they cannot be checked in linear time)")
        if c in "bB":
            raise self.fail("word boundaries \\b and \\B are not supported")
        if c.isalnum():
            raise self.fail(f"the escape \\{c} is not supported")
        return _Set(((ord(c), ord(c)),))  # escaped punctuation stands for itself

    def char_class(self) -> _Set:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        excluded: list[_Set] = []  # \D, \W, \S inside a class
        while True:
            c = self.peek()
            if c is None:
                raise self.fail("missing ']'")
            if c == "]":  # ECMA-262: "[]" matches nothing, "[^]" any character
                self.i += 1
                break
            lo = self.class_atom()
            if isinstance(lo, _Set) and (lo.negate or len(lo.ranges) != 1 or lo.ranges[0][0] != lo.ranges[0][1]):
                if lo.negate:
                    excluded.append(lo)
                else:
                    ranges.extend(lo.ranges)
                continue
            start = lo.ranges[0][0]
            if self.peek() == "-" and self.i + 1 < len(self.src) and self.src[self.i + 1] != "]":
                self.i += 1
                hi = self.class_atom()
                if hi.negate or len(hi.ranges) != 1 or hi.ranges[0][0] != hi.ranges[0][1]:
                    raise self.fail("a class range cannot end in a class escape")
                end = hi.ranges[0][0]
                if end < start:
                    raise self.fail("a class range out of order")
                ranges.append((start, end))
            else:
                ranges.append((start, start))
        if excluded:
            if len(excluded) > 1 or ranges:
                raise self.fail("a class mixing \\D, \\W or \\S with other members is not supported")
            inner = excluded[0]
            return _Set(inner.ranges, inner.negate != negate)
        return _Set(tuple(ranges), negate)

    def class_atom(self) -> _Set:
        c = self.src[self.i]
        self.i += 1
        if c == "\\":
            return self.escape(in_class=True)
        return _Set(((ord(c), ord(c)),))


class _NFA:
    """Thompson NFA: ``kind[s]`` is "set", "split", "bol", "eol" or "match"."""

    def __init__(self) -> None:
        self.kind: list[str] = []
        self.sets: list[_Set | None] = []
        self.out: list[list[int]] = []

    def add(self, kind: str, chars: _Set | None = None) -> int:
        if len(self.kind) >= MAX_STATES:
            raise PatternError(f"the pattern expands to more than {MAX_STATES} states")
        self.kind.append(kind)
        self.sets.append(chars)
        self.out.append([])
        return len(self.kind) - 1

    def build(self, node: tuple) -> tuple[int, list[int]]:
        """A fragment for ``node``: (entry state, states whose exits are still open)."""
        op = node[0]
        if op in ("set", "bol", "eol"):
            s = self.add(op, node[1] if op == "set" else None)
            return s, [s]
        if op == "cat":
            if not node[1]:
                s = self.add("split")
                return s, [s]
            entry, ends = self.build(node[1][0])
            for part in node[1][1:]:
                e2, ends2 = self.build(part)
                self.patch(ends, e2)
                ends = ends2
            return entry, ends
        if op == "alt":
            s = self.add("split")
            ends: list[int] = []
            for option in node[1]:
                e, oe = self.build(option)
                self.out[s].append(e)
                ends += oe
            return s, ends
        _, inner, lo, hi = node
        entry = self.add("split")  # an empty start, so copies chain
        ends = [entry]
        for _ in range(lo):
            e, oe = self.build(inner)
            self.patch(ends, e)
            ends = oe
        if hi is None:
            loop = self.add("split")
            self.patch(ends, loop)
            e, oe = self.build(inner)
            self.out[loop].append(e)
            self.patch(oe, loop)
            return entry, [loop]
        exits: list[int] = []
        for _ in range(hi - lo):
            opt = self.add("split")
            self.patch(ends, opt)
            exits.append(opt)
            e, oe = self.build(inner)
            self.out[opt].append(e)
            ends = oe
        return entry, ends + exits

    def patch(self, ends: list[int], target: int) -> None:
        for s in ends:
            self.out[s].append(target)


class Pattern:
    """A compiled pattern; :meth:`search` says whether it matches somewhere in a string."""

    def __init__(self, source: str):
        if not isinstance(source, str):
            raise PatternError("a pattern is a string")
        if len(source) > MAX_PATTERN:
            raise PatternError(f"a pattern is at most {MAX_PATTERN} characters")
        self.source = source
        nfa = _NFA()
        entry, ends = nfa.build(_Parser(source).parse())
        nfa.patch(ends, nfa.add("match"))
        self._nfa = nfa
        self._entry = entry
        self._reset()

    def _reset(self) -> None:
        self._ids: dict[frozenset[int], int] = {}
        self._states: list[frozenset[int]] = []
        self._next: list[dict[str, int]] = []
        self._accept: list[bool] = []
        self._end_accept: list[bool | None] = []
        self._restart = self._closure([self._entry], at_start=False)

    def _closure(self, starts, *, at_start: bool, at_end: bool = False) -> frozenset[int]:
        nfa, seen, stack = self._nfa, set(), list(starts)
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            kind = nfa.kind[s]
            if kind == "split" or (kind == "bol" and at_start) or (kind == "eol" and at_end):
                stack.extend(nfa.out[s])
        return frozenset(seen)

    def _intern(self, states: frozenset[int]) -> int:
        known = self._ids.get(states)
        if known is not None:
            return known
        self._ids[states] = len(self._states)
        self._states.append(states)
        self._next.append({})
        self._accept.append(any(self._nfa.kind[s] == "match" for s in states))
        self._end_accept.append(None)
        return len(self._states) - 1

    def search(self, text: str) -> bool:
        """True if the pattern matches somewhere in ``text``; PatternTooCostly past the work budget."""
        work = 0
        nfa = self._nfa
        if len(self._states) > MAX_DFA_STATES:
            self._reset()
        state = self._intern(self._closure([self._entry], at_start=True))
        for ch in text:
            if self._accept[state]:
                return True
            nxt = self._next[state].get(ch)
            if nxt is None:
                current = self._states[state]
                work += len(current) + len(self._restart)
                if work > MAX_WORK:
                    raise PatternTooCostly(f"checking pattern {self.source!r:.60} took more than its work budget")
                moved = [nfa.out[s][0] for s in current if nfa.kind[s] == "set" and nfa.sets[s].has(ch)]
                nxt = self._intern(self._closure(moved, at_start=False) | self._restart)
                if len(self._states) > MAX_DFA_STATES:  # keep the cache bounded; this search goes on uncached
                    self._reset()
                    nxt = self._intern(self._states_of(moved))
                else:
                    self._next[state][ch] = nxt
            state = nxt
        if self._accept[state]:
            return True
        end = self._end_accept[state]
        if end is None:
            closed = self._closure(self._states[state], at_start=False, at_end=True)
            end = self._end_accept[state] = any(nfa.kind[s] == "match" for s in closed)
        return end

    def _states_of(self, moved: list[int]) -> frozenset[int]:
        return self._closure(moved, at_start=False) | self._restart


def compile_pattern(source: str) -> Pattern:
    """Compile ``source``; PatternError (with the position) when this engine does not run it."""
    return Pattern(source)
