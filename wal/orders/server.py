"""The paper broker over HTTP (Starlette): routes in the shape of Alpaca's v2 orders API.

=====================================  ==============================================
``POST /v2/orders``                    submit (JSON: symbol, qty, side, type, limit_price,
                                       stop_price, time_in_force, client_order_id,
                                       oco_group: one-cancels-other, reduce on fill)
``GET /v2/orders:by_client_order_id``  ``?client_order_id=`` -> the order, or 404
``GET /v2/orders``                     ``?status=open`` (default) or ``?status=all&after=``
``DELETE /v2/orders/{id}``             cancel -> 204, or 422 if it is not open
``GET /v2/positions``                  net positions
``GET /v2/account/activities/FILL``    executions (``?after=`` ISO time, ``?client_order_id=``)
``GET /_paper/rules``                  the broker's rules (dedup scope, OCO groups, ...)
``PUT /_paper/faults``                 replace the fault plan (tests)
``POST /_paper/price``                 ``{"symbol":..., "price":...}``: move the market
``POST /_paper/step``                  one seeded random-walk step of every price
``PUT /_paper/clock``                  ``{"running": bool}``: pause/resume the ticker
``GET /_paper/stats``                  ``{"submit_calls", "cancel_calls", ...}`` (writes seen)
=====================================  ==============================================

Errors follow Alpaca: 422 with ``{"code": 40010001, "message": "client_order_id must be
unique"}`` for a duplicate client id, 403/422 with a message for a reject, 404 for "not
found". A simulated timeout holds the request ``hang_seconds`` and then answers 504, so the
client's own socket timeout fires first; a simulated outage answers 503.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wal.orders.errors import (
    BrokerRejectedError,
    BrokerUnavailable,
    DuplicateClientOrderId,
)
from wal.orders.faults import FaultPlan
from wal.orders.models import OrderIntent
from wal.orders.paper import PaperBroker, SimulatedTimeout

__all__ = ["DUPLICATE_CODE", "Clock", "create_app"]

DUPLICATE_CODE = 40010001  # Alpaca's "client_order_id must be unique"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(status: int, message: str, code: int | None = None) -> Response:
    body: dict[str, Any] = {"message": message}
    if code is not None:
        body["code"] = code
    return _json(body, status)


async def _failure(exc: Exception) -> Response:
    if isinstance(exc, SimulatedTimeout):
        await anyio.sleep(exc.hang_seconds)  # the client's socket timeout fires meanwhile
        return _error(504, str(exc))
    if isinstance(exc, DuplicateClientOrderId):
        return _error(422, "client_order_id must be unique", DUPLICATE_CODE)
    if isinstance(exc, BrokerRejectedError):
        return _error(403, exc.reason)
    if isinstance(exc, BrokerUnavailable):
        return _error(503, str(exc))
    raise exc


def _dec(d: dict[str, Any], name: str) -> Decimal | None:
    v = d.get(name)
    if v is None:
        return None
    try:
        return Decimal(str(v))
    except InvalidOperation:
        raise ValueError(f"{name}={v!r} is not a decimal") from None


class Clock:
    """The market's ticker: with ``interval`` > 0, a background task steps every price
    (``PaperBroker.step_prices``) that often while ``running``, so resting orders and stops
    fill while clients come and go."""

    def __init__(self, interval: float = 0.0, pct: Decimal = Decimal("0.01")) -> None:
        self.interval = interval
        self.pct = pct
        self.running = interval > 0
        self.ticks = 0


def create_app(broker: PaperBroker, clock: Clock | None = None) -> Starlette:
    """The Starlette app serving ``broker`` (see the module docstring)."""
    clk = clock if clock is not None else Clock()

    async def submit(request: Request) -> Response:
        try:
            d = orjson.loads(await request.body())
            qty = _dec(d, "qty")
            if qty is None or "client_order_id" not in d:
                return _error(422, "qty and client_order_id are required")
            group = d.get("oco_group")
            if group is not None and not isinstance(group, str):
                return _error(422, f"oco_group must be a string, got {group!r}")
            intent = OrderIntent(
                symbol=str(d["symbol"]),
                side=str(d["side"]),
                quantity=qty,
                order_type=str(d.get("type", "market")),
                limit_price=_dec(d, "limit_price"),
                stop_price=_dec(d, "stop_price"),
                time_in_force=str(d.get("time_in_force", "day")),
                client_order_id=str(d["client_order_id"]),
                oco_group=group,
            )
        except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
            return _error(422, f"bad order: {exc}")
        try:
            return _json(broker.submit(intent).to_dict())
        except Exception as exc:
            return await _failure(exc)

    async def by_client_id(request: Request) -> Response:
        cid = request.query_params.get("client_order_id", "")
        try:
            order = broker.lookup(cid)
        except Exception as exc:
            return await _failure(exc)
        if order is None:
            return _error(404, f"order not found for {cid}")
        return _json(order.to_dict())

    async def list_orders(request: Request) -> Response:
        status = request.query_params.get("status", "open")
        try:
            if status == "open":
                orders = broker.open_orders()
            else:
                after = request.query_params.get("after")
                hours = 24.0
                if after:
                    since = datetime.fromisoformat(after)
                    hours = (datetime.now(UTC) - since) / timedelta(hours=1)
                orders = broker.recent_orders(hours)
        except Exception as exc:
            return await _failure(exc)
        return _json([o.to_dict() for o in orders])

    async def cancel(request: Request) -> Response:
        try:
            broker.cancel(request.path_params["order_id"])
        except BrokerRejectedError as exc:
            return _error(422, exc.reason)
        except Exception as exc:
            return await _failure(exc)
        return Response(status_code=204)

    async def positions(request: Request) -> Response:
        try:
            return _json([p.to_dict() for p in broker.positions()])
        except Exception as exc:
            return await _failure(exc)

    async def fills(request: Request) -> Response:
        after = request.query_params.get("after")
        cid = request.query_params.get("client_order_id")
        try:
            since = datetime.fromisoformat(after) if after else None
            got = broker.fills(since) if cid is None else broker.fills_of(cid, since)
        except Exception as exc:
            return await _failure(exc)
        return _json([f.to_dict() for f in got])

    async def rules(request: Request) -> Response:
        return _json(broker.rules.to_dict())

    async def set_faults(request: Request) -> Response:
        broker.faults = FaultPlan.from_dict(orjson.loads(await request.body()))
        return _json(broker.faults.to_dict())

    async def set_price(request: Request) -> Response:
        d = orjson.loads(await request.body())
        broker.set_price(str(d["symbol"]), Decimal(str(d["price"])))
        return _json({"symbol": d["symbol"], "price": str(broker.price(str(d["symbol"])))})

    async def step(request: Request) -> Response:
        broker.step_prices(clk.pct)
        return _json({"ticks": clk.ticks})

    async def set_clock(request: Request) -> Response:
        d = orjson.loads(await request.body())
        clk.running = bool(d.get("running", clk.running)) and clk.interval > 0
        return _json({"running": clk.running, "interval": clk.interval, "ticks": clk.ticks})

    async def stats(request: Request) -> Response:
        return _json(broker.stats() | {"ticks": clk.ticks, "running": clk.running})

    async def ticker() -> None:
        while True:
            await anyio.sleep(clk.interval)
            if clk.running:
                broker.step_prices(clk.pct)
                clk.ticks += 1

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if clk.interval <= 0:
            yield
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            yield
            tg.cancel_scope.cancel()

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/v2/orders", submit, methods=["POST"]),
            Route("/v2/orders", list_orders, methods=["GET"]),
            Route("/v2/orders:by_client_order_id", by_client_id, methods=["GET"]),
            Route("/v2/orders/{order_id}", cancel, methods=["DELETE"]),
            Route("/v2/positions", positions, methods=["GET"]),
            Route("/v2/account/activities/FILL", fills, methods=["GET"]),
            Route("/_paper/rules", rules, methods=["GET"]),
            Route("/_paper/faults", set_faults, methods=["PUT"]),
            Route("/_paper/price", set_price, methods=["POST"]),
            Route("/_paper/step", step, methods=["POST"]),
            Route("/_paper/clock", set_clock, methods=["PUT"]),
            Route("/_paper/stats", stats, methods=["GET"]),
        ],
    )
