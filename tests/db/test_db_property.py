"""Hypothesis against real databases: any sequence of operations, outages, restarts and
forced syncs leaves the database equal to the model.

Each example trades through ``DurableDatabaseManager`` on its own log and its own ids and
accounts (a prefix) in the test's database. Actions: a critical operation (balance update,
trade, position open, update or close); a read (the balance of both accounts and the open
positions must be the model's; only when the database is down and nothing was read since the
last restart may they raise ``WALDatabaseError`` instead); the start or end of a real outage
(``trading_child.Outage``); a restart (stop the manager, close the log, open both again); a
forced sync. At the end the outage is over, the log drains, and the database equals the
model, with one ledger row per log entry and every entry COMPLETED.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trading_child import (
    Model,
    Outage,
    PlanBuilder,
    db_state,
    fast_config,
    ledger_count,
    make_outage,
    open_positions_view,
    perform,
)

from wal import WALDatabaseError, WALEntryStatus
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

KINDS = ("balance", "trade", "open", "update", "close")
_op = st.tuples(
    st.just("op"), st.sampled_from(KINDS), st.integers(0, 7), st.integers(-(10**6), 10**6)
)
ACTIONS = st.lists(
    st.one_of(
        _op,
        _op,
        _op,
        st.just(("read",)),
        st.just(("outage",)),
        st.just(("restart",)),
        st.just(("sync",)),
    ),
    min_size=1,
    max_size=18,
)


@pytest.fixture
def outage(db_url: str, request: pytest.FixtureRequest) -> Iterator[Outage]:
    o = make_outage(db_url, request)
    yield o
    o.close()


def _build(b: PlanBuilder, kind: str, which: int, amount: int) -> Any:
    size = Decimal(abs(amount) % 10**5 + 1).scaleb(-4)
    price = Decimal(abs(amount) % 10**6 + 100).scaleb(-2)
    if kind == "balance":
        return b.balance(Decimal(amount).scaleb(-3), which)
    if kind == "trade":
        return b.trade(size, price, Decimal(amount).scaleb(-2))
    if kind == "open" or not b.open:
        return b.open_position(size, price)
    if kind == "update":
        return b.update_position(which, price)
    return b.close_position(which, price, Decimal(amount).scaleb(-2))


@settings(
    max_examples=18,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=ACTIONS)
def test_any_history_of_faults_ends_with_the_database_equal_to_the_model(
    db_url: str, outage: Outage, tmp_path: Path, actions: list[tuple[Any, ...]]
) -> None:
    k = next(_examples)
    b = PlanBuilder(prefix=f"x{k}-")
    model = Model()
    db = outage.attach(DatabaseManager(db_url))
    config = fast_config(tmp_path / f"wal-{k}", db_url)
    ddb = DurableDatabaseManager(db, config=config)
    ddb.start()
    read_since_start = False
    try:
        for action in actions:
            if action[0] == "op":
                op = _build(b, *action[1:])
                perform(ddb, op)  # never raises for the database's sake
                model.apply(op)
            elif action[0] == "read":
                # exact, or (database down, no read since the restart) unknown: never wrong
                for account in b.accounts:
                    try:
                        assert ddb.get_balance(account) == model.balance(account)
                    except WALDatabaseError:
                        assert outage.active and not read_since_start
                try:
                    rows = ddb.get_open_positions()
                except WALDatabaseError:
                    assert outage.active and not read_since_start
                else:
                    mine = [r for r in rows if r["position_id"].startswith(b.prefix)]
                    assert open_positions_view(mine) == model.open_positions()
                read_since_start = read_since_start or not outage.active
            elif action[0] == "outage":
                (outage.end if outage.active else outage.begin)()
            elif action[0] == "restart":
                ddb.stop()
                ddb = DurableDatabaseManager(db, config=config)
                ddb.start()
                read_since_start = False
            else:
                ddb.force_sync()
        outage.close()
        assert ddb.manager is not None and ddb.storage is not None
        for _ in range(20):
            if ddb.manager.force_sync().pending == 0:
                break
        entries = list(ddb.storage.iter_entries())
    finally:
        outage.close()
        ddb.stop()
    try:
        assert db_state(db, b.prefix) == model.state()
        assert len(entries) == len(b.ops)
        assert {e.status for e in entries} <= {WALEntryStatus.COMPLETED}
        assert ledger_count(db, [str(e.entry_id) for e in entries]) == len(entries)
    finally:
        outage.dbs.remove(db)
        db.dispose()


_examples = itertools.count()
