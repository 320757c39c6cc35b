"""Discrete-event simulation of a zmqagents mesh, driving the same sans-IO cores as real nodes."""

from .engine import Core, SimNode, SimReport, Simulator, bulk_build, frozen_heap, sim_node_id
from .netmodel import Network, parse_duration, parse_latency

__all__ = ["Core", "Network", "SimNode", "SimReport", "Simulator", "bulk_build", "frozen_heap", "parse_duration",
           "parse_latency", "sim_node_id"]
