"""Issue 21, item 7 (every ``--dry-run``): ``atb orders reconcile --dry-run`` changes nothing.

It used to start the engine's sync thread, which drained the log's pending entries into the
database (and recorded ``database.json``) while the reconciliation itself only reported.
Real log, real SQLite file, the paper broker in its own HTTP process.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner
from paper_process import PaperProcess

from cli.main import atb
from wal import WALEntry, WALStorage
from wal.db import DatabaseManager
from wal.sync.identity import TARGET_FILE


def test_orders_reconcile_dry_run_drains_nothing_and_binds_nothing(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    # the engine's database exists, with its atb id (the CLI creates none, and refuses a file
    # holding no atb database while the log records none: issue 24)
    db = DatabaseManager(url)
    db.database_id(create=True)
    db.dispose()
    with WALStorage(d) as log:  # the engine died with a backlog: one deposit pending
        log.append(
            WALEntry.create("atomic_balance_update", kwargs={"delta": Decimal(5), "reason": "x"})
        )
    before = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "LOCK"}
    paper = PaperProcess(tmp_path)
    try:
        r = CliRunner().invoke(
            atb,
            ["orders", "reconcile", "--broker-url", paper.url, "--dry-run", "--json"],
            env={"WAL_DIR": str(d), "DATABASE_URL": url},
        )
    finally:
        paper.close()
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["dry_run"]
    after = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "LOCK"}
    assert after == before  # still pending, nothing bound
    assert not (d / TARGET_FILE).exists()
    db = DatabaseManager(url)
    try:
        assert db.get_balance() == 0
    finally:
        db.dispose()
