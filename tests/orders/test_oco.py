"""One-cancels-other groups with reduce on fill at the broker (``OrderIntent.oco_group``).

A bracket's stop-loss and take-profit used to be two independent orders, each for the whole
position, and only the service cancelled one after it saw the other fill: a price crossing
both within that window filled both (a long of 10 became a short of 10). Linked in one OCO
group, a fill of one member by q reduces every other live member by q in the same broker
transition: the paper broker (in process, over HTTP, across a SIGKILL of its process), the
journal (the group is journaled with the intent, resent as it was, covered by the audit
chain) and the refusal of a group where the broker declares none.
"""

from __future__ import annotations

import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from orders_helpers import buy, make_rig, run
from paper_process import PaperProcess
from test_audit_content import rows, tamper, verify

from wal.log.record import decode_line
from wal.orders import (
    BrokerRejectedError,
    ClientIdRules,
    DedupScope,
    OrderIntent,
    OrderRejected,
    OrderState,
    PaperBroker,
    RejectReason,
)
from wal.orders.faults import Fault, FaultPlan
from wal.orders.paperstate import changes_path_of
from wal.orders.validation import validate_intent

D = Decimal
GLOBAL = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)


def _leg(kind: str, qty: str, cid: str, group: str | None = "g1") -> OrderIntent:
    """A reducing sell of a long: a take-profit limit at 110, or a stop-loss stop at 90."""
    return OrderIntent(
        symbol="AAPL",
        side="sell",
        quantity=D(qty),
        order_type="limit" if kind == "tp" else "stop",
        limit_price=D(110) if kind == "tp" else None,
        stop_price=D(90) if kind == "sl" else None,
        time_in_force="gtc",
        client_order_id=cid,
        oco_group=group,
    )


def _by_cid(broker: PaperBroker) -> dict[str, Any]:
    return {o.client_order_id: o for o in broker.all_orders()}


def _long_with_legs(broker: PaperBroker, tp: str = "10", sl: str = "10") -> None:
    broker.submit(buy("10", client_order_id="parent"))  # filled at 100: a long of 10
    broker.submit(_leg("tp", tp, "tp1"))
    broker.submit(_leg("sl", sl, "sl1"))


def test_a_take_profit_fill_cancels_the_stop_in_the_same_change(tmp_path: Path) -> None:
    """The window: the take-profit fills, then the price crosses the stop-loss before anyone
    cancels it. Both legs used to fill (short 10); the group's reduction cancels the stop in
    the very change (one appended, fdatasynced line) that holds the take-profit's fill."""
    broker = PaperBroker(rules=GLOBAL, state_path=tmp_path / "paper.json")
    _long_with_legs(broker)
    broker.set_price("AAPL", D(111))  # the take-profit fills 10
    sl = _by_cid(broker)["sl1"]
    assert sl.status == "canceled" and sl.reduced_quantity == 10 and sl.remaining == 0
    assert sl.filled_quantity == 0
    last = changes_path_of(tmp_path / "paper.json").read_bytes().splitlines()[-1]
    change = decode_line(last)
    assert {o["order"]["client_order_id"] for o in change["orders"]} == {"tp1", "sl1"}
    assert [f["client_order_id"] for f in change["fills"]] == ["tp1"]
    broker.set_price("AAPL", D(89))  # would trigger the stop
    assert broker.net_positions() == {}  # flat, never short
    broker.close()


def test_a_partial_fill_reduces_the_other_member_by_what_filled(tmp_path: Path) -> None:
    broker = PaperBroker(
        rules=GLOBAL,
        faults=FaultPlan(partial_fills=(D("0.4"), D("0.6"))),
        auto_fill=False,
    )
    broker.submit(buy("10", client_order_id="parent"))
    broker.advance()
    broker.advance()  # the long of 10, in two executions
    broker.submit(_leg("tp", "10", "tp1"))
    broker.submit(_leg("sl", "10", "sl1"))
    broker.set_price("AAPL", D(111))
    assert broker.advance() == 1  # the take-profit executes 4 of 10
    sl = _by_cid(broker)["sl1"]
    assert (sl.status, sl.remaining, sl.reduced_quantity) == ("new", 6, 4)
    assert broker.net_positions() == {"AAPL": D(6)}
    broker.set_price("AAPL", D(89))  # the stop triggers: it executes what is left, no more
    while broker.advance():
        assert broker.net_positions().get("AAPL", D(0)) >= 0  # never short
    orders = _by_cid(broker)
    assert orders["sl1"].filled_quantity == 6 and orders["sl1"].status == "canceled"
    assert orders["tp1"].filled_quantity == 4 and orders["tp1"].status == "canceled"
    assert broker.net_positions() == {}


def test_the_group_fills_at_most_its_largest_member(tmp_path: Path) -> None:
    broker = PaperBroker(rules=GLOBAL)
    _long_with_legs(broker, tp="4", sl="10")
    broker.set_price("AAPL", D(111))  # the take-profit of 4 fills: the stop keeps 6
    assert _by_cid(broker)["sl1"].remaining == 6
    broker.set_price("AAPL", D(89))
    assert broker.net_positions() == {}
    assert sum(f.quantity for f in broker.all_fills() if f.side == "sell") == 10


def test_the_reduction_survives_a_restart_of_the_broker(tmp_path: Path) -> None:
    state = tmp_path / "paper.json"
    broker = PaperBroker(rules=GLOBAL, state_path=state)
    _long_with_legs(broker, tp="4", sl="10")
    broker.set_price("AAPL", D(111))
    broker.close()
    again = PaperBroker(state_path=state)  # what a restarted `atb paper-broker serve` reads
    assert again.rules.oco_groups is True
    sl = _by_cid(again)["sl1"]
    assert (sl.remaining, sl.reduced_quantity, sl.oco_group) == (6, 4, "g1")
    again.set_price("AAPL", D(89))
    assert again.net_positions() == {}
    again.close()
    third = PaperBroker(state_path=state)
    assert third.net_positions() == {} and _by_cid(third)["sl1"].status == "canceled"
    third.close()


def test_over_http_across_a_sigkill_of_the_broker_process(tmp_path: Path) -> None:
    """``atb paper-broker serve``: the group goes over HTTP, the broker declares it at
    /_paper/rules, and the reduction is durable before the price move's reply: SIGKILLed
    right after, the restarted broker keeps it and fills the stop for what is left only."""
    p = PaperProcess(tmp_path)
    try:
        assert p.http.get("/_paper/rules").json()["oco_groups"] is True
        p.submit(symbol="AAPL", qty="10", side="buy", type="market", client_order_id="parent")
        for cid, extra in (
            ("tp1", {"type": "limit", "limit_price": "110", "qty": "4"}),
            ("sl1", {"type": "stop", "stop_price": "90", "qty": "10"}),
        ):
            p.submit(
                symbol="AAPL", side="sell", time_in_force="gtc", client_order_id=cid,
                oco_group="g1", **extra,
            )  # fmt: skip
        p.http.post("/_paper/price", json={"symbol": "AAPL", "price": "111"}).raise_for_status()
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(10)
        p.http.close()
        if p.proc.stdout is not None:
            p.proc.stdout.close()
        p = PaperProcess(tmp_path, port=p.port)
        sl = {o["client_order_id"]: o for o in p.orders()}["sl1"]
        assert sl["oco_group"] == "g1" and D(sl["oco_reduced_qty"]) == 4
        assert sl["status"] == "new"
        p.http.post("/_paper/price", json={"symbol": "AAPL", "price": "89"}).raise_for_status()
        assert p.positions() == {}  # the stop sold the 6 left, not 10: never short
    finally:
        p.close()


def test_a_broker_without_groups_refuses_one_and_the_manager_never_sends_it(
    tmp_path: Path,
) -> None:
    none = ClientIdRules(visibility_window_seconds=0, oco_groups=False)
    broker = PaperBroker(rules=none)
    with pytest.raises(BrokerRejectedError, match="no OCO groups"):
        broker.submit(_leg("tp", "1", "tp1"))
    rig = make_rig(tmp_path, broker)
    try:

        async def go() -> None:
            await rig.om.start()
            with pytest.raises(OrderRejected) as exc:
                await rig.om.submit(_leg("tp", "1", "tp2"))
            assert exc.value.reason is RejectReason.OCO_UNSUPPORTED
            assert exc.value.field == "oco_group" and "reduce on fill" in exc.value.message
            assert rig.om.get("tp2") is None and broker.submit_calls == 1  # nothing sent

        run(go())
    finally:
        rig.close()
    assert ClientIdRules().oco_groups is None  # a broker nobody declared: none
    with pytest.raises(OrderRejected) as undeclared:
        validate_intent(_leg("tp", "1", "tp3"), ClientIdRules())
    assert undeclared.value.reason is RejectReason.OCO_UNSUPPORTED


@pytest.mark.parametrize("group", ["", "a b", "x" * 37, "grüppe"])
def test_a_bad_group_is_refused_naming_it(group: str) -> None:
    rules = ClientIdRules(oco_groups=True)
    with pytest.raises(OrderRejected) as exc:
        validate_intent(_leg("tp", "1", "tp1", group=group), rules)
    assert exc.value.reason is RejectReason.BAD_OCO_GROUP and exc.value.field == "oco_group"


def test_the_group_is_journaled_resent_as_it_was_and_covered_by_the_audit_chain(
    db_url: str, tmp_path: Path
) -> None:
    """A submit that times out before the broker saw it is resent (a GLOBAL-dedup broker)
    from the journal: with its group. The group is in the orders row and in the created
    event's hashed content; an edit of the row is named by ``verify_audit``."""
    plan = FaultPlan(seed=1).on("submit_order", Fault.TIMEOUT_BEFORE_ACCEPT, nth=2)
    broker = PaperBroker(rules=GLOBAL, faults=plan)
    rig = make_rig(tmp_path, broker, url=db_url)
    try:

        async def go() -> None:
            await rig.om.start()
            await rig.om.submit(buy("10", client_order_id="parent"))
            order = await rig.om.submit(_leg("tp", "10", "tp1", group="oco-1"), protective=True)
            assert order.state is OrderState.ACCEPTED and order.intent.oco_group == "oco-1"
            assert broker.submitted_client_ids == ["parent", "tp1", "tp1"]  # resent
            [bo] = broker.orders_with_client_id("tp1")
            assert bo.oco_group == "oco-1"

        run(go())
    finally:
        rig.close()
    again = make_rig(tmp_path, PaperBroker(rules=GLOBAL), url=db_url)  # read back after a restart
    try:
        read = again.om.journal.order("tp1")
        assert read is not None and read.intent.oco_group == "oco-1"
    finally:
        again.close()
    [row] = rows(db_url, "orders", "client_order_id = 'tp1'")
    assert row["oco_group"] == "oco-1"
    [created] = rows(db_url, "order_events", "client_order_id = 'tp1' AND seq = 1")
    assert orjson.loads(created["content"])["oco_group"] == "oco-1"
    [parent] = rows(db_url, "order_events", "client_order_id = 'parent' AND seq = 1")
    assert "oco_group" not in orjson.loads(parent["content"])  # hashed exactly as before
    assert verify(db_url, tmp_path).ok
    tamper(db_url, "UPDATE orders SET oco_group = 'other' WHERE client_order_id = 'tp1'")
    report = verify(db_url, tmp_path)
    assert any("order tp1: oco_group is 'other'" in p for p in report.problems), report.problems


def test_a_stop_in_the_group_of_a_live_stop_is_counted_as_the_larger_of_the_two(
    tmp_path: Path,
) -> None:
    """The manager's protective check counts an OCO group as its largest member: a bracket's
    replacement stop of 10 is accepted beside the stop of 4 it replaces when both are in one
    group (together they never sell more than 10), refused outside it (4 + 10 would sell 14
    of 10). The market through both: sold 10, never short."""
    broker = PaperBroker(rules=GLOBAL)
    rig = make_rig(tmp_path, broker)
    try:

        async def go() -> None:
            om = rig.om
            await om.start()
            await om.submit(buy("10", client_order_id="parent"))
            assert (await om.submit(_leg("sl", "4", "sl1"), protective=True)).state is (
                OrderState.ACCEPTED
            )
            with pytest.raises(OrderRejected, match="cover more than"):
                await om.submit(_leg("sl", "10", "sl-other", group="g2"), protective=True)
            with pytest.raises(OrderRejected, match="cover more than"):
                await om.submit(_leg("sl", "10", "sl-alone", group=None), protective=True)
            sl2 = await om.submit(_leg("sl", "10", "sl2"), protective=True)  # group g1
            assert sl2.state is OrderState.ACCEPTED
            broker.set_price("AAPL", D(89))  # both stops trigger: the group sells 10 in all
            await om.poll_fills()
            assert broker.net_positions() == {}
            assert om.positions().get("AAPL", D(0)) == 0

        run(go())
    finally:
        rig.close()
