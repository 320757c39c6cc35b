"""Check the package's import graph: no import cycles, and no import up across the layers.

    python tools/check_layers.py            # the zmqagents package of this checkout
    python tools/check_layers.py PKG_DIR    # another package laid out the same way (the tests use this)

Exits 0 and prints one summary line when the graph is clean; otherwise prints each problem and
exits 1. `.ci/run` runs it.

Every import counts, wherever it is written: at the top of a module, inside a function (a lazy
import only defers the cycle to run time), under ``if TYPE_CHECKING:`` (a module that names
another's types depends on it; a ``typing.Protocol`` in the lower layer is how to avoid that),
and ``"package.module:attr"`` strings of the form the sidecar hands to ``importlib`` (its service
table). ``from pkg import name`` depends on ``pkg`` and, when ``pkg.name`` is a module, on that too;
``from <the package root> import mod`` of submodules only depends on those submodules (the root
runs before any module of the package in any case, and re-exports from the top layer).

Layers, lowest first (``LAYERS``): a module may import its own layer and the ones below it.
Within a layer only cycles are forbidden. Every module must be placed: a new top-level module or
subpackage fails the check until it is added to ``LAYERS``.

It also fails on a reach into another module's private members (:func:`private_reaches`): ``x._name``
where ``x`` is not ``self``/``cls`` and this module defines no ``_name`` of its own (a method, a class,
a function, an attribute it assigns, a ``__slots__`` entry), and ``from .module import _name``. What
a module defines it may touch on any object of its own classes; what another module keeps private it
may not: that module gives a public method or read-only view instead.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A key is a module or a subpackage (and everything in it), relative to the package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # tlsguard: keeps ssl out of `zmqagents node`; imports nothing of the package.
    # errors: the root exception class every layer derives from (imports nothing).
    ("envelope/identity", ("envelope", "identity", "tlsguard", "errors")),
    # certs: sans-IO certificate checks (keys, signatures, validity), used by the transport's admission.
    ("core", ("core", "certs")),
    ("transport", ("transport",)),
    # shell: the pieces Node composes (its loop, sending, serving, neighbours, relay glue, API types);
    # coretimer: the one loop timer Node and the agent runtime share; dht: the Node's DHT facade;
    # sim: drives the cores' composition (core/composition.py) with a virtual clock; queues: the
    # inbox's and the subscriptions' byte-bounded queue; revocations: a fleet node's revocation lists
    # through the DHT.
    ("node", ("node", "shell", "dht", "coretimer", "sim", "queues", "revocations")),
    ("agents", ("agents",)),
    # swarm: many Nodes in one process for load tests (its tasks workload drives the agent runtime).
    ("swarm", ("swarm",)),
    # The entry points: the CLI package (launch.py starts it), the sidecar daemon (which takes its exit
    # statuses from cli/exits.py). The package root (__init__) re-exports Node, Agents, Capability, ... on
    # first use (PEP 562), so it sits with the entry points; nothing below may import it.
    ("cli/sidecar", ("cli", "launch", "demo", "sidecar", "__init__")),
]

# Import edges allowed although they break a rule, each with the reason and when it goes. An entry
# that no longer matches an import fails the check, so a fixed exception cannot linger here.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {
}

_TARGET_STRING = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+):[A-Za-z_]\w*$")


@dataclass
class Graph:
    package: str
    modules: dict[str, Path]  # dotted name relative to the package ("" is the package itself) -> file
    edges: dict[str, set[str]] = field(default_factory=dict)


def _relname(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> list[str]:
    """The package-relative name, as parts, that a relative import (``level`` dots, then ``module``) points at."""
    parts = current.split(".") if current else []
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)] if level - 1 <= len(parts) else ["<above the package>"]
    return parts + (module.split(".") if module else [])


def build(package_dir: Path) -> Graph:
    """Parse every module under ``package_dir`` and collect its imports of modules of the same package."""
    package_dir = package_dir.resolve()
    package = package_dir.name
    modules = {_relname(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph = Graph(package, modules, {m: set() for m in modules})

    def closest(dotted: list[str]) -> str | None:
        while dotted:
            name = ".".join(dotted)
            if name in modules:
                return name
            dotted = dotted[:-1]
        return "" if "" in modules else None

    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        targets: list[list[str]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    head, *rest = alias.name.split(".")
                    if head == package:
                        targets.append(rest)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _resolve(name, is_package, node.level, node.module)
                elif node.module and node.module.split(".")[0] == package:
                    base = node.module.split(".")[1:]
                else:
                    continue
                named = [base + [alias.name] for alias in node.names if alias.name != "*"]
                # ``from pkg import mod`` of submodules only: the dependency is on the submodules. Python
                # runs the package root before any of its modules anyway, so the root (which re-exports
                # names from higher layers) counts only when a name is taken from it.
                if base or any(".".join(n) not in modules for n in named) or not named:
                    targets.append(base)
                targets += named
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = _TARGET_STRING.match(node.value)
                if m and m.group(1).split(".")[0] == package:
                    targets.append(m.group(1).split(".")[1:])
        for dotted in targets:
            target = closest(dotted)
            if target is not None and target != name:
                graph.edges[name].add(target)
    return graph


def layer_of(module: str) -> int | None:
    """Index in LAYERS of a package-relative module name ("" is the package's __init__)."""
    key = module or "__init__"
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if key == member or key.startswith(member + "."):
                return index
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            advanced = False
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def problems(graph: Graph) -> list[str]:
    """Every rule the graph breaks, as lines for people; empty when it is clean."""
    pkg = graph.package

    def full(module: str) -> str:
        return f"{pkg}.{module}" if module else pkg

    out = []
    edges = {m: set(t) for m, t in graph.edges.items()}
    for (src, dst), why in KNOWN_EXCEPTIONS.items():
        if dst in edges.get(src, ()):
            edges[src].discard(dst)
        else:
            out.append(f"stale exception: {full(src)} no longer imports {full(dst)}; remove it from "
                       f"KNOWN_EXCEPTIONS ({why})")
    for module in sorted(graph.modules):
        if layer_of(module) is None:
            out.append(f"unplaced module: {full(module)} is in no layer; add it to LAYERS in tools/check_layers.py")
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            a, b = layer_of(src), layer_of(dst)
            if a is not None and b is not None and b > a:
                out.append(f"upward import: {full(src)} (layer {LAYERS[a][0]}) imports {full(dst)} "
                           f"(layer {LAYERS[b][0]})")
    for component in cycles(edges):
        out.append("import cycle: " + " <-> ".join(full(m) for m in component))
    return out


# Private names a module may use although it does not define them: the standard library's public API
# spelt with an underscore.
STDLIB_PRIVATE = frozenset({"_exit", "_replace", "_asdict", "_fields", "_make", "_getframe"})

# Private names a module imports from another although they break the rule, as (importer, imported
# module) with the reason and when it goes. An entry that no longer matches fails the check, like
# KNOWN_EXCEPTIONS.
PRIVATE_IMPORT_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("agents.workflow_check", "agents.schema"): "schema helpers the workflow checker shares: to be made public",
    ("agents.workflow_check", "agents.workflow"): "workflow helpers the workflow checker shares: to be made public",
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_private_names(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, attributes it assigns on anything,
    names it binds, ``__slots__`` entries."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets) and node.value is not None:
                for const in ast.walk(node.value):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        own.add(const.value)
    return {name for name in own if _is_private(name)}


def private_reaches(graph: Graph) -> list[str]:
    """Every reach into another module's private members (see the module docstring), as lines."""
    pkg = graph.package
    out = []
    matched: set[tuple[str, str]] = set()
    for name, path in sorted(graph.modules.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        own = _own_private_names(tree)
        is_package = path.name == "__init__.py"
        where = f"{pkg}/{name.replace('.', '/') or ''}{'/__init__' if is_package else ''}.py".replace("//", "/")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                value = node.value
                if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                    continue
                if node.attr in own or node.attr in STDLIB_PRIVATE:
                    continue
                out.append(f"private reach: {where}:{node.lineno}: {ast.unparse(node)} is private to another "
                           "module; give it a public method or read-only view")
            elif isinstance(node, ast.ImportFrom):
                names = [alias.name for alias in node.names if _is_private(alias.name)]
                if not names:
                    continue
                if node.level:
                    source = ".".join(_resolve(name, is_package, node.level, node.module))
                elif (node.module or "").split(".")[0] == pkg:
                    source = ".".join(node.module.split(".")[1:])
                else:
                    continue  # another package's private name is that package's business
                if (name, source) in PRIVATE_IMPORT_EXCEPTIONS:
                    matched.add((name, source))
                    continue
                out.append(f"private reach: {where}:{node.lineno}: imports {', '.join(names)} from "
                           f"{pkg}.{source}, private there; make it public")
    for key, why in PRIVATE_IMPORT_EXCEPTIONS.items():
        if key not in matched:
            out.append(f"stale exception: {pkg}.{key[0]} no longer imports private names from {pkg}.{key[1]}; "
                       f"remove it from PRIVATE_IMPORT_EXCEPTIONS ({why})")
    return out

def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else ROOT / "zmqagents"
    graph = build(package_dir)
    found = problems(graph) + private_reaches(graph)
    for line in found:
        print(line)
    n_edges = sum(len(t) for t in graph.edges.values())
    print(f"{graph.package}: {len(graph.modules)} modules, {n_edges} imports, {len(LAYERS)} layers, "
          f"{len(KNOWN_EXCEPTIONS)} known exception(s): {'FAILED, ' + str(len(found)) + ' problem(s)' if found else 'ok'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
