"""wal.service.owners: the owner rows' group commit, on a real SQLite file and PostgreSQL.

Concurrent claims wait for the store's one writer, which commits every claim queued by then
in one transaction; a batch refused because of one row (made by an earlier run) is written
again row by row, each caller getting its own answer; a database that cannot be reached
fails every claim of the batch at once, and none is remembered.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers_log import wait_for
from sqlalchemy import event

from wal.db import DatabaseManager
from wal.db.service_schema import service_orders
from wal.entry import utc_now
from wal.service.owners import OwnerRow, OwnerStore, client_order_id_for


def owner(trader: str, key: str, stop_loss: Decimal | None = None) -> OwnerRow:
    return OwnerRow(client_order_id_for(trader, key), trader, key, f"sha-{key}", stop_loss, None)


@pytest.fixture
def db(db_url: str) -> Iterator[DatabaseManager]:
    manager = DatabaseManager(db_url, timeout_ms=200)
    manager.database_id(create=True)  # every table, the service's included
    yield manager
    manager.dispose()


def commits(db: DatabaseManager) -> list[int]:
    """A list that grows by one at each COMMIT of the manager's engine."""
    seen: list[int] = []
    event.listen(db.engine, "commit", lambda _conn: seen.append(1))
    return seen


def claim_all(
    store: OwnerStore, rows: list[OwnerRow]
) -> tuple[dict[str, object], list[threading.Thread]]:
    """Each row claimed by its own thread, queued behind a writer the caller holds."""
    answers: dict[str, object] = {}

    def claim(row: OwnerRow) -> None:
        try:
            answers[row.client_order_id] = store.claim(row)
        except Exception as exc:  # the caller's answer
            answers[row.client_order_id] = exc

    threads = [threading.Thread(target=claim, args=(r,)) for r in rows]
    for t in threads:
        t.start()
    wait_for(lambda: len(store._queued) == len(rows), "every claim to queue")
    return answers, threads


def test_concurrent_claims_are_one_transaction(db: DatabaseManager) -> None:
    store = OwnerStore(db.engine)
    seen = commits(db)
    rows = [owner(f"t{i}", f"k{i}", Decimal("1.5") if i % 2 else None) for i in range(6)]
    with store._write_lock:  # a claim being written: the others queue behind it
        answers, threads = claim_all(store, rows)
    for t in threads:
        t.join(60)
    assert answers == {r.client_order_id: r for r in rows}
    assert len(seen) == 1  # one COMMIT (one fsync) for six claims
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(service_orders.c.client_order_id)).scalars().all()
    assert sorted(stored) == sorted(r.client_order_id for r in rows)
    assert [store.get(r.client_order_id) for r in rows] == rows
    again = OwnerStore(db.engine)
    again.load()
    assert [again.get(r.client_order_id) for r in rows] == rows


def test_a_row_made_by_an_earlier_run_fails_only_its_own_claim_over(db: DatabaseManager) -> None:
    """The batch is refused for one row (the earlier run's): every claim is written alone,
    that one gets the row that holds its client id, the others their own."""
    store = OwnerStore(db.engine)
    earlier = owner("t1", "k1")
    with db.engine.begin() as conn:  # a run that died after its claim, before we loaded
        conn.execute(
            sa.insert(service_orders).values(
                client_order_id=earlier.client_order_id,
                trader_id="t1",
                idempotency_key="k1",
                request_sha256="sha-from-the-earlier-run",
                stop_loss=None,
                take_profit=None,
                created_at=utc_now(),
            )
        )
    rows = [owner("t0", "k0"), earlier, owner("t2", "k2")]
    with store._write_lock:
        answers, threads = claim_all(store, rows)
    for t in threads:
        t.join(60)
    got = answers[earlier.client_order_id]
    assert isinstance(got, OwnerRow) and got.request_sha256 == "sha-from-the-earlier-run"
    assert answers[rows[0].client_order_id] == rows[0]
    assert answers[rows[2].client_order_id] == rows[2]
    assert store.get(earlier.client_order_id) == got


def test_an_unreachable_database_fails_every_claim_of_the_batch(
    tmp_path: Path,
) -> None:
    """SQLite's write lock held by another process's connection: the batch fails with the
    database's error for each caller, nothing is remembered, and a later claim succeeds."""
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    db = DatabaseManager(url, timeout_ms=100)
    db.database_id(create=True)
    store = OwnerStore(db.engine)
    other = sqlite3.connect(tmp_path / "atb.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        rows = [owner(f"t{i}", f"k{i}") for i in range(4)]
        begins: list[str] = []

        def attempt(_c: object, _cur: object, statement: str, *_: object) -> None:
            if statement.startswith("BEGIN IMMEDIATE"):  # a write transaction tried
                begins.append(statement)

        event.listen(db.engine, "before_cursor_execute", attempt)
        with store._write_lock:
            answers, threads = claim_all(store, rows)
        for t in threads:
            t.join(60)
        assert len(begins) == 1  # one attempt for the batch: no row alone waits its timeout
        assert all(isinstance(a, Exception) for a in answers.values()), answers
        assert all("locked" in str(a) for a in answers.values())
        assert all(store.get(r.client_order_id) is None for r in rows)
        other.execute("ROLLBACK")
        assert store.claim(rows[0]) == rows[0]
    finally:
        other.close()
        db.dispose()
