"""Issue 10's reproduction: a balance read after a crash between the database's COMMIT and
the log's COMPLETED record must not count the committed entry twice.

Process A (a real subprocess) runs with ``WAL_CRASH_POINT=manager.after_apply_before_status``:
it calls ``start()`` and ``atomic_balance_update(Decimal("100"))`` and exits 137 right after
the database committed the entry and its ledger row, before the log says COMPLETED. Process B
(this test) opens the same log and database: ``get_balance()`` must say 100 before
``start()``, right after it, and after the drain, while the log still holds the entry as
pending until the drain marks it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from trading_child import fast_config

from wal import WALEntryStatus
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

TESTS = Path(__file__).resolve().parents[1] / "support"
CRASH_POINT = "manager.after_apply_before_status"

PROCESS_A = """
import sys
from decimal import Decimal
sys.path.insert(0, sys.argv[3])
from trading_child import fast_config
from wal.db import DatabaseManager
from wal.sync.durable import DurableDatabaseManager

url, wal_dir = sys.argv[1], sys.argv[2]
ddb = DurableDatabaseManager(DatabaseManager(url), config=fast_config(wal_dir, url))
ddb.start()
ddb.atomic_balance_update(Decimal("100"), reason="deposit", idempotency_key="deposit-1")
ddb.drain(timeout=30)  # applied behind: the crash point is in this drain (or the sync thread's)
print("the crash point was not reached", flush=True)
"""


def run_process_a(url: str, wal_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    env["WAL_CRASH_POINT"] = CRASH_POINT
    return subprocess.run(
        [sys.executable, "-c", PROCESS_A, url, str(wal_dir), str(TESTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_committed_but_unmarked_deposit_is_counted_once_after_a_crash(
    db_url: str, tmp_path: Path
) -> None:
    wal_dir = tmp_path / "wal"
    a = run_process_a(db_url, wal_dir)
    assert a.returncode == 137, (a.returncode, a.stdout, a.stderr)

    db = DatabaseManager(db_url)
    ddb = DurableDatabaseManager(db, config=fast_config(wal_dir, db_url))
    try:
        assert db.get_balance() == Decimal("100")  # the database committed it
        assert ddb.storage is not None
        [entry] = list(ddb.storage.iter_entries())
        assert entry.status is WALEntryStatus.PENDING  # the log does not say so yet
        assert ddb.get_balance() == Decimal("100")  # before start()
        ddb.start()
        assert ddb.get_balance() == Decimal("100")  # right after start()
        found = ddb.find_by_idempotency_key("deposit-1")  # "ask before redoing"
        assert found is not None and found.entry_id == entry.entry_id
        assert ddb.drain(timeout=30) == 0
        assert ddb.get_balance() == Decimal("100")
        assert db.get_balance() == Decimal("100")
        assert ddb.storage.get_entry(entry.entry_id).status is WALEntryStatus.COMPLETED
    finally:
        ddb.stop()
        db.dispose()
