"""``atb wal status``: the health of the log, read-only, while trading goes on."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from cli._common import (
    EXIT_ENGINE,
    EXIT_PROBLEM,
    EXIT_UNCHECKED,
    EXIT_UNREADABLE,
    AtbError,
    LockState,
    WalContext,
    echo_json,
    fmt_age,
    fmt_bytes,
    get_config,
    lock_state,
    one_line,
    require_log_dir,
    wal_errors,
)
from wal.config import WALConfig, mask_url
from wal.errors import WALCorruptionError, WALError, printable
from wal.log.backups import partial_backup_notes
from wal.log.lock import lock_file_problem
from wal.log.storage import StorageStats, WALStorage
from wal.masking import mask_text
from wal.sync.halt import read_halt

DB_CHECK_TIMEOUT_S = 10.0
MANAGER_STATUS_FILE = "manager-status.json"  # written by wal.sync.manager.WALManager


@click.command(short_help="Show the log's health (read-only).")
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON document.")
@click.option("--no-db", is_flag=True, help="Do not try to connect to the database.")
@click.pass_context
@wal_errors
def status(ctx: click.Context, as_json: bool, no_db: bool) -> None:
    """Show the log's health: entries by status, lock owner, database, sync thread.

    Opens the log read-only: works while a trading process holds it. The running
    process's own view (breaker, last sync, rate) is shown when it has published
    <WAL_DIR>/manager-status.json; a view whose process is gone is labelled STALE.
    The last `atb wal sync` run is shown apart (last-cli-sync.json).

    Exit code (several problems: the most severe, 2 then 1 then 3 then 4): 0 healthy;
    1 when more entries are pending than WAL_PENDING_ALERT_THRESHOLD, the oldest pending
    entry is older than WAL_PENDING_ALERT_AGE, any entry is FAILED, the running process reported a
    log write failure, the last segment ends in a torn tail while no writer holds the
    log, or the database is not the one the log records; 2 when there is no log or it
    cannot be read (missing, empty, corrupt); 3 when the database is unreachable (also
    a missing SQLite file) or the engine's circuit breaker is open; 4 when the engine
    is not running while entries are pending (its published view is STALE, or no
    process holds the log).

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
      recovery                    what a normal open would find: defects, torn tail
                                  bytes (torn_tail_bytes), ...
      lock                        {owner_pid, owner_alive, held}: the writer
      database                    {url (password masked), reachable (a write-capable
                                  round trip: true/false, null with --no-db), error,
                                  checked, database_id, log_database, matches_log}
      manager                     the running process's view or null: pid,
                                  pid_alive, stale, last_sync_at, last_error,
                                  breaker_state, pending, failed,
                                  applied_per_second (a 60 s average),
                                  updated_at, age_seconds, ...
      last_cli_sync               the last `atb wal sync` result or null
      halted                      the operator's halt (`atb orders halt`): {reason,
                                  at, by}, or null while trading is allowed
      notes                       one line each, no health problem: an unfinished
                                  backup a killed `atb wal repair` left beside the
                                  log (copies only; it can be removed)
      health                      {exit_code, problems: [one line each],
                                  issues: [{exit_code, problem}]}
    When the log cannot be read: {directory, error, health} and exit code 2.

    \b
    Examples:
      atb wal status
      atb wal status --json | jq .entries.pending
      atb wal --dir /var/lib/atb/wal status --no-db
    """
    config = get_config(ctx)
    directory = require_log_dir(config)
    lock = lock_state(directory)
    notes = partial_backup_notes(directory)  # beside the log: never a health problem
    try:
        stats = _read_stats(config, lock)
    except (WALError, OSError) as exc:
        for note in notes:  # said even when the log cannot be read (on stderr: not the JSON)
            click.echo(printable(f"note: {note}"), err=True)
        raise AtbError(one_line(str(exc)), EXIT_UNREADABLE) from None
    from wal.sync.status import CLI_SYNC_FILE, read_view

    manager = read_view(directory)
    if manager is not None and "pid_alive" in manager and lock.held is False:
        manager["stale"] = True  # no process holds the log: whoever published it is gone
    if manager is not None and manager.get("stale"):
        manager["running"] = False  # its last words said running; its process is gone
    cli_sync = read_view(directory, CLI_SYNC_FILE)
    obj = ctx.find_object(WalContext)
    named = (obj is not None and obj.database_url is not None) or bool(
        os.environ.get("DATABASE_URL")
    )
    database = _database(config, no_db, named=named)
    doc = _document(config, stats, lock, database, manager)
    doc["last_cli_sync"] = cli_sync
    halt = read_halt(directory)
    doc["halted"] = None if halt is None else halt.to_dict()
    doc["notes"] = notes
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
    from wal.sync.status import read_view

    return read_view(directory)


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


def _database(config: WALConfig, skip: bool, *, named: bool = True) -> dict[str, Any]:
    """Try a real write-capable round trip (``DatabaseManager.ping(write=True)``) within
    ``WAL_DB_TIMEOUT_MS``, and compare the database's id with the one the log records.

    ``named``: --database-url or DATABASE_URL was given; otherwise the database the log
    records (database.json) is checked when its URL is usable as is (no masked password),
    not the built-in default."""
    from wal.sync.identity import mismatch, read_target

    url = config.database_url
    if not named:
        try:
            recorded = read_target(config.directory)
        except ValueError:
            recorded = None
        if recorded is not None and "***" not in recorded.url:
            url = recorded.url
    out: dict[str, Any] = {
        "url": mask_url(url),
        "reachable": None,
        "error": None,
        "checked": None,
        "database_id": None,
        "log_database": None,
        "matches_log": None,
    }
    try:
        target = read_target(config.directory)
    except ValueError as exc:
        target = None
        out["log_database"] = {"error": one_line(str(exc))}
    if target is not None:
        out["log_database"] = target.to_dict()
    if skip:
        return out
    missing = _sqlite_missing(url)
    if missing is not None:
        out.update(reachable=False, error=missing, matches_log=False if target else None)
        return out
    result: dict[str, Any] = {}
    done = threading.Event()

    def ping() -> None:
        try:
            from wal.db import DatabaseManager

            db = DatabaseManager(url, timeout_ms=config.db_timeout_ms)
            try:
                result["checked"] = (
                    "BEGIN IMMEDIATE (the write lock), rolled back"
                    if db.dialect == "sqlite"
                    else "SELECT 1 in a read-write transaction, rolled back"
                )
                db.ping(write=True)
                result["database_id"] = db.database_id()
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
        out.update(reachable=True, database_id=result.get("database_id"))
        if target is not None:
            why = mismatch(target, url, out["database_id"])
            out["matches_log"] = why is None
            if why is not None:
                out["error"] = why
    else:
        out.update(reachable=False, error=mask_text(str(result.get("error")), url))
    out["checked"] = result.get("checked")
    return out


def _worst(codes: Iterable[int]) -> int:
    """The exit code of the most severe problem: a log that cannot be read (2), then damage
    in the log itself (1: acknowledged data at risk), then a database or broker that did not
    answer (3), then an engine not running while entries are pending (4)."""
    order = (EXIT_UNREADABLE, EXIT_PROBLEM, EXIT_UNCHECKED, EXIT_ENGINE)
    found = set(codes)
    return next((c for c in order if c in found), 0)


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
    issues: list[tuple[int, str]] = []  # (exit code, one line): docs/cli.md's table
    problems = _Problems(issues, EXIT_PROBLEM)
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
        noun = "entry" if failed == 1 else "entries"
        problems.append(f"{failed} FAILED {noun}: see `atb wal failed`")
    torn = stats.recovery.torn_tail_bytes
    if torn and lock.held is not True:
        problems.append(
            f"a torn tail of {torn} bytes ends the last segment (a crash, or a damaged last "
            "record): the next open cuts it; `atb wal verify` shows it"
        )
    if database.get("matches_log") is False:
        problems.append(f"the configured database is not the log's: {database['error']}")
    lock_problem = lock_file_problem(config.directory)
    if lock_problem is not None:
        problems.append(lock_problem)
    bad_record = (database.get("log_database") or {}).get("error")
    if bad_record:  # which database the log belongs to is unknown: nothing checks it
        problems.append(
            f"the log's database record cannot be read ({bad_record}): the database was "
            "checked against nothing; fix or delete it (`atb wal --database-url URL sync` "
            "records it anew)"
        )
    problems.extend(stats.recovery.warnings)  # e.g. a suspect tail cut: never routine
    m = manager or {}
    alive = not m.get("stale") and (
        lock.held is True or (lock.held is None and lock.owner_alive is True)
    )
    if m.get("log_failed"):
        problems.append(f"the trading process reported a log failure: {m['log_failed']}")
    if database.get("reachable") is False and database.get("matches_log") is not False:
        issues.append((EXIT_UNCHECKED, f"the database is unreachable: {database['error']}"))
    if alive and manager and m.get("breaker_state") not in (None, "closed"):
        issues.append(
            (
                EXIT_UNCHECKED,
                f"the engine's circuit breaker is {m['breaker_state']}: it cannot write to the "
                f"database (last error: {m.get('last_error') or '-'})",
            )
        )
    if pending and not alive:
        who = (
            f"process {m.get('pid')} that published manager-status.json is gone"
            if m.get("stale")
            else "no process holds the log"
        )
        issues.append(
            (
                EXIT_ENGINE,
                f"the engine is not running ({who}) while {pending} entries are pending: "
                "start it, or apply them with `atb wal sync`",
            )
        )
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
        "health": {
            "exit_code": _worst(c for c, _ in issues),
            "problems": [text for _, text in issues],
            "issues": [{"exit_code": c, "problem": text} for c, text in issues],
        },
    }


class _Problems:
    """``append``/``extend`` one-line problems with one exit code into ``issues``."""

    def __init__(self, issues: list[tuple[int, str]], code: int) -> None:
        self._issues = issues
        self._code = code

    def append(self, text: str) -> None:
        self._issues.append((self._code, text))

    def extend(self, texts: Any) -> None:
        for t in texts:
            self.append(str(t))


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
    if doc.get("last_cli_sync"):
        rows.append(("cli sync", _cli_sync(doc["last_cli_sync"])))
    h = doc.get("halted")
    rows.append(
        ("trading", "allowed" if h is None else f"HALTED by {h['by']} at {h['at']}: {h['reason']}")
    )
    rows.extend(("note", note) for note in doc.get("notes") or [])
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
    if r.get("torn_tail_bytes") and not r.get("truncated_bytes"):
        parts.append(f"torn tail of {r['torn_tail_bytes']} bytes (a normal open cuts it)")
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
        text = f"{db['url']} reachable, writable ({db['checked']})"
        if db.get("matches_log") is False:
            text += f"; NOT THE LOG'S DATABASE: {db['error']}"
        return text
    return f"{db['url']} UNREACHABLE: {db['error']}"


def _cli_sync(c: dict[str, Any]) -> str:
    if "updated_at" not in c:
        return str(c.get("error"))
    text = (
        f"{c['updated_at']} ({fmt_age(c.get('age_seconds'))} ago): applied {c.get('applied')}, "
        f"still pending {c.get('pending')}"
    )
    if c.get("error"):
        text += f", stopped by: {c['error']}"
    return text


def _manager(m: dict[str, Any] | None, config: WALConfig) -> str:
    if m is None:
        return f"no {MANAGER_STATUS_FILE} (no trading process has published its view)"
    if "error" in m and "updated_at" not in m:
        return str(m["error"])
    age = m.get("age_seconds")
    pid = m.get("pid")
    if m.get("stale"):
        label = f" (STALE: process {pid} is not running; its last view)"
    elif age is not None and age > max(60.0, 10 * config.sync_interval):
        label = " (stale: is the process still running?)"
    else:
        label = ""
    parts = [
        (f"pid {pid}, " if pid is not None else "") + f"updated {fmt_age(age)} ago" + label,
        f"breaker {m.get('breaker_state', '?')}",
        f"last sync {m.get('last_sync_at') or 'never'}",
        f"{float(m.get('applied_per_second') or 0):.1f} applied/s (60 s average)",
    ]
    if m.get("last_error"):
        parts.append(f"last error: {m['last_error']}")
    return ", ".join(parts)
