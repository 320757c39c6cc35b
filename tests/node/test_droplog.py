"""The transport's refusal counter and its rate-limited log (zmqagents/transport/droplog.py)."""

from __future__ import annotations

import logging

from zmqagents.transport.droplog import DropLog


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_drop_is_counted_and_each_peer_logged_once_per_interval(caplog):
    clock = _Clock()
    drops = DropLog(logging.getLogger("droptest"), quiet=frozenset({"no_route"}), interval=60.0, max_lines=4,
                    clock=clock)
    a, b = b"a" * 32, b"b" * 32
    with caplog.at_level(logging.DEBUG, logger="droptest"):
        for _ in range(100):
            drops.drop("identity_mismatch", a, "x")
        drops.drop("identity_mismatch", b, "x")
        drops.drop("no_route", a, "x")
        assert drops.counts == {"identity_mismatch": 101, "no_route": 1}
        lines = [r for r in caplog.records if r.name == "droptest"]
        assert [(r.levelno, r.getMessage()[:30]) for r in lines] == [
            (logging.WARNING, "refused from 616161616161: ide"),
            (logging.WARNING, "refused from 626262626262: ide"),
            (logging.DEBUG, "could not send to 616161616161"),
        ]
        caplog.clear()
        clock.now += 59.0
        drops.drop("identity_mismatch", a, "x")
        assert not caplog.records  # still within the interval
        clock.now += 1.0
        drops.drop("identity_mismatch", a, "x")
        messages = [r.getMessage() for r in caplog.records]
        assert messages[0].startswith("100 more dropped messages or refused links were not logged")
        assert messages[1].startswith("refused from 616161616161: ide")


def test_a_peer_with_a_new_key_each_time_cannot_flood_the_log(caplog):
    clock = _Clock()
    drops = DropLog(logging.getLogger("droptest"), interval=60.0, max_lines=4, clock=clock)
    with caplog.at_level(logging.WARNING, logger="droptest"):
        for i in range(1000):
            drops.drop("identity_mismatch", i.to_bytes(32, "big"), "x")
        assert drops.counts == {"identity_mismatch": 1000}
        assert len(caplog.records) == 4
        clock.now += 60.0
        drops.drop("identity_mismatch", b"z" * 32, "x")
        assert caplog.records[4].getMessage().startswith("996 more")
        assert len(caplog.records) == 6
