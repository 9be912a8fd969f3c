"""A trading process killed again and again: every acknowledged operation reaches the database
exactly once.

``trading_child.py`` performs a seeded plan of critical operations through
``DurableDatabaseManager`` (each with an explicit idempotency key and client-chosen ids) and
prints ``ack I`` when operation I returned. This test kills it with SIGKILL at seeded random
moments, or lets it stop itself with ``os._exit`` at the named crash point
``manager.after_apply_before_status`` (the database committed a batch, the log does not yet
say so). Each restart replays the log and resumes at the first unacknowledged operation,
performing it again: if the killed run had logged it, its key finds the entry, so it is not
logged twice. At the end the log and the database are checked:

* every acknowledged operation is in the log, and no operation is in it twice;
* everything in the log was applied exactly once: the database equals the model of the whole
  plan (trades by id, the list of balance deltas in order, positions, sessions), with one
  ``wal_applied`` row per log entry;
* after a stop at the crash point, the replay found the committed entries in the ledger
  (reported duplicates) instead of applying them again.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from trading_child import Model, db_state, ledger_count, make_plan

from wal import WALEntryStatus, WALStorage
from wal.db import DatabaseManager

CHILD = Path(__file__).resolve().parents[1] / "support" / "trading_child.py"
CRASH_POINT = "manager.after_apply_before_status"
LINE_TIMEOUT = 60.0


class Child:
    """One run of the trading process, its stdout read line by line by a thread."""

    def __init__(self, args: list[str], crash_at: int | None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
        if crash_at is not None:
            env["WAL_CRASH_POINT"] = f"{CRASH_POINT}:{crash_at}"
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next_line(self) -> str | None:
        """The next line, or None at the end of the output."""
        try:
            return self.lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError("the trading process printed nothing for a minute") from None

    def finish(self) -> int:
        rc = self.proc.wait(timeout=LINE_TIMEOUT)
        if rc not in (0, 137, -signal.SIGKILL):
            assert self.proc.stderr is not None
            raise AssertionError(f"the trading process failed ({rc}):\n{self.proc.stderr.read()}")
        return rc


@pytest.mark.timeout(240)
def test_killed_trading_process_applies_every_acknowledged_operation_once(
    db_url: str, tmp_path: Path
) -> None:
    sqlite = db_url.startswith("sqlite")
    runs, n = (22, 200) if sqlite else (10, 120)
    seed = 4242
    rng = random.Random(seed)
    plan = make_plan(seed, n)
    wal_dir = tmp_path / "wal"
    acked: list[int] = []
    kills = point_stops = 0
    replayed_duplicates_after_point = []
    after_point = False

    def run(crash_at: int | None, kill_after: int | None) -> tuple[int, bool]:
        """One run from the first unacknowledged operation; returns (exit code, done)."""
        nonlocal after_point
        start = acked[-1] + 1 if acked else 0
        child = Child([db_url, str(wal_dir), str(seed), str(n), str(start)], crash_at)
        seen = 0
        done = False
        while (line := child.next_line()) is not None:
            word, *rest = line.split()
            if word == "ready":
                if after_point:
                    replayed_duplicates_after_point.append(int(rest[1]))
                    after_point = False
            elif word == "ack":
                i = int(rest[0])
                assert i == (acked[-1] + 1 if acked else 0), "acknowledged out of order"
                acked.append(i)
                seen += 1
            elif word == "done":
                done = True
            if kill_after is not None and seen >= kill_after and word in ("ready", "ack"):
                child.proc.send_signal(signal.SIGKILL)  # at a random moment of its work
                break
        return child.finish(), done

    for _ in range(runs):
        if rng.random() < 0.3:
            rc, done = run(crash_at=rng.randint(1, 4), kill_after=None)
            if rc == 137:
                point_stops += 1
                after_point = True
        else:
            rc, done = run(crash_at=None, kill_after=rng.randint(0, 6))
            kills += 1
        if done:
            break
    rc, done = run(crash_at=None, kill_after=None)
    assert (rc, done) == (0, True)
    assert acked == list(range(n))
    assert kills >= runs // 2 and point_stops >= 1

    # the log: every acknowledged operation once, nothing else, all applied
    log = WALStorage.open_readonly(wal_dir)
    try:
        entries = list(log.iter_entries())
    finally:
        log.close()
    keys = [e.idempotency_key for e in entries]
    assert sorted(keys) == sorted(op.key for op in plan)  # each once, none lost
    assert {e.status for e in entries} == {WALEntryStatus.COMPLETED}

    # the database: exactly the model of the whole plan
    db = DatabaseManager(db_url)
    try:
        assert db_state(db) == Model().apply_all(plan).state()
        assert ledger_count(db) == len(entries) == n
    finally:
        db.dispose()
    # a stop at the crash point left committed entries that the next run found in the ledger
    assert replayed_duplicates_after_point and all(d >= 1 for d in replayed_duplicates_after_point)
    print(
        f"\n{db_url.split(':')[0]}: {kills} SIGKILLs, {point_stops} stops at {CRASH_POINT}, "
        f"{n} operations acknowledged, {sum(replayed_duplicates_after_point)} replays skipped "
        "by the ledger"
    )
