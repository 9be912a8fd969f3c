"""``atb wal bench``: measure what the log can do on this disk."""

from __future__ import annotations

from pathlib import Path

import click

from cli._common import AtbError, NonEmptyPath, echo_json, get_config, wal_errors


@click.command(short_help="Measure fsync cost and throughput on this disk.")
@click.option(
    "--dir",
    "bench_dir",
    type=NonEmptyPath(file_okay=False, exists=True, path_type=Path),
    default=None,
    metavar="PATH",
    help="Where to measure (a scratch directory is made inside and removed). "
    "Default: the log directory, or its nearest existing parent.",
)
@click.option(
    "--quick", is_flag=True, help="One round, rough figures (else three interleaved rounds)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
@wal_errors
def bench(ctx: click.Context, bench_dir: Path | None, quick: bool, as_json: bool) -> None:
    """Measure fsync cost, group commit and the log's throughput on this disk.

    Answers "fsync every trade, or batch?" for this disk: measures the disk's own
    write + fdatasync and the log side by side in the same run (one thread, 8 and 64
    concurrent writers, append_many, WAL_FSYNC=interval), then says what to choose and
    what each choice costs here. It also answers "what does a critical call cost on this
    disk, and what would the database alone cost": log_trade and atomic_balance_update
    through DurableDatabaseManager with SQLite up (1 and 64 threads, log_trade_async with
    256 coroutines) beside SQLite alone doing one INSERT + COMMIT per call. Writes only
    inside a scratch directory it removes afterwards; the log itself is not touched. It
    takes seconds to a minute, depending on the disk (--quick: one round).

    \b
    Examples:
      atb wal bench --quick
      atb wal bench --dir /var/lib/atb --json > bench.json
    """
    if bench_dir is None:
        bench_dir = get_config(ctx).directory.absolute()
        while not bench_dir.is_dir() and bench_dir != bench_dir.parent:
            bench_dir = bench_dir.parent
    from wal.tools.bench import run_disk_bench

    try:
        result = run_disk_bench(bench_dir, quick)
    except ValueError as exc:
        raise AtbError(str(exc)) from None
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(result.report())
