"""Log output for the CLI: readable text, or one JSON object a line for log shippers.

The library logs through ``logging.getLogger("bulk_update")`` with an ``event`` name and fields
in ``extra``; this module only formats. Nothing logged ever holds the API key (the job never
passes it to a log call, and headers are never logged).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["configure"]

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _time(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "event": fields.pop("event", "log"),
            "message": record.getMessage(),
            **fields,
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        fields.pop("event", None)
        extra = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        line = f"{_time(record)} {record.levelname} {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time: while the progress bar runs, that is
    rich's proxy, which prints each line above the bar instead of onto it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


# On a terminal (``terse``), the INFO lines a person reads beside the bar and the summary.
TERSE_EVENTS = frozenset({"resume"})


def _terse(record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or getattr(record, "event", None) in TERSE_EVENTS


def configure(
    log_format: str = "text",
    log_file: str | None = None,
    stream: TextIO | None = None,
    *,
    quiet: bool = False,
    terse: bool = False,
) -> logging.Handler:
    """Send the ``bulk_update`` logger to ``log_file`` (appended) or stderr. ``quiet``: no INFO
    lines on stderr (warnings and errors still; a log file gets everything); ``terse`` (a
    terminal): only the INFO lines of TERSE_EVENTS. Raises OSError
    when the log file cannot be opened."""
    logger = logging.getLogger("bulk_update")
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    elif stream is not None:
        handler = logging.StreamHandler(stream)
    else:
        handler = _StderrHandler()
    if quiet and log_file is None:
        handler.setLevel(logging.WARNING)
    elif terse and log_file is None:
        handler.addFilter(_terse)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler
