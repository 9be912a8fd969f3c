"""The wrong database is never read as the right one (issue 20, item 6).

A log that belongs to database A (``database.json`` records A's id) opened with the engine
pointed at database B: nothing is applied to B (the apply refuses, as before), and now the
reads refuse too, with the same "this log belongs to ..." error: B's figures plus A's pending
entries are the balance of nobody. ``atomic_balance_update`` stays durable and returns None
(the balance is unknown), never B's balance plus the update (5 instead of 105).

Real parts: a log directory, database A (a SQLite file or the PostgreSQL fixture), database B
(another SQLite file).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from trading_child import fast_config

from wal import WALEntryStatus
from wal.db import DatabaseManager
from wal.errors import WALDatabaseError
from wal.sync.durable import DurableDatabaseManager


def test_reads_refuse_while_the_database_is_not_the_logs(db_url: str, tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    a = DatabaseManager(db_url)
    with DurableDatabaseManager(a, config=fast_config(wal_dir, db_url)) as ddb:
        assert ddb.atomic_balance_update(Decimal(100), account="acct") == Decimal(100)
        assert ddb.drain(timeout=10) == 0
    a.dispose()

    url_b = f"sqlite:///{tmp_path / 'b.db'}"
    b = DatabaseManager(url_b)
    b.database_id(create=True)  # a database of its own
    ddb = DurableDatabaseManager(b, config=fast_config(wal_dir, url_b))
    assert ddb.storage is not None
    try:
        ddb.start()
        got = ddb.atomic_balance_update(Decimal(5), account="acct")
        assert got is None  # unknown: never 5 (B's 0 plus the pending entry)
        with pytest.raises(WALDatabaseError, match="this log belongs to") as info:
            ddb.get_balance("acct")
        assert not info.value.transient  # no kept state answers either
        with pytest.raises(WALDatabaseError, match="this log belongs to"):
            ddb.get_open_positions()
        assert b.get_balance("acct") == Decimal(0)  # nothing reached B
        assert ddb.storage.count(WALEntryStatus.PENDING) == 1  # the update is durable
    finally:
        ddb.stop()
        b.dispose()

    # back on A: the pending update is applied there, and reads answer again
    a = DatabaseManager(db_url)
    with DurableDatabaseManager(a, config=fast_config(wal_dir, db_url)) as ddb:
        assert ddb.get_balance("acct") == Decimal(105)
        assert ddb.drain(timeout=10) == 0
        assert ddb.get_balance("acct") == Decimal(105)
    assert a.get_balance("acct") == Decimal(105)
    a.dispose()
