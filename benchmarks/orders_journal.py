"""Order journal overhead per order against the broker round trip.

Reproduce: python benchmarks/orders_journal.py --orders 300 [--json]

Two runs, each a percentile table per order (µs), market orders of 1 unit alternating buy
and sell, 20 warm-up orders left out; the load average is printed before and after.

``inproc``: ``OrderManager.submit`` against the in-process ``PaperBroker`` (no network, no
state file), so that the journal is nearly all there is:

* ``journal``: the time ``submit`` waits for journal writes, timed by wrapping the
  ``OrderJournal.arecord_*`` methods: the intent and SUBMITTED before the broker call (one
  group commit), ACCEPTED and the fill after it.
* ``submit`` and ``submit_no_journal``: a whole submit with the journal, and with the
  journal's writes replaced by no-ops (everything else the same), interleaved order by
  order: the difference is what the journal adds to a submit.
* ``fsync``: the log's own fdatasync latency over the run (``WALStorage.get_stats``).

``http``: against the paper broker as its own process over HTTP (``HttpBroker`` ->
``atb paper-broker serve``, loopback, durable state, no faults):

* ``journal_before_call``: the intent + SUBMITTED group, the only journal work before the
  broker call; ``journal_after_call``: ACCEPTED (its fsync runs while the fills are fetched)
  and the fill;
* ``broker``: one ``submit_order`` round trip alone; ``submit``: a whole submit.

The script times whichever ``arecord_*`` methods the journal has, so it runs unchanged on an
older checkout (``PYTHONPATH=<checkout> python benchmarks/orders_journal.py``) for a
before/after comparison under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import wal
from wal import DurableDatabaseManager, WALConfig
from wal.db import DatabaseManager
from wal.orders import OrderIntent, OrderJournal, OrderManager, PaperBroker, RetryPolicy, RiskLimits
from wal.orders.http_broker import HttpBroker

WARMUP = 20


def pct(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)

    def at(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": s[-1],
        "mean": statistics.fmean(s),
    }


class Timed:
    """Wraps a journal's ``arecord_*`` methods; sums the time a submit waits on them, before
    and after the broker call (``mark_call``). ``null``: the writes do nothing."""

    def __init__(self, journal: OrderJournal, *, null: bool = False) -> None:
        self.before = self.after = 0.0
        self.called = False
        for name in dir(journal):
            if name.startswith("arecord_"):
                setattr(journal, name, self._wrap(getattr(journal, name), null))

    def _wrap(
        self, inner: Callable[..., Awaitable[None]], null: bool
    ) -> Callable[..., Awaitable[None]]:
        async def timed(*a: Any, **k: Any) -> None:
            t0 = time.perf_counter()
            if not null:
                await inner(*a, **k)
            dt = time.perf_counter() - t0
            if self.called:
                self.after += dt
            else:
                self.before += dt

        return timed

    def reset(self) -> None:
        self.before = self.after = 0.0
        self.called = False

    def mark_call(self) -> None:
        self.called = True


def open_ddb(workdir: Path, name: str) -> DurableDatabaseManager:
    config = WALConfig.from_env(
        {}, directory=workdir / f"wal-{name}", database_url=f"sqlite:///{workdir / name}.db"
    )
    ddb = DurableDatabaseManager(DatabaseManager(config.database_url), config=config)
    ddb.start()
    return ddb


def intent(i: int, symbol: str) -> OrderIntent:
    return OrderIntent(symbol=symbol, side="buy" if i % 2 else "sell", quantity=Decimal("1"))


def manager(ddb: DurableDatabaseManager, broker: Any) -> OrderManager:
    return OrderManager(
        ddb, broker, risk=RiskLimits(check_balance=False), retry=RetryPolicy(base_delay=0)
    )


class CallMarker:
    """A broker wrapper telling ``Timed`` when the submit call is made (pre/post split)."""

    def __init__(self, broker: Any, timed: Timed) -> None:
        self._broker = broker
        self._timed = timed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    async def submit_order(self, i: OrderIntent) -> Any:
        self._timed.mark_call()
        return await self._broker.submit_order(i)


async def run_inproc(n: int, workdir: Path) -> dict[str, dict[str, float]]:
    ddb = open_ddb(workdir, "inproc")
    ddb_null = open_ddb(workdir, "inproc-null")
    try:
        broker = PaperBroker(seed=1)
        om = manager(ddb, broker)
        timed = Timed(om.journal)
        om.broker = CallMarker(broker, timed)  # type: ignore[assignment]
        om_null = manager(ddb_null, PaperBroker(seed=1))
        Timed(om_null.journal, null=True)
        await om.start()
        await om_null.start()
        journal, before, after, real, null = [], [], [], [], []
        for i in range(n + WARMUP):
            timed.reset()
            t0 = time.perf_counter()
            await om.submit(intent(i, "AAPL"))
            t1 = time.perf_counter()
            await om_null.submit(intent(i, "AAPL"))
            t2 = time.perf_counter()
            if i >= WARMUP:
                real.append((t1 - t0) * 1e6)
                null.append((t2 - t1) * 1e6)
                journal.append((timed.before + timed.after) * 1e6)
                before.append(timed.before * 1e6)
                after.append(timed.after * 1e6)
        assert ddb.storage is not None
        st = ddb.storage.get_stats()
        return {
            "journal": pct(journal),
            "journal_before_call": pct(before),
            "journal_after_call": pct(after),
            "submit": pct(real),
            "submit_no_journal": pct(null),
            "fsync": {
                "p50": float(st.fsync_p50_us or 0),
                "p99": float(st.fsync_p99_us or 0),
                "count": float(st.fsync_count),
            },
        }
    finally:
        ddb.stop()
        ddb_null.stop()


async def run_http(n: int, workdir: Path) -> dict[str, dict[str, float]]:
    srv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "paper-broker",
            "serve",
            "--port",
            "0",
            "--state",
            str(workdir / "paper.json"),
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert srv.stdout is not None
        url = srv.stdout.readline().decode().split()[-1]
        ddb = open_ddb(workdir, "http")
        broker = await HttpBroker.connect(url, timeout=10)
        om = manager(ddb, broker)
        timed = Timed(om.journal)
        om.broker = CallMarker(broker, timed)  # type: ignore[assignment]
        await om.start()
        before, after, submit = [], [], []
        for i in range(n + WARMUP):
            timed.reset()
            t0 = time.perf_counter()
            await om.submit(intent(i, "AAPL"))
            if i >= WARMUP:
                submit.append((time.perf_counter() - t0) * 1e6)
                before.append(timed.before * 1e6)
                after.append(timed.after * 1e6)
        broker_us: list[float] = []
        for i in range(n + WARMUP):
            t0 = time.perf_counter()
            await broker.submit_order(intent(i, "MSFT"))
            if i >= WARMUP:
                broker_us.append((time.perf_counter() - t0) * 1e6)
        await broker.aclose()
        ddb.stop()
        return {
            "journal_before_call": pct(before),
            "journal_after_call": pct(after),
            "broker": pct(broker_us),
            "submit": pct(submit),
        }
    finally:
        srv.terminate()
        srv.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", choices=("inproc", "http"))
    args = ap.parse_args()
    res: dict[str, Any] = {"wal": str(Path(wal.__file__).parent), "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as d:
        if args.only != "http":
            res["inproc"] = asyncio.run(run_inproc(args.orders, Path(d)))
        if args.only != "inproc":
            res["http"] = asyncio.run(run_http(args.orders, Path(d)))
    res["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{res['wal']}: load average {res['load_before']:.2f} -> {res['load_after']:.2f}")
    print(f"{'per order (µs)':<44}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for run in ("inproc", "http"):
        for k, r in res.get(run, {}).items():
            if k == "fsync":
                print(f"{run + ' log fdatasync':<44}{r['p50']:>9.0f}{'':>9}{r['p99']:>9.0f}")
                continue
            label = f"{run} {k}"
            print(f"{label:<44}{r['p50']:>9.0f}{r['p90']:>9.0f}{r['p99']:>9.0f}{r['max']:>9.0f}")


if __name__ == "__main__":
    main()
