"""wal.db.manager: the reference DatabaseManager and its exactly-once ``apply``.

The same test bodies run on SQLite (a file) and on a real PostgreSQL (``db_url``); the outage
tests stop the real server (``pg_ctl stop -m immediate``) or hold SQLite's real write lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from helpers_log import wait_for
from pg import PgServer
from sqlalchemy.engine import make_url

from wal import WALConfigError, WALDatabaseError, WALEntry
from wal.db import engine, operations, schema
from wal.db.apply import pg_ledger_probe
from wal.db.manager import (
    ApplyResult,
    DatabaseManager,
    RecordNotFoundError,
    is_transient,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def db(db_url: str) -> Iterator[DatabaseManager]:
    manager = DatabaseManager(db_url)
    yield manager
    manager.dispose()


def count(db: DatabaseManager, table: str) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def entry(op: str, *args: Any, **kwargs: Any) -> WALEntry:
    return WALEntry.create(op, args=args, kwargs=kwargs)


def outcomes(results: list[ApplyResult]) -> list[str]:
    return [r.outcome for r in results]


# --------------------------------------------------------------------------- balances


def test_balance_updates_are_exact_decimals(db: DatabaseManager) -> None:
    assert db.get_balance() == 0
    assert db.atomic_balance_update(Decimal("0.1"), reason="a") == Decimal("0.1")
    new = db.atomic_balance_update(Decimal("0.2"), reason="b")
    assert isinstance(new, Decimal)
    assert new == Decimal("0.3")  # 0.1 + 0.2 != 0.3 in float
    assert db.get_balance() == Decimal("0.3")
    assert db.atomic_balance_update(-1, account="other") == Decimal(-1)
    assert db.atomic_balance_update("0.0000000001", account="other") == Decimal("-0.9999999999")
    assert db.get_balance() == Decimal("0.3")  # accounts are independent
    big = Decimal("999999999999999999.9999999999")  # 28 digits: the full NUMERIC(28, 10)
    assert db.atomic_balance_update(big, account="big") == big
    assert db.get_balance("big") == big
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(schema.balance_changes.c.delta, schema.balance_changes.c.reason)
            .where(schema.balance_changes.c.account == "default")
            .order_by(schema.balance_changes.c.id)
        ).all()
    assert [tuple(r) for r in rows] == [(Decimal("0.1"), "a"), (Decimal("0.2"), "b")]


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        (0.1, TypeError, "never float"),
        (True, TypeError, "never float"),
        (None, TypeError, "needs a delta"),
        (Decimal("0.00000000001"), ValueError, "more than 10 decimal places"),
        (Decimal("1E18"), ValueError, "out of range"),
        (Decimal("NaN"), ValueError, "finite"),
        ("ten", ValueError, "not a decimal"),
    ],
)
def test_bad_money_is_refused_and_nothing_written(
    tmp_path: Path, value: Any, error: type[Exception], text: str
) -> None:
    db = DatabaseManager(f"sqlite:///{tmp_path / 'atb.db'}")
    db.atomic_balance_update(Decimal(5))
    with pytest.raises(error, match=text), db.engine.begin() as conn:
        operations.op_balance_update(conn, value)
    with pytest.raises(ValueError, match="more than 10"):
        db.log_trade(symbol="X", side="buy", quantity=Decimal("1e-11"), price=Decimal(1))
    assert db.get_balance() == 5
    assert count(db, "balance_changes") == 1
    assert count(db, "trades") == 0
    db.dispose()


def test_balance_context_manager_commits(db: DatabaseManager) -> None:
    db.atomic_balance_update(Decimal("100"), account="spot")
    with db.atomic_balance_update(account="spot", reason="order") as t:
        assert t.balance == Decimal("100")
        assert t.add(Decimal("-30.5")) == Decimal("69.5")
        assert t.add(Decimal("0.25"), reason="fee refund") == Decimal("69.75")
        assert t.balance == Decimal("69.75")
        assert t.changes == ((Decimal("-30.5"), "order"), (Decimal("0.25"), "fee refund"))
    assert db.get_balance("spot") == Decimal("69.75")
    with pytest.raises(RuntimeError, match="inside the block"):
        t.add(Decimal(1))
    assert db.get_balance("spot") == Decimal("69.75")


def test_balance_context_manager_rolls_back_on_exception(db: DatabaseManager) -> None:
    db.atomic_balance_update(Decimal("10"), account="spot")
    with pytest.raises(KeyError), db.atomic_balance_update(account="spot") as t:
        t.add(Decimal("-10"))
        assert t.balance == 0
        raise KeyError("the order was rejected")
    assert db.get_balance("spot") == Decimal("10")
    assert count(db, "balance_changes") == 1
    # A new account touched only inside a rolled-back block leaves no row behind.
    with pytest.raises(KeyError), db.atomic_balance_update(account="new") as t:
        t.add(Decimal(1))
        raise KeyError("x")
    assert count(db, "balances") == 1


def test_concurrent_balance_updates_are_not_lost(db: DatabaseManager) -> None:
    per_thread, threads = 25, 4
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                with db.atomic_balance_update(account="shared") as t:
                    t.add(Decimal("0.01"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert errors == []
    assert db.get_balance("shared") == Decimal("0.01") * per_thread * threads


# --------------------------------------------------------------------------- trades, positions


def test_log_trade_and_read_back(db: DatabaseManager) -> None:
    tid = db.log_trade(
        symbol="BTCUSDT",
        side="buy",
        quantity=Decimal("0.015"),
        price=Decimal("64123.45"),
        trade_id="t-1",
        session_id="s-1",
        pnl=Decimal("-1.25"),
        executed_at=T0,
    )
    assert tid == "t-1"
    generated = db.log_trade(
        symbol="ETHUSDT",
        side="sell",
        quantity=Decimal(2),
        price=Decimal("3000"),
        executed_at=T0 + timedelta(seconds=1),
    )
    assert uuid.UUID(generated).version == 4
    trades = db.get_trades()
    assert [t["trade_id"] for t in trades] == ["t-1", generated]
    first = trades[0]
    assert first == {
        "trade_id": "t-1",
        "session_id": "s-1",
        "symbol": "BTCUSDT",
        "side": "buy",
        "quantity": Decimal("0.015"),
        "price": Decimal("64123.45"),
        "pnl": Decimal("-1.25"),
        "executed_at": T0,
    }
    assert all(isinstance(first[k], Decimal) for k in ("quantity", "price", "pnl"))
    assert first["executed_at"].tzinfo is not None
    assert [t["trade_id"] for t in db.get_trades(session_id="s-1")] == ["t-1"]
    assert db.get_trades(session_id="none") == []
    # Another zone is the same instant; a naive datetime is refused (it names no zone:
    # datetime.now() is local time), nothing written.
    plus2 = timezone(timedelta(hours=2))
    db.log_trade(
        symbol="X",
        side="buy",
        quantity=Decimal(1),
        price=Decimal(1),
        trade_id="tz",
        executed_at=T0.astimezone(plus2) + timedelta(seconds=5),
    )
    with pytest.raises(ValueError, match=r"executed_at=.* is naive") as naive:
        db.log_trade(
            symbol="X",
            side="buy",
            quantity=Decimal(1),
            price=Decimal(1),
            trade_id="naive",
            executed_at=T0.replace(tzinfo=None) + timedelta(seconds=6),
        )
    assert getattr(naive.value, "argument", None) == "executed_at"
    with pytest.raises(ValueError, match="side='hodl' is not 'buy' or 'sell'"):
        db.log_trade(symbol="X", side="hodl", quantity=Decimal(1), price=Decimal(1))
    by_id = {t["trade_id"]: t["executed_at"] for t in db.get_trades()}
    assert by_id["tz"] == T0 + timedelta(seconds=5)
    assert "naive" not in by_id
    with pytest.raises(ValueError, match="quantity must be positive"):
        db.log_trade(symbol="X", side="buy", quantity=Decimal(0), price=Decimal(1))
    with pytest.raises(sa.exc.IntegrityError):
        db.log_trade(symbol="X", side="buy", quantity=Decimal(1), price=Decimal(1), trade_id="t-1")
    assert len(db.get_trades()) == 3  # t-1, the generated one, tz: the naive one was refused


def test_position_lifecycle(db: DatabaseManager) -> None:
    pid = db.log_position(
        symbol="BTCUSDT",
        side="long",
        quantity=Decimal("0.5"),
        entry_price=Decimal("60000"),
        stop_loss=Decimal("58000"),
        take_profit=Decimal("65000"),
        session_id="s-1",
        opened_at=T0,
    )
    other = db.log_position(
        symbol="ETHUSDT",
        side="short",
        quantity=Decimal(3),
        entry_price=Decimal("3000"),
        position_id="p-2",
        opened_at=T0 + timedelta(minutes=1),
    )
    assert other == "p-2"
    open_ = db.get_open_positions()
    assert [p["position_id"] for p in open_] == [pid, "p-2"]
    assert open_[0]["entry_price"] == Decimal("60000") and open_[0]["status"] == "open"
    assert open_[0]["opened_at"] == T0

    db.update_position(pid, stop_loss=Decimal("59000.5"), current_price=Decimal("61000"))
    p = db.get_open_positions()[0]
    assert p["stop_loss"] == Decimal("59000.5")
    assert p["current_price"] == Decimal("61000")
    assert p["take_profit"] == Decimal("65000")  # not given: unchanged
    assert p["quantity"] == Decimal("0.5")

    db.close_position(pid, exit_price=Decimal("62000"), pnl=Decimal("1000"), closed_at=T0)
    assert [p["position_id"] for p in db.get_open_positions()] == ["p-2"]
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(schema.positions).where(schema.positions.c.position_id == pid)
        ).one()
    assert row.status == "closed" and row.exit_price == Decimal("62000")
    assert row.pnl == Decimal("1000") and row.closed_at == T0


def test_unknown_or_closed_positions_raise(db: DatabaseManager) -> None:
    with pytest.raises(RecordNotFoundError, match="no position with position_id 'nope'"):
        db.update_position("nope", stop_loss=Decimal(1))
    with pytest.raises(RecordNotFoundError, match="'nope'"):
        db.close_position("nope", exit_price=Decimal(1))
    pid = db.log_position(symbol="X", side="long", quantity=Decimal(1), entry_price=Decimal(1))
    db.close_position(pid, exit_price=Decimal(2))
    with pytest.raises(ValueError, match="is closed, not open"):
        db.close_position(pid, exit_price=Decimal(3))
    with pytest.raises(ValueError, match="is closed, not open"):
        db.update_position(pid, stop_loss=Decimal(1))


def test_an_order_event_must_follow_the_orders_last_one(db: DatabaseManager) -> None:
    """An event's seq is its order's ``last_seq + 1``: a gap, a repeat, a bool, an unknown
    order are refused, and a refused event writes nothing (the order row keeps its state,
    no event row); a broker id or a reason given as None keeps the order's."""
    cid = db.record_order_intent(
        client_order_id="c-1", symbol="AAPL", side="buy", quantity=Decimal(2), order_type="market"
    )

    def event(seq: object, **kw: Any) -> None:
        base = {"client_order_id": cid, "kind": "submitted", "state": "submitting", "at": T0}
        db.record_order_event(**(base | {"seq": seq} | kw))

    event(2, broker_order_id="b-1", reason="sent")
    for bad in (2, 4, 1, 0, True, 3.0, "3"):  # a repeat, a gap, the past, not an int
        with pytest.raises(ValueError, match=r"event seq .* does not follow 2"):
            event(bad, kind="accepted", state="accepted")
    with pytest.raises(RecordNotFoundError, match="no order with client_order_id 'c-9'"):
        event(2, client_order_id="c-9")
    row = db.get_order_row(cid)
    assert row is not None
    assert (row["state"], row["last_seq"]) == ("submitting", 2)
    assert count(db, "order_events") == 2
    event(3, kind="accepted", state="accepted")  # no broker id, no reason: both kept
    row = db.get_order_row(cid)
    assert row is not None
    assert (row["state"], row["last_seq"], row["broker_order_id"], row["reason"]) == (
        "accepted",
        3,
        "b-1",
        "sent",
    )

    def fill(xid: str, quantity: int, filled: int) -> None:
        db.record_order_fill(
            execution_id=xid,
            execution_key=xid,
            client_order_id=cid,
            symbol="AAPL",
            side="buy",
            quantity=Decimal(quantity),
            price=Decimal(10),
            executed_at=T0,
            seq=4,
            kind="fill",
            state="filled",
            filled_quantity=Decimal(filled),
            avg_fill_price=Decimal(10),
        )

    fill("x-1", 2, 2)
    with pytest.raises(ValueError, match=r"event seq 4 does not follow 4"):
        fill("x-2", 1, 3)  # the same seq again
    row = db.get_order_row(cid)
    assert row is not None
    assert (row["state"], row["last_seq"], row["filled_quantity"], row["broker_order_id"]) == (
        "filled",
        4,
        Decimal(2),
        "b-1",
    )
    assert count(db, "fills") == 1 and count(db, "order_events") == 4


def test_trading_sessions(db: DatabaseManager) -> None:
    sid = db.create_trading_session(strategy="grid", initial_balance=Decimal("1000"), started_at=T0)
    live = db.create_trading_session(
        strategy="momentum", session_id="live-1", mode="live", started_at=T0 + timedelta(1)
    )
    assert live == "live-1"
    db.end_trading_session(sid, final_balance=Decimal("1012.34"), ended_at=T0 + timedelta(2))
    sessions = db.get_sessions()
    assert [s["session_id"] for s in sessions] == [sid, "live-1"]
    assert sessions[0]["mode"] == "paper"
    assert sessions[0]["final_balance"] == Decimal("1012.34")
    assert sessions[0]["ended_at"] == T0 + timedelta(2)
    assert sessions[1]["ended_at"] is None
    with pytest.raises(ValueError, match="already ended"):
        db.end_trading_session(sid)
    with pytest.raises(RecordNotFoundError, match="no trading session"):
        db.end_trading_session("nope")


def test_metrics_are_non_critical(db: DatabaseManager) -> None:
    db.record_metric("latency_ms", 1.5, at=T0)
    db.record_metric("latency_ms", 2, at=T0 + timedelta(seconds=1))
    db.record_metric("other", 7.0)
    assert db.get_metrics("latency_ms") == [
        {"name": "latency_ms", "value": 1.5, "at": T0},
        {"name": "latency_ms", "value": 2.0, "at": T0 + timedelta(seconds=1)},
    ]
    assert count(db, "wal_applied") == 0
    with pytest.raises(ValueError, match="finite"):
        db.record_metric("x", float("nan"))


# --------------------------------------------------------------------------- apply


def every_operation() -> list[WALEntry]:
    """One entry per operation, with the ids filled in (as the durable wrapper does)."""
    return [
        entry("create_trading_session", strategy="grid", session_id="s1", started_at=T0),
        entry("atomic_balance_update", Decimal("100.10"), reason="deposit"),
        entry("atomic_balance_update", delta=Decimal("-0.1"), account="default"),
        entry(
            "log_trade",
            symbol="BTC",
            side="buy",
            quantity=Decimal("0.1"),
            price=Decimal("50000"),
            trade_id="t1",
            session_id="s1",
            executed_at=T0,
        ),
        entry(
            "log_position",
            symbol="BTC",
            side="long",
            quantity=Decimal("0.1"),
            entry_price=Decimal("50000"),
            position_id="p1",
            opened_at=T0,
        ),
        entry("update_position", "p1", stop_loss=Decimal("49000")),
        entry(
            "log_position",
            symbol="ETH",
            side="long",
            quantity=Decimal(1),
            entry_price=Decimal(3000),
            position_id="p2",
            opened_at=T0,
        ),
        entry("close_position", "p2", exit_price=Decimal("3100"), pnl=Decimal("100")),
        entry("end_trading_session", "s1", final_balance=Decimal("100")),
    ]


def check_every_operation_once(db: DatabaseManager) -> None:
    assert db.get_balance() == Decimal("100.00")
    assert count(db, "balance_changes") == 2
    assert [t["trade_id"] for t in db.get_trades()] == ["t1"]
    open_ = db.get_open_positions()
    assert [p["position_id"] for p in open_] == ["p1"]
    assert open_[0]["stop_loss"] == Decimal("49000")
    assert count(db, "positions") == 2
    (session,) = db.get_sessions()
    assert session["final_balance"] == Decimal("100") and session["ended_at"] is not None


def test_apply_runs_each_entry_exactly_once(db: DatabaseManager) -> None:
    entries = [e.with_lsn(i + 1) for i, e in enumerate(every_operation())]
    results = db.apply(entries)
    assert outcomes(results) == ["applied"] * len(entries)
    assert [r.entry_id for r in results] == [str(e.entry_id) for e in entries]
    assert [r.value for r in results] == [
        "s1",
        Decimal("100.10"),
        Decimal("100.00"),
        "t1",
        "p1",
        None,
        "p2",
        None,
        None,
    ]
    assert all(r.error is None for r in results)
    check_every_operation_once(db)

    again = db.apply(entries)  # a replay after a crash, or after an ambiguous COMMIT
    assert outcomes(again) == ["duplicate"] * len(entries)
    check_every_operation_once(db)
    assert db.applied_ids([e.entry_id for e in entries] + ["not-there"]) == {
        str(e.entry_id) for e in entries
    }
    with db.engine.connect() as conn:
        ledger = conn.execute(
            sa.select(schema.wal_applied.c.lsn, schema.wal_applied.c.operation).order_by(
                schema.wal_applied.c.lsn
            )
        ).all()
    assert [tuple(r) for r in ledger] == [(e.lsn, e.operation) for e in entries]
    assert db.apply([]) == []
    assert db.applied_ids([]) == set()


def test_apply_same_entry_twice_in_one_batch(db: DatabaseManager) -> None:
    e = entry("atomic_balance_update", Decimal("5"))
    assert outcomes(db.apply([e, e])) == ["applied", "duplicate"]
    assert db.get_balance() == 5


def test_apply_does_what_a_direct_call_does(db_url: str, tmp_path: Path) -> None:
    direct = DatabaseManager(f"sqlite:///{tmp_path / 'direct.db'}")
    replayed = DatabaseManager(db_url)
    kwargs: dict[str, Any] = {
        "symbol": "BTC",
        "side": "sell",
        "quantity": Decimal("0.3"),
        "price": Decimal("1.5"),
        "trade_id": "t9",
        "pnl": Decimal("-2"),
        "executed_at": T0,
    }
    direct.log_trade(**kwargs)
    direct.atomic_balance_update(Decimal("7.7"), reason="r", account="a")
    replayed.apply(
        [
            entry("log_trade", **kwargs),
            entry("atomic_balance_update", Decimal("7.7"), reason="r", account="a"),
        ]
    )
    assert replayed.get_trades() == direct.get_trades()
    assert replayed.get_balance("a") == direct.get_balance("a") == Decimal("7.7")
    direct.dispose()
    replayed.dispose()


def test_apply_permanent_error_rolls_back_that_entry_only(db: DatabaseManager) -> None:
    db.log_trade(symbol="X", side="buy", quantity=Decimal(1), price=Decimal(1), trade_id="taken")
    batch = [
        entry("atomic_balance_update", Decimal("10")),
        entry("close_position", "missing", exit_price=Decimal(1)),  # a missing position
        # The trade id is taken: the insert fails and takes the entry's ledger row with it.
        entry(
            "log_trade",
            symbol="X",
            side="buy",
            quantity=Decimal(1),
            price=Decimal(1),
            trade_id="taken",
        ),
        entry("log_trade", symbol="X", side="buy", quantity=Decimal(1), price=Decimal(1), bogus=1),
        entry("log_trade", symbol="X", side="buy", quantity=0.5, price=Decimal(1)),  # float
        entry("atomic_balance_update", Decimal("1e-12")),  # more than 10 places
        entry("__init__", "sqlite:///elsewhere.db"),  # never looked up with getattr
        entry("dispose"),
        entry("atomic_balance_update", Decimal("5")),
    ]
    results = db.apply(batch)
    assert outcomes(results) == ["applied"] + ["error"] * 7 + ["applied"]
    errors = [r.error or "" for r in results[1:8]]
    assert "RecordNotFoundError" in errors[0] and "'missing'" in errors[0]
    assert errors[1].startswith("log_trade: IntegrityError")
    assert "unexpected keyword argument 'bogus'" in errors[2]
    assert "never float" in errors[3]
    assert "more than 10 decimal places" in errors[4]
    assert "unknown operation '__init__'" in errors[5]
    assert "unknown operation 'dispose'" in errors[6]
    assert all("\n" not in e and len(e) <= 500 for e in errors)
    assert db.get_balance() == Decimal("15")
    assert count(db, "trades") == 1
    assert db.applied_ids(str(e.entry_id) for e in batch) == {
        str(batch[0].entry_id),
        str(batch[-1].entry_id),
    }
    # A retry: the applied ones are duplicates, the bad ones fail the same way.
    assert outcomes(db.apply(batch)) == ["duplicate"] + ["error"] * 7 + ["duplicate"]
    assert db.get_balance() == Decimal("15")


def test_apply_balance_overflow_is_an_error_and_changes_nothing(db: DatabaseManager) -> None:
    db.atomic_balance_update(Decimal("999999999999999999"))
    results = db.apply(
        [
            entry("atomic_balance_update", Decimal("1")),  # new balance: 19 integer digits
            entry("atomic_balance_update", Decimal("-1")),
        ]
    )
    assert outcomes(results) == ["error", "applied"]
    assert "out of range" in (results[0].error or "")
    assert db.get_balance() == Decimal("999999999999999998")
    assert count(db, "balance_changes") == 2


def test_concurrent_appliers_apply_each_entry_once(db_url: str) -> None:
    managers = [DatabaseManager(db_url) for _ in range(2)]
    managers[0].ping()  # tables exist before the race
    managers[0].get_balance()
    batch = [entry("atomic_balance_update", Decimal("1.5")) for _ in range(20)]
    start = threading.Barrier(2)
    results: list[list[ApplyResult]] = [[], []]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = managers[i].apply(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    for a, b in zip(results[0], results[1], strict=True):
        assert sorted([a.outcome, b.outcome]) == ["applied", "duplicate"]
    assert managers[0].get_balance() == Decimal("30")
    for m in managers:
        m.dispose()


# --------------------------------------------------------------------------- outages


@pytest.mark.postgres
def test_apply_through_a_real_postgres_outage(pg_url: PgServer, pg_db: str) -> None:
    if not pg_url.can_restart:
        pytest.skip("needs a pgserver-managed server to stop (WAL_TEST_PG_DSN is not stopped)")
    db = DatabaseManager(pg_db)
    first = [entry("atomic_balance_update", Decimal("1.1")) for _ in range(3)]
    second = [entry("atomic_balance_update", Decimal("2.2")) for _ in range(3)] + [
        entry(
            "log_trade",
            symbol="X",
            side="buy",
            quantity=Decimal(1),
            price=Decimal(2),
            trade_id="during-outage",
        ),
    ]
    assert outcomes(db.apply(first)) == ["applied"] * 3

    pg_url.stop_immediate()
    try:
        with pytest.raises(WALDatabaseError) as caught:
            db.apply(second)
        assert caught.value.transient is True
        assert is_transient(caught.value)
        with pytest.raises(WALDatabaseError) as pinged:
            db.ping()
        assert pinged.value.transient is True
        with pytest.raises(sa.exc.OperationalError) as direct:  # a plain call: the driver's error
            db.get_balance()
        assert is_transient(direct.value)
    finally:
        pg_url.start()  # crash recovery

    db.ping()
    assert db.get_balance() == Decimal("3.3")  # the first batch survived the crash
    assert outcomes(db.apply(second)) == ["applied"] * 4
    assert outcomes(db.apply(first + second)) == ["duplicate"] * 7
    assert db.get_balance() == Decimal("9.9")
    assert [t["trade_id"] for t in db.get_trades()] == ["during-outage"]
    assert count(db, "wal_applied") == 7
    db.dispose()


@pytest.mark.postgres
def test_server_crash_in_the_middle_of_a_batch_commits_nothing(
    pg_url: PgServer, pg_db: str
) -> None:
    if not pg_url.can_restart:
        pytest.skip("needs a pgserver-managed server to stop (WAL_TEST_PG_DSN is not stopped)")
    db = DatabaseManager(pg_db)
    db.atomic_balance_update(Decimal(1), account="locked")
    batch = [
        entry(
            "log_trade",
            symbol="X",
            side="buy",
            quantity=Decimal(1),
            price=Decimal(1),
            trade_id="t-mid",
        ),
        entry("atomic_balance_update", Decimal("1")),
        entry("atomic_balance_update", Decimal("1"), account="locked"),  # waits for the lock
        entry("atomic_balance_update", Decimal("2")),
    ]
    dbname = make_url(pg_db).database
    blocker = psycopg.connect(pg_url.database_url(str(dbname)).replace("+psycopg", ""))
    blocker.execute("SELECT balance FROM balances WHERE account = 'locked' FOR UPDATE")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            db.apply(batch)
        except BaseException as exc:
            failure.append(exc)

    applier = threading.Thread(target=run)
    applier.start()
    try:
        with pg_url.admin_connect() as admin:

            def applier_waits_on_the_lock() -> bool:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = 'atb-wal' AND wait_event_type = 'Lock'",
                    (dbname,),
                ).fetchone()
                return bool(row and row[0])

            # Two entries of the batch are done inside its open transaction.
            wait_for(applier_waits_on_the_lock, "the applier to wait for the row lock")
        pg_url.stop_immediate()
        applier.join()
    finally:
        with contextlib.suppress(psycopg.Error):
            blocker.close()
        pg_url.ensure_running()
    assert len(failure) == 1 and isinstance(failure[0], WALDatabaseError)
    assert failure[0].transient is True

    assert db.get_trades() == []  # nothing of the batch committed
    assert db.get_balance() == 0
    assert db.get_balance("locked") == 1
    assert db.applied_ids(e.entry_id for e in batch) == set()
    assert outcomes(db.apply(batch)) == ["applied"] * 4
    assert outcomes(db.apply(batch)) == ["duplicate"] * 4
    assert db.get_balance() == 3 and db.get_balance("locked") == 2
    db.dispose()


def test_sqlite_locked_database_is_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 50)  # do not wait 5 s for the lock
    path = tmp_path / "atb.db"
    db = DatabaseManager(f"sqlite:///{path}")
    db.ping()
    db.get_balance()  # creates the tables
    batch = [entry("atomic_balance_update", Decimal("1")) for _ in range(2)]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        with pytest.raises(WALDatabaseError, match="database is locked") as caught:
            db.apply(batch)
        assert caught.value.transient is True
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert outcomes(db.apply(batch)) == ["applied", "applied"]
    assert db.get_balance() == 2
    db.dispose()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A local TCP port that refuses connections (bound, never listening) while in use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://trader:s3cret@127.0.0.1:{port}/atb",
        "postgresql://trader@127.0.0.1:{port}/atb?password=s3cret",  # libpq's keyword
        "postgresql+psycopg://trader@127.0.0.1:{port}/atb?sslmode=disable&password=s3cret",
    ],
)
def test_ping_unreachable_postgres_is_transient_and_hides_the_password(url: str) -> None:
    with refusing_port() as port:
        db = DatabaseManager(url.format(port=port))
        with pytest.raises(WALDatabaseError) as caught:
            db.ping()
    assert caught.value.transient is True
    assert "s3cret" not in str(caught.value) and "s3cret" not in db.safe_url
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (sqlite3.OperationalError("no such table: trades"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
        (psycopg.OperationalError("connection failed: Connection refused"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.errors.SerializationFailure(), True),
        (psycopg.errors.DeadlockDetected(), True),
        (psycopg.errors.QueryCanceled(), True),
        (psycopg.errors.CannotConnectNow(), True),
        (psycopg.errors.UniqueViolation(), False),
        (psycopg.errors.NumericValueOutOfRange(), False),
        (psycopg.errors.UndefinedTable(), False),
        (sa.exc.OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown()), True),
        (sa.exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation()), False),
        (sa.exc.TimeoutError(), True),
        (RecordNotFoundError("no position"), False),
        (ValueError("quantity must be positive"), False),
        (TypeError("unexpected keyword argument"), False),
        (WALDatabaseError("x", transient=False), False),
        (WALDatabaseError("x", transient=True), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_is_transient_follows_the_cause() -> None:
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("sync failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


# --------------------------------------------------------------------------- configuration


def test_sqlite_pragmas_and_file_modes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "atb.db"
    db = DatabaseManager(f"sqlite:///{path}")
    db.atomic_balance_update(Decimal(1))
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 5000
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    wal_file = path.with_name("atb.db-wal")
    assert wal_file.exists() and stat.S_IMODE(os.stat(wal_file).st_mode) == 0o600
    db.dispose()


def test_url_defaults_and_rewrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    db = DatabaseManager()
    assert db.url == "sqlite:///data/atb.db" and db.dialect == "sqlite"
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    db.atomic_balance_update(Decimal(1))
    assert DatabaseManager(f"sqlite:///{tmp_path / 'data' / 'atb.db'}").get_balance() == 1
    db.dispose()

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert DatabaseManager().url == f"sqlite:///{tmp_path / 'env.db'}"
    pg = DatabaseManager("postgresql://u:p@127.0.0.1:1/x")
    assert pg.engine.url.drivername == "postgresql+psycopg" and pg.dialect == "postgresql"
    assert pg.url == "postgresql://u:p@127.0.0.1:1/x"  # as given
    with pytest.raises(WALConfigError, match="sqlite or postgresql"):
        DatabaseManager("mysql://u:p@localhost/x")
    with pytest.raises(WALConfigError, match="not shown"):
        DatabaseManager("not a url at all")


def test_safe_url_masks_the_password() -> None:
    db = DatabaseManager("postgresql+psycopg://trader:hunter2@db.example:5432/atb")
    assert db.safe_url == "postgresql+psycopg://trader:***@db.example:5432/atb"
    assert "hunter2" not in repr(db)
    assert DatabaseManager("sqlite://").safe_url == "sqlite://"


@pytest.mark.parametrize("asked", [0, 3, 500, 501, 1200])
def test_balance_and_applied_is_one_answer_for_any_number_of_ids(
    db: DatabaseManager, asked: int
) -> None:
    """``get_balance_and_applied``: the balance and exactly the asked ids the ledger holds,
    for none, a few, one SQLite statement's worth (500), and more (the snapshot fallback)."""
    applied = [entry("atomic_balance_update", Decimal("0.5"), account="acct") for _ in range(7)]
    assert outcomes(db.apply(applied)) == ["applied"] * 7
    other = [entry("atomic_balance_update", Decimal("1"), account="other") for _ in range(2)]
    assert outcomes(db.apply(other)) == ["applied"] * 2
    unknown = [str(uuid.uuid4()) for _ in range(max(0, asked - 9))]
    ids = ([str(e.entry_id) for e in applied + other] + unknown)[:asked]
    balance, found = db.get_balance_and_applied("acct", ids)
    assert balance == Decimal("3.5")
    assert found == {i for i in ids if i in {str(e.entry_id) for e in applied + other}}
    assert db.get_balance_and_applied("never-used", ids) == (Decimal(0), found)


def test_ledger_question_is_answered_from_the_ledger_rows_only(db: DatabaseManager) -> None:
    """A ledger id the reads did not ask about never comes back, even one that shares a
    prefix or a separator with an asked id."""
    e = entry("atomic_balance_update", Decimal("2"), account="acct")
    assert outcomes(db.apply([e])) == ["applied"]
    eid = str(e.entry_id)
    asked = [eid[:8], f"{eid},x", eid.upper(), "", ","]
    assert db.get_balance_and_applied("acct", asked) == (Decimal("2"), set())
    assert db.applied_ids(asked) == set()
    assert db.get_balance_and_applied("acct", [*asked, eid]) == (Decimal("2"), {eid})
    with db.engine.begin() as conn:  # a ledger row that is not a uuid (the ids are joined)
        conn.execute(
            sa.insert(schema.wal_applied).values(
                entry_id="a,b", lsn=99, operation="x", applied_at=T0
            )
        )
    assert db.applied_ids(["a", "b", eid]) == {eid}
    assert db.applied_ids(["a,b", "a", eid]) == {"a,b", eid}
    assert db.get_balance_and_applied("acct", ["a", "b"]) == (Decimal("2"), set())
    assert db.get_balance_and_applied("acct", ["a,b", eid]) == (Decimal("2"), {"a,b", eid})


@pytest.mark.postgres
def test_pg_ledger_question_probes_the_primary_key(pg_db: str) -> None:
    """On PostgreSQL the ledger question is one index probe per asked id, never a scan of the
    whole ledger (the planner ran ``= ANY`` of a few hundred ids as a sequential scan, and a
    read during a drain paid it on every call)."""
    db = DatabaseManager(pg_db)
    try:
        db.get_balance("x")  # creates the schema
        ids = [str(uuid.uuid4()) for _ in range(20_000)]
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO wal_applied (entry_id, lsn, operation, applied_at) "
                "SELECT unnest(%s::text[]), generate_series(1, 20000), 'x', now()",
                (ids,),
            )
            conn.exec_driver_sql("ANALYZE wal_applied")
        with db.engine.connect() as conn:
            sql = "EXPLAIN " + pg_ledger_probe(conn.dialect)
            plan = "\n".join(str(r[0]) for r in conn.exec_driver_sql(sql, (ids[:600],)))
        assert "Index" in plan and "Seq Scan on wal_applied" not in plan, plan
        assert db.applied_ids([*ids[:600], "not-there"]) == set(ids[:600])
    finally:
        db.dispose()
