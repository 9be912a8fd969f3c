"""``atb wal retry``: put FAILED entries back in the queue."""

from __future__ import annotations

import click

from cli._common import AtbError, get_config, locked_message, require_log_dir, wal_errors
from wal.entry import WALEntryStatus
from wal.errors import WALLockedError
from wal.log.storage import WALStorage


@click.command(short_help="Put FAILED entries back in the queue.")
@click.argument("entry_id", required=False, metavar="ID")
@click.option("--all", "retry_all", is_flag=True, help="Retry every FAILED entry, in LSN order.")
@click.pass_context
@wal_errors
def retry(ctx: click.Context, entry_id: str | None, retry_all: bool) -> None:
    """Set a FAILED entry back to PENDING (attempts reset to 0) so it is applied again.

    Fix the cause first (`atb wal failed` shows each entry's last error). Only FAILED
    entries can be retried: a COMPLETED entry is refused, since applying it again
    would double its effect. The next sync applies it (`atb wal sync`, or the trading
    process's sync thread once it starts). Needs the writer lock.

    \b
    Examples:
      atb wal retry 6f1c1f0e-8a8e-4a53-9a8e-0b7f4f2a9c11
      atb wal retry --all && atb wal sync
    """
    if (entry_id is None) == (not retry_all):
        raise click.UsageError("give one entry ID, or --all")
    config = get_config(ctx)
    directory = require_log_dir(config)
    try:
        storage = WALStorage(directory, config.storage_options())
    except WALLockedError as exc:
        raise AtbError(locked_message(exc, "retry")) from None
    with storage:
        if retry_all:
            todo = list(storage.iter_entries([WALEntryStatus.FAILED]))
            storage.update_statuses((e, WALEntryStatus.PENDING, None, 0) for e in todo)
            click.echo(f"{len(todo)} FAILED entries are PENDING again; `atb wal sync` applies them")
            return
        assert entry_id is not None
        entry = storage.get_entry(entry_id)
        if entry.status is WALEntryStatus.COMPLETED:
            raise AtbError(
                f"entry {entry.entry_id} is COMPLETED (applied or discarded): retrying it would "
                "apply it twice; nothing was changed"
            )
        if entry.status is not WALEntryStatus.FAILED:
            click.echo(
                f"entry {entry.entry_id} is {entry.status.value.upper()} already: nothing to do"
            )
            return
        storage.update_status(entry, WALEntryStatus.PENDING, attempts=0)
        click.echo(
            f"entry {entry.entry_id} (LSN {entry.lsn}, {entry.operation}) is PENDING again; "
            "`atb wal sync` applies it"
        )
