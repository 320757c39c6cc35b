"""Metrics of what runs beside a node in the `agent` and `relay` processes, for the admin endpoint.

The admin endpoint (``admin.py``) reads each of its services when scraped; a service with a
``metric_families()`` method adds the families it returns. Two such sources:

* :class:`AgentsMetrics`: the task runtime of ``zmqagents agent`` (tasks by state, queue depth,
  runs by outcome, the run-time histogram), read from :meth:`Agents.task_metrics`;
* :class:`RelayMetrics`: the relay server of ``zmqagents relay`` (registered clients, forwards and
  refusals by outcome), read from ``node.relay_server``.

:func:`serve_admin` starts the endpoint for a plain node (not a sidecar): the `node` (without
``--config``), `agent` and `relay` commands' ``--admin HOST:PORT``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from .admin import AdminServer
from .exposition import MetricFamily, counter, gauge, histogram


class AgentsMetrics:
    """The task runtime's view as metric families (``zmqagents_tasks*``)."""

    def __init__(self, agents: Any):
        self.agents = agents

    def metric_families(self) -> Iterator[MetricFamily]:
        from ..agents.runtime import DURATION_BUCKETS

        view = self.agents.task_metrics()
        states = gauge("zmqagents_tasks", "Tasks served here and not finished, by state.", labels=["state"])
        for state, n in sorted(view.by_state.items()):
            states.add_metric([state], n)
        yield states
        yield gauge("zmqagents_tasks_queued", "Tasks waiting for a free slot of their capability.",
                    value=view.queue_depth)
        outcomes = counter("zmqagents_task_runs", "Agent runs ended, by outcome.", labels=["outcome"])
        for outcome, n in sorted(view.outcomes.items()):
            outcomes.add_metric([outcome], n)
        yield outcomes
        buckets = [(_bound(b), n) for b, n in zip(DURATION_BUCKETS, view.duration_counts)]
        buckets.append(("+Inf", view.duration_count))
        yield histogram("zmqagents_task_duration_seconds", "Run time of the tasks served here, "
                        "from start to their end (any outcome).", buckets, view.duration_sum)
        runtime = counter("zmqagents_task_runtime_events", "Task runtime events by outcome.", labels=["outcome"])
        for key, n in sorted({**self.agents.stats, **self.agents.provider.stats}.items()):
            runtime.add_metric([key], n)
        yield runtime


class RelayMetrics:
    """A relay server's view as metric families (``zmqagents_relay*``)."""

    def __init__(self, node: Any):
        self.node = node

    def metric_families(self) -> Iterator[MetricFamily]:
        server = self.node.relay_server
        if server is None:
            return
        yield gauge("zmqagents_relay_clients", "Outbound-only nodes registered with this relay.",
                    value=len(server))
        events = counter("zmqagents_relay_events", "Relay events by outcome (forwards, refusals "
                         "by reason, registrations).", labels=["outcome"])
        for key, n in sorted(server.stats.items()):
            events.add_metric([key], n)
        yield events


def _bound(value: float) -> str:
    return repr(float(value))


async def serve_admin(node: Any, listen: str, sources: Iterable[Any] = (), *,
                      expect_peers: bool = False) -> AdminServer:
    """Start /metrics, /livez and /readyz for a plain node on ``listen`` (HOST:PORT), with ``sources``
    adding their metrics. The caller closes it. AdminError for a bad address or a port in use."""
    extra = list(sources)
    server = AdminServer(node, listen, services=lambda: extra, expect_peers=expect_peers)
    await server.start()
    return server
