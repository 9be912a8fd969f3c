"""``atb wal``: the group of log commands and its global options."""

from __future__ import annotations

from pathlib import Path

import click

from cli._common import NonEmptyPath, WalContext


@click.group()
@click.option(
    "--dir",
    "directory",
    type=NonEmptyPath(path_type=Path),  # a file is refused by the config, in one line
    default=None,
    help="The log directory (overrides WAL_DIR; default data/wal).",
)
@click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="The database the log syncs into (overrides DATABASE_URL).",
)
@click.pass_context
def wal(ctx: click.Context, directory: Path | None, database_url: str | None) -> None:
    """Inspect, verify, sync, compact and repair the write-ahead log.

    Settings come from the WAL_* variables and DATABASE_URL (see docs/cli.md);
    --dir and --database-url override them. Read-only commands (status, verify,
    inspect, failed, metrics, bench) work while a trading process holds the log;
    commands that write (sync, replay, compact, retry, discard, repair) need the
    writer lock and say which process holds it when they cannot take it. No command
    creates a log: a missing or empty directory is "no log at ...", exit 2.

    \b
    Examples:
      atb wal status
      atb wal --dir /var/lib/atb/wal status --json
      atb wal --database-url postgresql://trader@db/atb sync
    """
    ctx.obj = WalContext(directory=directory, database_url=database_url)
