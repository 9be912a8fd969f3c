"""The database changes under a running process: a failover to a replica that lost the last
commits, or another database behind the same URL (a wrong volume, a fresh instance).

Before, the identity and the lost-commits check ran once per process (at ``start()``): a
mid-run failover to a lagging replica left the balance short with nothing flagged, and an
acknowledged ``close_position`` became a dead letter (its position lost), the position then
re-opened for good by the next start; another database behind the URL was read from (its
balance added to ours). Now every new connection is checked before it is used
(``Applier.check_new_connection``): the log's database, still holding the newest entry this
process applied; lost commits are applied again from the log before anything else.

Real parts: a SQLite file replaced under the URL, or a PostgreSQL database dropped and made
again from an earlier copy (``CREATE DATABASE ... TEMPLATE``) under the same name.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from trading_child import fast_config

from wal import DurableDatabaseManager
from wal.db import DatabaseManager
from wal.errors import WALDatabaseError


class Server:
    """The database behind ``url``: copied now, or replaced by a copy (same URL)."""

    def __init__(self, url: str, tmp: Path, pg: Any) -> None:
        self.url, self.tmp, self.pg = url, tmp, pg
        self.made: list[str] = []

    @property
    def name(self) -> str:
        return str(make_url(self.url).database)

    def copy(self, db: DatabaseManager) -> str:
        db.dispose()
        if self.pg is None:
            path = self.tmp / f"copy-{uuid.uuid4().hex[:8]}.db"
            src, dst = sqlite3.connect(self.name), sqlite3.connect(path)
            try:
                src.backup(dst)  # the committed state
            finally:
                src.close()
                dst.close()
            return str(path)
        copy = f"copy_{uuid.uuid4().hex[:12]}"
        self._create(copy, self.name)
        return copy

    def replace_with(self, db: DatabaseManager, handle: str) -> None:
        """The URL now serves ``handle``'s database (a failover, a swap)."""
        db.dispose()
        if self.pg is None:
            for suffix in ("", "-wal", "-shm"):
                Path(self.name + suffix).unlink(missing_ok=True)
            shutil.copyfile(handle, self.name)
            return
        self.pg.drop_database(self.name)
        self._create(self.name, handle)

    def _create(self, name: str, template: str) -> None:
        with self.pg.admin_connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        self.made.append(name)

    def drop_copies(self) -> None:
        for name in self.made:
            if name != self.name:
                self.pg.drop_database(name)


@pytest.fixture
def server(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    pg = None if db_url.startswith("sqlite") else request.getfixturevalue("pg_url")
    s = Server(db_url, tmp_path, pg)
    yield s
    if pg is not None:
        s.drop_copies()


def open_ddb(url: str, wal_dir: Path) -> DurableDatabaseManager:
    # applied inline: every call below is in the database when it returns (no sync thread
    # racing the swap); the checks are the same applying behind
    config = fast_config(wal_dir, url, apply_mode="inline", max_retries=2)
    ddb = DurableDatabaseManager(DatabaseManager(url), config=config)
    ddb.start()
    return ddb


def test_a_failover_to_a_replica_that_lost_commits_is_caught_and_repaired_mid_run(
    db_url: str, server: Server, tmp_path: Path
) -> None:
    ddb = open_ddb(db_url, tmp_path / "wal")
    try:
        ddb.atomic_balance_update(Decimal(500), reason="deposit")
        replica = server.copy(ddb.db)  # the replica stops here
        pid = ddb.log_position(
            symbol="BTCUSDT", side="long", quantity=Decimal("0.1"), entry_price=Decimal(50_000)
        )
        for _ in range(5):
            ddb.atomic_balance_update(Decimal(10), reason="fill")
        assert ddb.drain(timeout=10) == 0
        server.replace_with(ddb.db, replica)  # failover: the last commits are gone

        # acknowledged after the failover: the close of the position the replica lost
        ddb.close_position(position_id=pid, exit_price=Decimal(51_000), pnl=Decimal(100))
        ddb.atomic_balance_update(Decimal(1), reason="fee refund")
        assert ddb.get_balance() == Decimal(551)  # exact at once, nothing missing
        assert ddb.get_open_positions() == []
        assert ddb.drain(timeout=10) == 0
        status = ddb.get_wal_status()
        assert status["failed"] == 0  # the close was not a dead letter
        assert ddb.manager is not None and ddb.manager.reapplied == 6  # the open + 5 fills
        assert Decimal(ddb.db.get_balance()) == Decimal(551)
        assert ddb.db.get_open_positions() == []
    finally:
        ddb.stop()
    again = open_ddb(db_url, tmp_path / "wal")  # a restart finds nothing to repair
    try:
        assert again.get_balance() == Decimal(551)
        assert again.get_open_positions() == []
        assert again.manager is not None and again.manager.reapplied == 0
    finally:
        again.stop()


def test_another_database_behind_the_url_mid_run_is_never_applied_to_nor_read(
    db_url: str, server: Server, tmp_path: Path
) -> None:
    ddb = open_ddb(db_url, tmp_path / "wal")
    try:
        ddb.atomic_balance_update(Decimal(100), reason="mine")
        # another database, with someone else's money (and no identity of this log's)
        if server.pg is None:
            foreign = str(tmp_path / "other.db")
            foreign_url = f"sqlite:///{foreign}"
        else:
            foreign = server.pg.create_database()
            server.made.append(foreign)
            foreign_url = server.pg.database_url(foreign)
        theirs = DatabaseManager(foreign_url)
        theirs.atomic_balance_update(Decimal(777), reason="someone else's")
        theirs.dispose()
        server.replace_with(ddb.db, foreign)

        ddb.atomic_balance_update(Decimal(5), reason="mine")  # durable in our log all the same
        try:
            seen = ddb.get_balance()
        except WALDatabaseError as exc:
            assert "this log belongs to" in str(exc) or "unknown" in str(exc)
        else:
            assert seen == Decimal(105)  # ours (kept + pending), never theirs (782)
        assert ddb.drain(timeout=1) == 1  # not applied there
    finally:
        ddb.stop()
    now = DatabaseManager(db_url)
    try:
        assert Decimal(now.get_balance()) == Decimal(777)  # theirs, untouched
    finally:
        now.dispose()
