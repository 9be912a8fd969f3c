"""Shared fixtures. PostgreSQL: ``pg_url`` (the server), ``pg_db`` and ``db_url``.

PostgreSQL tests use ``WAL_TEST_PG_DSN`` when it is set, else a throwaway ``pgserver``. When
neither works they are skipped with a message saying how to run them, unless
``WAL_REQUIRE_PG=1`` (CI sets it): then they fail.

Hypothesis profiles (docs/testing.md): ``ci``, the default, is derandomized (the same
examples on every run: CI never turns red by chance); ``soak`` draws new examples from a
random seed (``tests/soak.py``, ``WAL_STRESS=1``). Choose with ``WAL_HYPOTHESIS_PROFILE`` or
``--hypothesis-profile``. With ``WAL_SOAK_COUNTS=FILE`` the examples run per test and outcome
are written to FILE as JSON at the end of the session (what the soak reports).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.internal.observability import add_observability_callback
from pg import ENV_REQUIRE, HOW_TO_RUN, PgServer, PgUnavailable, launch

from wal.log.storage import WALStorage

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("soak", derandomize=False, database=None, print_blob=True)
settings.load_profile(
    os.environ.get("WAL_HYPOTHESIS_PROFILE")
    or ("soak" if os.environ.get("WAL_STRESS") == "1" else "ci")
)

_SOAK_COUNTS = os.environ.get("WAL_SOAK_COUNTS")
_examples: Counter[tuple[str, str]] = Counter()


def _count_example(observation: Any, _thread: int | None = None) -> None:
    if getattr(observation, "type", None) == "test_case":
        _examples[(str(observation.property), str(observation.status))] += 1


if _SOAK_COUNTS:
    add_observability_callback(_count_example, all_threads=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SOAK_COUNTS:
        rows = [{"test": t, "status": s, "examples": n} for (t, s), n in sorted(_examples.items())]
        Path(_SOAK_COUNTS).write_text(json.dumps(rows, indent=1) + "\n")


@pytest.fixture(autouse=True)
def _prepare_inline_under_crashfs(request: pytest.FixtureRequest) -> Iterator[None]:
    """In modules that model power loss with ``CrashFS``: the next segment is prepared inline
    (by the flush that asks for it), so a workload's file operations come in one order and
    a crash point is the same operation on every run. Everywhere else, a real thread."""
    if not hasattr(request.module, "CrashFS"):
        yield
        return
    WALStorage.prepare_in_background = False
    try:
        yield
    finally:
        WALStorage.prepare_in_background = True


@pytest.fixture(scope="session")
def pg_url() -> Iterator[PgServer]:
    """The PostgreSQL server of this test session.

    ``.url`` (admin database), ``.host``/``.port`` (TCP 127.0.0.1), ``.socket_path``,
    ``.pg_ctl``; ``.stop_immediate()`` crashes it, ``.start()`` brings it back (crash
    recovery); ``.create_database()`` / ``.database_url(name)`` / ``.drop_database(name)``.
    """
    try:
        server = launch()
    except PgUnavailable as exc:
        message = f"{exc}\n{HOW_TO_RUN}"
        if os.environ.get(ENV_REQUIRE) == "1":
            pytest.fail(f"{ENV_REQUIRE}=1 but {message}", pytrace=False)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.teardown()


@pytest.fixture
def pg_db(pg_url: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    pg_url.ensure_running()  # an earlier test may have left the server stopped
    name = pg_url.create_database()
    try:
        yield pg_url.database_url(name)
    finally:
        pg_url.drop_database(name)  # starts the server first if the test left it stopped


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL: a SQLite file in tmp_path, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'atb.db'}"
    url: str = request.getfixturevalue("pg_db")
    return url
