"""``atb demo``: a trading session through a real database outage, checked at the end."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cli._common import EXIT_PROBLEM, EXIT_UNREADABLE, AtbError, NonEmptyPath, wal_errors
from wal.tools.demo import DemoRefusedError, run_demo


@click.command(short_help="Trade through a real database outage and check the result.")
@click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="Run against this database instead of a throwaway SQLite file "
    "(PostgreSQL needs a TCP URL: the demo cuts its connection with a local proxy). "
    "It must hold no trading data yet (refused, exit 2).",
)
@click.option(
    "--dir",
    "workdir",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="Keep the log (and the SQLite file) here instead of a temporary directory: a new or "
    "empty directory, or one an earlier demo made (its DEMO marker; the earlier run's log and "
    "database are replaced). One that holds anything else is refused (exit 2).",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="Round trips (open, buy, stop, close, sell, P&L) before and during the outage.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the prices.")
@wal_errors
def demo(database_url: str | None, workdir: Path | None, rounds: int, seed: int) -> None:
    """Run a simulated trading session through DurableDatabaseManager.

    In the middle the database is made unreachable for real: on SQLite another process
    holds an exclusive lock on the file; on PostgreSQL the demo's TCP proxy drops every
    connection. Trading continues and the balance it reads stays correct; the database
    comes back, the log drains, and a closing check compares the database with what was
    traded. Exit code 0 when nothing was lost or doubled, 1 otherwise.

    The demo writes fake trades and a 10000 deposit, so it never writes into a log or a
    database that may be real: a --dir that holds anything but an earlier demo's files, or a
    --database-url that holds trading data, is refused (exit 2) and nothing is written.

    \b
    Examples:
      atb demo
      atb demo --rounds 50 --dir /tmp/atb-demo
      atb demo --database-url postgresql://trader:secret@127.0.0.1:5432/atb
    """
    # the demo's outage is expected: keep the library's warnings out of the transcript
    logging.getLogger("wal").setLevel(logging.CRITICAL)
    try:
        result = run_demo(
            workdir=workdir, database_url=database_url, rounds=rounds, seed=seed, echo=click.echo
        )
    except DemoRefusedError as exc:
        raise AtbError(str(exc), EXIT_UNREADABLE) from None
    if not result.ok:
        raise AtbError("the closing check failed: " + "; ".join(result.problems), EXIT_PROBLEM)
