"""Log lines on stderr, as text for people or JSON for collectors.

JSON mode writes one object per line: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``
(lower case), ``logger``, ``msg``, and ``exc`` when an exception is attached. Both modes are
configured on the root logger, so every module's ``logging.getLogger(__name__)`` follows, and
:func:`configure` can be called again (SIGHUP) to switch format or level in place.
"""

from __future__ import annotations

import json
import logging
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; never raises on odd messages (they are made text)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        obj = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def configure(format: str = "text", level: str | int = "warning") -> None:
    """Send log records to stderr in ``format`` ("text" or "json") at ``level`` (a name or a number).

    Replaces the root logger's handlers, so it works after ``logging.basicConfig`` and again on reload.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level] if isinstance(level, str) else level)
