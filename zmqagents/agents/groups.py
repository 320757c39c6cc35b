"""Caller groups for allow lists: a provider-side table of group name -> member node ids.

An allow list (``Capability.allow``, ``zmqagents agent --allow``) may name groups as well as
node ids, so an operator grants a capability to "the ops nodes" once and edits membership in
one place. Groups are the provider's own policy: they are never published, and a caller
cannot claim membership -- the provider checks the caller's authenticated node id against
its table at admission.

A groups file is TOML (or JSON when it ends in ``.json``): each top-level key is a group
name whose value is an array of members, each a node id (hex), public key (base32) or contact,
as in allowlist files::

    ops = ["3f2a...64 hex...", "mfrgg...52 base32..."]
    interns = []
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.tasks import check_group_name
from ..identity import IdentityError, parse_peer_ref
from ..errors import Error

MAX_GROUPS = 1000
MAX_MEMBERS = 10_000  # per group
MAX_FILE_BYTES = 4 * 1024 * 1024


class GroupsError(Error, ValueError):
    """A groups file that cannot be used; the message names the file and the entry."""


def load_groups(path: str | Path) -> dict[str, frozenset[bytes]]:
    """Read a groups file; GroupsError naming the file, group and entry on anything malformed."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise GroupsError(f"cannot read groups file {p}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise GroupsError(f"groups file {p} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GroupsError(f"groups file {p} is not UTF-8 text") from None
    if p.suffix == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise GroupsError(f"groups file {p} is not valid JSON: {exc}") from None
    else:
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise GroupsError(f"groups file {p} is not valid TOML: {exc} (name .json files JSON)") from None
    return parse_groups(doc, str(p))


def parse_groups(doc: object, where: str = "groups") -> dict[str, frozenset[bytes]]:
    """Check a decoded groups document ``{name: [member, ...]}`` and resolve members to node ids."""
    if not isinstance(doc, dict):
        raise GroupsError(f"{where}: expected a table of group name = [members]")
    if len(doc) > MAX_GROUPS:
        raise GroupsError(f"{where}: at most {MAX_GROUPS} groups")
    groups = {}
    for name, members in doc.items():
        try:
            check_group_name(name)
        except ValueError as exc:
            raise GroupsError(f"{where}: {exc}") from None
        if not isinstance(members, list) or len(members) > MAX_MEMBERS:
            raise GroupsError(f"{where}: group {name!r} must be an array of at most {MAX_MEMBERS} members "
                              "(node ids, public keys or contacts)")
        ids = set()
        for i, member in enumerate(members, 1):
            if not isinstance(member, str):
                raise GroupsError(f"{where}: group {name!r}, member {i}: expected a string (node id, public key or "
                                  f"contact), got {type(member).__name__}")
            try:
                ids.add(parse_peer_ref(member.strip()))
            except IdentityError as exc:
                raise GroupsError(f"{where}: group {name!r}, member {i}: {exc}") from None
        groups[name] = frozenset(ids)
    return groups
