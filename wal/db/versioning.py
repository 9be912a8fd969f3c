"""The schema's revision: which Alembic migration a database is at, checked on first use.

``REVISIONS`` lists the migrations of :mod:`wal.db.migrations` oldest first; ``HEAD`` is the
revision this code reads and writes. ``ensure_schema`` runs once per ``DatabaseConnection``
before its first statement:

* an empty database gets every table (``metadata.create_all``) and is stamped ``HEAD`` in
  the same transaction (PostgreSQL; SQLite's DDL is transactional too);
* a database at ``HEAD`` is used as it is;
* anything else (an older revision, tables from before the migrations, a newer revision)
  raises ``WALSchemaError`` naming the command to run (``atb db upgrade``). It is transient:
  entries stay PENDING in the log, never dead-lettered, until the database is migrated.

A new table is one more migration in ``wal/db/migrations/versions/`` and one more name in
``REVISIONS`` (``tests/db/test_migrations.py`` checks both agree, and that an upgraded
database equals a fresh one).
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from wal.db.classify import is_transient
from wal.db.schema import metadata
from wal.errors import WALSchemaError

__all__ = ["HEAD", "REVISIONS", "check_schema", "ensure_schema", "read_revision", "version_table"]

# the migrations, oldest first (wal/db/migrations/versions)
REVISIONS: Final = ("0001", "0002", "0003", "0004", "0005", "0006")
HEAD: Final = REVISIONS[-1]

# Alembic's own bookkeeping table, declared here the way Alembic creates it, so a fresh
# database stamped by ``ensure_schema`` is exactly what ``atb db upgrade`` makes.
version_table = sa.Table(
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def read_revision(conn: Connection) -> tuple[str | None, bool]:
    """(the database's revision or None, whether it holds any of our tables)."""
    names = set(sa.inspect(conn).get_table_names())
    ours = bool(names & set(metadata.tables))
    if version_table.name not in names:
        return None, ours
    rev = conn.execute(sa.select(version_table.c.version_num)).scalar()
    return (None if rev is None else str(rev)), ours


def _check(rev: str | None, ours: bool, where: str) -> None:
    if rev == HEAD:
        return
    if rev is None:
        what = "has tables from before schema migrations (no revision)" if ours else "is empty"
    elif rev in REVISIONS:
        what = f"is at schema revision {rev}, behind this code's {HEAD}"
    else:
        raise WALSchemaError(
            f"database {where} is at schema revision {rev}, which this code does not know "
            f"(it knows {', '.join(REVISIONS)}): the database is newer than the code",
            hint="run the newer code, or `atb db downgrade " + HEAD + "` with the newer one",
        )
    raise WALSchemaError(f"database {where} {what}: run `atb db upgrade`")


def ensure_schema(engine: Engine, where: str) -> None:
    """Create and stamp an empty database; accept one at ``HEAD``; refuse anything else
    (``WALSchemaError``). ``where``: the database as printed (password masked)."""
    for attempt in range(2):
        try:
            with engine.begin() as conn:
                rev, ours = read_revision(conn)
                if rev is None and not ours:
                    # one transaction: the tables and their revision, or neither
                    metadata.create_all(conn)
                    version_table.create(conn)
                    conn.execute(sa.insert(version_table).values(version_num=HEAD))
                    return
            _check(rev, ours, where)
            return
        except sa_exc.DBAPIError as exc:
            if attempt or is_transient(exc):
                raise
            # another process created the same tables at this very moment: look again
    raise AssertionError("unreachable")  # pragma: no cover


def check_schema(engine: Engine, where: str) -> str | None:
    """Raise ``WALSchemaError`` unless the database is at ``HEAD`` (an empty one passes: it
    is created on first use); the revision found. Nothing is written."""
    with engine.connect() as conn:
        rev, ours = read_revision(conn)
    if rev is None and not ours:
        return None
    _check(rev, ours, where)
    return rev
