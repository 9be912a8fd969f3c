"""``WALManager.write_deferred`` and ``DurableDatabaseManager.journal_orders``: durable in one
group commit, applied by the sync thread (or a drain), never by the writer.

Real parts: a log directory, SQLite; the sync thread is not started where a test needs to see
the entries still pending (nothing races it), and ``force_sync`` is the drain.
"""

from __future__ import annotations

import errno
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from faultfs import CrashFS, FaultRule
from trading_child import fast_config

from wal import (
    DurableDatabaseManager,
    WALEntryStatus,
    WALSerializationError,
    WALStorage,
    WALWriteError,
)
from wal.db import DatabaseManager
from wal.orders import EventKind, Fill, OrderEvent, OrderIntent, OrderJournal, OrderState


def make(tmp_path: Path, fs: CrashFS | None = None) -> DurableDatabaseManager:
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    config = fast_config(tmp_path / "wal", url)
    storage = WALStorage(config.directory, config.storage_options(), fs=fs)
    return DurableDatabaseManager(DatabaseManager(url), config=config, storage=storage)


def close(ddb: DurableDatabaseManager) -> None:
    ddb.stop()
    assert ddb.storage is not None
    ddb.storage.close()
    ddb.db.dispose()


def submission(qty: str = "3") -> tuple[OrderIntent, OrderEvent]:
    intent = OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(qty))
    ev = OrderEvent(
        intent.client_order_id, 2, EventKind.SUBMITTED, OrderState.SUBMITTING, datetime.now(UTC)
    )
    return intent, ev


def test_a_group_is_one_fsync_and_waits_for_no_database(tmp_path: Path) -> None:
    ddb = make(tmp_path)  # not started: no sync thread
    assert ddb.storage is not None and ddb.manager is not None
    try:
        journal = OrderJournal(ddb)
        intent, ev = submission()
        before = ddb.storage.get_stats().fsync_count
        journal.record_submission(intent, ev)
        assert ddb.storage.get_stats().fsync_count == before + 1
        pending = list(ddb.storage.get_pending_entries())
        assert [e.operation for e in pending] == ["record_order_intent", "record_order_event"]
        assert [e.idempotency_key for e in pending] == [
            intent.client_order_id,
            f"{intent.client_order_id}:2",
        ]
        assert ddb.db.get_order_row(intent.client_order_id) is None  # not applied
        order = journal.order(intent.client_order_id)  # read through the log
        assert order is not None and order.state is OrderState.SUBMITTING
        assert order.last_seq == 2
        r = ddb.manager.force_sync()
        assert (r.applied, r.pending, r.failed) == (2, 0, 0)
        row = ddb.db.get_order_row(intent.client_order_id)
        assert row is not None and row["state"] == "submitting"
        assert [e["kind"] for e in ddb.db.get_order_events(intent.client_order_id)] == [
            "created",
            "submitted",
        ]
    finally:
        close(ddb)


def test_keys_already_logged_or_repeated_in_a_batch_are_one_entry(tmp_path: Path) -> None:
    ddb = make(tmp_path)
    assert ddb.storage is not None and ddb.manager is not None
    try:
        m = ddb.manager
        call = ("atomic_balance_update", {"delta": Decimal("5"), "account": "a"}, "dep-1")
        first = m.write_deferred([call, call])
        assert first[0].duplicate is False and first[1].duplicate is True
        assert first[0].entry_id == first[1].entry_id
        again = m.write_deferred([call, ("atomic_balance_update", {"delta": Decimal("1")}, None)])
        assert again[0].duplicate is True and again[0].entry_id == first[0].entry_id
        assert again[1].duplicate is False
        assert m.write(
            "atomic_balance_update", delta=Decimal("5"), idempotency_key="dep-1"
        ).duplicate
        assert ddb.storage.count(WALEntryStatus.PENDING) == 2
        assert ddb.get_balance("a") == Decimal("5")  # the overlay counts it once, pending
        m.force_sync()
        assert ddb.db.get_balance("a") == Decimal("5")
    finally:
        close(ddb)
    reopened = make(tmp_path)  # the key survives a restart (found in the log, not the cache)
    try:
        assert reopened.manager is not None
        dup = reopened.manager.write_deferred([call])
        assert dup[0].duplicate is True and dup[0].entry_id == first[0].entry_id
    finally:
        close(reopened)


def test_the_sync_thread_applies_what_was_deferred(tmp_path: Path) -> None:
    ddb = make(tmp_path)
    ddb.start()
    assert ddb.manager is not None
    try:
        intent, ev = submission()
        OrderJournal(ddb).record_submission(intent, ev)
        ddb.stop()  # joins the thread; whatever it did not apply stays in the log
        r = ddb.manager.force_sync()
        assert r.pending == 0 and r.failed == 0
        row = ddb.db.get_order_row(intent.client_order_id)
        assert row is not None and int(row["last_seq"]) == 2
    finally:
        close(ddb)


def test_bad_calls_are_refused_before_anything_is_logged(tmp_path: Path) -> None:
    ddb = make(tmp_path)
    assert ddb.storage is not None
    try:
        intent, _ = submission()
        journal = OrderJournal(ddb)
        fill = Fill("e-1", intent.client_order_id, "AAPL", "buy", Decimal(1), Decimal(100))
        with pytest.raises(TypeError):
            journal.record_fill(fill, no_such_argument=1)  # the database has no such column
        with pytest.raises(TypeError):
            journal.record_fill(fill, seq=2)  # kind, state, totals missing
        with pytest.raises(WALSerializationError, match="float"):
            ddb.journal_orders([("atomic_balance_update", {"delta": 1.5}, None)])
        with pytest.raises(ValueError, match="not a critical operation"):
            ddb.journal_orders([("get_trades", {}, None)])
        assert list(ddb.storage.iter_entries()) == []
        assert OrderJournal(ddb).order(intent.client_order_id) is None
    finally:
        close(ddb)


def test_a_log_failure_raises_and_halts_every_later_write(tmp_path: Path) -> None:
    fs = CrashFS(tmp_path / "wal")
    ddb = make(tmp_path, fs)
    assert ddb.manager is not None
    try:
        fs.rules.append(FaultRule("fdatasync", errno=errno.EIO, persistent=True))
        intent, ev = submission()
        with pytest.raises(WALWriteError):
            OrderJournal(ddb).record_submission(intent, ev)
        with pytest.raises(WALWriteError):
            ddb.manager.write_deferred([("atomic_balance_update", {"delta": Decimal(1)}, None)])
    finally:
        ddb.stop()
        ddb.db.dispose()
