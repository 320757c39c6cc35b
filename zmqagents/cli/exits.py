"""Exit statuses of every ``zmqagents`` command, in one place.

Scripts branch on these numbers, so each means one thing in every command. They follow the
shell's conventions where one exists: 2 for usage errors (click's), 124 for a deadline that passed
(coreutils ``timeout``), 128 + N for death by signal N. The rest (3 to 7) are this tool's own.
The simulator's report statuses (128 liveness, 129 correctness) belong to ``zmqagents sim`` and are
defined with it (zmqagents/sim/overlay.py), below this layer.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a request, a line of input, a peer or a service failed; any other runtime error
EXIT_USAGE = 2  # bad flags, arguments, key file, contact, or a sidecar configuration that cannot be used
EXIT_NOT_FOUND = 3  # the lookup worked and nothing matched: no DHT record, no provider of the capability
EXIT_SOME_FAILED = 4  # task/workflow: some task failed, or some input line was invalid
EXIT_REJECTED = 5  # task: some task was rejected by every provider tried (busy, denied)
EXIT_CANCELED = 6  # task: some task was canceled (unanswered question, provider shut down)
EXIT_WORKFLOW_INVALID = 7  # workflow run/check: the file or its step inputs failed the checks
EXIT_UNREACHABLE = 8  # the mesh, or the nodes named with --to, did not answer (not: answered "none here")
EXIT_TIMEOUT = 124  # a deadline passed
EXIT_SIGINT = 130  # interrupted by SIGINT (128 + 2)
EXIT_SIGTERM = 143  # terminated by SIGTERM (128 + 15)
EXIT_SIGPIPE = 141  # stdout was closed by its reader (128 + SIGPIPE), as `| head` does; nothing is printed

# What `zmqagents help exit-codes` prints: (status, name, meaning), every status above once.
TABLE: tuple[tuple[int, str, str], ...] = (
    (EXIT_OK, "ok", "success: every request, line or task completed"),
    (EXIT_FAILED, "failed", "something failed: a request, a line of input, a peer, a service"),
    (EXIT_USAGE, "usage", "bad flags, arguments, key file, contact or configuration; nothing was done"),
    (EXIT_NOT_FOUND, "not-found", "the lookup worked and found nothing: no record (dht get), no provider (find, task)"),
    (EXIT_SOME_FAILED, "some-failed", "task, workflow: some task failed, or some input line was invalid"),
    (EXIT_REJECTED, "rejected", "task: some task was rejected by every provider tried (busy, denied)"),
    (EXIT_CANCELED, "canceled", "task: some task was canceled (an unanswered question, its provider stopped)"),
    (EXIT_WORKFLOW_INVALID, "workflow-invalid", "workflow run/check: the workflow failed its checks; nothing ran"),
    (EXIT_UNREACHABLE, "unreachable", "the mesh (--mesh, the context) or the nodes named with --to did not answer"),
    (EXIT_TIMEOUT, "timeout", "a deadline passed (--timeout; the coreutils `timeout` convention)"),
    (EXIT_SIGINT, "sigint", "interrupted by SIGINT: work in flight was canceled, each started line reported"),
    (EXIT_SIGPIPE, "sigpipe", "stdout was closed by its reader (`| head -1`): work in flight was canceled"),
    (EXIT_SIGTERM, "sigterm", "terminated by SIGTERM: as sigint"),
)
