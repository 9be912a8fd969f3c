"""``atb wal compact``: drop COMPLETED entries older than the retention from sealed segments."""

from __future__ import annotations

import sys

import click

from cli._common import (
    AtbError,
    echo_json,
    fmt_bytes,
    get_config,
    locked_message,
    require_log_dir,
    wal_errors,
)
from wal.errors import WALLockedError
from wal.log.options import MAX_RETENTION_HOURS
from wal.log.storage import WALStorage


def _finite(hours: float | None) -> float | None:
    """NaN passes FloatRange's comparisons: refused here, as a bad option value."""
    if hours is not None and hours != hours:
        raise click.BadParameter("nan is not a number of hours", param_hint="--retention-hours")
    return hours


@click.command(short_help="Drop old COMPLETED entries from sealed segments.")
@click.option(
    "--retention-hours",
    type=click.FloatRange(min=0, max=MAX_RETENTION_HOURS),
    callback=lambda _ctx, _p, v: _finite(v),
    default=None,
    metavar="H",
    help="Keep COMPLETED entries younger than H hours (default WAL_RETENTION_HOURS, 168).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the sizes as JSON.")
@click.pass_context
@wal_errors
def compact(ctx: click.Context, retention_hours: float | None, as_json: bool) -> None:
    """Rewrite sealed segments without COMPLETED entries older than the retention.

    Entries not yet applied (PENDING, SYNCING) and FAILED entries always stay. Each
    rewrite is crash-safe (temp file, fsync, rename, directory fsync). Needs the
    writer lock; a running trading process compacts on its own schedule.

    \b
    Examples:
      atb wal compact
      atb wal compact --retention-hours 24
      atb wal --dir /var/lib/atb/wal compact --retention-hours 0 --json
    """
    config = get_config(ctx)
    directory = require_log_dir(config)
    hours = config.retention_hours if retention_hours is None else retention_hours
    try:
        storage = WALStorage(directory, config.storage_options())
    except WALLockedError as exc:
        raise AtbError(locked_message(exc, "compact")) from None
    try:
        if not as_json and sys.stdout.isatty():
            with click.progressbar(
                length=max(storage.get_stats().segments, 1),
                label="compacting segments",
                show_pos=True,
                show_eta=True,
                width=30,
            ) as bar:

                def step(done: int, total: int) -> None:
                    bar.length = max(total, 1)
                    bar.update(done - bar.pos)

                sizes = storage.compact(hours, progress=step)
        else:
            sizes = storage.compact(hours)
    finally:
        storage.close()
    if as_json:
        echo_json({"retention_hours": hours, **sizes})
        return
    click.echo(
        f"compacted {directory}: {fmt_bytes(sizes['bytes_before'])} -> "
        f"{fmt_bytes(sizes['bytes_after'])}; dropped {sizes['entries_dropped']} COMPLETED "
        f"entries older than {hours:g} h; rewrote {sizes['segments_rewritten']} segments, "
        f"removed {sizes['segments_removed']}"
    )
