# Reproduce: pytest benchmarks/test_bench_append.py --benchmark-only
"""One thread appending realistic trades: ``append`` (always, interval) and ``append_many``.

Thread counts (group commit) are measured by ``benchmarks/run_all.py``, which pytest-benchmark
cannot drive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wal import WALEntry, WALStorage
from wal.tools.bench import make_trade


@pytest.fixture(params=["always", "interval"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WALStorage]:
    with WALStorage(tmp_path / "wal", fsync=request.param) as s:
        yield s


def test_append(benchmark: BenchmarkFixture, log: WALStorage) -> None:
    def setup() -> tuple[tuple[WALEntry], dict[str, Any]]:
        return (make_trade(),), {}

    benchmark.pedantic(log.append, setup=setup, rounds=500)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("batch", [64, 1000])
def test_append_many(benchmark: BenchmarkFixture, tmp_path: Path, batch: int) -> None:
    benchmark.extra_info["entries_per_call"] = batch
    with WALStorage(tmp_path / "wal") as log:

        def setup() -> tuple[tuple[list[WALEntry]], dict[str, Any]]:
            return ([make_trade(i) for i in range(batch)],), {}

        benchmark.pedantic(log.append_many, setup=setup, rounds=20)  # type: ignore[no-untyped-call]
