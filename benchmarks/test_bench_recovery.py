# Reproduce: pytest benchmarks/test_bench_recovery.py --benchmark-only
#   (BENCH_ENTRIES=1000000 for the size of the full run; default 20,000)
"""Opening a log: every record's checksum verified and indexed (warm page cache)."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_benchmark.fixture import BenchmarkFixture

from wal import WALStorage
from wal.tools.bench import build_log

ENTRIES = int(os.environ.get("BENCH_ENTRIES", "20000"))


def test_open_log(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    directory = build_log(tmp_path / "wal", ENTRIES)
    benchmark.extra_info["entries"] = ENTRIES

    def open_close() -> int:
        with WALStorage(directory) as log:
            return log.recovery_report.entries

    found = benchmark.pedantic(open_close, rounds=5)  # type: ignore[no-untyped-call]
    assert found == ENTRIES
