"""``zmqagents``: run nodes and talk to them from a shell.

Every command that reads stdin takes one JSON value per line and writes one JSON object per line
to stdout; diagnostics go to stderr. Commands never prompt.

The package holds one module per command group (``serve``: node, relay, reply; ``messages``: send,
request, peers, publish, subscribe; ``dht``; ``agents``; ``tasks``; ``workflow``; ``fleet``;
``config``; ``keys``; ``sim``; ``context``: naming the mesh once; ``reference``: ``help TOPIC``),
the helpers they share (``common``; ``lines``: stdin, the bounded pipeline, signals), the exit
statuses (``exits``), and ``app``, which builds the ``zmqagents`` group and is the one place commands are
registered. This ``__init__`` imports nothing, so a module that only needs the exit statuses (the
sidecar daemon) does not load click or the commands; the entry point is ``app.main``.
"""
