"""A trading session for the database fault tests: a plan, its model, and a child process.

The tests of ``WALManager`` and ``DurableDatabaseManager`` against real databases share:

* ``Plan`` / ``make_plan(seed, n)``: a deterministic sequence of critical operations (session,
  balance updates, trades, position opens, updates and closes), each with an explicit
  idempotency key and client-chosen ids, valid in order (an update names an open position).
* ``Model``: what the database must hold after a sequence of operations, exactly (Decimal).
* ``db_state(db, prefix)``: the same view read from the database's tables, to compare.
* ``Outage``: makes the database really unreachable and brings it back (see its docstring).

Run as a program it is the trading process of ``test_trading_crash.py``::

    python tests/support/trading_child.py DB_URL WAL_DIR SEED N START

It opens a ``DurableDatabaseManager`` on the log in ``WAL_DIR``, replays what a killed
predecessor left pending, prints ``ready APPLIED DUPLICATES`` (the replay's counts),
performs operations ``START..N-1`` of the plan, printing ``ack I`` after operation ``I``
returned (it is then durable in the log), drains the log into the database, prints ``done``
and exits 0. Re-performing an operation that a killed
run logged but did not acknowledge is safe: its idempotency key finds the logged entry.
"""

from __future__ import annotations

import gc
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from wal.config import WALConfig
from wal.db import DatabaseManager
from wal.db.schema import metadata
from wal.sync.durable import DurableDatabaseManager

__all__ = [
    "FAST",
    "Model",
    "Op",
    "Outage",
    "PlanBuilder",
    "db_state",
    "fast_config",
    "ledger_count",
    "make_outage",
    "make_plan",
    "open_positions_view",
    "perform",
]

# Small delays so that the tests run fast: quick retries, a short breaker cooldown.
FAST: dict[str, Any] = {
    "sync_interval": 0.05,
    "breaker_failure_threshold": 3,
    "breaker_cooldown_seconds": 0.2,
    "backoff_base_seconds": 0.01,
    "backoff_max_seconds": 0.1,
}


def fast_config(directory: Path | str, url: str, **overrides: Any) -> WALConfig:
    """A ``WALConfig`` read from an empty environment, with the test delays of ``FAST``."""
    return WALConfig.from_env(
        {}, directory=Path(directory), database_url=url, **{**FAST, **overrides}
    )


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Op:
    """One critical operation: ``ddb.<method>(**kwargs, idempotency_key=key)``."""

    index: int
    method: str
    kwargs: dict[str, Any]
    key: str


def perform(ddb: DurableDatabaseManager, op: Op) -> Any:
    """Perform ``op`` through the durable manager (returns when it is durable in the log)."""
    return getattr(ddb, op.method)(**op.kwargs, idempotency_key=op.key)


def _amount(rng: random.Random, low: int, high: int, places: int) -> Decimal:
    return Decimal(rng.randint(low, high)).scaleb(-places)


class PlanBuilder:
    """Makes valid operations one at a time; ``prefix`` keeps ids and accounts apart."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.ops: list[Op] = []
        self.open: list[str] = []  # position ids open after the ops so far, oldest first
        self.session = f"{prefix}s0"
        self.accounts = (f"{prefix}main", f"{prefix}spot")

    def _add(self, method: str, **kwargs: Any) -> Op:
        op = Op(len(self.ops), method, kwargs, f"{self.prefix}op-{len(self.ops)}")
        self.ops.append(op)
        return op

    def start_session(self) -> Op:
        return self._add(
            "create_trading_session",
            session_id=self.session,
            strategy="mean-reversion",
            mode="paper",
            initial_balance=Decimal("10000.00"),
        )

    def end_session(self, final: Decimal) -> Op:
        return self._add("end_trading_session", session_id=self.session, final_balance=final)

    def balance(self, delta: Decimal, account: int = 0, reason: str = "pnl") -> Op:
        acct = self.accounts[account % len(self.accounts)]
        return self._add("atomic_balance_update", delta=delta, reason=reason, account=acct)

    def trade(self, quantity: Decimal, price: Decimal, pnl: Decimal | None = None) -> Op:
        n = len(self.ops)
        return self._add(
            "log_trade",
            trade_id=f"{self.prefix}t{n}",
            session_id=self.session,
            symbol="BTCUSDT" if n % 2 else "ETHUSDT",
            side="buy" if n % 3 else "sell",
            quantity=quantity,
            price=price,
            pnl=pnl,
        )

    def open_position(self, quantity: Decimal, price: Decimal) -> Op:
        pid = f"{self.prefix}p{len(self.ops)}"
        self.open.append(pid)
        return self._add(
            "log_position",
            position_id=pid,
            session_id=self.session,
            symbol="SOLUSDT",
            side="long",
            quantity=quantity,
            entry_price=price,
            stop_loss=price * Decimal("0.95"),
        )

    def update_position(self, which: int, price: Decimal) -> Op:
        pid = self.open[which % len(self.open)]
        return self._add(
            "update_position", position_id=pid, current_price=price, take_profit=price * 2
        )

    def close_position(self, which: int, price: Decimal, pnl: Decimal) -> Op:
        pid = self.open.pop(which % len(self.open))
        return self._add("close_position", position_id=pid, exit_price=price, pnl=pnl)

    def random_op(self, rng: random.Random) -> Op:
        """A random operation, as a strategy would emit them."""
        roll = rng.random()
        price = _amount(rng, 100, 10**7, 2)
        if roll < 0.30:
            return self.balance(_amount(rng, -(10**6), 10**6, 4), rng.randrange(2))
        if roll < 0.55:
            return self.trade(_amount(rng, 1, 10**5, 5), price, _amount(rng, -5000, 5000, 2))
        if roll < 0.70 or not self.open:
            return self.open_position(_amount(rng, 1, 10**5, 5), price)
        if roll < 0.85:
            return self.update_position(rng.randrange(8), price)
        return self.close_position(rng.randrange(8), price, _amount(rng, -5000, 5000, 2))


def make_plan(seed: int, n: int, prefix: str = "") -> list[Op]:
    """``n`` operations: a session start, a deposit, random operations, the session end."""
    assert n >= 3
    rng = random.Random(seed)
    b = PlanBuilder(prefix)
    b.start_session()
    b.balance(Decimal("10000.00"), 0, reason="deposit")
    while len(b.ops) < n - 1:
        b.random_op(rng)
    b.end_session(_amount(rng, 0, 10**8, 2))
    return b.ops


# --------------------------------------------------------------------------- the model

_POS_FIELDS = ("quantity", "entry_price", "stop_loss", "take_profit", "current_price")


@dataclass
class Model:
    """The database the operations applied so far must produce (exact, Decimal)."""

    balances: dict[str, Decimal] = field(default_factory=dict)
    deltas: dict[str, list[Decimal]] = field(default_factory=dict)  # balance_changes, in order
    trades: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    applied: int = 0

    def apply(self, op: Op) -> None:
        kw = op.kwargs
        self.applied += 1
        if op.method == "atomic_balance_update":
            acct = kw["account"]
            self.balances[acct] = self.balances.get(acct, Decimal(0)) + kw["delta"]
            self.deltas.setdefault(acct, []).append(kw["delta"])
        elif op.method == "log_trade":
            self.trades[kw["trade_id"]] = (
                kw["symbol"],
                kw["side"],
                kw["quantity"],
                kw["price"],
                kw.get("pnl"),
            )
        elif op.method == "log_position":
            row = {f: kw.get(f) for f in _POS_FIELDS}
            row.update(status="open", exit_price=None, pnl=None, symbol=kw["symbol"])
            self.positions[kw["position_id"]] = row
        elif op.method == "update_position":
            row = self.positions[kw["position_id"]]
            row.update({k: v for k, v in kw.items() if k != "position_id" and v is not None})
        elif op.method == "close_position":
            row = self.positions[kw["position_id"]]
            row.update(status="closed", exit_price=kw["exit_price"], pnl=kw.get("pnl"))
        elif op.method == "create_trading_session":
            self.sessions[kw["session_id"]] = (kw["strategy"], kw["initial_balance"], None, False)
        elif op.method == "end_trading_session":
            s = self.sessions[kw["session_id"]]
            self.sessions[kw["session_id"]] = (s[0], s[1], kw.get("final_balance"), True)
        else:  # pragma: no cover - the plan makes only the operations above
            raise AssertionError(op.method)

    def apply_all(self, ops: Iterable[Op]) -> Model:
        for op in ops:
            self.apply(op)
        return self

    def balance(self, account: str) -> Decimal:
        return self.balances.get(account, Decimal(0))

    def open_positions(self) -> dict[str, dict[str, Any]]:
        """``{position_id: fields}`` of the open positions, as ``open_positions_view`` shows."""
        return {
            pid: {f: row.get(f) for f in (*_POS_FIELDS, "symbol")}
            for pid, row in self.positions.items()
            if row["status"] == "open"
        }

    def state(self) -> dict[str, Any]:
        """Comparable with ``db_state``."""
        return {
            "balances": dict(self.balances),
            "deltas": {k: list(v) for k, v in self.deltas.items()},
            "trades": dict(self.trades),
            "positions": {k: dict(v) for k, v in self.positions.items()},
            "sessions": dict(self.sessions),
        }


def open_positions_view(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``get_open_positions()`` rows (database or overlay) as ``Model.open_positions``."""
    return {str(r["position_id"]): {f: r.get(f) for f in (*_POS_FIELDS, "symbol")} for r in rows}


def db_state(db: DatabaseManager, prefix: str = "") -> dict[str, Any]:
    """What the database holds, read from its tables (ids and accounts starting with
    ``prefix``), in the shape of ``Model.state()``."""
    t = metadata.tables
    like = f"{prefix}%"
    with db.engine.connect() as conn:
        bal = t["balances"]
        balances = {
            r.account: r.balance
            for r in conn.execute(sa.select(bal).where(bal.c.account.like(like)))
        }
        ch = t["balance_changes"]
        deltas: dict[str, list[Decimal]] = {}
        for r in conn.execute(sa.select(ch).where(ch.c.account.like(like)).order_by(ch.c.id)):
            deltas.setdefault(r.account, []).append(r.delta)
        tr = t["trades"]
        trades = {
            r.trade_id: (r.symbol, r.side, r.quantity, r.price, r.pnl)
            for r in conn.execute(sa.select(tr).where(tr.c.trade_id.like(like)))
        }
        po = t["positions"]
        positions = {
            r.position_id: {
                **{f: getattr(r, f) for f in _POS_FIELDS},
                "status": r.status,
                "exit_price": r.exit_price,
                "pnl": r.pnl,
                "symbol": r.symbol,
            }
            for r in conn.execute(sa.select(po).where(po.c.position_id.like(like)))
        }
        se = t["trading_sessions"]
        sessions = {
            r.session_id: (r.strategy, r.initial_balance, r.final_balance, r.ended_at is not None)
            for r in conn.execute(sa.select(se).where(se.c.session_id.like(like)))
        }
    return {
        "balances": balances,
        "deltas": deltas,
        "trades": trades,
        "positions": positions,
        "sessions": sessions,
    }


def ledger_count(db: DatabaseManager, entry_ids: Iterable[str] | None = None) -> int:
    """Rows of the ``wal_applied`` ledger (among ``entry_ids`` if given)."""
    led = metadata.tables["wal_applied"]
    ids = None if entry_ids is None else list(entry_ids)
    with db.engine.connect() as conn:
        if ids is None:
            return int(conn.execute(sa.select(sa.func.count()).select_from(led)).scalar_one())
        n = 0
        for i in range(0, len(ids), 500):
            q = sa.select(sa.func.count()).where(led.c.entry_id.in_(ids[i : i + 500]))
            n += int(conn.execute(q).scalar_one())
        return n


# --------------------------------------------------------------------------- outages


class Outage:
    """Make the database really unreachable, and bring it back.

    PostgreSQL: ``pg_ctl stop -m immediate`` (a crash: every connection is cut, new ones are
    refused) and ``pg_ctl start`` (crash recovery). ``server`` is the ``pg_url`` fixture.

    SQLite: another connection takes the database file for itself (``PRAGMA
    locking_mode=EXCLUSIVE`` + ``BEGIN EXCLUSIVE``, as a backup or migration tool might), so
    every reader and writer gets "database is locked". In WAL mode an exclusive lock can only
    be had while no other connection has the file open, so the start of the outage first closes
    the manager's pooled connections (``dispose()``: what a server crash does to a PostgreSQL
    pool) and retries until the lock is taken. ``attach`` makes a manager's new connections
    give up on the lock after 20 ms instead of the 5 s busy timeout (a test setting only).
    """

    def __init__(self, url: str, server: Any = None) -> None:
        self.url = url
        self.sqlite = sa.engine.make_url(url).get_backend_name() == "sqlite"
        self.server = server
        self.dbs: list[DatabaseManager] = []
        self.active = False
        self._lock: sqlite3.Connection | None = None
        if not self.sqlite:
            assert server is not None, "a PostgreSQL outage needs the pg_url server"

    def attach(self, db: DatabaseManager) -> DatabaseManager:
        """Let this outage cut ``db``'s connections; returns ``db``."""
        if self.sqlite:

            def fail_fast(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute("PRAGMA busy_timeout=20")

            # insert=True: before the manager's own connect hook, whose first PRAGMA is what
            # meets the lock (its busy_timeout=5000 comes after and applies once connected)
            event.listen(db.engine, "connect", fail_fast, insert=True)
        self.dbs.append(db)
        return db

    def begin(self) -> None:
        assert not self.active
        if not self.sqlite:
            self.server.stop_immediate()
        else:
            path = sa.engine.make_url(self.url).database
            assert path
            deadline = time.monotonic() + 20
            while True:
                for db in self.dbs:
                    db.dispose()
                # a connection checked out during dispose() goes back to the old pool, which
                # only lets go of it when collected
                gc.collect()
                lock = sqlite3.connect(path, isolation_level=None, timeout=0.05)
                try:
                    lock.execute("PRAGMA locking_mode=EXCLUSIVE")
                    lock.execute("BEGIN EXCLUSIVE")
                    break
                except sqlite3.OperationalError:
                    lock.close()  # a manager's connection is still open: close it again
                    if time.monotonic() > deadline:
                        raise
            self._lock = lock
        self.active = True

    def end(self) -> None:
        assert self.active
        if not self.sqlite:
            self.server.start()
        else:
            assert self._lock is not None
            self._lock.close()  # releases the exclusive lock
            self._lock = None
        self.active = False

    def close(self) -> None:
        """End the outage if one is going on (for fixture teardown)."""
        if self.active:
            self.end()


def make_outage(db_url: str, request: Any) -> Outage:
    """An ``Outage`` for the ``db_url`` fixture's database (``request``: the test's)."""
    if sa.engine.make_url(db_url).get_backend_name() == "sqlite":
        return Outage(db_url)
    return Outage(db_url, request.getfixturevalue("pg_url"))


# --------------------------------------------------------------------------- the child


def child_main(argv: list[str]) -> int:
    url, wal_dir, seed, n, start = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    plan = make_plan(seed, n)
    out = sys.stdout
    # inline (WAL_APPLY=inline): the kill plan counts on a batch per call, so that its crash
    # point (the k-th batch) comes before the plan ends; test_money_model covers "behind"
    config = fast_config(wal_dir, url, apply_mode="inline")
    ddb = DurableDatabaseManager(DatabaseManager(url), config=config)
    manager = ddb.manager
    assert manager is not None
    replay = manager.force_sync()  # what a killed run left pending, before new operations
    ddb.start()
    out.write(f"ready {replay.applied} {replay.duplicates}\n")
    out.flush()
    for op in plan[start:]:
        perform(ddb, op)
        out.write(f"ack {op.index}\n")
        out.flush()
    deadline = time.monotonic() + 60
    while manager.force_sync().pending:
        if time.monotonic() > deadline:
            out.write("drain timed out\n")
            return 1
    out.write("done\n")
    out.flush()
    ddb.stop()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(child_main(sys.argv[1:]))
