"""``atb wal inspect``: list entries, read-only, with filters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

import click

from cli._common import (
    EXIT_UNREADABLE,
    AtbError,
    aware,
    echo_json,
    get_config,
    one_line,
    parse_time,
    require_log_dir,
    wal_errors,
)
from wal.config import WALConfig
from wal.entry import OperationType, WALEntry, WALEntryStatus
from wal.errors import WALError, printable
from wal.log.storage import WALStorage
from wal.orders.journal_reads import ORDER_OPERATIONS

STATUSES = [s.value for s in WALEntryStatus]


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time (e.g. 2025-01-31 or 2025-01-31T09:30:00Z)"
        ) from None


@click.command("inspect", short_help="List entries, with filters (read-only).")
@click.option(
    "--status",
    "statuses",
    type=click.Choice(STATUSES, case_sensitive=False),
    multiple=True,
    help="Only entries with this status (repeatable).",
)
@click.option("--operation", metavar="OP", help="Only this operation, e.g. atomic_balance_update.")
@click.option(
    "--since",
    metavar="ISO",
    callback=_since,
    help="Only entries created at or after this time (naive times are UTC).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    metavar="N",
    help="At most N entries, oldest first; 0 for all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as a JSON array.")
@click.pass_context
@wal_errors
def inspect_entries(
    ctx: click.Context,
    statuses: tuple[str, ...],
    operation: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the entries in the log, oldest first, with their current status.

    Reads only: works while a trading process holds the log. --json prints each
    entry's full record (entry_id, lsn, operation, args, kwargs, idempotency_key,
    checksum, created_at, synced_at, status, attempts, last_error), with typed
    values tagged as in the log ({"$decimal": "1.50"}).

    \b
    Examples:
      atb wal inspect
      atb wal inspect --status pending --status syncing
      atb wal inspect --operation atomic_balance_update --since 2025-01-31T00:00:00Z
      atb wal inspect --limit 0 --json > entries.json
    """
    config = get_config(ctx)
    require_log_dir(config)
    wanted = [WALEntryStatus(s.lower()) for s in statuses] or None
    show_entries(config, wanted, operation, since, limit, as_json, show_error=False)


def show_entries(
    config: WALConfig,
    statuses: Iterable[WALEntryStatus] | None,
    operation: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
    *,
    show_error: bool,
    empty: str = "no matching entries",
) -> int:
    """Print the matching entries (table or JSON); return how many were printed."""
    try:
        storage = WALStorage.open_readonly(config.directory, config.storage_options())
    except (WALError, OSError) as exc:
        raise AtbError(printable(one_line(str(exc))), EXIT_UNREADABLE) from None
    try:
        # one more than asked, to tell the operator that more entries match
        cap = None if limit == 0 else limit + 1
        chosen = list(_select(storage.iter_entries(statuses), operation, since, cap))
        if not chosen and operation is not None and operation not in _KNOWN_OPERATIONS:
            seen = {e.operation for e in storage.iter_entries(None)}
            if operation not in seen:
                names = ", ".join(sorted(_KNOWN_OPERATIONS | seen))
                raise click.BadParameter(
                    f"{printable(operation)!r} is not an operation this log or atb knows "
                    f"(known: {names})",
                    param_hint="--operation",
                )
    except WALError as exc:
        raise AtbError(one_line(str(exc))) from None
    finally:
        storage.close()
    more = limit > 0 and len(chosen) > limit
    if more:
        chosen = chosen[:limit]
    if as_json:
        echo_json([e.to_dict() for e in chosen])
        return len(chosen)
    rows = [_row(e, show_error) for e in chosen]
    header: tuple[str, ...] = ("LSN", "STATUS", "OPERATION", "CREATED (UTC)", "TRIES", "ENTRY ID")
    if show_error:
        header = (*header, "LAST ERROR")
    if not rows:
        click.echo(empty)
        return 0
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())
    if more:
        click.echo("(more entries match: raise --limit, or --limit 0 for all)")
    return len(chosen)


# the operations atb writes; a log may hold more (a DatabaseManager of your own)
_KNOWN_OPERATIONS = frozenset({o.value for o in OperationType}) | ORDER_OPERATIONS


def _select(
    entries: Iterator[WALEntry], operation: str | None, since: datetime | None, cap: int | None
) -> Iterator[WALEntry]:
    n = 0
    for e in entries:
        if operation is not None and e.operation != operation:
            continue
        if since is not None and aware(e.created_at) < since:
            continue
        yield e
        n += 1
        if cap is not None and n >= cap:
            return


def _row(e: WALEntry, show_error: bool) -> tuple[str, ...]:
    created = aware(e.created_at).strftime("%Y-%m-%d %H:%M:%S")
    row: tuple[str, ...] = (
        str(e.lsn),
        e.status.value,
        printable(e.operation),  # written by anyone: never a terminal escape or a fake line
        created,
        str(e.attempts),
        str(e.entry_id),
    )
    if show_error:
        row = (*row, printable(one_line(e.last_error or ""))[:120])
    return row
