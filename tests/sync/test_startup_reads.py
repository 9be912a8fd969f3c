"""The first reads after a restart are exact (issue 20, item 3).

A real subprocess journals ten deposits of 1 (``write_deferred``: logged, not applied), then
drains them and is killed (``os._exit(137)``, as a SIGKILL) at
``manager.after_apply_before_status``: the database committed the batch and its ledger rows,
the log still says PENDING. This process then opens the same log and database and reads the
balance continuously from two threads and a coroutine while ``start()``'s replay runs: the
replay finds the ten entries in the ledger (duplicates). Every read must say 10.

To hit every step of the replay deterministically, the database's ``apply`` (a subclass of
the real ``DatabaseManager`` on the real database) waits, before its transaction and again
after its COMMIT, until every reader has read a few times: reads run while the batch is in
flight, and between its COMMIT and its end. With ``settle_first``, a read before ``start()``
has already found the ten entries in the ledger (settled them) when the batch replays them:
the case that read 0 instead of 10 before the fix (the batch in flight subtracted again what
the settled read had already taken out).

Also here: a read never answers from the kept state on a non-transient error, and a batch
committing during a read is counted once (the mutations of docs/testing.md's "reads" rows).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from trading_child import fast_config

from wal import WALEntryStatus
from wal.db import DatabaseManager
from wal.db.apply import ApplyResult
from wal.entry import WALEntry
from wal.sync.durable import DurableDatabaseManager

SUPPORT = Path(__file__).resolve().parents[1] / "support"
N = 10
READS = 5  # reads per reader at each pause of the batch

CHILD = """
import sys
from decimal import Decimal
sys.path.insert(0, sys.argv[3])
from trading_child import fast_config
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

url, wal_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[4])
ddb = DurableDatabaseManager(DatabaseManager(url), config=fast_config(wal_dir, url))
assert ddb.manager is not None
calls = [
    ("atomic_balance_update", {"delta": Decimal(1), "account": "a", "reason": "dep"}, f"dep-{i}")
    for i in range(n)
]
ddb.manager.write_deferred(calls)  # durable, not applied
ddb.drain(timeout=30)  # the crash point: committed, not yet COMPLETED in the log
print("the crash point was not reached", flush=True)
"""


def crash_after_a_replay_batch_committed(url: str, wal_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    env["WAL_CRASH_POINT"] = "manager.after_apply_before_status"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, url, str(wal_dir), str(SUPPORT), str(N)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 137, (done.returncode, done.stdout, done.stderr)


class PausingDB(DatabaseManager):
    """The real manager; its ``apply`` lets the readers read before it and after its COMMIT."""

    def __init__(self, url: str, readers: int) -> None:
        super().__init__(url)
        self.readers = readers
        self.cond = threading.Condition()
        self.phase = "idle"  # idle | before | after | done
        self.reads: dict[str, int] = {}

    def _pause(self, phase: str) -> None:
        with self.cond:
            self.phase = phase
            self.reads[phase] = 0
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.reads[phase] >= self.readers * READS, timeout=60)

    def read_done(self) -> None:
        with self.cond:
            if self.phase in ("before", "after"):
                self.reads[self.phase] += 1
                self.cond.notify_all()

    def apply(self, entries: Sequence[WALEntry]) -> list[ApplyResult]:
        self._pause("before")  # the batch is in flight, not yet in the database
        results = super().apply(entries)
        self._pause("after")  # committed, its end not yet told
        with self.cond:
            self.phase = "done"
        return results


@pytest.mark.parametrize("settle_first", [False, True])
def test_reads_during_the_startup_replay_after_a_kill_are_exact(
    db_url: str, tmp_path: Path, settle_first: bool
) -> None:
    wal_dir = tmp_path / "wal"
    crash_after_a_replay_batch_committed(db_url, wal_dir)

    db = PausingDB(db_url, readers=3)
    assert db.get_balance("a") == Decimal(N)  # the database committed them
    ddb = DurableDatabaseManager(db, config=fast_config(wal_dir, db_url))
    assert ddb.storage is not None
    assert ddb.storage.count(WALEntryStatus.PENDING) == N  # the log does not know
    seen: list[Decimal] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.append(ddb.get_balance("a"))
                db.read_done()
        except BaseException as exc:  # reported below
            errors.append(exc)

    def coroutine_reader() -> None:
        async def loop() -> None:
            while not stop.is_set():
                seen.append(await ddb.get_balance_async("a"))
                db.read_done()

        try:
            asyncio.run(loop())
        except BaseException as exc:
            errors.append(exc)

    try:
        if settle_first:
            assert ddb.get_balance("a") == Decimal(N)  # settles the ten: found in the ledger
        threads = [threading.Thread(target=reader) for _ in range(2)]
        threads.append(threading.Thread(target=coroutine_reader))
        for t in threads:
            t.start()
        ddb.start()  # the replay runs while the readers read
        assert ddb.drain(timeout=60) == 0
        stop.set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert db.reads.get("before", 0) >= 3 * READS and db.reads.get("after", 0) >= 3 * READS
        wrong = [v for v in seen if v != Decimal(N)]
        assert not wrong, f"{len(wrong)} of {len(seen)} reads were wrong: {sorted(set(wrong))}"
        assert ddb.get_balance("a") == Decimal(N)
        assert db.get_balance("a") == Decimal(N)
        assert ddb.storage.count(WALEntryStatus.PENDING) == 0
    finally:
        stop.set()
        ddb.stop()
        db.dispose()


# --------------------------------------------------------------------------- the mutations


class CommitDuringRead(DatabaseManager):
    """A batch commits between the read taking the overlay's figures and its snapshot."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.in_apply = threading.Event()
        self.go_commit = threading.Event()
        self.committed = threading.Event()
        self.hold_reads = False

    def apply(self, entries: Sequence[WALEntry]) -> list[ApplyResult]:
        self.in_apply.set()
        self.go_commit.wait(30)
        results = super().apply(entries)
        self.committed.set()
        return results

    def get_balance_and_applied(self, account: str, entry_ids: Any) -> tuple[Decimal, set[str]]:
        if self.hold_reads:
            self.go_commit.set()  # the read took its figures: now the batch commits
            self.committed.wait(30)
        return super().get_balance_and_applied(account, entry_ids)


def test_a_batch_committing_during_a_read_is_counted_once(db_url: str, tmp_path: Path) -> None:
    db = CommitDuringRead(db_url)
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url))
    assert ddb.manager is not None
    try:
        assert ddb.get_balance("a") == 0
        ddb.manager.write_deferred(
            [("atomic_balance_update", {"delta": Decimal(3), "account": "a"}, "k-3")]
        )
        drain = threading.Thread(target=ddb.drain, args=(30,))
        drain.start()
        assert db.in_apply.wait(30)  # the batch is in flight
        db.hold_reads = True
        got = ddb.get_balance("a")  # takes its figures, then the batch commits, then reads
        db.hold_reads = False
        drain.join(30)
        assert got == Decimal(3)
        assert ddb.get_balance("a") == Decimal(3)
    finally:
        db.go_commit.set()
        ddb.stop()
        db.dispose()


class BrokenRead(DatabaseManager):
    """The database answers, but the read itself is wrong (a bug, bad SQL)."""

    broken = False

    def get_balance_and_applied(self, account: str, entry_ids: Any) -> tuple[Decimal, set[str]]:
        if self.broken:
            raise RuntimeError("a bug in the read")
        return super().get_balance_and_applied(account, entry_ids)


def test_a_read_that_fails_for_a_bug_raises_and_never_answers_from_the_kept_state(
    db_url: str, tmp_path: Path
) -> None:
    db = BrokenRead(db_url)
    ddb = DurableDatabaseManager(db, config=fast_config(tmp_path / "wal", db_url))
    try:
        ddb.atomic_balance_update(Decimal(5), account="a")
        assert ddb.get_balance("a") == Decimal(5)  # a kept state exists now
        db.broken = True
        with pytest.raises(RuntimeError, match="a bug in the read"):
            ddb.get_balance("a")
        assert ddb.manager is not None
        assert ddb.manager.breaker.state.value == "closed"  # not taken for an outage
    finally:
        ddb.stop()
        db.dispose()
