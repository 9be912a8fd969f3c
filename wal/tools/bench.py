"""Measure what durability costs on one disk: the physical limit, the log, and SQLite.

This module is the runner and the one import for ``cli/`` and ``benchmarks/``: the
measurements are in :mod:`wal.tools.bench_disk` (the limit, SQLite),
:mod:`wal.tools.bench_log` (the log) and :mod:`wal.tools.bench_calls` (the public calls),
the workload and harness in :mod:`wal.tools.bench_workload`, the results in
:mod:`wal.tools.bench_results`; their public names are importable from here.

Every figure here is measured on the directory you give, in one run, so the log can be
compared with the disk's own limit (``os.write`` + ``os.fdatasync``) and with SQLite on the
same disk at the same moment. Shared machines are noisy: compare ratios, not absolute rates.

``run_disk_bench(directory, quick)`` is what ``atb wal bench --dir PATH`` runs: the limit
(per record, batches of 64 and 1,000), the log (``fsync="always"`` with 1, 8 and 64
threads, ``append_many(1000)``, ``fsync="interval"``), and the critical calls
(``DurableDatabaseManager.log_trade`` / ``atomic_balance_update`` with SQLite up) beside
SQLite alone doing the same INSERT + COMMIT (:mod:`wal.tools.bench_calls`;
``run_call_bench`` is issue 22's whole table, PostgreSQL and ``OrderManager.submit`` too).
``benchmarks/run_all.py`` adds the peers, recovery, latency under a drain, and memory, and
checks the targets.

Records are realistic trades (a UUID trade id, symbol, side, Decimal quantity and price, a
datetime): about 200 bytes of kwargs, which the log frames as a line of about 550 bytes. The
limit is measured with records of exactly that line's size, so it is the limit for the bytes
the log really writes.

>>> r = run_disk_bench(tempfile.mkdtemp(), quick=True)  # doctest: +SKIP
>>> r.advice()  # doctest: +SKIP
'fsync="always" costs 350 µs per trade here (2,850 trades/s from one thread); ...'
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wal.tools.bench_calls import (
    CallRatio,
    bench_order_submit,
    call_ratios,
    call_specs,
    calls_markdown,
    drop_pg_database,
    finish_call_row,
    fresh_pg_database,
)
from wal.tools.bench_disk import bench_raw, bench_raw_preallocated, bench_sqlite
from wal.tools.bench_log import (
    ApplyRows,
    bench_create,
    bench_drain_latency,
    bench_manager_async,
    bench_recovery,
    bench_rss,
    bench_wal_append,
    bench_wal_append_many,
    bench_wal_async,
    build_log,
    drain_rows,
)
from wal.tools.bench_results import (
    DiskBenchResult,
    Measurement,
    TargetResult,
    evaluate_targets,
    latency_row,
    merge_rounds,
    percentile,
)
from wal.tools.bench_workload import (
    BenchSizes,
    fresh_dir,
    gather_calls,
    make_trade,
    run_calls,
    run_threads,
    trade_line_bytes,
)

__all__ = [
    "ApplyRows",
    "CallRatio",
    "bench_order_submit",
    "call_ratios",
    "call_specs",
    "calls_markdown",
    "finish_call_row",
    "fresh_pg_database",
    "run_call_bench",
    "BenchSizes",
    "DiskBenchResult",
    "Measurement",
    "Spec",
    "TargetResult",
    "bench_create",
    "bench_drain_latency",
    "bench_manager_async",
    "bench_raw",
    "bench_raw_preallocated",
    "bench_recovery",
    "bench_rss",
    "bench_sqlite",
    "bench_wal_append",
    "bench_wal_append_many",
    "bench_wal_async",
    "build_log",
    "disk_specs",
    "drain_rows",
    "evaluate_targets",
    "fresh_dir",
    "gather_calls",
    "latency_row",
    "machine_info",
    "make_trade",
    "merge_rounds",
    "percentile",
    "run_disk_bench",
    "run_interleaved",
    "run_calls",
    "run_threads",
    "sqlite_specs",
    "trade_line_bytes",
]


# ---------------------------------------------------------------------------- the run


def machine_info(directory: Path) -> dict[str, Any]:
    """What the figures depend on: kernel, file system, cores, load, Python."""
    fs = "?"
    try:
        best = ""
        target = str(directory.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if target.startswith(mnt) and len(mnt) >= len(best):
                best, fs = mnt, f"{parts[2]} on {parts[0]} ({mnt})"
    except OSError:
        pass
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "filesystem": fs,
    }


Spec = tuple[str, Callable[[], Measurement]]


def disk_specs(directory: Path, sizes: BenchSizes, rounds: int = 1) -> list[Spec]:
    """The limit and the log, as ``(name, measure one round)``; each round does 1/rounds."""
    rb = trade_line_bytes()

    def part(total: int, unit: int = 1) -> int:
        return max(unit, (total // rounds) // unit * unit)

    return [
        ("raw_per_record", lambda: bench_raw(directory, part(sizes.raw_records), 1, rb)),
        ("raw_batch_64", lambda: bench_raw(directory, part(sizes.raw_batches * 64, 64), 64, rb)),
        (
            "raw_batch_1000",
            lambda: bench_raw(directory, part(sizes.raw_batches * 100, 1000), 1000, rb),
        ),
        ("wal_always_1", lambda: bench_wal_append(directory, 1, part(sizes.appends_1))),
        ("wal_always_8", lambda: bench_wal_append(directory, 8, part(sizes.appends_8, 8))),
        ("wal_always_64", lambda: bench_wal_append(directory, 64, part(sizes.appends_64, 64))),
        (
            "wal_many_64",
            lambda: bench_wal_append_many(directory, part(sizes.many_batches * 4), batch=64),
        ),
        ("wal_many_1000", lambda: bench_wal_append_many(directory, part(sizes.many_batches))),
        (
            "wal_interval_1",
            lambda: bench_wal_append(directory, 1, part(sizes.interval_appends), "interval"),
        ),
    ]


def sqlite_specs(directory: Path, sizes: BenchSizes, rounds: int = 1) -> list[Spec]:
    """SQLite with 1 and 8 threads, as specs for ``run_interleaved``."""
    n = max(8, sizes.peer_inserts // rounds)
    return [
        ("sqlite_full_1", lambda: bench_sqlite(directory, 1, n)),
        ("sqlite_full_8", lambda: bench_sqlite(directory, 8, n)),
    ]


def run_interleaved(
    specs: Sequence[Spec], rounds: int, say: Callable[[str], None] | None = None
) -> list[Measurement]:
    """Run every spec once per round, round after round, and merge each spec's rounds.

    On a shared machine the load changes from second to second; interleaving gives every
    row the same share of good and bad moments, so their ratios stay meaningful.
    """
    done: dict[str, list[Measurement]] = {name: [] for name, _ in specs}
    for r in range(rounds):
        for name, measure in specs:
            m = measure()
            done[name].append(m)
            if say is not None:
                rate = "" if m.per_s is None else f"{m.per_s:,.0f}/s"
                say(f"  round {r + 1}/{rounds} {name:<22} {rate:>12}")
    return [merge_rounds(done[name]) for name, _ in specs]


def run_call_bench(
    directory: Path,
    size: str,
    rounds: int,
    pg_url: str | None = None,
    say: Callable[[str], None] | None = None,
    *,
    limit: bool = True,
    orders: bool = True,
) -> list[Measurement]:
    """Issue 22's table: the critical calls end to end beside SQLite (and PostgreSQL, with
    ``pg_url``: a database of their own is made on its server) doing the same work directly,
    ``rounds`` interleaved rounds; ``limit``: the raw write+fdatasync row too; ``orders``:
    then ``OrderManager.submit`` (measured once, apart)."""
    sizes = BenchSizes.preset(size)
    specs: list[Spec] = []
    if limit:
        n_raw = max(1, sizes.raw_records // rounds)
        specs.append(("raw_per_record", lambda: bench_raw(directory, n_raw, 1, trade_line_bytes())))
    db_url = None if pg_url is None else fresh_pg_database(pg_url)
    specs += call_specs(directory, size, rounds, db_url)
    try:
        rows = [finish_call_row(m) for m in run_interleaved(specs, rounds, say)]
    finally:
        if db_url is not None:
            drop_pg_database(db_url)  # nothing left on a server of the user's (WAL_TEST_PG_DSN)
    if orders:
        rows.extend(bench_order_submit(directory, {"quick": 20, "medium": 300}.get(size, 1000)))
    return rows


def run_disk_bench(directory: str | os.PathLike[str], quick: bool) -> DiskBenchResult:
    """Measure the limit and the log in a scratch directory inside ``directory``.

    ``quick``: a few seconds, rough figures (one round); otherwise about half a minute in
    three interleaved rounds. The scratch directory is removed afterwards; ``directory``
    itself is left as it was.
    """
    base = Path(directory)
    if not base.is_dir():
        raise ValueError(f"{base} is not a directory")
    size = "quick" if quick else "medium"
    rounds = 1 if quick else 3
    sizes = BenchSizes.preset(size)
    work = Path(tempfile.mkdtemp(prefix="atb-wal-bench-", dir=base))
    try:
        result = DiskBenchResult(str(base), size, trade_line_bytes(), machine=machine_info(base))
        result.measurements.extend(run_interleaved(disk_specs(work, sizes, rounds), rounds))
        # what a critical call costs here, and what the database alone would cost
        result.measurements.extend(run_call_bench(work, size, rounds, limit=False, orders=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
