"""docker-compose.yml: a 5-node mesh from the Dockerfile. No docker engine here, so the file is checked
as data: its shape, the addresses the nodes listen on and join through, and every `zmqagents` command
line parsed by the real CLI (click validates options and values without running the command).
PyYAML comes with the test extra (setup.cfg), as the Kubernetes manifests' tests need it too."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import yaml

from zmqagents.cli.app import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _argv(service: dict) -> list[str]:
    entry = service["entrypoint"]
    assert entry[0] == "zmqagents"
    return entry[1:] + service["command"]


def test_five_nodes_seed_agents_relay_sidecar(compose):
    services = compose["services"]
    kinds = {name: _argv(s)[0] for name, s in services.items()}
    assert len(services) == 5
    assert sorted(kinds.values()) == ["agent", "agent", "node", "node", "relay"]
    sidecar = services["sidecar"]
    assert _argv(sidecar)[:3] == ["node", "--config", "/etc/zmqagents/node.toml"]
    assert "127.0.0.1:9464:9464" in sidecar["ports"] and "--admin" in sidecar["command"]
    for name, s in services.items():
        assert s["build"] == "." and s["stop_grace_period"]
        address = s["networks"]["mesh"]["ipv4_address"]
        argv = _argv(s)
        assert any(a.startswith(f"tcp://{address}:") for a in argv), f"{name} does not listen on {address}"
        if name != "seed":
            assert "@/contacts/seed.contact" in argv and s["depends_on"]["seed"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["seed", "upper", "wc", "relay", "sidecar"])
def test_each_command_line_parses(compose, name):
    argv = _argv(compose["services"][name])
    command = cli.get_command(None, argv[0])
    with command.make_context(argv[0], list(argv[1:])) as ctx:  # raises click.UsageError on a bad option
        assert isinstance(ctx, click.Context)
