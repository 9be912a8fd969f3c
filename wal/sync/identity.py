"""Which database a log belongs to: ``<WAL_DIR>/database.json``.

The first time entries of a log are applied to a database, the log records that database's
identity: its URL with the password masked, and the random id the database keeps in its
``wal_database_id`` table (``DatabaseManager.database_id``). A restored backup carries the
same id; any other database has another id, or none. ``atb wal sync`` and ``atb wal replay``
compare the two and refuse to drain a log into another database unless the operator names
the database with ``--database-url`` and confirms (then the new identity is recorded).

A log that has handed entries to a database before (``log_is_new`` is False) never binds
itself again when the file is missing: that is as loud as a wrong database, until the
operator names the database (``atb wal --database-url URL sync``, confirmed). Only a new log
binds itself to the first database it is applied to: one whose records written so far are all
PENDING entries (``WALStorage.only_pending_entries``, one snapshot: an append in flight is not
yet a record, and never makes a new log look used).

The file is written atomically (``write_file_atomic``: temp file, fsync, rename, directory
fsync; never through a symlink). The trading
process (``WALManager``) checks before its first batch: it records the identity when none is
recorded yet, and applies nothing to a database with another id (``check_before_apply``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from wal.config import mask_url
from wal.db.engine import sqlite_file
from wal.errors import WALConfigError, WALDatabaseError, WALUnsafeFileError
from wal.log.fileops import FileOps, OSFileOps, read_regular, write_file_atomic
from wal.log.storage import WALStorage

__all__ = [
    "TARGET_FILE",
    "DatabaseTarget",
    "check_before_apply",
    "log_is_new",
    "unbound_problem",
    "mismatch",
    "read_target",
    "record_target",
]

TARGET_FILE = "database.json"


@dataclass(frozen=True)
class DatabaseTarget:
    """The database a log belongs to, as recorded in ``database.json``."""

    url: str  # password masked
    database_id: str
    recorded_at: str
    # the log's next LSN when this database was first recorded: entries before it may have
    # been applied to an earlier database (a rebind), so only those from it on are checked
    # against this database's ledger at start (``Applier.reapply_lost``); 0: every entry
    from_lsn: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "database_id": self.database_id,
            "recorded_at": self.recorded_at,
            "from_lsn": self.from_lsn,
        }


def read_target(directory: Path) -> DatabaseTarget | None:
    """The recorded target of the log in ``directory``; None when none is recorded.

    An unreadable file raises ``ValueError`` naming it: guessing would defeat its purpose.
    """
    path = Path(directory) / TARGET_FILE
    try:
        data = orjson.loads(read_regular(path))
    except FileNotFoundError:
        return None
    except WALUnsafeFileError as exc:  # a FIFO or a device is never read (it would block)
        raise ValueError(f"{exc}; move it away and record the database anew") from None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to record anew") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("database_id"), str)
        or not isinstance(data.get("url"), str)
    ):
        raise ValueError(f"{path} has no url and database_id; delete it to record anew")
    from_lsn = data.get("from_lsn", 0)
    if type(from_lsn) is not int or from_lsn < 0:
        raise ValueError(f"{path} has a bad from_lsn {from_lsn!r}; delete it to record anew")
    return DatabaseTarget(
        data["url"], data["database_id"], str(data.get("recorded_at", "")), from_lsn
    )


def record_target(
    directory: Path,
    url: str,
    database_id: str,
    fs: FileOps | None = None,
    *,
    from_lsn: int = 0,
) -> DatabaseTarget:
    """Record (or replace) the log's target database, durably (through ``fs``: the log's
    own file operations when the caller has the log open). ``from_lsn``: the log's next LSN
    (see ``DatabaseTarget.from_lsn``); kept from the record when the database is the same."""
    try:
        old = read_target(directory)
    except ValueError:
        old = None
    if old is not None and old.database_id == database_id:
        from_lsn = old.from_lsn  # the same database: what it holds since then is unchanged
    target = DatabaseTarget(
        mask_url(_absolute(url)), database_id, datetime.now(UTC).isoformat(), from_lsn
    )
    # temp (O_EXCL, O_NOFOLLOW: a symlink planted at database.json.tmp is never written
    # through), fsync, rename, directory fsync: durable before anything is applied there
    write_file_atomic(
        fs if fs is not None else OSFileOps(),
        directory,
        TARGET_FILE,
        orjson.dumps(target.to_dict(), option=orjson.OPT_INDENT_2),
    )
    return target


def _absolute(url: str) -> str:
    """A SQLite URL with its file's absolute path (the default ``sqlite:///data/atb.db`` is
    relative: read back from another directory, it would name another file)."""
    try:
        path = sqlite_file(url)
    except WALConfigError:
        return url
    if path is None or path.is_absolute():
        return url
    return make_url(url).set(database=str(path.resolve())).render_as_string(hide_password=False)


def mismatch(target: DatabaseTarget, url: str, database_id: str | None) -> str | None:
    """Why ``url`` (whose database has ``database_id``) is not the recorded target, or None."""
    if database_id == target.database_id:
        return None
    what = (
        "has no database id (a new database?)"
        if database_id is None
        else (f"is database id {database_id}")
    )
    return (
        f"this log belongs to {target.url} (database id {target.database_id}), "
        f"but {mask_url(url)} {what}"
    )


def log_is_new(storage: WALStorage) -> bool:
    """True when no entry of the log was ever handed to a database: every record is a
    PENDING entry (no status record, nothing compacted away, nothing COMPLETED, SYNCING or
    FAILED). Only such a log may bind itself to a database without the operator saying so."""
    # the records written, not the LSNs taken: an append in flight is not yet counted as a
    # PENDING entry, and was read as "a record that is not one" (a false refusal, loudly)
    return storage.only_pending_entries()


def unbound_problem(directory: Path) -> str:
    """Why a log that handed entries to a database before binds to none now."""
    return (
        f"this log has handed entries to a database before, but records none: "
        f"{Path(directory) / TARGET_FILE} is missing (deleted, or lost with a restore)"
    )


BIND_HINT = (
    "bind the log explicitly to the database its entries belong to: `atb wal --database-url "
    "URL sync` (asks to confirm; --yes skips the question); the entries stay pending until then"
)


def check_before_apply(directory: Path, db: Any, storage: WALStorage | None = None) -> None:
    """Before the first batch of this process is applied to ``db``: record ``db`` as the log's
    database when none is recorded yet and the log is new (``log_is_new``); refuse when it is
    another database, or when the record is missing from a log that has handed entries to
    a database before (losing the identity is as loud as a wrong one).

    The refusal is a ``WALDatabaseError`` marked transient: the entries stay PENDING (never
    dead letters), the breaker opens, and the status shows why, until the engine is pointed
    at the log's database or the operator binds the log (``atb wal --database-url URL sync
    --yes``). A manager without ``database_id`` (your own) is not checked. ``storage``: the
    log (else it is read once, read-only, to tell whether it is new).
    """
    get_id = getattr(db, "database_id", None)
    if not callable(get_id):
        return
    url = str(getattr(db, "url", "?"))
    target = read_target(directory)
    if target is None:
        if storage is not None:
            new = log_is_new(storage)
        else:
            with WALStorage.open_readonly(directory) as log:
                new = log_is_new(log)
        if not new:
            raise WALDatabaseError(
                f"{unbound_problem(directory)}: nothing is applied to {mask_url(url)}",
                transient=True,
                hint=BIND_HINT,
            )
        db_id = get_id(create=True)
        if isinstance(db_id, str):
            # durable before anything is applied there
            record_target(
                directory,
                url,
                db_id,
                storage.file_ops if storage else None,
                from_lsn=storage.first_lsn if storage else 0,  # a new log: every entry
            )
        return
    why = mismatch(target, url, get_id())
    if why is not None:
        raise WALDatabaseError(
            f"{why}: nothing is applied there",
            transient=True,
            hint="point the engine at the log's database, or rebind the log with "
            "`atb wal --database-url URL sync --yes`; the entries stay pending",
        )
