"""``kad.fwd``: a routing query or answer carried to a node through nodes already connected to it (sans-IO).

A lookup learns most of its candidates from answers, and asking a candidate directly means a new
connection, a CURVE handshake of ~2 ms of CPU on each end. The node that listed the candidate holds it
in its table, and usually holds a connection to it too, so the query may travel along that path
instead: the asker signs its ``kad.find_node``, every node on the route passes it on over a connection
it already holds, and the asked node answers with a signed ``kad.nodes`` along the reverse route.
Signatures make the answer the asked node's own word wherever it came through. The rules are in
``protocols/routing.md`` 5.6; this module holds the message's shape and its checks, with no state.

A forwarder never decodes the inner envelope (it cannot be asked to verify anything) and never opens a
connection for someone else: with no connection to the next hop it sends a *fail notice* back, and
the asker asks the node directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..envelope import Envelope
from .lookup import NODE_ID_LEN

__all__ = ["FORWARD", "MAX_ROUTE", "MAX_INNER", "Forward", "parse_forward", "forward_body"]

FORWARD = "kad.fwd"
# Hops a forwarded message may take besides its last: bounds its cost to the mesh (one send per hop,
# never more) and the length of the routes a lookup builds (one more hop per round of answers).
MAX_ROUTE = 3
# Largest inner envelope passed on (bytes): a signed kad.nodes of k = 20 contacts with 255-character
# endpoints is ~6.5 KB; answers with ~25-character endpoints are ~1.5 KB.
MAX_INNER = 16384


@dataclass(slots=True)
class Forward:
    """A checked ``kad.fwd`` body. ``to``: the hops still ahead after the receiver, the last one the
    destination (empty: the receiver is the destination). ``back``: the way back from the receiver's
    sender to the origin, nearest first. ``inner``: the signed envelope carried, or None for a fail
    notice (``fail``), which names in the envelope's ``re`` the id of the message that could not be
    passed on."""

    to: list[bytes]
    back: list[bytes]
    inner: bytes | None
    fail: bool


def _ids(value: Any) -> list[bytes] | None:
    if type(value) is not list or len(value) > MAX_ROUTE:
        return None
    for nid in value:
        if type(nid) is not bytes or len(nid) != NODE_ID_LEN:
            return None
    return value


def parse_forward(env: Envelope) -> Forward | None:
    """The body of a ``kad.fwd`` envelope, checked; None if anything is malformed (the caller counts it).

    A message carries an inner envelope (``e``: bytes, at most MAX_INNER) or is a fail notice
    (``fail``: true, with ``re`` set), never both; ``to`` and ``back`` hold at most MAX_ROUTE node ids
    each. Unknown body keys are ignored."""
    body = env.body
    if type(body) is not dict:
        return None
    to = _ids(body.get("to"))
    back = _ids(body.get("back"))
    if to is None or back is None:
        return None
    inner = body.get("e")
    fail = body.get("fail", False)
    if type(fail) is not bool:
        return None
    if fail:
        if inner is not None or type(env.re) is not bytes:
            return None
        return Forward(to, back, None, True)
    if type(inner) is not bytes or not inner or len(inner) > MAX_INNER:
        return None
    return Forward(to, back, inner, False)


def forward_body(to: list[bytes], back: list[bytes], inner: bytes | None) -> dict[str, Any]:
    """The body of a ``kad.fwd``: carrying ``inner`` (an encoded signed envelope), or a fail notice if None."""
    if inner is None:
        return {"to": to, "back": back, "fail": True}
    return {"to": to, "back": back, "e": inner}
