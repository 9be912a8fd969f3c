"""One real ``atb serve`` per database (SQLite, then PostgreSQL) shared by the API, trader and
event tests (each uses its own traders); the kill, browser and README tests start their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import PgServer
from service_proc import ServiceProc

SERVICE_ENV = {"ORDER_RATE_LIMIT": "30", "ORDER_MAX_NOTIONAL": "1000000", "SERVICE_WS_QUEUE": "8"}


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def svc_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh database URL for the shared service."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'atb.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_url")  # skips (or fails in CI) without one
    server.ensure_running()
    name = server.create_database()
    try:
        yield server.database_url(name)
    finally:
        server.drop_database(name)


@pytest.fixture(scope="session")
def svc(svc_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProc]:
    """A running, ready service on ``svc_db`` (stopped gracefully at the end)."""
    p = ServiceProc(Path(tmp_path_factory.mktemp("svc")), svc_db, env=SERVICE_ENV)
    p.start()
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()
