"""``zmqagents top``: a live view of one node, refreshed in place, as ``nats top`` shows a server.

What it shows: the node's peers (state, round-trip time, how long since last heard, failed
lookups), messages and bytes per second in and out, deliveries and retransmits per second, drops by
layer and reason, and what waits in its queues. The numbers come from two snapshots of the node
(``protocols/local-api.md`` 4.5) an interval apart: counters are cumulative, rates are their
difference over the node's own monotonic clock. Through ``--to`` a node tells only its routing
table, so only the peers are shown.

Terminal handling, with no curses: on a terminal the view takes the alternate screen, hides the
cursor and redraws from the top-left corner each interval (lines cut to the width, peers to the
height, read again on SIGWINCH so a resize redraws at once); SIGINT ends it with status 0 and the
terminal as it was. When stdout is not a terminal, frames are plain text one after another (no
escape sequences, no cutting), like ``top -b``. ``--json`` writes one JSON object per frame;
``--once`` writes one frame and exits (``--once --json`` for scripts).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from typing import Any

import click

from .common import Failure, emit, run_main
from .exits import EXIT_OK
from .members import resolve_source, source_options

STATE_ORDER = {"suspect": 0, "alive": 1, "unprobed": 2}
PEER_TRAFFIC_ORDER = ("messages_in", "messages_out", "bytes_in", "bytes_out")  # the table's column order
QUEUE_LABELS = {"inbox_messages": "inbox", "reorder_messages": "reorder", "reorder_bytes": "reorder_B",
                "unacked_messages": "unacked", "transport_outbox": "writes", "handlers_running": "handlers",
                "subscription_backlog": "subscriptions", "local_unacked": "client_unacked",
                "outbox_queued": "outbox", "inbound_queued": "inbound"}
ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, hide the cursor
LEAVE = "\x1b[?25h\x1b[?1049l"  # show the cursor, back to the normal screen
HOME = "\x1b[H"
CLEAR_LINE = "\x1b[K"
CLEAR_BELOW = "\x1b[J"


def rates(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, float | None]:
    """Per second for each traffic counter between two snapshots; None where it cannot be told
    (first frame, a counter that went backwards because the node restarted, no time passed)."""
    traffic = after.get("traffic") or {}
    if before is None or before["node_id"] != after["node_id"] or "traffic" not in before:
        return dict.fromkeys(traffic)
    dt = after["time"] - before["time"]
    out: dict[str, float | None] = {}
    for key, value in traffic.items():
        delta = value - before["traffic"].get(key, 0)
        out[key] = None if dt <= 0 or delta < 0 else delta / dt
    return out


def drop_rates(before: dict[str, Any] | None, after: dict[str, Any]) -> list[dict[str, Any]]:
    """Drop counters that are not zero, with their rate (None on the first frame)."""
    old = {(layer, reason): n for layer, reason, n in (before or {}).get("drops", ())}
    dt = after["time"] - before["time"] if before is not None else 0
    out = []
    for layer, reason, n in after.get("drops", ()):
        if n:
            prev = old.get((layer, reason))
            rate = None if prev is None or dt <= 0 or n < prev else (n - prev) / dt
            out.append({"layer": layer, "reason": reason, "count": n, "per_s": rate})
    return out


def frame_data(source_kind: str, interval: float, before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """One frame as data (what --json prints): the snapshot with rates, peers sorted, ages computed."""
    peers = []
    old = {row["node_id"]: row for row in before["peers"]} if before is not None else {}
    dt = after["time"] - before["time"] if before is not None else 0.0
    for row in sorted(after["peers"], key=lambda r: (STATE_ORDER.get(r["state"], 3), r["node_id"])):
        age = round(max(0.0, after["time"] - row["last_seen"]), 3) if source_kind == "sidecar" else None
        shown = {**{k: v for k, v in row.items() if k != "last_seen"}, "age_s": age}
        prev = old.get(row["node_id"])
        for key in PEER_TRAFFIC_ORDER:
            if key in row:
                delta = row[key] - prev[key] if prev is not None and key in prev else -1
                shown[f"{key}_per_s"] = None if delta < 0 or dt <= 0 else delta / dt
        peers.append(shown)
    data = {"node_id": after["node_id"], "contact": after["contact"], "source": source_kind, "interval_s": interval,
            "peer_states": after["peer_states"], "peers_total": after["peers_total"], "peers": peers}
    if source_kind == "sidecar":
        data.update({"rates": {f"{k}_per_s": v for k, v in rates(before, after).items()},
                     "traffic": after["traffic"], "drops": drop_rates(before, after), "queues": after["queues"],
                     "connections": after["connections"]})
    return data


def _rate(value: float | None, unit: str = "/s") -> str:
    return "-" if value is None else f"{value:,.1f}{unit}"


def _bytes_rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("MB/s", 1e6), ("KB/s", 1e3)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:,.0f} B/s"


def frame_lines(data: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """(header lines, peer lines) of one frame."""
    states = data["peer_states"]
    head = [f"zmqagents top  node {data['node_id'][:12]}  {data['contact'] or ''}",
            f"via {where}  every {data['interval_s']:g} s  {time.strftime('%H:%M:%S')}",
            f"peers {data['peers_total']} (" + ", ".join(f"{s} {n}" for s, n in sorted(states.items())) + ")"]
    if data["source"] == "sidecar":
        r, q, c = data["rates"], data["queues"], data["connections"]
        head[-1] += (f"   links out {c.get('outgoing', 0)} in {c.get('inbound', 0)} sub {c.get('subscription', 0)}"
                     f"   neighbours {c.get('neighbours', 0)}")
        head += [
            f"in   {_rate(r.get('messages_in_per_s'), ' msg/s'):>14} {_bytes_rate(r.get('bytes_in_per_s')):>12}"
            f"   delivered {_rate(r.get('delivered_per_s'))}   duplicates {_rate(r.get('duplicates_per_s'))}",
            f"out  {_rate(r.get('messages_out_per_s'), ' msg/s'):>14} {_bytes_rate(r.get('bytes_out_per_s')):>12}"
            f"   submitted {_rate(r.get('submitted_per_s'))}   retransmits {_rate(r.get('retransmits_per_s'))}",
            "queues  " + "  ".join(f"{QUEUE_LABELS.get(k, k)} {v}" for k, v in q.items() if k != "inbox_bytes")
            + f"  (inbox holds {q.get('inbox_bytes', 0):,} B)",
            "drops   " + ("  ".join(f"{d['layer']}.{d['reason']} {d['count']} ({_rate(d['per_s'])})"
                                    for d in data["drops"]) or "none"),
        ]
    else:
        head.append("(through a contact: the node's routing table only; its traffic, drops and queues are "
                    "shown by its own sidecar)")
    head.append("")
    head.append(f"{'NODE':13} {'ADDRESS':22} {'STATE':8} {'RTT ms':>7} {'AGE s':>6} {'FAILS':>5} "
                f"{'IN msg/s':>9} {'OUT msg/s':>9} {'IN B/s':>9} {'OUT B/s':>9}")
    peers = []
    for row in data["peers"]:
        address = row["contact"].split("@", 1)[1] if row["contact"] else "-"
        rtt = "-" if row["rtt_ms"] is None else f"{row['rtt_ms']:.2f}"
        age = "-" if row["age_s"] is None else f"{row['age_s']:.1f}"
        flows = [_short(row.get(f"{key}_per_s")) for key in PEER_TRAFFIC_ORDER]
        peers.append(f"{row['node_id'][:12]:13} {address:22} {row['state']:8} {rtt:>7} {age:>6} {row['fails']:>5} "
                     + " ".join(f"{flow:>9}" for flow in flows))
    return head, peers


def _short(value: float | None) -> str:
    """A rate in at most 9 characters: 12.5, 3.4k, 1.2M; "-" when unknown."""
    if value is None:
        return "-"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.1f}"


def fit(head: list[str], peers: list[str], columns: int, lines: int, total: int) -> list[str]:
    """The frame cut to a terminal of ``columns`` x ``lines``: the header first, then as many peers
    as fit, and then (always visible) a line saying how many did not. The last terminal line stays
    empty, so writing the frame never scrolls the screen."""
    room = max(1, lines - 1)
    if len(head) + len(peers) <= room and total <= len(peers):
        out = head + peers
    else:
        shown = peers[:max(0, room - len(head) - 1)]
        more = f"... {total - len(shown)} more peer(s) (a taller terminal, or zmqagents members, shows them)"
        out = head[:room - 1] + shown + [more]
    return [line[:columns] for line in out]


class Screen:
    """Where frames go: a terminal redrawn in place, or a plain stream of frames."""

    def __init__(self, stream, tty: bool):
        self.stream = stream
        self.tty = tty
        self.entered = False

    def show(self, head: list[str], peers: list[str], total: int) -> None:
        if not self.tty:
            self.stream.write("\n".join(head + peers) + "\n\n")
            self.stream.flush()
            return
        if not self.entered:
            self.stream.write(ENTER)
            self.entered = True
        size = self.size()
        lines = fit(head, peers, size.columns, size.lines, total)
        self.stream.write(HOME + "".join(line + CLEAR_LINE + "\r\n" for line in lines) + CLEAR_BELOW)
        self.stream.flush()

    def size(self) -> os.terminal_size:
        """The terminal's size as it is now. Asked of the terminal itself, not of $COLUMNS/$LINES as
        shutil.get_terminal_size does first: those are a snapshot a resize makes wrong."""
        try:
            return os.get_terminal_size(self.stream.fileno())
        except (OSError, ValueError):
            return shutil.get_terminal_size()

    def restore(self) -> None:
        if self.entered:
            self.stream.write(LEAVE)
            self.stream.flush()
            self.entered = False


@click.command()
@source_options
@click.option("--interval", "-d", default=1.0, show_default=True, type=click.FloatRange(min=0.1, max=3600),
              help="Seconds between refreshes (and between the two snapshots of --once).")
@click.option("--once", is_flag=True, help="Print one frame (rates over one interval) and exit.")
@click.option("--iterations", "-n", type=click.IntRange(min=1), help="Exit after this many frames.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame instead of the table.")
@click.pass_context
def top(ctx: click.Context, socket_path, to, key, timeout, interval, once, iterations, as_json) -> None:
    """A live view of one node: peers, traffic, drops, queues.

    \b
    Reads a running sidecar (--socket, or the default path when one listens there), or any
    node through its contact (--to: its routing table only). Refreshes in place on a terminal;
    Ctrl-C quits (status 0). Not on a terminal, frames follow each other as plain text.
    \b
      zmqagents top
      zmqagents top --once --json | jq .rates
      zmqagents top --to @seed.contact
    """
    from .nodeview import ViewError, open_source

    path, contact = resolve_source(ctx, socket_path, to)
    frames = 1 if once else iterations
    screen = Screen(sys.stdout, sys.stdout.isatty() and not as_json)
    where = f"sidecar {path}" if path is not None else f"contact {contact}"

    async def main() -> int:
        loop = asyncio.get_running_loop()
        resized = asyncio.Event()
        if screen.tty:
            loop.add_signal_handler(signal.SIGWINCH, resized.set)
        try:
            source = await open_source(path, contact, key, timeout)
            try:
                return await refresh(source, loop, resized)
            finally:
                await source.close()
        except ViewError as exc:
            raise Failure(str(exc), exc.code) from None
        finally:
            screen.restore()
            if screen.tty:
                loop.remove_signal_handler(signal.SIGWINCH)

    async def refresh(source, loop, resized: asyncio.Event) -> int:
        before = await source.top() if source.kind == "sidecar" else None
        shown = 0
        last: tuple[list[str], list[str], int] | None = None
        next_at = loop.time() + (interval if before is not None else 0)
        while frames is None or shown < frames:
            try:
                await asyncio.wait_for(resized.wait(), max(0.0, next_at - loop.time()))
            except asyncio.TimeoutError:
                pass
            if resized.is_set() and last is not None and loop.time() < next_at:
                resized.clear()
                screen.show(*last)  # the same data, cut to the new size
                continue
            resized.clear()
            after = await source.top()
            data = frame_data(source.kind, interval, before, after)
            if as_json:
                emit(data)
            else:
                head, peers = frame_lines(data, where)
                last = (head, peers, data["peers_total"])
                screen.show(*last)
            before = after
            shown += 1
            next_at = loop.time() + interval
        return EXIT_OK

    sys.exit(run_main(main(), server=True))


COMMANDS = (top,)
