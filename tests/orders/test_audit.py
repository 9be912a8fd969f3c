"""The tamper-evident audit trail of order events: hash chain, anchors, append-only triggers.

Real databases (a SQLite file edited byte by byte; PostgreSQL with the table owner disabling
the triggers), real journals written by an ``OrderManager`` against the paper broker, and
``atb orders verify`` as the operator runs it.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from orders_helpers import Rig, buy, make_rig, run

import wal.orders.journal as journal_mod
from cli.main import atb
from wal.db import DatabaseManager
from wal.db.orders import GENESIS_HASH, audit_hash
from wal.orders import OrderState, PaperBroker, verify_audit


def trade(rig: Rig, n: int = 3, reason: str | None = None) -> str:
    """n filled orders (4 events each) and, with ``reason``, one forced event carrying it."""

    async def go() -> str:
        await rig.om.start()
        cid = ""
        for _ in range(n):
            cid = (await rig.om.submit(buy("1"))).client_order_id
        if reason is not None:
            o = await rig.om.submit(buy("1", order_type="limit", limit_price=Decimal("1")))
            await rig.om.force_state(
                o.client_order_id, OrderState.CANCELLED, reason=reason, _reconciliation=True
            )
            cid = o.client_order_id
        await rig.om.close()  # session end: an anchor at the head
        return cid

    return run(go())


def verify_cli(url: str, tmp_path: Path) -> tuple[int, str]:
    wal_dir = str(tmp_path / "wal")  # the rig's log: `atb orders` never reads without one
    r = CliRunner().invoke(atb, ["orders", "--dir", wal_dir, "--database-url", url, "verify"])
    return r.exit_code, r.output


def test_the_chain_links_every_event_and_verifies(db_url: str, tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1), url=db_url)
    try:
        trade(rig, 3)
        rows = rig.ddb.db.get_audit_rows()
        assert [r["audit_seq"] for r in rows] == list(range(1, 13))
        prev = GENESIS_HASH
        for r in rows:
            assert r["prev_hash"] == prev and r["hash"] == audit_hash(r, prev)
            prev = r["hash"]
        # computed once, when journaled: the log entry carries exactly what the row holds
        logged = {
            e.kwargs["audit_seq"]: e.kwargs["hash"]
            for e in rig.ddb.storage.iter_entries()
            if "audit_seq" in e.kwargs
        }
        assert logged == {r["audit_seq"]: r["hash"] for r in rows}
        anchors = rig.ddb.db.get_audit_anchors()
        assert [(a["seq"], a["hash"], a["reason"]) for a in anchors] == [(12, prev, "session_end")]
        report = verify_audit(rig.ddb.db)
        assert report.ok and report.events == 12 and report.last_confirmed_anchor == 12
    finally:
        rig.close()
    code, out = verify_cli(db_url, tmp_path)
    assert code == 0 and "intact" in out, out


def test_the_chain_continues_across_restarts(tmp_path: Path) -> None:
    broker = PaperBroker(seed=1)
    rig = make_rig(tmp_path, broker)
    trade(rig, 1)
    rig.close()
    rig = make_rig(tmp_path, broker)
    try:
        trade(rig, 1)
        assert verify_audit(rig.ddb.db).ok
        assert [a["seq"] for a in rig.ddb.db.get_audit_anchors()] == [4, 8]
    finally:
        rig.close()


def test_an_anchor_every_n_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "ANCHOR_EVERY", 5)
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        trade(rig, 3)  # 12 events: anchors at 5, 10, and 12 (session end)
        got = [(a["seq"], a["reason"]) for a in rig.ddb.db.get_audit_anchors()]
        assert got == [(5, "every_5"), (10, "every_5"), (12, "session_end")]
        assert verify_audit(rig.ddb.db).ok
    finally:
        rig.close()


def test_update_and_delete_are_refused_by_the_triggers(db_url: str, tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1), url=db_url)
    try:
        trade(rig, 1)
        engine = rig.ddb.db.engine
        for stmt in (
            "UPDATE order_events SET kind = 'accepted' WHERE audit_seq = 2",
            "DELETE FROM order_events WHERE audit_seq = 4",
            "UPDATE order_audit_anchors SET hash = 'x'",
            "DELETE FROM order_audit_anchors",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as c:
                c.exec_driver_sql(stmt)
        if rig.ddb.db.dialect == "postgresql":
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as c:
                c.exec_driver_sql("TRUNCATE order_events CASCADE")
        assert verify_audit(rig.ddb.db).ok
    finally:
        rig.close()


def _flip_in_file(path: Path, needle: bytes) -> int:
    data = bytearray(path.read_bytes())
    n = 0
    at = data.find(needle)
    while at >= 0:
        data[at] ^= 0x01  # one bit of one byte
        n += 1
        at = data.find(needle, at + 1)
    path.write_bytes(bytes(data))
    return n


def test_a_flipped_byte_in_the_sqlite_file_is_named_by_seq(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        cid = trade(rig, 2, reason="operator-note-7f3a")
        target = next(
            r["audit_seq"]
            for r in rig.ddb.db.get_audit_rows()
            if r["client_order_id"] == cid and r["detail"] == "operator-note-7f3a"
        )
    finally:
        rig.close()  # connections closed: SQLite checkpoints its WAL into the file
    db_file = tmp_path / "atb.db"
    assert not Path(f"{db_file}-wal").exists() or Path(f"{db_file}-wal").stat().st_size == 0
    assert _flip_in_file(db_file, b"operator-note-7f3a") >= 1  # bypasses every trigger
    db = DatabaseManager(f"sqlite:///{db_file}")
    try:
        report = verify_audit(db)
    finally:
        db.dispose()
    assert not report.ok and report.first_broken_seq == target
    assert report.message.startswith(f"first broken link at seq {target} (expected hash ")
    code, out = verify_cli(f"sqlite:///{db_file}", tmp_path)
    assert code == 1 and f"first broken link at seq {target} (expected" in out and "found" in out


def test_rows_deleted_from_the_end_are_detected(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        trade(rig, 3)
    finally:
        rig.close()
    db_file = tmp_path / "atb.db"
    con = sqlite3.connect(db_file)  # bypass the triggers: drop them, delete, as an attacker
    with con:
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            con.execute(f"DROP TRIGGER {name}")
        con.execute("DELETE FROM order_events WHERE audit_seq > 9")
    con.close()
    code, out = verify_cli(f"sqlite:///{db_file}", tmp_path)
    assert code == 1, out
    assert "anchor at seq 12" in out and "deleted from the end" in out


def test_a_changed_row_on_postgresql_is_named_by_seq(pg_db: str, tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1), url=pg_db)
    try:
        trade(rig, 2)
        engine = rig.ddb.db.engine
        with engine.begin() as c:  # the owner disables the triggers: the database's rules off
            c.exec_driver_sql("ALTER TABLE order_events DISABLE TRIGGER USER")
            c.exec_driver_sql("UPDATE order_events SET state = 'filled ' WHERE audit_seq = 6")
            c.exec_driver_sql("ALTER TABLE order_events ENABLE TRIGGER USER")
        report = verify_audit(rig.ddb.db)
        assert report.first_broken_seq == 6, report
        assert report.message.startswith("first broken link at seq 6 (expected hash ")
        with engine.begin() as c:
            c.exec_driver_sql("ALTER TABLE order_events DISABLE TRIGGER USER")
            c.exec_driver_sql("DELETE FROM order_events WHERE audit_seq >= 7")
            c.exec_driver_sql("ALTER TABLE order_events ENABLE TRIGGER USER")
        report = verify_audit(rig.ddb.db)
        assert any("deleted from the end" in p for p in report.problems), report
    finally:
        rig.close()
    code, out = verify_cli(pg_db, tmp_path)
    assert code == 1 and "first broken link at seq 6" in out
