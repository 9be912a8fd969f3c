"""``atb wal metrics``: the log's figures in the Prometheus text format, once."""

from __future__ import annotations

from typing import Any

import click

from cli._common import (
    EXIT_UNCHECKED,
    EXIT_UNREADABLE,
    AtbError,
    get_config,
    lock_state,
    one_line,
    require_log_dir,
    wal_errors,
)
from cli._journal import open_database, resolve
from cli.commands.orders import order_status
from wal.config import WALConfig
from wal.errors import WALError
from wal.log.storage import WALStorage
from wal.orders.journal import read_journal


@click.command(short_help="Print Prometheus metrics once (read-only).")
@click.pass_context
@wal_errors
def metrics(ctx: click.Context) -> None:
    """Print the log's figures in the Prometheus text exposition format, once.

    For node-exporter's textfile collector (write to a temp file, then rename):
    entries by status, pending, dead letters, oldest pending age, log bytes and
    segments, torn tail bytes, and, from the running process's published view
    (manager-status.json), applied / duplicate / dead-letter counters, breaker
    state, last successful apply time, fsync p50/p99 and the view's age; the
    operator's halt, whether the engine is alive, and, from the order journal (the
    database the log records, read-only), whether the database answered, UNKNOWN
    orders and unprotected positions (journal view). Read-only: works while trading
    runs. A log that cannot be read prints nothing on stdout and says why on stderr
    (exit 2), so `> tmp && mv tmp atb.prom` keeps the last good file. A running
    WALManager serves the same names on /metrics (and nothing else) when
    WAL_METRICS_PORT is set (see docs/wal.md).

    \b
    Examples:
      atb wal metrics
      atb wal metrics > /var/lib/node_exporter/atb.prom.tmp
      mv /var/lib/node_exporter/atb.prom.tmp /var/lib/node_exporter/atb.prom
    """
    config = get_config(ctx)
    directory = require_log_dir(config)
    from wal.sync.metrics import figures_of, render
    from wal.sync.status import read_view

    try:
        storage = WALStorage.open_readonly(directory, config.storage_options())
        try:
            stats = storage.get_stats().to_dict()
            pending = list(storage.get_pending_entries())
        finally:
            storage.close()
    except (WALError, OSError) as exc:
        raise AtbError(f"cannot read the log: {one_line(str(exc))}", EXIT_UNREADABLE) from None
    view = read_view(directory)
    if view is not None and "updated_at" not in view:
        view = None  # unreadable: the log's own figures still count
    if view is not None and (view.get("stale") or lock_state(directory).held is False):
        view["running"] = False  # its process is gone, or no process holds the log
    extra = _journal_figures(ctx, config, pending)
    click.echo(render(figures_of(stats, view, extra)).decode(), nl=False)


def _journal_figures(ctx: click.Context, config: WALConfig, pending: list[Any]) -> dict[str, Any]:
    """Database reachable, UNKNOWN orders, unprotected positions; {} when the log records no
    database (and none is named): nothing is guessed."""
    try:
        source = resolve(ctx, config, what="read the order journal")
    except AtbError:
        return {}
    try:
        db = open_database(source, config, what="read the order journal")
    except AtbError as exc:
        return {"database_reachable": False} if exc.exit_code == EXIT_UNCHECKED else {}
    try:
        got, _, _ = read_journal(db, pending)
    except Exception:  # any failure of the read: the database did not answer
        return {"database_reachable": False}
    finally:
        db.dispose()
    st = order_status(got, None)
    return {
        "database_reachable": True,
        "orders_unknown": len(st["unknown_orders"]),
        "positions_unprotected": len(st["unprotected_positions"]),
    }
