"""stop_loss / take_profit through a real ``atb serve``: a filled order's two children are at
the broker (its durable state file) and in the trader's order list."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import orjson
from helpers_log import wait_for
from service_proc import ServiceProc, auth

from wal.service.brackets import child_order_id


def _broker_orders(svc: ServiceProc) -> list[dict[str, Any]]:
    return [o["order"] for o in orjson.loads(svc.paper_state.read_bytes())["orders"]]


def test_a_filled_order_with_a_bracket_has_both_children_at_the_broker(svc: ServiceProc) -> None:
    token = svc.token("bracket-trader")
    body = {
        "symbol": "BRKT",
        "side": "buy",
        "quantity": "3",
        "stop_loss": "95",
        "take_profit": "105",
    }
    headers = auth(token) | {"Idempotency-Key": uuid.uuid4().hex}
    r = httpx.post(svc.url + "/api/v1/orders", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert r.json()["state"] == "filled"
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
