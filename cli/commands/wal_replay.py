"""``atb wal replay``: after a database restore, re-queue what the restored database lacks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
import sqlalchemy as sa

from cli._common import (
    AtbError,
    echo_json,
    get_config,
    locked_message,
    parse_time,
    require_log_dir,
    wal_errors,
)
from cli.commands.wal_discard import DISCARD_PREFIX
from wal.db import DatabaseManager
from wal.db.apply import applied_in
from wal.entry import WALEntry, WALEntryStatus
from wal.errors import WALLockedError
from wal.log.storage import WALStorage

CHUNK = 500  # entry ids asked of the ledger per query


def _since(value: str) -> int | datetime:
    text = value.strip()
    if text.isascii() and text.isdigit():  # "²".isdigit() is true; int() refuses it
        return int(text)
    try:
        return parse_time(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an LSN (a whole number) nor an ISO 8601 time "
            "(2025-01-31T09:00:00+00:00)",
            param_hint="--since",
        ) from None


@click.command(short_help="Re-queue COMPLETED entries a restored database lacks.")
@click.option(
    "--since",
    "since_text",
    required=True,
    metavar="LSN|TIME",
    help="First LSN, or an ISO 8601 time (entries created then or later; naive = UTC).",
)
@click.option("--dry-run", is_flag=True, help="List what would be re-queued; change nothing.")
@click.option(
    "--yes",
    is_flag=True,
    help="Confirm, without asking, a database the log does not record (with --database-url).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@wal_errors
def replay(ctx: click.Context, since_text: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Re-queue COMPLETED entries whose row is missing from the database's ledger.

    For a database restored from a backup: the entries applied after the backup are
    COMPLETED in the log but absent from the restored database. replay asks the
    database's `wal_applied` ledger about every COMPLETED entry from --since on, and
    marks PENDING again exactly those it lacks (the ledger decides: nothing it holds
    is applied twice). Entries given up with `atb wal discard` stay given up. Then
    `atb wal sync` (or the trading process) applies them, in LSN order. Only entries
    still in the log can be replayed: keep WAL_RETENTION_HOURS longer than the age of
    your oldest usable backup.

    Needs the writer lock, and the database the log belongs to (the restored backup
    carries its id; see `atb wal sync --help`).

    \b
    Examples:
      atb wal replay --since 2025-01-31T00:00:00Z --dry-run
      atb wal replay --since 4100 && atb wal sync
    """
    since = _since(since_text)
    config = get_config(ctx)
    directory = require_log_dir(config)
    try:
        # a dry run changes nothing, anywhere: a read-only open cuts no torn tail, writes no
        # manifest, takes no lock
        storage = (
            WALStorage.open_readonly(directory, config.storage_options())
            if dry_run
            else WALStorage(directory, config.storage_options())
        )
    except WALLockedError as exc:
        raise AtbError(locked_message(exc, "replay")) from None
    with storage:
        from cli._target import connect_target

        db = connect_target(ctx, config, storage, what="replay", yes=yes, dry_run=dry_run)
        try:
            candidates = [
                e
                for e in storage.iter_entries([WALEntryStatus.COMPLETED])
                if _selected(e, since) and not (e.last_error or "").startswith(DISCARD_PREFIX)
            ]
            missing: list[WALEntry] = []
            for i in range(0, len(candidates), CHUNK):
                chunk = candidates[i : i + CHUNK]
                ids = [str(e.entry_id) for e in chunk]
                held = _ledger_holds(db, ids) if dry_run else db.applied_ids(ids)
                missing.extend(e for e in chunk if str(e.entry_id) not in held)
        finally:
            db.dispose()
        if not dry_run and missing:
            storage.update_statuses((e, WALEntryStatus.PENDING, None, 0) for e in missing)
    doc: dict[str, Any] = {
        "since": since_text,
        "dry_run": dry_run,
        "checked": len(candidates),
        "missing": len(missing),
        "requeued": 0 if dry_run else len(missing),
        "entries": [
            {"lsn": e.lsn, "entry_id": str(e.entry_id), "operation": e.operation} for e in missing
        ],
    }
    if as_json:
        echo_json(doc)
        return
    for e in missing:
        click.echo(f"LSN {e.lsn}  {e.entry_id}  {e.operation}")
    n = len(missing)
    noun = "entry" if n == 1 else "entries"
    if dry_run:
        click.echo(
            f"dry run: {n} of {len(candidates)} COMPLETED {noun} checked are missing from the "
            "database's ledger and would be re-queued; nothing was changed"
        )
    elif n:
        click.echo(
            f"{n} {noun} re-queued (PENDING) of {len(candidates)} checked; "
            "`atb wal sync` applies them"
        )
    else:
        click.echo(f"nothing to replay: the database's ledger holds all {len(candidates)}")


def _ledger_holds(db: DatabaseManager, ids: list[str]) -> set[str]:
    """Which of ``ids`` the ledger holds, read without creating anything (``applied_ids``
    first creates missing tables and the database's id): a database with no ledger holds
    none."""
    with db.engine.connect() as conn, conn.begin():
        if not sa.inspect(conn).has_table("wal_applied"):
            return set()
        return applied_in(conn, ids)


def _selected(e: WALEntry, since: int | datetime) -> bool:
    if isinstance(since, int):
        return e.lsn is not None and e.lsn >= since
    return e.created_at >= since
