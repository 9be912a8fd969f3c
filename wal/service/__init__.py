"""The order service: an HTTP API, a live event stream and a status page on the journal.

Layer rule: it may import everything below it (the foundation modules, ``wal.log``,
``wal.db``, ``wal.config``, ``wal.sync``, the public face ``wal`` and ``wal.orders``); never
``wal.tools`` or ``cli``. It runs in the engine's process (``atb serve``): the process that
owns the log is the one writer of the journal.

Modules: :mod:`~wal.service.config` (``ServiceConfig`` from ``ORDER_RATE_LIMIT`` and the
``SERVICE_*`` variables), :mod:`~wal.service.errors` (``ApiError``, the one JSON error
shape), :mod:`~wal.service.tokens` (traders' bearer tokens, stored hashed),
:mod:`~wal.service.owners` (which trader owns which order, the Idempotency-Key ledger),
:mod:`~wal.service.ratelimit` (orders per minute per trader), :mod:`~wal.service.schemas`
(Pydantic request and response bodies), :mod:`~wal.service.events` (``EventHub``: journal
events to WebSocket clients, with resume), :mod:`~wal.service.views` (orders, positions,
audit rows and exports read for one trader), :mod:`~wal.service.runtime`
(``ServiceRuntime``: the durable database, the broker, the order manager, startup
reconciliation, readiness), :mod:`~wal.service.api` (the routes) and
:mod:`~wal.service.app` (``create_app``: FastAPI with the status page in ``static/``).
See ``docs/service.md``.
"""
