"""Smoke test of issue 22's table (wal.tools.bench_calls): every row is measured through the
public calls and has its percentiles; the targets and the table name every row. Tiny sizes;
structure only, never a timing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from wal.tools.bench import Measurement, call_specs, run_call_bench
from wal.tools.bench_calls import (
    CALLS,
    COROUTINES,
    DOWN_URL,
    THREADS,
    WARMUP,
    bench_ddb_async,
    bench_ddb_calls,
    bench_order_submit,
    bench_pg_direct,
    bench_sqlite_direct,
    call_ratios,
    calls_markdown,
    drop_pg_database,
    fresh_pg_database,
    spread,
)

ROOT = Path(__file__).resolve().parents[2]
SQLITE_ROWS = [
    *(
        name
        for t in (1, THREADS)
        for name in (
            f"sqlite_direct_{t}",
            f"ddb_trade_sqlite_{t}",
            f"ddb_balance_sqlite_{t}",
            f"ddb_trade_sqlite_{t}_inline",
            f"ddb_balance_sqlite_{t}_inline",
            f"ddb_trade_down_{t}",
        )
    ),
    f"ddb_trade_async_sqlite_{COROUTINES}",
    f"ddb_balance_async_sqlite_{COROUTINES}",
]
PG_ROWS = [
    name
    for t in (1, THREADS)
    for name in (
        f"pg_direct_{t}",
        f"ddb_trade_postgresql_{t}",
        f"ddb_balance_postgresql_{t}",
        f"ddb_trade_postgresql_{t}_inline",
        f"ddb_balance_postgresql_{t}_inline",
    )
]


def check_row(m: Measurement, name: str, ops: int) -> None:
    assert m.name == name
    assert m.ops == ops == len(m.samples_ns)  # one latency per call, every call timed
    assert m.per_s is not None and m.per_s > 0
    s = spread(m)
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert {k: m.extra[k] for k in ("p50", "p90", "p99", "max")} == {
        k: round(v, 1) for k, v in s.items()
    }


def test_wrapper_rows_call_the_public_api_and_apply_every_call(tmp_path: Path) -> None:
    m = bench_ddb_calls(tmp_path, "log_trade", 2, 6)
    check_row(m, "ddb_trade_sqlite_2", 6)
    assert m.extra["pending_at_stop"] == 0  # applied to the database, not only logged
    assert m.extra["fsyncs"] >= 1 and "log fsyncs per call" in m.note
    b = bench_ddb_calls(tmp_path, "atomic_balance_update", 1, 3)
    check_row(b, "ddb_balance_sqlite_1", 3)
    a = bench_ddb_async(tmp_path, 4, 8)
    check_row(a, "ddb_trade_async_sqlite_4", 8)
    assert a.extra["pending_at_stop"] == 0
    ab = bench_ddb_async(tmp_path, 4, 8, op="atomic_balance_update")
    check_row(ab, "ddb_balance_async_sqlite_4", 8)
    assert ab.extra["pending_at_stop"] == 0 and ab.extra["drained_after_s"] >= 0
    i = bench_ddb_calls(tmp_path, "log_trade", 2, 4, apply="inline")
    check_row(i, "ddb_trade_sqlite_2_inline", 4)
    assert i.extra["pending_at_stop"] == 0 and "inline" in i.label
    assert list(tmp_path.iterdir()) == []  # every scratch directory removed


def test_a_database_down_row_costs_the_log_only(tmp_path: Path) -> None:
    m = bench_ddb_calls(tmp_path, "log_trade", 2, 6, DOWN_URL)
    check_row(m, "ddb_trade_down_2", 6)
    # every call (and the warm-up's) stays in the log: nothing reached a database
    assert m.extra["pending_at_stop"] == 6 + 2 * WARMUP
    assert "database down" in m.label and "left in the log" in m.note
    assert list(tmp_path.iterdir()) == []


def test_a_wrapper_row_refuses_an_unknown_call(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="op='log_position'"):
        bench_ddb_calls(tmp_path, "log_position", 1, 1)
    with pytest.raises(ValueError, match="unknown size preset 'huge'"):
        call_specs(tmp_path, "huge")


def test_direct_sqlite_row_is_wal_mode_synchronous_full(tmp_path: Path) -> None:
    m = bench_sqlite_direct(tmp_path, 2, 4)
    check_row(m, "sqlite_direct_2", 4)
    assert m.group == "peer" and "synchronous=2 (FULL)" in m.note
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_postgresql_rows(pg_db: str, tmp_path: Path) -> None:
    url = fresh_pg_database(pg_db)
    assert url != pg_db
    try:
        check_row(bench_pg_direct(url, 2, 4), "pg_direct_2", 4)
        m = bench_ddb_calls(tmp_path, "log_trade", 2, 4, url)
        check_row(m, "ddb_trade_postgresql_2", 4)
        assert m.extra["pending_at_stop"] == 0
    finally:
        drop_pg_database(url)
    rows = run_call_bench(tmp_path, "quick", 1, pg_db, limit=False, orders=False)
    assert [m.name for m in rows] == SQLITE_ROWS + PG_ROWS
    with psycopg.connect(
        make_url(pg_db).set(drivername="postgresql").render_as_string(hide_password=False)
    ) as c:
        left = c.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'atb_bench_%'")
        assert left.fetchone() == (0,)  # the run's own database was dropped


def test_order_submit_rows(tmp_path: Path) -> None:
    submit, journal = bench_order_submit(tmp_path, 5)
    check_row(submit, "order_submit", 5)
    check_row(journal, "order_journal_before_call", 5)
    assert journal.extra["log_fsync_p99"] >= journal.extra["log_fsync_p50"] > 0


def test_quick_run_has_every_row_target_and_table_line(tmp_path: Path) -> None:
    rows = run_call_bench(tmp_path, "quick", 1, None)
    names = [m.name for m in rows]
    assert names == ["raw_per_record", *SQLITE_ROWS, "order_submit", "order_journal_before_call"]
    ratios = call_ratios({m.name: m for m in rows}, THREADS, COROUTINES)
    assert len(ratios) == 12
    # without PostgreSQL its four targets say so; every other one is measured
    assert [r.target for r in ratios if r.measured is None] == [
        f"{call}, PostgreSQL, {t} thread(s) ≥ 1.3x PostgreSQL direct"
        for call in ("log_trade", "atomic_balance_update")
        for t in (1, THREADS)
    ]
    assert all((r.met is None) == (r.measured is None) for r in ratios)
    table = calls_markdown(rows, ratios)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(rows) + 1 + len(ratios)
    for m in rows:
        assert m.label in table
    assert list(tmp_path.iterdir()) == []
    assert set(CALLS) == {"quick", "medium", "full"}


def test_calls_script_quick(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "calls.py"),
            "--quick",
            "--no-pg",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "calls.md").read_text() == proc.stdout
    data = json.loads((out / "calls.json").read_text())
    assert [m["name"] for m in data["measurements"]] == [
        "raw_per_record",
        *SQLITE_ROWS,
        "order_submit",
        "order_journal_before_call",
    ]
    assert len(data["targets"]) == 12
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["calls.json", "calls.md"]
        + (["latency.png"] if importlib.util.find_spec("matplotlib") else [])
    )
