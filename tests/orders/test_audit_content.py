"""The audit trail covers what the orders and fills ARE, not only their events.

The hash chain (``tests/orders/test_audit.py``) covers every ``order_events`` row. Before
chain format 2 it did not cover the ``orders`` and ``fills`` rows: someone editing the
database directly (a SQLite file edit; a PostgreSQL superuser with the triggers disabled)
could change a fill's price or quantity, delete or add a fill row, change an order's side,
quantity, price or symbol, or delete an order row, and ``verify_audit`` still said the trail
was intact. Now the created event carries the order's intent and each fill event the fill
(``order_events.content``, hashed), and ``verify_audit`` checks the ``orders`` and ``fills``
tables against them: every edit below is named, by order, fill, seq and what differs.

Real journals (an ``OrderManager`` trading with the paper broker, each order filled in two
executions), real databases (SQLite and PostgreSQL), edits that bypass the database's rules,
and ``atb orders verify`` as the operator runs it.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from orders_helpers import Rig, buy, make_rig, run

import wal.orders.journal as journal_mod
from cli.main import atb
from wal.db import DatabaseManager, migrate
from wal.db.engine import make_engine
from wal.db.orders import GENESIS_HASH, audit_hash
from wal.db.schema import metadata
from wal.orders import Fill, OrderIntent, OrderJournal, OrderState, PaperBroker, verify_audit
from wal.orders.audit import AuditReport, digest_path
from wal.orders.broker import ClientIdRules, DedupScope
from wal.orders.faults import FaultPlan
from wal.orders.journal import ORDER_OPERATIONS, apply_entry
from wal.service.views import audit_view

_TABLES = ("order_events", "order_audit_anchors", "orders", "fills")


def two_part_broker() -> PaperBroker:
    """Every order filled in two executions (40% then 60%)."""
    return PaperBroker(
        seed=1, faults=FaultPlan(seed=1, partial_fills=(Decimal("0.4"), Decimal("0.6")))
    )


def trade(rig: Rig) -> tuple[str, str]:
    """A market buy of 10 AAPL and a limit buy of 5 MSFT (limit 1000), each filled in two
    executions, and a limit order cancelled with a reason: (market cid, limit cid)."""

    async def go() -> tuple[str, str]:
        await rig.om.start()
        a = await rig.om.submit(buy("10"))
        b = await rig.om.submit(
            OrderIntent(
                symbol="MSFT",
                side="buy",
                quantity=Decimal("5"),
                order_type="limit",
                limit_price=Decimal("1000"),
            )
        )
        c = await rig.om.submit(buy("1", order_type="limit", limit_price=Decimal("1")))
        await rig.om.force_state(
            c.client_order_id, OrderState.CANCELLED, reason="operator note", _reconciliation=True
        )
        await rig.om.close()  # session end: an anchor at the head
        rig.ddb.drain()
        return a.client_order_id, b.client_order_id

    return run(go())


def tamper(url: str, *stmts: str) -> None:
    """Run ``stmts`` as someone bypassing the database's own rules: on SQLite a raw
    connection to the file with the append-only triggers dropped; on PostgreSQL the
    superuser with every trigger of the order tables disabled."""
    if url.startswith("sqlite:///"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        with con:
            triggers = con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for (name,) in triggers.fetchall():
                con.execute(f"DROP TRIGGER {name}")
            for s in stmts:
                con.execute(s)
        con.close()
        return
    engine, _ = make_engine(url)
    try:
        with engine.begin() as c:
            for t in _TABLES:
                c.exec_driver_sql(f"ALTER TABLE {t} DISABLE TRIGGER ALL")
            for s in stmts:
                c.exec_driver_sql(s)
            for t in _TABLES:
                c.exec_driver_sql(f"ALTER TABLE {t} ENABLE TRIGGER ALL")
    finally:
        engine.dispose()


def verify(url: str, tmp_path: Path) -> AuditReport:
    db = DatabaseManager(url)
    try:
        return verify_audit(db, digest=digest_path(tmp_path / "wal"))
    finally:
        db.dispose()


def verify_cli(url: str, tmp_path: Path) -> tuple[int, list[str]]:
    r = CliRunner().invoke(
        atb, ["orders", "--dir", str(tmp_path / "wal"), "--database-url", url, "verify"]
    )
    return r.exit_code, r.output.splitlines()


def rows(url: str, table: str, where: str = "") -> list[dict[str, Any]]:
    engine, _ = make_engine(url)
    try:
        with engine.connect() as c:
            t = sa.table(table)
            q = sa.select(sa.text("*")).select_from(t)
            if where:
                q = q.where(sa.text(where))
            return [dict(r._mapping) for r in c.execute(q)]
    finally:
        engine.dispose()


@pytest.fixture
def journaled(db_url: str, tmp_path: Path) -> tuple[str, str, str, list[dict[str, Any]]]:
    """(url, market cid, limit cid, the market order's fill event rows) of a closed rig."""
    rig = make_rig(tmp_path, two_part_broker(), url=db_url)
    try:
        a, b = trade(rig)
        events = [
            r
            for r in rig.ddb.db.get_audit_rows()
            if r["client_order_id"] == a and r["kind"] == "fill"
        ]
    finally:
        rig.close()
    assert len(events) == 2
    report = verify(db_url, tmp_path)
    assert report.ok, report.problems
    assert report.format1_events == 0
    return db_url, a, b, events


def _expect(tmp_path: Path, url: str, *lines: str) -> tuple[AuditReport, list[str]]:
    """verify_audit and `atb orders verify` both report every line given (substrings), the
    chain itself intact; the CLI prints each defect on one line and exits 1."""
    report = verify(url, tmp_path)
    assert not report.ok
    assert report.first_broken_seq is None, report.problems  # the chain itself is intact
    for line in lines:
        assert any(line in p for p in report.problems), (line, report.problems)
    code, out = verify_cli(url, tmp_path)
    assert code == 1, out
    for line in lines:
        assert sum(line in o for o in out) == 1, (line, out)
    assert len(out) == len(report.problems), out  # one line per defect
    return report, out


def test_a_changed_fill_price_is_named(journaled: Any, tmp_path: Path) -> None:
    url, cid, _, events = journaled
    ev = events[0]
    key = ev["detail"]  # the paper broker's execution key is its execution id
    tamper(url, f"UPDATE fills SET price = '101.5' WHERE execution_key = '{key}'")
    report, _ = _expect(
        tmp_path,
        url,
        f"fill {key} of order {cid}: price is 101.5 in the fills table but 100 in its hashed "
        f"fill event (seq {ev['seq']}, audit seq {ev['audit_seq']}): the row was changed",
    )
    assert len(report.problems) == 1, report.problems


def test_a_changed_fill_quantity_is_named(journaled: Any, tmp_path: Path) -> None:
    url, cid, _, events = journaled
    ev = events[1]
    key = ev["detail"]
    tamper(url, f"UPDATE fills SET quantity = '7' WHERE execution_key = '{key}'")
    _expect(
        tmp_path,
        url,
        f"fill {key} of order {cid}: quantity is 7 in the fills table but 6 in its hashed "
        f"fill event (seq {ev['seq']}, audit seq {ev['audit_seq']})",
    )


def test_a_deleted_fill_row_is_named(journaled: Any, tmp_path: Path) -> None:
    url, cid, _, events = journaled
    ev = events[0]
    key = ev["detail"]
    tamper(url, f"DELETE FROM fills WHERE execution_key = '{key}'")
    report, _ = _expect(
        tmp_path,
        url,
        f"fill {key} of order {cid}: in its hashed fill event (seq {ev['seq']}, audit seq "
        f"{ev['audit_seq']}) but not in the fills table: the row was deleted",
    )
    assert len(report.problems) == 1, report.problems


def test_an_inserted_fill_row_is_named(journaled: Any, tmp_path: Path) -> None:
    url, cid, _, events = journaled
    key = events[0]["detail"]
    cols = "client_order_id, broker_order_id, symbol, side, quantity, price, executed_at, pnl"
    tamper(
        url,
        f"INSERT INTO fills (execution_key, execution_id, trade_id, {cols}) "
        f"SELECT 'forged-1', 'forged-x1', NULL, {cols} FROM fills WHERE execution_key = '{key}'",
    )
    report, _ = _expect(
        tmp_path,
        url,
        f"fill forged-1 of order {cid} (execution forged-x1): in the fills table but in no "
        "hashed fill event: the row was added outside the journal",
    )
    assert len(report.problems) == 1, report.problems


def test_a_fill_moved_to_another_order_is_named_on_both(journaled: Any, tmp_path: Path) -> None:
    url, a, b, events = journaled
    key = events[0]["detail"]
    tamper(url, f"UPDATE fills SET client_order_id = '{b}' WHERE execution_key = '{key}'")
    _expect(
        tmp_path,
        url,
        f"fill {key} of order {a}: in its hashed fill event",
        f"fill {key} of order {b} (execution {key}): in the fills table but in no hashed",
    )


@pytest.mark.parametrize(
    ("column", "value", "found", "expected"),
    [
        ("side", "'sell'", "'sell'", "'buy'"),
        ("quantity", "'50'", "50", "5"),
        ("limit_price", "'999'", "999", "1000"),
        ("symbol", "'MSFX'", "'MSFX'", "'MSFT'"),
        ("order_type", "'market'", "'market'", "'limit'"),
        ("stop_price", "'1'", "1", "NULL"),
        ("account", "'other'", "'other'", "'default'"),
    ],
)
def test_a_changed_order_intent_is_named(
    journaled: Any, tmp_path: Path, column: str, value: str, found: str, expected: str
) -> None:
    url, _, cid, _ = journaled
    created = rows(url, "order_events", f"client_order_id = '{cid}' AND seq = 1")[0]
    tamper(url, f"UPDATE orders SET {column} = {value} WHERE client_order_id = '{cid}'")
    report, _ = _expect(
        tmp_path,
        url,
        f"order {cid}: {column} is {found} in the orders table but {expected} in its hashed "
        f"created event (seq 1, audit seq {created['audit_seq']}): the row was changed",
    )
    assert len(report.problems) == 1, report.problems


@pytest.mark.parametrize(
    ("column", "value", "found", "expected", "event"),
    [
        ("state", "'cancelled'", "'cancelled'", "'filled'", "last hashed event"),
        ("filled_quantity", "'4'", "4", "5", "last hashed fill event"),
        ("avg_fill_price", "'990'", "990", "1000", "last hashed fill event"),
        ("broker_order_id", "'paper-99'", "'paper-99'", "'paper-00000002'", "hashed events"),
        ("reason", "'edited'", "'edited'", "NULL", "hashed events"),
    ],
)
def test_a_changed_order_state_or_total_is_named(
    journaled: Any, tmp_path: Path, column: str, value: str, found: str, expected: str, event: str
) -> None:
    url, _, cid, _ = journaled
    tamper(url, f"UPDATE orders SET {column} = {value} WHERE client_order_id = '{cid}'")
    report, _ = _expect(
        tmp_path, url, f"order {cid}: {column} is {found} in the orders table but {expected} in"
    )
    assert event in report.problems[0], report.problems
    assert len(report.problems) == 1, report.problems


def test_a_deleted_order_row_is_named(journaled: Any, tmp_path: Path) -> None:
    url, cid, _, _ = journaled
    created = rows(url, "order_events", f"client_order_id = '{cid}' AND seq = 1")[0]
    tamper(url, f"DELETE FROM orders WHERE client_order_id = '{cid}'")
    report, _ = _expect(
        tmp_path,
        url,
        f"order {cid}: 5 hashed event(s) (the first at audit seq {created['audit_seq']}) but no "
        "row in the orders table: the row was deleted",
    )
    assert len(report.problems) == 1, report.problems


def test_an_order_row_with_no_event_is_named(journaled: Any, tmp_path: Path) -> None:
    url, cid, _, _ = journaled
    cols = (
        "symbol, side, quantity, order_type, limit_price, stop_price, time_in_force, account, "
        "state, broker_order_id, filled_quantity, avg_fill_price, reason, last_seq, "
        "created_at, updated_at"
    )
    tamper(
        url,
        f"INSERT INTO orders (client_order_id, {cols}) "
        f"SELECT 'forged-order', {cols} FROM orders WHERE client_order_id = '{cid}'",
    )
    _expect(
        tmp_path,
        url,
        "order forged-order: in the orders table but in no hashed event: the row was added "
        "outside the journal",
    )


def test_stripping_an_events_content_breaks_the_chain(journaled: Any, tmp_path: Path) -> None:
    """The content is hashed: removing it (to pass the event off as format 1, whose contents
    are not checked) is a changed row."""
    url, _, _, events = journaled
    seq = events[0]["audit_seq"]
    tamper(url, f"UPDATE order_events SET content = NULL WHERE audit_seq = {seq}")
    report = verify(url, tmp_path)
    assert not report.ok and report.first_broken_seq == seq, report.problems


def test_corrections_cancels_and_reasons_verify_clean(tmp_path: Path) -> None:
    """No false alarm: a corrected execution replaces its fill row (the latest hashed fill
    event of its key is the row), a reason set by a forced state, a cancel."""
    rules = ClientIdRules(
        dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0, correction_separator="."
    )
    rig = make_rig(tmp_path, PaperBroker(seed=12, rules=rules, auto_fill=False))

    async def go() -> str:
        await rig.om.start()
        cid = (await rig.om.submit(buy("4"))).client_order_id
        await rig.om.on_fill(Fill("E1.01", cid, "AAPL", "buy", Decimal("2"), Decimal("100")))
        await rig.om.on_fill(Fill("E1.02", cid, "AAPL", "buy", Decimal("3"), Decimal("110")))
        await rig.om.on_fill(Fill("E2.01", cid, "AAPL", "buy", Decimal("1"), Decimal("100")))
        other = (await rig.om.submit(buy("1", symbol="MSFT"))).client_order_id
        await rig.om.force_state(
            other, OrderState.CANCELLED, reason="desk asked", _reconciliation=True
        )
        await rig.om.close()
        rig.ddb.drain()
        return cid

    try:
        cid = run(go())
        kinds = [e["kind"] for e in OrderJournal(rig.ddb).events(cid)]
        assert kinds.count("fill_corrected") == 1, kinds
        report = verify_audit(rig.ddb.db)
    finally:
        rig.close()
    assert report.ok, report.problems
    assert report.orders_checked == 2 and report.fills_checked == 2, report
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    # the corrected fill's row is checked against the correction, not the first report
    tamper(url, "UPDATE fills SET quantity = '2', price = '100' WHERE execution_id = 'E1.02'")
    report = verify(url, tmp_path)
    assert [p.split(":")[1].split(" is ")[0].strip() for p in report.problems] == [
        "quantity",
        "price",
    ], report.problems


def test_the_content_is_what_the_log_entry_carried(tmp_path: Path) -> None:
    """Computed once, by the journal, and carried in the log entry: the row holds exactly
    it, and the row's hash covers it."""
    rig = make_rig(tmp_path, two_part_broker())
    try:
        trade(rig)
        entries = list(rig.ddb.storage.iter_entries())
        logged = {
            e.kwargs["audit_seq"]: e.kwargs.get("content")
            for e in entries
            if "audit_seq" in e.kwargs
        }
        stored = {r["audit_seq"]: r for r in rig.ddb.db.get_audit_rows()}
    finally:
        rig.close()
    assert logged == {s: r["content"] for s, r in stored.items()}
    with_content = [r for r in stored.values() if r["content"] is not None]
    assert sorted({r["kind"] for r in with_content}) == ["created", "fill"]
    for r in with_content:
        assert audit_hash(r | {"content": None}, r["prev_hash"]) != r["hash"]
    # a pending entry's event (the journal's reads, GET /api/v1/orders/{id}/audit) carries
    # its content too: its hash verifies before the database has it
    pending: list[dict[str, Any]] = []
    for e in entries:
        if e.operation in ORDER_OPERATIONS:
            apply_entry({}, e, events=pending)
    assert {e["audit_seq"]: e["content"] for e in pending} == logged
    view = audit_view(pending, {s: r["hash"] for s, r in stored.items()})
    assert view["verified"] and all(x["hash_ok"] and x["link_ok"] for x in view["events"])


# ---------------------------------------------------------------------------- format 1


def test_format_1_rows_still_verify_and_are_reported_as_not_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events journaled before chain format 2 (no content: the log entries of the code
    before it, replayed after an upgrade, write them too) verify as they did; the report
    names them as not content-covered. Orders journaled after the upgrade are covered."""
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    broker = two_part_broker()  # one broker across the restart: execution ids never repeat
    with monkeypatch.context() as m:  # the code before format 2: no content in the entries
        m.setattr(journal_mod, "event_content", lambda op, kw: None)
        rig = make_rig(tmp_path, broker, url=url)
        try:
            old, _ = trade(rig)
        finally:
            rig.close()
    report = verify(url, tmp_path)
    assert report.ok, report.problems
    assert report.format1_events == 7 and report.format1_seqs == (1, 11), report
    assert "7 event(s) of chain format 1 (audit seq 1 to 11)" in report.message
    code, out = verify_cli(url, tmp_path)
    assert code == 0 and "chain format 1" in out[0], out

    rig = make_rig(tmp_path, broker, url=url)
    try:
        new, _ = trade(rig)
    finally:
        rig.close()
    report = verify(url, tmp_path)
    assert report.ok and report.format1_events == 7 and report.format1_seqs == (1, 11), report
    # a format-1 order's intent is not covered (documented); its state and events are
    tamper(url, f"UPDATE orders SET side = 'sell' WHERE client_order_id = '{old}'")
    assert verify(url, tmp_path).ok
    tamper(url, f"UPDATE orders SET state = 'cancelled' WHERE client_order_id = '{old}'")
    assert not verify(url, tmp_path).ok
    tamper(
        url, f"UPDATE orders SET state = 'filled', side = 'sell' WHERE client_order_id = '{new}'"
    )
    report = verify(url, tmp_path)
    assert [p for p in report.problems if new in p and "side is 'sell'" in p], report.problems


def test_a_database_of_revision_0004_upgrades_and_its_chain_still_verifies(
    db_url: str, tmp_path: Path
) -> None:
    """A database at the revision before the content column, with a chain the code before
    format 2 wrote, upgraded: its rows verify as they did, and are reported as format 1.
    Downgrading again is refused once a row carries content (the chain would break)."""
    migrate.upgrade(db_url, "0004")
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    ev = {
        "client_order_id": "old-1",
        "seq": 1,
        "kind": "created",
        "state": "pending",
        "at": at,
        "broker_order_id": None,
        "detail": None,
        "audit_seq": 1,
        "prev_hash": GENESIS_HASH,
    }
    ev["hash"] = audit_hash(ev, GENESIS_HASH)  # no content: the hash the code before wrote
    order = {
        "client_order_id": "old-1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": Decimal(1),
        "order_type": "market",
        "time_in_force": "day",
        "account": "default",
        "state": "pending",
        "filled_quantity": Decimal(0),
        "last_seq": 1,
        "created_at": at,
        "updated_at": at,
    }
    engine, _ = make_engine(db_url)
    try:
        with engine.begin() as c:  # the columns of revision 0004 only
            c.execute(sa.insert(metadata.tables["orders"]).values(**order))
            c.execute(sa.insert(metadata.tables["order_events"]).values(**ev))
    finally:
        engine.dispose()
    up = CliRunner().invoke(atb, ["db", "--database-url", db_url, "upgrade"])
    assert up.exit_code == 0, up.output
    db = DatabaseManager(db_url)
    try:
        report = verify_audit(db)
        assert report.ok and report.format1_events == 1, report
        assert report.format1_seqs == (1, 1)
        db.record_order_intent(  # a direct call after the upgrade: format 2
            client_order_id="new-1",
            symbol="AAPL",
            side="buy",
            quantity=Decimal(2),
            order_type="market",
        )
        report = verify_audit(db)
        assert report.ok and report.events == 2 and report.format1_events == 1, report
    finally:
        db.dispose()
    down = CliRunner().invoke(atb, ["db", "--database-url", db_url, "downgrade", "0004"])
    assert down.exit_code == 1 and "content" in down.output, down.output
