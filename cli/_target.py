"""The database a writing command drains into, checked against the one the log belongs to.

``sync`` and ``replay`` apply entries: they must never apply them to the wrong database (a
default SQLite file in the current directory, a fresh database, another environment's). The
log records its database in ``<WAL_DIR>/database.json`` (``wal.sync.identity``): the URL
(password masked) and the random id the database keeps in ``wal_database_id``.
"""

from __future__ import annotations

import os

import click

from cli._common import AtbError, WalContext
from wal.config import WALConfig, mask_url
from wal.db import DatabaseManager
from wal.db.engine import sqlite_file
from wal.errors import WALConfigError, WALDatabaseError
from wal.log.storage import WALStorage
from wal.sync.identity import (
    log_is_new,
    mismatch,
    read_target,
    record_target,
    unbound_problem,
)

__all__ = ["connect_target"]


def connect_target(
    ctx: click.Context,
    config: WALConfig,
    storage: WALStorage,
    *,
    what: str,
    yes: bool,
    dry_run: bool = False,
) -> DatabaseManager:
    """A ``DatabaseManager`` for the configured database once it is proven to be the log's.

    Refuses (one line, nothing written) when the SQLite file does not exist (never created
    here), when the log belongs to another database and ``--database-url`` was not given
    explicitly and confirmed, and when the log records no database and none was configured.

    ``dry_run``: the same checks, but nothing is written anywhere: ``database.json`` is not
    recorded, the database is given no id (``database_id()`` only reads), and no question
    is asked (an explicit ``--database-url`` names the database to list against).
    """
    obj = ctx.find_object(WalContext)
    explicit = obj is not None and obj.database_url is not None
    configured = explicit or bool(os.environ.get("DATABASE_URL"))
    url = config.database_url
    try:
        target = read_target(storage.directory)
        if not configured and target is not None:
            url = _recorded_url(target.url, what)
        path = sqlite_file(url)
    except (ValueError, WALConfigError) as exc:
        raise AtbError(f"cannot {what}: {exc}") from None
    shown = mask_url(url)
    belongs = f"; this log belongs to {target.url}" if target is not None else ""
    if path is not None and not path.exists():
        raise AtbError(
            f"cannot {what}: database file {path} does not exist and is never created by "
            f"`atb wal {what}`{belongs}; point --database-url (or DATABASE_URL) at the "
            "database this log belongs to. Nothing was written"
        )
    db = DatabaseManager(url, timeout_ms=config.db_timeout_ms)
    try:
        try:
            db_id = db.database_id()
        except WALDatabaseError as exc:
            raise AtbError(f"cannot {what}: {exc}. Nothing was written") from None
        if target is None and not log_is_new(storage):
            # database.json is gone from a log that handed entries to a database before:
            # as loud as a wrong database; only an explicit, confirmed URL binds it again
            if not explicit:
                raise AtbError(
                    f"cannot {what}: {unbound_problem(storage.directory)}. Refusing to guess "
                    f"where its entries belong: name the database with atb wal --database-url "
                    f"URL {what} (it asks to confirm; --yes skips the question). Nothing was "
                    "written"
                )
            if dry_run:
                click.echo(
                    f"dry run: the log records no database; listing against {shown} (a real "
                    f"{what} asks to confirm it as the log's database)",
                    err=True,
                )
            elif not yes and not click.confirm(
                f"This log has handed entries to a database before but records none. Bind it "
                f"to {shown} and apply its entries there?",
                default=False,
                err=True,
            ):
                raise AtbError(f"not confirmed: nothing was applied to {shown}")
        elif target is None:
            if not configured:
                raise AtbError(
                    f"cannot {what}: this log records no database yet, and neither "
                    f"--database-url nor DATABASE_URL is set (the default {shown} may not be "
                    "the database these entries belong to); name it with --database-url. "
                    "Nothing was written"
                )
        else:
            why = mismatch(target, url, db_id)
            if why is not None:
                if not explicit:
                    raise AtbError(
                        f"cannot {what}: {why}. Refusing to apply its entries to another "
                        f"database. If {shown} is really where they belong now, say so: "
                        f"atb wal --database-url URL {what} (it asks to confirm; --yes skips "
                        "the question). Nothing was written"
                    )
                if dry_run:
                    click.echo(
                        f"dry run: {why}; listing against {shown} (a real {what} asks to "
                        "confirm it as the log's database)",
                        err=True,
                    )
                elif not yes and not click.confirm(
                    f"{why}. Apply this log's entries to {shown} and record it as the log's "
                    "database?",
                    default=False,
                    err=True,
                ):
                    raise AtbError(f"not confirmed: nothing was applied to {shown}")
        if not dry_run:  # a dry run changes nothing, anywhere: no database.json, no id
            record_target(
                storage.directory,
                url,
                db.database_id(create=True) or "",
                storage.file_ops,
                from_lsn=storage.next_lsn,  # what came before was another database's
            )
    except BaseException:
        db.dispose()
        raise
    return db


def _recorded_url(recorded: str, what: str) -> str:
    """The database the log records, when nothing names one: usable as it is unless its
    password was masked when it was recorded (then the operator must give it)."""
    if "***" in recorded:
        raise AtbError(
            f"cannot {what}: this log belongs to {recorded}, whose password is not kept; "
            "give its URL with --database-url or DATABASE_URL. Nothing was written"
        )
    click.echo(f"using the log's database {recorded} (recorded in database.json)", err=True)
    return recorded
