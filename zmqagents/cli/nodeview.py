"""Where `zmqagents top` and `zmqagents members` read a node from, and the checks on what it says.

Two sources:

* a running sidecar's local API (``top`` and ``members``, ``protocols/local-api.md`` 4.5): the whole
  view (traffic, drops, queues, every member known, tombstones included);
* a contact (``--to``): a temporary node asks that node for its routing table (``zmqagents.peers``,
  ``protocols/node.md``). That is all a node tells other nodes: its traffic and queues are the
  business of whoever runs it, so through a contact only the table is shown.

Both answers come from outside this process and are treated as hostile: the frame is decoded with
the envelope's bounds (size, and values counted before any is built), every field is checked for
its type, size and range, and strings that reach the terminal are printable. Anything else is a
:class:`ViewError` naming what was wrong, which the commands print as one line (exit 1).

Why not :class:`~zmqagents.sidecar.localclient.LocalClient`: it multiplexes many operations on
one connection, so a frame it cannot decode matches no caller and can only be logged. These
commands ask one question at a time, so an undecodable answer is *the* answer, and an error.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from ..envelope import DEFAULT_MAX_SIZE, Envelope, EnvelopeError, decode
from ..identity import Contact, IdentityError
from ..errors import Error
from .exits import EXIT_FAILED, EXIT_TIMEOUT, EXIT_UNREACHABLE

PEER_TRAFFIC = ("messages_in", "bytes_in", "messages_out", "bytes_out")
MAX_ROWS = 4096  # rows of a table we accept from anyone (a sidecar sends at most 512)
MAX_TEXT = 512  # characters of any string field we accept
MAX_MAP = 256  # entries of any counter map, and drop reasons
MAX_TAGS = 32
ANSWER_MAX = 4 * DEFAULT_MAX_SIZE  # the largest answer a sidecar sends (local-api.md: 4 x its envelope limit)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # states, counter names, drop layers and reasons, tags


class ViewError(Error):
    """The node or sidecar could not be asked, or answered something that is not a valid view.
    ``code``: the exit status it means (cli/exits.py)."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


# -- sources ------------------------------------------------------------------------------------

class SidecarSource:
    """A running sidecar's local API: one operation at a time over one DEALER."""

    kind = "sidecar"

    def __init__(self, path: str | os.PathLike, timeout: float):
        import zmq
        import zmq.asyncio

        self.path = os.fspath(path)
        self.timeout = timeout
        self.ctx = zmq.asyncio.Context(io_threads=1)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, ANSWER_MAX + 4)  # libzmq cuts a larger frame before we hold it
        # A frame over MAXMSGSIZE makes libzmq drop the connection: the monitor tells us, so the
        # user hears "too large" at once rather than "no answer" at the deadline.
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.poller = zmq.asyncio.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.sock.connect(f"ipc://{self.path}")

    async def call(self, op: str) -> Any:
        """The body of the sidecar's answer to ``op`` (ViewError for an error answer, no answer, garbage)."""
        env = Envelope(os.urandom(16), bytes(32), op, None)
        await self.sock.send(env.encode())
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            ready = dict(await self.poller.poll(left * 1000)) if left > 0 else {}
            if self.monitor in ready:
                await self.monitor.recv_multipart()
                raise ViewError(f"the sidecar at {self.path} closed the connection while answering {op!r}: it "
                                f"stopped, or its answer was over the {ANSWER_MAX >> 20} MiB this command reads")
            if self.sock not in ready:
                raise ViewError(f"the sidecar at {self.path} did not answer {op!r} within {self.timeout:g} s",
                                EXIT_TIMEOUT)
            frame = await self.sock.recv()
            try:
                answer = decode(frame, max_size=ANSWER_MAX)
            except EnvelopeError as exc:
                raise ViewError(f"the sidecar at {self.path} answered {op!r} with something that is not a valid "
                                f"envelope ({type(exc).__name__}: {printable(str(exc), 200)})") from None
            if answer.re != env.id:
                continue  # an answer to an earlier question that timed out
            if answer.type == "error":
                body = answer.body if isinstance(answer.body, dict) else {}
                code, text = body.get("code"), printable(str(body.get("error", "")))
                if code == "unknown_op":
                    raise ViewError(f"the sidecar at {self.path} does not offer {op!r} (it predates it: "
                                    f"upgrade it): {text}")
                raise ViewError(f"the sidecar at {self.path} refused {op!r}: {printable(str(code))}: {text}")
            if answer.type != op:
                raise ViewError(f"the sidecar at {self.path} answered {op!r} with {printable(answer.type)!r}")
            return answer.body

    async def top(self) -> dict[str, Any]:
        return check_top(await self.call("top"))

    async def members(self) -> tuple[list[dict[str, Any]], int]:
        body = await self.call("members")
        if not isinstance(body, dict):
            raise ViewError(f"a members answer must be a map, not {type(body).__name__}")
        rows = check_rows(body.get("members"), member_row)
        total = body.get("total")
        if type(total) is not int or total < len(rows):
            raise ViewError("a members answer needs 'total', an int no smaller than its row count")
        return rows, total

    async def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close()
        self.sock.close()
        self.ctx.term()


class ContactSource:
    """A node reached through its contact by a temporary (non-member) node: its routing table only."""

    kind = "contact"

    def __init__(self, node, target: Contact, timeout: float):
        self.node = node
        self.target = target
        self.timeout = timeout

    async def table(self) -> list[dict[str, Any]]:
        from ..node import PEERS, NodeError, PeerUnreachable

        try:
            body = await self.node.request(self.target.node_id, None, timeout=self.timeout, type=PEERS)
        except asyncio.TimeoutError:
            raise ViewError(f"{self.target} did not answer within {self.timeout:g} s", EXIT_TIMEOUT) from None
        except PeerUnreachable as exc:
            raise ViewError(f"{self.target}: {printable(str(exc))}", EXIT_UNREACHABLE) from None
        except NodeError as exc:  # a RemoteError carries the node's own text: printable only
            raise ViewError(f"{self.target}: {printable(str(exc))}") from None
        return check_rows(body, peer_row)

    async def top(self) -> dict[str, Any]:
        rows = await self.table()
        states: dict[str, int] = {}
        for row in rows:
            states[row["state"]] = states.get(row["state"], 0) + 1
        return {"node_id": self.target.node_id.hex(), "contact": str(self.target),
                "time": asyncio.get_running_loop().time(), "peers": rows, "peers_total": len(rows),
                "peer_states": states}

    async def members(self) -> tuple[list[dict[str, Any]], int]:
        rows = [{"node_id": r["node_id"], "contact": r["contact"], "state": r["state"],
                 "incarnation": r["incarnation"], "rtt_ms": r["rtt_ms"], "age_s": None, "in_table": True,
                 "fails": r["fails"], "tags": []} for r in await self.table()]
        return rows, len(rows)

    async def close(self) -> None:
        await self.node.close()


# -- checks ---------------------------------------------------------------------------------------

def printable(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` safe for a terminal: control characters (escape sequences) shown as '?', cut at ``limit``."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _field(row: dict, key: str, kinds: tuple[type, ...], where: str, *, optional: bool = False) -> Any:
    if key not in row:
        raise ViewError(f"{where}: '{key}' is missing")
    value = row[key]
    if value is None and optional:
        return None
    if type(value) not in kinds:
        raise ViewError(f"{where}: '{key}' is {type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}")
    if type(value) is str and len(value) > MAX_TEXT:
        raise ViewError(f"{where}: '{key}' is longer than {MAX_TEXT} characters")
    if type(value) in (int, float) and not (0 <= value < 2**63):
        raise ViewError(f"{where}: '{key}' = {value!r} is out of range")
    return value


def _node_id(row: dict, where: str) -> str:
    nid = _field(row, "node_id", (str,), where)
    if not _HEX64.fullmatch(nid):
        raise ViewError(f"{where}: 'node_id' is not 64 lower-case hex digits")
    return nid


def _contact(row: dict, where: str, nid: str) -> str | None:
    text = _field(row, "contact", (str,), where, optional=True)
    if text is None:
        return None
    try:
        contact = Contact.parse(text)
    except IdentityError as exc:
        raise ViewError(f"{where}: 'contact' {printable(text, 80)!r} is not a contact ({exc})") from None
    if contact.node_id.hex() != nid:
        raise ViewError(f"{where}: 'contact' is another node's key than its 'node_id'")
    return str(contact)


def _name(value: Any, where: str) -> str:
    if type(value) is not str or not _NAME.fullmatch(value):
        raise ViewError(f"{where}: {printable(repr(value), 80)} is not a name (letters, digits, _.:-, at most 64)")
    return value


def peer_row(row: Any, where: str) -> dict[str, Any]:
    """A row of ``zmqagents.peers`` / the local API's ``peers`` (``protocols/node.md``), checked."""
    if not isinstance(row, dict):
        raise ViewError(f"{where} is {type(row).__name__}, not a map")
    nid = _node_id(row, where)
    return {"node_id": nid, "contact": _contact(row, where, nid),
            "state": _name(_field(row, "state", (str,), where), f"{where}: 'state'"),
            "incarnation": _field(row, "incarnation", (int,), where),
            "rtt_ms": _field(row, "rtt_ms", (int, float), where, optional=True),
            "last_seen": _field(row, "last_seen", (int, float), where),
            "fails": _field(row, "fails", (int,), where),
            # per-peer traffic: in the sidecar's `top` only, never in zmqagents.peers
            **{key: _field(row, key, (int,), where) for key in PEER_TRAFFIC if key in row}}


def member_row(row: Any, where: str) -> dict[str, Any]:
    """A row of the local API's ``members`` (``protocols/local-api.md`` 4.5), checked."""
    if not isinstance(row, dict):
        raise ViewError(f"{where} is {type(row).__name__}, not a map")
    nid = _node_id(row, where)
    tags = _field(row, "tags", (list,), where)
    if len(tags) > MAX_TAGS:
        raise ViewError(f"{where}: more than {MAX_TAGS} tags")
    return {"node_id": nid, "contact": _contact(row, where, nid),
            "state": _name(_field(row, "state", (str,), where), f"{where}: 'state'"),
            "incarnation": _field(row, "incarnation", (int,), where),
            "rtt_ms": _field(row, "rtt_ms", (int, float), where, optional=True),
            "age_s": _field(row, "age_s", (int, float), where, optional=True),
            "in_table": _field(row, "in_table", (bool,), where),
            "fails": _field(row, "fails", (int,), where),
            "tags": [_name(t, f"{where}: a tag") for t in tags]}


def check_rows(rows: Any, check) -> list[dict[str, Any]]:
    if not isinstance(rows, list):
        raise ViewError(f"the table is {type(rows).__name__}, not an array")
    if len(rows) > MAX_ROWS:
        raise ViewError(f"the table has {len(rows)} rows, more than the {MAX_ROWS} this command reads")
    return [check(row, f"row {i}") for i, row in enumerate(rows)]


def _counters(body: dict, key: str, required: tuple[str, ...] = ()) -> dict[str, int]:
    value = _field(body, key, (dict,), "the view")
    if len(value) > MAX_MAP:
        raise ViewError(f"the view: '{key}' has more than {MAX_MAP} entries")
    out = {}
    for name, n in value.items():
        _name(name, f"the view: a '{key}' name")
        out[name] = _field(value, name, (int,), f"the view: '{key}'")
    missing = [k for k in required if k not in out]
    if missing:
        raise ViewError(f"the view: '{key}' lacks {', '.join(missing)}")
    return out


def check_top(body: Any) -> dict[str, Any]:
    """The local API's ``top`` answer, checked (the keys of ``protocols/local-api.md`` 4.5)."""
    if not isinstance(body, dict):
        raise ViewError(f"a top answer must be a map, not {type(body).__name__}")
    nid = _node_id(body, "the view")
    drops = _field(body, "drops", (list,), "the view")
    if len(drops) > MAX_MAP:
        raise ViewError(f"the view: more than {MAX_MAP} drop counters")
    checked_drops = []
    for i, item in enumerate(drops):
        if not (isinstance(item, list) and len(item) == 3):
            raise ViewError(f"the view: drop {i} is not [layer, reason, count]")
        layer, reason = _name(item[0], f"drop {i}"), _name(item[1], f"drop {i}")
        checked_drops.append((layer, reason, _field({"count": item[2]}, "count", (int,), f"drop {i}")))
    peers = check_rows(body.get("peers"), peer_row)
    total = _field(body, "peers_total", (int,), "the view")
    return {"node_id": nid, "contact": _contact(body, "the view", nid), "time": _field(body, "time", (int, float), "the view"),
            "traffic": _counters(body, "traffic", ("messages_in", "messages_out", "bytes_in", "bytes_out")),
            "drops": checked_drops, "queues": _counters(body, "queues"),
            "connections": _counters(body, "connections"), "peer_states": _counters(body, "peer_states"),
            "peers": peers, "peers_total": max(total, len(peers))}


async def open_source(socket_path, to: str | None, key: str | None, timeout: float):
    """The source a command reads: the sidecar at ``socket_path``, else the node at contact ``to``."""
    if socket_path is not None:
        return SidecarSource(socket_path, timeout)
    from .common import contacts_of, make_node

    target = contacts_of([to], hint="--to")[0]
    node = make_node(key, "tcp://127.0.0.1:0", [target], False)
    await node.start()
    return ContactSource(node, target, timeout)
