"""The relay's log lines: plain text or one JSON object per line (``log_format``).

Whatever a stranger sends, a log line stays one short line: the message is cut at
:data:`MAX_MESSAGE`, an exception is named, not traced (its traceback only at ``-vv``), and only
the fields named in :data:`FIELDS` of a record's extras are written. Callers never pass a
secret, a payload or an envelope to the log; the last two rules keep a mistake from turning into
a leak or a flood.
"""

from __future__ import annotations

import json
import logging

from node.core.display import terminal_safe

__all__ = ["FIELDS", "MAX_MESSAGE", "RelayLogFormatter", "configure_logging"]

MAX_MESSAGE = 240
# Extras worth a field: refusal triggers and stream numbers (never peer-chosen bytes).
FIELDS = ("trigger", "peer_stream")


class RelayLogFormatter(logging.Formatter):
    """One line per record, ``text`` (``LEVEL logger: message key=value``) or ``json``."""

    def __init__(self, style: str = "text", *, tracebacks: bool = False) -> None:
        super().__init__()
        self._json = style == "json"
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "…"
        extras = {
            name: getattr(record, name)
            for name in FIELDS
            if isinstance(getattr(record, name, None), str | int)
        }
        error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        if self._json:
            entry: dict[str, object] = {
                "ts": round(record.created, 3),
                "level": record.levelname,
                "logger": record.name,
                "msg": message,
                **extras,
            }
            if error is not None:
                entry["error"] = error
            if self._tracebacks and record.exc_info:
                entry["traceback"] = self.formatException(record.exc_info)
            return json.dumps(entry, ensure_ascii=True)
        fields = "".join(f" {k}={v}" for k, v in extras.items())
        line = f"{record.levelname} {record.name}: {message}{fields}"
        if error is not None:
            line += f" ({error})"
        line = terminal_safe(line)
        if self._tracebacks and record.exc_info:
            line += "\n" + terminal_safe(self.formatException(record.exc_info), multiline=True)
        return line


def configure_logging(style: str) -> None:
    """Give every handler of the root logger the relay's formatter (adding one on stderr if
    there is none, as under ``python -m relay``). Tracebacks are written only at debug level
    (``-vv``)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("quic").setLevel(logging.ERROR)
    formatter = RelayLogFormatter(style, tracebacks=root.getEffectiveLevel() <= logging.DEBUG)
    for handler in root.handlers:
        handler.setFormatter(formatter)
