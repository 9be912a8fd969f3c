"""The ambiguous commit, for real (PostgreSQL): COMMIT reaches the server, the reply does not.

A TCP proxy (``tcp_proxy.TCPProxy``) sits between the manager and a real PostgreSQL server.
Armed, it forwards the next COMMIT, reads the server's reply (so the transaction certainly
committed) and cuts the connection. The manager sees a lost connection (a transient error)
and keeps the entries pending; the replay finds them in the ``wal_applied`` ledger and does
not apply them again. Reads in between skip them too. The truth is checked through a second,
direct connection that bypasses the proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from pg import PgServer
from sqlalchemy.engine import make_url
from tcp_proxy import TCPProxy
from trading_child import (
    Model,
    db_state,
    fast_config,
    ledger_count,
    make_plan,
    open_positions_view,
    perform,
)

from wal import WALEntryStatus
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

pytestmark = pytest.mark.postgres
D = Decimal


@pytest.fixture
def proxy(pg_url: PgServer) -> Iterator[TCPProxy]:
    with TCPProxy((pg_url.host, pg_url.port)) as p:
        yield p


@pytest.fixture
def direct(pg_db: str) -> Iterator[DatabaseManager]:
    """The database, reached without the proxy: what really committed."""
    db = DatabaseManager(pg_db)
    yield db
    db.dispose()


@pytest.fixture
def ddb(pg_db: str, proxy: TCPProxy, tmp_path: Path) -> Iterator[DurableDatabaseManager]:
    url = make_url(pg_db).set(host="127.0.0.1", port=proxy.port)
    through = url.render_as_string(hide_password=False)
    db = DatabaseManager(through)
    # the lost COMMIT reply is met by the call's own apply: WAL_APPLY=inline
    config = fast_config(tmp_path / "wal", through, apply_mode="inline")
    d = DurableDatabaseManager(db, config=config)
    yield d
    d.stop()
    db.dispose()


def test_a_lost_commit_reply_is_not_applied_twice(
    ddb: DurableDatabaseManager, proxy: TCPProxy, direct: DatabaseManager
) -> None:
    assert ddb.manager is not None and ddb.storage is not None
    assert ddb.atomic_balance_update(D("100"), account="main") == D("100")
    proxy.drop_next_commit()
    ddb.atomic_balance_update(D("5"), account="main", idempotency_key="fee-rebate-1")
    assert proxy.fired.is_set()
    (entry,) = [e for e in ddb.storage.iter_entries() if e.idempotency_key == "fee-rebate-1"]
    assert entry.status is WALEntryStatus.PENDING  # the manager does not know it committed
    assert direct.get_balance("main") == D("105")  # but it did
    assert direct.applied_ids([entry.entry_id]) == {str(entry.entry_id)}

    # a read now: database 105 + the pending +5, which the ledger says is already in it
    assert ddb.get_balance("main") == D("105")
    r = ddb.manager.force_sync()
    assert (r.applied, r.duplicates, r.pending) == (0, 1, 0)
    assert ddb.storage.get_entry(entry.entry_id).status is WALEntryStatus.COMPLETED
    assert direct.get_balance("main") == ddb.get_balance("main") == D("105")
    assert db_state(direct)["deltas"] == {"main": [D("100"), D("5")]}
    assert ledger_count(direct) == 2


@pytest.mark.parametrize("forward", [True, False], ids=["committed", "rolled-back"])
def test_a_batch_replayed_after_a_lost_commit_equals_the_model(
    ddb: DurableDatabaseManager,
    proxy: TCPProxy,
    direct: DatabaseManager,
    pg_url: PgServer,
    forward: bool,
) -> None:
    """A batch of 20 entries (logged during an outage) is applied in one transaction whose
    COMMIT's reply is lost (``committed``), or whose COMMIT never arrives (``rolled-back``).
    Either way the replay leaves the database equal to the model."""
    assert ddb.manager is not None
    plan = make_plan(seed=99, n=30)
    model = Model()
    for op in plan[:10]:
        perform(ddb, op)
        model.apply(op)
    assert ddb.get_balance("main") == model.balance("main")
    assert ddb.get_balance("spot") == model.balance("spot")
    assert open_positions_view(ddb.get_open_positions()) == model.open_positions()

    pg_url.stop_immediate()
    try:
        for op in plan[10:]:
            perform(ddb, op)
            model.apply(op)
    finally:
        pg_url.start()
    proxy.drop_next_commit(forward=forward)
    r = ddb.manager.force_sync()
    assert proxy.fired.is_set()
    assert r.error is not None and r.pending == 20 and r.applied == 0
    committed = db_state(direct) == model.state()
    assert committed is forward

    # reads between the lost COMMIT and the replay count every entry once
    for account in ("main", "spot"):
        assert ddb.get_balance(account) == model.balance(account)
    assert open_positions_view(ddb.get_open_positions()) == model.open_positions()

    r = ddb.manager.force_sync()
    assert r.pending == 0 and r.failed == 0
    assert (r.applied, r.duplicates) == ((0, 20) if forward else (20, 0))
    assert db_state(direct) == model.state()
    assert ledger_count(direct) == 30
