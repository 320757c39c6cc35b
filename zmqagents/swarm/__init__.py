"""``zmqagents swarm``: many real Nodes in one process (or a few), for load tests against a mesh.

Real nodes: real sockets, CURVE on every link, the node shell every user runs; only the process is
shared. Every node of a process uses one ZeroMQ context (one I/O thread; transport/context.py) and
the one event loop; nothing runs per node but what a Node itself holds.

The modules, each with one job:

* :mod:`.plan`: what to run (nodes, workload, rates, the fault plan), checked before anything starts.
* :mod:`.histogram`: bounded, mergeable distributions, so that reports of many pods merge honestly.
* :mod:`.measure`: what the process costs (RSS, CPU, file descriptors and their limit).
* :mod:`.workload`: the drivers (idle, requests, tasks, publish).
* :mod:`.faults`: kills and pauses of a fraction of the nodes, and who noticed a kill when.
* :mod:`.runner`: one process's swarm, from the first node to the report.
* :mod:`.procs`: ``--procs P``: P such processes, their reports merged.
* :mod:`.report`: the JSON report, and the merge of several (``zmqagents swarm collect``).
"""
