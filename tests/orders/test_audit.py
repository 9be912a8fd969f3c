"""The tamper-evident audit trail of order events: hash chain, anchors, append-only triggers.

Real databases (a SQLite file edited byte by byte; PostgreSQL with the table owner disabling
the triggers), real journals written by an ``OrderManager`` against the paper broker, and
``atb orders verify`` as the operator runs it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from orders_helpers import Rig, buy, make_rig, run

import wal.orders.audit as audit_mod
import wal.orders.journal as journal_mod
from cli.main import atb
from wal.db import DatabaseManager
from wal.db.orders import GENESIS_HASH, audit_hash
from wal.orders import OrderState, PaperBroker, verify_audit
from wal.orders.audit import append_digest, digest_path, read_digest


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
        rig.ddb.drain()  # applied behind (WAL_APPLY=behind): the tables read below hold it all
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


# ---------------------------------------------------------------------------- issue 19


FIELDS = (
    "audit_seq",
    "client_order_id",
    "seq",
    "kind",
    "state",
    "at",
    "broker_order_id",
    "detail",
    "content",
)


def _other(field: str, value: object) -> object:
    if field == "at":
        return value + timedelta(microseconds=1)  # type: ignore[operator]
    if isinstance(value, int):
        return value + 1
    return "x" if value is None else f"{value}x"


def test_a_rows_hash_covers_the_previous_hash_and_every_field(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        trade(rig, 1, reason="a note")
        rows = rig.ddb.db.get_audit_rows()
    finally:
        rig.close()
    with_broker_id = [r for r in rows if r["broker_order_id"]]
    with_detail = [r for r in rows if r["detail"]]
    assert with_broker_id and with_detail
    for r in rows:
        base = audit_hash(r, r["prev_hash"])
        assert base == r["hash"]
        assert audit_hash(r, GENESIS_HASH if r["prev_hash"] != GENESIS_HASH else "1" * 64) != base
        for f in FIELDS:
            changed = dict(r) | {f: _other(f, r[f])}
            assert audit_hash(changed, r["prev_hash"]) != base, f"the hash ignores {f}"


def _sqlite_attack(db_file: Path, *stmts: str) -> None:
    """Drop the append-only triggers and run ``stmts``, as someone editing the file would."""
    con = sqlite3.connect(db_file)
    with con:
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            con.execute(f"DROP TRIGGER {name}")
        for s in stmts:
            con.execute(s)
    con.close()


def _verify(db_file: Path, digest: Path | None = None) -> audit_mod.AuditReport:
    db = DatabaseManager(f"sqlite:///{db_file}")
    try:
        return verify_audit(db, digest=digest)
    finally:
        db.dispose()


def test_a_changed_broker_order_id_is_named_by_seq(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        trade(rig, 2)
        target = next(r["audit_seq"] for r in rig.ddb.db.get_audit_rows() if r["broker_order_id"])
    finally:
        rig.close()
    _sqlite_attack(
        tmp_path / "atb.db",
        f"UPDATE order_events SET broker_order_id = 'paper-99999999' WHERE audit_seq = {target}",
    )
    report = _verify(tmp_path / "atb.db")
    assert not report.ok and report.first_broken_seq == target, report


def test_verify_reads_past_its_first_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        trade(rig, 3)  # 12 events
    finally:
        rig.close()
    monkeypatch.setattr(audit_mod, "_BATCH", 5)
    report = _verify(tmp_path / "atb.db")
    assert report.ok and report.events == 12 and report.last_seq == 12, report
    _sqlite_attack(tmp_path / "atb.db", "UPDATE order_events SET detail = 'x' WHERE audit_seq = 11")
    report = _verify(tmp_path / "atb.db")
    assert not report.ok and report.first_broken_seq == 11, report


def test_an_anchor_is_checked_by_its_hash_not_its_presence(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        trade(rig, 1)
    finally:
        rig.close()
    _sqlite_attack(tmp_path / "atb.db", f"UPDATE order_audit_anchors SET hash = '{'ab' * 32}'")
    report = _verify(tmp_path / "atb.db")
    assert not report.ok, report
    assert any("anchor at seq 4 does not match" in p for p in report.problems), report


def _rewrite_both_tables(db_file: Path, seq: int) -> None:
    """Change the row at ``seq`` (its detail, and the reason it gives its order) and
    recompute every hash after it and every anchor: the database alone can no longer tell."""
    con = sqlite3.connect(db_file)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM order_events ORDER BY audit_seq")]
    con.close()
    stmts = []
    prev = GENESIS_HASH
    for r in rows:
        if r["audit_seq"] == seq:
            r["detail"] = "rewritten"
            cid = r["client_order_id"]
            stmts.append(f"UPDATE orders SET reason = 'rewritten' WHERE client_order_id = '{cid}'")
        if r["audit_seq"] >= seq:
            db = DatabaseManager(f"sqlite:///{db_file}")  # the row as the library reads it
            try:
                typed = next(x for x in db.get_audit_rows() if x["audit_seq"] == r["audit_seq"])
            finally:
                db.dispose()
            h = audit_hash(dict(typed) | {"detail": r["detail"]}, prev)
            detail = "NULL" if r["detail"] is None else f"'{r['detail']}'"
            stmts.append(
                f"UPDATE order_events SET detail = {detail}, prev_hash = '{prev}', hash = '{h}' "
                f"WHERE audit_seq = {r['audit_seq']}"
            )
            stmts.append(
                f"UPDATE order_audit_anchors SET hash = '{h}' WHERE seq = {r['audit_seq']}"
            )
            r["hash"] = h
        prev = r["hash"]
    _sqlite_attack(db_file, *stmts)


def test_the_digest_file_catches_a_rewrite_of_both_tables(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        trade(rig, 2)
        anchors = [(int(a["seq"]), str(a["hash"])) for a in rig.ddb.db.get_audit_anchors()]
    finally:
        rig.close()
    digest = digest_path(tmp_path / "wal")
    assert stat.S_IMODE(os.lstat(digest).st_mode) == 0o600
    assert read_digest(digest) == (anchors, [])
    assert _verify(tmp_path / "atb.db", digest).ok
    _rewrite_both_tables(tmp_path / "atb.db", 3)
    assert _verify(tmp_path / "atb.db").ok  # the tables agree with themselves
    report = _verify(tmp_path / "atb.db", digest)
    assert not report.ok and any("the chain was rewritten" in p for p in report.problems)
    r = CliRunner().invoke(
        atb,
        [
            "orders",
            "--dir",
            str(tmp_path / "wal"),
            "--database-url",
            f"sqlite:///{tmp_path / 'atb.db'}",
            "verify",
        ],
    )
    assert r.exit_code == 1 and "digest anchor at seq 8 does not match" in r.output, r.output


def test_a_deleted_digest_file_is_a_problem_a_torn_last_line_is_not(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, PaperBroker(seed=1))
    try:
        trade(rig, 1)
    finally:
        rig.close()
    digest = digest_path(tmp_path / "wal")
    with open(digest, "ab") as f:
        f.write(b"12 abc")  # a crash inside an append: no newline
    report = _verify(tmp_path / "atb.db", digest)
    assert report.ok and report.digest_entries == 1, report
    digest.unlink()
    report = _verify(tmp_path / "atb.db", digest)
    assert not report.ok and "digest file" in report.message and "missing" in report.message


def test_the_digest_is_appended_fsynced_and_refuses_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(audit_mod.os, "fsync", fsync)
    d = tmp_path / "log"
    d.mkdir(mode=0o700)
    path = digest_path(d)
    append_digest(path, 4, "a" * 64)
    assert synced == ["file", "dir"]  # the line, then the new file's name
    append_digest(path, 8, "b" * 64)
    assert synced == ["file", "dir", "file"]
    assert path.read_text() == f"4 {'a' * 64}\n8 {'b' * 64}\n"
    path.unlink()
    os.symlink(tmp_path / "elsewhere", path)
    with pytest.raises(OSError):
        append_digest(path, 12, "c" * 64)
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(ValueError, match="not an audit anchor"):
        append_digest(d / "x", 1, "not-a-hash")
    with pytest.raises(ValueError, match="not an audit anchor"):  # "$" passed a trailing \n
        append_digest(d / "x", 1, "c" * 64 + "\n")
    assert not (d / "x").exists()
