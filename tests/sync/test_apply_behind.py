"""``WAL_APPLY=behind`` (the default, issue 22): a critical call is acknowledged once its entry
is durable in the log; the sync thread applies the backlog in batches.

* the receipt is PENDING, the entry durable, the database untouched by the call; the sync
  thread is woken by the write and applies it without waiting for ``WAL_SYNC_INTERVAL``;
* ``atomic_balance_update`` returns the exact new balance, pending entries included, from what
  the process knows (no database read per call), and None while no balance is known;
* a batch of balance updates is applied with one locked read and one UPDATE per account, each
  entry's own new balance returned, and a bad one isolated to itself;
* a failure of the log raises to the caller as with ``inline``;
* the database's commits are durable when they return, whatever its settings say
  (SQLite ``synchronous=FULL``; PostgreSQL ``synchronous_commit=on`` forced per session).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers_log import wait_for
from psycopg import sql
from sqlalchemy.engine import make_url
from trading_child import fast_config, ledger_count, make_outage

from wal import WALEntry, WALEntryStatus, WALStorage
from wal.db import DatabaseManager
from wal.db.schema import metadata
from wal.errors import WALWriteError
from wal.log.fileops import OSFileOps
from wal.sync.durable import DurableDatabaseManager
from wal.sync.manager import WALManager

D = Decimal
MONEY_MAX = D("9" * 18)  # 18 integer digits: the largest whole balance the column holds


class CountingDB(DatabaseManager):
    """The bundled manager, counting the database reads a balance costs."""

    reads = 0

    def get_balance_and_applied(
        self, account: str, entry_ids: Iterable[uuid.UUID | str]
    ) -> tuple[Decimal, set[str]]:
        self.reads += 1
        return super().get_balance_and_applied(account, entry_ids)


@pytest.fixture
def counting(db_url: str) -> Iterator[CountingDB]:
    db = CountingDB(db_url)
    db.database_id(create=True)  # the tables, before any call
    yield db
    db.dispose()


def test_a_call_returns_once_durable_and_the_sync_thread_applies_it_at_once(
    counting: CountingDB, db_url: str, tmp_path: Path
) -> None:
    # a sync interval of an hour: only the write's wake-up can make the thread apply it
    config = fast_config(tmp_path / "wal", db_url, sync_interval=3600.0)
    assert config.apply_mode == "behind"
    ddb = DurableDatabaseManager(counting, config=config)
    assert ddb.manager is not None and ddb.storage is not None
    receipt = ddb.manager.write("atomic_balance_update", delta=D("5"), account="a")
    assert receipt.status is WALEntryStatus.PENDING and not receipt.applied
    assert ddb.storage.get_entry(receipt.entry_id).status is WALEntryStatus.PENDING
    assert ledger_count(counting) == 0  # the call did not touch the database
    assert ddb.get_balance("a") == D("5")  # reads include it
    ddb.start()  # its first pass applies what is pending; then it sleeps for an hour
    try:
        wait_for(lambda: ledger_count(counting) == 1, "the start's pass", timeout=30)
        trade_id = ddb.log_trade(symbol="BTCUSDT", side="buy", quantity=D("1"), price=D("10"))
        wait_for(lambda: ledger_count(counting) == 2, "the write to wake the thread", timeout=30)
        assert counting.get_balance("a") == D("5")
        assert [t["trade_id"] for t in counting.get_trades()] == [trade_id]
        wait_for(
            lambda: ddb.storage is not None and ddb.storage.count(WALEntryStatus.PENDING) == 0,
            "the COMPLETED marks",
            timeout=30,
        )
    finally:
        ddb.stop()


def test_the_new_balance_is_exact_without_a_database_read_per_call(
    counting: CountingDB, db_url: str, tmp_path: Path
) -> None:
    ddb = DurableDatabaseManager(counting, config=fast_config(tmp_path / "wal", db_url))
    ddb.start()
    try:
        assert ddb.atomic_balance_update(D("100"), account="a") == D("100")  # one read: the base
        base_reads = counting.reads
        assert base_reads >= 1
        running = D("100")
        for i in range(1, 40):
            delta = D(i) if i % 3 else -D(i)
            running += delta
            # exact whatever the sync thread applied meanwhile
            assert ddb.atomic_balance_update(delta, account="a", reason=f"r{i}") == running
        assert counting.reads == base_reads  # no database round trip per call
        assert ddb.drain(timeout=30) == 0
        assert counting.get_balance("a") == running
        assert ddb.get_balance("a") == running
    finally:
        ddb.stop()


def test_the_new_balance_is_none_while_unknown_then_exact(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    outage = make_outage(db_url, request)
    db = outage.attach(DatabaseManager(db_url))
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url))
    try:
        db.atomic_balance_update(D("7"), account="a")  # a balance from before this process
        outage.begin()
        # never reached since start: the update is durable, the balance unknown
        assert ddb.atomic_balance_update(D("1"), account="a") is None
        outage.end()
        assert ddb.atomic_balance_update(D("2"), account="a") == D("10")  # one read, then exact
        assert ddb.atomic_balance_update(D("3"), account="a") == D("13")
        assert ddb.drain(timeout=30) == 0
        assert db.get_balance("a") == D("13")
    finally:
        ddb.stop()
        outage.close()
        db.dispose()


def test_write_async_returns_once_durable(db_url: str, tmp_path: Path) -> None:
    db = DatabaseManager(db_url)
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url))
    assert ddb.manager is not None

    async def main() -> list[Any]:
        manager = ddb.manager
        assert manager is not None
        return await asyncio.gather(
            *(
                manager.write_async("atomic_balance_update", delta=D(1), account="a")
                for _ in range(20)
            )
        )

    try:
        receipts = asyncio.run(main())
        assert {r.status for r in receipts} == {WALEntryStatus.PENDING}
        assert ddb.get_balance("a") == D(20)
        assert ddb.drain(timeout=30) == 0
        assert db.get_balance("a") == D(20)
    finally:
        ddb.stop()
        db.dispose()


# ------------------------------------------------------------------ the batch of balance updates


def _entries(calls: list[dict[str, Any]]) -> list[WALEntry]:
    return [
        WALEntry.create("atomic_balance_update", (), kw).with_lsn(i + 1)
        for i, kw in enumerate(calls)
    ]


def test_a_batch_of_balance_updates_returns_each_entrys_own_balance(
    db_url: str, tmp_path: Path
) -> None:
    db = DatabaseManager(db_url)
    try:
        db.atomic_balance_update(D("10"), account="x")
        calls = [
            {"delta": D("1"), "account": "x", "reason": "a"},
            {"delta": D("5"), "account": "y", "reason": "b"},
            {"delta": D("-2"), "account": "x", "reason": "c"},
            {"delta": D("3"), "account": "y"},
        ]
        results = db.apply(_entries(calls))
        assert [r.outcome for r in results] == ["applied"] * 4
        assert [r.value for r in results] == [D("11"), D("5"), D("9"), D("8")]
        assert (db.get_balance("x"), db.get_balance("y")) == (D("9"), D("8"))
        with db.engine.connect() as conn:
            t = metadata.tables["balance_changes"]
            rows = conn.execute(
                sa.select(t.c.account, t.c.delta, t.c.balance_after, t.c.reason).order_by(t.c.id)
            ).all()
        assert [tuple(r) for r in rows[1:]] == [
            ("x", D("1"), D("11"), "a"),
            ("y", D("5"), D("5"), "b"),
            ("x", D("-2"), D("9"), "c"),
            ("y", D("3"), D("8"), ""),
        ]
    finally:
        db.dispose()


def test_a_bad_balance_update_in_a_batch_fails_alone(db_url: str) -> None:
    db = DatabaseManager(db_url)
    try:
        db.atomic_balance_update(MONEY_MAX - D("1"), account="x")
        calls = [
            {"delta": D("1"), "account": "y", "reason": "a"},
            {"delta": D("5"), "account": "x", "reason": "too much"},  # past the column's limit
            {"delta": D("-1"), "account": "x", "reason": "c"},
        ]
        results = db.apply(_entries(calls))
        assert [r.outcome for r in results] == ["applied", "error", "applied"]
        assert "new balance" in (results[1].error or "")
        assert db.get_balance("x") == MONEY_MAX - D("2")
        assert db.get_balance("y") == D("1")
    finally:
        db.dispose()


# ------------------------------------------------------------------ the log fails


class EIOWhenArmed(OSFileOps):
    failing = False

    def fdatasync(self, fd: int) -> None:
        if self.failing:
            raise OSError(5, "Input/output error")
        super().fdatasync(fd)


def test_a_log_failure_raises_to_the_caller_when_applying_behind(
    db_url: str, tmp_path: Path
) -> None:
    db = DatabaseManager(db_url)
    fs = EIOWhenArmed()
    config = fast_config(tmp_path / "wal", db_url)
    storage = WALStorage(config.directory, config.storage_options(), fs=fs)
    m = WALManager(storage, db, config)
    m.start()
    try:
        assert m.write("atomic_balance_update", delta=D(1), account="a").pending
        fs.failing = True
        with pytest.raises(WALWriteError):
            m.write("atomic_balance_update", delta=D(2), account="a")
        fs.failing = False
        with pytest.raises(WALWriteError):  # refused from then on: trading halts
            m.write("atomic_balance_update", delta=D(4), account="a")
        assert db.get_balance("a") in (D(0), D(1))  # never 3, 5 or 7
    finally:
        m.stop()
        storage.close()
        db.dispose()


# ------------------------------------------------------------------ durable commits


def test_sqlite_commits_are_synchronous_full(tmp_path: Path) -> None:
    db = DatabaseManager(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        db.dispose()


@pytest.mark.postgres
def test_postgres_sessions_commit_synchronously_whatever_the_database_says(
    pg_db: str, pg_url: Any
) -> None:
    name = str(make_url(pg_db).database)
    with pg_url.admin_connect() as admin:  # a database (or role) that weakened it
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name))
        )
    db = DatabaseManager(pg_db)
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        db.atomic_balance_update(D(1))
        db.set_timeout_ms(500)  # the apply path's connections too
        db.dispose()
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    finally:
        db.dispose()
