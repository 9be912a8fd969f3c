"""The database side: the reference ``DatabaseManager`` (SQLAlchemy 2; SQLite and PostgreSQL).

Layer rule: it knows entries (``wal.entry``), not the storage: it imports only the foundation
modules (``wal.errors``, ``wal.codec``, ``wal.entry``, ``wal.crashpoints``) and its own
modules; never ``wal.log``, ``wal.sync`` or ``wal.tools``.

Modules, bottom to top:

* ``classify``: ``is_transient`` (retry later, or fail the entry), ``RecordNotFoundError``.
* ``schema``: the tables, exact column types (``Money``, ``UTCDateTime``), value validators.
* ``operations``: the effect of each critical operation, shared by direct calls and replay.
* ``apply``: exactly-once replay of a batch (one ledger query, multi-row inserts, fallback).
* ``engine``: engines and connections (SQLite pragmas, PostgreSQL settings, URL checks).
* ``writer_gate``: this process's SQLite writers of a file, one at a time, woken at once.
* ``order_schema``: the order journal's tables (append-only events), the audit chain's hash.
* ``orders``: the order journal's effects (intent, event, fill, anchor), ``ORDER_OPERATIONS``.
* ``order_reads``: the order journal's tables read back (orders, events, fills, anchors).
* ``service_schema``: the order service's tables (``api_tokens``, ``service_orders``).
* ``versioning``: the schema's revision (``REVISIONS``, ``HEAD``), checked on first use.
* ``migrate``: ``atb db upgrade | current | downgrade`` (the Alembic migrations in
  ``migrations/``).
* ``connection``: ``DatabaseConnection``: the engine, schema, database id, transactions.
* ``order_methods``: ``OrderJournalMethods(DatabaseConnection)``: the order journal's calls.
* ``manager``: ``DatabaseManager(OrderJournalMethods)``, the public methods an engine calls.

``from wal.db import DatabaseManager`` is the public name.
"""

from wal.db.manager import DatabaseManager

__all__ = ["DatabaseManager"]
