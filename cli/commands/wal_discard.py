"""``atb wal discard``: give an entry up for good."""

from __future__ import annotations

import click

from cli._common import AtbError, get_config, locked_message, require_log_dir, wal_errors
from wal.entry import WALEntryStatus
from wal.errors import WALLockedError
from wal.log.storage import WALStorage

DISCARD_PREFIX = "discarded by operator: "


@click.command(short_help="Give an entry up: it will never be applied.")
@click.argument("entry_id", metavar="ID")
@click.option(
    "--reason", default="no reason given", show_default=True, help="Recorded with the entry."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@wal_errors
def discard(ctx: click.Context, entry_id: str, reason: str, yes: bool) -> None:
    """Mark an entry as discarded: it will NEVER be applied to the database.

    Appends a status record COMPLETED with the error "discarded by operator:
    <reason>" (nothing is rewritten; the entry and its history stay in the log until
    compaction). Use it for a FAILED entry whose effect must not happen, or that was
    applied by hand. Asks for confirmation unless --yes. Needs the writer lock.

    \b
    Examples:
      atb wal discard 6f1c1f0e-8a8e-4a53-9a8e-0b7f4f2a9c11 --reason "duplicate fill"
      atb wal discard 6f1c1f0e-8a8e-4a53-9a8e-0b7f4f2a9c11 --yes
    """
    config = get_config(ctx)
    directory = require_log_dir(config)
    try:
        storage = WALStorage(directory, config.storage_options())
    except WALLockedError as exc:
        raise AtbError(locked_message(exc, "discard")) from None
    with storage:
        entry = storage.get_entry(entry_id)
        if entry.status is WALEntryStatus.COMPLETED:
            how = (
                "discarded already"
                if (entry.last_error or "").startswith(DISCARD_PREFIX)
                else "applied to the database already"
            )
            raise AtbError(f"entry {entry.entry_id} is COMPLETED ({how}); nothing was changed")
        if not yes:
            click.confirm(
                f"Discard entry {entry.entry_id} (LSN {entry.lsn}, {entry.operation}, "
                f"{entry.status.value.upper()})? It will never be applied to the database",
                abort=True,
            )
        storage.update_status(entry, WALEntryStatus.COMPLETED, error=DISCARD_PREFIX + reason)
        click.echo(f"entry {entry.entry_id} discarded ({reason}); it will never be applied")
