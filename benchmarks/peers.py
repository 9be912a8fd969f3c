# Helpers for benchmarks/: the persist-queue peer (a dev dependency, so not in wal/tools/bench.py).
# Not a benchmark itself; its rows come from: python benchmarks/run_all.py
"""persist-queue ``SQLiteAckQueue``: a durable queue on SQLite (WAL mode), measured as a peer."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import orjson
import persistqueue
import persistqueue.serializers.json as pq_json

from wal.tools.bench import Measurement, fresh_dir, latency_row, make_trade, run_calls

__all__ = [
    "PEERS_INSTALLED",
    "bench_lmdb",
    "bench_persist_queue",
    "bench_plyvel",
    "bench_rocksdict",
    "open_queue",
]

# The C peers are an optional extra (pip install -e '.[peers]'); persist-queue is in dev.
PEERS_INSTALLED = all(
    importlib.util.find_spec(m) is not None for m in ("plyvel", "rocksdict", "lmdb")
)


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


# ---------------------------------------------------------------------- C peers (the `peers` extra)


def _kv_items(threads: int, per: int) -> list[list[tuple[bytes, bytes]]]:
    """(key, value) of ``per`` trades per thread: the entry id and the entry's JSON."""
    return [
        [
            (e.entry_id.bytes, orjson.dumps(e.to_dict()))
            for e in (make_trade(i * per + j) for j in range(per))
        ]
        for i in range(threads)
    ]


def _peer_row(
    name: str, label: str, threads: int, n: int, secs: float, lat: list[int], note: str
) -> Measurement:
    m = Measurement(f"{name}_{threads}", "peer", label, n, secs, threads, 1, per_s=n / secs)
    m.note = note
    return latency_row(m, lat)


def bench_plyvel(directory: Path, threads: int, total: int) -> Measurement:
    """LevelDB (plyvel): ``put(sync=True)`` per trade; its own group commit, GIL released."""
    import plyvel  # an optional peer (the `peers` extra): imported when measured

    per = max(1, total // threads)
    d = fresh_dir(directory, f"plyvel-{threads}")
    db = plyvel.DB(str(d), create_if_missing=True)
    try:
        secs, lat = run_calls(threads, _kv_items(threads, per), lambda kv: db.put(*kv, sync=True))
    finally:
        db.close()
        shutil.rmtree(d)
    return _peer_row(
        "plyvel",
        "LevelDB (plyvel) put(sync=True)",
        threads,
        per * threads,
        secs,
        lat,
        f"plyvel {plyvel.__version__}, LevelDB {plyvel.__leveldb_version__}",
    )


def bench_rocksdict(directory: Path, threads: int, total: int) -> Measurement:
    """RocksDB (rocksdict): ``put`` with ``WriteOptions.sync``; holds the GIL through put."""
    import rocksdict  # an optional peer (the `peers` extra): imported when measured

    per = max(1, total // threads)
    d = fresh_dir(directory, f"rocksdict-{threads}")
    db = rocksdict.Rdict(str(d))
    wo = rocksdict.WriteOptions()
    wo.sync = True  # fsync the RocksDB WAL before put returns
    try:
        secs, lat = run_calls(threads, _kv_items(threads, per), lambda kv: db.put(*kv, wo))
    finally:
        db.close()
        shutil.rmtree(d)
    return _peer_row(
        "rocksdict",
        "RocksDB (rocksdict) put, sync=True",
        threads,
        per * threads,
        secs,
        lat,
        "holds the GIL through put",
    )


def bench_lmdb(directory: Path, threads: int, total: int) -> Measurement:
    """LMDB: one write transaction per trade (``sync=True``: each commit is fsynced)."""
    import lmdb  # an optional peer (the `peers` extra): imported when measured

    per = max(1, total // threads)
    d = fresh_dir(directory, f"lmdb-{threads}")
    env = lmdb.open(str(d), map_size=1 << 30, sync=True, metasync=True, max_readers=256)

    def put(kv: tuple[bytes, bytes]) -> None:
        with env.begin(write=True) as txn:  # one writer at a time: LMDB's write lock
            txn.put(*kv)

    try:
        secs, lat = run_calls(threads, _kv_items(threads, per), put)
    finally:
        env.close()
        shutil.rmtree(d)
    return _peer_row(
        "lmdb",
        "LMDB one put per write transaction, sync=True",
        threads,
        per * threads,
        secs,
        lat,
        f"py-lmdb {lmdb.__version__}",
    )
