"""Engines and connections for the reference ``DatabaseManager``: URL checks, SQLite pragmas
(WAL journal, ``synchronous=FULL``, busy timeout, ``BEGIN IMMEDIATE`` for writers) and
PostgreSQL connection settings (connect timeout, lock timeout, statement timeout).

Timeouts. ``Timeouts.ms`` bounds how long one database call may wait: the SQLite busy timeout,
and PostgreSQL's ``connect_timeout`` (rounded up to whole seconds, at least 1),
``lock_timeout`` and ``statement_timeout``. ``None`` keeps the defaults below (a plain
``DatabaseManager``). The log's apply path sets it from ``WAL_DB_TIMEOUT_MS``
(``WALConfig.db_timeout_ms``) so that a database outage costs a critical call at most that
long before the entry falls back to the log. Every new connection reads the current value.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from wal.db.writer_gate import GatedConnection, gate_for
from wal.errors import WALConfigError, WALDatabaseError
from wal.masking import remember_url

log = logging.getLogger("wal.db")

__all__ = [
    "DEFAULT_URL",
    "PG_CONNECT_TIMEOUT_S",
    "PG_LOCK_TIMEOUT_MS",
    "READ_ONLY",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Timeouts",
    "check_pg_durability",
    "make_engine",
    "sqlite_file",
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


@dataclass
class Timeouts:
    """How long one database call may wait, in milliseconds (None: the defaults above).

    Read by every new connection: change ``ms``, then dispose the engine's pool.
    """

    ms: int | None = None

    def sqlite_busy_ms(self) -> int:
        return SQLITE_BUSY_TIMEOUT_MS if self.ms is None else self.ms

    def pg_connect_args(self) -> dict[str, Any]:
        # synchronous_commit=on whatever the server, database or role says: a COMMIT that
        # returned is on the server's disk, so a COMPLETED mark written after it (the log's
        # compaction may then drop the entry) never names an effect a power loss can undo
        durable = "-c synchronous_commit=on"
        if self.ms is None:
            return {
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "options": f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} {durable}",
            }
        return {
            # libpq counts whole seconds (and treats 1 as 2); at least 1
            "connect_timeout": max(1, math.ceil(self.ms / 1000)),
            "options": f"-c lock_timeout={self.ms} -c statement_timeout={self.ms} {durable}",
        }


def sqlite_file(given: str) -> Path | None:
    """The database file a SQLite URL names (None: not SQLite, in memory, or a ``file:`` URI).

    Raises ``WALConfigError`` for a URL that cannot be parsed.
    """
    url = _engine_url(given)
    if url.get_backend_name() != "sqlite":
        return None
    return _sqlite_file(url)


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


_warned_fsync_off: set[str] = set()


def check_pg_durability(dbapi_conn: Any) -> None:
    """Log CRITICAL (once per server) when the server runs with ``fsync=off``: no client
    setting can make its COMMITs durable, and the log marks entries applied (and may compact
    them away) once their COMMIT returned. ``synchronous_commit`` is forced on per session."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("SHOW fsync")
        row = cur.fetchone()
    finally:
        cur.close()
    if not getattr(dbapi_conn, "autocommit", True):
        dbapi_conn.rollback()  # the SHOW opened a transaction: a fresh connection has none
    if row is None or str(row[0]).lower() != "off":
        return
    info = getattr(dbapi_conn, "info", None)
    where = f"{getattr(info, 'host', '?')}:{getattr(info, 'port', '?')}"
    if where in _warned_fsync_off:
        return
    _warned_fsync_off.add(where)
    log.critical(
        "PostgreSQL at %s runs with fsync=off: a power loss of the database can lose "
        "committed effects the log already marked applied; set fsync=on (postgresql.conf) "
        "and keep WAL_RETENTION_HOURS long enough to re-apply them (see docs/database.md)",
        where,
    )


READ_ONLY: Final = "atb_read_only"  # execution option: a SQLite read starts with plain BEGIN


def _install_sqlite_listeners(engine: Engine, timeouts: Timeouts, path: Path | None) -> None:
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
            busy_ms = int(timeouts.sqlite_busy_ms())
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()
        if isinstance(dbapi_conn, GatedConnection) and path is not None:
            dbapi_conn.arm(gate_for(path), busy_ms)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a read-then-write (the balance update) can
        # then never fail half-way with SQLITE_BUSY on the lock upgrade.
        if conn.get_execution_options().get(READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi = conn.connection.dbapi_connection
        if not isinstance(dbapi, GatedConnection):  # in memory: one connection anyway
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # queued behind this process's other writers of the file, woken when the last one
        # ends (``wal.db.writer_gate``), not in SQLite's sleeping busy handler
        with dbapi.write_begun():
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(
    given: str, *, echo: bool = False, timeouts: Timeouts | None = None, existing: bool = False
) -> tuple[Engine, str]:
    """An engine for the URL ``given`` and its dialect name (``"sqlite"`` or ``"postgresql"``).

    A SQLite file's missing parent directories are created 0700 and the file 0600; an
    in-memory SQLite database is one shared connection (one thread at a time). ``timeouts``
    (read by each new connection) bounds how long a call waits; see ``Timeouts``.
    ``existing``: a reader of a database as it is (``atb db current``, ``atb orders``):
    a SQLite file that is not there is ``WALDatabaseError`` naming it, never created (a
    mistyped URL would otherwise read as an empty database, and leave one behind).
    """
    remember_url(given)  # its password is masked in every error text from now on (mask_text)
    timeouts = timeouts if timeouts is not None else Timeouts()
    engine_url = _engine_url(given)
    dialect = engine_url.get_backend_name()
    # a server's connection can go stale (restart, network): pinged at each checkout; a
    # SQLite file cannot, and the ping's SELECT 1 would cost every read and every batch
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": dialect != "sqlite"}
    if dialect == "sqlite":
        path = _sqlite_file(engine_url)
        if path is not None and existing and not path.is_file():
            raise WALDatabaseError(
                f"no database at {path}: no such SQLite file (nothing was created)",
                transient=False,
                hint="check the URL (DATABASE_URL, --database-url); `atb db upgrade` creates one",
            )
        if path is not None:
            _prepare_sqlite_file(path)
            # its write transactions pass this process's gate of the file (``_on_begin``)
            kwargs["connect_args"] = {"factory": GatedConnection}
        if _sqlite_memory(engine_url):
            # One in-memory database needs one connection: use it from one thread at a
            # time (doctests, experiments). Anything real belongs in a file.
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
    else:
        kwargs["connect_args"] = {"application_name": "atb-wal", **timeouts.pg_connect_args()}
    engine = sa.create_engine(engine_url, **kwargs)
    if dialect == "sqlite":
        _install_sqlite_listeners(engine, timeouts, path)
    else:

        @event.listens_for(engine, "do_connect")
        def _timeouts(_d: Any, _r: Any, _a: Any, cparams: dict[str, Any]) -> None:
            cparams.update(timeouts.pg_connect_args())  # the value now, not at creation

        @event.listens_for(engine, "connect")
        def _check_fsync(dbapi_conn: Any, _record: Any) -> None:
            check_pg_durability(dbapi_conn)

    return engine, dialect
