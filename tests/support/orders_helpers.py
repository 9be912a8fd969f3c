"""Shared pieces of the order tests: a durable database on real files, fast retries, checks.

``Rig`` is one engine: a ``DurableDatabaseManager`` (a real log directory and a real SQLite
or PostgreSQL database), a broker and an ``OrderManager`` with zero backoff (retries are
still made, in the same order, just without the 1-2-4 s waits).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from trading_child import fast_config

from wal import DurableDatabaseManager
from wal.db import DatabaseManager
from wal.orders import (
    Broker,
    OrderIntent,
    OrderJournal,
    OrderManager,
    PaperBroker,
    RetryPolicy,
    RiskLimits,
)

T = TypeVar("T")
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.0, call_timeout=5.0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def open_ddb(wal_dir: Path, url: str) -> DurableDatabaseManager:
    ddb = DurableDatabaseManager(DatabaseManager(url), config=fast_config(wal_dir, url))
    ddb.start()
    return ddb


@dataclass
class Rig:
    ddb: DurableDatabaseManager
    broker: Broker
    om: OrderManager

    def close(self) -> None:
        self.ddb.stop()
        self.ddb.db.dispose()


def make_rig(
    tmp_path: Path,
    broker: Broker | None = None,
    *,
    url: str | None = None,
    risk: RiskLimits | None = None,
    deposit: Decimal = Decimal("1000000"),
) -> Rig:
    url = url or f"sqlite:///{tmp_path / 'atb.db'}"
    ddb = open_ddb(tmp_path / "wal", url)
    if deposit and ddb.get_balance() == 0:
        ddb.atomic_balance_update(deposit, reason="deposit")
    b = broker if broker is not None else PaperBroker(seed=1)
    om = OrderManager(ddb, b, risk=risk, retry=FAST_RETRY, price_source=_price_of(b))
    return Rig(ddb, b, om)


def _price_of(broker: Broker) -> Any:
    if isinstance(broker, PaperBroker):
        return broker.price
    return lambda _symbol: Decimal("100")


def buy(qty: str = "10", symbol: str = "AAPL", **kw: Any) -> OrderIntent:
    return OrderIntent(symbol=symbol, side="buy", quantity=Decimal(qty), **kw)


def journal_positions(ddb: DurableDatabaseManager) -> dict[str, Decimal]:
    """Net position per symbol from the journal's fills (what the log says was executed)."""
    out: dict[str, Decimal] = {}
    for f in OrderJournal(ddb).fills():
        q = Decimal(str(f["quantity"]))
        out[f["symbol"]] = out.get(f["symbol"], Decimal(0)) + (q if f["side"] == "buy" else -q)
    return {s: q for s, q in out.items() if q != 0}


def broker_positions(positions: list[Any]) -> dict[str, Decimal]:
    return {p.symbol: p.quantity for p in positions if p.quantity != 0}


def run_order_child(
    child: Path, args: list[str], crash: str | None = None, kill_after: int | None = None
) -> tuple[int, list[str]]:
    """Run ``child`` (a trading process) with ``args``; arm ``WAL_CRASH_POINT=crash``; SIGKILL
    it once it has printed more than ``kill_after`` ``ack`` lines. (exit code, its lines)."""
    env = {k: v for k, v in os.environ.items() if k != "WAL_CRASH_POINT"}
    if crash:
        env["WAL_CRASH_POINT"] = crash
    proc = subprocess.Popen(
        [sys.executable, str(child), *args], stdout=subprocess.PIPE, env=env, cwd=child.parent
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for raw in proc.stdout:
        lines.append(raw.decode().rstrip("\n"))
        if kill_after is not None and sum(x.startswith("ack ") for x in lines) > kill_after:
            proc.send_signal(signal.SIGKILL)  # a real SIGKILL, mid-run
            break
    proc.stdout.close()
    return proc.wait(60), lines
