"""Reads first: the sync thread steps aside, between a batch's steps, for a read in progress.

During a backlog's drain a read waits for the interpreter lock after each of its database
calls, and the sync thread, busy in Python, gives it up only every ``sys.getswitchinterval()``
(``Overlay.pause_for_reads``). These tests hold a real read inside its database call (a real
SQLite or PostgreSQL read, then an event) and check the decisions, never a duration:

* the overlay's pause waits for the read in progress, and returns at once when there is none;
* the sync thread, its batch committed, records the batch's end only after the read ended,
  and the read's figure is exact (the batch's entries counted once);
* the pause is bounded (``READS_FIRST_SECONDS``): a read that never ends does not stop the
  drain.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from helpers_log import wait_for
from trading_child import fast_config, ledger_count

from wal import WALEntry, WALEntryStatus
from wal.db import DatabaseManager
from wal.db.apply import ApplyResult
from wal.sync import overlay as overlay_module
from wal.sync.durable import DurableDatabaseManager
from wal.sync.overlay import Overlay

D = Decimal


class HeldReads(DatabaseManager):
    """The bundled manager; a balance read, once ``hold`` is set, stops inside its database
    call (after reading) until ``release`` is set."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.hold = threading.Event()
        self.inside = threading.Event()
        self.release = threading.Event()

    def get_balance_and_applied(
        self, account: str, entry_ids: Iterable[uuid.UUID | str]
    ) -> tuple[Decimal, set[str]]:
        found = super().get_balance_and_applied(account, entry_ids)
        if self.hold.is_set():
            self.inside.set()
            assert self.release.wait(60), "the test never released the read"
        return found


def _waiters(ov: Overlay) -> int:
    """Threads waiting on the overlay's read gate (the pause, or a batch start)."""
    return len(ov._gate._cond._waiters)  # type: ignore[attr-defined]


def test_the_pause_waits_for_the_read_in_progress_and_not_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overlay_module, "READS_FIRST_SECONDS", 60.0)
    ov = Overlay()
    ov.pause_for_reads()  # no read: returns at once (a wait would last a minute)
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def read(ids: list[str]) -> tuple[Decimal, set[str]]:
        inside.set()
        assert release.wait(60)
        order.append("read")
        return D("1"), set()

    reader = threading.Thread(target=lambda: ov.fresh_balance("a", read))
    reader.start()
    assert inside.wait(60)

    def pause() -> None:
        ov.pause_for_reads()
        order.append("pause")

    pauser = threading.Thread(target=pause)
    pauser.start()
    wait_for(lambda: _waiters(ov) == 1, "the pause to wait for the read")
    assert order == []
    release.set()
    pauser.join(60)
    reader.join(60)
    assert order == ["read", "pause"]


class ReadDuringBatch:
    """Three balance updates logged; the sync thread's batch committed; then a read held
    inside its database call while the sync thread goes on (``drainer``, ``reader``)."""

    def __init__(self, db_url: str, directory: Path) -> None:
        self.db = db = HeldReads(db_url)
        db.database_id(create=True)
        self.ddb = ddb = DurableDatabaseManager(db, config=fast_config(directory, db_url))
        assert ddb.manager is not None and ddb.storage is not None
        self.storage = ddb.storage
        assert ddb.get_balance("a") == D(0)  # the base is known
        for _ in range(3):
            ddb.manager.write("atomic_balance_update", delta=D("2"), account="a")
        applied, go_on = threading.Event(), threading.Event()
        real_apply = db.apply

        def apply(entries: Sequence[WALEntry]) -> list[ApplyResult]:
            found = real_apply(entries)
            applied.set()
            assert go_on.wait(60)  # committed; the read starts before the next step
            return found

        db.apply = apply  # type: ignore[method-assign]  # the real apply, then a pause
        self.drainer = threading.Thread(target=ddb.drain)
        self.drainer.start()
        assert applied.wait(60)
        db.hold.set()
        self.figures: list[Decimal] = []
        self.reader = threading.Thread(target=lambda: self.figures.append(ddb.get_balance("a")))
        self.reader.start()
        assert db.inside.wait(60)  # the read is inside its database call
        go_on.set()

    def waiting(self) -> int:
        assert self.ddb._reads is not None
        return _waiters(self.ddb._reads._overlay)

    def close(self) -> None:
        self.db.release.set()
        self.reader.join(60)
        self.drainer.join(60)
        self.ddb.stop()
        self.db.dispose()


@contextmanager
def read_during_batch(
    db_url: str, directory: Path, monkeypatch: pytest.MonkeyPatch, reads_first_s: float
) -> Iterator[ReadDuringBatch]:
    """A ``ReadDuringBatch`` with the sync thread stepping aside at most ``reads_first_s``."""
    monkeypatch.setattr(overlay_module, "READS_FIRST_SECONDS", reads_first_s)
    run = ReadDuringBatch(db_url, directory)
    try:
        yield run
    finally:
        run.close()


def test_the_sync_thread_records_a_batch_only_after_the_read_in_progress(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with read_during_batch(db_url, tmp_path / "wal", monkeypatch, 60.0) as run:
        # the batch is committed; the sync thread waits for the read before its next step
        wait_for(lambda: run.waiting() == 1, "the sync thread to step aside")
        assert run.storage.count(WALEntryStatus.PENDING) == 3  # nothing recorded meanwhile
        run.db.release.set()
        run.reader.join(60)
        run.drainer.join(60)
        assert run.figures == [D("6")]  # the committed batch counted once
        assert ledger_count(run.db) == 3
        assert run.storage.count(WALEntryStatus.PENDING) == 0
        assert run.ddb.get_balance("a") == D("6")


def test_a_read_that_does_not_end_does_not_stop_the_drain(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pause is bounded: the drain ends while the read is still held."""
    with read_during_batch(db_url, tmp_path / "wal", monkeypatch, 0.001) as run:
        run.drainer.join(60)
        assert not run.drainer.is_alive() and run.reader.is_alive()
        assert run.storage.count(WALEntryStatus.PENDING) == 0
        assert ledger_count(run.db) == 3
        run.db.release.set()
        run.reader.join(60)
        assert run.figures == [D("6")]
        assert run.ddb.get_balance("a") == D("6")
