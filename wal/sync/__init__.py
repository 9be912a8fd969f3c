"""The manager and the durable wrapper: replaying the log into the database.

Layer rule: it may import the foundation modules, ``wal.config``, ``wal.log`` and ``wal.db``;
never ``wal.tools``, ``wal.orders`` or ``cli``.

Modules, bottom to top:

* ``breaker``: the circuit breaker and backoff with full jitter.
* ``results``: ``Receipt`` (one write), ``SyncResult`` (one drain).
* ``apply``: ``Applier``: a batch applied exactly once (or at least once), dead letters.
* ``status``: the manager's figures and ``manager-status.json`` for ``atb wal status``.
* ``manager``: ``WALManager``: write, apply, the sync thread, exactly-once, dead letters.
* ``overlay``: read your own writes: database state plus pending entries.
* ``calls``: a critical call made ready for the log (bound, ids and times filled, no floats).
* ``reads``: ``PendingReads``: the wrapper's balance and positions with pending entries.
* ``durable``: ``DurableDatabaseManager``, the wrapper the engine uses.
* ``identity``: which database a log belongs to (``<WAL_DIR>/database.json``).
* ``metrics``: Prometheus metrics of the log and its sync.
"""
