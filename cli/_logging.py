"""How ``atb`` shows the library's log records: ``--quiet``, ``--verbose``, ``WAL_LOG_FORMAT``.

By default a command's warnings (``wal.*`` loggers) are held back and shown only when the
command fails (exit code not 0): a successful command prints its result, not the library's
chatter ("trading halted: startup reconciliation has not run yet" while a reconciliation it
ran succeeded). ``--verbose`` shows INFO and above as they happen; ``--quiet`` shows none.
``WAL_LOG_FORMAT=json`` writes each record as one JSON object per line on stderr
(``{"ts", "level", "logger", "message"}``, plus ``exc`` for an exception); ``text`` (the
default) writes ``LEVEL logger: message``.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from cli._common import AtbError
from wal.masking import mask_text

__all__ = ["LOG_FORMATS", "LogSession", "log_format"]

LOG_FORMATS = ("text", "json")
_LOGGERS = ("wal", "cli")


def log_format() -> str:
    """``WAL_LOG_FORMAT`` (text | json); a bad value is one line, exit 1."""
    raw = os.environ.get("WAL_LOG_FORMAT")
    if raw is None:
        return "text"
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise AtbError(
            f"WAL_LOG_FORMAT={raw!r} is not valid: expected text | json (fix the value and "
            "start again; nothing was opened or written)"
        )
    return value


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_text(record.getMessage()),
        }
        if record.exc_info:
            doc["exc"] = mask_text(self.formatException(record.exc_info))
        return orjson.dumps(doc).decode()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return mask_text(text)  # a URL's password, a database's known one: never in a log


class _Held(logging.Handler):
    """Keeps records until the command's outcome is known."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class LogSession:
    """One command's logging: installed by ``start``, settled by ``finish(ok)``."""

    def __init__(self, *, quiet: bool, verbose: bool, fmt: str) -> None:
        self.quiet = quiet
        self.verbose = verbose
        formatter: logging.Formatter = _JsonFormatter() if fmt == "json" else _TextFormatter()
        self._out = logging.StreamHandler(sys.stderr)
        self._out.setFormatter(formatter)
        self._held = _Held()
        self._null = logging.NullHandler()
        self._saved: list[tuple[logging.Logger, int, bool]] = []

    def start(self) -> None:
        handler: logging.Handler = self._out if self.verbose else self._held
        level = logging.INFO if self.verbose else logging.WARNING
        for name in _LOGGERS:
            lg = logging.getLogger(name)
            self._saved.append((lg, lg.level, lg.propagate))
            lg.setLevel(level)
            lg.propagate = False  # Python's last-resort handler would print warnings at once
            # quiet: a handler that drops them (none at all would bring the last resort back)
            lg.addHandler(self._null if self.quiet else handler)

    def finish(self, ok: bool) -> None:
        for lg, level, propagate in self._saved:
            lg.removeHandler(self._out)
            lg.removeHandler(self._held)
            lg.removeHandler(self._null)
            lg.setLevel(level)
            lg.propagate = propagate
        self._saved.clear()
        if not ok and not self.quiet:
            self._out.setStream(sys.stderr)  # the stream of the moment (a test runner swaps it)
            for record in self._held.records:
                self._out.handle(record)
        self._held.records.clear()
