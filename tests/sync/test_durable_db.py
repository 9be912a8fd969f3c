"""``DurableDatabaseManager`` on real databases (SQLite and PostgreSQL).

Critical calls go through the log, others pass straight through; ids are made before an
operation is logged; reads include what the log still holds while the database is really down
(``trading_child.Outage``); a database manager of the user's own without ``apply`` works
at-least-once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

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

from wal import WALDatabaseError, WALEntry, WALEntryStatus
from wal.config import WALConfig
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

D = Decimal


@dataclass
class Rig:
    url: str
    outage: Outage
    directory: Path
    opened: list[DurableDatabaseManager] = field(default_factory=list)
    dbs: list[Any] = field(default_factory=list)

    def db(self, cls: Any = DatabaseManager) -> Any:
        db = cls(self.url)
        self.dbs.append(db)
        inner = getattr(db, "inner", db)
        self.outage.attach(inner)
        return db

    def durable(self, db: Any, **overrides: Any) -> DurableDatabaseManager:
        # these tests read the database right after a call: the inline apply (WAL_APPLY)
        cfg = fast_config(self.directory, self.url, **{"apply_mode": "inline", **overrides})
        ddb = DurableDatabaseManager(db, config=cfg)
        self.opened.append(ddb)
        return ddb

    def entries(self, ddb: DurableDatabaseManager) -> list[WALEntry]:
        assert ddb.storage is not None
        return list(ddb.storage.iter_entries())


@pytest.fixture
def rig(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(db_url, make_outage(db_url, request), tmp_path / "wal")
    yield r
    r.outage.close()
    for ddb in r.opened:
        ddb.stop()
    for db in r.dbs:
        getattr(db, "inner", db).dispose()


def test_critical_calls_are_logged_and_the_others_pass_through(rig: Rig) -> None:
    db = rig.db()
    ddb = rig.durable(db)
    ddb.create_trading_session(strategy="s", session_id="s1")
    ddb.atomic_balance_update(D("100"), reason="deposit")
    pid = ddb.log_position(symbol="SOLUSDT", side="long", quantity=D("2"), entry_price=D("150"))
    ddb.update_position(pid, stop_loss=D("140"))  # positional id: bound to its name
    ddb.log_trade(symbol="SOLUSDT", side="buy", quantity=D("2"), price=D("150"))
    ddb.close_position(pid, exit_price=D("155"), pnl=D("10"))
    ddb.end_trading_session("s1", final_balance=D("110"))
    entries = rig.entries(ddb)
    assert [e.operation for e in entries] == [
        "create_trading_session",
        "atomic_balance_update",
        "log_position",
        "update_position",
        "log_trade",
        "close_position",
        "end_trading_session",
    ]
    assert all(e.args == () for e in entries)  # keyword arguments only
    assert entries[3].kwargs["position_id"] == pid
    assert {e.status for e in entries} == {WALEntryStatus.COMPLETED}

    ddb.record_metric("latency_ms", 1.5)  # non-critical: straight to the database
    assert ddb.get_metrics("latency_ms")[0]["value"] == 1.5
    assert ddb.dialect == db.dialect
    assert len(rig.entries(ddb)) == 7  # nothing more was logged
    assert ledger_count(db) == 7


def test_ids_are_made_before_the_operation_is_logged(rig: Rig) -> None:
    db = rig.db()
    ddb = rig.durable(db)
    ddb.atomic_balance_update(D("1"))
    assert ddb.get_balance() == D("1")
    rig.outage.begin()
    # while the database is down, the position gets its id from the wrapper, and the next
    # operation can refer to it
    pid = ddb.log_position(symbol="ETHUSDT", side="long", quantity=D("1"), entry_price=D("3000"))
    tid = ddb.log_trade(symbol="ETHUSDT", side="buy", quantity=D("1"), price=D("3000"))
    ddb.update_position(position_id=pid, current_price=D("3100"))
    logged = rig.entries(ddb)
    assert logged[1].kwargs["position_id"] == pid and logged[2].kwargs["trade_id"] == tid
    assert logged[1].kwargs["opened_at"] is not None  # the time of the event, not of the replay
    assert all(e.status is WALEntryStatus.PENDING for e in logged[1:])
    rig.outage.end()
    assert ddb.manager is not None
    assert ddb.manager.force_sync().pending == 0
    assert [p["position_id"] for p in db.get_open_positions()] == [pid]
    assert db.get_open_positions()[0]["current_price"] == D("3100")
    assert [t["trade_id"] for t in db.get_trades()] == [tid]


def test_the_balance_context_manager_logs_the_net_delta_once(rig: Rig) -> None:
    db = rig.db()
    ddb = rig.durable(db)
    ddb.atomic_balance_update(D("50"), account="spot")
    with ddb.atomic_balance_update(account="spot") as t:
        assert t.balance == D("50")
        t.add(D("-1.5"), reason="fee")
        assert t.add(D("0.25"), reason="rebate") == D("48.75")
    assert db.get_balance("spot") == D("48.75")
    last = rig.entries(ddb)[-1]
    assert (last.kwargs["delta"], last.kwargs["reason"]) == (D("-1.25"), "fee; rebate")
    n = len(rig.entries(ddb))

    with (
        pytest.raises(RuntimeError, match="strategy changed its mind"),
        ddb.atomic_balance_update(account="spot") as t,
    ):
        t.add(D("-40"))
        raise RuntimeError("strategy changed its mind")
    assert len(rig.entries(ddb)) == n  # nothing logged
    assert db.get_balance("spot") == ddb.get_balance("spot") == D("48.75")
    with pytest.raises(TypeError), ddb.atomic_balance_update(account="spot") as t:
        t.add(1.5)  # a float: refused before anything is logged
    assert len(rig.entries(ddb)) == n


def test_wal_disabled_is_a_plain_pass_through(rig: Rig) -> None:
    db = rig.db()
    cfg = WALConfig.from_env(
        {"WAL_ENABLED": "false"}, directory=rig.directory, database_url=rig.url
    )
    ddb = DurableDatabaseManager(db, config=cfg)
    rig.opened.append(ddb)
    ddb.start()
    assert ddb.atomic_balance_update(D("7")) == D("7")
    tid = ddb.log_trade(symbol="BTCUSDT", side="buy", quantity=D("1"), price=D("1"))
    assert [t["trade_id"] for t in db.get_trades()] == [tid]
    assert ddb.get_balance() == D("7")
    assert ddb.get_wal_status() == {"enabled": False}
    assert ddb.force_sync() == {"enabled": False}
    assert not rig.directory.exists()  # no log was created
    assert ledger_count(db) == 0


def test_reads_include_the_pending_entries_while_the_database_is_down(rig: Rig) -> None:
    db = rig.db()
    ddb = rig.durable(db)
    ddb.start()
    plan = make_plan(seed=11, n=60)
    model = Model()
    for op in plan[:20]:
        perform(ddb, op)
        model.apply(op)
    assert ddb.get_balance("main") == model.balance("main")  # a successful read: the base
    assert open_positions_view(ddb.get_open_positions()) == model.open_positions()
    assert ddb.get_balance("spot") == model.balance("spot")

    rig.outage.begin()
    for op in plan[20:]:
        perform(ddb, op)
        model.apply(op)
        assert ddb.get_balance("main") == model.balance("main")
        assert ddb.get_balance("spot") == model.balance("spot")
        assert open_positions_view(ddb.get_open_positions()) == model.open_positions()
    assert ddb.get_wal_status()["pending"] == 40
    rig.outage.end()
    wait_for(lambda: ddb.get_wal_status()["pending"] == 0, "the log to drain")
    assert db_state(db) == model.state()
    assert ddb.get_balance("main") == db.get_balance("main") == model.balance("main")


def test_the_balance_is_unknown_before_any_successful_read(rig: Rig) -> None:
    db = rig.db()
    rig.outage.begin()
    ddb = rig.durable(db)
    with pytest.raises(WALDatabaseError, match="unknown") as info:
        ddb.get_balance()
    assert info.value.transient
    with pytest.raises(WALDatabaseError, match="unknown"):
        ddb.get_open_positions()
    # logging still works: the update is durable; the balance it leads to is unknown (None),
    # and the call does not raise (an exception would invite a retry that doubles it)
    assert ddb.atomic_balance_update(D("5")) is None
    assert ddb.get_wal_status()["pending"] == 1
    with pytest.raises(WALDatabaseError):
        ddb.get_balance()
    rig.outage.end()
    assert ddb.get_balance() == D("5")  # the database (0, nothing applied yet) + pending 5


def test_open_positions_include_a_position_logged_during_an_outage_before_the_drain(
    rig: Rig,
) -> None:
    """The positions version of the test above: the outage ends, nothing has drained the log
    yet (the manager is not started), and the read (database + pending) must list what the
    database has not seen: a position opened during the outage, and not one closed then."""
    db = rig.db()
    ddb = rig.durable(db)
    held = ddb.log_position(
        symbol="ETHUSDT", side="long", quantity=D("2"), entry_price=D("3000")
    )  # the database is up: applied at once
    rig.outage.begin()
    opened = ddb.log_position(
        symbol="BTCUSDT", side="short", quantity=D("0.5"), entry_price=D("50000")
    )
    ddb.update_position(opened, stop_loss=D("52000"))
    ddb.close_position(held, exit_price=D("3100"))
    assert ddb.get_wal_status()["pending"] == 3
    rig.outage.end()

    assert [r["position_id"] for r in db.get_open_positions()] == [held]  # not drained yet
    rows = ddb.get_open_positions()
    assert [str(r["position_id"]) for r in rows] == [opened]
    assert (rows[0]["symbol"], D(str(rows[0]["stop_loss"]))) == ("BTCUSDT", D("52000"))
    assert ddb.get_wal_status()["pending"] == 3  # the read applied nothing

    ddb.start()
    wait_for(lambda: ddb.get_wal_status()["pending"] == 0, "the log to drain")
    assert [str(r["position_id"]) for r in db.get_open_positions()] == [opened]
    assert [str(r["position_id"]) for r in ddb.get_open_positions()] == [opened]


class LegacyDatabaseManager:
    """A user's own database manager: the critical methods, no ``apply``, no ledger.

    It stores through the reference manager's tables, but each call is its own transaction
    and nothing records which log entry it came from.
    """

    def __init__(self, url: str) -> None:
        self.inner = DatabaseManager(url)
        self.calls: list[str] = []

    def atomic_balance_update(
        self, delta: Decimal, *, reason: str = "", account: str = "default"
    ) -> Decimal:
        self.calls.append("atomic_balance_update")
        return self.inner.atomic_balance_update(delta, reason=reason, account=account)

    def log_trade(self, **kwargs: Any) -> str:
        self.calls.append("log_trade")
        return self.inner.log_trade(**kwargs)

    def log_position(self, **kwargs: Any) -> str:
        self.calls.append("log_position")
        return self.inner.log_position(**kwargs)

    def update_position(self, position_id: str, **kwargs: Any) -> None:
        self.calls.append("update_position")
        self.inner.update_position(position_id, **kwargs)

    def close_position(self, position_id: str, **kwargs: Any) -> None:
        self.calls.append("close_position")
        self.inner.close_position(position_id, **kwargs)

    def create_trading_session(self, **kwargs: Any) -> str:
        self.calls.append("create_trading_session")
        return self.inner.create_trading_session(**kwargs)

    def end_trading_session(self, session_id: str, **kwargs: Any) -> None:
        self.calls.append("end_trading_session")
        self.inner.end_trading_session(session_id, **kwargs)

    def get_balance(self, account: str = "default") -> Decimal:
        return self.inner.get_balance(account)

    def get_open_positions(self) -> list[dict[str, Any]]:
        return self.inner.get_open_positions()


def test_a_manager_without_apply_works_at_least_once(rig: Rig) -> None:
    legacy = rig.db(LegacyDatabaseManager)
    ddb = rig.durable(legacy)
    assert ddb.manager is not None and not ddb.manager.exactly_once
    ddb.start()
    plan = make_plan(seed=5, n=40)
    model = Model()
    for op in plan[:15]:
        perform(ddb, op)
        model.apply(op)
    assert ddb.get_balance("main") == model.balance("main")
    assert open_positions_view(ddb.get_open_positions()) == model.open_positions()
    rig.outage.begin()
    for op in plan[15:]:
        perform(ddb, op)
        model.apply(op)
        assert ddb.get_balance("main") == model.balance("main")
    assert open_positions_view(ddb.get_open_positions()) == model.open_positions()
    rig.outage.end()
    wait_for(lambda: ddb.get_wal_status()["pending"] == 0, "the log to drain")
    # no crash happened, so at-least-once delivered each operation exactly once
    assert db_state(legacy.inner) == model.state()
    assert len(legacy.calls) >= len(plan)
    assert ledger_count(legacy.inner) == 0  # no ledger: nothing could have skipped a replay


class PausedReadDB(DatabaseManager):
    """The reference manager whose next ``get_balance`` waits at the database until told to go
    on (to line up a write with a read deterministically)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.armed = False
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def _pause(self) -> None:
        if self.armed:
            self.armed = False
            self.reading.set()
            assert self.go_on.wait(15)

    def get_balance(self, account: str = "default") -> Decimal:
        value = super().get_balance(account)
        self._pause()
        return value

    def get_balance_and_applied(
        self, account: str, entry_ids: Iterable[uuid.UUID | str]
    ) -> tuple[Decimal, set[str]]:
        answer = super().get_balance_and_applied(account, entry_ids)  # the wrapper's read
        self._pause()
        return answer


def test_a_write_during_a_read_is_not_lost_from_the_kept_balance(rig: Rig) -> None:
    db = rig.db(PausedReadDB)
    ddb = rig.durable(db)
    ddb.atomic_balance_update(D("100"), account="main")
    assert ddb.get_balance("main") == D("100")
    assert ddb.manager is not None
    written = threading.Event()
    ddb.manager.add_write_hook(lambda e: written.set())  # runs after the overlay's hook

    db.armed = True
    reader = threading.Thread(target=ddb.get_balance, args=("main",))
    reader.start()
    assert db.reading.wait(15)  # the read has the database's answer (100) in hand
    writer = threading.Thread(
        target=ddb.atomic_balance_update, args=(D("5"),), kwargs={"account": "main"}
    )
    writer.start()  # logged; its apply waits for the reader to finish
    assert written.wait(15)
    db.go_on.set()
    reader.join()
    writer.join()
    assert db.get_balance("main") == D("105")
    rig.outage.begin()
    assert ddb.get_balance("main") == D("105")  # the kept balance has the +5
