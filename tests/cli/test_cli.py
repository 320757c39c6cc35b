"""The `zmqagents` command as a shell user runs it: real processes, real sockets, real files."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from zmqagents.identity import Identity

from helpers.cli import server, zmqa


def test_keygen_writes_a_private_key_and_refuses_to_overwrite(tmp_path):
    key = tmp_path / "node.key"
    first = zmqa("keygen", str(key))
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert len(info["node_id"]) == 64 and len(info["public_key"]) == 52
    assert key.stat().st_mode & 0o777 == 0o600
    again = zmqa("keygen", str(key))
    assert again.returncode == 1 and "--force" in again.stderr
    assert zmqa("keygen", str(key), "--force").returncode == 0


def test_bad_key_file_and_bad_contact_are_usage_errors(tmp_path):
    somebody = str(Identity.generate().contact("tcp://127.0.0.1:9"))
    key = tmp_path / "corrupt.key"
    key.write_text("secret = 'nope'\n")
    bad = zmqa("request", "--key", str(key), "--to", somebody, "1")
    assert bad.returncode == 2 and "corrupt" in bad.stderr
    missing = zmqa("request", "--key", str(tmp_path / "absent.key"), "--to", somebody, "1")
    assert missing.returncode == 2 and "keygen" in missing.stderr
    contact = zmqa("request", "--to", "not-a-contact", "1")
    assert contact.returncode == 2 and "PUBLICKEY@" in contact.stderr
    nobody = zmqa("request", "1")
    assert nobody.returncode == 2 and "--to" in nobody.stderr


def test_reply_exec_serves_piped_lines_in_order_and_reports_bad_lines(tmp_path):
    with server(tmp_path, "reply", "--exec", "tr a-z A-Z") as (contact, _):
        single = zmqa("request", "--to", contact, '"hello"')
        assert single.returncode == 0, single.stderr
        assert json.loads(single.stdout) == {"reply": "HELLO"}

        lines = ['"one"', "{not json", '"two"', "", '{"k": "v"}', '"three"']
        run = zmqa("request", "--to", contact, "--parallel", "4", input="\n".join(lines) + "\n")
        assert run.returncode == 1  # some lines failed
        out = [json.loads(line) for line in run.stdout.splitlines()]
        assert [(o["line"], o["ok"], o["reply"]) for o in out] == [
            (1, True, "ONE"), (3, True, "TWO"), (5, True, {"K": "V"}), (6, True, "THREE"),
        ]
        assert "line 2: invalid JSON" in run.stderr and "line 4: empty" in run.stderr


def test_failing_and_hanging_commands_give_error_replies_and_timeouts(tmp_path):
    with server(tmp_path, "reply", "--exec", "echo oops >&2; exit 3", name="fail") as (failing, _):
        run = zmqa("request", "--to", failing, '"x"')
        assert run.returncode == 1
        assert "exited with status 3" in run.stderr and "oops" in run.stderr
    with server(tmp_path, "reply", "--exec", "sleep 20", "--timeout", "60", name="slow") as (slow, _):
        run = zmqa("request", "--to", slow, "--timeout", "0.5", '"x"')
        assert run.returncode == 124, run.stderr
    with server(tmp_path, "reply", "--exec", "sleep 20", "--timeout", "0.3", name="killed") as (killed, _):
        run = zmqa("request", "--to", killed, "--timeout", "10", '"x"')
        assert run.returncode == 1 and "timed out" in run.stderr


def test_send_to_a_node_prints_each_message_once(tmp_path):
    with server(tmp_path, "node", name="sink") as (contact, proc):
        run = zmqa("send", "--to", contact, input='{"n": 1}\ngarbage\n{"n": 2}\n')
        assert run.returncode == 1 and "line 2" in run.stderr  # the bad line is reported...
        assert zmqa("send", "--to", contact, '{"n": 3}').returncode == 0
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
    bodies = [json.loads(line).get("body") for line in out.splitlines()]
    assert bodies[1:] == [{"n": 1}, {"n": 2}, {"n": 3}]  # ...and the good ones all arrive, once each


def test_publish_reaches_a_subscriber(tmp_path):
    with server(tmp_path, "subscribe", "news", "--count", "2", name="sub") as (contact, proc):
        run = zmqa("publish", "--to", contact, "news/today", input='"a"\n"b"\n')
        assert run.returncode == 0, run.stderr
        out, _ = proc.communicate(timeout=10)
    got = [json.loads(line) for line in out.splitlines()][1:]
    assert [(g["topic"], g["body"]) for g in got] == [("news/today", "a"), ("news/today", "b")]


def test_publish_and_subscribe_mesh_wide_through_a_bootstrap_node(tmp_path):
    with server(tmp_path, "node", name="seed") as (seed, _):
        with server(tmp_path, "subscribe", "weather", "--bootstrap", seed, "--count", "2", name="sub") as (_, proc):
            run = zmqa("publish", "weather", "--bootstrap", seed, input='"sun"\n"rain"\n')
            assert run.returncode == 0, run.stderr
            out, _ = proc.communicate(timeout=15)
    got = sorted((json.loads(line) for line in out.splitlines() if '"seq"' in line), key=lambda g: g["seq"])
    assert [(g["topic"], g["body"], g["seq"]) for g in got] == [("weather", "sun", 1), ("weather", "rain", 2)]
    assert got[0]["origin"] == got[1]["origin"] and len(got[0]["origin"]) == 64
    both = zmqa("publish", "--to", seed, "--bootstrap", seed, "t", "1")
    assert both.returncode == 2 and "--mesh" in both.stderr  # --to is the old name of --mesh --one-hop


def test_a_one_shot_publish_from_a_non_member_reaches_a_subscriber_in_a_four_node_mesh(tmp_path):
    # `publish --direct --mesh @seed TOPIC BODY` publishes right after joining and exits: its payloads
    # were still queued when the node closed its links (linger 0), so no member ever saw them. The
    # command's close now lingers on every link (TransportConfig.close_linger_ms).
    with server(tmp_path, "node", name="seed") as (seed, _), \
            server(tmp_path, "node", "--mesh", seed, name="n1"), server(tmp_path, "node", "--mesh", seed, name="n2"), \
            server(tmp_path, "subscribe", "alerts", "--direct", "--mesh", seed, "--count", "1", "--timeout", "20",
                   name="sub") as (_, proc):
        run = zmqa("publish", "--direct", "--mesh", seed, "alerts", '"disk full"')
        assert run.returncode == 0, run.stderr
        out, err = proc.communicate(timeout=25)
    got = [json.loads(line) for line in out.splitlines() if '"seq"' in line]
    assert [(g["topic"], g["body"], g["seq"]) for g in got] == [("alerts", "disk full", 1)], err


def test_publish_without_subscribers_times_out(tmp_path):
    with server(tmp_path, "node", name="quiet") as (contact, _):
        run = zmqa("publish", "--to", contact, "--wait", "0.5", "t", '"x"')
        assert run.returncode == 124 and "no neighbour subscribed" in run.stderr


def test_help_teaches_exit_codes_and_contacts():
    top = zmqa("--help")
    assert top.returncode == 0 and "PUBLICKEY@ENDPOINT" in top.stdout and "124  timed out" in top.stdout
    req = zmqa("request", "--help")
    assert req.returncode == 0 and "--parallel" in req.stdout


def test_node_joins_through_bootstrap_and_peers_lists_the_table(tmp_path):
    with server(tmp_path, "node", name="seed") as (seed, _):
        with server(tmp_path, "node", "--bootstrap", seed, name="joiner") as (joiner, _):
            table = zmqa("peers", "--to", seed, "--json")
            assert table.returncode == 0, table.stderr
            rows = [json.loads(line) for line in table.stdout.splitlines()]
            joiner_id = Path(joiner[1:]).read_text().strip()
            from zmqagents.identity import Contact
            assert Contact.parse(joiner_id).node_id.hex() in {r["node_id"] for r in rows}
            human = zmqa("peers", "--to", seed)
            assert human.returncode == 0 and human.stdout.startswith("NODE")
