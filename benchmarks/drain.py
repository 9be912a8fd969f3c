"""Drain: N pending entries applied exactly once into SQLite and PostgreSQL.

Reproduce: python benchmarks/drain.py --entries 100000 [--pg]
(--pg starts a throwaway PostgreSQL with pgserver, or uses WAL_TEST_PG_DSN.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from wal.config import WALConfig
from wal.db import DatabaseManager
from wal.entry import WALEntry
from wal.log.storage import WALStorage
from wal.sync.manager import WALManager


def fill(log: WALStorage, n: int) -> None:
    """``n`` pending log_trade entries (ids made on the client, as the wrapper does)."""
    now = datetime.now(UTC)
    for start in range(0, n, 1000):
        batch = [
            WALEntry.create(
                "log_trade",
                kwargs={
                    "trade_id": str(uuid.uuid4()),
                    "symbol": "BTCUSDT",
                    "side": "buy",
                    "quantity": Decimal("0.0150"),
                    "price": Decimal("50123.45"),
                    "executed_at": now,
                },
            )
            for _ in range(min(1000, n - start))
        ]
        log.append_many(batch)


def measure_drain(url: str, n: int, workdir: Path, batch_size: int = 500) -> dict[str, Any]:
    """Fill a log with ``n`` entries, drain it with ``force_sync``; check exactly-once."""
    config = WALConfig.from_env(
        {}, directory=workdir / "wal", database_url=url, batch_size=batch_size
    )
    db = DatabaseManager(url)
    db.ping()
    with WALStorage(config.directory, config.storage_options()) as log:
        fill(log, n)
        manager = WALManager(log, db, config)
        t0 = time.perf_counter()
        result = manager.force_sync()
        seconds = time.perf_counter() - t0
    with db.engine.connect() as conn:
        ledger = conn.execute(sa.text("SELECT count(*) FROM wal_applied")).scalar_one()
        trades = conn.execute(sa.text("SELECT count(*) FROM trades")).scalar_one()
    db.dispose()
    return {
        "database": db.dialect,
        "entries": n,
        "seconds": seconds,
        "entries_per_second": n / seconds,
        "applied": result.applied,
        "exactly_once": ledger == trades == n == result.applied,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--pg", action="store_true", help="also drain into PostgreSQL")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rows.append(measure_drain(f"sqlite:///{d / 'atb.db'}", args.entries, d / "s"))
        if args.pg:
            url = pg_url_for_bench(d / "pg")
            if url is None:
                raise SystemExit("no PostgreSQL: install pgserver or set WAL_TEST_PG_DSN")
            rows.append(measure_drain(url, args.entries, d / "p"))
    for r in rows:
        print(
            f"drain into {r['database']:<10} {r['entries']:>8} entries  "
            f"{r['entries_per_second']:>10,.0f} entries/s  exactly once: {r['exactly_once']}"
        )


def pg_url_for_bench(where: Path) -> str | None:
    """WAL_TEST_PG_DSN, else a throwaway pgserver in ``where``; None if neither is there."""
    import os

    dsn = os.environ.get("WAL_TEST_PG_DSN")
    if dsn:
        return dsn
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        return None
    srv = pgserver.get_server(str(where), cleanup_mode="stop")
    return str(srv.get_uri()).replace("postgresql://", "postgresql+psycopg://", 1)


if __name__ == "__main__":
    main()
