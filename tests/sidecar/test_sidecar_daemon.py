"""The sidecar as an operator runs it: real processes, real signals, real sockets and files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

from zmqagents.identity import Contact, Identity
from zmqagents.node import Node

CLI = [sys.executable, "-m", "zmqagents.cli"]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMQAGENTS_") and k != "NOTIFY_SOCKET"}
    env.update(extra)
    return env


def sidecar_config(tmp_path: Path, extra: str = "", name: str = "node") -> Path:
    """A config that keeps everything in tmp_path and turns LAN discovery off (tests stay on loopback)."""
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        [node]
        key = "{name}.key"
        listen = "tcp://127.0.0.1:0"
        contact_file = "{name}.contact"
        drain_timeout = 2
        [local_api]
        path = "{tmp_path}/{name}.sock"
        [spool]
        dir = "{tmp_path}/{name}-spool"
        [mdns]
        enabled = false
        """) + textwrap.dedent(extra))
    return path


@contextmanager
def running(args: list[str], contact_file: Path, env: dict | None = None, timeout: float = 15):
    """Start a sidecar process, wait for its contact file, yield (proc, contact); kill it by PID at the end."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or clean_env())
    try:
        deadline = time.monotonic() + timeout
        while not contact_file.exists():
            if proc.poll() is not None:
                raise AssertionError(f"sidecar exited early ({proc.returncode}): {proc.stderr.read()}")
            assert time.monotonic() < deadline, "sidecar did not start"
            time.sleep(0.02)
        yield proc, Contact.parse(contact_file.read_text().strip())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 10) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_sigterm_drains_announces_leave_and_exits_0(arun, tmp_path):
    """A peer sees the stopped sidecar as "left" (a graceful leave), never "failed"."""

    async def main():
        async with Node() as peer:
            cfg = sidecar_config(tmp_path)
            cfg.write_text(cfg.read_text().replace("[node]\n", f'[node]\nbootstrap = ["{peer.contact}"]\n', 1))
            contact_file = tmp_path / "node.contact"
            proc = subprocess.Popen(CLI + ["node", "--config", str(cfg)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=clean_env())
            try:
                # Poll without blocking the loop: the peer must answer the sidecar's bootstrap join.
                await wait_until(lambda: contact_file.exists() or proc.poll() is not None, 15, "the sidecar to start")
                assert proc.poll() is None, proc.stderr.read()
                me = Contact.parse(contact_file.read_text().strip()).node_id
                await wait_until(lambda: peer.membership.state_of(me) == "alive", 10, "the peer to probe the sidecar")
                await asyncio.sleep(1.2)  # the sidecar's own reconcile: it now holds the peer as a member
                left = asyncio.ensure_future(_first(peer.events(), me))
                await asyncio.sleep(0.05)
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                event = await asyncio.wait_for(left, 5)
                assert event.kind == "left"
                code, out, err = await asyncio.get_running_loop().run_in_executor(None, finish, proc)
                assert code == 0, err
                assert time.monotonic() - started < 4
                assert json.loads(out.splitlines()[0])["contact"].startswith(contact_file.read_text().strip())
                assert "SIGTERM: stopping" in err and "stopped" in err
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    arun(main(), timeout=30)


async def _first(events, node_id: bytes):
    async for event in events:
        if event.node_id == node_id and event.kind in ("left", "failed"):
            return event


def test_first_start_creates_the_key_and_flags_beat_env_beat_file(tmp_path):
    cfg = sidecar_config(tmp_path, '[log]\nlevel = "error"\n')
    env = clean_env(ZMQAGENTS_NODE_LISTEN="tcp://127.0.0.1:0", ZMQAGENTS_LOG_LEVEL="info",
                    ZMQAGENTS_NODE_CONTACT_FILE=str(tmp_path / "env.contact"))
    args = CLI + ["node", "--config", str(cfg), "--contact-file", str(tmp_path / "flag.contact")]
    with running(args, tmp_path / "flag.contact", env=env) as (proc, contact):
        assert not (tmp_path / "env.contact").exists() and not (tmp_path / "node.contact").exists()
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    assert code == 0
    key = tmp_path / "node.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert contact.node_id == Identity.load(key).node_id
    assert f"created a new node key {key} (mode 0600)" in err  # level info, from the environment, beat the file
    assert "listening as" in err

    # The second start reuses the key and creates nothing.
    with running(CLI + ["-v", "node", "--config", str(cfg)], tmp_path / "node.contact") as (proc, again):
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    assert code == 0 and again.node_id == contact.node_id and "created" not in err


def test_bad_key_files_allowlists_and_contacts_exit_2_naming_key_and_file(tmp_path):
    corrupt = tmp_path / "node.key"
    corrupt.write_text('format = "zmqagents-ed25519-v1"\nsecret = "zz"\n')
    cfg = sidecar_config(tmp_path)
    out = subprocess.run(CLI + ["node", "--config", str(cfg)], capture_output=True, text=True, timeout=20, env=clean_env())
    assert out.returncode == 2 and f"[node] key (from {cfg})" in out.stderr and "corrupt" in out.stderr

    corrupt.unlink()
    corrupt.symlink_to(corrupt)  # unreadable even for root: ELOOP
    out = subprocess.run(CLI + ["node", "--config", str(cfg)], capture_output=True, text=True, timeout=20, env=clean_env())
    assert out.returncode == 2 and "cannot read key file" in out.stderr and f"(from {cfg})" in out.stderr
    corrupt.unlink()

    out = subprocess.run(CLI + ["node", "--config", str(cfg), "--allowlist", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=20, env=clean_env())
    assert out.returncode == 2 and "node.allowlist (from flag --allowlist)" in out.stderr

    out = subprocess.run(CLI + ["node", "--config", str(cfg), "--bootstrap", f"@{tmp_path}/absent.contact"],
                         capture_output=True, text=True, timeout=20, env=clean_env())
    assert out.returncode == 2 and "node.bootstrap (from flag --mesh)" in out.stderr  # --mesh: the name --bootstrap now stands for

    out = subprocess.run(CLI + ["node", "--config", str(cfg)], capture_output=True, text=True, timeout=20,
                         env=clean_env(ZMQAGENTS_SPOOL_FSYNC="sometimes"))
    assert out.returncode == 2 and "environment ZMQAGENTS_SPOOL_FSYNC: [spool] fsync" in out.stderr


def test_json_logs_sd_notify_and_sighup_reload(tmp_path):
    """READY=1/STOPPING=1 reach a real notify socket; SIGHUP switches the log format and level and
    the allowlist in place, and reports what needs a restart; every JSON log line parses."""
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(10)
    allow = tmp_path / "allow"
    stranger = Identity.generate()
    cfg = sidecar_config(tmp_path)
    cfg.write_text(cfg.read_text() + '[log]\nformat = "text"\nlevel = "info"\n')
    try:
        args = CLI + ["node", "--config", str(cfg), "--echo"]
        with running(args, tmp_path / "node.contact", env=clean_env(NOTIFY_SOCKET=str(notify_path))) as (proc, contact):
            ready = notify.recv(4096).decode()
            assert ready.startswith("READY=1\n") and contact.endpoint in ready
            asked = _request(stranger, tmp_path, contact)
            assert asked.returncode == 0, asked.stderr  # no allowlist yet: anyone may ask

            allow.write_text(f"# only this one\n{Identity.generate().node_id.hex()}\n")
            changed = cfg.read_text().replace('format = "text"', 'format = "json"').replace('level = "info"', 'level = "debug"')
            changed = changed.replace('listen = "tcp://127.0.0.1:0"', 'listen = "tcp://127.0.0.1:1"')
            cfg.write_text(changed.replace("[node]\n", f'[node]\nallowlist = "{allow}"\n', 1))
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            refused = _request(stranger, tmp_path, contact)
            assert refused.returncode == 8, refused.stderr  # not on the allowlist any more: no answer at all (unreachable)

            cfg.write_text(cfg.read_text() + "[bogus]\n")
            proc.send_signal(signal.SIGHUP)  # invalid now: logged, nothing changes
            time.sleep(0.3)
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            code, _, err = finish(proc)
    finally:
        notify.close()
    assert code == 0, err
    text_part, _, json_part = err.partition("reload: log.format")
    assert "listening as" in text_part
    lines = [json.loads(line) for line in json_part.splitlines()[1:] if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(obj) for obj in lines)
    messages = [obj["msg"] for obj in lines]
    assert any(m.startswith("reload: log.level = 'debug'") for m in messages)
    assert any(m.startswith("reload: node.allowlist") for m in messages)
    assert any("node.listen changed to 'tcp://127.0.0.1:1'" in m and "needs a restart" in m for m in messages)
    assert any(m.startswith("reload failed; still running the previous configuration") and "[bogus]" in m
               for m in messages), messages
    assert any(obj["level"] == "debug" for obj in lines)  # the new level is in effect (the second reload)


def _request(identity: Identity, tmp_path: Path, contact: Contact) -> subprocess.CompletedProcess:
    key = tmp_path / "stranger.key"
    if not key.exists():
        identity.save(key)
    return subprocess.run(CLI + ["request", "--key", str(key), "--to", str(contact), "--timeout", "1.5", '"hi"'],
                          capture_output=True, text=True, timeout=20, env=clean_env())


PROBE = '''
import asyncio, json, os
import colorsys  # stands in for a service's own library (zeroconf, prometheus_client): nothing else imports it

LOG = os.environ["PROBE_LOG"]


def record(*what):
    with open(LOG, "a") as f:
        f.write(json.dumps(what) + "\\n")


class Probe:
    def __init__(self, sidecar):
        self.sidecar = sidecar
        record("create", sidecar.node.contact.endpoint)

    async def start(self):
        record("start")

    def ready(self):
        return True

    async def reload(self, config):
        record("reload", config.admin.listen)
        return ["admin.listen"]

    async def close(self, drain_timeout):
        record("close", drain_timeout, self.sidecar.ready())
        if os.environ.get("PROBE_SLOW"):
            await asyncio.sleep(drain_timeout)
        record("closed")


def create(sidecar):
    return Probe(sidecar)
'''

DRIVER = '''
import sys
sys.path.insert(0, sys.argv[1])
from zmqagents.node import run
from zmqagents.sidecar import config, daemon, logs

daemon.SERVICES.append(daemon.ServiceSpec("probe", "probe_service:create", lambda c: c.admin.enabled))
load = lambda: config.load(sys.argv[2])
cfg = load()
logs.configure(cfg.log.format, cfg.log.level)
sys.exit(run(daemon.Sidecar(cfg, loader=load).serve()))
'''


def _driver(tmp_path: Path) -> list[str]:
    (tmp_path / "probe_service.py").write_text(PROBE)
    (tmp_path / "driver.py").write_text(DRIVER)
    return [sys.executable, "-X", "importtime", str(tmp_path / "driver.py"), str(tmp_path)]


def test_a_service_is_imported_started_reloaded_and_closed_only_when_enabled(tmp_path):
    log = tmp_path / "probe.log"
    off = sidecar_config(tmp_path, "[admin]\nenabled = false\n", name="off")
    with running(_driver(tmp_path) + [str(off)], tmp_path / "off.contact", env=clean_env(PROBE_LOG=str(log))) as (proc, _):
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    assert code == 0 and not log.exists()
    assert "colorsys" not in err  # -X importtime lists every module an import statement loads

    on = sidecar_config(tmp_path, '[admin]\nenabled = true\nlisten = "127.0.0.1:1"\n', name="on")
    with running(_driver(tmp_path) + [str(on)], tmp_path / "on.contact", env=clean_env(PROBE_LOG=str(log))) as (proc, c):
        on.write_text(on.read_text().replace("127.0.0.1:1", "127.0.0.1:2"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reload" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    assert code == 0, err
    assert "| colorsys" in err
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    assert [step[0] for step in steps] == ["create", "start", "reload", "close", "closed"]
    assert steps[0][1] == c.endpoint and steps[2][1] == "127.0.0.1:2"  # created after the node bound; reloaded
    assert 1.5 < steps[3][1] <= 2 and steps[3][2] is False  # the drain budget; not ready while stopping
    assert "reload: admin.listen = '127.0.0.1:2'" in err


def test_second_signal_exits_at_once_without_draining(tmp_path):
    log = tmp_path / "probe.log"
    cfg = sidecar_config(tmp_path, "[admin]\nenabled = true\n")
    cfg.write_text(cfg.read_text().replace("drain_timeout = 2", "drain_timeout = 30"))
    env = clean_env(PROBE_LOG=str(log), PROBE_SLOW="1")
    with running(_driver(tmp_path) + [str(cfg)], tmp_path / "node.contact", env=env) as (proc, _):
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while "close" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the drain did not start"
            time.sleep(0.02)
        assert proc.poll() is None  # draining: it would take 30 s
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc, timeout=5)
    assert code == 128 + signal.SIGINT
    assert time.monotonic() - started < 2
    assert "second signal (SIGINT): exiting now with status 130" in err
    assert "closed" not in log.read_text()


def test_startup_imports_neither_zeroconf_nor_prometheus_client_when_disabled(tmp_path):
    """Item 7: with mDNS and admin off, the running sidecar has not imported their libraries. With
    the admin endpoint on, it still imports neither prometheus_client nor ssl (the endpoint writes
    the text format itself): started as the console script starts it (zmqagents.launch), no
    OpenSSL library is mapped into the process."""
    def imported(extra: str, name: str) -> tuple[set[str], str]:
        cfg = sidecar_config(tmp_path, extra, name=name)
        args = [sys.executable, "-X", "importtime", "-m", "zmqagents.launch", "node", "--config", str(cfg)]
        with running(args, tmp_path / f"{name}.contact") as (proc, _):
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            proc.send_signal(signal.SIGTERM)
            code, _, err = finish(proc)
        assert code == 0, err
        return {line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")}, maps

    def top(modules: set[str]) -> set[str]:
        return {m.split(".")[0] for m in modules}

    off, _ = imported("[admin]\nenabled = false\n", "off")
    assert "zmqagents.node" in off and "zmq" in off  # the listing is real
    assert "zeroconf" not in top(off) and "prometheus_client" not in top(off)
    assert "zmqagents.sidecar.exposition" not in off
    port = _free_port()
    on, maps = imported(f'[admin]\nenabled = true\nlisten = "127.0.0.1:{port}"\n', "on")
    assert "zmqagents.sidecar.exposition" in on  # the control: the endpoint's code was loaded
    assert "prometheus_client" not in top(on) and "zeroconf" not in top(on)
    assert "zmq" in maps and "libssl" not in maps and "_ssl." not in maps  # zmq's own library is mapped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_taken_listen_address_exits_1_with_one_clear_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        out = subprocess.run(CLI + ["node", "--config", str(sidecar_config(tmp_path)), "--listen", f"tcp://127.0.0.1:{port}",
                                    "--log-format", "json"], capture_output=True, text=True, timeout=20, env=clean_env())
    finally:
        taken.close()
    assert out.returncode == 1
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # still one JSON object per line
    assert {"level": "error", "msg": f"the sidecar failed: Address already in use (addr='tcp://127.0.0.1:{port}')"}.items() \
        <= lines[-1].items()
    assert "Traceback" not in out.stderr


def test_an_outbound_only_sidecar_is_reached_through_its_relay(arun, tmp_path):
    """[node] outbound_only + relays (here from flags): the sidecar registers with the relay, and a
    node that knows only its relayed contact gets an answer."""
    from zmqagents.node import NodeConfig

    async def main():
        async with Node(config=NodeConfig(serve_relay=True)) as relay:
            cfg = sidecar_config(tmp_path)
            contact_file = tmp_path / "node.contact"
            proc = subprocess.Popen(CLI + ["node", "--config", str(cfg), "--echo", "--outbound-only",
                                           "--relay", str(relay.contact), "--seal"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
            try:
                await wait_until(lambda: contact_file.exists() or proc.poll() is not None, 15, "the sidecar to start")
                assert proc.poll() is None, proc.stderr.read()
                contact = Contact.parse(contact_file.read_text().strip())
                assert contact.relayed and [c.node_id for c in contact.relays] == [relay.node_id]
                await wait_until(lambda: contact.node_id in relay.relay_server, 10, "the sidecar to register")
                async with Node(peers=[contact]) as outside:
                    assert await outside.request(contact.node_id, {"q": 1}, timeout=5) == {"q": 1}
                assert relay.relay_server.stats["forwarded"] >= 2
                proc.send_signal(signal.SIGTERM)
                code, _, err = await asyncio.get_running_loop().run_in_executor(None, finish, proc)
                assert code == 0, err
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    arun(main(), timeout=40)


def test_sigterm_while_still_starting_exits_0_at_once(tmp_path):
    """A stop during start (here: a hello to a peer that never answers, up to 5 s) does not wait for it."""
    silent = Identity.generate().contact(f"tcp://127.0.0.1:{_free_port()}")
    cfg = sidecar_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[node]\n", f'[node]\npeers = ["{silent}"]\n', 1))
    err_path = tmp_path / "err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(CLI + ["node", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=err,
                                env=clean_env())
    try:
        deadline = time.monotonic() + 15
        while "created a new node key" not in err_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.02)
        time.sleep(0.3)
        assert not (tmp_path / "node.contact").exists()  # still starting: the hello is pending
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "SIGTERM: stopping" in err_path.read_text() and not (tmp_path / "node.contact").exists()
