"""The crawl core (core/crawl.py): breadth-first asks, the rate and in-flight bounds, and hostile answers
(garbage, huge tables, invented nodes, lying contacts) bounded and counted, on a fake clock."""

from __future__ import annotations

import random

import pytest

from zmqagents.core.crawl import ANSWERED, BAD_ANSWER, DESCRIBE, PEERS, UNREACHABLE, UNVISITED, Crawl, CrawlLimits
from zmqagents.errors import InvalidArgument
from zmqagents.identity import Identity


def contacts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [str(Identity.from_seed(rng.randbytes(32)).contact(f"tcp://127.0.0.1:{7000 + i}")) for i in range(n)]


def node_id(contact: str) -> str:
    from zmqagents.identity import Contact

    return Contact.parse(contact).node_id.hex()


def row(contact: str, state: str = "alive", rtt: float | None = 1.5) -> dict:
    return {"node_id": node_id(contact), "contact": contact, "state": state, "incarnation": 0, "rtt_ms": rtt,
            "last_seen": 0.0, "fails": 0}


def run(crawl: Crawl, tables: dict[str, object], caps: dict[str, object] | None = None, now: float = 0.0,
        step: float = 0.01, limit: int = 100_000) -> float:
    """Answer every ask at once from ``tables`` (contact -> answer; missing: no answer) until done."""
    for _ in range(limit):
        if crawl.done:
            break
        asks = crawl.next_asks(now)
        for ask in asks:
            if ask.what == PEERS:
                if ask.contact in tables:
                    crawl.answered(ask, tables[ask.contact], now)
                else:
                    crawl.failed(ask, now)
            else:
                answer = (caps or {}).get(ask.contact)
                if answer is None:
                    crawl.serves_nothing(ask, now)
                else:
                    crawl.answered(ask, answer, now)
        now += step
    assert crawl.done
    crawl.stop(now)
    return now


def full_mesh(cs: list[str]) -> dict[str, object]:
    return {c: [row(o) for o in cs if o != c] for c in cs}


def test_a_crawl_finds_every_node_and_every_table_entry_with_its_state_and_rtt():
    cs = contacts(6)
    crawl = Crawl(CrawlLimits(rate=1000, burst=10))
    assert crawl.seed(cs[0])
    tables = full_mesh(cs)
    tables[cs[1]] = [row(cs[0], "suspect", None), row(cs[2], rtt=0.25)]
    run(crawl, tables, caps={cs[2]: [{"name": "upper", "description": "x"}, {"name": "wc"}]})
    g = crawl.graph()
    assert [n["id"] for n in g["nodes"]][0] == node_id(cs[0])
    assert {n["id"] for n in g["nodes"]} == {node_id(c) for c in cs}
    assert all(n["state"] == ANSWERED for n in g["nodes"])
    assert len(g["edges"]) == 5 * 5 + 2  # five full tables, one of two entries
    e = next(e for e in g["edges"] if e["from"] == node_id(cs[1]) and e["to"] == node_id(cs[0]))
    assert e["state"] == "suspect" and e["rtt_ms"] is None
    by_id = {n["id"]: n for n in g["nodes"]}
    assert by_id[node_id(cs[2])]["capabilities"] == ["upper", "wc"]
    assert by_id[node_id(cs[3])]["capabilities"] == []
    assert by_id[node_id(cs[0])]["seen"] == {"alive": 4, "suspect": 1, "unprobed": 0}
    c = g["crawl"]
    assert c["nodes_found"] == 6 and c["answered"] == 6 and c["messages_sent"] == 12  # a table and a describe each
    assert c["bad_entries"] == 0 and c["seconds"] is not None


def test_unanswered_nodes_are_unreachable_and_a_bound_leaves_the_rest_unvisited_and_counted():
    cs = contacts(10)
    crawl = Crawl(CrawlLimits(max_nodes=4, rate=1000, burst=10, capabilities=False))
    crawl.seed(cs[0])
    tables = full_mesh(cs)
    del tables[cs[1]]  # cs[1] never answers
    run(crawl, tables)
    g = crawl.graph()
    states = {n["id"]: n["state"] for n in g["nodes"]}
    assert len(states) == 4
    assert states[node_id(cs[1])] == UNREACHABLE
    assert g["crawl"]["beyond_max_nodes"] > 0
    assert g["crawl"]["messages_sent"] == 4 and g["crawl"]["asked_describe"] == 0
    assert all(e["from"] in states and e["to"] in states for e in g["edges"])


def test_asks_leave_at_the_rate_and_never_more_than_in_flight_at_once():
    cs = contacts(30)
    crawl = Crawl(CrawlLimits(rate=10, burst=2, in_flight=3, capabilities=False), now=0.0)
    crawl.seed(cs[0])
    tables = full_mesh(cs)
    first = crawl.next_asks(0.0)
    assert len(first) == 1
    crawl.answered(first[0], tables[first[0].contact], 0.0)
    burst = crawl.next_asks(0.0)
    assert len(burst) == 1  # the burst of 2 is spent: one then, one now
    assert crawl.next_timer(0.0) == pytest.approx(0.1)
    sent, pending, now = 2, list(burst), 0.0
    while not crawl.done and now < 100:
        now += 0.05
        pending += crawl.next_asks(now)
        assert len(pending) <= 3
        sent = crawl.messages_sent
        if now * 10 % 3 < 0.5:  # answer now and then, so the in-flight bound binds
            for ask in pending:
                crawl.answered(ask, tables[ask.contact], now)
            pending = []
    assert crawl.done and sent == 30
    assert 2.5 < now < 4.0  # 30 asks at 10 a second after a burst of 2


def test_garbage_answers_and_entries_are_counted_and_never_drawn():
    cs = contacts(6)
    rogue = contacts(1, seed=99)[0]
    crawl = Crawl(CrawlLimits(rate=1000, burst=10))
    crawl.seed(cs[0])
    good = row(cs[1])
    tables = {
        cs[0]: [good, row(cs[2]), row(cs[3]), row(cs[4]), "not a map", 17, None, {"node_id": 5},
                {**row(cs[5]), "node_id": node_id(cs[4])},  # a contact that is not that id
                {**row(cs[5]), "state": "dead"}, {**row(cs[5]), "rtt_ms": -1}, {**row(cs[5]), "rtt_ms": True},
                {**row(cs[5]), "rtt_ms": float("nan")}, {**row(cs[5]), "contact": "x@y"},
                {**row(cs[5]), "contact": cs[5].split("@")[0] + "@tcp://" + "h" * 300 + ":1"},
                row(cs[0])],  # itself
        cs[1]: {"not": "a table"},
        cs[2]: b"\x00garbage",
        cs[3]: [row(rogue)],  # rogue never answers
        cs[4]: [],
    }
    run(crawl, tables, caps={cs[0]: "nonsense", cs[3]: [{"name": "ok"}, {"name": 5}, {"name": "x" * 65},
                                                          {"name": "a b"}, "junk", {"name": "ok"}]})
    g = crawl.graph()
    states = {n["id"]: n["state"] for n in g["nodes"]}
    assert states[node_id(cs[1])] == BAD_ANSWER and states[node_id(cs[2])] == BAD_ANSWER
    assert states[node_id(rogue)] == UNREACHABLE
    assert node_id(cs[5]) not in states
    c = g["crawl"]
    assert c["bad_answers"] == 2
    assert c["bad_entries"] == 12
    assert c["bad_capabilities"] == 1 + 4
    caps = {n["id"]: n["capabilities"] for n in g["nodes"]}
    assert caps[node_id(cs[0])] == [] and caps[node_id(cs[3])] == ["ok"]
    assert caps[node_id(cs[1])] is None  # never described: it did not answer with a table


def test_a_huge_table_is_read_only_up_to_max_entries():
    cs = contacts(40)
    crawl = Crawl(CrawlLimits(max_entries=10, rate=1000, burst=10, capabilities=False))
    crawl.seed(cs[0])
    tables = {cs[0]: [row(c) for c in cs[1:]] * 100}  # 3,900 entries
    run(crawl, tables)
    g = crawl.graph()
    c = g["crawl"]
    assert c["tables_truncated"] == 1 and c["entries_truncated"] == 3900 - 10
    assert len(g["nodes"]) == 11 and len(g["edges"]) == 10


def test_late_and_repeated_answers_change_nothing_and_stop_leaves_the_rest_unvisited():
    cs = contacts(5)
    crawl = Crawl(CrawlLimits(rate=1000, burst=10, capabilities=False))
    crawl.seed(cs[0])
    [ask] = crawl.next_asks(0.0)
    crawl.answered(ask, full_mesh(cs)[cs[0]], 0.0)
    crawl.answered(ask, [], 0.1)  # again: ignored
    asks = crawl.next_asks(0.2)
    assert len(asks) == 4
    crawl.stop(0.3)
    crawl.answered(asks[0], [], 0.4)  # after stop: ignored
    g = crawl.graph()
    assert g["crawl"]["answered"] == 1 and g["crawl"]["seconds"] == 0.3
    assert sorted(n["state"] for n in g["nodes"]) == [ANSWERED] + [UNVISITED] * 4
    assert crawl.done


def test_the_local_node_is_read_not_asked():
    cs = contacts(3)
    crawl = Crawl(CrawlLimits(rate=1000, burst=10, capabilities=False))
    crawl.local(cs[0], [row(cs[1]), row(cs[2])])
    asks = crawl.next_asks(0.0)
    assert {a.contact for a in asks} == {cs[1], cs[2]} and all(a.what == PEERS for a in asks)
    g = crawl.graph()
    local = [n for n in g["nodes"] if n["local"]]
    assert len(local) == 1 and local[0]["state"] == ANSWERED and local[0]["table_size"] == 2
    assert not crawl.seed(cs[0])  # known already
    assert not crawl.seed("not a contact")
    assert DESCRIBE != PEERS


@pytest.mark.parametrize("bad", [{"max_nodes": 0}, {"max_nodes": 10_001}, {"rate": 0}, {"rate": float("inf")},
                                 {"burst": 0.5}, {"in_flight": True}, {"max_entries": 1.5}])
def test_limits_refuse_what_cannot_bound_a_crawl(bad):
    with pytest.raises(InvalidArgument):
        CrawlLimits(**bad)
