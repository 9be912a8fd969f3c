"""The log's measurements: appends, the caller's cost, asyncio, recovery, a drain, memory.

* the write path: ``append`` from 1 to 64 threads in either fsync mode (``bench_wal_append``),
  ``append_many`` (``bench_wal_append_many``), ``WALEntry.create`` (``bench_create``),
  ``append_async`` and ``WALManager.write_async`` (``bench_wal_async``,
  ``bench_manager_async``);
* recovery: opening a log of many entries (``build_log``, ``bench_recovery``);
* a drain: append latency alone and while another thread drains a backlog (``drain_rows``,
  the extension point where a database drain plugs in; ``bench_drain_latency``);
* memory: the peak RSS of a fresh process that opens the log and iterates its pending
  entries (``bench_rss``, which runs ``rss_child`` in a subprocess).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wal.config import WALConfig
from wal.db.manager import DatabaseManager
from wal.entry import WALEntry, WALEntryStatus
from wal.log.options import FsyncMode
from wal.log.storage import WALStorage
from wal.sync.manager import WALManager
from wal.tools.bench_results import Measurement, latency_row, merge_rounds
from wal.tools.bench_workload import fresh_dir, gather_calls, make_trade, run_calls

__all__ = [
    "ApplyRows",
    "bench_create",
    "bench_drain_latency",
    "bench_manager_async",
    "bench_recovery",
    "bench_rss",
    "bench_wal_append",
    "bench_wal_append_many",
    "bench_wal_async",
    "build_log",
    "drain_rows",
    "rss_child",
]

ApplyRows = Callable[[list[WALEntry]], None]


# ---------------------------------------------------------------------------- the write path


def bench_wal_append(
    directory: Path, threads: int, total: int, fsync: FsyncMode = "always"
) -> Measurement:
    """``append`` of single trades from ``threads`` threads, each entry created inside the
    timed call (``WALEntry.create`` is part of what a caller pays); records/s and latency."""
    per = max(1, total // threads)
    numbers = [[i * per + j for j in range(per)] for i in range(threads)]
    d = fresh_dir(directory, f"wal-{fsync}-{threads}")
    with WALStorage(d, fsync=fsync) as log:

        def one(i: int) -> WALEntry:
            return log.append(make_trade(i))

        secs, lat = run_calls(threads, numbers, one)
        stats = log.get_stats()
    shutil.rmtree(d)
    n = per * threads
    m = Measurement(
        f"wal_{fsync}_{threads}",
        "this project",
        f'WALStorage fsync="{fsync}", append()',
        n,
        secs,
        threads,
        1,
        per_s=n / secs,
    )
    m.extra["fsyncs"] = stats.fsync_count
    m.extra["fsync"] = fsync
    if fsync == "interval":
        m.extra["interval_ms"] = log.options.fsync_interval_ms
        m.note = f"loses ≤ {log.options.fsync_interval_ms:g} ms on power loss"
    return latency_row(m, lat)


def bench_wal_append_many(directory: Path, batches: int, batch: int = 1000) -> Measurement:
    """``append_many`` of ``batch`` trades at a time, one thread, ``fsync="always"``."""
    d = fresh_dir(directory, f"wal-many-{batch}")
    lat: list[int] = []
    with WALStorage(d) as log:
        todo = [[make_trade(i) for i in range(batch)] for _ in range(batches)]
        t0 = time.perf_counter()
        for group in todo:
            s = time.perf_counter_ns()
            log.append_many(group)
            lat.append(time.perf_counter_ns() - s)
        secs = time.perf_counter() - t0
    shutil.rmtree(d)
    n = batch * batches
    m = Measurement(
        f"wal_many_{batch}",
        "this project",
        f"WALStorage.append_many({batch})",
        n,
        secs,
        1,
        batch,
        per_s=n / secs,
        latency="call",
    )
    return latency_row(m, lat)


def bench_create(n: int) -> Measurement:
    """``WALEntry.create`` of a realistic trade (the caller's cost before any append)."""
    rows = [make_trade(i).kwargs for i in range(min(n, 1000))]
    lat: list[int] = []
    done = 0
    t0 = time.perf_counter()
    while done < n:
        s = time.perf_counter_ns()
        for kw in rows[: n - done]:
            WALEntry.create("log_trade", kwargs=kw)
        lat.append((time.perf_counter_ns() - s) // min(len(rows), n - done))
        done += min(len(rows), n - done)
    secs = time.perf_counter() - t0
    m = Measurement("entry_create", "this project", "WALEntry.create (a trade)", n, secs, 1, 1)
    m.per_s = n / secs
    m.note = f"{secs / n * 1e6:.2f} µs per entry"
    m.latency = "none"
    return m


def bench_wal_async(directory: Path, coroutines: int, total: int) -> Measurement:
    """``await append_async`` of single trades from ``coroutines`` coroutines on one loop,
    each entry created inside the timed call."""
    per = max(1, total // coroutines)
    numbers = [[i * per + j for j in range(per)] for i in range(coroutines)]
    d = fresh_dir(directory, f"wal-async-{coroutines}")
    with WALStorage(d) as log:

        async def one(i: int) -> WALEntry:
            return await log.append_async(make_trade(i))

        secs, lat = gather_calls(coroutines, numbers, one)
        fsyncs = log.get_stats().fsync_count
    shutil.rmtree(d)
    n = per * coroutines
    m = Measurement(
        f"wal_async_{coroutines}",
        "this project",
        f"WALStorage.append_async(), {coroutines} coroutines",
        n,
        secs,
        coroutines,
        1,
        per_s=n / secs,
    )
    m.extra["fsyncs"] = fsyncs
    return latency_row(m, lat)


def bench_manager_async(directory: Path, coroutines: int, total: int) -> Measurement:
    """``await WALManager.write_async`` with the database down (breaker open): log only."""
    per = max(1, total // coroutines)
    d = fresh_dir(directory, f"manager-async-{coroutines}")
    kwargs = [[make_trade(i * per + j).kwargs for j in range(per)] for i in range(coroutines)]
    cfg = WALConfig(directory=d / "wal", breaker_cooldown_seconds=3600.0)
    db = DatabaseManager(f"sqlite:///{d / 'down.db'}")  # never called: the breaker is open
    with WALStorage(cfg.directory, cfg.storage_options()) as log:
        m = WALManager(log, db, cfg)
        for _ in range(cfg.breaker_failure_threshold):
            m.breaker.failure()  # the database is down: every write stays in the log

        def write(kw: dict[str, Any]) -> Any:
            return m.write_async("log_trade", **kw)

        secs, lat = gather_calls(coroutines, kwargs, write)
        m.stop()
    db.dispose()
    shutil.rmtree(d)
    n = per * coroutines
    out = Measurement(
        f"manager_async_{coroutines}",
        "this project",
        f"WALManager.write_async(), database down, {coroutines} coroutines",
        n,
        secs,
        coroutines,
        1,
        per_s=n / secs,
    )
    out.note = "create + durable append + receipt (breaker open)"
    return latency_row(out, lat)


# ---------------------------------------------------------------------------- recovery


def build_log(directory: Path, entries: int, batch: int = 1000) -> Path:
    """A fresh log of ``entries`` PENDING trades in ``directory`` (untimed setup)."""
    if directory.exists():
        shutil.rmtree(directory)
    with WALStorage(directory) as log:
        done = 0
        while done < entries:
            k = min(batch, entries - done)
            log.append_many(make_trade(done + j) for j in range(k))
            done += k
    return directory


def bench_recovery(log_dir: Path, entries: int, rounds: int = 1) -> Measurement:
    """Open (verify every checksum, index every record) a log of ``entries`` entries.

    Opened ``rounds`` times; the row is the median. The page cache is warm (the log was just
    written): this measures the CPU cost of recovery, not the disk's read speed.
    """
    results: list[Measurement] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        with WALStorage(log_dir) as log:
            secs = time.perf_counter() - t0
            found = log.recovery_report.entries
            segments = log.recovery_report.segments
            size = log.get_stats().bytes  # records, not a preallocated segment's zeros
        if found != entries:
            raise AssertionError(f"recovery found {found} entries, expected {entries}")
        m = Measurement(
            "recovery_open",
            "recovery",
            f"open a log of {entries:,} entries (verify + index)",
            entries,
            secs,
            per_s=entries / secs,
            note=f"{size / 1e6:,.0f} MB in {segments} segment(s), warm page cache",
            extra={"bytes": size, "segments": segments},
            latency="none",
        )
        results.append(m)
    return merge_rounds(results)


# ---------------------------------------------------------------------------- drain


def drain_rows(
    log: WALStorage,
    stop: threading.Event,
    apply: ApplyRows | None = None,
    *,
    batch: int = 100,
) -> int:
    """EXTENSION POINT: drain PENDING entries while appenders run; returns entries drained.

    Reads ``get_pending_entries`` in batches of ``batch``, hands each batch to ``apply`` (None:
    apply nowhere, a drain of the storage alone) and marks it COMPLETED with one
    ``update_statuses`` call (one fsync). ``apply`` is where the database drain plugs in:
    pass a callable that writes the rows (e.g. through the DatabaseManager) and raises on
    failure. Runs until ``stop`` is set.
    """
    after = 0
    drained = 0
    while not stop.is_set():
        rows = list(log.get_pending_entries(after_lsn=after, limit=batch, background=True))
        if not rows:
            stop.wait(0.0005)  # polling for new work; a benchmark, not a synchronization
            continue
        if apply is not None:
            apply(rows)
        # as the sync thread does: a COMPLETED mark behind the ledger needs no fsync of its own
        log.update_statuses(
            [(e, WALEntryStatus.COMPLETED, None, None) for e in rows], durable=False
        )
        drained += len(rows)
        after = rows[-1].lsn or after
    return drained


def bench_drain_latency(
    directory: Path,
    appends: int,
    apply: ApplyRows | None = None,
    *,
    backlog: int | None = None,
    batch: int = 100,
) -> tuple[Measurement, Measurement]:
    """Append latency of one thread alone, then while another thread drains the log.

    The log starts with ``backlog`` PENDING entries (default: ``4 * appends``), like a log
    that filled up during a database outage; the drain (``drain_rows``) reads, applies and
    marks them COMPLETED while the appender keeps logging trades.
    """
    backlog = 4 * appends if backlog is None else backlog
    rows: list[Measurement] = []
    for during in (False, True):
        d = fresh_dir(directory, f"drain-{during}")
        todo = [make_trade(i) for i in range(appends)]
        lat: list[int] = []
        with WALStorage(d) as log:
            for start in range(0, backlog, 1000):
                log.append_many(make_trade(j) for j in range(start, min(backlog, start + 1000)))
            stop = threading.Event()
            drained = [0]

            def drainer(
                log: WALStorage = log, stop: threading.Event = stop, out: list[int] = drained
            ) -> None:
                out[0] = drain_rows(log, stop, apply, batch=batch)

            t = threading.Thread(target=drainer, name="bench-drain")
            if during:
                t.start()
            t0 = time.perf_counter()
            try:
                for e in todo:
                    s = time.perf_counter_ns()
                    log.append(e)
                    lat.append(time.perf_counter_ns() - s)
            finally:
                secs = time.perf_counter() - t0
                stop.set()
                if during:
                    t.join()
        shutil.rmtree(d)
        m = Measurement(
            "append_during_drain" if during else "append_idle",
            "latency",
            "append() while a thread drains (storage only)" if during else "append() alone",
            appends,
            secs,
            per_s=appends / secs,
        )
        if during:
            m.note = f"{backlog:,}-entry backlog, batches of {batch}"
            m.extra["drained"] = drained[0]
        rows.append(latency_row(m, lat))
    return rows[0], rows[1]


# ---------------------------------------------------------------------------- memory


def _peak_rss_kib() -> int:
    """This process's peak RSS in KiB: ``VmHWM`` on Linux, else ``ru_maxrss``.

    ``ru_maxrss`` alone is wrong in a subprocess on Linux: the kernel carries the parent's
    peak across fork and exec, so a child of a 300 MB parent reports at least 300 MB.
    ``VmHWM`` belongs to the new address space and starts from zero at exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(directory: str) -> None:
    """Run in a subprocess: open the log, iterate every pending entry, print peak RSS (KiB)."""
    before = _peak_rss_kib()
    n = 0
    with WALStorage(directory) as log:
        after_open = _peak_rss_kib()
        for _ in log.get_pending_entries():
            n += 1
    peak = _peak_rss_kib()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "entries": n,
                "before_kib": before,
                "open_kib": after_open,
                "kib": peak,
                "ru_maxrss_kib": maxrss,
            }
        )
    )


def bench_rss(log_dir: Path, entries: int) -> Measurement:
    """Peak RSS of a fresh process that opens the log and iterates its pending entries."""
    code = "import sys; from wal.tools.bench_log import rss_child; rss_child(sys.argv[1])"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, str(log_dir)], capture_output=True, text=True, check=True
    )
    secs = time.perf_counter() - t0
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if got["entries"] != entries:
        raise AssertionError(f"the RSS child saw {got['entries']} pending entries, not {entries}")
    mb = got["kib"] / 1024
    return Measurement(
        "rss_pending",
        "memory",
        f"peak RSS: open + iterate {entries:,} pending entries",
        entries,
        secs,
        note=(
            f"peak {mb:,.0f} MB (VmHWM; interpreter + imports {got['before_kib'] / 1024:,.0f} "
            f"MB, after open {got['open_kib'] / 1024:,.0f} MB)"
        ),
        extra={
            "rss_mb": mb,
            "before_mb": got["before_kib"] / 1024,
            "open_mb": got["open_kib"] / 1024,
            "ru_maxrss_mb": got["ru_maxrss_kib"] / 1024,
        },
        latency="none",
    )
