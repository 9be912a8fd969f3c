"""Issue 21, item 8: with ``database.json`` gone, the engine binds to nothing on its own.

A log that has handed entries to a database before (a COMPLETED, SYNCING or FAILED entry, a
status record, or entries compacted away) refuses to apply anything until the operator binds
it explicitly (``atb wal --database-url URL sync``, confirmed: tests/cli/test_wal_identity.py);
the entries stay PENDING, the breaker and the status say why. Only a new log (no entry ever
handed to a database) records the first database it is applied to. Real SQLite files.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pytest

from wal import WALEntryStatus, WALStorage
from wal.config import WALConfig
from wal.db import DatabaseManager
from wal.sync.identity import TARGET_FILE, log_is_new, read_target
from wal.sync.manager import WALManager


def _url(path: Path) -> str:
    DatabaseManager(f"sqlite:///{path}").dispose()
    return f"sqlite:///{path}"


def _engine(d: Path, url: str, amounts: list[str]) -> tuple[list[WALEntryStatus], str | None]:
    """A trading process: writes deposits, syncs, stops. Statuses it got, its last error."""
    db = DatabaseManager(url)
    storage = WALStorage(d)
    try:
        cfg = WALConfig(directory=d, database_url=url, apply_mode="inline")  # statuses at once
        m = WALManager(storage, db, cfg)
        got = [
            m.write("atomic_balance_update", delta=Decimal(a), reason="deposit").status
            for a in amounts
        ]
        m.force_sync()
        error = m.get_stats()["last_error"]
        m.stop()
        return got, error
    finally:
        storage.close()
        db.dispose()


def _balance(url: str) -> Decimal:
    db = DatabaseManager(url)
    try:
        return db.get_balance()
    finally:
        db.dispose()


def _pending(d: Path) -> int:
    with WALStorage.open_readonly(d) as log:
        return log.get_stats().entries["pending"]


@pytest.mark.parametrize("pointed_at", ["its own database", "another database"])
def test_a_deleted_database_json_binds_nothing_silently(tmp_path: Path, pointed_at: str) -> None:
    d = tmp_path / "wal"
    a = _url(tmp_path / "a.db")
    got, _ = _engine(d, a, ["1"])
    assert got == [WALEntryStatus.COMPLETED] and read_target(d) is not None
    (d / TARGET_FILE).unlink()  # the identity is lost
    url = a if pointed_at == "its own database" else _url(tmp_path / "b.db")
    got, error = _engine(d, url, ["5", "7"])
    assert got == [WALEntryStatus.PENDING, WALEntryStatus.PENDING]  # durable, not applied
    assert error is not None and TARGET_FILE in error and "missing" in error
    assert not (d / TARGET_FILE).exists()  # nothing bound
    assert _balance(url) == (Decimal(1) if url == a else Decimal(0))
    assert _pending(d) == 2


def test_a_new_log_binds_itself_to_the_first_database(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d) as log:
        assert log_is_new(log)
    a = _url(tmp_path / "a.db")
    got, _ = _engine(d, a, ["2"])
    assert got == [WALEntryStatus.COMPLETED]
    target = read_target(d)
    assert target is not None and "a.db" in target.url


def test_a_log_whose_applied_entries_were_compacted_away_is_not_new(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    a = _url(tmp_path / "a.db")
    _engine(d, a, ["1", "2"])
    with WALStorage(d, max_segment_bytes=4096) as log:
        log.compact()  # the COMPLETED entries (and their status records) leave the log
        assert not log_is_new(log)
    (d / TARGET_FILE).unlink()
    got, error = _engine(d, _url(tmp_path / "b.db"), ["3"])
    assert got == [WALEntryStatus.PENDING] and error is not None


def test_only_pending_entries_make_a_new_log(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d) as log:
        from helpers_log import make_entry

        e = log.append(make_entry(1))
        assert log_is_new(log)
        log.update_status(e, WALEntryStatus.SYNCING)  # handed to a database
        assert not log_is_new(log)
        log.update_status(e, WALEntryStatus.PENDING)  # replayed: still not new
        assert not log_is_new(log)


def test_a_new_log_with_an_append_in_flight_is_still_new(tmp_path: Path) -> None:
    """An append holds its LSN before its record is written: a sync thread asking meanwhile
    must not count it as "a record that is not a PENDING entry". It did (next LSN against
    the PENDING count): on a new log under load, the first apply was refused with "this log
    has handed entries to a database before, but records none", the breaker opened, and the
    check passed only at a quiet moment. Here one append is held inside its fdatasync."""
    from faultfs import CrashFS, Gate
    from helpers_log import make_entry

    d = tmp_path / "wal"
    fs = CrashFS(d)
    with WALStorage(d, fs=fs) as log:
        log.append(make_entry(1))
        gate = fs.add_gate(Gate("fdatasync", path_contains="0" * 12, timeout=30))
        held = threading.Thread(target=log.append, args=(make_entry(2),))
        held.start()
        try:
            assert gate.reached.wait(30), "the append never reached its fdatasync"
            assert log.next_lsn == 3 and log.last_lsn == 1  # the LSN taken, not yet written
            assert log_is_new(log)
        finally:
            gate.release.set()
            held.join(30)
        assert log_is_new(log) and log.last_lsn == 2
