"""Order journal overhead per order against the broker round trip.

Reproduce: python benchmarks/orders_journal.py --orders 300 [--json]

Three figures per order, each a percentile table (µs):

* ``journal``: the journal's own work on the submit path, measured inside ``OrderManager``:
  the intent and the SUBMITTED event (two fsynced log entries, applied to SQLite), before
  the broker call; then ACCEPTED and the fill after it (two more). Timed by wrapping the
  ``OrderJournal`` writes, so the broker's time is not in it.
* ``broker``: one ``submit_order`` round trip to the paper broker as its own process over
  HTTP (``HttpBroker`` -> ``atb paper-broker serve``, loopback, no faults, durable state).
* ``submit``: a whole ``OrderManager.submit`` against that broker (journal + broker + the fill
  fetch), for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from wal import DurableDatabaseManager, WALConfig
from wal.db import DatabaseManager
from wal.orders import OrderIntent, OrderManager, RetryPolicy, RiskLimits
from wal.orders.http_broker import HttpBroker


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


async def run(n: int, workdir: Path) -> dict[str, dict[str, float]]:
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
        config = WALConfig.from_env(
            {}, directory=workdir / "wal", database_url=f"sqlite:///{workdir / 'atb.db'}"
        )
        ddb = DurableDatabaseManager(DatabaseManager(config.database_url), config=config)
        ddb.start()
        broker = await HttpBroker.connect(url, timeout=10)
        om = OrderManager(
            ddb, broker, risk=RiskLimits(check_balance=False), retry=RetryPolicy(base_delay=0)
        )
        await om.start()
        journal_us: list[float] = []
        spent = [0.0]
        j = om.journal
        for name in ("arecord_intent", "arecord_event", "arecord_fill"):
            inner = getattr(j, name)

            async def timed(*a: Any, _inner: Any = inner, **k: Any) -> None:
                t0 = time.perf_counter()
                await _inner(*a, **k)
                spent[0] += time.perf_counter() - t0

            setattr(j, name, timed)
        submit_us: list[float] = []
        for i in range(n + 20):
            spent[0] = 0.0
            t0 = time.perf_counter()
            await om.submit(
                OrderIntent(symbol="AAPL", side="buy" if i % 2 else "sell", quantity=Decimal("1"))
            )
            if i >= 20:  # warm-up
                submit_us.append((time.perf_counter() - t0) * 1e6)
                journal_us.append(spent[0] * 1e6)
        broker_us: list[float] = []
        for i in range(n + 20):
            intent = OrderIntent(
                symbol="MSFT", side="buy" if i % 2 else "sell", quantity=Decimal("1")
            )
            t0 = time.perf_counter()
            await broker.submit_order(intent)
            if i >= 20:
                broker_us.append((time.perf_counter() - t0) * 1e6)
        await broker.aclose()
        ddb.stop()
        return {"journal": pct(journal_us), "broker": pct(broker_us), "submit": pct(submit_us)}
    finally:
        srv.terminate()
        srv.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = asyncio.run(run(args.orders, Path(d)))
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{'per order (µs)':<34}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    names = {
        "journal": "journal (4 fsynced entries)",
        "broker": "broker round trip (HTTP)",
        "submit": "whole submit",
    }
    for k, label in names.items():
        r = res[k]
        print(f"{label:<34}{r['p50']:>9.0f}{r['p90']:>9.0f}{r['p99']:>9.0f}{r['max']:>9.0f}")


if __name__ == "__main__":
    main()
