"""``zmqagents ca ...``: the operator's certificate authority for fleets (see zmqagents/certs.py).

Registered by zmqagents/cli/app.py (``COMMANDS``). Output follows the CLI's rule: one JSON object per line on
stdout, diagnostics on stderr, exit 2 for bad arguments or files, 1 for anything else that failed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from ..certs import (
    CA_KEY_FORMAT,
    CERT_FILE_HEADER,
    MAX_TIME,
    REVOCATION_FILE_HEADER,
    CertError,
    Revocations,
    armor,
    decode_certificate,
    decode_revocations,
    fingerprint,
    issue,
    load_ca_key,
    parse_ca,
    read_armored,
    read_certificate,
    read_revocations,
    sign_revocations,
    unarmor,
    verify,
    write_text,
)
from ..identity import Contact, Identity, IdentityError, KeyFileError, format_public_key, parse_public_key

DAY = 86400
BACKDATE = 60  # s a new certificate is valid before it is signed: a peer whose clock is a little behind still takes it


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _ca_key_option(f):
    return click.option("--ca-key", "ca_key", default="ca.key", show_default=True, envvar="ZMQAGENTS_CA_KEY",
                        type=click.Path(dir_okay=False),
                        help="The CA's secret key file from `zmqagents ca init` (env: ZMQAGENTS_CA_KEY).")(f)


def _load_ca(path: str) -> Identity:
    try:
        return load_ca_key(path)
    except IdentityError as exc:
        raise click.BadParameter(str(exc), param_hint="--ca-key") from None


def _parse_time(text: str, hint: str) -> int:
    """Unix seconds, or an ISO 8601 date or date-time (UTC unless it names a zone)."""
    text = text.strip()
    if text.isdigit():
        value = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(f"{text!r} is not a time: give Unix seconds or ISO 8601 such as 2027-06-30 "
                                     "or 2027-06-30T12:00:00Z", param_hint=hint) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        value = int(moment.timestamp())
    if not 0 <= value <= MAX_TIME:
        raise click.BadParameter(f"{text!r} is out of range", param_hint=hint)
    return value


def _node_key(text: str, hint: str) -> bytes:
    """A node's public key from its base32 text, a contact, @CONTACTFILE, or the node's key file."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text().strip()
        except OSError as exc:
            raise click.BadParameter(f"cannot read contact file {text[1:]}: {exc.strerror}", param_hint=hint) from None
    try:
        if "@" in text:
            return Contact.parse(text).public_key
        if len(text) == 52 and not os.path.exists(text):
            return parse_public_key(text)
        if os.path.isfile(text):
            return Identity.load(text).public_key
        return parse_public_key(text)
    except IdentityError as exc:
        raise click.BadParameter(f"{text!r:.80}: not a public key, contact or node key file ({exc})",
                                 param_hint=hint) from None


@click.group()
def ca() -> None:
    """Run a certificate authority for a fleet: nodes that admit only each other.

    \b
    A node started with the CA's public key and its own certificate
    (`zmqagents node --ca ca.pub --cert web-1.cert`, or [node] join = "fleet",
    ca and cert in its config) takes messages only from peers that show a
    certificate this CA signed, for the key they connect with, not expired
    and not revoked. Certificate groups work in capability allow lists
    (`zmqagents agent --allow @ops`) with no groups file.

    \b
    Set up once, on a machine that keeps ca.key safe (ideally offline):
      zmqagents ca init                         # writes ca.key (secret) and ca.pub
      zmqagents keygen web-1.key                # on the node; prints its public key
      zmqagents ca sign PUBLIC_KEY --name web-1 --group ops --days 90 -o web-1.cert
      zmqagents node --key web-1.key --ca ca.pub --cert web-1.cert --mesh ...
    Revoke a node (then copy revoked.list to one node and SIGHUP it, or start
    nodes with --revocations revoked.list: they spread it through the DHT):
      zmqagents ca revoke web-1.cert --list revoked.list
    """


@ca.command("init")
@_ca_key_option
@click.option("--pub", "pub_path", type=click.Path(dir_okay=False),
              help="Where to write the CA public key [default: the key file's name with .pub].")
@click.option("--force", is_flag=True, help="Replace an existing CA key: every certificate it signed stops working.")
def ca_init(ca_key: str, pub_path: str | None, force: bool) -> None:
    """Create a CA key (mode 0600) and its public key file.

    The public key (also printed) is what every node of the fleet is given
    with --ca; the key file signs certificates and must stay secret.
    """
    ca_identity = Identity.generate()
    pub = Path(pub_path) if pub_path else Path(ca_key).with_suffix(".pub")
    if pub.resolve() == Path(ca_key).resolve():
        raise click.BadParameter("the public key file would overwrite the key file", param_hint="--pub")
    try:
        ca_identity.save(ca_key, force=force, file_format=CA_KEY_FORMAT)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    text = format_public_key(ca_identity.public_key)
    try:
        write_text(pub, f"# zmqagents CA public key (give it to nodes with --ca {pub})\n{text}\n")
    except OSError as exc:
        raise click.ClickException(f"cannot write {pub}: {exc.strerror}") from None
    _emit({"ca": text, "fingerprint": fingerprint(ca_identity.public_key).hex(), "key": str(ca_key), "pub": str(pub)})


@ca.command("sign")
@click.argument("node")
@_ca_key_option
@click.option("--name", required=True, help="The node's name in logs and `ca show` (1..64 printable characters).")
@click.option("--group", "groups", multiple=True, metavar="GROUP",
              help="A group the node belongs to, usable as --allow @GROUP by providers (repeatable).")
@click.option("--days", type=click.FloatRange(min=0.001), default=365.0, show_default=True,
              help="Validity from now, in days (ignored with --not-after).")
@click.option("--not-before", help="Valid from this time (Unix seconds or ISO 8601) [default: a minute ago].")
@click.option("--not-after", help="Valid until this time (Unix seconds or ISO 8601).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Certificate file to write [default: NAME.cert].")
@click.option("--force", is_flag=True, help="Replace an existing certificate file.")
def ca_sign(node: str, ca_key: str, name: str, groups: tuple[str, ...], days: float, not_before: str | None,
            not_after: str | None, out: str | None, force: bool) -> None:
    """Sign a certificate for NODE and write it to a file.

    NODE is the node's public key (as `zmqagents keygen` prints it), its
    contact, @CONTACTFILE, or its key file (only the public half is used).
    Copy the certificate file to the node; it is not secret.
    """
    ca_identity = _load_ca(ca_key)
    key = _node_key(node, "NODE")
    now = int(time.time())
    nb = _parse_time(not_before, "--not-before") if not_before else max(0, now - BACKDATE)
    na = _parse_time(not_after, "--not-after") if not_after else min(MAX_TIME, now + int(days * DAY))
    if na <= nb:
        raise click.BadParameter(f"the certificate would expire ({na}) before it starts ({nb})", param_hint="--not-after")
    path = Path(out or f"{name}.cert")
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; use --force to replace it or -o to write elsewhere")
    try:
        cert = issue(ca_identity, key, name, groups=groups, not_before=nb, not_after=na, serial=os.urandom(16))
    except (ValueError, IdentityError) as exc:
        raise click.UsageError(str(exc)) from None
    until = datetime.fromtimestamp(na, timezone.utc).isoformat()
    try:
        write_text(path, armor(cert.encoded, CERT_FILE_HEADER, [f"name: {name}", f"groups: {' '.join(cert.groups)}",
                                                                f"public key: {format_public_key(key)}",
                                                                f"valid until: {until}"]))
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    _emit({"path": str(path), **cert.describe()})


@ca.command("revoke")
@click.argument("nodes", nargs=-1, required=True)
@_ca_key_option
@click.option("--list", "list_path", default="revoked.list", show_default=True, type=click.Path(dir_okay=False),
              help="The revocation list to update (created if missing).")
@click.option("--until", help="Refuse the key until this time (Unix seconds or ISO 8601) [default: a "
                              "certificate file's expiry, else for ever].")
def ca_revoke(nodes: tuple[str, ...], ca_key: str, list_path: str, until: str | None) -> None:
    """Revoke NODES and write the new, signed revocation list.

    Each of NODES is a certificate file (its key is refused until the
    certificate would have expired), a public key, a contact or a node key
    file (refused for ever unless --until). Every certificate for a revoked
    key is refused, so give a reinstated node a new key. The list keeps at
    most 128 keys; entries whose time passed are dropped when it is rewritten.

    \b
    Hand the list to the fleet: copy it over [node] revocations on any node
    and send it SIGHUP (or start nodes with --revocations FILE). Nodes publish
    it in the DHT and fetch newer lists from there, so it reaches the rest.
    """
    ca_identity = _load_ca(ca_key)
    now = int(time.time())
    forced_until = _parse_time(until, "--until") if until else None
    entries: list[tuple[bytes, int]] = []
    sequence = 1
    path = Path(list_path)
    if path.exists():
        try:
            held = Revocations([ca_identity.public_key])
            data = read_revocations(path)
            held.adopt(data)
            current = decode_revocations(data)
        except CertError as exc:
            raise click.BadParameter(f"{exc} (it must be a list this CA signed)", param_hint="--list") from None
        sequence = current.sequence + 1
        entries = [(k, u) for k, u in current.entries if u == 0 or u > now]
    for text in nodes:
        entry_until = forced_until
        if os.path.isfile(text) and _looks_armored(text):
            try:
                cert = decode_certificate(read_certificate(text))
            except CertError as exc:
                raise click.BadParameter(str(exc), param_hint="NODES") from None
            key = cert.public_key
            if entry_until is None:
                entry_until = cert.not_after
        else:
            key = _node_key(text, "NODES")
        entries.append((key, 0 if entry_until is None else entry_until))
    try:
        crl = sign_revocations(ca_identity, entries, sequence=sequence, issued_at=now)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        write_text(path, armor(crl.encoded, REVOCATION_FILE_HEADER,
                               [f"sequence: {crl.sequence}", f"revoked keys: {len(crl.entries)}"]))
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    _emit({"path": str(path), **crl.describe()})


def _looks_armored(path: str) -> bool:
    """A certificate file (text starting with '#'), as opposed to a node key file (TOML)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(CERT_FILE_HEADER)).decode("ascii", "replace") == CERT_FILE_HEADER
    except OSError:
        return False


@ca.command("show")
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("--ca", "ca_text", help="CA public key (or ca.pub) to check a certificate or list against.")
def ca_show(path: str, ca_text: str | None) -> None:
    """Print a certificate, revocation list, CA public key or CA key file as JSON.

    With --ca, a certificate is also checked as a node would at this moment
    ("valid": true, or false with the "reason": unknown_issuer, bad_signature,
    not_yet_valid, expired), as is a revocation list's signature. Never
    prints a secret.
    """
    try:
        ca_key = parse_ca(ca_text) if ca_text else None
    except IdentityError as exc:
        raise click.BadParameter(str(exc), param_hint="--ca") from None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                                 param_hint="PATH") from None
    if f'format = "{CA_KEY_FORMAT}"' in text:
        ca_identity = _load_ca(path)
        _emit({"kind": "ca_key", "ca": format_public_key(ca_identity.public_key),
               "fingerprint": fingerprint(ca_identity.public_key).hex()})
        return
    if text.startswith(REVOCATION_FILE_HEADER):
        try:
            data = read_armored(path, "revocation list", 1 << 16)
            crl = decode_revocations(data)
        except CertError as exc:
            raise click.BadParameter(str(exc), param_hint="PATH") from None
        out = {"kind": "revocation_list", **crl.describe()}
        if ca_key is not None:
            try:
                Revocations([ca_key]).adopt(data)
                out.update(valid=True)
            except CertError as exc:
                out.update(valid=False, reason=exc.reason, error=str(exc))
        _emit(out)
        return
    if text.startswith(CERT_FILE_HEADER):
        try:
            data = unarmor(text, f"certificate file {path}")
            cert = decode_certificate(data)
        except CertError as exc:
            raise click.BadParameter(str(exc), param_hint="PATH") from None
        out = {"kind": "certificate", **cert.describe()}
        if ca_key is not None:
            try:
                verify(data, [ca_key], now=time.time())
                out.update(valid=True)
            except CertError as exc:
                out.update(valid=False, reason=exc.reason, error=str(exc))
        _emit(out)
        return
    try:
        key = parse_ca(path)
    except IdentityError:
        raise click.BadParameter(f"{path} is not a certificate, revocation list, CA key or CA public key file",
                                 param_hint="PATH") from None
    _emit({"kind": "ca_public_key", "ca": format_public_key(key), "fingerprint": fingerprint(key).hex()})


COMMANDS = (ca,)
