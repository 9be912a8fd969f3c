# Reproduce: pytest benchmarks/test_bench_limit.py --benchmark-only
"""The disk's own limit: ``os.write`` + ``os.fdatasync`` of trade-sized records, per call."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wal.tools.bench import trade_line_bytes

RECORD = b"x" * (trade_line_bytes() - 1) + b"\n"


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    yield fd
    os.close(fd)


def _write_sync(fd: int, data: bytes) -> None:
    os.write(fd, data)
    os.fdatasync(fd)  # the limit: durable before the next call


def test_raw_fdatasync_per_record(benchmark: BenchmarkFixture, fd: int) -> None:
    benchmark(_write_sync, fd, RECORD)


@pytest.mark.parametrize("batch", [64, 1000])
def test_raw_fdatasync_per_batch(benchmark: BenchmarkFixture, fd: int, batch: int) -> None:
    benchmark.extra_info["records_per_call"] = batch
    benchmark(_write_sync, fd, RECORD * batch)
