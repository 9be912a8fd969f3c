"""Issue 21, items 7 and 8, through the real ``atb`` command line: the database identity.

7. A dry run changes nothing, anywhere: ``atb wal --database-url B replay --dry-run --yes``
   used to rewrite ``database.json`` to B (and give B an id and tables) while printing
   "nothing was changed".
8. With ``database.json`` gone, nothing binds the log to whatever database it is pointed at,
   unless the log is new (no entry ever applied): the operator binds it explicitly.
"""

from __future__ import annotations

import os
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers_log import as_preallocated, write_at_end

from cli.main import atb
from wal import WALEntry, WALStorage
from wal.db import DatabaseManager
from wal.log.segment import list_segments
from wal.sync.identity import TARGET_FILE, read_target, record_target

pytestmark = pytest.mark.usefixtures("clean_env")


def invoke(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(atb, args, env=env, input=stdin, catch_exceptions=False)


def deposits(d: Path, amounts: list[str]) -> None:
    with WALStorage(d) as log:
        for a in amounts:
            log.append(
                WALEntry.create(
                    "atomic_balance_update", kwargs={"delta": Decimal(a), "reason": "deposit"}
                )
            )


def new_database(path: Path, *, tables: bool) -> str:
    url = f"sqlite:///{path}"
    db = DatabaseManager(url)
    try:
        if tables:
            db.database_id(create=True)
    finally:
        db.dispose()
    if not path.exists():
        sqlite3.connect(path).close()
    return url


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def db_state(path: Path) -> Any:
    """What a database holds: its tables, its id, its ledger."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))
        ident = (
            conn.execute("SELECT * FROM wal_database_id").fetchall()
            if "wal_database_id" in tables
            else None
        )
        applied = (
            conn.execute("SELECT COUNT(*) FROM wal_applied").fetchall()
            if "wal_applied" in tables
            else None
        )
        return tables, ident, applied
    finally:
        conn.close()


# ------------------------------------------------------------------ 7. a dry run changes nothing


@pytest.mark.parametrize("b_kind", ["another atb database", "an empty database"])
@pytest.mark.parametrize("as_json", [False, True])
def test_a_dry_run_replay_against_another_database_changes_nothing_anywhere(
    tmp_path: Path, b_kind: str, as_json: bool
) -> None:
    d = tmp_path / "wal"
    url_a = new_database(tmp_path / "a.db", tables=False)
    url_b = new_database(tmp_path / "b.db", tables=b_kind == "another atb database")
    deposits(d, ["1", "2"])
    assert invoke(["wal", "--dir", str(d), "sync"], env={"DATABASE_URL": url_a}).exit_code == 0
    target = read_target(d)
    assert target is not None
    # a torn tail too: a dry run must not cut it either (a read-only open)
    last = list_segments(d)[-1][1]
    as_preallocated(last)  # as preallocate="zero" leaves it; the torn record in its zero rest
    write_at_end(last, b'0123456789abcdef {"t":"entry","lsn":')
    before = files(d)
    b_before = db_state(tmp_path / "b.db")
    args = ["wal", "--dir", str(d), "--database-url", url_b, "replay", "--since", "1"]
    r = invoke([*args, "--dry-run", "--yes", *(["--json"] if as_json else [])])
    assert r.exit_code == 0, r.output
    if not as_json:
        assert "nothing was changed" in r.output
    assert files(d) == before  # database.json still names A; the torn tail is still there
    assert read_target(d) == target
    assert db_state(tmp_path / "b.db") == b_before  # no id, no table given to B


def test_a_dry_run_replay_lists_what_the_real_one_requeues(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    url_a = new_database(tmp_path / "a.db", tables=False)
    deposits(d, ["1", "2"])
    env = {"DATABASE_URL": url_a}
    assert invoke(["wal", "--dir", str(d), "sync"], env=env).exit_code == 0
    url_b = new_database(tmp_path / "b.db", tables=True)
    args = ["wal", "--dir", str(d), "--database-url", url_b, "replay", "--since", "1"]
    dry = invoke([*args, "--dry-run", "--yes", "--json"])
    assert dry.exit_code == 0, dry.output
    assert '"missing": 2' in dry.stdout or '"missing":2' in dry.stdout
    target = read_target(d)
    assert target is not None and "a.db" in target.url
    assert TARGET_FILE in os.listdir(d)


# ------------------------------------------------------------------ 8. the operator binds


def _balance(url: str) -> Decimal:
    db = DatabaseManager(url)
    try:
        return db.get_balance()
    finally:
        db.dispose()


def test_a_log_that_lost_database_json_is_bound_only_explicitly(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    url_a = new_database(tmp_path / "a.db", tables=False)
    deposits(d, ["1"])
    assert invoke(["wal", "--dir", str(d), "sync"], env={"DATABASE_URL": url_a}).exit_code == 0
    (d / TARGET_FILE).unlink()  # the identity is lost
    deposits(d, ["10"])
    url_b = new_database(tmp_path / "b.db", tables=False)

    # from the environment only: refused, one line, nothing applied or recorded
    r = invoke(["wal", "--dir", str(d), "sync"], env={"DATABASE_URL": url_b})
    assert r.exit_code == 1
    assert "database.json is missing" in r.stderr and "--database-url" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (d / TARGET_FILE).exists() and _balance(url_b) == 0

    # named, but not confirmed: still nothing
    args = ["wal", "--dir", str(d), "--database-url", url_b, "sync"]
    r = invoke(args, stdin="n\n")
    assert r.exit_code == 1 and "not confirmed" in r.stderr
    assert not (d / TARGET_FILE).exists() and _balance(url_b) == 0

    # a dry run neither binds nor asks
    r = invoke(
        ["wal", "--dir", str(d), "--database-url", url_b, "replay", "--since", "1", "--dry-run"]
    )
    assert r.exit_code == 0, r.output
    assert not (d / TARGET_FILE).exists()

    # named and confirmed: bound, and drained there
    r = invoke([*args, "--yes"])
    assert r.exit_code == 0, r.output
    target = read_target(d)
    assert target is not None and "b.db" in target.url
    assert _balance(url_b) == 10


def test_a_new_log_is_still_bound_by_its_first_sync(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    url_a = new_database(tmp_path / "a.db", tables=False)
    deposits(d, ["4"])
    r = invoke(["wal", "--dir", str(d), "sync"], env={"DATABASE_URL": url_a})
    assert r.exit_code == 0, r.output
    target = read_target(d)
    assert target is not None and "a.db" in target.url


def test_a_relative_sqlite_url_is_recorded_with_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default URL (``sqlite:///data/atb.db``) is relative: the log records the file it
    named where the engine ran, so an operator in another directory checks that file."""
    app, elsewhere = tmp_path / "app", tmp_path / "elsewhere"
    app.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(app)
    (app / "wal").mkdir()
    record_target(app / "wal", "sqlite:///data/atb.db", "db-1")
    recorded = read_target(app / "wal")
    assert recorded is not None
    assert recorded.url == f"sqlite:///{app / 'data' / 'atb.db'}"
    monkeypatch.chdir(elsewhere)
    assert read_target(app / "wal") == recorded  # the same file, from anywhere


def test_a_damaged_database_record_is_a_problem_status_names(tmp_path: Path) -> None:
    """A database.json that does not read (garbage) leaves the log's database unknown:
    status says so in its health, naming the file, not only in its JSON's details."""
    d = tmp_path / "wal"
    with WALStorage(d) as log:
        log.append(WALEntry.create("log_trade", kwargs={"n": 1}))
    (d / TARGET_FILE).write_bytes(b"\x00garbage{")
    r = invoke(["wal", "--dir", str(d), "status", "--no-db"])
    assert r.exit_code == 1, r.output
    health = next(x for x in r.output.splitlines() if x.startswith("health"))
    assert "database record cannot be read" in health and TARGET_FILE in health, health
