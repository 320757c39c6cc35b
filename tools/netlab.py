"""Hosts made of Linux network namespaces, for tests and benchmarks: links, link cuts, processes by PID.

A :class:`Lab` owns what it creates and removes all of it in :meth:`Lab.close`, whatever happened
before: the processes it started (SIGTERM, then SIGKILL, each by its PID), the namespaces (each
takes its end of every veth pair with it) and the ends of links that sit in this namespace.

* :meth:`Lab.host` is a new namespace with its loopback up; :attr:`Lab.here` is this namespace,
  for links to processes that run here (e.g. a test's own Node).
* :meth:`Lab.link` joins two hosts with a veth pair and gives each end an address in its own /30.
  A namespace has no default route and forwards nothing (``ip_forward`` is 0 in a new
  namespace), so a host reaches exactly the addresses its links and :meth:`Host.route` give it.
* :meth:`Host.add_address` puts a /32 on a host's loopback: an address that does not belong to any
  one link, which the host's peers reach through the routes the caller chooses.
* :meth:`Link.cut` drops every packet in both directions, silently (no RST, no ICMP: what a
  pulled cable or a dead radio looks like to TCP), until :meth:`Link.heal`. It replaces the root
  queueing discipline of both veth ends with ``pfifo limit 0``, a queue with room for no packet,
  so everything sent is dropped and counted in ``tc -s qdisc``. ``netem loss 100%`` would do the
  same but needs the sch_netem module, which minimal kernels (Firecracker's, for one) leave out;
  the FIFO qdisc is built into every kernel. The veth's carrier stays up, so routes survive the cut.
* :meth:`Lab.spawn` starts a process inside a host (``ip netns exec`` execs the command, so the
  PID we hold is the program's own, and ``kill -9`` of it is a real crash).

Names carry this process's PID (namespaces ``zq<PID>-<LAB>-<name>``, veths ``zq<PID>n<N>a``/``b``),
so concurrent test processes never collide. Addresses: links between two namespaces are private to
those namespaces (10.100.0.0/16, one /30 per link of the lab); a link with an end in this
namespace needs an address no other process uses at the same time, so it is derived from the PID
(10.201+K.X.Y/30 for this process's K-th such link, K < 50 at once), as test_relay_netns.py did.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and the ``ip`` and ``tc`` commands (Debian: iproute2).
:func:`unavailable` says why a lab cannot be built here, for a test to skip with that reason.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Sequence

_labs = itertools.count()  # labs made by this process: namespace names stay unique if two are open at once
_links = itertools.count()  # links made by this process: veth names stay unique in this namespace
_public = itertools.count()  # links with an end in this namespace: their /30s stay unique too
CMD_TIMEOUT = 10.0  # s an `ip`/`tc` command may take (they take milliseconds)
STOP_GRACE = 5.0  # s a process gets after SIGTERM before SIGKILL at close


class NetnsError(RuntimeError):
    """An `ip` or `tc` command failed while building or changing a lab."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if check and done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux PR_SET_PDEATHSIG; kept across
    the exec of `ip netns exec` and of the program it runs, which are not set-uid)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def unavailable(tools: Sequence[str] = ("ip", "tc")) -> str | None:
    """Why namespaces cannot be built here (no root, no iproute2, no netns support), or None.
    ``tools``: the commands the caller needs (``tc`` only to cut links)."""
    for tool in tools:
        if shutil.which(tool) is None:
            return f"the `{tool}` command is not installed (Debian package iproute2)"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"zq{os.getpid()}-probe"
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


@dataclass
class Host:
    """A network namespace (``ns`` None: the namespace this process runs in)."""

    name: str
    ns: str | None

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host."""
        return list(argv) if self.ns is None else ["ip", "netns", "exec", self.ns, *argv]

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ip", *(["-n", self.ns] if self.ns else []), *args], check=check)

    def tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(self.wrap(["tc", *args]), check=check)

    def add_address(self, address: str) -> None:
        """A /32 on the loopback: an address of the host rather than of one of its links."""
        self.ip("addr", "add", f"{address}/32", "dev", "lo")

    def route(self, destination: str, link: "Link") -> None:
        """Reach ``destination`` (an address or a prefix) through ``link``'s other end."""
        self.ip("route", "add", destination, "via", link.peer_address(self), "dev", link.interface(self))


@dataclass
class Link:
    """A veth pair between hosts ``a`` and ``b``, one /30 address at each end."""

    a: Host
    b: Host
    a_if: str
    b_if: str
    a_address: str
    b_address: str
    cut_count: int = field(default=0)  # cuts so far
    cut_dropped: int = field(default=0)  # packets the cuts dropped so far (read at each heal)
    _cut: bool = field(default=False, repr=False)

    def _end(self, host: Host) -> int:
        if host is self.a:
            return 0
        if host is self.b:
            return 1
        raise ValueError(f"host {host.name} is not an end of link {self.a.name}-{self.b.name}")

    def interface(self, host: Host) -> str:
        return (self.a_if, self.b_if)[self._end(host)]

    def address(self, host: Host) -> str:
        return (self.a_address, self.b_address)[self._end(host)]

    def peer_address(self, host: Host) -> str:
        return (self.b_address, self.a_address)[self._end(host)]

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Drop every packet both ways until :meth:`heal` (see the module docstring for how)."""
        if self._cut:
            return
        for host, ifname in ((self.a, self.a_if), (self.b, self.b_if)):
            host.tc("qdisc", "replace", "dev", ifname, "root", "pfifo", "limit", "0")
        self._cut = True
        self.cut_count += 1

    def heal(self) -> None:
        """Restore the default queueing discipline on both ends: packets flow again."""
        if not self._cut:
            return
        self.cut_dropped += self._dropped()
        for host, ifname in ((self.a, self.a_if), (self.b, self.b_if)):
            host.tc("qdisc", "del", "dev", ifname, "root", check=False)
        self._cut = False

    def _dropped(self) -> int:
        """Packets dropped by the root qdiscs of both ends (the cut's, while it is in place)."""
        total = 0
        for host, ifname in ((self.a, self.a_if), (self.b, self.b_if)):
            shown = host.tc("-s", "qdisc", "show", "dev", ifname, "root", check=False).stdout
            for line in shown.splitlines():
                if "(dropped " in line:
                    total += int(line.split("(dropped ", 1)[1].split(",", 1)[0])
        return total


class Lab:
    """Namespaces, links and processes, all removed by :meth:`close` (also as a context manager)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.prefix = f"zq{self.pid}-{next(_labs)}-"
        self.here = Host("here", None)
        self.hosts: list[Host] = []
        self.links: list[Link] = []
        self.procs: list[subprocess.Popen] = []
        self._private = 0  # links between two namespaces so far
        self._closed = False

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- building ------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        ns = self.prefix + name
        _run(["ip", "netns", "add", ns])
        host = Host(name, ns)
        self.hosts.append(host)
        host.ip("link", "set", "lo", "up")
        return host

    def link(self, a: Host, b: Host) -> Link:
        n = next(_links) % 10_000
        a_if, b_if = f"zq{self.pid}n{n}a", f"zq{self.pid}n{n}b"
        if a.ns is None or b.ns is None:
            k = next(_public) % 50
            base = f"10.{201 + k}.{(self.pid >> 6) & 255}.{(self.pid & 63) * 4}"
        else:
            if self._private >= 1 << 14:
                raise NetnsError("at most 16384 links between namespaces per lab")
            base = f"10.100.{self._private >> 6}.{(self._private & 63) * 4}"
            self._private += 1
        net = ipaddress.ip_address(base)
        a_address, b_address = str(net + 1), str(net + 2)
        argv = ["ip", "link", "add", a_if, *(["netns", a.ns] if a.ns else []), "type", "veth",
                "peer", "name", b_if, *(["netns", b.ns] if b.ns else [])]
        _run(argv)
        link = Link(a, b, a_if, b_if, a_address, b_address)
        self.links.append(link)  # from here on, close() deletes it
        for host, ifname, address in ((a, a_if, a_address), (b, b_if, b_address)):
            host.ip("addr", "add", f"{address}/30", "dev", ifname)
            host.ip("link", "set", ifname, "up")
        return link

    # -- processes ----------------------------------------------------------------------------

    def spawn(self, host: Host, argv: Sequence[str], **popen) -> subprocess.Popen:
        """Start ``argv`` in ``host``; :meth:`close` stops it by PID if it is still running, and it
        gets SIGKILL if this process dies first (so a killed test leaves no orphan behind)."""
        proc = subprocess.Popen(host.wrap(argv), preexec_fn=_die_with_parent, **popen)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Send ``sig`` to the process (by PID) and wait for it to exit; its exit status."""
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        return proc.wait(timeout)

    def stop(self, proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; by PID, and only if it still runs."""
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(CMD_TIMEOUT)

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, delete every namespace and link end here. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        running = [p for p in self.procs if p.poll() is None]
        for proc in running:  # all at once: each one's shutdown overlaps the others'
            try:
                proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(CMD_TIMEOUT)
        for proc in self.procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for host in self.hosts:
            _run(["ip", "netns", "del", host.ns], check=False)  # takes its veth ends with it
        for link in self.links:  # ends in this namespace (both ends of a pair go together)
            if link.a.ns is None:
                _run(["ip", "link", "del", link.a_if], check=False)
            elif link.b.ns is None:
                _run(["ip", "link", "del", link.b_if], check=False)
