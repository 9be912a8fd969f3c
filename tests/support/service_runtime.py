"""A started ``ServiceRuntime`` in this process: SQLite, an in-process paper broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

from orders_helpers import FAST_RETRY, open_ddb

from wal.db.versioning import ensure_schema
from wal.orders import PaperBroker, ReconcilerConfig
from wal.orders.broker import ClientIdRules
from wal.service.config import ServiceConfig
from wal.service.runtime import ServiceRuntime

FAST_REC = ReconcilerConfig(fetch_backoff=(0.0, 0.0, 0.0), fetch_timeout=5.0)


@contextlib.asynccontextmanager
async def started_runtime(
    tmp_path: Path, *, oco_groups: bool | None = None, rate_limit: int = 100
) -> AsyncIterator[tuple[ServiceRuntime, PaperBroker]]:
    """A started ``ServiceRuntime`` on SQLite and an in-process paper broker (declaring OCO
    groups unless ``oco_groups=False``); stopped, its log closed, on the way out."""
    ddb = open_ddb(tmp_path / "wal", f"sqlite:///{tmp_path / 'atb.db'}")
    ensure_schema(ddb.db.engine, ddb.db.safe_url)
    paper = PaperBroker(rules=ClientIdRules(visibility_window_seconds=0.0, oco_groups=oco_groups))
    cfg = ServiceConfig(paper_balance=Decimal(100000), poll_interval=0.05, rate_limit=rate_limit)
    rt = ServiceRuntime(ddb, paper, cfg, retry=FAST_RETRY, reconciler=FAST_REC, paper=paper)
    try:
        await rt.start()
        await rt.started()
        yield rt, paper
    finally:
        await rt.stop()
        ddb.stop()
        ddb.db.dispose()
