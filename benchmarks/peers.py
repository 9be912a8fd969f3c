# Helpers for benchmarks/: the persist-queue peer (a dev dependency, so not in wal/tools/bench.py).
# Not a benchmark itself; its rows come from: python benchmarks/run_all.py
"""persist-queue ``SQLiteAckQueue``: a durable queue on SQLite (WAL mode), measured as a peer."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import persistqueue
import persistqueue.serializers.json as pq_json

from wal.tools.bench import Measurement, fresh_dir, latency_row, make_trade, run_calls

__all__ = ["bench_persist_queue", "open_queue"]


def open_queue(directory: Path) -> persistqueue.SQLiteAckQueue:
    """A queue as a user would open it for threads (JSON items: this project never pickles)."""
    return persistqueue.SQLiteAckQueue(
        str(directory), multithreading=True, auto_commit=True, serializer=pq_json
    )


def bench_persist_queue(directory: Path, threads: int, total: int) -> Measurement:
    """``put`` of one trade (its ``to_dict()``) per call from ``threads`` threads."""
    d = fresh_dir(directory, f"persist-queue-{threads}")
    q = open_queue(d)
    putter = q._putter  # the connection put() commits on
    sync = putter.execute("PRAGMA synchronous").fetchone()[0] if putter is not None else "?"
    per = max(1, total // threads)
    items = [
        [orjson.loads(orjson.dumps(make_trade(i * per + j).to_dict())) for j in range(per)]
        for i in range(threads)
    ]
    try:
        secs, lat = run_calls(threads, items, q.put)
    finally:
        q.close()
        shutil.rmtree(d)
    n = per * threads
    m = Measurement(
        f"persist_queue_{threads}",
        "peer",
        "persist-queue SQLiteAckQueue.put()",
        n,
        secs,
        threads,
        1,
        per_s=n / secs,
        note=f"persist-queue {persistqueue.__version__}, PRAGMA synchronous={sync}",
    )
    return latency_row(m, lat)
