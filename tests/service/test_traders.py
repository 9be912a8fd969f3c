"""A trader sees, cancels and exports only their own orders: every endpoint is tried with
another trader's ids, on a real ``atb serve`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from service_proc import ServiceProc, auth
from websockets.sync.client import connect


@pytest.fixture(scope="module")
def two(svc: ServiceProc) -> tuple[str, str, dict[str, str]]:
    """(alice's token, bob's token, the ids of alice's orders: a filled one, a resting one)."""
    a, b = svc.token("alice2"), svc.token("bob2")
    ids = {}
    for name, body in (
        ("filled", {"symbol": "AAPL", "side": "buy", "quantity": "1"}),
        (
            "resting",
            {
                "symbol": "AAPL",
                "side": "buy",
                "quantity": "1",
                "order_type": "limit",
                "price": "10",
            },
        ),
    ):
        r = httpx.post(
            svc.url + "/api/v1/orders",
            json=body,
            headers=auth(a) | {"Idempotency-Key": uuid.uuid4().hex},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    return a, b, ids


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/orders/{id}"),
        ("POST", "/api/v1/orders/{id}/cancel"),
        ("GET", "/api/v1/orders/{id}/audit"),
    ],
)
@pytest.mark.parametrize("which", ["filled", "resting"])
def test_another_traders_order_is_403_on_every_endpoint(
    svc: ServiceProc, two: tuple[str, str, dict[str, str]], method: str, path: str, which: str
) -> None:
    a, b, ids = two
    r = httpx.request(method, svc.url + path.format(id=ids[which]), headers=auth(b), timeout=30)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    # and nothing changed: the owner still sees it as it was
    mine = httpx.get(svc.url + f"/api/v1/orders/{ids[which]}", headers=auth(a), timeout=30)
    assert mine.json()["state"] == ("filled" if which == "filled" else "accepted")


def test_lists_exports_positions_and_balances_are_per_trader(
    svc: ServiceProc, two: tuple[str, str, dict[str, str]]
) -> None:
    a, b, ids = two
    theirs = set(ids.values())
    listed = httpx.get(svc.url + "/api/v1/orders", headers=auth(b), timeout=30).json()["orders"]
    assert not theirs & {o["id"] for o in listed}
    for state in ("filled", "accepted"):
        r = httpx.get(svc.url + "/api/v1/orders", params={"state": state}, headers=auth(b))
        assert not theirs & {o["id"] for o in r.json()["orders"]}
    export = httpx.get(svc.url + "/api/v1/audit/export", headers=auth(b), timeout=30).text
    assert not any(json.loads(line)["order_id"] in theirs for line in export.splitlines())
    csv_text = httpx.get(
        svc.url + "/api/v1/audit/export", params={"format": "csv"}, headers=auth(b)
    ).text
    assert not any(cid in csv_text for cid in theirs)
    assert httpx.get(svc.url + "/api/v1/positions", headers=auth(b)).json()["positions"] == []
    bal = httpx.get(svc.url + "/api/v1/balance", headers=auth(b)).json()
    assert bal["trader_id"] == "bob2" and bal["account"] == "trader:bob2"
    # bob reusing alice's Idempotency-Key makes bob's own order, never alice's
    key = "shared-key"
    ra = httpx.post(
        svc.url + "/api/v1/orders",
        json={"symbol": "AAPL", "side": "buy", "quantity": "1"},
        headers=auth(a) | {"Idempotency-Key": key},
    )
    rb = httpx.post(
        svc.url + "/api/v1/orders",
        json={"symbol": "AAPL", "side": "buy", "quantity": "5"},
        headers=auth(b) | {"Idempotency-Key": key},
    )
    assert ra.status_code == rb.status_code == 201
    assert ra.json()["id"] != rb.json()["id"]
    assert rb.json()["trader_id"] == "bob2"


def test_the_event_stream_carries_only_the_traders_own_events(
    svc: ServiceProc, two: tuple[str, str, dict[str, str]]
) -> None:
    _a, b, ids = two
    ws_url = svc.url.replace("http", "ws") + "/ws/orders/events"
    with connect(ws_url + "?since=0&token=" + b) as ws:
        ready = None
        got = []
        while ready is None:
            m = json.loads(ws.recv(timeout=30))
            if m.get("type") == "ready":
                ready = m
            else:
                got.append(m)
        assert not set(ids.values()) & {e["client_order_id"] for e in got}
    with connect(ws_url + "?token=not-a-token") as ws:
        with pytest.raises(Exception) as info:
            ws.recv(timeout=30)
        assert "4401" in str(info.value) or "unauthorized" in str(info.value)
