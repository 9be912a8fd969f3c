"""The headline test: trading goes on through a real database outage, and nothing is lost or
doubled.

A seeded trading session (a session, a deposit, trades, position opens, updates and closes,
balance updates in exact Decimal) runs through ``DurableDatabaseManager``. In the middle the
database goes down for real: PostgreSQL is crashed (``pg_ctl stop -m immediate``); SQLite is
locked by another connection (see ``trading_child.Outage``). Trading continues: every call
returns, and the balance and open positions read during the outage are exactly the model's.
The database comes back while trading goes on; the log drains; then the database equals the
model: every trade once, every balance change once (the list of deltas, in order), the
balance exact, positions exact, and one ``wal_applied`` ledger row per log entry.

Run with ``pytest -s tests/sync/test_outage.py`` to see the figures (also in the junit report).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers_log import wait_for
from trading_child import (
    Model,
    Outage,
    db_state,
    fast_config,
    ledger_count,
    make_outage,
    make_plan,
    open_positions_view,
    perform,
)

from wal import WALEntryStatus
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

BEFORE, DURING, AFTER = 150, 400, 150


@pytest.fixture
def outage(db_url: str, request: pytest.FixtureRequest) -> Iterator[Outage]:
    o = make_outage(db_url, request)
    yield o
    o.close()


def test_trading_continues_through_an_outage_and_nothing_is_lost_or_doubled(
    db_url: str,
    outage: Outage,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    db = outage.attach(DatabaseManager(db_url))
    plan = make_plan(seed=20240611, n=BEFORE + DURING + AFTER)
    model = Model()
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url))
    manager, storage = ddb.manager, ddb.storage
    assert manager is not None and storage is not None
    main, spot = "main", "spot"

    def pending() -> int:
        return int(manager.get_stats()["pending"])

    def check_reads() -> None:
        for account in (main, spot):
            assert ddb.get_balance(account) == model.balance(account)
        assert open_positions_view(ddb.get_open_positions()) == model.open_positions()

    ddb.start()
    try:
        # ---- the database is up: each operation is applied as it is made
        for op in plan[:BEFORE]:
            perform(ddb, op)
            model.apply(op)
        check_reads()
        assert ddb.drain(timeout=60) == 0  # applied behind (WAL_APPLY=behind)
        assert pending() == 0

        # ---- the database goes down; trading continues on the log
        outage.begin()
        t_down = time.monotonic()
        for n, op in enumerate(plan[BEFORE : BEFORE + DURING]):
            perform(ddb, op)  # returns: the operation is durable in the log
            model.apply(op)
            assert ddb.get_balance(main) == model.balance(main)  # never a stale balance
            if n % 10 == 0:
                check_reads()
        check_reads()
        assert pending() == DURING  # every operation of the outage waits in the log
        assert manager.breaker.opened_count >= 1
        outage_seconds = time.monotonic() - t_down

        # ---- the database comes back while trading goes on; the log drains
        outage.end()
        t_up = time.monotonic()
        for op in plan[BEFORE + DURING :]:
            perform(ddb, op)
            model.apply(op)
            assert ddb.get_balance(main) == model.balance(main)
        wait_for(lambda: pending() == 0, "the log to drain", timeout=60)
        drain_seconds = time.monotonic() - t_up
        check_reads()
        stats = manager.get_stats()
    finally:
        ddb.stop()

    # ---- the database equals the model: nothing lost, nothing doubled
    assert db_state(db) == model.state()
    assert len(model.trades) == sum(op.method == "log_trade" for op in plan)
    reopened = DurableDatabaseManager(DatabaseManager(db_url), config=ddb.config)
    try:
        assert reopened.storage is not None
        entries = list(reopened.storage.iter_entries())
        assert len(entries) == len(plan)
        assert {e.status for e in entries} == {WALEntryStatus.COMPLETED}
    finally:
        reopened.stop()
    assert ledger_count(db) == len(plan)
    assert stats["failed"] == 0

    figures = {
        "backend": db.dialect,
        "operations_during_outage": DURING,
        "outage_seconds": round(outage_seconds, 3),
        "operations_after_outage_while_draining": AFTER,
        "drain_seconds": round(drain_seconds, 3),
        "breaker_opened": manager.breaker.opened_count,
        "applied_total": stats["applied_total"],
        "duplicates_total": stats["duplicates_total"],
    }
    for k, v in figures.items():
        record_property(k, v)
    print(f"\noutage figures: {figures}")
