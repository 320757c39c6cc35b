"""Helpers the tests of several layers share (tests/ is on pytest's ``pythonpath``, see pyproject.toml).

- ``helpers.fakenet``: a fake network of timed deliveries for the sans-IO cores (no sockets).
- ``helpers.vectors``: reading protocols/*-vectors.json and checking them against their generators.
- ``helpers.cli``: the ``zmqagents`` command run as a subprocess, and long-running servers by PID.
- ``helpers.standins``: executables speaking Claude Code's and Codex's documented output (agent presets).
"""
