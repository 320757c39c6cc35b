"""Sidecar configuration: layers, precedence, and errors that name the key and where it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from zmqagents.identity import Identity
from zmqagents.sidecar.config import ConfigError, Override, keys, load, mdns_wanted, parse_set, to_toml

CLI = [sys.executable, "-m", "zmqagents.cli"]


def zmqa(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZMQAGENTS_")}
    full.update(env or {})
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, env=full)


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_are_complete_and_usable_without_any_file():
    cfg = load(env={})
    assert set(cfg.sources) == set(keys()) and set(cfg.sources.values()) == {"default"}
    assert cfg.local_api.enabled and cfg.mdns.enabled == "auto" and not cfg.admin.enabled
    assert cfg.local_api.mode == 0o660 and cfg.spool.fsync == "batch"
    assert cfg.mdns.service == "_zmqagents._tcp.local." and cfg.admin.listen == "127.0.0.1:9464"
    assert cfg.node.key.endswith("node.key") and cfg.local_api.path.endswith("node.sock")
    assert tomllib.loads(to_toml(cfg))["local_api"]["mode"] == 0o660  # config check output is a valid config


def test_precedence_file_then_conf_d_in_name_order_then_env_then_flags(tmp_path):
    main = write(tmp_path / "node.toml", '[node]\nlisten = "tcp://127.0.0.1:7001"\nprofile = "wan"\n'
                                         '[spool]\nfsync = "never"\nmax_bytes = "1MiB"\n[log]\nlevel = "error"\n')
    write(tmp_path / "conf.d" / "50-later.toml", '[node]\nprofile = "edge"\n')
    write(tmp_path / "conf.d" / "10-early.toml", '[node]\nprofile = "lan"\n[spool]\nfsync = "batch"\n')
    write(tmp_path / "conf.d" / "README", "not toml, not read")
    env = {"ZMQAGENTS_SPOOL_FSYNC": "always", "ZMQAGENTS_LOG_LEVEL": "debug", "ZMQAGENTS_FROM": "ignored"}
    cfg = load(main, env=env, overrides=[Override("log.level", "warning", "flag -v")])
    assert cfg.node.listen == "tcp://127.0.0.1:7001" and cfg.sources["node.listen"] == str(main)
    assert cfg.node.profile == "edge" and cfg.sources["node.profile"].endswith("50-later.toml")
    assert cfg.spool.fsync == "always" and cfg.sources["spool.fsync"] == "environment ZMQAGENTS_SPOOL_FSYNC"
    assert cfg.spool.max_bytes == 2**20
    assert cfg.log.level == "warning" and cfg.sources["log.level"] == "flag -v"
    assert [p.rsplit("/", 1)[1] for p in cfg.files] == ["node.toml", "10-early.toml", "50-later.toml"]


def test_values_from_text_and_relative_paths(tmp_path):
    main = write(tmp_path / "etc" / "node.toml", '[node]\nkey = "keys/node.key"\nallowlist = "~/allow"\n')
    env = {"ZMQAGENTS_LOCAL_API_MODE": "0600", "ZMQAGENTS_MDNS_ENABLED": "off",
           "ZMQAGENTS_NODE_PEERS": "@/tmp/a.contact, @/tmp/b.contact", "ZMQAGENTS_SPOOL_MAX_BYTES": "10kB"}
    cfg = load(main, env=env, overrides=[parse_set("admin.enabled=yes"), parse_set("node.drain_timeout=0.5")])
    assert cfg.node.key == str(tmp_path / "etc" / "keys" / "node.key")  # relative to the file
    assert cfg.node.allowlist == os.path.expanduser("~/allow")
    assert cfg.local_api.mode == 0o600 and cfg.mdns.enabled is False and cfg.admin.enabled is True
    assert cfg.node.peers == ("@/tmp/a.contact", "@/tmp/b.contact") and cfg.spool.max_bytes == 10_000
    assert cfg.node.drain_timeout == 0.5


@pytest.mark.parametrize("listen, enabled, wanted", [
    ("tcp://127.0.0.1:7100", None, False),  # the defaults: a loopback inbox can be announced on loopback only
    ("tcp://localhost:7100", None, False),
    ("tcp://[::1]:7100", None, False),
    ("tcp://192.0.2.7:7100", None, True),  # a LAN inbox: others can reach it, so discovery runs
    ("tcp://0.0.0.0:7100", None, True),
    ("ipc:///tmp/node.ipc", None, True),  # nobody can dial it, but it can still find and dial others
    ("tcp://127.0.0.1:7100", "true", True),  # forced on: sidecars of one host over a multicast loopback
    ("tcp://192.0.2.7:7100", "off", False),
    ("tcp://192.0.2.7:7100", "AUTO", True),
])
def test_mdns_auto_runs_discovery_unless_the_inbox_is_on_loopback(listen, enabled, wanted):
    env = {"ZMQAGENTS_NODE_LISTEN": listen, **({"ZMQAGENTS_MDNS_ENABLED": enabled} if enabled else {})}
    cfg = load(env=env)
    assert mdns_wanted(cfg) is wanted
    assert tomllib.loads(to_toml(cfg))["mdns"]["enabled"] == cfg.mdns.enabled  # config check output reads back


def test_mdns_enabled_from_text_names_the_choices():
    with pytest.raises(ConfigError) as err:
        load(env={"ZMQAGENTS_MDNS_ENABLED": "maybe"})
    assert "must be true, false or auto" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ('[spool]\nfsnyc = "always"\n', "unknown key 'fsnyc' in [spool]"),
    ('[spol]\nfsync = "always"\n', "unknown section [spol]"),
    ('listen = "tcp://127.0.0.1:1"\n', "must be inside a section"),
    ('[spool]\nfsync = "sometimes"\n', "[spool] fsync: must be one of always, batch, never"),
    ('[spool]\nmax_bytes = "lots"\n', "[spool] max_bytes: must be a size"),
    ('[local_api]\nmode = 660\n', "[local_api] mode: must be a mode from 0o000 to 0o777"),
    ('[local_api]\nenabled = "yes"\n', "[local_api] enabled: must be true or false"),
    ('[mdns]\nenabled = "sometimes"\n', '[mdns] enabled: must be true, false or "auto"'),
    ('[node]\nlisten = "http://x"\n', "[node] listen: must be tcp://HOST:PORT"),
    ('[node]\nbootstrap = ["nope"]\n', "[node] bootstrap: contact 'nope'"),
    ('[node]\nbootstrap = "@/tmp/x"\n', "[node] bootstrap: must be a list"),
    ('[node]\ndrain_timeout = -1\n', "[node] drain_timeout: must be between 0 and 3600"),
    ('[admin]\nlisten = "9464"\n', "[admin] listen: must be HOST:PORT"),
    ('[node]\noutbound_only = true\n', "node.outbound_only (from "),
    ('[node]\nrelays = ["@/tmp/relay.contact"]\n', "relays are for outbound-only nodes"),
    ("[node\nkey = 1\n", "not valid TOML"),
])
def test_each_bad_file_names_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nlevel = "\xff"\n')
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8"):
        load(path, env={})


def test_bad_conf_d_file_is_named_not_the_main_file(tmp_path):
    main = write(tmp_path / "node.toml", "[node]\n")
    bad = write(tmp_path / "conf.d" / "20-bad.toml", "[mdns]\nenabled = 3\n")
    with pytest.raises(ConfigError, match=f"{bad}: \\[mdns\\] enabled: must be true, false or \"auto\""):
        load(main, env={})


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path, env={})
    secret = tmp_path / "secret.toml"
    if os.geteuid() == 0:  # root reads any mode: make it unreadable with a symlink loop (ELOOP)
        secret.symlink_to(secret)
    else:
        write(secret, "[node]\n").chmod(0)
    with pytest.raises(ConfigError, match=f"cannot read config file {secret}"):
        load(secret, env={})
    write(tmp_path / "x" / "node.toml", "[node]\n")
    (tmp_path / "x" / "conf.d").write_text("a file, not a directory")
    with pytest.raises(ConfigError, match="conf.d .* is not a directory"):
        load(tmp_path / "x" / "node.toml", env={})


def test_env_and_flag_errors_name_the_variable_and_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="environment ZMQAGENTS_SPOOL_FSYNC: \\[spool\\] fsync"):
        load(env={"ZMQAGENTS_SPOOL_FSYNC": "sometimes"})
    with pytest.raises(ConfigError, match="environment ZMQAGENTS_MDNS_ENABLE: unknown key in \\[mdns\\].*ZMQAGENTS_MDNS_ENABLED"):
        load(env={"ZMQAGENTS_MDNS_ENABLE": "1"})
    with pytest.raises(ConfigError, match="flag --listen: \\[node\\] listen"):
        load(env={}, overrides=[Override("node.listen", "nowhere", "flag --listen")])
    with pytest.raises(ConfigError, match="flag --set 'spool.fsnyc=1': unknown key 'fsnyc'.*did you mean 'fsync'"):
        parse_set("spool.fsnyc=1")
    with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
        parse_set("fsync")
    with pytest.raises(ConfigError, match="flag --set log.level: \\[log\\] level: must be one of"):
        load(env={}, overrides=[parse_set("log.level=loud")])


def test_config_check_prints_sources_and_never_the_secret(tmp_path):
    key = tmp_path / "node.key"
    identity = Identity.generate()
    identity.save(key)
    main = write(tmp_path / "node.toml", f'[node]\nkey = "{key}"\n[spool]\nfsync = "always"\n')
    out = zmqa("config", "check", str(main), "--set", "log.format=json", env={"ZMQAGENTS_MDNS_ENABLED": "false"})
    assert out.returncode == 0, out.stderr
    secret = bytes(identity.signing_key).hex()
    assert secret not in out.stdout and secret not in out.stderr
    doc = tomllib.loads(out.stdout)
    assert doc["spool"]["fsync"] == "always" and doc["mdns"]["enabled"] is False and doc["log"]["format"] == "json"
    assert f'fsync = "always"  # {main}' in out.stdout
    assert "enabled = false  # environment ZMQAGENTS_MDNS_ENABLED" in out.stdout
    assert identity.node_id.hex() in out.stdout

    js = zmqa("config", "check", str(main), "--json")
    assert js.returncode == 0, js.stderr
    info = json.loads(js.stdout)
    assert info["ok"] and info["config"]["spool"]["fsync"] == "always" and info["sources"]["spool.fsync"] == str(main)
    assert info["key"] == {"path": str(key), "exists": True, "node_id": identity.node_id.hex(),
                           "public_key": info["key"]["public_key"]}
    assert secret not in js.stdout


def test_config_check_exit_2_for_bad_config_key_file_or_allowlist(tmp_path):
    bad = write(tmp_path / "bad.toml", "[spool]\nfsync = 1\n")
    out = zmqa("config", "check", str(bad))
    assert out.returncode == 2 and f"{bad}: [spool] fsync: must be one of" in out.stderr and not out.stdout

    corrupt_key = write(tmp_path / "corrupt.key", "secret = 'nope'\n")
    main = write(tmp_path / "k.toml", f'[node]\nkey = "{corrupt_key}"\n')
    out = zmqa("config", "check", str(main))
    assert out.returncode == 2 and "[node] key (from" in out.stderr and "corrupt" in out.stderr

    allow = write(tmp_path / "allow", "not-an-id\n")
    main = write(tmp_path / "a.toml", f'[node]\nallowlist = "{allow}"\n')
    out = zmqa("config", "check", str(main))
    assert out.returncode == 2 and f"node.allowlist (from {main})" in out.stderr and f"{allow}:1" in out.stderr

    out = zmqa("config", "check", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_the_example_config_and_the_readme_snippet_are_valid(tmp_path):
    root = Path(__file__).resolve().parents[2]
    example = load(root / "scripts" / "node.example.toml", env={})
    assert example.log.format == "json" and example.spool.max_bytes == 64 * 2**20 and example.local_api.mode == 0o660
    readme = (root / "README.md").read_text()
    snippet = readme.split("## Run as a sidecar", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = load(write(tmp_path / "readme.toml", snippet), env={})
    assert cfg.node.profile == "edge" and cfg.node.bootstrap == ("@/etc/zmqagents/seed.contact",)
