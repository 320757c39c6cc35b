"""The sidecar: ``zmqagents node --config FILE`` as a long-running daemon.

* :mod:`.config` — the typed configuration (TOML file + conf.d + ``ZMQAGENTS_*`` env + flags);
* :mod:`.daemon` — :class:`~.daemon.Sidecar`: builds the Node, starts the optional services the
  configuration enables, and runs the lifecycle (signals, reload, sd_notify);
* :mod:`.logs` — text or JSON log lines on stderr;
* :mod:`.systemd` — ``sd_notify`` over ``$NOTIFY_SOCKET``.

Nothing is imported here, so ``import zmqagents.sidecar.config`` stays cheap: startup
imports only what the configuration enables.
"""
