"""The benchmarks' workload and harness: sizes, realistic trades, calls released together.

* ``BenchSizes``: how much work each measurement does (``quick``, ``medium``, ``full``).
* ``make_trade``, ``trade_line_bytes``: a realistic trade (about 200 bytes of kwargs) and
  the bytes of its framed line in a segment (the limit is measured with records that size).
* ``fresh_dir``: an empty scratch directory.
* ``run_threads``, ``run_calls``, ``gather_calls``: work in threads (or coroutines on one
  event loop) released together, with every call's latency.

Used by :mod:`wal.tools.bench_disk`, :mod:`wal.tools.bench_log`, :mod:`wal.tools.bench` and
``benchmarks/``.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from wal.entry import WALEntry

__all__ = [
    "BenchSizes",
    "fresh_dir",
    "gather_calls",
    "make_trade",
    "run_calls",
    "run_threads",
    "trade_line_bytes",
]


# ---------------------------------------------------------------------------- sizes


@dataclass(frozen=True, slots=True)
class BenchSizes:
    """How much work each measurement does. ``quick`` runs in seconds, ``full`` in minutes."""

    raw_records: int  # per-record write+fdatasync calls
    raw_batches: int  # batches of 64 (and a tenth as many of 1,000)
    appends_1: int  # total appends with 1 thread
    appends_8: int  # total appends with 8 threads
    appends_64: int  # total appends with 64 threads
    many_batches: int  # append_many(1000) calls
    interval_appends: int  # appends with fsync="interval"
    peer_inserts: int  # SQLite / persist-queue inserts per thread count (total)
    recovery_entries: int  # entries in the log that recovery and the RSS child open
    drain_appends: int  # appends timed alone and again during the drain

    @classmethod
    def preset(cls, name: str) -> BenchSizes:
        """``quick`` (CI smoke, seconds), ``medium`` (about a minute) or ``full``."""
        if name == "quick":
            return cls(60, 6, 60, 80, 128, 2, 100, 60, 2_000, 60)
        if name == "medium":
            return cls(2_000, 60, 2_000, 8_000, 12_800, 20, 20_000, 2_000, 100_000, 2_000)
        if name == "full":
            return cls(5_000, 200, 5_000, 24_000, 64_000, 100, 100_000, 5_000, 1_000_000, 5_000)
        raise ValueError(f"unknown size preset {name!r}: expected quick, medium or full")


# ---------------------------------------------------------------------------- workload


def make_trade(i: int = 0) -> WALEntry:
    """A realistic ``log_trade`` entry: about 200 bytes of kwargs."""
    return WALEntry.create(
        "log_trade",
        kwargs={
            "trade_id": uuid.uuid4(),
            "symbol": "BTCUSDT" if i % 2 == 0 else "ETHUSDT",
            "side": "buy" if i % 3 else "sell",
            "quantity": Decimal("0.01250000") + Decimal(i % 97) / Decimal(10_000),
            "price": Decimal("67321.45") + Decimal(i % 1_000) / Decimal(100),
            "executed_at": datetime.now(UTC),
        },
    )


def trade_line_bytes() -> int:
    """Bytes of one framed trade line in a segment (checksum, payload, newline)."""
    e = make_trade()
    d = e.to_dict()
    d["lsn"] = 1_000_000
    return 17 + len(orjson.dumps({"t": "entry", **d})) + 1


def fresh_dir(base: Path, name: str) -> Path:
    d = base / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(mode=0o700, parents=True)
    return d


# ---------------------------------------------------------------------------- harness


def run_threads(threads: int, work: Callable[[int, threading.Barrier], None]) -> float:
    """Run ``work(i, barrier)`` in ``threads`` threads; seconds from release to last join."""
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            work(i, barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    ts = [threading.Thread(target=body, args=(i,), name=f"bench-{i}") for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return secs


def run_calls(
    threads: int, items: list[list[Any]], call: Callable[[Any], object]
) -> tuple[float, list[int]]:
    """``call(item)`` for ``items[i]`` in thread ``i``, all released together: seconds from
    release to last join, and every call's latency (ns)."""
    lats: list[list[int]] = [[] for _ in range(threads)]

    def work(i: int, barrier: threading.Barrier) -> None:
        out = lats[i]
        clock = time.perf_counter_ns
        barrier.wait()
        for item in items[i]:
            s = clock()
            call(item)
            out.append(clock() - s)

    return run_threads(threads, work), [x for lat in lats for x in lat]


def gather_calls(
    coroutines: int, items: list[list[Any]], call: Callable[[Any], Any]
) -> tuple[float, list[int]]:
    """``await call(item)`` for ``items[i]`` in coroutine ``i``, all on one event loop."""
    lats: list[list[int]] = [[] for _ in range(coroutines)]

    async def one(i: int, start: asyncio.Event) -> None:
        out = lats[i]
        clock = time.perf_counter_ns
        await start.wait()
        for item in items[i]:
            s = clock()
            await call(item)
            out.append(clock() - s)

    async def main() -> float:
        start = asyncio.Event()
        tasks = [asyncio.ensure_future(one(i, start)) for i in range(coroutines)]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    secs = asyncio.run(main())
    return secs, [x for lat in lats for x in lat]
