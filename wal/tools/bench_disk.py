"""What the log is compared with on the same disk: the physical limit and SQLite.

* the limit: ``os.write`` + ``os.fdatasync`` of records the size of the log's trade line,
  one per call or in batches (``bench_raw``), and into preallocated space
  (``bench_raw_preallocated``);
* the peer in the library: SQLite in WAL mode with ``synchronous=FULL``, one INSERT per
  transaction (``bench_sqlite``); the other peers (persist-queue, LMDB, ...) are dev
  dependencies, in ``benchmarks/peers.py``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import orjson

from wal.tools.bench_results import Measurement, latency_row
from wal.tools.bench_workload import fresh_dir, make_trade, run_calls

__all__ = ["bench_raw", "bench_raw_preallocated", "bench_sqlite"]


# ---------------------------------------------------------------------------- the limit


def bench_raw(directory: Path, n_records: int, batch: int, record_bytes: int) -> Measurement:
    """``os.write`` of ``batch`` records then one ``os.fdatasync``, appended to one file.

    The file grows as the log's segments do (no preallocation), so each fdatasync also
    commits the new size, exactly as the log's does.
    """
    rec = (b"x" * (record_bytes - 1)) + b"\n"
    chunk = rec * batch
    path = directory / f"raw-{batch}.bin"
    path.unlink(missing_ok=True)  # a leftover or a planted symlink: never written through
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND, 0o600)
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


def bench_raw_preallocated(directory: Path, n_records: int, record_bytes: int) -> Measurement:
    """``os.pwrite`` of one record then ``os.fdatasync``, into a file given its space first
    (``posix_fallocate``): the fsync need not commit a new file size. What a log with
    preallocated segments could reach (this one does not preallocate yet)."""
    rec = (b"x" * (record_bytes - 1)) + b"\n"
    path = directory / "raw-prealloc.bin"
    path.unlink(missing_ok=True)  # a leftover or a planted symlink: never written through
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
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
