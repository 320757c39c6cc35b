"""The pieces of the Node shell, one job each, composed by :class:`zmqagents.node.Node`.

``types`` (the API's config, messages, events, errors), ``loop`` (the clock, the pump, the one timer),
``sending`` and ``serving`` (the application's side of delivery), ``neighbours`` (hello, one-hop
pub/sub), ``relays`` (the socket side of relaying), ``api`` (the Protocol of what the layers above
need from a node). Protocol logic is not here: it is in :mod:`zmqagents.core`.
"""
