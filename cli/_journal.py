"""The log and the database an ``atb orders`` command reads or acts on, resolved as ``atb wal``
resolves them: never a fresh log, never a fresh database, never another log's database.

* The log: the directory must hold a log (``require_log_dir``): a missing or empty directory
  is ``no log at ...``, exit 2, and nothing is created there.
* The database: the one the log records in ``database.json`` (``wal.sync.identity``).
  ``--database-url`` / ``DATABASE_URL`` name it when the recorded URL cannot be used as is
  (its password is masked there) or when the log records none yet; a database with another
  id than the recorded one is refused. A SQLite file that does not exist is refused, never
  created. Reads open it ``read_only``: no schema, no id, no write lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click

from cli._common import EXIT_UNCHECKED, EXIT_UNREADABLE, AtbError, WalContext, require_log_dir
from wal.config import WALConfig, mask_url
from wal.db import DatabaseManager
from wal.db.engine import sqlite_file
from wal.errors import WALConfigError, WALDatabaseError
from wal.sync.identity import DatabaseTarget, mismatch, read_target

__all__ = ["JournalSource", "open_database", "resolve"]


@dataclass(frozen=True)
class JournalSource:
    """Where a command's journal is: the log directory and the database URL (unmasked)."""

    directory: Path
    url: str
    target: DatabaseTarget | None  # what database.json records, or None

    @property
    def shown_url(self) -> str:
        return mask_url(self.url)


def _named(ctx: click.Context) -> bool:
    obj = ctx.find_object(WalContext)
    return (obj is not None and obj.database_url is not None) or bool(
        os.environ.get("DATABASE_URL")
    )


def resolve(ctx: click.Context, config: WALConfig, *, what: str) -> JournalSource:
    """The log directory and its database for ``what`` (a verb for the messages).

    Raises ``AtbError`` (exit 2, one line, nothing created) when there is no log, the log
    records no database and none is named, the recorded URL hides its password and none is
    named, or a SQLite file does not exist.
    """
    directory = require_log_dir(config)
    try:
        target = read_target(directory)
    except ValueError as exc:
        raise AtbError(f"cannot {what}: {exc}", EXIT_UNREADABLE) from None
    if _named(ctx):
        url = config.database_url
    elif target is None:
        raise AtbError(
            f"cannot {what}: the log in {directory} records no database yet (no "
            "database.json: nothing was ever applied) and neither --database-url nor "
            "DATABASE_URL is set; name the engine's database with --database-url",
            EXIT_UNREADABLE,
        )
    elif "***" in target.url:
        raise AtbError(
            f"cannot {what}: the log in {directory} belongs to {target.url}, whose password "
            "is not kept in database.json; set DATABASE_URL (or pass --database-url) to that "
            "database",
            EXIT_UNREADABLE,
        )
    else:
        url = target.url
    try:
        path = sqlite_file(url)
    except (ValueError, WALConfigError) as exc:
        raise AtbError(f"cannot {what}: {exc}", EXIT_UNREADABLE) from None
    if path is not None and not path.exists():
        belongs = f"; this log belongs to {target.url}" if target is not None else ""
        raise AtbError(
            f"cannot {what}: database file {path} does not exist and is never created by "
            f"`atb orders`{belongs}. Nothing was created",
            EXIT_UNREADABLE,
        )
    return JournalSource(directory, url, target)


def open_database(
    source: JournalSource, config: WALConfig, *, what: str, read_only: bool = True
) -> DatabaseManager:
    """The source's database, proven to be the log's (its id is the recorded one).

    Unreachable: exit 3 (could not check). Another database: exit 2, nothing done.
    """
    db = DatabaseManager(source.url, timeout_ms=config.db_timeout_ms, read_only=read_only)
    try:
        try:
            db_id = db.database_id()
        except WALDatabaseError as exc:
            raise AtbError(f"cannot {what}: {exc}", EXIT_UNCHECKED) from None
        if source.target is not None:
            why = mismatch(source.target, source.url, db_id)
            if why is not None:
                raise AtbError(
                    f"cannot {what}: {why}; point --database-url (or DATABASE_URL) at the "
                    "database this log belongs to. Nothing was done",
                    EXIT_UNREADABLE,
                )
        elif db_id is None:
            raise AtbError(
                f"cannot {what}: {source.shown_url} holds no atb database (no "
                "wal_database_id table), and this log records no database: is it the "
                "engine's? Nothing was done",
                EXIT_UNREADABLE,
            )
    except BaseException:
        db.dispose()
        raise
    return db
