"""``atb wal failed``: list the dead letters (FAILED entries)."""

from __future__ import annotations

import click

from cli._common import get_config, require_log_dir, wal_errors
from cli.commands.wal_inspect import show_entries
from wal.entry import WALEntryStatus


@click.command(short_help="List FAILED entries (dead letters).")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="At most N entries, oldest first; 0 (default) for all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as a JSON array.")
@click.pass_context
@wal_errors
def failed(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List FAILED entries: those the database refused WAL_MAX_RETRIES times.

    They are never applied on their own. Fix the cause (the last error says what the
    database objected to), then `atb wal retry ID` (or --all, in LSN order) puts them
    back in the queue; `atb wal discard ID` gives one up for good. Reads only.

    \b
    Examples:
      atb wal failed
      atb wal failed --json | jq '.[].last_error'
    """
    config = get_config(ctx)
    require_log_dir(config)
    n = show_entries(
        config,
        [WALEntryStatus.FAILED],
        None,
        None,
        limit,
        as_json,
        show_error=True,
        empty="no FAILED entries (no dead letters)",
    )
    if n and not as_json:
        click.echo("retry with `atb wal retry ID` (or --all); give up with `atb wal discard ID`")
