"""``atb wal sync``: apply every pending entry to the database now."""

from __future__ import annotations

import os
import sys
import threading
from datetime import UTC, datetime

import click

from cli._common import (
    AtbError,
    echo_json,
    fmt_age,
    get_config,
    locked_message,
    require_log_dir,
    wal_errors,
)
from wal.entry import WALEntryStatus
from wal.errors import WALLockedError
from wal.log.storage import WALStorage
from wal.sync.manager import WALManager
from wal.sync.results import SyncResult

_PROGRESS_EVERY_S = 0.2  # how often the bar is redrawn (a TTY only; never in --json or pipes)


def _unfinished(manager: WALManager) -> int:
    st = manager.storage
    return st.count(WALEntryStatus.PENDING) + st.count(WALEntryStatus.SYNCING)


def _sync_with_progress(manager: WALManager) -> SyncResult:
    """``force_sync`` in a worker thread while a progress bar (entries, rate, ETA) follows it."""
    total = _unfinished(manager)
    out: dict[str, SyncResult | BaseException] = {}

    def work() -> None:
        try:
            out["result"] = manager.force_sync()
        except BaseException as exc:  # re-raised below, in the command's thread
            out["error"] = exc

    worker = threading.Thread(target=work, name="atb-sync", daemon=True)
    worker.start()
    with click.progressbar(
        length=max(total, 1), label="applying", show_eta=True, show_pos=True, width=30
    ) as bar:
        shown = 0
        while worker.is_alive():
            worker.join(_PROGRESS_EVERY_S)
            done = max(0, total - _unfinished(manager))
            bar.update(done - shown)
            shown = done
        bar.update(max(total, 1) - shown)
    error = out.get("error")
    if isinstance(error, BaseException):
        raise error
    result = out["result"]
    assert isinstance(result, SyncResult)
    return result


@click.command(short_help="Apply every pending entry to the database now.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.option(
    "--yes",
    is_flag=True,
    help="Confirm, without asking, draining into a database the log does not record "
    "(only with an explicit --database-url).",
)
@click.pass_context
@wal_errors
def sync(ctx: click.Context, as_json: bool, yes: bool) -> None:
    """Apply every pending entry to the database, in LSN order, then exit.

    Needs the writer lock: run it while no trading process holds the log (after a
    crash, or to drain a log before a migration). While a trading process runs, its
    own sync thread applies the entries; `atb wal status` shows its progress.
    Entries the database refuses permanently count towards WAL_MAX_RETRIES and
    then become FAILED (see `atb wal failed`).

    Never drains into the wrong database: the log records the database it belongs to
    (<WAL_DIR>/database.json: URL and the database's own random id). sync refuses a
    database with another id, or none, unless --database-url names it explicitly and
    you confirm (--yes skips the question); it refuses a SQLite file that does not
    exist (it never creates one), and a log that records no database when neither
    --database-url nor DATABASE_URL is set. With neither set, it uses the database the
    log records (unless its password was masked there: then it asks for the URL). The
    result is kept in <WAL_DIR>/last-cli-sync.json; the trading process's own view is left alone.

    Exit code 0 when nothing is left pending or failed, 1 otherwise.

    \b
    Examples:
      atb wal sync
      atb wal --database-url postgresql://trader@db/atb sync
      atb wal sync --json
    """
    config = get_config(ctx)
    directory = require_log_dir(config)
    try:
        storage = WALStorage(directory, config.storage_options())
    except WALLockedError as exc:
        raise AtbError(
            locked_message(
                exc,
                "sync",
                "stop it, or let its sync thread drain the log (`atb wal status` shows progress)",
            )
        ) from None
    try:
        from cli._target import connect_target
        from wal.sync.status import CLI_SYNC_FILE, write_view

        db = connect_target(ctx, config, storage, what="sync", yes=yes)
        try:
            manager = WALManager(storage, db, config, publish_status=False)
            try:
                if not as_json and sys.stdout.isatty():
                    result = _sync_with_progress(manager)
                else:
                    result = manager.force_sync()
            finally:
                manager.stop()
        finally:
            db.dispose()
        write_view(
            directory,
            CLI_SYNC_FILE,
            {**result.to_dict(), "pid": os.getpid(), "updated_at": datetime.now(UTC).isoformat()},
        )
    finally:
        storage.close()
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(
            f"applied {result.applied}, already applied (duplicates) {result.duplicates}, "
            f"refused (will be retried) {result.errors}, became FAILED {result.failed}, "
            f"still pending {result.pending} ({fmt_age(result.seconds)})"
        )
        if result.errors:
            click.echo(
                "the database refused some entries: `atb wal inspect --status pending "
                "--json` shows each last_error",
                err=True,
            )
        if result.error:
            click.echo(f"stopped by a database error: {result.error}", err=True)
    if result.pending or result.failed:
        ctx.exit(1)
