"""The `zmqagents` group imports a command's module only when that command is asked for."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from click.testing import CliRunner

from zmqagents.cli.app import COMMAND_MODULES, cli


def test_the_table_names_every_command_of_every_module_and_nothing_else():
    for module_name in set(COMMAND_MODULES.values()):
        module = importlib.import_module(f"zmqagents.cli.{module_name}")
        exported = {command.name for command in module.COMMANDS}
        listed = {name for name, where in COMMAND_MODULES.items() if where == module_name}
        assert exported == listed, module_name
        for name in exported:
            assert cli.get_command(None, name) is not None
    assert cli.get_command(None, "no-such-command") is None


def test_help_lists_every_command():
    out = CliRunner().invoke(cli, ["--help"])
    assert out.exit_code == 0, out.output
    commands = out.output.split("Commands:")[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.startswith("  ") and line.split()}
    assert set(COMMAND_MODULES) <= listed


def test_running_node_imports_no_other_command_module():
    code = ("import sys, json; from zmqagents.cli.app import cli; cli.get_command(None, 'node'); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('zmqagents.cli.') or m in "
            "('zmqagents.certs', 'importlib.resources', 'tempfile', 'lzma'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "zmqagents.cli.serve" in loaded
    others = {f"zmqagents.cli.{m}" for m in COMMAND_MODULES.values()} - {"zmqagents.cli.serve", "zmqagents.cli.context"}
    assert not loaded & others, sorted(loaded & others)
    # what --version and `ca` need, which a long-running node never uses (about 1.5 MB of RSS with the above)
    assert not loaded & {"zmqagents.certs", "importlib.resources", "tempfile", "lzma"}, loaded


def test_version_still_names_the_data_dir():
    out = CliRunner().invoke(cli, ["--version"])
    assert out.exit_code == 0, out.output
    assert "_data" in out.output and "wire protocols: envelope" in out.output


def test_a_verbosity_flag_after_a_lazily_loaded_command_still_parses():
    out = CliRunner().invoke(cli, ["help", "exit-codes", "-q"])
    assert out.exit_code == 0, out.output
    assert "Exit statuses" in out.output
