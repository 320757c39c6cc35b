"""tools/check_layers.py: the import-cycle and layer check that .ci/run runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_layers", ROOT / "tools" / "check_layers.py")
check_layers = importlib.util.module_from_spec(_spec)
sys.modules["check_layers"] = check_layers  # dataclasses look their module up while the class is made
_spec.loader.exec_module(check_layers)


def make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package named zmqagents (the layers are keyed by module names in it) with the given files; a
    few clean modules are always there, so only what a test adds can break a rule."""
    base = {
        "__init__.py": "",
        "envelope.py": "",
        "core/__init__.py": "",
        "node.py": "",
        "agents/__init__.py": "",
    }
    pkg = tmp_path / "zmqagents"
    for name, text in {**base, **files}.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def found(pkg: Path) -> list[str]:
    return check_layers.problems(check_layers.build(pkg))


def test_the_project_itself_passes():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layers.py")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith(": ok")


def test_a_clean_package_passes(tmp_path):
    pkg = make_package(tmp_path, {"core/a.py": "from ..envelope import x\n", "node.py": "from .core import a\n"})
    assert found(pkg) == []


def test_a_cycle_closed_by_a_lazy_import_inside_a_function_is_found(tmp_path):
    pkg = make_package(tmp_path, {
        "core/a.py": "from . import b\n",
        "core/b.py": "def f():\n    if True:\n        from .a import thing\n",
    })
    assert found(pkg) == ["import cycle: zmqagents.core.a <-> zmqagents.core.b"]


def test_an_upward_import_is_found_even_when_only_for_type_checking(tmp_path):
    pkg = make_package(tmp_path, {
        "core/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..node import Node\n",
    })
    assert found(pkg) == ["upward import: zmqagents.core.a (layer core) imports zmqagents.node (layer node)"]


def test_absolute_imports_and_importlib_target_strings_count(tmp_path):
    pkg = make_package(tmp_path, {
        "envelope.py": "import zmqagents.core.a\n",
        "core/a.py": 'SERVICE = "zmqagents.node:create"\nOTHER = "not.a:target here"\n',
    })
    assert found(pkg) == [
        "upward import: zmqagents.core.a (layer core) imports zmqagents.node (layer node)",
        "upward import: zmqagents.envelope (layer envelope/identity) imports zmqagents.core.a (layer core)",
    ]


def test_a_module_in_no_layer_is_refused(tmp_path):
    pkg = make_package(tmp_path, {"newthing.py": ""})
    assert found(pkg) == ["unplaced module: zmqagents.newthing is in no layer; add it to LAYERS in "
                          "tools/check_layers.py"]


# The project has no exception left (the last, cli <-> agents.commands, went when cli became a
# package); the mechanism is tested with one made up here.
EXCEPTION = {("agents.commands", "cli"): "cli <-> agents.commands: goes when cli becomes a package"}
CYCLE = {"agents/commands.py": "def run():\n    from .. import cli\n", "cli.py": "from .agents import commands\n"}


def test_the_cycle_is_refused_without_its_exception_and_passes_with_it(tmp_path, monkeypatch):
    pkg = make_package(tmp_path, CYCLE)
    assert found(pkg) == ["upward import: zmqagents.agents.commands (layer agents) imports zmqagents.cli "
                          "(layer cli/sidecar)", "import cycle: zmqagents.agents.commands <-> zmqagents.cli"]
    monkeypatch.setattr(check_layers, "KNOWN_EXCEPTIONS", EXCEPTION)
    assert found(pkg) == []


def test_a_known_exception_that_no_longer_applies_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(check_layers, "KNOWN_EXCEPTIONS", EXCEPTION)
    pkg = make_package(tmp_path, {**CYCLE, "agents/commands.py": ""})
    (problem,) = found(pkg)
    assert problem.startswith("stale exception: zmqagents.agents.commands no longer imports zmqagents.cli")


def test_the_known_exception_excuses_only_its_own_edge(tmp_path, monkeypatch):
    monkeypatch.setattr(check_layers, "KNOWN_EXCEPTIONS", EXCEPTION)
    pkg = make_package(tmp_path, {**CYCLE, "agents/commands.py": "from ..cli import main\nfrom .. import demo\n",
                                  "demo.py": "from .agents import commands\n"})
    assert found(pkg) == ["upward import: zmqagents.agents.commands (layer agents) imports zmqagents.demo "
                          "(layer cli/sidecar)",
                          "import cycle: zmqagents.agents.commands <-> zmqagents.demo"]


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"d"}, "d": {"c"}}, [["c", "d"]]),
    ({"a": {"a"}}, []),
])
def test_cycles_are_the_strongly_connected_components(edges, expected):
    assert check_layers.cycles(edges) == expected


def test_the_package_root_is_a_dependency_only_when_a_name_is_taken_from_it(tmp_path):
    # the root re-exports from the top layer: importing a submodule through it is not importing it
    pkg = make_package(tmp_path, {"core/a.py": "from .. import envelope\n"})
    assert found(pkg) == []
    pkg = make_package(tmp_path, {"core/a.py": "from .. import __version__\n"})
    assert found(pkg) == ["upward import: zmqagents.core.a (layer core) imports zmqagents (layer cli/sidecar)"]


@pytest.fixture
def no_private_exceptions(monkeypatch):
    """The mechanism alone: the project's own exceptions name modules these packages do not have."""
    monkeypatch.setattr(check_layers, "PRIVATE_IMPORT_EXCEPTIONS", {})


def reaches(pkg: Path) -> list[str]:
    return check_layers.private_reaches(check_layers.build(pkg))


def test_a_reach_into_another_modules_private_member_is_found(tmp_path, no_private_exceptions):
    pkg = make_package(tmp_path, {
        "core/a.py": "class A:\n    def __init__(self):\n        self._items = []\n",
        "node.py": "from .core.a import A\n\ndef count(a: A) -> int:\n    return len(a._items)\n",
    })
    assert reaches(pkg) == ["private reach: zmqagents/node.py:4: a._items is private to another module; "
                            "give it a public method or read-only view"]


def test_private_names_a_module_defines_itself_and_self_access_pass(tmp_path, no_private_exceptions):
    pkg = make_package(tmp_path, {
        # its own class's private attribute on another instance, a slot, a private helper, the stdlib's os._exit
        "core/a.py": ("import os\n\nclass A:\n    __slots__ = ('_n',)\n\n    def __init__(self):\n"
                      "        self._n = 0\n\n    def merge(self, other: 'A') -> None:\n        self._n += other._n\n\n"
                      "def _helper(x):\n    return x._n\n\ndef leave():\n    os._exit(0)\n"),
    })
    assert reaches(pkg) == []


def test_importing_a_private_name_from_the_package_is_found_and_other_packages_are_not_judged(
        tmp_path, no_private_exceptions):
    pkg = make_package(tmp_path, {
        "core/a.py": "_TABLE = {}\n",
        "core/b.py": "from ._private_lib import thing\nfrom .a import _TABLE\nfrom collections import _chain\n",
        "core/_private_lib.py": "thing = 1\n",
    })
    assert reaches(pkg) == ["private reach: zmqagents/core/b.py:2: imports _TABLE from zmqagents.core.a, "
                            "private there; make it public"]


def test_a_private_import_exception_that_no_longer_matches_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(check_layers, "PRIVATE_IMPORT_EXCEPTIONS", {("core.b", "core.a"): "shared helper"})
    pkg = make_package(tmp_path, {"core/a.py": "_T = 1\n", "core/b.py": "from .a import _T\n"})
    assert reaches(pkg) == []
    (pkg / "core" / "b.py").write_text("T = 1\n")
    assert reaches(pkg) == ["stale exception: zmqagents.core.b no longer imports private names from "
                            "zmqagents.core.a; remove it from PRIVATE_IMPORT_EXCEPTIONS (shared helper)"]
