"""``wal.service.app``: what the application's lifespan does besides starting the runtime.

Once the startup is over, the heap it built is frozen out of the garbage collector's full
passes (``gc.freeze``): those passes scanned every module, the app and the journal's orders,
44-97 ms with every request waiting (the worst POSTs of a run: 61-110 ms, docs/service.md). The
app's own lifespan runs on a real runtime: SQLite, the log, the in-process paper broker.
"""

from __future__ import annotations

import asyncio
import gc
import time
from decimal import Decimal
from pathlib import Path

from orders_helpers import FAST_RETRY, open_ddb, run
from service_runtime import FAST_REC

from wal.db.versioning import ensure_schema
from wal.orders import ClientIdRules, PaperBroker
from wal.service.app import create_app
from wal.service.config import ServiceConfig
from wal.service.runtime import ServiceRuntime


def test_the_heap_of_the_startup_is_frozen_once_it_is_over(tmp_path: Path) -> None:
    ddb = open_ddb(tmp_path / "wal", f"sqlite:///{tmp_path / 'atb.db'}")
    ensure_schema(ddb.db.engine, ddb.db.safe_url)
    paper = PaperBroker(rules=ClientIdRules(visibility_window_seconds=0.0))
    cfg = ServiceConfig(paper_balance=Decimal(100000), poll_interval=0.05)
    rt = ServiceRuntime(ddb, paper, cfg, retry=FAST_RETRY, reconciler=FAST_REC, paper=paper)
    app = create_app(rt)

    async def go() -> int:
        async with app.router.lifespan_context(app):  # what uvicorn runs at start and stop
            await rt.started()
            assert rt.readiness() is None  # the startup succeeded
            deadline = time.monotonic() + 30
            while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0)  # the loop runs the lifespan's task meanwhile
            return gc.get_freeze_count()

    gc.unfreeze()
    try:
        assert run(go()) > 0
    finally:
        gc.unfreeze()  # the test process's own heap back to normal
        ddb.stop()
        ddb.db.dispose()
