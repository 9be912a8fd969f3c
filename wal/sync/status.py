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

from wal.errors import WALUnsafeFileError
from wal.log.fileops import OSFileOps, read_regular, write_file_atomic
from wal.log.storage import WALStorage
from wal.sync.apply import Applier

__all__ = [
    "CLI_SYNC_FILE",
    "MANAGER_STATUS_FILE",
    "manager_stats",
    "publish_status",
    "read_view",
    "write_view",
]

log = logging.getLogger("wal.sync.manager")

MANAGER_STATUS_FILE = "manager-status.json"
CLI_SYNC_FILE = "last-cli-sync.json"  # the result of the last `atb wal sync`, kept apart


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
        "pid": os.getpid(),
        "log_failed": None if applier.fatal is None else str(applier.fatal),
        "updated_at": datetime.now(UTC).isoformat(),
    }


def publish_status(storage: WALStorage, stats: Callable[[], dict[str, Any]]) -> None:
    """Write ``stats()`` to ``manager-status.json`` in the log's directory (best effort: a
    closed log or a full disk only costs the view)."""
    if storage.readonly:
        return
    try:
        write_view(Path(storage.directory), MANAGER_STATUS_FILE, stats())
    except Exception:
        log.debug("could not publish manager status", exc_info=True)


def write_view(directory: Path, name: str, data: dict[str, Any]) -> None:
    """Write ``data`` as ``directory/name``: an atomic rename, no fsync (informational only:
    losing it on power loss loses nothing)."""
    # informational: no fsync (durable=False); still a fresh O_EXCL | O_NOFOLLOW temp file, so
    # a symlink planted at <name>.tmp is never written through
    data_bytes = orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str)
    write_file_atomic(OSFileOps(), directory, name, data_bytes, durable=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_view(directory: Path, name: str = MANAGER_STATUS_FILE) -> dict[str, Any] | None:
    """A published view with ``age_seconds`` and, when it names its ``pid``, ``pid_alive``
    and ``stale`` (its process is gone: the figures are its last words, not the present).
    None when there is none; ``{"error": ...}`` when it cannot be read."""
    path = Path(directory) / name
    try:
        data = orjson.loads(read_regular(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, WALUnsafeFileError) as exc:  # JSONDecodeError: a ValueError
        return {"error": f"unreadable {name}: {exc}"}
    if not isinstance(data, dict):
        return {"error": f"unreadable {name}: not an object"}
    age = None
    try:
        updated = datetime.fromisoformat(str(data["updated_at"]))
        if updated.tzinfo is None:
            updated = updated.replace(tzinfo=UTC)
        age = max(0.0, (datetime.now(UTC) - updated).total_seconds())
    except (KeyError, ValueError):
        pass
    data["age_seconds"] = age
    pid = data.get("pid")
    if type(pid) is int and name == MANAGER_STATUS_FILE:
        alive = _pid_alive(pid)
        data["pid_alive"] = alive
        data["stale"] = not alive
        if not alive:
            data["running"] = False  # its last words said running; its process is gone
    return data
