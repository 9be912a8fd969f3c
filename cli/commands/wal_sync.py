"""``atb wal sync``: apply every pending entry to the database now."""

from __future__ import annotations

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
from wal.errors import WALLockedError
from wal.log.storage import WALStorage


@click.command(short_help="Apply every pending entry to the database now.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
@wal_errors
def sync(ctx: click.Context, as_json: bool) -> None:
    """Apply every pending entry to the database, in LSN order, then exit.

    Needs the writer lock: run it while no trading process holds the log (after a
    crash, or to drain a log before a migration). While a trading process runs, its
    own sync thread applies the entries; `atb wal status` shows its progress.
    Entries the database refuses permanently count towards WAL_MAX_RETRIES and
    then become FAILED (see `atb wal failed`).

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
        from wal.db import DatabaseManager
        from wal.sync.manager import WALManager

        db = DatabaseManager(config.database_url)
        try:
            manager = WALManager(storage, db, config)
            try:
                result = manager.force_sync()
            finally:
                manager.stop()
        finally:
            db.dispose()
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
