"""The manager's published view: its figures (``get_stats``) and ``manager-status.json``.

The file is written next to the log so that ``atb wal status`` in another process can show
the running engine's breaker, last sync and rate. It is informational: written by an atomic
rename without an fsync, since losing it on power loss loses nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from wal.log.storage import WALStorage
from wal.sync.apply import Applier

__all__ = ["MANAGER_STATUS_FILE", "manager_stats", "publish_status"]

log = logging.getLogger("wal.sync.manager")

MANAGER_STATUS_FILE = "manager-status.json"


def manager_stats(applier: Applier, *, running: bool) -> dict[str, Any]:
    """Pending, failed, oldest pending age, last sync and error, breaker, rates."""
    st = applier.storage.get_stats()
    c = applier.counters
    now = time.monotonic()
    window = [n for t, n in c.recent if now - t <= 60.0]
    last_sync = applier.last_sync_at
    return {
        "pending": st.entries["pending"] + st.entries["syncing"],
        "failed": st.entries["failed"],
        "completed": st.entries["completed"],
        "oldest_pending_age_seconds": st.oldest_pending_age_seconds,
        "last_sync_at": None if last_sync is None else last_sync.isoformat(),
        "last_error": applier.last_error,
        "breaker_state": applier.breaker.state.value,
        "applied_total": c.applied,
        "duplicates_total": c.duplicates,
        "failed_total": c.failed,
        "applied_per_second": sum(window) / 60.0,
        "fsync_p50_us": st.fsync_p50_us,
        "fsync_p99_us": st.fsync_p99_us,
        "exactly_once": applier.exactly_once,
        "running": running,
        "log_failed": None if applier.fatal is None else str(applier.fatal),
        "updated_at": datetime.now(UTC).isoformat(),
    }


def publish_status(storage: WALStorage, stats: Callable[[], dict[str, Any]]) -> None:
    """Write ``stats()`` to ``manager-status.json`` in the log's directory (best effort: a
    closed log or a full disk only costs the view)."""
    if storage.readonly:
        return
    try:
        data = orjson.dumps(stats(), option=orjson.OPT_INDENT_2)
        path = Path(storage.directory) / MANAGER_STATUS_FILE
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        # informational only: an atomic rename, no fsync (losing it on power loss is fine)
        os.replace(tmp, path)
    except Exception:
        log.debug("could not publish manager status", exc_info=True)
