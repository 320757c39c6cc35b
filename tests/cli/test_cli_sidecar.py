"""The CLI through a running sidecar (issue 15 item 2): real processes for the seed, the agent, the sidecar
and every command; the sidecar found at its default path (no flag), or named with --socket.

Each test checks that the work really went through the sidecar (its `status` counters move) and that
--direct does not use it.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.helpers.cli import CLI, server
from tests.helpers.sidecar_proc import SidecarProc, envelope, unpack


@pytest.fixture
def mesh(tmp_path):
    """A seed, an agent serving `upper`, and a sidecar joined through the seed."""
    with server(tmp_path, "node", name="seed") as (seed, _):
        with server(tmp_path, "agent", "--capability", "upper", "--stdin", "text", "--exec", "tr a-z A-Z",
                    "--mesh", seed, name="agent") as (agent, _):
            side = SidecarProc(mesh=[seed]).start()
            try:
                deadline = time.monotonic() + 20  # until the sidecar sees the agent's provider record
                while time.monotonic() < deadline:
                    found = side.call("find", {"name": "upper", "timeout_ms": 3000})
                    if found["t"] == "ok" and found["b"]:
                        break
                    time.sleep(0.2)
                yield seed, agent, side
            finally:
                side.close()


@pytest.mark.timeout(120)
def test_task_goes_through_the_sidecar_at_its_default_path(mesh):
    seed, _, side = mesh
    run = side.run("task", "upper", input='"hello"\n"world"\nnot json\n')
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 4, run.stderr  # the bad line is reported, the others ran
    assert [(r["line"], r["state"], r.get("output")) for r in lines] == [
        (1, "completed", "HELLO"), (2, "completed", "WORLD"), (3, "invalid", None)]
    assert side.status()["mesh"]["submits"] == 2
    # --stream prints the provider's progress; the same exit codes as a direct run
    run = side.run("task", "upper", "abc", "--stream")
    out = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 0 and out[-1]["output"] == "ABC" and any("progress" in o for o in out[:-1]), run.stderr
    run = side.run("task", "nobody-offers-this", "x")
    assert run.returncode == 3 and "no provider offers" in run.stdout + run.stderr
    assert side.status()["mesh"]["submits"] == 4
    # --direct: a node of its own, which needs a mesh; the sidecar is not asked
    run = side.run("task", "upper", "x", "--direct")
    assert run.returncode == 2 and "--mesh" in run.stderr
    run = side.run("task", "upper", "x", "--direct", "--mesh", seed)
    assert run.returncode == 0 and json.loads(run.stdout)["output"] == "X", run.stderr
    assert side.status()["mesh"]["submits"] == 4


@pytest.mark.timeout(120)
def test_task_through_a_sidecar_alone_is_unreachable_not_not_found():
    side = SidecarProc().start()
    try:
        run = side.run("task", "upper", "x", "--socket", side.sock)
        assert run.returncode == 8 and "unreachable" in run.stdout + run.stderr, run.stderr
    finally:
        side.close()


@pytest.mark.timeout(120)
def test_find_dht_and_peers_go_through_the_sidecar(mesh):
    seed, _, side = mesh
    run = side.run("find", "upper", "--json")
    assert run.returncode == 0, run.stderr
    assert len([json.loads(line) for line in run.stdout.splitlines()]) == 1
    assert side.run("find", "nothing-here").returncode == 3
    run = side.run("dht", "put", "cfg/1", '{"n": 1}', "--ttl", "60")
    assert run.returncode == 0 and json.loads(run.stdout)["stored"] >= 1, run.stderr
    run = side.run("dht", "get", "cfg/1", "--json")
    record = json.loads(run.stdout)
    assert run.returncode == 0 and record["value"] == {"n": 1}
    assert record["publisher"] == side.status()["node_id"]  # signed by the sidecar's key
    assert side.run("dht", "get", "cfg/absent").returncode == 3
    run = side.run("peers", "--json")  # the sidecar's own table
    assert run.returncode == 0 and len(run.stdout.splitlines()) >= 2, run.stderr
    run = side.run("peers", "--mesh", seed, "--json")  # the seed's table, asked by the sidecar
    assert run.returncode == 0 and side.status()["node_id"] in run.stdout, run.stderr
    mesh_stats = side.status()["mesh"]
    assert (mesh_stats["finds"], mesh_stats["dht_puts"], mesh_stats["peers_of"]) >= (3, 1, 1)
    assert mesh_stats["dht_gets"] == 2


@pytest.mark.timeout(120)
def test_subscribe_through_the_sidecar_streams_publications_and_unsubscribes(mesh):
    _, _, side = mesh
    sub = subprocess.Popen(CLI + ["subscribe", "news", "--count", "2", "--timeout", "30"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=side.env)
    try:
        deadline = time.monotonic() + 20
        while side.status()["mesh"]["subscriptions"] < 1:
            assert time.monotonic() < deadline and sub.poll() is None, sub.stderr.read()
            time.sleep(0.05)
        for body in ('"first"', '{"n": 2}'):
            run = side.run("publish", "news", body)
            assert run.returncode == 0, run.stderr
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    node_id = side.status()["node_id"]
    assert [(g["topic"], g["seq"], g["body"], g["origin"]) for g in got] == [
        ("news", 1, "first", node_id), ("news", 2, {"n": 2}, node_id)]
    stats = side.status()["mesh"]
    assert stats["subscribes"] == 1 and stats["publications_pushed"] == 2
    deadline = time.monotonic() + 10  # the command unsubscribed on its way out
    while side.status()["mesh"]["subscriptions"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_bad_mesh_operations_from_a_local_client_are_answered_bounded_and_counted():
    side = SidecarProc().start()
    try:
        cases = [
            ("subscribe", None, {}, "bad_request"),
            ("subscribe", {"topic": 7}, {}, "bad_request"),
            ("subscribe", {"topic": "x" * 300}, {}, "bad_request"),
            ("unsubscribe", None, {"re": b"\0" * 16}, "bad_request"),
            ("submit", {"input": 1}, {}, "bad_request"),
            ("submit", {"capability": "c", "priority": 99}, {}, "bad_request"),
            ("submit", {"capability": "c", "timeout_ms": -1}, {}, "bad_request"),
            ("submit", {"capability": "c", "stream": "yes"}, {}, "bad_request"),
            ("cancel", None, {"re": b"\1" * 16}, "unknown_work"),
            ("find", {}, {}, "bad_request"),
            ("find", {"name": "x", "timeout_ms": 0}, {}, "bad_request"),
            ("dht_get", {"key": 5}, {}, "bad_request"),
            ("dht_put", {"key": "k"}, {}, "bad_request"),
            ("dht_put", {"key": "k", "value": 1, "ttl_s": 10**9}, {}, "bad_request"),
            ("peers", None, {"to": "not a contact"}, "bad_request"),
            ("find", {"name": "x"}, {}, "unreachable"),  # a sidecar in no mesh says so
            ("submit", {"capability": "c"}, {}, "unreachable"),
        ]
        for op, body, fields, code in cases:
            answer = side.call(op, body, **fields)
            assert (answer["t"], answer["b"]["code"]) == ("error", code), (op, body, answer)
        # one client's subscriptions are bounded; the bound is an answer, not a crash
        sock = side.client()
        try:
            codes = []
            for _ in range(70):
                sock.send(envelope("subscribe", {"topic": "t"})[1])
                codes.append(unpack(sock.recv())["t"])
            assert codes.count("ok") == 64 and codes[64:] == ["error"] * 6
            status = side.status()
            assert status["mesh"]["subscriptions"] == 64 and status["local_api"]["busy"] == 6
            assert status["local_api"]["bad_request"] == 14 and status["local_api"]["unknown_work"] == 1
            assert status["mesh"]["failed_unreachable"] == 2
        finally:
            sock.close()
        assert side.call("ping")["t"] == "ok"  # still serving everyone else
    finally:
        side.close()


@pytest.mark.timeout(150)
def test_request_to_a_dead_peer_is_unreachable_and_to_a_slow_one_a_timeout(tmp_path):
    """Exit 8 when the peer acknowledged nothing (down, wrong address), 124 when it took the request and
    did not answer in time: directly and through the sidecar (whose `request` error says which)."""
    from tests.cli.test_cli_context import dead_contact

    dead = dead_contact(tmp_path)
    side = SidecarProc().start()
    try:
        with server(tmp_path, "reply", "--exec", "sleep 6; cat", name="slow") as (slow, _):
            for via in (["--direct"], ["--socket", side.sock]):
                run = side.run("request", *via, "--to", dead, "--timeout", "2", '"x"')
                assert run.returncode == 8 and "unreachable" in run.stderr, (via, run.stderr)
                run = side.run("request", *via, "--to", dead, "--timeout", "2", input='"x"\n')
                assert run.returncode == 8 and json.loads(run.stdout)["unreachable"] is True, (via, run.stderr)
                run = side.run("request", *via, "--to", slow, "--timeout", "2", '"x"')
                assert run.returncode == 124 and "unreachable" not in run.stderr, (via, run.stderr)
            run = side.run("send", "--direct", "--to", dead, "--timeout", "2", '"x"')
            assert run.returncode == 8 and "unreachable" in run.stderr, run.stderr
            local = side.status()["local_api"]
            assert local["requests"] == 3
    finally:
        side.close()


@pytest.mark.timeout(120)
def test_agent_serves_through_the_sidecar_and_withdraws_when_stopped(tmp_path):
    side = SidecarProc().start()
    agent = subprocess.Popen(CLI + ["agent", "--capability", "shout", "--stdin", "text", "--exec",
                                    "tr a-z A-Z; echo done >&2", "--contact-file", str(tmp_path / "a.contact")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=side.env)
    try:
        hello = json.loads(agent.stdout.readline())
        assert hello["node_id"] == side.status()["node_id"] and hello["sidecar"] == side.sock
        assert side.status()["serving"]["capabilities"] == ["shout"]
        # a caller elsewhere reaches the capability at the sidecar's node; this process ran the command
        contact = (tmp_path / "a.contact").read_text().strip()
        assert contact == hello["contact"]
        run = side.run("task", "shout", "--direct", "--to", contact, input='"hi"\n"yo"\n')
        out = [json.loads(line) for line in run.stdout.splitlines()]
        assert run.returncode == 0 and [o["output"] for o in out] == ["HI", "YO"], run.stderr
        assert {o["provider"] for o in out} == {hello["node_id"]}
        agent.send_signal(subprocess.signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
        deadline = time.monotonic() + 10
        while side.status()["serving"]["capabilities"]:  # withdrawn on the way out, not at the lease
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        side.close()


@pytest.mark.timeout(60)
def test_a_subscriber_that_stops_reading_holds_only_its_own_bounded_queue():
    side = SidecarProc().start()
    # (the stalled one's libzmq would otherwise read up to 1000 frames for it, and its kernel buffers hold
    # some 200 KB: 8 KB bodies make the sidecar's side of the queue fill)
    stalled, reader, publisher = side.client(rcvhwm=1), side.client(5000), side.client()
    pad = "x" * 8000
    try:
        for sock in (stalled, reader):
            sock.send(envelope("subscribe", {"topic": "feed"})[1])
        assert unpack(reader.recv())["t"] == "ok"
        time.sleep(0.3)  # the stalled one's answer is in its queue; it never reads it
        for i in range(200):
            publisher.send(envelope("publish", {"i": i, "pad": pad}, topic="feed")[1])
        assert all(unpack(publisher.recv())["t"] == "ok" for _ in range(200))
        got = []
        while len(got) < 200:
            env = unpack(reader.recv())
            if env["t"] == "pub":
                got.append(env["b"]["body"]["i"])
        assert got == list(range(200))  # the reader heard everything, in order
        mesh = side.status()["mesh"]
        # the stalled client was written what its queues took (16 frames at the sidecar, its own libzmq and
        # kernel buffers), the rest waits in the node's bounded subscription queue: each publication is
        # either pushed or waiting (one may be in hand: the one held for its full queue)
        pushed_to_stalled = mesh["publications_pushed"] - 200
        assert 0 < pushed_to_stalled < 200 and mesh["backlog"] > 0, mesh
        assert 199 <= pushed_to_stalled + mesh["backlog"] <= 200, mesh
        assert mesh["publications_refused"] == 0
        assert side.call("ping", timeout_ms=2000)["t"] == "ok"  # everyone else is still served
    finally:
        for sock in (stalled, reader, publisher):
            sock.close()
        side.close()


@pytest.mark.timeout(120)
def test_sigterm_to_task_through_the_sidecar_cancels_at_the_provider(tmp_path):
    mark = tmp_path / "started"
    with server(tmp_path, "node", name="seed") as (seed, _):
        with server(tmp_path, "agent", "--capability", "slow", "--exec", f"touch {mark}; sleep 60", "--mesh", seed,
                    name="agent"):
            side = SidecarProc(mesh=[seed]).start()
            try:
                deadline = time.monotonic() + 20
                while not (found := side.call("find", {"name": "slow", "timeout_ms": 3000}))["b"]:
                    assert time.monotonic() < deadline, found
                    time.sleep(0.2)
                task = subprocess.Popen(CLI + ["task", "slow"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=side.env)
                task.stdin.write('"x"\n')
                task.stdin.flush()
                deadline = time.monotonic() + 30
                while not mark.exists():
                    assert time.monotonic() < deadline and task.poll() is None, task.stderr.read()
                    time.sleep(0.05)
                task.send_signal(subprocess.signal.SIGTERM)
                out, err = task.communicate(timeout=20)
                assert task.returncode == 143, err
                assert [json.loads(line)["state"] for line in out.splitlines()] == ["canceled"]
                assert side.status()["mesh"]["cancels"] == 1  # the sidecar was told, and told the provider
            finally:
                side.close()
