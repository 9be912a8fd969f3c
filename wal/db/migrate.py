"""``atb db upgrade | current | downgrade``: the schema's Alembic migrations, run in-process.

The migrations ship in the package (``wal/db/migrations``, ``script_location``
``wal.db:migrations``); they run on a connection opened with the project's engine settings
(:mod:`wal.db.engine`), each revision in its own transaction. A database made by the code
from before migrations (the baseline's tables, no ``alembic_version``) is adopted: stamped
``0001`` in the same transaction as the upgrade that follows. ``wal.db.versioning`` decides
whether a database may be used.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from wal.db.engine import make_engine
from wal.db.migrations.versions.v0001_baseline import TABLES as BASELINE_TABLES
from wal.db.versioning import read_revision
from wal.errors import WALSchemaError

__all__ = [
    "MigrationResult",
    "alembic_config",
    "current",
    "downgrade",
    "script_revisions",
    "upgrade",
]


@dataclass(frozen=True)
class MigrationResult:
    """The revision before and after a command."""

    before: str | None
    after: str | None


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (no ini file)."""
    cfg = Config()
    cfg.set_main_option("script_location", "wal.db:migrations")
    return cfg


def script_revisions() -> list[str]:
    """The packaged revisions, oldest first (what ``REVISIONS`` must list)."""
    script = ScriptDirectory.from_config(alembic_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def _engine(url: str) -> sa.Engine:
    engine, _ = make_engine(url)
    return engine


def current(url: str) -> tuple[str | None, bool]:
    """(the database's revision or None, whether it has our tables). Writes nothing, and
    creates nothing: a SQLite file that is not there is ``WALDatabaseError``."""
    engine, _ = make_engine(url, existing=True)
    try:
        with engine.connect() as conn:
            return read_revision(conn)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> MigrationResult:
    """Upgrade to ``revision`` (``head``: this code's ``HEAD``), adopting a database from
    before migrations (stamped 0001 first). Idempotent."""
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            before, ours = read_revision(conn)
            if before is None and ours:
                names = set(sa.inspect(conn).get_table_names())
                missing = sorted(set(BASELINE_TABLES) - names)
                if missing:
                    raise WALSchemaError(
                        f"cannot adopt this database: it has some of the project's tables but "
                        f"not {', '.join(missing)}, and no schema revision",
                        hint="restore a backup, or create the missing tables by hand first",
                    )
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            if before is None and ours:
                command.stamp(cfg, "0001")  # the baseline's tables are there: adopt them
            try:
                command.upgrade(cfg, revision)
            except CommandError as exc:
                raise WALSchemaError(f"cannot upgrade to {revision!r}: {exc}") from None
            after, _ = read_revision(conn)
        return MigrationResult(before, after)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> MigrationResult:
    """Downgrade to ``revision`` (never below the baseline: that would drop the journal)."""
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            before, _ = read_revision(conn)
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            try:
                command.downgrade(cfg, revision)
            except CommandError as exc:
                raise WALSchemaError(f"cannot downgrade to {revision!r}: {exc}") from None
            after, _ = read_revision(conn)
        return MigrationResult(before, after)
    finally:
        engine.dispose()
