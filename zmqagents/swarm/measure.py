"""What this process costs: resident memory, CPU (every thread, libzmq's included), file descriptors.

Read from /proc and getrusage, so they count what the kernel charges the process, not what Python
thinks it allocated (libzmq's buffers are invisible to tracemalloc).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

# fds one node holds, measured (tests/swarm): its ROUTER and XPUB (a listening socket and a mailbox
# each), two link monitors (two mailboxes each), about 9 in all; each connection adds one TCP socket
# at each end and a mailbox at the DEALER's end.
FDS_PER_NODE_BASE = 9
FDS_PER_LINK = 3
# What a node of a mesh of a few hundred holds, measured (zmqagents swarm, 169 nodes in one process
# ran out at 20,000): its base and ~75 link ends (~45-50 connections, most of its routing table).
FDS_PER_NODE_TYPICAL = 120


_status_fd: int | None = None  # /proc/self/status, opened once: a process at its fd limit can still read it


def rss_mb() -> float:
    """Resident set size now, MiB (VmRSS)."""
    global _status_fd
    if _status_fd is None:
        _status_fd = os.open("/proc/self/status", os.O_RDONLY)
    text = os.pread(_status_fd, 1 << 16, 0).decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    """CPU seconds used so far by the whole process (all threads), user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


@dataclass
class FdLimit:
    soft: int
    hard: int
    wanted: int
    raised_from: int


def raise_fd_limit(wanted: int) -> FdLimit:
    """Raise RLIMIT_NOFILE's soft limit to the hard one, and both to ``wanted`` if the hard one is lower
    and we may (root, CAP_SYS_RESOURCE; else the soft limit stays at the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft = hard = wanted
        except (ValueError, OSError):
            pass
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return FdLimit(soft, hard, wanted, before)


def fds_wanted(nodes: int, links_per_node: int = 200) -> int:
    """A generous bound on the fds ``nodes`` nodes in one process may need: the base of each, and
    ``links_per_node`` connections each (a node keeps a link to most of its routing table: ~45
    contacts at 100 nodes, more as the mesh grows; a link costs FDS_PER_LINK, shared by its two ends),
    at most the kernel's per-process maximum (fs.nr_open). Raising a limit costs nothing."""
    wanted = 256 + nodes * (FDS_PER_NODE_BASE + links_per_node * FDS_PER_LINK // 2)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return min(wanted, int(f.read()))
    except (OSError, ValueError):
        return wanted
