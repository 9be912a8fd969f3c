"""``atb wal metrics``: the log's figures in the Prometheus text format, once."""

from __future__ import annotations

import click

from cli._common import get_config, require_log_dir, wal_errors
from wal.log.storage import WALStorage


@click.command(short_help="Print Prometheus metrics once (read-only).")
@click.pass_context
@wal_errors
def metrics(ctx: click.Context) -> None:
    """Print the log's figures in the Prometheus text exposition format, once.

    For node-exporter's textfile collector (write to a temp file, then rename):
    entries by status, pending, dead letters, oldest pending age, log bytes and
    segments, torn tail bytes, and, from the running process's published view
    (manager-status.json), applied / duplicate / dead-letter counters, breaker
    state, last successful apply time, fsync p50/p99 and the view's age.
    Read-only: works while trading runs. A running WALManager serves the same
    names on /metrics when WAL_METRICS_PORT is set (see docs/wal.md).

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

    storage = WALStorage.open_readonly(directory, config.storage_options())
    try:
        stats = storage.get_stats().to_dict()
    finally:
        storage.close()
    view = read_view(directory)
    if view is not None and "updated_at" not in view:
        view = None  # unreadable: the log's own figures still count
    click.echo(render(figures_of(stats, view)).decode(), nl=False)
