"""Which database a log belongs to: ``<WAL_DIR>/database.json``.

The first time entries of a log are applied to a database, the log records that database's
identity: its URL with the password masked, and the random id the database keeps in its
``wal_database_id`` table (``DatabaseManager.database_id``). A restored backup carries the
same id; any other database has another id, or none. ``atb wal sync`` and ``atb wal replay``
compare the two and refuse to drain a log into another database unless the operator names
the database with ``--database-url`` and confirms (then the new identity is recorded).

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

from wal.config import mask_url
from wal.errors import WALDatabaseError
from wal.log.fileops import OSFileOps, write_file_atomic

__all__ = [
    "TARGET_FILE",
    "DatabaseTarget",
    "check_before_apply",
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

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "database_id": self.database_id, "recorded_at": self.recorded_at}


def read_target(directory: Path) -> DatabaseTarget | None:
    """The recorded target of the log in ``directory``; None when none is recorded.

    An unreadable file raises ``ValueError`` naming it: guessing would defeat its purpose.
    """
    path = Path(directory) / TARGET_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to record anew") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("database_id"), str)
        or not isinstance(data.get("url"), str)
    ):
        raise ValueError(f"{path} has no url and database_id; delete it to record anew")
    return DatabaseTarget(data["url"], data["database_id"], str(data.get("recorded_at", "")))


def record_target(directory: Path, url: str, database_id: str) -> DatabaseTarget:
    """Record (or replace) the log's target database, durably."""
    target = DatabaseTarget(mask_url(url), database_id, datetime.now(UTC).isoformat())
    # temp (O_EXCL, O_NOFOLLOW: a symlink planted at database.json.tmp is never written
    # through), fsync, rename, directory fsync: durable before anything is applied there
    write_file_atomic(
        OSFileOps(),
        directory,
        TARGET_FILE,
        orjson.dumps(target.to_dict(), option=orjson.OPT_INDENT_2),
    )
    return target


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


def check_before_apply(directory: Path, db: Any) -> None:
    """Before the first batch of this process is applied to ``db``: record ``db`` as the log's
    database when none is recorded yet; refuse when it is another database.

    The refusal is a ``WALDatabaseError`` marked transient: the entries stay PENDING (never
    dead letters), the breaker opens, and the status shows why, until the engine is pointed
    at the log's database or the operator rebinds the log (``atb wal sync --database-url URL
    --yes``). A manager without ``database_id`` (your own) is not checked.
    """
    get_id = getattr(db, "database_id", None)
    if not callable(get_id):
        return
    url = str(getattr(db, "url", "?"))
    target = read_target(directory)
    if target is None:
        db_id = get_id(create=True)
        if isinstance(db_id, str):
            record_target(directory, url, db_id)  # durable before anything is applied there
        return
    why = mismatch(target, url, get_id())
    if why is not None:
        raise WALDatabaseError(
            f"{why}: nothing is applied there",
            transient=True,
            hint="point the engine at the log's database, or rebind the log with "
            "`atb wal sync --database-url URL --yes`; the entries stay pending",
        )
