"""Broker order ids reused across broker sessions (docs/shared ORDERS.md, incident 9:
Interactive Brokers' orderId is per session; a broker restarted without its state numbers
its orders from 1 again). The journal's stored ``broker_order_id`` may then name ANOTHER
order. ``OrderManager.cancel`` never acts on it: it looks the order up by its client id and
cancels the id the broker reports for it; an order the broker does not show is refused,
nothing sent.

The broker's restart is real: a second ``PaperBroker`` without the first one's state behind
the same connection (in-process), and ``atb paper-broker serve`` stopped and started again
on the same port with a fresh state file (over HTTP).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from orders_helpers import FAST_RETRY, buy, make_rig, open_ddb, run
from paper_process import PaperProcess

from wal.orders import (
    ClientIdRules,
    DedupScope,
    OrderIntent,
    OrderJournal,
    OrderManager,
    OrderRejected,
    OrderState,
    PaperBroker,
    RiskLimits,
)
from wal.orders.http_broker import HttpBroker

S = OrderState
GLOBAL = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)


class Session:
    """The connection to a broker whose process may restart: every call goes to the
    current ``PaperBroker`` (``restart()``: a new one, without the old one's state)."""

    def __init__(self) -> None:
        self.current = PaperBroker(seed=1, rules=GLOBAL)

    def restart(self) -> PaperBroker:
        self.current = PaperBroker(seed=1, rules=GLOBAL)
        return self.current

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)


def resting_buy() -> OrderIntent:
    """A limit buy under the market (100): it rests, open."""
    return buy("5", order_type="limit", limit_price=Decimal("90"))


def protective_stop() -> OrderIntent:
    return OrderIntent(
        symbol="MSFT",
        side="sell",
        quantity=Decimal("10"),
        order_type="stop",
        stop_price=Decimal("95"),
        time_in_force="gtc",
    )


async def _before_restart(om: OrderManager) -> str:
    """An order resting (the broker's first id), then A resting (its second). Nothing fills
    before the restart: the restarted broker numbers its executions from its order ids too,
    and an execution id journaled for another order is refused (``FillError``)."""
    await om.start()
    assert (
        await om.submit(
            OrderIntent(
                symbol="IBM",
                side="buy",
                quantity=Decimal("1"),
                order_type="limit",
                limit_price=Decimal("50"),
            )
        )
    ).state is S.ACCEPTED
    a = await om.submit(resting_buy())
    assert a.state is S.ACCEPTED
    return a.client_order_id


async def _position_and_stop(om: OrderManager) -> str:
    """At the restarted broker: a position and its protective stop B (the broker's second
    id again: A's stored id names B now)."""
    assert (
        await om.submit(OrderIntent(symbol="MSFT", side="buy", quantity=Decimal("10")))
    ).state is S.FILLED
    b = await om.submit(protective_stop(), protective=True)
    assert b.state is S.ACCEPTED
    return b.client_order_id


def test_cancel_never_acts_on_a_stored_broker_id_the_broker_reused(tmp_path: Path) -> None:
    session = Session()
    rig = make_rig(tmp_path, session)  # type: ignore[arg-type]

    async def go() -> None:
        om = rig.om
        a = await _before_restart(om)
        a_bid = om.get(a).broker_order_id  # type: ignore[union-attr]
        broker = session.restart()  # without its state: numbers its orders from 1 again
        b = await _position_and_stop(om)
        assert om.get(b).broker_order_id == a_bid  # type: ignore[union-attr]  # reused
        with pytest.raises(OrderRejected, match="not found at the broker") as info:
            await om.cancel(a)
        assert "nothing was sent" in str(info.value)
        assert broker.cancel_calls == 0  # nothing sent, to B's id least of all
        stop = broker.lookup(b)
        assert stop is not None and stop.status == "new"  # the position stays protected
        assert om.get(b).state is S.ACCEPTED  # type: ignore[union-attr]
        assert om.get(a).state is S.ACCEPTED  # type: ignore[union-attr]  # as it stood
        assert "cancel_requested" not in [e["kind"] for e in OrderJournal(rig.ddb).events(a)]

    try:
        run(go())
    finally:
        rig.close()


def test_cancel_goes_to_the_id_the_broker_reports_for_the_client_id(tmp_path: Path) -> None:
    """A is live at the restarted broker under a new id (it was placed there again under its
    client id): the cancel goes to that id, never to the stored one (now B's)."""
    session = Session()
    rig = make_rig(tmp_path, session)  # type: ignore[arg-type]

    async def go() -> None:
        om = rig.om
        a = await _before_restart(om)
        a_bid = om.get(a).broker_order_id  # type: ignore[union-attr]
        broker = session.restart()
        b = await _position_and_stop(om)
        assert om.get(b).broker_order_id == a_bid  # type: ignore[union-attr]
        again = broker.submit(om.get(a).intent)  # type: ignore[union-attr]  # A, a new id
        assert again.broker_order_id != a_bid
        order = await om.cancel(a)
        assert order.state is S.CANCELLED
        assert broker.cancel_calls == 1
        assert broker.lookup(a).status == "canceled"  # type: ignore[union-attr]
        assert broker.lookup(b).status == "new"  # type: ignore[union-attr]  # B untouched
        assert om.get(b).state is S.ACCEPTED  # type: ignore[union-attr]
        events = OrderJournal(rig.ddb).events(a)
        asked = [e for e in events if e["kind"] == "cancel_requested"]
        assert [e["broker_order_id"] for e in asked] == [again.broker_order_id]

    try:
        run(go())
    finally:
        rig.close()


def test_over_http_a_restarted_paper_broker_reusing_ids_loses_no_stop(tmp_path: Path) -> None:
    """``atb paper-broker serve`` stopped and started again on the same port without its
    state: it numbers its orders from paper-00000001 again. The engine keeps running;
    cancelling A (placed before the restart) must not cancel B, the protective stop the
    restarted broker gave A's old id to."""
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    paper = PaperProcess(tmp_path / "first")
    ddb = open_ddb(tmp_path / "wal", f"sqlite:///{tmp_path / 'atb.db'}")
    again: PaperProcess | None = None

    async def go() -> None:
        nonlocal again
        broker = await HttpBroker.connect(paper.url, timeout=5.0)
        try:
            om = OrderManager(ddb, broker, risk=RiskLimits(check_balance=False), retry=FAST_RETRY)
            a = await _before_restart(om)
            a_bid = om.get(a).broker_order_id  # type: ignore[union-attr]
            paper.close()
            again = PaperProcess(tmp_path / "second", port=paper.port)  # a fresh state
            b = await _position_and_stop(om)
            assert om.get(b).broker_order_id == a_bid  # type: ignore[union-attr]
            with pytest.raises(OrderRejected, match="not found at the broker"):
                await om.cancel(a)
            assert again.writes() == 2  # the buy and the stop; no cancel
            stops = [o for o in again.open_orders() if o["client_order_id"] == b]
            assert [o["status"] for o in stops] == ["new"]
            assert om.get(b).state is S.ACCEPTED  # type: ignore[union-attr]
        finally:
            await broker.aclose()

    try:
        run(go())
    finally:
        if again is not None:
            again.close()
        elif paper.proc.poll() is None:
            paper.close()
        ddb.stop()
        ddb.db.dispose()
