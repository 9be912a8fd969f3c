"""Smoke test of the benchmarks: every row is produced and the outputs parse. No timings.

``benchmarks/run_all.py --quick`` runs in a real subprocess (as CI and users run it), and
``wal.tools.bench.run_disk_bench(quick=True)`` (what ``atb wal bench`` calls) runs in-process.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from wal import WALEntry, WALEntryStatus, WALStorage
from wal.tools.bench import DiskBenchResult, drain_rows, make_trade, run_disk_bench
from wal.tools.bench_calls import call_row_names

ROOT = Path(__file__).resolve().parents[2]

# Issue 22's rows (run_all.py's CALL_ROWS): the critical calls and the database alone.
CALL_ROWS = call_row_names(pg=True)
CALL_TARGETS = 12  # wal.tools.bench_calls.call_ratios
# Every row run_all.py prints (its ROW_NAMES); a renamed or lost row must fail here.
ALL_ROWS = [
    "raw_per_record",
    "raw_batch_64",
    "raw_batch_1000",
    "sqlite_full_1",
    "sqlite_full_8",
    "persist_queue_1",
    "persist_queue_8",
    "wal_always_1",
    "wal_always_8",
    "wal_always_64",
    "wal_many_64",
    "wal_many_1000",
    "wal_interval_1",
    "recovery_open",
    "append_idle",
    "append_during_drain",
    "rss_pending",
    "raw_per_record_end",
    "drain_sqlite",
    "drain_postgresql",  # pgserver is a dev dependency: the smoke run drains into it too
    "reads_during_drain_sqlite",
    "reads_during_drain_postgresql",
    "raw_prealloc_per_record",
    "entry_create",
    "wal_async_64",
    "wal_async_256",
    "manager_async_256",
    *CALL_ROWS,  # issue 22's rows (PostgreSQL's too: pgserver is a dev dependency)
]
# The C peers (the `peers` extra) and the targets measured against them, when installed.
PEERS = all(importlib.util.find_spec(m) is not None for m in ("plyvel", "rocksdict", "lmdb"))
PEER_ROWS = [f"{p}_{t}" for p in ("plyvel", "rocksdict", "lmdb") for t in (1, 8, 64)]
if PEERS:
    ALL_ROWS += PEER_ROWS
DISK_ROWS = [
    "raw_per_record",
    "raw_batch_64",
    "raw_batch_1000",
    "wal_always_1",
    "wal_always_8",
    "wal_always_64",
    "wal_many_64",
    "wal_many_1000",
    "wal_interval_1",
    # what a critical call costs here, and what SQLite alone would cost
    *call_row_names(pg=False)[:-2],  # the order rows are run_all's only
]
TARGETS = 16  # 12 disk, log and peer targets + 2 drain + 2 reads-during-drain targets
PEER_TARGETS = 4  # against plyvel: not measured without the peers extra


def test_run_all_quick_produces_every_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in data["measurements"]]
    assert sorted(names) == sorted(ALL_ROWS)
    for m in data["measurements"]:
        if m["group"] != "memory":
            assert m["per_s"] is not None and m["per_s"] > 0, m["name"]
    assert len(data["targets"]) == TARGETS
    for name in ("reads_during_drain_sqlite", "reads_during_drain_postgresql"):
        (reads,) = [m for m in data["measurements"] if m["name"] == name]
        assert reads["extra"]["wrong_reads"] == 0 and reads["ops"] > 0, reads
    unmeasured = [t for t in data["targets"] if t["measured"] is None]
    assert len(unmeasured) == (0 if PEERS else PEER_TARGETS), unmeasured
    # the printed table and results.md hold every row and every target
    assert (out / "results.md").read_text() == proc.stdout
    table_rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    # a header line per table; the calls table repeats issue 22's rows beside the limit's
    calls = 1 + len(CALL_ROWS) + 1 + 1 + CALL_TARGETS
    assert len(table_rows) == 1 + len(ALL_ROWS) + 1 + TARGETS + calls
    for m in data["measurements"]:
        assert m["label"] in proc.stdout
    for t in data["targets"]:
        assert t["target"] in proc.stdout
    # the scratch directory inside --out is gone
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", "results.md"]
        + (["latency.png", "throughput.png"] if importlib.util.find_spec("matplotlib") else [])
    )


def test_run_disk_bench_quick(tmp_path: Path) -> None:
    r = run_disk_bench(tmp_path, quick=True)
    assert isinstance(r, DiskBenchResult)
    assert [m.name for m in r.measurements] == DISK_ROWS
    d = json.loads(json.dumps(r.to_dict()))
    assert [m["name"] for m in d["measurements"]] == DISK_ROWS
    assert d["record_bytes"] == r.record_bytes > 200
    advice = r.advice()
    assert "µs per trade" in advice and "concurrent writers" in advice
    # `atb wal bench` answers what a critical call costs and what SQLite alone would cost
    cost = r.call_cost()
    assert len(cost) == 4  # log_trade and atomic_balance_update, from 1 and 64 threads
    assert all("SQLite alone" in line for line in cost)
    assert cost[0] in r.report()
    assert list(tmp_path.iterdir()) == []  # its scratch directory was removed


def test_drain_rows_applies_each_pending_entry_once_in_order(tmp_path: Path) -> None:
    applied: list[uuid.UUID] = []

    def apply(rows: list[WALEntry]) -> None:
        applied.extend(e.entry_id for e in rows)

    with WALStorage(tmp_path / "wal") as log:
        ids = [e.entry_id for e in log.append_many(make_trade(i) for i in range(250))]
        stop = threading.Event()
        t = threading.Thread(target=drain_rows, args=(log, stop, apply), kwargs={"batch": 64})
        t.start()
        try:
            deadline = time.monotonic() + 20
            while log.count(WALEntryStatus.COMPLETED) < 250 and time.monotonic() < deadline:
                stop.wait(0.01)
        finally:
            stop.set()
            t.join()
        assert log.count(WALEntryStatus.COMPLETED) == 250
        assert log.count(WALEntryStatus.PENDING) == 0
    assert applied == ids


def test_service_benchmark_runs_every_phase() -> None:
    """``benchmarks/service.py`` (issue 23's figures) against a real ``atb serve``, every
    phase at a tiny size: each phase's line is printed, every POST was answered 201 or 200."""
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "service.py"),
            "--orders=6",
            "--traders=3",
            "--per-trader=1",
            "--every",
            "0.3",
            "--rounds=2",
            "--degradation-every=0.3",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    for line in (
        "POST, one trader  n=6 ",
        "event -> WS ",
        "POST, 3 traders connected, then submitting at once  n=3 ",
        "POST, 3 traders connected, each an order every 0.3 s  n=3 ",
        "one trader, back to back ",
        "3 traders connected, each an order every 0.3 s n=6 ",
        "transport errors retried with the same key: ",
    ):
        assert line in p.stdout, (line, p.stdout)
