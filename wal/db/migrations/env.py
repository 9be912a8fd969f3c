"""Alembic's environment: run the migrations on the connection ``wal.db.migrate`` passes.

Never run from a URL in a file: ``atb db upgrade`` opens the database with the project's
engine settings (SQLite pragmas, PostgreSQL timeouts) and hands the connection over in
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the migrations through `atb db upgrade` (wal.db.migrate)")
context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
