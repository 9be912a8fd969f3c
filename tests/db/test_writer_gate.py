"""``wal.db.writer_gate``: this process's SQLite writers of a file queue on one gate.

What could fail: a gate never let go (every later writer of the process would wait out its
busy timeout), two engines of one file with two gates (no queue between them), a writer
that waited at the gate getting a second full busy timeout from SQLite (the call's bound
doubled), a read taking the gate, a thread deadlocking on its own gate. Real SQLite files,
real threads; a plain ``sqlite3`` connection stands for another process's writer.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from wal.db.engine import READ_ONLY, Timeouts, make_engine
from wal.db.writer_gate import gate_for


def free(path: Path) -> bool:
    """The file's gate is not held (taken and given back at once)."""
    gate = gate_for(path)
    if not gate.acquire(0):
        return False
    gate.release(gate.epoch)
    return True


@contextmanager
def held_by_another_thread(path: Path) -> Iterator[None]:
    """The file's gate held by another thread of this process for the body's length."""
    gate, held, done = gate_for(path), threading.Event(), threading.Event()

    def holder() -> None:
        assert gate.acquire(10)
        held.set()
        done.wait(30)
        gate.release(gate.epoch)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        yield
    finally:
        done.set()
        t.join(30)


def make(path: Path, ms: int | None = None) -> sa.Engine:
    engine, _ = make_engine(f"sqlite:///{path}", timeouts=Timeouts(ms))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    return engine


def test_a_write_transaction_holds_the_gate_until_it_commits_or_rolls_back(
    tmp_path: Path,
) -> None:
    db = tmp_path / "a.db"
    engine = make(db)
    gate = gate_for(db)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert gate._holder == threading.get_ident()
    assert free(db)
    with engine.connect() as conn:  # committed, the connection still checked out: let go
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        conn.commit()
        assert free(db)
        conn.exec_driver_sql("DELETE FROM t WHERE rowid > 1")
        conn.commit()
    with pytest.raises(ZeroDivisionError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        _ = 1 / 0
    assert free(db)  # rolled back: let go
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1
        assert gate._holder is None  # a read never takes it
    engine.dispose()
    assert free(db)


def test_every_engine_of_a_file_shares_its_gate(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert gate_for(tmp_path / "real" / "a.db") is gate_for(tmp_path / "link" / "a.db")
    assert gate_for(tmp_path / "real" / "a.db") is not gate_for(tmp_path / "real" / "b.db")
    one, two = make(tmp_path / "real" / "a.db"), make(tmp_path / "link" / "a.db")
    with one.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert gate_for(tmp_path / "link" / "a.db")._holder == threading.get_ident()
    one.dispose()
    two.dispose()


def test_a_writer_behind_another_writes_once_the_first_commits(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    engine = make(db)
    started, wrote = threading.Event(), []

    def second() -> None:
        started.set()
        with engine.begin() as conn:  # waits at the gate while the first one writes
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        wrote.append(2)

    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        t = threading.Thread(target=second)
        t.start()
        assert started.wait(10)
        assert wrote == []  # it cannot write before the first one ends: SQLite's lock
    t.join(30)
    assert wrote == [2]
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT x FROM t")).scalars()) == [1, 2]
    engine.dispose()
    assert free(db)


def test_a_second_write_of_the_same_thread_fails_within_the_busy_timeout(
    tmp_path: Path,
) -> None:
    """Not a deadlock on its own gate: SQLite answers "locked" as it did without the gate,
    and the gate is let go with the outer transaction."""
    db = tmp_path / "a.db"
    engine = make(db, ms=100)
    with engine.begin() as outer:
        outer.exec_driver_sql("INSERT INTO t VALUES (1)")
        with pytest.raises(sa_exc.OperationalError, match="locked"), engine.begin() as inner:
            inner.exec_driver_sql("INSERT INTO t VALUES (2)")
    assert free(db)
    engine.dispose()


def test_another_processs_writer_still_meets_sqlites_lock_and_the_bound_is_restored(
    tmp_path: Path,
) -> None:
    db = tmp_path / "a.db"
    engine = make(db, ms=100)
    other = sqlite3.connect(db, isolation_level=None)  # not gated: as another process
    other.execute("BEGIN IMMEDIATE")
    try:
        # this process's other writer holds the gate all along: the gate's wait uses the
        # whole bound, and SQLite's own wait gets none of it
        with (
            held_by_another_thread(db),
            pytest.raises(sa_exc.OperationalError, match="locked"),
            engine.begin() as conn,
        ):
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    finally:
        other.rollback()
        other.close()
    assert free(db)
    with engine.begin() as conn:  # the same pooled connection: its full busy timeout back
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 100
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    engine.dispose()


@pytest.mark.filterwarnings("ignore:This process:DeprecationWarning")  # 3.12: fork with threads
def test_a_gate_held_at_a_fork_is_free_in_the_child(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with held_by_another_thread(db):  # another thread of the parent writes at the fork
        pid = os.fork()
        if pid == 0:  # the child: its own writers are not kept waiting by the parent's
            os._exit(0 if free(db) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not free(db)  # the parent's holder still holds it
