"""Reads during a drain: ``get_balance()`` latency while 100,000 pending balance updates are
applied into SQLite and PostgreSQL, and the cost of the two ways to settle "maybe applied".

Reproduce: python benchmarks/read_during_drain.py --entries 100000 [--pg]
(--pg starts a throwaway PostgreSQL with pgserver, or uses WAL_TEST_PG_DSN.)

The log is filled with pending ``atomic_balance_update`` entries (as after an outage), then a
``DurableDatabaseManager`` opens it (every pending entry is "maybe applied" until the ledger
answers) and a thread drains it while this thread reads the balance in a loop. Also timed: the
first read (it settles every maybe-applied entry with one ledger question: option A) against a
read that asks the ledger about every pending entry (what option B, asking on each fresh read,
would cost each time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drain import pg_url_for_bench

from wal.config import WALConfig
from wal.db import DatabaseManager
from wal.entry import WALEntry
from wal.log.storage import WALStorage
from wal.sync.durable import DurableDatabaseManager


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(url: str, n: int, workdir: Path) -> dict[str, Any]:
    config = WALConfig.from_env({}, directory=workdir / "wal", database_url=url)
    with WALStorage(config.directory, config.storage_options()) as log:
        for start in range(0, n, 1000):
            log.append_many(
                WALEntry.create(
                    "atomic_balance_update",
                    kwargs={"delta": Decimal("1.25"), "reason": "fill", "account": "main"},
                )
                for _ in range(min(1000, n - start))
            )
    t0 = time.perf_counter()
    ddb = DurableDatabaseManager.from_config(config)
    open_s = time.perf_counter() - t0
    assert ddb.storage is not None
    ids = [str(e.entry_id) for e in ddb.storage.get_pending_entries()]
    db: DatabaseManager = ddb.db
    db.ping()
    t0 = time.perf_counter()
    db.get_balance_and_applied("main", ids)  # option B: every pending id, on every read
    ask_all_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    first = ddb.get_balance("main")  # option A: the first read settles them, once
    first_ms = (time.perf_counter() - t0) * 1000
    assert first == Decimal("1.25") * n
    t0 = time.perf_counter()
    ddb.get_balance("main")
    later_ms = (time.perf_counter() - t0) * 1000

    done = threading.Event()
    drained: list[float] = []

    def drain() -> None:
        t = time.perf_counter()
        ddb.drain()
        drained.append(time.perf_counter() - t)
        done.set()

    lat: list[float] = []
    wrong = 0
    threading.Thread(target=drain).start()
    while True:  # at least one read, however short the drain
        t = time.perf_counter()
        value = ddb.get_balance("main")
        lat.append((time.perf_counter() - t) * 1e6)
        wrong += value != Decimal("1.25") * n
        if done.is_set():
            break
    assert ddb.stop() == 0
    return {
        "database": db.dialect,
        "entries": n,
        "open_s": open_s,
        "option_a_first_read_ms": first_ms,
        "option_a_later_read_ms": later_ms,
        "option_b_read_ms": ask_all_ms,
        "drain_s": drained[0],
        "reads": len(lat),
        "p50_us": statistics.median(lat),
        "p99_us": _pct(lat, 0.99),
        "max_us": max(lat),
        "wrong_reads": wrong,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--pg", action="store_true", help="also into PostgreSQL")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rows = [measure(f"sqlite:///{d / 'atb.db'}", args.entries, d / "s")]
        if args.pg:
            url = pg_url_for_bench(d / "pg")
            if url is None:
                raise SystemExit("no PostgreSQL: install pgserver or set WAL_TEST_PG_DSN")
            rows.append(measure(url, args.entries, d / "p"))
    for r in rows:
        print(
            f"{r['database']:<10} {r['entries']} pending: open {r['open_s']:.2f} s; "
            f"drain {r['drain_s']:.1f} s; {r['reads']} reads during it: "
            f"p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us, max {r['max_us']:.0f} us, "
            f"wrong {r['wrong_reads']}; first read (A, settles all) "
            f"{r['option_a_first_read_ms']:.1f} ms, later reads "
            f"{r['option_a_later_read_ms']:.2f} ms; ask the ledger about every pending entry "
            f"(B, each read) {r['option_b_read_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
