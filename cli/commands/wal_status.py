"""``atb wal status``: the health of the log, read-only, while trading goes on."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from cli._common import (
    EXIT_UNREADABLE,
    AtbError,
    LockState,
    echo_json,
    fmt_age,
    fmt_bytes,
    get_config,
    lock_state,
    one_line,
)
from wal.config import WALConfig, mask_url
from wal.errors import WALCorruptionError, WALError
from wal.log.storage import StorageStats, WALStorage

DB_CHECK_TIMEOUT_S = 10.0
MANAGER_STATUS_FILE = "manager-status.json"  # written by wal.sync.manager.WALManager


@click.command(short_help="Show the log's health (read-only).")
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON document.")
@click.option("--no-db", is_flag=True, help="Do not try to connect to the database.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, no_db: bool) -> None:
    """Show the log's health: entries by status, lock owner, database, sync thread.

    Opens the log read-only: works while a trading process holds it. The running
    process's own view (breaker, last sync, rate) is shown when it has published
    <WAL_DIR>/manager-status.json.

    Exit code: 0 healthy; 1 when more entries are pending than
    WAL_PENDING_ALERT_THRESHOLD, the oldest pending entry is older than
    WAL_PENDING_ALERT_AGE, any entry is FAILED, or the running process reported a
    log write failure; 2 when the log cannot be read (corrupt or missing).

    \b
    --json prints one object with these stable fields (new fields may be added;
    none is removed or changes meaning):
      directory                   the log directory
      segments, bytes, next_lsn   segment files, their total size, the next LSN
      entries                     {pending, syncing, completed, failed} counts
      pending                     pending + syncing: not yet in the database
      oldest_pending_age_seconds  age of the oldest unapplied entry, or null
      fsync                       {mode, p50_us, p99_us}; latencies from the
                                  running process when it published them, else null
      recovery                    what opening found (defects, torn tail bytes...)
      lock                        {owner_pid, owner_alive, held}: the writer
      database                    {url (password masked), reachable (true/false,
                                  null with --no-db), error}
      manager                     the running process's view or null: last_sync_at,
                                  last_error, breaker_state, pending, failed,
                                  applied_per_second, updated_at, age_seconds, ...
      health                      {exit_code, problems: [one line each]}
    When the log cannot be read: {directory, error, health} and exit code 2.

    \b
    Examples:
      atb wal status
      atb wal status --json | jq .entries.pending
      atb wal --dir /var/lib/atb/wal status --no-db
    """
    config = get_config(ctx)
    directory = config.directory
    lock = lock_state(directory) if directory.is_dir() else LockState(None, None, None)
    try:
        stats = _read_stats(config, lock)
    except (WALError, OSError) as exc:
        message = one_line(str(exc))
        if as_json:
            echo_json(
                {
                    "directory": str(directory),
                    "error": message,
                    "health": {"exit_code": EXIT_UNREADABLE, "problems": [message]},
                }
            )
        raise AtbError(message, EXIT_UNREADABLE) from None
    manager = read_manager_status(directory)
    database = _database(config.database_url, no_db)
    doc = _document(config, stats, lock, database, manager)
    if as_json:
        echo_json(doc)
    else:
        _print_table(doc, config)
    ctx.exit(doc["health"]["exit_code"])


def _read_stats(config: WALConfig, lock: LockState) -> StorageStats:
    """A read-only open; retried when a running writer's compaction moved files under it."""
    attempts = 3 if lock.held else 1
    for i in range(attempts):
        try:
            storage = WALStorage.open_readonly(config.directory, config.storage_options())
        except WALCorruptionError:
            if i + 1 == attempts:
                raise
            continue
        try:
            return storage.get_stats()
        finally:
            storage.close()
    raise AssertionError("unreachable")  # pragma: no cover


def read_manager_status(directory: Path) -> dict[str, Any] | None:
    """The running manager's published view, with its age; None when there is none."""
    path = directory / MANAGER_STATUS_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        return {"error": f"unreadable {MANAGER_STATUS_FILE}: {exc}"}
    if not isinstance(data, dict):
        return {"error": f"unreadable {MANAGER_STATUS_FILE}: not an object"}
    age = None
    try:
        updated = datetime.fromisoformat(str(data["updated_at"]))
        if updated.tzinfo is None:
            updated = updated.replace(tzinfo=UTC)
        age = max(0.0, (datetime.now(UTC) - updated).total_seconds())
    except (KeyError, ValueError):
        pass
    data["age_seconds"] = age
    return data


def _sqlite_missing(url: str) -> str | None:
    """For a SQLite file URL whose file does not exist: why not to connect (it would create it)."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
    except Exception:  # the config already checked it; DatabaseManager reports the rest
        return None
    name = u.database
    if u.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return None
    if name.startswith("file:") or u.query.get("uri"):
        return None
    if not Path(name).exists():
        return f"database file {name} does not exist"
    return None


def _database(url: str, skip: bool) -> dict[str, Any]:
    """Try a real connection (``DatabaseManager.ping``), bounded by a deadline."""
    out: dict[str, Any] = {"url": mask_url(url), "reachable": None, "error": None}
    if skip:
        return out
    missing = _sqlite_missing(url)
    if missing is not None:
        out.update(reachable=False, error=missing)
        return out
    result: dict[str, Any] = {}
    done = threading.Event()

    def ping() -> None:
        try:
            from wal.db import DatabaseManager

            db = DatabaseManager(url)
            try:
                db.ping()
            finally:
                db.dispose()
            result["ok"] = True
        except Exception as exc:  # any failure is "unreachable": report it, never crash
            result["error"] = one_line(str(exc))
        finally:
            done.set()

    # a daemon thread: a connect that hangs past the deadline must not keep `atb` alive
    threading.Thread(target=ping, name="atb-db-ping", daemon=True).start()
    if not done.wait(DB_CHECK_TIMEOUT_S):
        out.update(reachable=False, error=f"no answer within {DB_CHECK_TIMEOUT_S:.0f} s")
    elif result.get("ok"):
        out["reachable"] = True
    else:
        out.update(reachable=False, error=mask_url(str(result.get("error"))))
    return out


def _document(
    config: WALConfig,
    stats: StorageStats,
    lock: LockState,
    database: dict[str, Any],
    manager: dict[str, Any] | None,
) -> dict[str, Any]:
    entries = dict(stats.entries)
    pending = entries.get("pending", 0) + entries.get("syncing", 0)
    failed = entries.get("failed", 0)
    age = stats.oldest_pending_age_seconds
    problems: list[str] = []
    if pending > config.pending_alert_threshold:
        problems.append(
            f"{pending} entries pending (alert threshold {config.pending_alert_threshold}): "
            "the database is behind"
        )
    if age is not None and age > config.pending_alert_age_seconds:
        problems.append(
            f"the oldest pending entry is {fmt_age(age)} old (alert after "
            f"{fmt_age(config.pending_alert_age_seconds)}): is anything syncing?"
        )
    if failed:
        problems.append(f"{failed} FAILED entries: see `atb wal failed`")
    if manager and manager.get("log_failed"):
        problems.append(f"the trading process reported a log failure: {manager['log_failed']}")
    m = manager or {}
    p50 = stats.fsync_p50_us if stats.fsync_p50_us is not None else m.get("fsync_p50_us")
    p99 = stats.fsync_p99_us if stats.fsync_p99_us is not None else m.get("fsync_p99_us")
    return {
        "directory": stats.directory,
        "segments": stats.segments,
        "bytes": stats.bytes,
        "next_lsn": stats.next_lsn,
        "entries": entries,
        "pending": pending,
        "oldest_pending_age_seconds": age,
        "fsync": {"mode": config.fsync, "p50_us": p50, "p99_us": p99},
        "recovery": stats.recovery.to_dict(),
        "lock": lock.to_dict(),
        "database": database,
        "manager": manager,
        "health": {"exit_code": 1 if problems else 0, "problems": problems},
    }


def _print_table(doc: dict[str, Any], config: WALConfig) -> None:
    e = doc["entries"]
    rows: list[tuple[str, str]] = [
        (
            "log",
            f"{doc['directory']} ({doc['segments']} segments, {fmt_bytes(doc['bytes'])}, "
            f"next LSN {doc['next_lsn']})",
        ),
        (
            "entries",
            f"pending {e.get('pending', 0)}, syncing {e.get('syncing', 0)}, "
            f"completed {e.get('completed', 0)}, failed {e.get('failed', 0)}",
        ),
        ("oldest", _oldest(doc["oldest_pending_age_seconds"])),
        ("fsync", _fsync(doc["fsync"])),
        ("recovery", _recovery(doc["recovery"])),
        ("lock", _lock(doc["lock"])),
        ("database", _db(doc["database"])),
        ("manager", _manager(doc["manager"], config)),
    ]
    problems = doc["health"]["problems"]
    rows.append(("health", "OK" if not problems else "PROBLEM: " + "; ".join(problems)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _oldest(age: float | None) -> str:
    return "nothing pending" if age is None else f"pending for {fmt_age(age)}"


def _fsync(f: dict[str, Any]) -> str:
    if f["p50_us"] is None:
        return f"{f['mode']} (latency: published by the running process only)"
    return f"{f['mode']}, p50 {f['p50_us']:.0f} us, p99 {f['p99_us']:.0f} us"


def _recovery(r: dict[str, Any]) -> str:
    parts = []
    if r.get("defects"):
        parts.append(f"{len(r['defects'])} defects: {r['defects'][0]}")
    if r.get("lsn_gaps"):
        parts.append(f"{r['lsn_gaps']} LSN gaps skipped")
    if r.get("skipped_records"):
        parts.append(f"{r['skipped_records']} records skipped")
    return "; ".join(parts) if parts else f"clean ({r.get('records', 0)} records read)"


def _lock(lock: dict[str, Any]) -> str:
    return LockState(lock["owner_pid"], lock["owner_alive"], lock["held"]).describe()


def _db(db: dict[str, Any]) -> str:
    if db["reachable"] is None:
        return f"{db['url']} (not checked)"
    if db["reachable"]:
        return f"{db['url']} reachable"
    return f"{db['url']} UNREACHABLE: {db['error']}"


def _manager(m: dict[str, Any] | None, config: WALConfig) -> str:
    if m is None:
        return f"no {MANAGER_STATUS_FILE} (no trading process has published its view)"
    if "error" in m and "updated_at" not in m:
        return str(m["error"])
    age = m.get("age_seconds")
    stale = age is not None and age > max(60.0, 10 * config.sync_interval)
    parts = [
        f"updated {fmt_age(age)} ago"
        + (" (stale: is the process still running?)" if stale else ""),
        f"breaker {m.get('breaker_state', '?')}",
        f"last sync {m.get('last_sync_at') or 'never'}",
        f"{float(m.get('applied_per_second') or 0):.1f} applied/s",
    ]
    if m.get("last_error"):
        parts.append(f"last error: {m['last_error']}")
    return ", ".join(parts)
