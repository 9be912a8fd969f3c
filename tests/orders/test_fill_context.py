"""An order's figures do not depend on the engine's decimal context (wal.money).

Two partial fills at prices whose average does not terminate (1 at 100.01, 2 at 100.02:
300.05 / 3), booked by an ``OrderManager`` running in a 6-digit context with ``Inexact`` and
``Rounded`` trapped, give the journal the same average price, filled quantity, position,
entry price and cash as in the default context; and so do the paper broker's own partial
executions (its average price and position).

Real parts: a log directory and a SQLite file per run, the paper broker, the manager.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from orders_helpers import buy, make_rig, run

from wal.db.schema import balance_changes, balances
from wal.orders import FaultPlan, Fill, OrderJournal, PaperBroker


def hostile() -> decimal.Context:
    """An engine's pricing context: 6 digits, and a rounding anywhere raises."""
    ctx = decimal.Context(prec=6, rounding=decimal.ROUND_HALF_EVEN)
    ctx.traps[decimal.Inexact] = True
    ctx.traps[decimal.Rounded] = True
    return ctx


def book_two_fills(tmp_path: Path) -> dict[str, Any]:
    """Submit a buy of 3, book fills of 1 at 100.01 and 2 at 100.02 (fee 0.013 each); what
    the journal, the positions and the cash say."""
    broker = PaperBroker(seed=3, auto_fill=False, prices={"AAPL": Decimal("100.01")})
    rig = make_rig(tmp_path, broker, deposit=Decimal("1000000.01"))

    async def go() -> dict[str, Any]:
        await rig.om.start()
        order = await rig.om.submit(buy("3", order_type="limit", limit_price=Decimal("99")))
        cid = order.client_order_id
        fills = [
            Fill(f"X{n}", cid, "AAPL", "buy", Decimal(q), Decimal(p), fee=Decimal("0.013"))
            for n, (q, p) in enumerate((("1", "100.01"), ("2", "100.02")))
        ]
        assert await rig.om.apply_fills(fills) == 2
        done = rig.om.get(cid)
        assert done is not None
        journaled = OrderJournal(rig.ddb).order(cid)
        assert journaled is not None
        return {
            "avg": (done.avg_fill_price, journaled.avg_fill_price),
            "filled": (done.filled_quantity, journaled.filled_quantity, done.remaining),
            "state": journaled.state.value,
            "position": (rig.om.positions(), rig.om.entry_price("AAPL")),
            "balance": rig.ddb.get_balance(),
        }

    try:
        out = run(go())
        assert rig.ddb.drain(30) == 0
        with rig.ddb.db.engine.connect() as conn:
            out["row"] = conn.execute(sa.select(balances.c.balance)).scalar_one()
            out["deltas"] = sorted(d for (d,) in conn.execute(sa.select(balance_changes.c.delta)))
        out["db_positions"] = [
            (p["quantity"], p["entry_price"]) for p in rig.ddb.db.get_open_positions()
        ]
        return out
    finally:
        rig.close()


def paper_partial_fills(tmp_path: Path) -> dict[str, Any]:
    """The paper broker executes a market buy of 3 in two parts (0.3, 0.7) at 100.01 then
    100.02."""
    plan = FaultPlan(partial_fills=(Decimal("0.3"), Decimal("0.7")))
    broker = PaperBroker(seed=5, faults=plan, auto_fill=False, prices={"AAPL": Decimal("100.01")})
    rig = make_rig(tmp_path, broker)

    async def go() -> dict[str, Any]:
        await rig.om.start()
        order = await rig.om.submit(buy("3"))  # a market order: each part at the market
        assert broker.advance() == 1
        broker.set_price("AAPL", Decimal("100.02"))
        assert broker.advance() == 1
        assert await rig.om.poll_fills() == 2
        done = rig.om.get(order.client_order_id)
        assert done is not None
        (bo,) = broker.orders_with_client_id(order.client_order_id)
        return {
            "broker": (bo.filled_quantity, bo.avg_fill_price),
            "broker_position": [(p.quantity, p.avg_entry_price) for p in broker.positions()],
            "journal": (done.filled_quantity, done.avg_fill_price, rig.om.entry_price("AAPL")),
        }

    try:
        return run(go())
    finally:
        rig.close()


def test_two_partial_fills_book_the_same_figures_in_a_low_precision_context(
    tmp_path: Path,
) -> None:
    """(5) the same journal average, position and cash under prec=6 (traps on) as under the
    default context; and those figures are the exact ones."""
    expected = book_two_fills(tmp_path / "default")
    with decimal.localcontext(hostile()):
        got = book_two_fills(tmp_path / "low")
    assert got == expected
    avg = Decimal("100.0166666667")  # 300.05 / 3, to 10 places
    assert expected["avg"] == (avg, avg)
    assert expected["filled"] == (Decimal(3), Decimal(3), Decimal(0))
    assert expected["state"] == "filled"
    assert expected["position"] == ({"AAPL": Decimal(3)}, avg)
    assert expected["db_positions"] == [(Decimal(3), avg)]
    cash = Decimal("1000000.01") - Decimal("300.05") - Decimal("0.026")
    assert expected["balance"] == expected["row"] == cash
    assert expected["deltas"] == sorted(
        [Decimal("1000000.01"), Decimal("-100.023"), Decimal("-200.053")]
    )


def test_the_paper_brokers_partial_executions_are_exact_in_a_low_precision_context(
    tmp_path: Path,
) -> None:
    expected = paper_partial_fills(tmp_path / "default")
    with decimal.localcontext(hostile()):
        got = paper_partial_fills(tmp_path / "low")
    assert got == expected
    avg = Decimal("100.017")  # (0.9 x 100.01 + 2.1 x 100.02) / 3
    assert expected["broker"][0] == Decimal(3) and expected["broker"][1] == avg
    assert expected["journal"] == (Decimal(3), avg, avg)
    assert [(q, p) for q, p in expected["broker_position"]] == [(Decimal(3), avg)]
