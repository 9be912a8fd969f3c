"""Measure what durability costs on one disk: the physical limit, the log, and SQLite.

Every figure here is measured on the directory you give, in one run, so the log can be
compared with the disk's own limit (``os.write`` + ``os.fdatasync``) and with SQLite on the
same disk at the same moment. Shared machines are noisy: compare ratios, not absolute rates.

``run_disk_bench(directory, quick)`` is what ``atb wal bench --dir PATH`` runs: the limit
(per record, batches of 64 and 1,000) and the log (``fsync="always"`` with 1, 8 and 64
threads, ``append_many(1000)``, ``fsync="interval"``). ``benchmarks/run_all.py`` adds the
peers, recovery, latency under a drain, and memory, and checks the targets.

Records are realistic trades (a UUID trade id, symbol, side, Decimal quantity and price, a
datetime): about 200 bytes of kwargs, which the log frames as a line of about 550 bytes. The
limit is measured with records of exactly that line's size, so it is the limit for the bytes
the log really writes.

>>> r = run_disk_bench(tempfile.mkdtemp(), quick=True)  # doctest: +SKIP
>>> r.advice()  # doctest: +SKIP
'fsync="always" costs 350 µs per trade here (2,850 trades/s from one thread); ...'
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from wal.config import WALConfig
from wal.db.manager import DatabaseManager
from wal.entry import WALEntry, WALEntryStatus
from wal.log.options import FsyncMode
from wal.log.storage import WALStorage
from wal.sync.manager import WALManager
from wal.tools.bench_results import (
    DiskBenchResult,
    Measurement,
    TargetResult,
    evaluate_targets,
    latency_row,
    merge_rounds,
    percentile,
)

__all__ = [
    "BenchSizes",
    "DiskBenchResult",
    "Measurement",
    "Spec",
    "TargetResult",
    "bench_drain_latency",
    "bench_raw",
    "bench_recovery",
    "bench_rss",
    "bench_sqlite",
    "bench_wal_append",
    "bench_wal_append_many",
    "build_log",
    "disk_specs",
    "drain_rows",
    "evaluate_targets",
    "fresh_dir",
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

ApplyRows = Callable[[list[WALEntry]], None]


# ---------------------------------------------------------------------------- sizes


@dataclass(frozen=True, slots=True)
class BenchSizes:
    """How much work each measurement does. ``quick`` runs in seconds, ``full`` in minutes."""

    raw_records: int  # per-record write+fdatasync calls
    raw_batches: int  # batches of 64 (and a tenth as many of 1,000)
    appends_1: int  # total appends with 1 thread
    appends_8: int  # total appends with 8 threads
    appends_64: int  # total appends with 64 threads
    many_batches: int  # append_many(1000) calls
    interval_appends: int  # appends with fsync="interval"
    peer_inserts: int  # SQLite / persist-queue inserts per thread count (total)
    recovery_entries: int  # entries in the log that recovery and the RSS child open
    drain_appends: int  # appends timed alone and again during the drain

    @classmethod
    def preset(cls, name: str) -> BenchSizes:
        """``quick`` (CI smoke, seconds), ``medium`` (about a minute) or ``full``."""
        if name == "quick":
            return cls(60, 6, 60, 80, 128, 2, 100, 60, 2_000, 60)
        if name == "medium":
            return cls(2_000, 60, 2_000, 8_000, 12_800, 20, 20_000, 2_000, 100_000, 2_000)
        if name == "full":
            return cls(5_000, 200, 5_000, 24_000, 64_000, 100, 100_000, 5_000, 1_000_000, 5_000)
        raise ValueError(f"unknown size preset {name!r}: expected quick, medium or full")


# ---------------------------------------------------------------------------- workload


def make_trade(i: int = 0) -> WALEntry:
    """A realistic ``log_trade`` entry: about 200 bytes of kwargs."""
    return WALEntry.create(
        "log_trade",
        kwargs={
            "trade_id": uuid.uuid4(),
            "symbol": "BTCUSDT" if i % 2 == 0 else "ETHUSDT",
            "side": "buy" if i % 3 else "sell",
            "qty": Decimal("0.01250000") + Decimal(i % 97) / Decimal(10_000),
            "price": Decimal("67321.45") + Decimal(i % 1_000) / Decimal(100),
            "executed_at": datetime.now(UTC),
        },
    )


def trade_line_bytes() -> int:
    """Bytes of one framed trade line in a segment (checksum, payload, newline)."""
    e = make_trade()
    d = e.to_dict()
    d["lsn"] = 1_000_000
    return 17 + len(orjson.dumps({"t": "entry", **d})) + 1


def fresh_dir(base: Path, name: str) -> Path:
    d = base / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(mode=0o700, parents=True)
    return d


# ---------------------------------------------------------------------------- the limit


def bench_raw(directory: Path, n_records: int, batch: int, record_bytes: int) -> Measurement:
    """``os.write`` of ``batch`` records then one ``os.fdatasync``, appended to one file.

    The file grows as the log's segments do (no preallocation), so each fdatasync also
    commits the new size, exactly as the log's does.
    """
    rec = (b"x" * (record_bytes - 1)) + b"\n"
    chunk = rec * batch
    path = directory / f"raw-{batch}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    calls = max(1, n_records // batch)
    lat: list[int] = []
    try:
        t0 = time.perf_counter()
        for _ in range(calls):
            s = time.perf_counter_ns()
            os.write(fd, chunk)
            os.fdatasync(fd)  # the physical limit: every batch durable before the next
            lat.append(time.perf_counter_ns() - s)
        secs = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    name = "raw_per_record" if batch == 1 else f"raw_batch_{batch}"
    label = (
        "os.write + fdatasync per record"
        if batch == 1
        else f"os.write of {batch} records + one fdatasync"
    )
    m = Measurement(name, "limit", label, calls * batch, secs, 1, batch, per_s=calls * batch / secs)
    m.latency = "record" if batch == 1 else "call"  # a batch's latency is not a record's
    return latency_row(m, lat)


# ---------------------------------------------------------------------------- the log


def run_threads(threads: int, work: Callable[[int, threading.Barrier], None]) -> float:
    """Run ``work(i, barrier)`` in ``threads`` threads; seconds from release to last join."""
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            work(i, barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    ts = [threading.Thread(target=body, args=(i,), name=f"bench-{i}") for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return secs


def run_calls(
    threads: int, items: list[list[Any]], call: Callable[[Any], object]
) -> tuple[float, list[int]]:
    """``call(item)`` for ``items[i]`` in thread ``i``, all released together: seconds from
    release to last join, and every call's latency (ns)."""
    lats: list[list[int]] = [[] for _ in range(threads)]

    def work(i: int, barrier: threading.Barrier) -> None:
        out = lats[i]
        clock = time.perf_counter_ns
        barrier.wait()
        for item in items[i]:
            s = clock()
            call(item)
            out.append(clock() - s)

    return run_threads(threads, work), [x for lat in lats for x in lat]


def bench_wal_append(
    directory: Path, threads: int, total: int, fsync: FsyncMode = "always"
) -> Measurement:
    """``append`` of single trades from ``threads`` threads; records/s and append latency."""
    per = max(1, total // threads)
    work_entries = [[make_trade(i * per + j) for j in range(per)] for i in range(threads)]
    d = fresh_dir(directory, f"wal-{fsync}-{threads}")
    with WALStorage(d, fsync=fsync) as log:
        secs, lat = run_calls(threads, work_entries, log.append)
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


def bench_raw_preallocated(directory: Path, n_records: int, record_bytes: int) -> Measurement:
    """``os.pwrite`` of one record then ``os.fdatasync``, into a file given its space first
    (``posix_fallocate``): the fsync need not commit a new file size. What a log with
    preallocated segments could reach (this one does not preallocate yet)."""
    rec = (b"x" * (record_bytes - 1)) + b"\n"
    path = directory / "raw-prealloc.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lat: list[int] = []
    try:
        os.posix_fallocate(fd, 0, n_records * len(rec))
        os.fsync(fd)  # the allocation itself is durable before the timed writes
        t0 = time.perf_counter()
        for i in range(n_records):
            s = time.perf_counter_ns()
            os.pwrite(fd, rec, i * len(rec))
            os.fdatasync(fd)  # every record durable before the next, as in raw_per_record
            lat.append(time.perf_counter_ns() - s)
        secs = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    m = Measurement(
        "raw_prealloc_per_record",
        "limit",
        "os.pwrite + fdatasync per record into a preallocated file",
        n_records,
        secs,
        1,
        1,
        per_s=n_records / secs,
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


def _gather_calls(
    coroutines: int, items: list[list[Any]], call: Callable[[Any], Any]
) -> tuple[float, list[int]]:
    """``await call(item)`` for ``items[i]`` in coroutine ``i``, all on one event loop."""
    lats: list[list[int]] = [[] for _ in range(coroutines)]

    async def one(i: int, start: asyncio.Event) -> None:
        out = lats[i]
        clock = time.perf_counter_ns
        await start.wait()
        for item in items[i]:
            s = clock()
            await call(item)
            out.append(clock() - s)

    async def main() -> float:
        start = asyncio.Event()
        tasks = [asyncio.ensure_future(one(i, start)) for i in range(coroutines)]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    secs = asyncio.run(main())
    return secs, [x for lat in lats for x in lat]


def bench_wal_async(directory: Path, coroutines: int, total: int) -> Measurement:
    """``await append_async`` of single trades from ``coroutines`` coroutines on one loop."""
    per = max(1, total // coroutines)
    work = [[make_trade(i * per + j) for j in range(per)] for i in range(coroutines)]
    d = fresh_dir(directory, f"wal-async-{coroutines}")
    with WALStorage(d) as log:
        secs, lat = _gather_calls(coroutines, work, log.append_async)
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

        secs, lat = _gather_calls(coroutines, kwargs, write)
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


# ---------------------------------------------------------------------------- SQLite


def bench_sqlite(directory: Path, threads: int, total: int) -> Measurement:
    """SQLite ``journal_mode=WAL``, ``synchronous=FULL``, one INSERT per transaction.

    The threads share one connection behind a lock (the strongest way to use SQLite from
    threads: separate connections would add SQLite's busy-wait sleeps).
    """
    d = fresh_dir(directory, f"sqlite-{threads}")
    conn = sqlite3.connect(d / "peer.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE trades (entry_id TEXT PRIMARY KEY, body BLOB NOT NULL)")
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    per = max(1, total // threads)
    rows = [
        [
            (str(e.entry_id), orjson.dumps(e.to_dict()))
            for e in (make_trade(i * per + j) for j in range(per))
        ]
        for i in range(threads)
    ]
    lock = threading.Lock()

    def insert(row: tuple[str, bytes]) -> None:
        with lock:
            conn.execute("INSERT INTO trades VALUES (?, ?)", row)  # autocommit: 1 txn

    try:
        secs, lat = run_calls(threads, rows, insert)
    finally:
        conn.close()
        shutil.rmtree(d)
    n = per * threads
    m = Measurement(
        f"sqlite_full_{threads}",
        "peer",
        "SQLite WAL, synchronous=FULL, 1 INSERT per txn",
        n,
        secs,
        threads,
        1,
        per_s=n / secs,
        note=f"PRAGMA synchronous={sync}; SQLite {sqlite3.sqlite_version}",
    )
    return latency_row(m, lat)


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
        if found != entries:
            raise AssertionError(f"recovery found {found} entries, expected {entries}")
        size = sum(p.stat().st_size for p in log_dir.glob("*.wal"))
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


def _rss_child(directory: str) -> None:
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
    code = "import sys; from wal.tools.bench import _rss_child; _rss_child(sys.argv[1])"
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
