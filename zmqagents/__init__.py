"""zmqagents: a brokerless message bus for AI agents.

ZeroMQ ROUTER/DEALER and PUB/SUB links encrypted with CurveZMQ, one Ed25519
key per node, and one length-prefixed msgpack envelope for everything.
"""

__version__ = "0.1.0"
