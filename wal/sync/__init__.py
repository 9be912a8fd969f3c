"""The manager and the durable wrapper: replaying the log into the database.

Layer rule: it may import the foundation modules, ``wal.config``, ``wal.log`` and ``wal.db``;
never ``wal.tools``, ``wal.orders`` or ``cli``.

Modules:

* ``breaker``: the circuit breaker and backoff with full jitter.
* ``manager``: ``WALManager``: write, apply, the sync thread, exactly-once, dead letters.
* ``overlay``: read your own writes: database state plus pending entries.
* ``durable``: ``DurableDatabaseManager``, the wrapper the engine uses.
"""
