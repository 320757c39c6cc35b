"""What the command modules share: output, input lines, contacts, the node a command starts, and
the loop that runs it.

Output is one JSON object per line on stdout (:func:`emit`); diagnostics go to stderr. Input read
from stdin is one JSON value per line (:func:`stdin_values`).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterable

import click

from ..identity import Contact, Identity, IdentityError, InsecureKeyFileWarning, format_node_id
from ..errors import Error
from .exits import EXIT_FAILED, EXIT_OK, EXIT_SIGPIPE, EXIT_USAGE


class Failure(click.ClickException, Error):
    """A runtime error: message on stderr, exit status 1 (or the given code)."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = code


def jsonable(value: Any) -> Any:
    """msgpack values as JSON: text bytes become strings, other bytes {"base64": ...}."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


_stdout_closed = False  # set once: a callback that swallowed StdoutClosed must not make the next emit() succeed


class StdoutClosed(Error):
    """Whoever read our stdout has gone (``| head -1`` got its line). The command stops what is in
    flight and exits quietly with EXIT_SIGPIPE, as a program killed by SIGPIPE would."""


def emit(obj: dict) -> None:
    """Write one JSON line to stdout; StdoutClosed if the reader has gone (now or before)."""
    if _stdout_closed:
        raise StdoutClosed()
    line = json.dumps(jsonable(obj), ensure_ascii=False) + "\n"
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_gone()
        raise StdoutClosed() from None


def stdout_gone() -> None:
    """Point fd 1 at /dev/null: whatever is still buffered, and the interpreter's last flush, then go
    nowhere instead of raising BrokenPipeError again (and printing "Exception ignored ...")."""
    global _stdout_closed
    _stdout_closed = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def parse_body(text: str) -> Any:
    """A body argument: JSON if it parses, otherwise the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_identity(key: str | None) -> Identity:
    if key is None:
        return Identity.generate()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InsecureKeyFileWarning)
            identity = Identity.load(key)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        return identity
    except IdentityError as exc:
        raise click.UsageError(str(exc)) from None


def contacts_of(texts: Iterable[str], hint: str = "--to/--peer") -> list[Contact]:
    out = []
    for text in texts:
        if text.startswith("@"):  # @FILE: a contact written by `zmqagents node --contact-file`
            try:
                text = Path(text[1:]).read_text().strip()
            except OSError as exc:
                raise click.UsageError(f"cannot read contact file {text[1:]}: {exc.strerror}") from None
        try:
            out.append(Contact.parse(text))
        except IdentityError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    return out


def make_node(key: str | None, listen: str, peers: list[Contact], insecure: bool, allowlist: str | None = None,
              bootstrap: list[Contact] = (), *, member: bool = False, config=None, seal: bool = False):
    """A node for one command. Only long-running commands (node, reply, subscribe) are mesh members;
    the others are clients that peers keep out of their routing tables."""
    from ..node import Node, NodeConfig

    allow = read_allowlist(allowlist) if allowlist else None
    from .fleetjoin import fleet_config

    config = config or NodeConfig()
    config.fleet = config.fleet or fleet_config()
    config.member = member
    config.transport.seal_relayed = seal
    try:
        return Node(load_identity(key), listen=listen, peers=peers, bootstrap=bootstrap, secure=not insecure,
                    allowlist=allow, config=config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


SEAL_HELP = ("Encrypt end to end (NaCl Box) whatever goes through a relay, so the relay cannot read it "
             "(it is always signed, so a relay can never alter it).")


def read_allowlist(path: str) -> frozenset[bytes]:
    """One node id (hex), public key (base32) or contact per line; '#' starts a comment."""
    from ..identity import load_allowlist

    try:
        return load_allowlist(path)
    except IdentityError as exc:
        raise click.UsageError(str(exc)) from None


def run_main(coro, *, server: bool = False) -> int:
    """Run a command's coroutine with the rules every command follows.

    Signals: the first SIGINT or SIGTERM cancels the coroutine, which stops what is in flight (and
    prints a ``canceled`` result for each input line that had started); the command then exits
    130 or 143. A server (``server=True``: node, relay, reply, agent) exits 0 instead: a signal is
    how it is stopped. A second signal exits at once with 128 + its number.

    A reader of stdout that has gone (StdoutClosed) ends the command quietly with EXIT_SIGPIPE.
    Any other error is one line on stderr (the traceback too with -v): exit 2 when the node cannot
    use what it was given (an endpoint it cannot listen on), else 1.
    """
    got: list[int] = []

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if got:  # the second one: the user does not want to wait for the cleanup
                os._exit(128 + signum)
            got.append(signum)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await coro
        except asyncio.CancelledError:
            if not got:
                raise
            return EXIT_OK if server else 128 + got[0]
        except StdoutClosed:
            return EXIT_SIGPIPE
        except click.ClickException:
            raise
        except Exception as exc:
            return report_error(exc)

    return run_loop(main())


def report_error(exc: BaseException) -> int:
    """One line on stderr for an error nothing else explained (with the traceback at -v); the exit status."""
    import zmq

    if logging.getLogger().isEnabledFor(logging.INFO):
        traceback.print_exception(exc)
    usage = isinstance(exc, zmq.ZMQError) and exc.errno in (errno.EINVAL, errno.EPROTONOSUPPORT, errno.ENODEV)
    click.echo(f"error: {exc}" + ("" if logging.getLogger().isEnabledFor(logging.INFO) else
                                  " (-v shows where)"), err=True)
    return EXIT_USAGE if usage else EXIT_FAILED


def run_loop(coro: Any) -> Any:
    """asyncio.run, on uvloop when it can be imported (not in the lean ``zmqagents node``, see launch.py).

    Not ``node.run``: that one runs the loop inside its ``except ImportError`` block, so every
    exception raised in a command carried "No module named 'uvloop'" as its context.
    """
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is None:
        return asyncio.run(coro)
    return uvloop.run(coro)


class Aliased(click.Option):
    """An option shown under its first name; its other long names are old ones that still work
    (kept for a release so scripts do not break, then removed), e.g. --mesh and the old --bootstrap."""

    def get_help_record(self, ctx: click.Context):
        record = super().get_help_record(ctx)
        if record is None:
            return None
        names, text = record
        joined = ", ".join(self.opts)
        return (self.opts[0] + names[len(joined):], text) if names.startswith(joined) else record


class Verbosity:
    """How much the command logs on stderr: each -v one level more, each -q one less, wherever given."""

    KEY = "zmqagents.verbosity"

    def add(self, ctx: click.Context, param: click.Parameter, count: int) -> int:
        if count:
            root = ctx.find_root()
            root.meta[self.KEY] = self.of(ctx) + (count if param.name == "verbose" else -count)
            self.apply(ctx)
        return count

    def of(self, ctx: click.Context) -> int:
        """-v minus -q so far (0: warnings and errors only)."""
        return ctx.find_root().meta.get(self.KEY, 0)

    def apply(self, ctx: click.Context) -> None:
        level = self.of(ctx)
        logging.getLogger().setLevel(max(logging.DEBUG, min(logging.ERROR, logging.WARNING - 10 * level)))


VERBOSITY = Verbosity()


def verbosity_params() -> list[click.Parameter]:
    return [click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=VERBOSITY.add,
                         help="More logging on stderr (-v info, -vv debug); tracebacks of errors."),
            click.Option(["-q", "--quiet"], count=True, expose_value=False, callback=VERBOSITY.add,
                         help="Less logging on stderr (errors only).")]


def node_options(f):
    f = click.option("--insecure", is_flag=True, help="Plaintext links (no CURVE). Only for debugging on a trusted host.")(f)
    f = click.option("--listen", default="tcp://127.0.0.1:0", show_default=True, help="Inbox endpoint (port 0 = any free port).")(f)
    f = click.option("--key", type=click.Path(dir_okay=False), help="Key file from `zmqagents keygen` (default: a throwaway identity).")(f)
    from .fleetjoin import fleet_options  # --ca/--cert/--revocations: join a fleet (zmqagents ca)

    return fleet_options(f)


def mesh_member_options(f):
    """The options of a node that stays in the mesh (``node``, ``relay``): whom to reach and whom to accept."""
    f = click.option("--allowlist", type=click.Path(dir_okay=False), help="Only accept nodes listed in this file (ids, keys or contacts).")(f)
    f = click.option("--contact-file", type=click.Path(dir_okay=False), help="Also write this node's contact to a file.")(f)
    f = click.option("--mesh", "--bootstrap", "bootstrap", cls=Aliased, multiple=True, metavar="CONTACT",
                     help="Contact (or @FILE) of a node in the mesh to join or talk through (repeatable); "
                          "every command names the mesh this way.")(f)
    f = click.option("--peer", "peers", multiple=True, hidden=True,
                 help="Old: a neighbour to connect to directly without joining through it; use --mesh.")(f)
    return f


ADMIN_HELP = ("Serve /metrics, /livez and /readyz over HTTP on HOST:PORT (port 0: any free one; the first "
              "output line names it as \"admin\"). Loopback unless you name another address.")


def admin_option(f):
    """``--admin HOST:PORT`` of the commands that run until a signal (``node``, ``relay``, ``agent``)."""
    def check(ctx, param, value):
        if value is None:
            return None
        from ..sidecar.admin import AdminError, parse_listen

        try:
            parse_listen(value)
        except AdminError as exc:
            raise click.BadParameter(str(exc)) from None
        return value
    return click.option("--admin", metavar="HOST:PORT", callback=check, help=ADMIN_HELP)(f)


async def start_admin(n, listen: str | None, sources=(), *, expect_peers: bool = False):
    """The admin endpoint of a plain node (``--admin``), with ``sources`` adding their metrics; None
    without the flag. A port in use is a Failure (exit 1) with the reason. The caller closes it."""
    if listen is None:
        return None
    from ..sidecar.admin import AdminError
    from ..sidecar.runtime_metrics import serve_admin

    try:
        return await serve_admin(n, listen, sources, expect_peers=expect_peers)
    except AdminError as exc:
        raise Failure(str(exc)) from None


def announce(n, contact_file: str | None, *, admin: str | None = None) -> None:
    contact = str(n.contact)
    if contact_file:
        tmp = Path(contact_file + ".tmp")
        tmp.write_text(contact + "\n")
        tmp.replace(contact_file)
    line = {"contact": contact, "node_id": format_node_id(n.node_id), "pub": n.transport.pub_endpoint}
    if admin:
        line["admin"] = admin  # HOST:PORT of /metrics, /livez, /readyz (useful with port 0)
    emit(line)


def targets_of(to: tuple[str, ...]) -> list[Contact]:
    if not to:
        raise click.UsageError("name at least one peer with --to CONTACT (or --to @FILE)")
    return contacts_of(to)


SIDECAR_HELP = """\b
Through a sidecar:
  When a sidecar runs on this host (`zmqagents node --config`) and listens
  on its default local API path, or --socket / ZMQAGENTS_SOCKET names one,
  this command works through it: no node of its own, no join, the
  sidecar's identity and mesh. Otherwise it starts a temporary node and
  joins the mesh named by --mesh, else ZMQAGENTS_MESH, else the current
  context. --direct always does the latter; so do flags that configure a
  node of its own (--key, --listen, --insecure, and those named below).
"""

OWN_NODE_FLAGS = ("key", "listen", "insecure", "seal")  # flags that only a node of the command's own can honour


def sidecar_options(f):
    f = click.option("--direct", is_flag=True,
                     help="Never use a running sidecar: always start a temporary node.")(f)
    f = click.option("--socket", "socket_path", type=click.Path(dir_okay=False),
                     envvar=["ZMQAGENTS_SOCKET", "ZMQAGENTS_LOCAL_API_PATH"],
                     help="Local API socket of a running sidecar (default: the sidecar's default path, used "
                          "when a sidecar listens there; env: ZMQAGENTS_SOCKET).")(f)
    return f


def sidecar_socket(ctx: click.Context, socket_path: str | None, direct: bool, own: tuple[str, ...] = ()) -> Path | None:
    """The local API socket this command should use, or None to start a temporary node.

    An explicit --socket must have a sidecar behind it. Otherwise the default path is used when a
    sidecar listens there and no flag asks for a node of our own (OWN_NODE_FLAGS, and ``own``: the
    command's flags that the sidecar cannot honour).
    """
    from click.core import ParameterSource

    from ..sidecar.localsocket import sidecar_listening

    if direct:
        return None
    if socket_path is None:
        if any(ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
               for name in OWN_NODE_FLAGS + own if name in ctx.params):
            return None
        from ..sidecar.config import LocalApiSection

        path = Path(LocalApiSection().path)
        return path if sidecar_listening(path) else None
    path = Path(socket_path)
    if not sidecar_listening(path):
        raise Failure(f"no sidecar is listening on {path}: start one (`zmqagents node --config FILE`), "
                      "or leave out --socket to send through a temporary node")
    return path


def sidecar_targets(to: tuple[str, ...]) -> list[str]:
    """--to values for the sidecar: contacts (or @FILE) or 64-hex node ids it already knows."""
    from ..identity import parse_node_id

    if not to:
        raise click.UsageError("name at least one peer with --to CONTACT, --to @FILE or --to NODE_ID")
    out = []
    for text in to:
        if text.startswith("@") or "@" in text:
            out.append(str(contacts_of([text])[0]))
            continue
        try:
            parse_node_id(text)
        except IdentityError as exc:
            raise click.BadParameter(f"{exc}; pass a contact PUBLICKEY@ENDPOINT or a node id",
                                     param_hint="--to") from None
        out.append(text.lower())
    return out
