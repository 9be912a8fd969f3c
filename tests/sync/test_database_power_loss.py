"""The power-loss model extended to the database side (issue 22), on SQLite and PostgreSQL.

``WAL_APPLY=behind`` acknowledges a critical call once its entry is durable in the log and
applies it later, in batches. Its safety rests on two orderings: the log's fsync before the
acknowledgement, and the database's COMMIT (durable on return: SQLite ``synchronous=FULL``,
PostgreSQL ``synchronous_commit=on``) before the COMPLETED mark. This model checks both at
once, with real parts:

* the log runs on ``CrashFS``, which performs every file operation and models what a power
  cut leaves (only what an fsync made durable; ``keep``: the unsynced tail survives too);
* the database is snapshotted each time a COMMIT returns (a copy of the SQLite file through
  its backup API; on PostgreSQL a ``CREATE DATABASE ... TEMPLATE`` copy): "the database
  keeps exactly the commits that returned, and loses the one in flight";
* a crash may come at any instant: after each acknowledgement, before each COMMIT, right
  after each COMMIT (before the marks), after each drain (marks written, maybe not fsynced).

For every instant and both tail fates, the log image and the database copy are opened by a
new ``DurableDatabaseManager`` (as a restarted process would): reads right after ``start()``
equal the model of every acknowledged call (plus any unacknowledged one the log kept: "ask
before redoing" finds it by its key), and after the drain the database holds each of those
effects exactly once.

The second half: a database that **loses its last committed transactions** (restored from a
backup, failed over to a lagging replica) beside a complete log. The COMPLETED entries whose
ledger rows it lacks are applied again at start, with a warning naming how many.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from faultfs import CrashFS, write_image
from psycopg import sql
from sqlalchemy.engine import make_url
from trading_child import fast_config

from wal import WALStorage
from wal.db import DatabaseManager
from wal.db.schema import metadata
from wal.entry import WALEntry
from wal.sync.durable import DurableDatabaseManager

D = Decimal
ACCOUNTS = ("main", "spot")
OPS = 12
DRAIN_AFTER = frozenset({2, 5, 8, 11})  # a drain (one or two batches) after these calls


@dataclass(frozen=True)
class Call:
    index: int
    method: str
    kwargs: dict[str, Any]
    key: str


def plan() -> list[Call]:
    calls = []
    for i in range(OPS):
        if i % 3 == 2:
            kw: dict[str, Any] = {
                "trade_id": f"t-{i}",
                "symbol": "BTCUSDT",
                "side": "buy",
                "quantity": D("0.5"),
                "price": D(100 + i),
            }
            calls.append(Call(i, "log_trade", kw, f"k-{i}"))
        else:
            kw = {"delta": D(10 + i), "reason": f"r-{i}", "account": ACCOUNTS[i % 2]}
            calls.append(Call(i, "atomic_balance_update", kw, f"k-{i}"))
    return calls


def balances_of(calls: Sequence[Call]) -> dict[str, Decimal]:
    out = dict.fromkeys(ACCOUNTS, D(0))
    for c in calls:
        if c.method == "atomic_balance_update":
            out[c.kwargs["account"]] += c.kwargs["delta"]
    return out


# ------------------------------------------------------------------ database copies


class Copies:
    """Copies of the database as of each returned COMMIT, and fresh databases made of them."""

    def __init__(self, url: str, tmp: Path, server: Any) -> None:
        self.url, self.tmp, self.server = url, tmp, server
        self.made: list[str] = []  # PostgreSQL databases to drop

    @property
    def sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def take(self, db: DatabaseManager, n: int) -> str:
        """Copy the database as it is now (every COMMIT that returned); a handle for ``open``."""
        if self.sqlite:
            path = self.tmp / f"copy-{n}.db"
            src = sqlite3.connect(str(make_url(self.url).database))
            dst = sqlite3.connect(path)
            try:
                src.backup(dst)  # a consistent copy of the committed state
            finally:
                src.close()
                dst.close()
            return str(path)
        db.dispose()  # a template must have no connection
        name = f"copy_{uuid.uuid4().hex[:12]}"
        self._create(name, str(make_url(self.url).database))
        return name

    def open(self, handle: str) -> str:
        """A new database equal to the copy ``handle``; its URL."""
        if self.sqlite:
            path = self.tmp / f"restored-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(handle, path)
            return f"sqlite:///{path}"
        name = f"restored_{uuid.uuid4().hex[:12]}"
        self._create(name, handle)
        return str(self.server.database_url(name))

    def _create(self, name: str, template: str) -> None:
        with self.server.admin_connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        self.made.append(name)

    def drop_all(self) -> None:
        for name in self.made:
            self.server.drop_database(name)


@pytest.fixture
def copies(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Copies]:
    server = None if db_url.startswith("sqlite") else request.getfixturevalue("pg_url")
    c = Copies(db_url, tmp_path, server)
    yield c
    if server is not None:
        c.drop_all()


class CopyingDB(DatabaseManager):
    """The bundled manager, telling ``on_commit`` each time a batch's COMMIT returned (before
    the log's COMPLETED marks are written) and ``before_commit`` before it is tried."""

    before_commit: Callable[[], None] = staticmethod(lambda: None)
    on_commit: Callable[[], None] = staticmethod(lambda: None)

    def apply(self, entries: Sequence[WALEntry]) -> Any:
        self.before_commit()
        results = super().apply(entries)
        self.on_commit()
        return results


# ------------------------------------------------------------------ the run and its instants


@dataclass(frozen=True)
class Instant:
    what: str
    log: dict[str, dict[str, bytes]]  # tail mode -> the log directory's files after a cut
    database: str  # a Copies handle: the commits that returned
    acked: int  # calls acknowledged so far (a prefix of the plan)


def run_workload(url: str, wal_dir: Path, copies: Copies) -> tuple[list[Instant], list[str]]:
    """The plan through ``DurableDatabaseManager`` (``WAL_APPLY=behind``, no sync thread: the
    drains are explicit), an instant recorded at each point a crash may come. Returns the
    instants and every database copy in COMMIT order (the first: before any batch)."""
    fs = CrashFS(wal_dir)
    db = CopyingDB(url)
    config = fast_config(wal_dir, url)
    assert config.apply_mode == "behind"
    storage = WALStorage(wal_dir, config.storage_options(), fs=fs)
    ddb = DurableDatabaseManager(db, config=config, storage=storage)
    assert ddb.manager is not None
    db.database_id(create=True)  # the tables; the first batch binds the log (database.json)
    assert ddb.manager.reapply_lost()  # a new log: nothing to check, nothing bound here
    taken = [copies.take(db, 0)]
    instants: list[Instant] = []
    acked = 0

    def note(what: str) -> None:
        images = {mode: fs.image_files(mode) for mode in ("drop", "keep")}
        instants.append(Instant(what, images, taken[-1], acked))

    def committed() -> None:
        taken.append(copies.take(db, len(taken)))
        note(f"right after COMMIT {len(taken) - 1}, before its marks")

    db.before_commit = lambda: note(f"during COMMIT {len(taken)}")  # type: ignore[method-assign]
    db.on_commit = committed  # type: ignore[method-assign]
    try:
        for call in plan():
            getattr(ddb, call.method)(**call.kwargs, idempotency_key=call.key)
            acked += 1
            note(f"after call {call.index} returned")
            if call.index in DRAIN_AFTER:
                assert ddb.drain(timeout=0) == 0
                note(f"after the drain that followed call {call.index}")
    finally:
        ddb.stop()
        storage.close()
        db.dispose()
    return instants, taken


def recover(url: str, wal_dir: Path) -> DurableDatabaseManager:
    return DurableDatabaseManager(DatabaseManager(url), config=fast_config(wal_dir, url))


def counted_calls(ddb: DurableDatabaseManager, acked: int) -> list[Call]:
    """The acknowledged calls, and any later one the log kept (found by its key)."""
    return [c for c in plan() if c.index < acked or ddb.find_by_idempotency_key(c.key)]


def check_database(db: DatabaseManager, calls: Sequence[Call]) -> None:
    """Each effect of ``calls`` exactly once, and nothing else."""
    t = metadata.tables
    with db.engine.connect() as conn:
        reasons = sorted(r[0] for r in conn.execute(sa.select(t["balance_changes"].c.reason)))
        trades = sorted(r[0] for r in conn.execute(sa.select(t["trades"].c.trade_id)))
        ledger = conn.execute(sa.select(sa.func.count()).select_from(t["wal_applied"])).scalar()
    want_reasons = sorted(c.kwargs["reason"] for c in calls if "reason" in c.kwargs)
    want_trades = sorted(c.kwargs["trade_id"] for c in calls if "trade_id" in c.kwargs)
    assert reasons == want_reasons  # each balance update once: none lost, none doubled
    assert trades == want_trades
    assert ledger == len(calls)
    for account, value in balances_of(calls).items():
        assert db.get_balance(account) == value


@pytest.mark.timeout(600)
def test_a_power_loss_at_any_instant_keeps_every_acknowledged_call_exactly_once(
    db_url: str, tmp_path: Path, copies: Copies
) -> None:
    instants, taken = run_workload(db_url, tmp_path / "wal", copies)
    commits = len(taken) - 1
    assert commits >= len(DRAIN_AFTER)  # one batch (at least) per drain
    assert len(instants) == OPS + len(DRAIN_AFTER) + 2 * commits
    checked = 0
    for n, inst in enumerate(instants):
        # PostgreSQL copies are slow to make: the unsynced tail kept only around its COMMITs
        both = copies.sqlite or "COMMIT" in inst.what
        for mode in ("drop", "keep") if both else ("drop",):
            where = f"{inst.what} ({mode}: {inst.acked} acknowledged)"
            d = tmp_path / f"recovered-{n}-{mode}"
            write_image(d, inst.log[mode])
            url = copies.open(inst.database)
            ddb = recover(url, d)
            try:
                ddb.start()
                calls = counted_calls(ddb, inst.acked)
                want = balances_of(calls)
                for account in ACCOUNTS:  # reads are exact before anything is drained
                    assert ddb.get_balance(account) == want[account], where
                assert ddb.drain(timeout=30) == 0, where
                for account in ACCOUNTS:
                    assert ddb.get_balance(account) == want[account], where
                check_database(ddb.db, calls)
            finally:
                ddb.stop()
            checked += 1
    assert checked >= len(instants)


@pytest.mark.timeout(600)
def test_a_database_that_lost_its_last_commits_gets_them_back_from_the_log(
    db_url: str, tmp_path: Path, copies: Copies, caplog: pytest.LogCaptureFixture
) -> None:
    wal_dir = tmp_path / "wal"
    _, taken = run_workload(db_url, wal_dir, copies)
    everything = plan()
    assert len(taken) >= 4  # the first copy (before any batch), then one per COMMIT
    for k, handle in enumerate(taken[:-1]):
        # the log as the run left it (every entry COMPLETED); the database as of COMMIT k
        log_copy = tmp_path / f"log-{k}"
        shutil.copytree(wal_dir, log_copy)
        url = copies.open(handle)
        before = DatabaseManager(url)
        try:
            with before.engine.connect() as conn:
                led = metadata.tables["wal_applied"]
                kept = conn.execute(sa.select(sa.func.count()).select_from(led)).scalar()
        finally:
            before.dispose()
        lost = OPS - int(kept or 0)
        assert lost > 0
        caplog.clear()
        ddb = recover(url, log_copy)
        try:
            with caplog.at_level(logging.WARNING, logger="wal.sync.manager"):
                ddb.start()
            assert ddb.manager is not None and ddb.manager.reapplied == lost
            warned = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
            assert len(warned) == 1 and f"lost {lost} applied entries" in warned[0]
            want = balances_of(everything)
            for account in ACCOUNTS:  # exact at once: no drain needed, nothing was pending
                assert ddb.get_balance(account) == want[account]
            assert ddb.drain(timeout=30) == 0
            check_database(ddb.db, everything)
        finally:
            ddb.stop()
        # a second start finds nothing missing: no warning, nothing applied twice
        caplog.clear()
        again = recover(url, log_copy)
        try:
            with caplog.at_level(logging.WARNING, logger="wal.sync.manager"):
                again.start()
            assert again.manager is not None and again.manager.reapplied == 0
            assert not [r for r in caplog.records if "lost" in r.getMessage()]
            check_database(again.db, everything)
        finally:
            again.stop()
