"""``atb orders flatten`` racing a protective stop, over HTTP: the position is sold once.

The engine's journal holds 10 AAPL and its stop (sell 10 at 95), resting at a paper broker
served over HTTP from a thread (``racing_paper.ServedPaper``: ``atb paper-broker``'s app) by a
broker that moves the market as a request arrives. The CLI used to send the close first and
cancel the stop after it filled: the stop, live meanwhile, sold the position a second time
(short 10). Now it cancels the symbol's orders first (``wal.orders.flatten``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from orders_helpers import FAST_RETRY, open_ddb, run
from racing_paper import (
    ServedPaper,
    StopFillsBeforeItsCancel,
    StopTriggersAsTheCloseArrives,
    long_with_stop,
    sells,
)

from cli.main import atb
from wal.orders import (
    ClientIdRules,
    DedupScope,
    HttpBroker,
    OrderManager,
    PaperBroker,
    ReconcilerConfig,
    RiskLimits,
    StartupReconciler,
)

pytestmark = pytest.mark.usefixtures("clean_env")

GLOBAL = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)
FAST = ReconcilerConfig(fetch_timeout=5.0, fetch_backoff=(0.001, 0.002, 0.004))


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[PaperBroker, str]]:
    broker: PaperBroker = request.param(seed=1, rules=GLOBAL)
    s = ServedPaper(broker)
    try:
        yield broker, s.url
    finally:
        s.close()


def engine_with_a_stop(tmp_path: Path, url: str) -> str:
    """One engine run: reconciled, 10 AAPL bought, its stop resting; the stop's client id."""

    async def go() -> str:
        ddb = open_ddb(tmp_path / "wal", f"sqlite:///{tmp_path / 'atb.db'}")
        broker = await HttpBroker.connect(url, timeout=2.0)
        try:
            om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), retry=FAST_RETRY)
            assert not (await StartupReconciler(om, FAST).run()).errors
            stop = await long_with_stop(om)
            ddb.drain(10.0)
            await om.close()
            return stop
        finally:
            await broker.aclose()
            ddb.stop()
            ddb.db.dispose()

    return run(go())


def flatten_cli(url: str) -> tuple[int, dict[str, Any]]:
    r = CliRunner().invoke(
        atb,
        ["orders", "--dir", "wal", "flatten", "--broker-url", url, "--yes", "--json"],
        catch_exceptions=False,
    )
    return r.exit_code, json.loads(r.stdout)


@pytest.mark.parametrize("served", [StopTriggersAsTheCloseArrives], indirect=True)
def test_atb_orders_flatten_cancels_the_stop_before_the_close(
    tmp_path: Path, served: tuple[PaperBroker, str]
) -> None:
    """The CLI against the broker over HTTP; the market falls through the stop as the close
    arrives. Before: the close went out beside the live stop, both sold (short 10)."""
    broker, url = served
    stop = engine_with_a_stop(tmp_path, url)
    code, out = flatten_cli(url)
    assert broker.net_positions() == {}, sells(broker)
    assert [(t, q) for _, t, q in sells(broker)] == [("market", Decimal(10))]
    assert code == 0, out
    assert out["cancelled"] == out["stops_cancelled"] == [stop]
    assert [(c["state"], c["filled_quantity"]) for c in out["closes"]] == [("filled", "10")]
    assert out["problems"] == []


@pytest.mark.parametrize("served", [StopFillsBeforeItsCancel], indirect=True)
def test_atb_orders_flatten_sends_no_close_once_the_stop_closed_it(
    tmp_path: Path, served: tuple[PaperBroker, str]
) -> None:
    """The stop fills while its cancel is on its way: nothing is left to close, nothing is
    sent. Before: the close filled first, then the stop's cancel (sent after it) arrived as
    the stop fired: short 10."""
    broker, url = served
    stop = engine_with_a_stop(tmp_path, url)
    code, out = flatten_cli(url)
    assert broker.net_positions() == {}, sells(broker)
    assert [(t, q) for _, t, q in sells(broker)] == [("stop", Decimal(10))]
    assert code == 0, out
    assert out["filled_before_cancel"] == [stop] and out["cancelled"] == []
    assert [(c["state"], c["client_order_id"]) for c in out["closes"]] == [("flat", None)]
