"""stop_loss / take_profit through a real ``atb serve``: a filled order's two children are at
the broker (its durable state file, linked in one OCO group) and in the trader's order list;
a price through both while the service is down leaves the position flat."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from helpers_log import wait_for
from service_proc import ServiceProc, auth, refusing_second_submit

from wal.orders.paper import PaperBroker
from wal.service.brackets import child_order_id, oco_group_of


def _broker_orders(svc: ServiceProc) -> list[dict[str, Any]]:
    state = PaperBroker.read_state(svc.paper_state)
    assert state is not None
    return [o["order"] for o in state["orders"]]


def test_a_filled_order_with_a_bracket_has_both_children_at_the_broker(svc: ServiceProc) -> None:
    token = svc.token("bracket-trader")
    cid = _buy_3_bracketed(svc, token, "BRKT")
    sl, tp = child_order_id(cid, "sl", 1), child_order_id(cid, "tp", 1)

    def children() -> dict[str, dict[str, Any]]:
        return {
            o["client_order_id"]: o
            for o in _broker_orders(svc)
            if o["client_order_id"] in (sl, tp) and o["status"] == "new"
        }

    wait_for(lambda: len(children()) == 2, "both bracket children at the broker")
    kids = children()
    assert kids[sl]["side"] == "sell" and kids[sl]["type"] == "stop"
    assert Decimal(kids[sl]["qty"]) == 3 and Decimal(kids[sl]["stop_price"]) == 95
    assert kids[tp]["type"] == "limit" and Decimal(kids[tp]["limit_price"]) == 105
    mine = httpx.get(svc.url + "/api/v1/orders", headers=auth(token), timeout=30).json()
    wait_for(
        lambda: (
            {
                o["id"]: o["state"]
                for o in httpx.get(
                    svc.url + "/api/v1/orders", headers=auth(token), timeout=30
                ).json()["orders"]
            }
            == {cid: "filled", sl: "accepted", tp: "accepted"}
        ),
        "the children in the trader's order list",
    )
    assert mine["orders"]
    pos = httpx.get(svc.url + "/api/v1/positions", headers=auth(token), timeout=30).json()
    [p] = pos["positions"]
    assert [s["id"] for s in p["stop_orders"]] == [sl]


def test_a_child_that_could_not_be_placed_is_listed_by_readyz_metrics_and_positions(
    tmp_path: Path,
) -> None:
    """The broker refuses the stop-loss (its 2nd submit; the take-profit is placed): /readyz
    stays 200 and lists the
    position with the reason, the gauge counts it, the trader's position shows it; once the
    trader closes the position nothing is unprotected any more."""
    svc = refusing_second_submit(tmp_path, "stop orders are not allowed")
    token = svc.token("exposed")
    svc.start()
    try:
        svc.wait_ready()
        cid = _buy_3_bracketed(svc, token, "EXPO")

        def unprotected() -> list[dict[str, Any]]:
            ready = httpx.get(svc.url + "/readyz", timeout=30)
            assert ready.status_code == 200, ready.text  # trading goes on
            out: list[dict[str, Any]] = ready.json()["unprotected"]
            return out

        tp = child_order_id(cid, "tp", 1)
        wait_for(
            lambda: any(
                o["client_order_id"] == tp and o["status"] == "new" for o in _broker_orders(svc)
            ),
            "the take-profit at the broker",
        )
        wait_for(lambda: len(unprotected()) == 1, "the refused stop-loss in /readyz")
        [u] = unprotected()  # the placed take-profit does not hide the missing stop-loss
        assert u["symbol"] == "EXPO" and u["missing"] == "stop_loss" and u["quantity"] == "3"
        assert "stop orders are not allowed" in u["reason"] and u["source"] == "bracket"
        assert cid not in json.dumps(u)  # /readyz is public: no trader's order ids
        metrics = httpx.get(svc.url + "/metrics", timeout=30).text
        assert "atb_service_positions_unprotected 1.0" in metrics
        pos = httpx.get(svc.url + "/api/v1/positions", headers=auth(token), timeout=30).json()
        [p] = pos["positions"]
        [mine] = p["unprotected"]
        assert mine["order_id"] == cid and "stop orders are not allowed" in mine["reason"]
        other = svc.token("bystander")
        seen = httpx.get(svc.url + "/api/v1/positions", headers=auth(other), timeout=30).json()
        assert seen["positions"] == []

        # the trader sells the position: nothing is left to protect
        sell = {"symbol": "EXPO", "side": "sell", "quantity": "3"}
        headers = auth(token) | {"Idempotency-Key": uuid.uuid4().hex}
        r = httpx.post(svc.url + "/api/v1/orders", json=sell, headers=headers, timeout=30)
        assert r.status_code == 201 and r.json()["state"] == "filled", r.text
        wait_for(lambda: unprotected() == [], "the closed position no longer listed")
        metrics = httpx.get(svc.url + "/metrics", timeout=30).text
        assert "atb_service_positions_unprotected 0.0" in metrics
    finally:
        assert svc.stop() == 0


def test_a_price_through_both_children_while_the_service_is_down_ends_flat(
    tmp_path: Path,
) -> None:
    """The longest window there is between a child's fill and the sweep that cancels the
    other: the service SIGKILLed. The market crosses the take-profit, then the stop-loss
    (the broker's own state moved, as the market would). Two independent children both
    filled: the restarted service found a short of 3. In one OCO group the broker cancelled
    the stop with the take-profit's fill: flat, and the journal agrees after the restart."""
    svc = ServiceProc(tmp_path, f"sqlite:///{tmp_path / 'atb.db'}")
    token = svc.token("oco-trader")
    svc.start()
    try:
        svc.wait_ready()
        cid = _buy_3_bracketed(svc, token, "OCOX")
        sl, tp = child_order_id(cid, "sl", 1), child_order_id(cid, "tp", 1)

        def children() -> dict[str, dict[str, Any]]:
            return {
                o["client_order_id"]: o
                for o in _broker_orders(svc)
                if o["client_order_id"] in (sl, tp) and o["status"] == "new"
            }

        wait_for(lambda: len(children()) == 2, "both bracket children at the broker")
        groups = {o["oco_group"] for o in children().values()}
        svc.kill()
        market = PaperBroker(state_path=svc.paper_state)  # the market moves meanwhile
        market.set_price("OCOX", Decimal(106))  # through the take-profit
        market.set_price("OCOX", Decimal(94))  # then through the stop-loss
        assert market.net_positions() == {}  # not short 3
        market.close()
        assert groups == {oco_group_of(cid)}  # linked at the broker: one group
        svc.start()
        svc.wait_ready()  # the startup reconciliation succeeded

        def states() -> dict[str, str]:
            listed = httpx.get(svc.url + "/api/v1/orders", headers=auth(token), timeout=30)
            return {o["id"]: o["state"] for o in listed.json()["orders"]}

        wait_for(
            lambda: states() == {cid: "filled", tp: "filled", sl: "cancelled"},
            "the take-profit filled and the stop-loss cancelled in the journal",
        )
        pos = httpx.get(svc.url + "/api/v1/positions", headers=auth(token), timeout=30).json()
        assert pos["positions"] == []
        assert PaperBroker.read_state(svc.paper_state) is not None
        assert _broker_positions(svc) == {}
    finally:
        assert svc.stop() == 0


def _broker_positions(svc: ServiceProc) -> dict[str, Decimal]:
    state = PaperBroker.read_state(svc.paper_state)
    assert state is not None
    return {s: Decimal(q) for s, (q, _) in state["positions"].items() if Decimal(q) != 0}


def _buy_3_bracketed(svc: ServiceProc, token: str, symbol: str) -> str:
    """POST a market buy of 3 with a stop-loss at 95 and a take-profit at 105; asserted
    201 and filled; its id."""
    body = {
        "symbol": symbol,
        "side": "buy",
        "quantity": "3",
        "stop_loss": "95",
        "take_profit": "105",
    }
    headers = auth(token) | {"Idempotency-Key": uuid.uuid4().hex}
    r = httpx.post(svc.url + "/api/v1/orders", json=body, headers=headers, timeout=30)
    assert r.status_code == 201 and r.json()["state"] == "filled", r.text
    return str(r.json()["id"])
