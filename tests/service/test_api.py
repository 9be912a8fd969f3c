"""The order API against a real ``atb serve`` process (httpx), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from helpers_log import wait_for
from service_proc import ServiceProc, auth

from cli.main import atb
from wal.db.engine import make_engine
from wal.db.service_schema import api_tokens


def post(
    svc: ServiceProc, token: str, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = auth(token) | {"Idempotency-Key": key or uuid.uuid4().hex}
    return httpx.post(svc.url + "/api/v1/orders", json=body, headers=headers, timeout=30)


def get(svc: ServiceProc, token: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(svc.url + path, headers=auth(token), params=params, timeout=30)


def assert_error(r: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field", "details"}
    assert err["code"] == code, err
    assert err["message"]
    if field is not None:
        assert err["field"] == field, err


@pytest.fixture(scope="module")
def alice(svc: ServiceProc) -> str:
    return svc.token("alice")


MARKET = {"symbol": "AAPL", "side": "buy", "quantity": "2"}


def test_a_new_order_is_201_and_the_same_key_is_the_same_order(
    svc: ServiceProc, alice: str
) -> None:
    key = uuid.uuid4().hex
    first = post(svc, alice, MARKET, key)
    assert first.status_code == 201, first.text
    order = first.json()
    assert order["state"] == "filled" and order["trader_id"] == "alice"
    assert order["filled_quantity"] == "2"
    # the same key and body, written differently: the same order, 200, never a second one
    again = post(svc, alice, {**MARKET, "quantity": 2.0}, key)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == order["id"]
    assert len(svc.broker_orders(order["id"])) == 1
    # another body under the used key: 409, nothing placed
    assert_error(post(svc, alice, {**MARKET, "quantity": "3"}, key), 409, "idempotency_conflict")
    assert len(svc.broker_orders(order["id"])) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**MARKET, "quantity": "-1"}, "quantity"),
        ({**MARKET, "quantity": "abc"}, "quantity"),
        ({**MARKET, "quantity": "1.00000000001"}, "quantity"),
        ({**MARKET, "symbol": "aapl; drop"}, "symbol"),
        ({**MARKET, "side": "hold"}, "side"),
        ({**MARKET, "order_type": "iceberg"}, "order_type"),
        ({**MARKET, "order_type": "limit"}, "price"),
        ({**MARKET, "price": "10"}, "price"),
        ({**MARKET, "order_type": "limit", "price": "100", "stop_loss": "120"}, "stop_loss"),
        ({**MARKET, "order_type": "limit", "price": "100", "take_profit": "90"}, "take_profit"),
        # a market order's levels against the market (the paper broker's AAPL is at 100): such
        # a child would execute at once, closing the position it was to protect
        ({**MARKET, "stop_loss": "500"}, "stop_loss"),
        ({**MARKET, "take_profit": "50"}, "take_profit"),
        ({**MARKET, "side": "sell", "stop_loss": "50"}, "stop_loss"),
        # decimals in ASCII digits only: Decimal() would read these as 1000 and 1
        ({**MARKET, "quantity": "1_000"}, "quantity"),
        ({**MARKET, "quantity": "\u0661"}, "quantity"),
        ({**MARKET, "quantity": " 1"}, "quantity"),
        ({**MARKET, "surprise": 1}, "surprise"),
        ({"side": "buy", "quantity": "1"}, "symbol"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    svc: ServiceProc, alice: str, body: dict[str, Any], field: str
) -> None:
    key = uuid.uuid4().hex
    r = post(svc, alice, body, key)
    assert_error(r, 422, "validation_error", field)
    assert field in r.json()["error"]["message"]


def test_an_exponent_is_read_as_its_digits(svc: ServiceProc, alice: str) -> None:
    r = post(svc, alice, {**MARKET, "quantity": "2E+0"})
    assert r.status_code == 201, r.text
    assert r.json()["quantity"] == "2"
    big = post(svc, alice, {**MARKET, "quantity": "1E+5"})  # refused, in digits, not 1.0E+7
    assert_error(big, 422, "max_notional", "quantity")
    assert "E+" not in big.json()["error"]["message"], big.text


def _cursor(doc: bytes) -> str:
    return base64.urlsafe_b64encode(doc).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/orders", {"from": "9999-12-31T23:59:59-23:59"}, "from"),  # after UTC's last
        ("/api/v1/orders", {"to": "0001-01-01T00:00:00+23:59"}, "to"),  # before its first
        ("/api/v1/audit/export", {"from": "9999-12-31T23:59:59-23:59"}, "from"),
        ("/api/v1/audit/export", {"to": "0001-01-01T00:00:00+23:59"}, "to"),
        ("/api/v1/orders", {"cursor": _cursor(b"[" * 3000)}, "cursor"),  # too deep to parse
        ("/api/v1/orders", {"cursor": _cursor(b"[1" + b"0" * 5000 + b"]")}, "cursor"),
        ("/api/v1/orders", {"cursor": _cursor(b'["9999-12-31T23:59:59-23:59","x"]')}, "cursor"),
        ("/api/v1/orders", {"cursor": _cursor(b'["2026-01-01T00:00:00","x"]')}, "cursor"),
        ("/api/v1/orders", {"cursor": _cursor(b"\xff\xfe")}, "cursor"),
    ],
)
def test_query_values_out_of_range_are_422_naming_them(
    svc: ServiceProc, alice: str, path: str, params: dict[str, str], field: str
) -> None:
    assert_error(get(svc, alice, path, **params), 422, "validation_error", field)


def test_a_body_over_the_cap_is_413_and_a_body_no_json_reads_is_422(
    svc: ServiceProc, alice: str
) -> None:
    url = svc.url + "/api/v1/orders"
    big = b'{"symbol":"' + b"x" * 70_000 + b'"}'
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    who: dict[str, str]
    for who in ({}, auth(alice)):  # refused before the token is read, as before the body is
        r = httpx.post(url, content=big, headers=headers | who, timeout=30)
        assert_error(r, 413, "body_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield from (big[i : i + 8192] for i in range(0, len(big), 8192))

        r = httpx.post(url, content=chunks(), headers=headers | who, timeout=30)
        assert_error(r, 413, "body_too_large")
    huge = b'{"symbol":"AAPL","side":"buy","quantity":' + b"1" * 5000 + b"}"  # no int() reads it
    r = httpx.post(url, content=huge, headers=headers | auth(alice), timeout=30)
    assert_error(r, 422, "validation_error", "body")
    assert get(svc, alice, "/api/v1/orders", limit=500).status_code == 200


def test_a_bad_or_missing_idempotency_key_is_422(svc: ServiceProc, alice: str) -> None:
    r = httpx.post(svc.url + "/api/v1/orders", json=MARKET, headers=auth(alice), timeout=30)
    assert_error(r, 422, "validation_error", "Idempotency-Key")
    assert_error(
        post(svc, alice, MARKET, "bad key with spaces"), 422, "validation_error", "Idempotency-Key"
    )


def test_risk_limits_answer_their_reason_codes(svc: ServiceProc, alice: str) -> None:
    big = post(svc, alice, {**MARKET, "quantity": "20000"})  # 2,000,000 > ORDER_MAX_NOTIONAL
    assert_error(big, 422, "max_notional", "quantity")
    poor = post(svc, alice, {**MARKET, "quantity": "9000"})  # 900,000 > the 100,000 balance
    assert_error(poor, 422, "insufficient_balance", "quantity")
    # refused orders leave nothing: the list has none of them
    listed = get(svc, alice, "/api/v1/orders", limit=500).json()["orders"]
    assert all(o["quantity"] not in ("20000", "9000") for o in listed)


def test_401_without_a_valid_token(svc: ServiceProc) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer atb_0000000000000000_" + "x" * 43},
        {"Authorization": "Basic abc"},
    ):
        r = httpx.get(svc.url + "/api/v1/orders", headers=headers, timeout=30)
        assert_error(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_rate_limit_429_with_retry_after(svc: ServiceProc) -> None:
    token = svc.token("rapid")
    first_key = uuid.uuid4().hex
    started = time.monotonic()
    r = post(svc, token, {**MARKET, "quantity": "1"}, first_key)
    placed = 0
    while r.status_code == 201 and placed < 90:
        placed += 1
        r = post(svc, token, {**MARKET, "quantity": "1"})
    elapsed = time.monotonic() - started
    # ORDER_RATE_LIMIT=30 per minute: a full bucket of 30, refilled at one per 2 s meanwhile
    assert 30 <= placed <= 30 + int(elapsed / 2) + 1, (placed, elapsed)
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
    # a retry of a placed order's key takes no token: it is answered, not limited
    assert post(svc, token, {**MARKET, "quantity": "1"}, first_key).status_code == 200
    # another trader is not limited by this one
    assert post(svc, svc.token("calm"), {**MARKET, "quantity": "1"}).status_code == 201


def test_list_filters_and_cursor_pagination(svc: ServiceProc) -> None:
    token = svc.token("lister")
    ids = []
    for i in range(7):
        sym = "MSFT" if i % 2 else "AAPL"
        body = {"symbol": sym, "side": "buy", "quantity": "1", "order_type": "limit", "price": "50"}
        r = post(svc, token, body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = get(svc, token, "/api/v1/orders", **params).json()
        seen += [o["id"] for o in page["orders"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, every order once
    msft = get(svc, token, "/api/v1/orders", symbol="MSFT").json()["orders"]
    assert [o["id"] for o in msft] == [ids[5], ids[3], ids[1]]
    accepted = get(svc, token, "/api/v1/orders", state="accepted").json()["orders"]
    assert len(accepted) == 7
    assert get(svc, token, "/api/v1/orders", state="filled").json()["orders"] == []
    future = get(svc, token, "/api/v1/orders", **{"from": "2999-01-01T00:00:00Z"}).json()
    assert future["orders"] == []
    assert_error(get(svc, token, "/api/v1/orders", state="bogus"), 422, "validation_error", "state")
    assert_error(get(svc, token, "/api/v1/orders", cursor="!!"), 422, "validation_error", "cursor")


def test_get_one_with_fills_cancel_and_its_audit(svc: ServiceProc, alice: str) -> None:
    filled = post(svc, alice, MARKET).json()
    one = get(svc, alice, f"/api/v1/orders/{filled['id']}").json()
    assert [(f["quantity"], f["price"], f["venue"]) for f in one["fills"]] == [
        ("2", "100", "paper")
    ]
    resting = post(svc, alice, {**MARKET, "order_type": "limit", "price": "50"}).json()
    assert resting["state"] == "accepted"
    c = httpx.post(
        svc.url + f"/api/v1/orders/{resting['id']}/cancel", headers=auth(alice), timeout=30
    )
    assert c.status_code == 200 and c.json()["state"] == "cancelled", c.text
    again = httpx.post(
        svc.url + f"/api/v1/orders/{resting['id']}/cancel", headers=auth(alice), timeout=30
    )
    assert_error(again, 409, "not_open")
    audit = get(svc, alice, f"/api/v1/orders/{resting['id']}/audit").json()
    kinds = [e["kind"] for e in audit["events"]]
    assert kinds == ["created", "submitted", "accepted", "cancel_requested", "cancelled"]
    assert audit["verified"] is True
    assert all(e["hash_ok"] for e in audit["events"])
    seqs = [e["seq"] for e in audit["events"]]
    assert seqs == sorted(seqs)
    assert_error(get(svc, alice, "/api/v1/orders/nope"), 404, "not_found")


def test_positions_and_balance(svc: ServiceProc) -> None:
    token = svc.token("holder")
    bal0 = Decimal(get(svc, token, "/api/v1/balance").json()["balance"] or "0")
    body = {**MARKET, "symbol": "NVDA", "quantity": "3", "stop_loss": "90", "take_profit": "120"}
    assert post(svc, token, body).status_code == 201
    assert (
        post(svc, token, {**MARKET, "symbol": "NVDA", "side": "sell", "quantity": "1"}).status_code
        == 201
    )

    def stops() -> list[dict[str, Any]]:
        [p] = get(svc, token, "/api/v1/positions").json()["positions"]
        return [{k: v for k, v in s.items() if k != "id"} for s in p["stop_orders"]]

    # the stop_loss is placed at the broker, sized to what is held after the sale by hand
    want = [{"side": "sell", "stop_price": "90", "quantity": "2"}]
    wait_for(lambda: stops() == want, "the bracket's stop resized to the position")
    pos = get(svc, token, "/api/v1/positions").json()["positions"]
    assert [{k: v for k, v in p.items() if k != "stop_orders"} for p in pos] == [
        {
            "symbol": "NVDA",
            "quantity": "2",
            "avg_entry_price": "100",
            "stop_loss": "90",
            "take_profit": "120",
            "unprotected": [],  # both children placed
        }
    ]
    bal = get(svc, token, "/api/v1/balance").json()
    assert bal["account"] == "trader:holder"
    # a fill moves cash (issue 20): bought 3 at 100, sold 1 at 100, no fee at the paper broker
    # (paper mode credits a new trader 100000 once, at the first order)
    start = bal0 if bal0 != 0 else Decimal("100000")
    assert Decimal(bal["balance"]) == start - 3 * 100 + 1 * 100, (bal0, bal)


def test_audit_export_jsonl_and_csv_stream_the_traders_events(svc: ServiceProc) -> None:
    token = svc.token("exporter")
    order = post(svc, token, MARKET).json()
    r = get(svc, token, "/api/v1/audit/export")
    assert r.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert {row["order_id"] for row in rows} == {order["id"]}
    fill = [row for row in rows if row["action"] == "fill"]
    assert fill and fill[0]["fill_quantity"] == "2" and fill[0]["fill_price"] == "100"
    for key in ("timestamp", "trader_id", "order_id", "symbol", "quantity", "price", "venue"):
        assert key in rows[0]
    csv_text = get(svc, token, "/api/v1/audit/export", format="csv").text
    lines = csv_text.splitlines()
    assert lines[0].startswith("timestamp,trader_id,order_id")
    assert len(lines) == len(rows) + 1
    none = get(svc, token, "/api/v1/audit/export", **{"to": "2000-01-01T00:00:00Z"}).text
    assert none == ""


def test_health_ready_metrics_and_the_error_shape(svc: ServiceProc) -> None:
    assert post(svc, svc.token("metered"), MARKET).status_code == 201
    assert httpx.get(svc.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(svc.url + "/readyz").json()
    assert ready["ready"] is True and ready["reconciliation"]["state"] == "succeeded"
    # public: what the reconciliation did, counted (its lines name sizes, stops and ids)
    result = ready["reconciliation"]["result"]
    assert type(result["actions"]) is int and type(result["errors"]) is int, result
    metrics = httpx.get(svc.url + "/metrics").text
    assert 'atb_service_orders_total{status="201"}' in metrics
    assert "atb_service_ready 1.0" in metrics
    assert_error(httpx.get(svc.url + "/no/such/route"), 404, "not_found")
    assert_error(httpx.delete(svc.url + "/healthz"), 405, "method_not_allowed")
    assert httpx.get(svc.url + "/openapi.json").json()["paths"]["/api/v1/orders"]


def test_concurrent_posts_with_one_key_are_one_order(svc: ServiceProc) -> None:
    token = svc.token("racer")
    key = uuid.uuid4().hex

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as c:
            headers = auth(token) | {"Idempotency-Key": key}
            return list(
                await asyncio.gather(
                    *(c.post("/api/v1/orders", json=MARKET, headers=headers) for _ in range(8))
                )
            )

    rs = asyncio.run(burst())
    codes = sorted(r.status_code for r in rs)
    assert codes == [200] * 7 + [201], [r.text for r in rs]
    assert len({r.json()["id"] for r in rs}) == 1
    assert len(svc.broker_orders(rs[0].json()["id"])) == 1


def test_tokens_are_stored_hashed_and_a_revoked_one_is_refused(svc: ServiceProc) -> None:
    token = svc.token("revoked")
    assert get(svc, token, "/api/v1/whoami").json() == {"trader_id": "revoked"}
    engine, _ = make_engine(svc.db_url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.select(api_tokens)).mappings().all()
    finally:
        engine.dispose()
    mine = [r for r in rows if r["trader_id"] == "revoked"]
    assert [r["token_sha256"] for r in mine] == [hashlib.sha256(token.encode()).hexdigest()]
    assert not any(token in str(dict(r)) for r in rows)  # never the token itself
    runner = CliRunner()
    listed = runner.invoke(atb, ["serve", "--database-url", svc.db_url, "token", "list"])
    assert mine[0]["token_id"] in listed.output and token not in listed.output
    out = runner.invoke(
        atb, ["serve", "--database-url", svc.db_url, "token", "revoke", mine[0]["token_id"]]
    )
    assert out.exit_code == 0, out.output
    # at once: the serving process verified this token a moment ago and trusts no memory of it
    assert_error(get(svc, token, "/api/v1/whoami"), 401, "unauthorized")


def test_a_token_revoked_in_the_database_is_refused_on_the_next_request(
    svc: ServiceProc,
) -> None:
    """Whoever revokes (the CLI in another process, an operator's UPDATE), the serving
    process refuses the token on its next request, even one verified just before."""
    token = svc.token("revoked-by-sql")
    for _ in range(3):
        assert get(svc, token, "/api/v1/whoami").status_code == 200
    engine, _ = make_engine(svc.db_url)
    try:
        with engine.begin() as c:
            c.execute(
                sa.update(api_tokens)
                .where(api_tokens.c.trader_id == "revoked-by-sql")
                .values(revoked_at=sa.func.now())
            )
    finally:
        engine.dispose()
    assert_error(get(svc, token, "/api/v1/whoami"), 401, "unauthorized")
    r = post(svc, token, MARKET)
    assert_error(r, 401, "unauthorized")


def test_the_operators_halt_makes_the_service_not_ready_and_refuses_orders(
    svc: ServiceProc,
) -> None:
    """`atb orders halt` (issue 24's kill switch) is seen by a running `atb serve`: /readyz
    is 503 naming the operator's reason (the status page shows /readyz), a new order is
    refused with 503 `halted` and nothing is placed; `resume` makes it ready again."""
    token = svc.token("halted-trader")
    orders = ["orders", "--dir", str(svc.wal_dir)]
    assert CliRunner().invoke(atb, [*orders, "halt", "--reason", "drill"]).exit_code == 0
    keys = [uuid.uuid4().hex for _ in range(35)]  # more than the 30 orders a minute allowed
    try:
        ready = httpx.get(svc.url + "/readyz")
        assert ready.status_code == 503
        assert "halted by the operator" in ready.text and "drill" in ready.text, ready.text
        # /readyz is public: never who threw the switch (user, host, pid)
        assert "pid" not in ready.text and "@" not in ready.text, ready.text
        for key in keys:
            refused = post(svc, token, MARKET, key)
            assert_error(refused, 503, "halted")
            assert "pid" not in refused.text and "@" not in refused.text, refused.text
        listed = get(svc, token, "/api/v1/orders").json()
        assert listed["orders"] == [], listed
    finally:
        assert CliRunner().invoke(atb, [*orders, "resume"]).exit_code == 0
    assert httpx.get(svc.url + "/readyz").status_code == 200
    # nothing was placed: the keys are free (another body is no conflict) and the refusals
    # took none of the trader's 30 orders a minute
    placed = post(svc, token, {**MARKET, "quantity": "1"}, keys[0])
    assert placed.status_code == 201, placed.text
    assert len(svc.broker_orders(placed.json()["id"])) == 1
