"""The routes: ``/api/v1`` (orders, positions, balance, audit), the health checks, the
event stream (``/ws/orders/events``) and ``/metrics``. Every ``/api/v1`` route and the
stream take the trader from the bearer token, and show a trader only their own orders.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime,
# and `Trader` is a local of make_router

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wal.orders import Order, OrderState
from wal.service.errors import ApiError, error_body
from wal.service.events import CLOSE_OVERFLOW, Client
from wal.service.listing import cursor_key
from wal.service.listing import list_orders as page_of_trader
from wal.service.metrics import ServiceMetrics
from wal.service.owners import OwnerRow
from wal.service.placing import account_of
from wal.service.runtime import ServiceRuntime
from wal.service.schemas import OrderRequest
from wal.service.views import (
    OrderFilter,
    audit_view,
    export_csv,
    export_jsonl,
    export_rows,
    fill_view,
    order_view,
    positions_view,
)

__all__ = ["make_router"]

_KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_CLOSE_AUTH = 4401  # the stream's close code for a missing or bad token
_ERROR = {"description": "the one error shape: {error: {code, message, field, details}}"}
_POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the same Idempotency-Key and body again: the same order"},
    202: {"description": "a new order whose outcome is not known yet (state unknown)"},
    401: _ERROR,
    409: {"description": "the Idempotency-Key was used for another body (idempotency_conflict)"},
    422: {"description": "bad input (validation_error, naming the field) or a risk limit's code"},
    429: {"description": "over ORDER_RATE_LIMIT new orders per minute; Retry-After"},
    503: {"description": "halted, log_failed or database_unavailable; nothing was placed"},
}
_CLOSE_BAD_INPUT = 4422  # ... for a bad query parameter (named in the reason)
_SEQ = re.compile(r"[0-9]{1,18}")  # a seq: ASCII digits only ("²".isdigit() is true), an int64


def _utc(v: datetime | None, field: str) -> datetime | None:
    """``v`` in UTC (a time without a zone is UTC); 422 naming ``field`` when it has no UTC
    time (9999-12-31T23:59-23:59 is past the last one)."""
    if v is None:
        return None
    try:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    except OverflowError:
        raise ApiError(
            422, "validation_error", f"{field}: {v.isoformat()} is out of range in UTC", field=field
        ) from None


async def _until_disconnect(ws: WebSocket, client: Client) -> None:
    """Read (and ignore) what the client sends until it disconnects, then wake its handler."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
    finally:
        client.leave()


def make_router(rt: ServiceRuntime, metrics: ServiceMetrics) -> APIRouter:
    """Every route, bound to one runtime."""
    r = APIRouter()

    async def trader(authorization: Annotated[str | None, Header()] = None) -> str:
        """The request's trader, from ``Authorization: Bearer <token>`` (401 otherwise)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "unauthorized",
                "send Authorization: Bearer <token> (`atb serve token create --trader ID`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = token.strip()
        # one primary-key read per request: a revoked token is refused on its next request
        who = await asyncio.to_thread(rt.tokens.verify, token)
        if who is None:
            raise ApiError(
                401,
                "unauthorized",
                "the bearer token is unknown or revoked",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return who

    Trader = Annotated[str, Depends(trader)]

    def owned(who: str, cid: str) -> OwnerRow:
        """The order's owner row if ``who`` owns it: 404 unknown, 403 another trader's."""
        owner = rt.owners.get(cid)
        if owner is None:
            raise ApiError(404, "not_found", f"no order {cid!r}", field="id")
        if owner.trader_id != who:
            raise ApiError(403, "forbidden", f"order {cid!r} is not trader {who}'s", field="id")
        return owner

    async def order_of(owner: OwnerRow) -> Order:
        order = await asyncio.to_thread(rt.om.get, owner.client_order_id)
        if order is None:  # claimed, then the process died before journaling it
            raise ApiError(404, "not_found", f"order {owner.client_order_id!r} was never placed")
        return order

    # ------------------------------------------------------------------ orders

    @r.post("/api/v1/orders", status_code=201, tags=["orders"], responses=_POST_RESPONSES)
    async def post_order(
        body: OrderRequest,
        who: Trader,
        key: Annotated[
            str, Header(alias="Idempotency-Key", pattern=_KEY_PATTERN, description="your id")
        ],
    ) -> JSONResponse:
        """Place an order; the Idempotency-Key makes a retry return the same order."""
        t0 = time.perf_counter()
        try:
            placed = await rt.place(who, key, body)
        except ApiError as exc:
            metrics.orders.labels(str(exc.status)).inc()
            raise
        metrics.orders.labels(str(placed.status)).inc()
        metrics.latency.observe(time.perf_counter() - t0)
        return JSONResponse(order_view(placed.order, placed.owner), status_code=placed.status)

    @r.get("/api/v1/orders", tags=["orders"])
    async def list_orders(
        who: Trader,
        state: OrderState | None = None,
        symbol: str | None = None,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """The trader's orders, newest first; ``next_cursor`` fetches the next page."""
        cursor_key(cursor)  # 422 before any read
        flt = OrderFilter(state, symbol, _utc(since, "from"), _utc(until, "to"))
        page, nxt = await asyncio.to_thread(
            page_of_trader,
            rt.ddb,
            rt.om.journal.orders,
            rt.owners,
            who,
            account_of(who),
            flt,
            limit,
            cursor,
        )
        views = []
        for o in page:
            owner = rt.owners.get(o.client_order_id)
            assert owner is not None
            views.append(order_view(o, owner))
        return {"orders": views, "next_cursor": nxt}

    @r.get("/api/v1/orders/{id}", tags=["orders"])
    async def get_order(id: str, who: Trader) -> dict[str, Any]:
        """One order with its fills."""
        owner = owned(who, id)
        order = await order_of(owner)
        fills = await asyncio.to_thread(rt.om.journal.fills, client_order_id=id)
        return order_view(order, owner) | {"fills": [fill_view(f, rt.venue) for f in fills]}

    @r.post("/api/v1/orders/{id}/cancel", tags=["orders"])
    async def cancel_order(id: str, who: Trader) -> dict[str, Any]:
        """Cancel an open order (at the broker, then its status is journaled)."""
        owner = owned(who, id)
        await order_of(owner)
        return order_view(await rt.cancel(id), owner)

    @r.get("/api/v1/orders/{id}/audit", tags=["audit"])
    async def order_audit(id: str, who: Trader) -> dict[str, Any]:
        """The order's journal events with their chain links, each verified."""
        owner = owned(who, id)
        await order_of(owner)

        def read() -> dict[str, Any]:
            events = rt.om.journal.events(id)
            prev: dict[int, str | None] = {}
            for e in events:
                s = int(e["audit_seq"]) - 1
                if s >= 1 and s not in prev:
                    rows = rt.ddb.db.get_audit_rows(after=s - 1, limit=1)
                    ok = rows and int(rows[0]["audit_seq"]) == s
                    prev[s] = str(rows[0]["hash"]) if ok else None
            return audit_view(events, prev)

        return {"order_id": id} | await asyncio.to_thread(read)

    @r.get("/api/v1/positions", tags=["account"])
    async def positions(who: Trader) -> dict[str, Any]:
        """The trader's net positions from their fills, with the stops protecting them."""
        mine = rt.owners.orders_of(who)

        def read() -> list[dict[str, Any]]:
            fills = []
            pairs = []
            for cid in mine:
                o = rt.om.get(cid)
                owner = rt.owners.get(cid)
                if o is None or owner is None:
                    continue
                pairs.append((o, owner))
                if o.filled_quantity > 0:
                    fills.extend(rt.om.journal.fills(client_order_id=cid))
            return positions_view(fills, pairs)

        out = await asyncio.to_thread(read)
        missing = [m for m in rt.brackets.missing() if m.trader_id == who]
        for p in out:  # the trader's own children that could not be placed, with the reason
            p["unprotected"] = [m.to_dict(ids=True) for m in missing if m.symbol == p["symbol"]]
        return {"positions": out}

    @r.get("/api/v1/balance", tags=["account"])
    async def balance(who: Trader) -> dict[str, Any]:
        """The trader's account balance, pending log entries included."""
        account = account_of(who)
        value = await asyncio.to_thread(rt.ddb.get_balance, account)
        return {"trader_id": who, "account": account, "balance": format(value, "f")}

    @r.get("/api/v1/audit/export", tags=["audit"])
    async def audit_export(
        who: Trader,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        format: Literal["jsonl", "csv"] = "jsonl",
    ) -> StreamingResponse:
        """Every journal event of the trader's orders (compliance fields), streamed."""
        mine = rt.owners.orders_of(who)
        lo, hi = _utc(since, "from"), _utc(until, "to")

        def rows() -> Any:
            for cid in mine:
                order, owner = rt.om.get(cid), rt.owners.get(cid)
                if order is None or owner is None:
                    continue
                events = rt.om.journal.events(cid)
                rows = rt.om.journal.fills(client_order_id=cid)
                fills = {str(f["execution_id"]): f for f in rows}
                yield from export_rows(order, owner, events, fills, rt.venue, lo, hi)

        body = export_csv(rows()) if format == "csv" else export_jsonl(rows())
        media = "text/csv" if format == "csv" else "application/x-ndjson"
        return StreamingResponse(body, media_type=media)  # a sync iterator: run in a thread

    # ------------------------------------------------------------------ health

    @r.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @r.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """200 once the startup reconciliation succeeded; 503 with the reason otherwise. The
        body lists the ``unprotected`` positions (ready all the same: docs/service.md)."""
        status = rt.status()
        if status["reason"] is None:
            return JSONResponse(status)
        return JSONResponse(
            error_body("not_ready", status["reason"], details=status), status_code=503
        )

    @r.get("/metrics", tags=["health"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ the event stream

    @r.websocket("/ws/orders/events")
    async def events(ws: WebSocket) -> None:
        """Every journal event of the trader's orders, in order, each with its ``seq``;
        ``?since=SEQ`` first sends what came after SEQ. ``?token=`` or the Authorization
        header authenticates (browsers cannot set headers on a WebSocket)."""
        token = ws.query_params.get("token") or ""
        auth = ws.headers.get("authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        who = await asyncio.to_thread(rt.tokens.verify, token) if token else None
        await ws.accept()
        if who is None:
            await ws.close(code=_CLOSE_AUTH, reason="unauthorized: unknown or missing token")
            return
        raw = ws.query_params.get("since")
        if raw is not None and not _SEQ.fullmatch(raw):
            await ws.close(code=_CLOSE_BAD_INPUT, reason="since: must be a seq (an integer >= 0)")
            return
        since = int(raw) if raw is not None else None
        client = rt.hub.subscribe(who, token)  # first: nothing published from now on is missed
        head = rt.hub.head  # every later event of this trader reaches the client's queue
        if since is not None and since > head:  # events this journal never had: never "ready"
            rt.hub.unsubscribe(client)
            await ws.close(
                code=_CLOSE_BAD_INPUT,
                reason=f"since: {since} is after the journal's last event ({head})",
            )
            return
        gone = asyncio.ensure_future(_until_disconnect(ws, client))  # it left: stop at once
        try:
            sent = head
            if since is not None:
                sent = since
                for ev in await asyncio.to_thread(rt.hub.backlog, who, since):
                    if int(ev["seq"]) > sent:
                        await ws.send_json(ev)
                        sent = int(ev["seq"])
                sent = max(sent, head)
            await ws.send_json({"type": "ready", "trader_id": who, "seq": sent})
            while True:
                await client.wake.wait()
                client.wake.clear()  # first: an event queued while sending wakes us again
                if client.gone:
                    return
                if client.revoked:  # found by the runtime's token watch (ServiceRuntime)
                    await ws.close(code=_CLOSE_AUTH, reason="unauthorized: the token was revoked")
                    return
                while client.pending:
                    ev = client.pending.popleft()
                    if int(ev["seq"]) > sent:
                        await ws.send_json(ev)
                        sent = int(ev["seq"])
                if client.overflowed:  # everything it was queued is sent: resume after it
                    await ws.close(
                        code=CLOSE_OVERFLOW,
                        reason=f"too slow: over {rt.hub.queue_size} events behind; "
                        f"reconnect with ?since={sent}",
                    )
                    return
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away while we were sending
        finally:
            gone.cancel()
            rt.hub.unsubscribe(client)

    @r.get("/api/v1/whoami", tags=["account"])
    async def whoami(who: Trader) -> dict[str, str]:
        """The token's trader (the status page's login check)."""
        return {"trader_id": who}

    return r
