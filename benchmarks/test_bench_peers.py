# Reproduce: pytest benchmarks/test_bench_peers.py --benchmark-only
"""The peers, one thread: SQLite (WAL, synchronous=FULL, one INSERT per transaction) and
persist-queue's ``SQLiteAckQueue.put``, with the same trades the log stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
from peers import open_queue
from pytest_benchmark.fixture import BenchmarkFixture

from wal.tools.bench import make_trade


def _row() -> tuple[tuple[tuple[str, bytes]], dict[str, Any]]:
    e = make_trade()
    return ((str(e.entry_id), orjson.dumps(e.to_dict())),), {}


def test_sqlite_full_insert(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "peer.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE trades (entry_id TEXT PRIMARY KEY, body BLOB NOT NULL)")

    def insert(row: tuple[str, bytes]) -> None:
        conn.execute("INSERT INTO trades VALUES (?, ?)", row)  # autocommit: one transaction

    try:
        benchmark.pedantic(insert, setup=_row, rounds=500)  # type: ignore[no-untyped-call]
    finally:
        conn.close()


def test_persist_queue_put(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    q = open_queue(tmp_path / "queue")

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        return (orjson.loads(orjson.dumps(make_trade().to_dict())),), {}

    try:
        benchmark.pedantic(q.put, setup=setup, rounds=500)  # type: ignore[no-untyped-call]
    finally:
        q.close()
