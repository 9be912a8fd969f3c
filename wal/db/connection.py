"""``DatabaseConnection``: the connection side of ``DatabaseManager``.

The engine and its timeouts (:mod:`wal.db.engine`), the schema created once on first use,
the database's id (``wal_database_id``), the kinds of transaction the methods run in
(``_write``: committed on exit; ``_read``: read-only; ``_snapshot``: every statement sees one
snapshot; ``_statement``: one statement outside any transaction), ``ping`` and ``dispose``.
``DatabaseManager`` (:mod:`wal.db.manager`) builds on it through ``OrderJournalMethods``
(:mod:`wal.db.order_methods`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from wal.db.classify import describe_error, is_transient
from wal.db.engine import DEFAULT_URL, READ_ONLY, Timeouts, make_engine
from wal.db.schema import valid_when, wal_database_id
from wal.db.service_schema import api_tokens  # noqa: F401  (its tables join `metadata`)
from wal.db.versioning import check_schema as check_revision
from wal.db.versioning import ensure_schema
from wal.errors import WALDatabaseError
from wal.masking import mask_url

__all__ = ["DatabaseConnection"]


class DatabaseConnection:
    """Engine, schema, database id, transactions (module docstring). ``url``: as for
    ``DatabaseManager``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        echo: bool = False,
        timeout_ms: int | None = None,
        read_only: bool = False,
    ) -> None:
        given = url if url is not None else (os.environ.get("DATABASE_URL") or DEFAULT_URL)
        self.url: str = given
        # read_only: a reader of a database as it is (`atb orders`): the schema and the id are
        # never created, so a read never takes SQLite's write lock (BEGIN IMMEDIATE)
        self.read_only = read_only
        self._timeouts = Timeouts(timeout_ms)
        self._engine, self._dialect_name = make_engine(
            given, echo=echo, timeouts=self._timeouts, existing=read_only
        )
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    @property
    def safe_url(self) -> str:
        """The URL with its password masked (``***``): safe to print and log."""
        return mask_url(self.url)  # user:password@ and ?password= (libpq's keyword) alike

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and tools; the methods below are the API)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect_name

    @property
    def timeout_ms(self) -> int | None:
        """How long one call may wait (SQLite busy timeout; PostgreSQL connect, lock and
        statement timeouts); None: the driver defaults of ``wal.db.engine``."""
        return self._timeouts.ms

    def set_timeout_ms(self, ms: int | None) -> None:
        """Change ``timeout_ms``; pooled connections are closed so every new one uses it.

        ``WALManager`` calls it with ``WAL_DB_TIMEOUT_MS``: during an outage a critical call
        then waits at most that long before its entry falls back to the log.
        """
        if ms is not None and (type(ms) is not int or ms < 1):
            raise ValueError(f"timeout_ms must be a positive integer, got {ms!r}")
        if ms != self._timeouts.ms:
            self._timeouts.ms = ms
            self._engine.dispose()

    # ------------------------------------------------------------------ plumbing

    def _ensure_schema(self) -> None:
        if self._schema_ready or self.read_only:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            # an empty database is created at the code's schema revision; another revision
            # raises WALSchemaError (transient: entries wait in the log for `atb db upgrade`)
            ensure_schema(self._engine, self.safe_url)
            self._make_database_id()
            self._schema_ready = True

    def _make_database_id(self) -> str:
        with self._engine.begin() as conn:
            found = conn.execute(sa.select(wal_database_id.c.database_id)).scalar()
            if found is not None:
                return str(found)
            new = str(uuid.uuid4())
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(wal_database_id).values(
                            key=1, database_id=new, created_at=valid_when(None, "created_at")
                        )
                    )
            except sa_exc.IntegrityError:  # another process gave it one at this very moment
                pass
            return str(conn.execute(sa.select(wal_database_id.c.database_id)).scalar_one())

    def check_schema(self) -> None:
        """Raise ``WALSchemaError`` if the database is reachable and not at this code's schema
        revision (``atb db upgrade``); an empty database passes (it is created on first use),
        and so does an unreachable one (the log takes the writes until it returns)."""
        try:
            check_revision(self._engine, self.safe_url)
        except sa_exc.DBAPIError as exc:
            if not is_transient(exc):
                raise

    def database_id(self, *, create: bool = False) -> str | None:
        """The random id that names this database (``wal_database_id``), given on first use.

        ``create=False`` only reads: None when the database has none yet (a new database, or
        one from before ids existed); nothing is created. ``create=True`` creates the tables
        and the id when missing. The log records it, and ``atb wal sync`` refuses to drain a
        log into a database with another id.
        """
        if create:
            self._ensure_schema()
            return self._make_database_id()
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{READ_ONLY: True})
                with conn.begin():
                    found = conn.execute(sa.select(wal_database_id.c.database_id)).scalar()
        except sa_exc.DBAPIError as exc:
            if is_transient(exc):
                raise WALDatabaseError(
                    f"database {self.safe_url} is unreachable: {describe_error(exc, self.url)}",
                    transient=True,
                ) from exc
            return None  # no such table: a database the log never applied to
        return None if found is None else str(found)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection in a transaction: committed on exit, rolled back on an exception."""
        if self.read_only:
            raise WALDatabaseError(
                f"database {self.safe_url} was opened read-only: nothing is written",
                transient=False,
            )
        self._ensure_schema()
        with self._engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        self._ensure_schema()
        with self._engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read transaction whose statements all see ONE snapshot of the database."""
        self._ensure_schema()
        with self._engine.connect() as conn:
            options: dict[str, Any] = {READ_ONLY: True}
            if self._dialect_name == "postgresql":
                # READ COMMITTED gives each statement its own snapshot; the overlay needs the
                # balance and the ledger rows from the same instant
                options["isolation_level"] = "REPEATABLE READ"
            conn.execution_options(**options)
            with conn.begin():  # SQLite (WAL mode): the first read fixes the snapshot
                yield conn

    @contextlib.contextmanager
    def _statement(self) -> Iterator[Any]:
        """A DBAPI cursor outside any transaction, for ONE statement: a statement sees one
        snapshot by itself (PostgreSQL at any isolation level, SQLite in autocommit), so
        there is no BEGIN and no ROLLBACK, each a round trip and a wait for the interpreter
        lock while the sync thread is busy. A connection that failed is not pooled again."""
        self._ensure_schema()
        raw = self._engine.raw_connection()
        pg = self._dialect_name == "postgresql"
        try:
            if pg:
                raw.driver_connection.autocommit = True  # type: ignore[union-attr]  # no BEGIN
            cur = raw.cursor()
            try:
                yield cur
            finally:
                cur.close()
            if pg:
                raw.driver_connection.autocommit = False  # type: ignore[union-attr]  # as pooled
        except BaseException:
            raw.invalidate()  # its state is unknown: closed, never handed out again
            raise
        finally:
            raw.close()

    # ------------------------------------------------------------------ lifecycle

    def ping(self, *, write: bool = False) -> None:
        """Round-trip to the database; raise ``WALDatabaseError`` if it cannot be reached.

        ``write=True`` checks that it could take a write now: on SQLite a ``BEGIN
        IMMEDIATE`` (the write lock, within the busy timeout) rolled back at once; on
        PostgreSQL a ``SELECT 1`` in a transaction that is not read-only (a standby or a
        read-only default fails). Nothing is written either way.
        """
        try:
            with self._engine.connect() as conn:
                if write:
                    with conn.begin() as txn:  # BEGIN IMMEDIATE on SQLite
                        conn.exec_driver_sql("SELECT 1")
                        if self._dialect_name == "postgresql":
                            ro = conn.exec_driver_sql("SHOW transaction_read_only").scalar()
                            if ro == "on":
                                raise RuntimeError("the database is read-only (a standby?)")
                        txn.rollback()
                    return
                conn.execution_options(**{READ_ONLY: True})
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            raise WALDatabaseError(
                f"database {self.safe_url} is unreachable: {describe_error(exc, self.url)}",
                transient=is_transient(exc),
            ) from exc

    def dispose(self) -> None:
        """Close every pooled connection (the manager stays usable; it reconnects)."""
        self._engine.dispose()
