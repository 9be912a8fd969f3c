"""Startup reconciliation against the paper broker as its own HTTP process (``HttpBroker``),
and the operator's commands: ``atb orders reconcile [--dry-run] [--json]``, ``atb orders
status``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from orders_helpers import FAST_RETRY, open_ddb, run
from paper_process import PaperProcess

from cli.main import atb
from wal.orders import (
    Fault,
    FaultPlan,
    OrderIntent,
    OrderManager,
    OrderState,
    ReconcilerConfig,
    ReconciliationFatalError,
    ReconciliationResult,
    RiskLimits,
    StartupReconciler,
    TradingHalted,
)
from wal.orders.http_broker import HttpBroker

FAST = ReconcilerConfig(fetch_timeout=5.0, fetch_backoff=(0.001, 0.002, 0.004))


@pytest.fixture
def paper(tmp_path: Path) -> Iterator[PaperProcess]:
    p = PaperProcess(tmp_path)
    try:
        yield p
    finally:
        p.close()


def engine(tmp_path: Path, paper: PaperProcess, action: str, n: int = 0) -> ReconciliationResult:
    """One engine run: open, reconcile, then ``action`` (``buy`` n AAPL / nothing), close."""
    url = f"sqlite:///{tmp_path / 'atb.db'}"

    async def go() -> ReconciliationResult:
        ddb = open_ddb(tmp_path / "wal", url)
        broker = await HttpBroker.connect(paper.url, timeout=2.0)
        try:
            om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), retry=FAST_RETRY)
            rec = StartupReconciler(om, FAST)
            with pytest.raises(TradingHalted):
                await om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal("1")))
            result = await rec.run()
            if action == "buy":
                o = await om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal(n)))
                assert o.state is OrderState.FILLED
            await om.close()
            return result
        finally:
            await broker.aclose()
            ddb.stop()
            ddb.db.dispose()

    return run(go())


def test_restart_reconciles_an_orphan_and_protects_every_position(
    tmp_path: Path, paper: PaperProcess
) -> None:
    first = engine(tmp_path, paper, "buy", 5)
    assert first.changes == 0
    paper.submit(symbol="MSFT", qty="2", side="buy", type="market", client_order_id="manual-1")
    r = engine(tmp_path, paper, "none")  # a restart
    assert (r.orphans_detected, r.emergency_stops_placed) == (1, 2) and not r.errors, r
    stops = {o["symbol"]: o for o in paper.open_orders() if o["type"] == "stop"}
    assert Decimal(stops["AAPL"]["stop_price"]) == Decimal("98.00")
    assert Decimal(stops["MSFT"]["qty"]) == Decimal("2")
    writes = paper.writes()
    again = engine(tmp_path, paper, "none")
    assert again.changes == 0 and not again.errors and paper.writes() == writes


def test_failing_fetches_are_fatal_over_http(tmp_path: Path, paper: PaperProcess) -> None:
    paper.set_faults(FaultPlan().on("get_positions", Fault.FETCH_FAILURE, times=3))
    with pytest.raises(ReconciliationFatalError, match="fetching positions failed 3 times"):
        engine(tmp_path, paper, "none")
    paper.set_faults(FaultPlan().on("get_recent_orders", Fault.UNKNOWN_STATUS))
    paper.submit(symbol="AAPL", qty="1", side="buy", type="limit", limit_price="50",
                 client_order_id="manual-2")  # fmt: skip
    with pytest.raises(ReconciliationFatalError, match="unknown broker order status"):
        engine(tmp_path, paper, "none")


def test_a_stop_rejected_three_times_closes_at_market_over_http(
    tmp_path: Path, paper: PaperProcess
) -> None:
    engine(tmp_path, paper, "buy", 3)
    paper.set_faults(FaultPlan().on("submit_order", Fault.REJECT, times=3))
    r = engine(tmp_path, paper, "none")
    assert r.positions_closed == 1 and r.emergency_stops_placed == 0, r
    assert paper.positions() == {}


def cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {
        "WAL_DIR": str(tmp_path / "wal"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'atb.db'}",
    }
    r = CliRunner().invoke(atb, ["orders", *args], env=env)
    return r.exit_code, r.output


def test_atb_orders_reconcile_and_status(tmp_path: Path, paper: PaperProcess) -> None:
    engine(tmp_path, paper, "buy", 4)
    code, out = cli(tmp_path, "status", "--json")
    assert code == 1, out  # a position with no stop yet
    st = json.loads(out)
    assert st["unprotected_positions"] == ["AAPL"] and not st["ok"]
    writes = paper.writes()
    code, out = cli(tmp_path, "reconcile", "--broker-url", paper.url, "--dry-run", "--json")
    assert code == 0, out
    dry = json.loads(out)
    assert dry["dry_run"] and dry["emergency_stops_placed"] == 1 and paper.writes() == writes
    code, out = cli(tmp_path, "reconcile", "--broker-url", paper.url)
    assert code == 0 and "emergency_stops_placed: 1" in " ".join(out.split()), out
    code, out = cli(tmp_path, "status", "--broker-url", paper.url)
    assert code == 0 and out.startswith("OK"), out
    code, out = cli(tmp_path, "reconcile", "--broker-url", paper.url, "--json")
    assert code == 0 and json.loads(out)["emergency_stops_placed"] == 0
    code, out = cli(tmp_path, "reconcile", "--broker-url", paper.url, "--emergency-stop-pct", "0.5")
    assert code == 2 and "between 0.005 and 0.10" in out, out  # a usage error
    code, out = cli(tmp_path, "verify")
    assert code == 0 and "intact" in out
