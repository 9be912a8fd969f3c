"""The lifecycle of ``DurableDatabaseManager`` (issue 10): drain and wait, stop with a drain,
no connection left after ``stop()``, the database URL given once, the asyncio face."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from trading_child import fast_config, make_outage

from wal import WALConfigError
from wal.config import WALConfig
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

D = Decimal


def test_from_config_builds_the_manager_from_the_config_url(db_url: str, tmp_path: Path) -> None:
    config = fast_config(tmp_path / "wal", db_url)
    ddb = DurableDatabaseManager.from_config(config)
    try:
        assert isinstance(ddb.db, DatabaseManager) and ddb.db.url == db_url
        ddb.atomic_balance_update(D("10"), idempotency_key="k1")
        assert ddb.get_balance() == D("10")
        assert ddb.find_by_idempotency_key("k1") is not None
        assert ddb.find_by_idempotency_key("never") is None
        assert ddb.drain(timeout=30) == 0  # applied behind (WAL_APPLY=behind): wait for it
    finally:
        assert ddb.stop() == 0
    assert ddb.db.engine.pool.checkedout() == 0  # a stopped engine holds no connection


def test_a_manager_on_another_database_than_the_config_is_an_error(tmp_path: Path) -> None:
    db = DatabaseManager(f"sqlite:///{tmp_path / 'one.db'}")
    config = fast_config(tmp_path / "wal", f"sqlite:///{tmp_path / 'two.db'}")
    with pytest.raises(WALConfigError, match="database_url"):
        DurableDatabaseManager(db, config=config)
    db.dispose()


def test_from_env_reads_the_mapping_it_is_given(tmp_path: Path) -> None:
    env = {"WAL_DIR": str(tmp_path / "w"), "DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    cfg = WALConfig.from_env(env)
    assert cfg.directory == tmp_path / "w" and cfg.database_url == env["DATABASE_URL"]


def test_drain_waits_for_the_backlog_and_stop_can_drain(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    outage = make_outage(db_url, request)
    db = outage.attach(DatabaseManager(db_url))
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url))
    try:
        ddb.atomic_balance_update(D("1"))
        assert ddb.get_balance() == D("1")
        assert ddb.drain(timeout=30) == 0  # applied behind: in the database before the outage
        outage.begin()
        for _ in range(5):
            ddb.atomic_balance_update(D("2"))
        assert ddb.drain(timeout=0) == 5  # one pass, the database is down: all still pending
        assert ddb.get_balance() == D("11")  # the kept balance, exactly
        outage.end()
        assert ddb.drain(timeout=60) == 0
        assert db.get_balance() == D("11")
        outage.begin()
        ddb.atomic_balance_update(D("3"))
        outage.end()
    finally:
        outage.close()
    assert ddb.stop(drain=True, timeout=60) == 0
    assert db.get_balance() == D("14")
    db.dispose()


def test_the_asyncio_face_keeps_the_guarantees(db_url: str, tmp_path: Path) -> None:
    ddb = DurableDatabaseManager.from_config(fast_config(tmp_path / "wal", db_url))

    async def trade() -> None:
        await asyncio.gather(
            *(
                ddb.atomic_balance_update_async(D("1.5"), idempotency_key=f"a{i % 10}")
                for i in range(20)
            )
        )
        pid = await ddb.log_position_async(
            symbol="SOLUSDT", side="long", quantity=D("1"), entry_price=D("150")
        )
        assert [p["position_id"] for p in await ddb.get_open_positions_async()] == [pid]
        assert await ddb.get_balance_async() == D("15")  # ten keys, each counted once
        assert await ddb.drain_async(30) == 0

    try:
        asyncio.run(trade())
    finally:
        ddb.stop()
