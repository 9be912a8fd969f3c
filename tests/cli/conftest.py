"""The CLI tests' shared fixture: a clean environment (``clean_env``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No WAL_*, DATABASE_URL or ATB_BROKER_URL of the machine leaks in, and the defaults
    resolve inside tmp_path (a default data/ would appear there: it must not elsewhere).
    A test module uses it with ``pytestmark = pytest.mark.usefixtures("clean_env")``."""
    for k in list(os.environ):
        if k.startswith("WAL_") or k in ("DATABASE_URL", "ATB_BROKER_URL"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
