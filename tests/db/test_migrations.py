"""The schema's Alembic migrations: a database made by the code from before migrations
(today's tables, with data) upgraded equals a fresh one, on SQLite and PostgreSQL; the
audit triggers are part of them; the engine refuses a schema behind its code."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pg import PgServer

from cli.main import atb
from wal.config import WALConfig
from wal.db import DatabaseManager, migrate
from wal.db.engine import make_engine
from wal.db.migrations.versions.v0001_baseline import TABLES as BASELINE
from wal.db.schema import metadata
from wal.db.versioning import HEAD, REVISIONS
from wal.errors import WALDatabaseError, WALSchemaError
from wal.sync.durable import DurableDatabaseManager

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER_INDEXES = ("ix_orders_account_created",)  # on baseline tables, by revision 0004
# on baseline tables: by revision 0005, by revision 0006
LATER_COLUMNS = (("order_events", "content"), ("orders", "oco_group"))


def make_old_database(url: str) -> None:
    """A database as main made it before migrations: its tables (create_all, triggers
    included) and some data, no revision."""
    engine, _ = make_engine(url)
    try:
        metadata.create_all(engine, tables=[metadata.tables[n] for n in BASELINE])
        with engine.begin() as c:  # indexes later revisions added were not there before them
            for index in LATER_INDEXES:
                c.exec_driver_sql(f"DROP INDEX IF EXISTS {index}")
            for table, column in LATER_COLUMNS:  # columns later revisions added, likewise
                c.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        with engine.begin() as c:
            t = metadata.tables
            c.execute(
                sa.insert(t["balances"]).values(
                    account="default", balance=Decimal("1234.5"), updated_at=NOW
                )
            )
            c.execute(
                sa.insert(t["wal_database_id"]).values(key=1, database_id="db-1", created_at=NOW)
            )
            c.execute(
                sa.insert(t["wal_applied"]).values(
                    entry_id="e1", lsn=7, operation="x", applied_at=NOW
                )
            )
            c.execute(
                sa.insert(t["orders"]).values(
                    client_order_id="c1",
                    symbol="AAPL",
                    side="buy",
                    quantity=Decimal(1),
                    order_type="market",
                    time_in_force="day",
                    account="default",
                    state="pending",
                    filled_quantity=Decimal(0),
                    last_seq=1,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
            c.execute(
                sa.insert(t["order_events"]).values(
                    client_order_id="c1",
                    seq=1,
                    kind="created",
                    state="pending",
                    at=NOW,
                    audit_seq=1,
                    prev_hash="0" * 64,
                    hash="a" * 64,
                )
            )
    finally:
        engine.dispose()


def describe(url: str) -> dict[str, Any]:
    """Tables, columns (type, nullability), keys, indexes, unique constraints, triggers."""
    engine, dialect = make_engine(url)
    try:
        with engine.connect() as c:
            insp = sa.inspect(c)
            out: dict[str, Any] = {}
            for table in sorted(insp.get_table_names()):
                out[table] = {
                    "columns": [
                        (col["name"], str(col["type"]), col["nullable"])
                        for col in insp.get_columns(table)
                    ],
                    "pk": insp.get_pk_constraint(table)["constrained_columns"],
                    "indexes": sorted(
                        (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                        for i in insp.get_indexes(table)
                    ),
                    "unique": sorted(
                        tuple(u["column_names"]) for u in insp.get_unique_constraints(table)
                    ),
                }
            if dialect == "sqlite":
                rows = c.exec_driver_sql(
                    "SELECT name, tbl_name, sql FROM sqlite_master WHERE type='trigger'"
                )
                out["triggers"] = sorted((n, t, " ".join(s.split())) for n, t, s in rows)
            else:
                rows = c.exec_driver_sql(
                    "SELECT tgname, tgrelid::regclass::text, pg_get_triggerdef(oid) "
                    "FROM pg_trigger WHERE NOT tgisinternal"
                )
                out["triggers"] = sorted(rows)
                out["functions"] = sorted(
                    c.exec_driver_sql(
                        "SELECT proname, prosrc FROM pg_proc WHERE proname LIKE 'atb_%%'"
                    )
                )
            return out
    finally:
        engine.dispose()


@pytest.fixture
def second_url(db_url: str, request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """Another fresh database of the same kind."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_url")
    name = server.create_database()
    try:
        yield server.database_url(name)
    finally:
        server.drop_database(name)


def test_the_revisions_the_code_names_are_the_packaged_ones() -> None:
    assert list(REVISIONS) == migrate.script_revisions()
    assert REVISIONS[-1] == HEAD


def test_an_old_database_is_refused_then_upgraded_to_equal_a_fresh_one(
    db_url: str, second_url: str
) -> None:
    make_old_database(db_url)
    # the engine refuses it, naming the command (transient: entries would wait in the log)
    db = DatabaseManager(db_url)
    with pytest.raises(WALSchemaError, match=r"run `atb db upgrade`") as info:
        db.get_balance()
    assert info.value.transient
    db.dispose()
    served = CliRunner().invoke(atb, ["serve", "--database-url", db_url, "--port", "0"])
    assert served.exit_code == 1
    assert len(served.output.strip().splitlines()) == 1
    assert "atb db upgrade" in served.output

    up = CliRunner().invoke(atb, ["db", "--database-url", db_url, "upgrade"])
    assert up.exit_code == 0, up.output
    assert re.search(rf"revision none -> {HEAD}", up.output)
    again = CliRunner().invoke(atb, ["db", "--database-url", db_url, "upgrade"])
    assert "nothing to do" in again.output
    cur = CliRunner().invoke(atb, ["db", "--database-url", db_url, "current"])
    assert cur.exit_code == 0 and f"revision {HEAD}" in cur.output

    fresh = DatabaseManager(second_url)
    fresh.get_balance()  # an empty database is created at the code's revision on first use
    fresh.dispose()
    assert describe(db_url) == describe(second_url)

    db = DatabaseManager(db_url)
    try:
        assert db.get_balance("default") == Decimal("1234.5")  # the data survived
        assert db.get_order_row("c1") is not None
        assert db.database_id() == "db-1"
    finally:
        db.dispose()


def test_the_audit_triggers_come_with_the_migrations(db_url: str) -> None:
    CliRunner().invoke(atb, ["db", "--database-url", db_url, "upgrade"])
    engine, _ = make_engine(db_url)
    try:
        with engine.begin() as c:
            c.execute(
                sa.insert(metadata.tables["order_events"]).values(
                    client_order_id="c",
                    seq=1,
                    kind="created",
                    state="pending",
                    at=NOW,
                    audit_seq=1,
                    prev_hash="0" * 64,
                    hash="b" * 64,
                )
            )
            c.execute(
                sa.insert(metadata.tables["order_audit_anchors"]).values(
                    seq=1, hash="b" * 64, at=NOW, reason="session_end"
                )
            )
        for stmt in (
            "UPDATE order_events SET kind = 'x'",
            "DELETE FROM order_events",
            "DELETE FROM order_audit_anchors",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as c:
                c.exec_driver_sql(stmt)
    finally:
        engine.dispose()


def test_downgrade_one_revision_and_back_but_never_below_the_baseline(db_url: str) -> None:
    runner = CliRunner()
    assert runner.invoke(atb, ["db", "--database-url", db_url, "upgrade"]).exit_code == 0
    down = runner.invoke(atb, ["db", "--database-url", db_url, "downgrade", "0001"])
    assert down.exit_code == 0 and f"{HEAD} -> 0001" in down.output, down.output
    tables = set(describe(db_url)) - {"triggers", "functions"}
    assert "api_tokens" not in tables and "orders" in tables
    behind = runner.invoke(atb, ["db", "--database-url", db_url, "current"])
    assert behind.exit_code == 1 and "atb db upgrade" in behind.output
    base = runner.invoke(atb, ["db", "--database-url", db_url, "downgrade", "base"])
    assert base.exit_code == 1 and "baseline" in base.output
    assert "orders" in set(describe(db_url))  # nothing was dropped
    assert runner.invoke(atb, ["db", "--database-url", db_url, "upgrade"]).exit_code == 0
    assert migrate.current(db_url) == (HEAD, True)


def test_an_empty_database_upgraded_equals_one_created_on_first_use(
    db_url: str, second_url: str
) -> None:
    up = CliRunner().invoke(atb, ["db", "--database-url", db_url, "upgrade"])
    assert up.exit_code == 0, up.output
    fresh = DatabaseManager(second_url)
    fresh.get_balance()
    fresh.dispose()
    assert describe(db_url) == describe(second_url)


def test_the_durable_manager_refuses_to_start_on_a_schema_behind(
    db_url: str, tmp_path: Any
) -> None:
    make_old_database(db_url)
    cfg = WALConfig.from_env({}, directory=Path(tmp_path) / "wal", database_url=db_url)
    ddb = DurableDatabaseManager(DatabaseManager(db_url), config=cfg)
    try:
        with pytest.raises(WALSchemaError, match=r"run `atb db upgrade`"):
            ddb.start()
    finally:
        ddb.stop()
        ddb.db.dispose()


def test_every_table_of_the_code_has_its_migration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    migrate.upgrade(url)
    migrated = set(describe(url)) - {"triggers", "alembic_version"}
    missing = sorted(set(metadata.tables) - migrated)
    assert not missing, (
        f"tables {missing} are in the code's metadata but in no migration: add a revision "
        "in wal/db/migrations/versions/ (down_revision: the current head) and append its id "
        "to wal.db.versioning.REVISIONS (docs/service.md, Migrations)"
    )


def test_revision_0004_adds_the_order_listing_index_and_its_downgrade_drops_it(
    db_url: str,
) -> None:
    def indexes() -> set[str]:
        engine, _ = make_engine(db_url)
        try:
            with engine.connect() as c:
                return {str(i["name"]) for i in sa.inspect(c).get_indexes("orders")}
        finally:
            engine.dispose()

    runner = CliRunner()
    assert runner.invoke(atb, ["db", "--database-url", db_url, "upgrade"]).exit_code == 0
    assert "ix_orders_account_created" in indexes()
    down = runner.invoke(atb, ["db", "--database-url", db_url, "downgrade", "0003"])
    assert down.exit_code == 0 and f"{HEAD} -> 0003" in down.output, down.output
    assert "ix_orders_account_created" not in indexes()
    assert runner.invoke(atb, ["db", "--database-url", db_url, "upgrade"]).exit_code == 0
    assert "ix_orders_account_created" in indexes()


def test_revision_0005_adds_the_audit_content_and_refuses_to_drop_it_once_used(
    db_url: str,
) -> None:
    """``order_events.content`` (audit chain format 2): added by 0005, dropped by its
    downgrade while no event holds content, the downgrade refused once one does (the chain
    would break at it)."""

    def columns() -> list[str]:
        return _columns(db_url, "order_events")

    runner = CliRunner()
    assert runner.invoke(atb, ["db", "--database-url", db_url, "upgrade"]).exit_code == 0
    assert columns()[-1] == "content"
    down = runner.invoke(atb, ["db", "--database-url", db_url, "downgrade", "0004"])
    assert down.exit_code == 0 and f"{HEAD} -> 0004" in down.output, down.output
    assert "content" not in columns()
    assert runner.invoke(atb, ["db", "--database-url", db_url, "upgrade"]).exit_code == 0
    _record_market_buy(db_url, "c1")
    db = DatabaseManager(db_url)
    try:
        assert db.get_order_events("c1")[0]["content"] is not None
    finally:
        db.dispose()
    down = runner.invoke(atb, ["db", "--database-url", db_url, "downgrade", "0004"])
    assert down.exit_code == 1 and "would break the audit chain" in down.output, down.output
    assert migrate.current(db_url) == (HEAD, True) and columns()[-1] == "content"


def test_revision_0006_adds_the_oco_group_and_refuses_to_drop_it_once_used(
    db_url: str,
) -> None:
    """``orders.oco_group`` (a bracket's children's group at the broker): added by 0006,
    dropped by its downgrade while no order has one, the downgrade refused once one does
    (its created event's hash covers it). An order without a group hashes as before."""

    def columns() -> list[str]:
        return _columns(db_url, "orders")

    runner = CliRunner()
    assert runner.invoke(atb, ["db", "--database-url", db_url, "upgrade"]).exit_code == 0
    assert columns()[-1] == "oco_group"
    _record_market_buy(db_url, "c0")
    down = runner.invoke(atb, ["db", "--database-url", db_url, "downgrade", "0005"])
    assert down.exit_code == 0 and f"{HEAD} -> 0005" in down.output, down.output
    assert "oco_group" not in columns()
    assert runner.invoke(atb, ["db", "--database-url", db_url, "upgrade"]).exit_code == 0
    db = DatabaseManager(db_url)
    try:
        db.record_order_intent(
            client_order_id="c1",
            symbol="AAPL",
            side="sell",
            quantity=Decimal(1),
            order_type="limit",
            limit_price=Decimal(110),
            oco_group="oco-1",
        )
        [created] = db.get_order_events("c1")
        assert '"oco_group":"oco-1"' in created["content"]
        assert "oco_group" not in db.get_order_events("c0")[0]["content"]
    finally:
        db.dispose()
    down = runner.invoke(atb, ["db", "--database-url", db_url, "downgrade", "0005"])
    assert down.exit_code == 1 and "would break the chain" in down.output, down.output
    assert migrate.current(db_url) == (HEAD, True) and columns()[-1] == "oco_group"


def test_readers_of_a_sqlite_file_that_is_not_there_create_nothing(tmp_path: Path) -> None:
    """`atb db current` (and every reader of a database as it is) on a mistyped SQLite path:
    one line naming the file, exit 1, and no file or directory left behind."""
    missing = tmp_path / "typo" / "dir" / "atb.db"
    url = f"sqlite:///{missing}"
    cur = CliRunner().invoke(atb, ["db", "--database-url", url, "current"])
    assert cur.exit_code == 1
    assert len(cur.output.strip().splitlines()) == 1 and str(missing) in cur.output
    with pytest.raises(WALDatabaseError, match="no database at"):
        DatabaseManager(url, read_only=True)
    assert not (tmp_path / "typo").exists()


def _columns(db_url: str, table: str) -> list[str]:
    """The table's column names, in order."""
    engine, _ = make_engine(db_url)
    try:
        with engine.connect() as c:
            return [str(col["name"]) for col in sa.inspect(c).get_columns(table)]
    finally:
        engine.dispose()


def _record_market_buy(db_url: str, cid: str) -> None:
    """One order intent journaled in the database: a market buy of 1 AAPL."""
    db = DatabaseManager(db_url)
    try:
        db.record_order_intent(
            client_order_id=cid, symbol="AAPL", side="buy", quantity=Decimal(1), order_type="market"
        )
    finally:
        db.dispose()
