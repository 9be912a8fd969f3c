"""``DatabaseManager``: the reference trading database the log protects (SQLAlchemy 2 Core).

This is the "existing" database layer a trading engine already has; ``DurableDatabaseManager``
wraps it. It runs on SQLite (a file; WAL journal, ``synchronous=FULL``) and on PostgreSQL
(through psycopg 3).

>>> db = DatabaseManager("sqlite://")
>>> db.atomic_balance_update(Decimal("0.1"), reason="deposit")
Decimal('0.1000000000')
>>> db.atomic_balance_update(Decimal("0.2")) == Decimal("0.3")
True
>>> db.dispose()

Its tables, column types and value rules are in :mod:`wal.db_schema`, the effect of each
critical operation in :mod:`wal.db_operations`, the classification of database errors
(``is_transient``) in :mod:`wal.db_errors`, the batch replay of ``apply`` in
:mod:`wal.db_apply`; their public names are importable from here too.

Exactly-once replay
-------------------
``apply(entries)`` runs a batch of log entries in ONE transaction. Each entry's ledger row
is inserted before its effect: they commit together or not at all, so an entry whose id is
already in the ledger is skipped as a ``"duplicate"``, even after an ambiguous commit
(connection lost between COMMIT and its reply). A permanent error (constraint, bad value,
unknown position, bad arguments) rolls back that entry only (each entry then runs in its own
SAVEPOINT). A transient error (see ``is_transient``) aborts the batch and raises
``WALDatabaseError(transient=True)``. Operations are looked up in an explicit registry, never
by ``getattr`` on a name read from the log; a direct call and a replay share one function per
effect, so they do exactly the same thing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from wal.db_apply import ApplyResult, applied_in, apply_batch
from wal.db_errors import RecordNotFoundError, _describe, is_transient
from wal.db_operations import (
    _lock_balance,
    _op_balance_update,
    _op_close_position,
    _op_create_trading_session,
    _op_end_trading_session,
    _op_log_position,
    _op_log_trade,
    _op_update_position,
)
from wal.db_schema import Money as Money  # re-exported: importable from here as before
from wal.db_schema import UTCDateTime as UTCDateTime
from wal.db_schema import (
    _id,
    _money,
    _text,
    _when,
    balances,
    metadata,
    metrics,
    positions,
    trades,
    trading_sessions,
)
from wal.db_schema import balance_changes as balance_changes
from wal.db_schema import wal_applied as wal_applied
from wal.entry import WALEntry
from wal.errors import WALConfigError, WALDatabaseError

__all__ = [
    "DEFAULT_URL",
    "ApplyResult",
    "BalanceTxn",
    "DatabaseManager",
    "RecordNotFoundError",
    "is_transient",
    "metadata",
]

DEFAULT_URL: Final = "sqlite:///data/atb.db"
"""Used when neither the ``url`` argument nor ``DATABASE_URL`` is given."""

SQLITE_BUSY_TIMEOUT_MS: Final = 5000
"""How long a SQLite writer waits for another one's lock before "database is locked"."""

PG_CONNECT_TIMEOUT_S: Final = 5
"""How long a PostgreSQL connection attempt may take before it counts as a transient error."""

PG_LOCK_TIMEOUT_MS: Final = 30_000
"""How long a PostgreSQL statement waits for a row lock before failing (transient, 55P03),
so that a lock that is never released (say, the same account updated from inside its own
``with atomic_balance_update()`` block) is an error instead of a hang."""


class BalanceTxn:
    """The open transaction of ``with db.atomic_balance_update(account=...) as t:``.

    ``t.balance`` was read with the row locked (``SELECT ... FOR UPDATE`` on PostgreSQL; the
    write lock on SQLite), so no one else changes it until the block ends. ``t.add(delta)``
    changes it; everything commits when the block ends and rolls back if it raises.

    The block holds a connection and the row lock: do not update the same account through
    another method of the manager inside it (that call would wait for this very lock; on
    PostgreSQL it fails after ``PG_LOCK_TIMEOUT_MS``, on SQLite after the busy timeout).
    """

    def __init__(self, conn: Connection, account: str, balance: Decimal, reason: str) -> None:
        self._conn = conn
        self._account = account
        self._balance = balance
        self._reason = reason
        self._changes: list[tuple[Decimal, str]] = []
        self._open = True

    @property
    def account(self) -> str:
        return self._account

    @property
    def balance(self) -> Decimal:
        """The balance as this transaction sees it (after its own ``add`` calls)."""
        return self._balance

    @property
    def changes(self) -> tuple[tuple[Decimal, str], ...]:
        """The ``(delta, reason)`` of every ``add`` so far, in order."""
        return tuple(self._changes)

    def add(self, delta: Decimal | int | str, *, reason: str = "") -> Decimal:
        """Add ``delta`` (may be negative) inside the transaction; return the new balance."""
        if not self._open:
            raise RuntimeError("the balance transaction has ended: call add() inside the block")
        why = reason or self._reason
        self._balance = _op_balance_update(self._conn, delta, reason=why, account=self._account)
        self._changes.append((_money(delta, "delta"), why))
        return self._balance


# --------------------------------------------------------------------------- the manager


def _engine_url(given: str) -> URL:
    try:
        url = make_url(given)
    except (sa_exc.ArgumentError, ValueError):
        raise WALConfigError(
            "database url",
            "(not shown: it may hold a password)",
            "a URL such as sqlite:///data/atb.db or postgresql://user:password@host:5432/dbname",
        ) from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise WALConfigError("database url scheme", url.drivername, "sqlite or postgresql")


def _sqlite_memory(url: URL) -> bool:
    name = url.database or ""
    return name in ("", ":memory:") or "mode=memory" in name or url.query.get("mode") == "memory"


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for in-memory and ``file:`` URI databases."""
    name = url.database
    if _sqlite_memory(url) or not name or name.startswith("file:") or url.query.get("uri"):
        return None
    return Path(name)


def _prepare_sqlite_file(path: Path) -> None:
    """Create the file's missing parent directories (0700) and the file itself (0600)."""
    parent = path.parent
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)
        fd = os.open(d.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the new directory's entry must survive a power loss
        finally:
            os.close(fd)
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)  # SQLite gives -wal/-shm this mode too
    os.close(fd)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # SQLite syncs the directory for its journal files, not for this one
    finally:
        os.close(fd)


_READ_ONLY: Final = "atb_read_only"  # execution option: a SQLite read starts with plain BEGIN


def _install_sqlite_listeners(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # sqlite3 must not issue its own BEGIN (it would break SAVEPOINTs); the "begin" hook
        # below does it.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            # In WAL mode, NORMAL may lose a commit on power loss; FULL syncs the WAL on each
            # commit, so an entry marked applied really is in the database.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a read-then-write (the balance update) can
        # then never fail half-way with SQLITE_BUSY on the lock upgrade.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class DatabaseManager:
    """The trading database: balances, trades, positions, sessions, metrics.

    ``url``: a SQLAlchemy URL; when None, the ``DATABASE_URL`` environment variable, else
    ``sqlite:///data/atb.db`` (its directory is created 0700, the file 0600).
    ``postgresql://`` URLs use psycopg 3. ``echo`` logs every SQL statement. An in-memory
    SQLite database (``sqlite://``) is a single connection, for one thread at a time.

    Each critical method runs in its own transaction and returns its result. They raise the
    database's own errors (use ``is_transient`` to classify them) and ``ValueError`` /
    ``TypeError`` / ``RecordNotFoundError`` for bad input.
    """

    def __init__(self, url: str | None = None, *, echo: bool = False) -> None:
        given = url if url is not None else (os.environ.get("DATABASE_URL") or DEFAULT_URL)
        self.url: str = given
        engine_url = _engine_url(given)
        self._dialect_name = engine_url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
        if self._dialect_name == "sqlite":
            path = _sqlite_file(engine_url)
            if path is not None:
                _prepare_sqlite_file(path)
            if _sqlite_memory(engine_url):
                # One in-memory database needs one connection: use it from one thread at a
                # time (doctests, experiments). Anything real belongs in a file.
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["connect_args"] = {
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "atb-wal",
                "options": f"-c lock_timeout={PG_LOCK_TIMEOUT_MS}",
            }
        self._engine: Engine = sa.create_engine(engine_url, **kwargs)
        if self._dialect_name == "sqlite":
            _install_sqlite_listeners(self._engine)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DatabaseManager({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        """The URL with its password masked (``***``): safe to print and log."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except (sa_exc.ArgumentError, ValueError):  # pragma: no cover - checked in __init__
            return "(unparseable url)"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and tools; the methods below are the API)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect_name

    # ------------------------------------------------------------------ plumbing

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            try:
                metadata.create_all(self._engine)
            except sa_exc.DBAPIError as exc:
                if is_transient(exc):
                    raise
                # Another process created the same tables at this very moment; look again.
                metadata.create_all(self._engine)
            self._schema_ready = True

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection in a transaction: committed on exit, rolled back on an exception."""
        self._ensure_schema()
        with self._engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        self._ensure_schema()
        with self._engine.connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})
            with conn.begin():
                yield conn

    # ------------------------------------------------------------------ critical operations

    @overload
    def atomic_balance_update(
        self, delta: Decimal | int | str, *, reason: str = "", account: str = "default"
    ) -> Decimal: ...

    @overload
    def atomic_balance_update(
        self, delta: None = None, *, reason: str = "", account: str = "default"
    ) -> AbstractContextManager[BalanceTxn]: ...

    def atomic_balance_update(
        self,
        delta: Decimal | int | str | None = None,
        *,
        reason: str = "",
        account: str = "default",
    ) -> Decimal | AbstractContextManager[BalanceTxn]:
        """Add ``delta`` to ``account``'s balance and return the new balance.

        Without ``delta``, return a context manager holding the balance row locked::

            with db.atomic_balance_update(account="spot") as t:
                if t.balance >= cost:
                    t.add(-cost, reason="buy")

        It commits when the block ends and rolls back if it raises.
        """
        if delta is None:
            return self._balance_txn(
                _text(account, "account"), _text(reason, "reason", 1000, empty=True)
            )
        with self._write() as conn:
            return _op_balance_update(conn, delta, reason=reason, account=account)

    @contextlib.contextmanager
    def _balance_txn(self, account: str, reason: str) -> Iterator[BalanceTxn]:
        with self._write() as conn:
            txn = BalanceTxn(conn, account, _lock_balance(conn, account), reason)
            try:
                yield txn
            finally:
                txn._open = False

    def log_trade(
        self,
        *,
        symbol: str,
        side: str,
        quantity: Decimal,
        price: Decimal,
        trade_id: str | None = None,
        session_id: str | None = None,
        pnl: Decimal | None = None,
        executed_at: datetime | None = None,
    ) -> str:
        """Record an executed trade; return its ``trade_id`` (a new uuid4 when not given)."""
        with self._write() as conn:
            return _op_log_trade(
                conn,
                symbol=symbol,
                side=side,
                quantity=quantity,
                price=price,
                trade_id=trade_id,
                session_id=session_id,
                pnl=pnl,
                executed_at=executed_at,
            )

    def log_position(
        self,
        *,
        symbol: str,
        side: str,
        quantity: Decimal,
        entry_price: Decimal,
        position_id: str | None = None,
        stop_loss: Decimal | None = None,
        take_profit: Decimal | None = None,
        session_id: str | None = None,
        opened_at: datetime | None = None,
    ) -> str:
        """Open a position; return its ``position_id`` (a new uuid4 when not given)."""
        with self._write() as conn:
            return _op_log_position(
                conn,
                symbol=symbol,
                side=side,
                quantity=quantity,
                entry_price=entry_price,
                position_id=position_id,
                stop_loss=stop_loss,
                take_profit=take_profit,
                session_id=session_id,
                opened_at=opened_at,
            )

    def update_position(
        self,
        position_id: str,
        *,
        stop_loss: Decimal | None = None,
        take_profit: Decimal | None = None,
        quantity: Decimal | None = None,
        current_price: Decimal | None = None,
    ) -> None:
        """Change the given fields of an open position (None leaves a field as it is).

        Raises ``RecordNotFoundError`` for an unknown id, ``ValueError`` for a closed one.
        """
        with self._write() as conn:
            _op_update_position(
                conn,
                position_id,
                stop_loss=stop_loss,
                take_profit=take_profit,
                quantity=quantity,
                current_price=current_price,
            )

    def close_position(
        self,
        position_id: str,
        *,
        exit_price: Decimal,
        pnl: Decimal | None = None,
        closed_at: datetime | None = None,
    ) -> None:
        """Close an open position. Raises ``RecordNotFoundError`` / ``ValueError`` as above."""
        with self._write() as conn:
            _op_close_position(
                conn, position_id, exit_price=exit_price, pnl=pnl, closed_at=closed_at
            )

    def create_trading_session(
        self,
        *,
        strategy: str,
        session_id: str | None = None,
        mode: str = "paper",
        initial_balance: Decimal | None = None,
        started_at: datetime | None = None,
    ) -> str:
        """Start a trading session; return its ``session_id`` (a new uuid4 when not given)."""
        with self._write() as conn:
            return _op_create_trading_session(
                conn,
                strategy=strategy,
                session_id=session_id,
                mode=mode,
                initial_balance=initial_balance,
                started_at=started_at,
            )

    def end_trading_session(
        self,
        session_id: str,
        *,
        final_balance: Decimal | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """End a session. ``RecordNotFoundError`` if unknown, ``ValueError`` if already ended."""
        with self._write() as conn:
            _op_end_trading_session(
                conn, session_id, final_balance=final_balance, ended_at=ended_at
            )

    # ------------------------------------------------------------------ reads

    def get_balance(self, account: str = "default") -> Decimal:
        """The account's balance; ``Decimal(0)`` when it has never been updated."""
        acct = _text(account, "account")
        with self._read() as conn:
            value = conn.execute(
                sa.select(balances.c.balance).where(balances.c.account == acct)
            ).scalar_one_or_none()
        return Decimal(0) if value is None else value

    def get_open_positions(self) -> list[dict[str, Any]]:
        """Every open position as a dict of its columns, oldest first."""
        query = (
            sa.select(positions)
            .where(positions.c.status == "open")
            .order_by(positions.c.opened_at, positions.c.position_id)
        )
        return self._rows(query)

    def get_trades(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Every trade (of one session when ``session_id`` is given), oldest first."""
        query = sa.select(trades).order_by(trades.c.executed_at, trades.c.trade_id)
        if session_id is not None:
            query = query.where(trades.c.session_id == _id(session_id, "session_id"))
        return self._rows(query)

    def get_sessions(self) -> list[dict[str, Any]]:
        """Every trading session, oldest first."""
        query = sa.select(trading_sessions).order_by(
            trading_sessions.c.started_at, trading_sessions.c.session_id
        )
        return self._rows(query)

    def _rows(self, query: sa.Select[Any]) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # ------------------------------------------------------------------ non-critical

    def record_metric(self, name: str, value: float, *, at: datetime | None = None) -> None:
        """Store a measurement. Non-critical: it goes straight to the database, never logged."""
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise TypeError(f"metric value must be a number, got {type(value).__name__}")
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"metric value must be finite, got {number}")
        row = {"name": _text(name, "name", 200), "value": number, "at": _when(at, "at")}
        with self._write() as conn:
            conn.execute(sa.insert(metrics).values(row))

    def get_metrics(self, name: str) -> list[dict[str, Any]]:
        """The measurements named ``name`` (``name``, ``value``, ``at``), oldest first."""
        query = (
            sa.select(metrics.c.name, metrics.c.value, metrics.c.at)
            .where(metrics.c.name == _text(name, "name", 200))
            .order_by(metrics.c.at, metrics.c.id)
        )
        return self._rows(query)

    # ------------------------------------------------------------------ exactly-once replay

    def apply(self, entries: Sequence[WALEntry]) -> list[ApplyResult]:
        """Apply log entries exactly once, in order, in one transaction; one result each.

        Raises ``WALDatabaseError(transient=True)`` when the database is unavailable: then
        nothing of the batch was committed or, if the connection was lost during COMMIT,
        maybe all of it; the ledger makes the retry skip what was. ``transient=False`` only
        if the batch itself could not run (e.g. the COMMIT was refused).
        """
        if not entries:
            return []
        try:
            self._ensure_schema()
            with self._engine.connect() as conn, conn.begin():
                results = apply_batch(conn, entries)
                # Leaving the block COMMITs effects and ledger rows together.
        except Exception as exc:
            transient = is_transient(exc)
            what = (
                "was rolled back"
                if not transient
                else "was rolled back (or, if the "
                "connection was lost during COMMIT, maybe committed: a retry skips what was)"
            )
            raise WALDatabaseError(
                f"applying {len(entries)} entries to {self.safe_url} failed and the batch "
                f"{what}: {_describe(exc)}",
                transient=transient,
            ) from exc
        return results

    def applied_ids(self, entry_ids: Iterable[uuid.UUID | str]) -> set[str]:
        """Which of ``entry_ids`` are in the ``wal_applied`` ledger (as strings)."""
        ids = [str(e) for e in entry_ids]
        if not ids:
            return set()
        with self._read() as conn:
            return applied_in(conn, ids)

    # ------------------------------------------------------------------ lifecycle

    def ping(self) -> None:
        """Round-trip to the database; raise ``WALDatabaseError`` if it cannot be reached."""
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{_READ_ONLY: True})
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            raise WALDatabaseError(
                f"database {self.safe_url} is unreachable: {_describe(exc)}",
                transient=is_transient(exc),
            ) from exc

    def dispose(self) -> None:
        """Close every pooled connection (the manager stays usable; it reconnects)."""
        self._engine.dispose()
