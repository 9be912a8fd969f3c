"""``HttpBroker``'s reading of a 404: "not found" only where ONE order is asked for.

A 404 on a list endpoint (a gateway or load balancer answering 404 for a moment, a wrong path
prefix) is not "the broker holds nothing": read as an empty list it made the startup
reconciliation journal synthetic orphan trades, cash moved both ways. It is a
``BrokerProtocolError``, which the reconciler retries and is fatal on.

The broker is the paper broker's own HTTP app (``create_app``) over httpx's ASGI transport;
the fault layer in front of it answers 404 on the paths a test names, as a proxy would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from orders_helpers import make_rig, run

from wal.orders import (
    BrokerProtocolError,
    BrokerRejectedError,
    ClientIdRules,
    DedupScope,
    OrderIntent,
    OrderJournal,
    PaperBroker,
    ReconcilerConfig,
    ReconciliationFatalError,
    StartupReconciler,
    TradingHalted,
)
from wal.orders.http_broker import HttpBroker
from wal.orders.reconcile import ORPHAN_PREFIX
from wal.orders.server import create_app

GLOBAL = ClientIdRules(dedup_scope=DedupScope.GLOBAL, visibility_window_seconds=0)
FAST = ReconcilerConfig(fetch_backoff=(0.0, 0.0))

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class NotFoundBurst:
    """ASGI middleware: the next ``left[path]`` requests to ``path`` answer 404 (an HTML
    page, as a gateway's), then the broker answers again."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.left: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and self.left.get(path, 0) > 0:
            self.left[path] -= 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"text/html")],
                }
            )
            await send({"type": "http.response.body", "body": b"<html>Not Found</html>"})
            return
        await self.app(scope, receive, send)


def http_broker(paper: PaperBroker) -> tuple[HttpBroker, NotFoundBurst]:
    faults = NotFoundBurst(create_app(paper))
    broker = HttpBroker("http://paper", rules=GLOBAL)
    broker._client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=faults), base_url="http://paper"
    )
    return broker, faults


LISTS: dict[str, tuple[str, Callable[[HttpBroker, str], Awaitable[list[Any]]]]] = {
    "positions": ("/v2/positions", lambda b, _: b.get_positions()),
    "open_orders": ("/v2/orders", lambda b, _: b.get_open_orders()),
    "recent_orders": ("/v2/orders", lambda b, _: b.get_recent_orders(24)),
    "fills": ("/v2/account/activities/FILL", lambda b, _: b.get_fills()),
    "order_fills": ("/v2/account/activities/FILL", lambda b, cid: b.get_order_fills(cid)),
}


@pytest.mark.parametrize("which", sorted(LISTS))
def test_a_404_on_a_list_is_a_protocol_error_never_an_empty_list(which: str) -> None:
    path, call = LISTS[which]
    paper = PaperBroker(seed=1, rules=GLOBAL)
    filled = OrderIntent(symbol="AAPL", side="buy", quantity=Decimal("3"))
    paper.submit(filled)
    resting = OrderIntent(
        symbol="AAPL",
        side="buy",
        quantity=Decimal("1"),
        order_type="limit",
        limit_price=Decimal(90),
    )
    paper.submit(resting)
    broker, faults = http_broker(paper)

    async def go() -> None:
        try:
            cid = filled.client_order_id
            assert await call(broker, cid)  # the broker holds something on every list
            faults.left[path] = 1
            with pytest.raises(BrokerProtocolError, match="404"):
                await call(broker, cid)
            assert await call(broker, cid)  # the burst is over: read as before
        finally:
            await broker.aclose()

    run(go())


def test_a_404_on_a_lookup_of_one_order_is_not_found_and_on_its_cancel_a_refusal() -> None:
    paper = PaperBroker(seed=1, rules=GLOBAL)
    broker, faults = http_broker(paper)

    async def go() -> None:
        try:
            assert await broker.get_order_by_client_id("nobody") is None  # the broker's 404
            faults.left["/v2/orders/paper-00000001"] = 1
            with pytest.raises(BrokerRejectedError, match="404"):
                await broker.cancel_order("paper-00000001")
        finally:
            await broker.aclose()

    run(go())


def _reconcile_through_a_404_burst(tmp_path: Path, burst: int) -> None:
    """A position of 10 AAPL journaled and held; then ``burst`` reads of the positions
    answer 404 while the startup reconciliation runs."""
    paper = PaperBroker(seed=1, rules=GLOBAL)
    broker, faults = http_broker(paper)
    rig = make_rig(tmp_path, broker)

    async def go() -> None:
        try:
            await rig.om.start()
            await rig.om.submit(OrderIntent(symbol="AAPL", side="buy", quantity=Decimal("10")))
            faults.left["/v2/positions"] = burst
            rec = StartupReconciler(rig.om, FAST)
            if burst >= FAST.fetch_attempts:
                with pytest.raises(ReconciliationFatalError, match="fetching positions"):
                    await rec.run()
                with pytest.raises(TradingHalted):  # trading on a wrong book is worse
                    await rig.om.submit(
                        OrderIntent(symbol="MSFT", side="buy", quantity=Decimal("1"))
                    )
            else:
                result = await rec.run()  # retried: the broker's real answer
                assert (result.orphans_detected, result.errors) == (0, ())
        finally:
            await broker.aclose()
        ids = [o.client_order_id for o in OrderJournal(rig.ddb).orders()]
        assert not [c for c in ids if c.startswith(ORPHAN_PREFIX)]  # no synthetic trade
        assert rig.om.positions() == paper.net_positions() == {"AAPL": Decimal("10")}
        if burst >= FAST.fetch_attempts:
            assert len(ids) == 1 and paper.write_calls() == 1  # nothing sent on a fiction

    try:
        run(go())
    finally:
        rig.close()


def test_a_404_burst_on_positions_makes_reconciliation_fatal_never_an_orphan(
    tmp_path: Path,
) -> None:
    _reconcile_through_a_404_burst(tmp_path, FAST.fetch_attempts)


def test_a_short_404_burst_on_positions_is_retried_never_an_orphan(tmp_path: Path) -> None:
    _reconcile_through_a_404_burst(tmp_path, 1)


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, b"<html>Not Found</html>"), (200, b"null"), (200, b"[]"), (200, b'{"dedup_scope": 7}')],
    ids=["404", "null", "list", "bad_scope"],
)
def test_connect_to_something_that_is_not_a_paper_broker_is_a_broker_error(
    status: int, body: bytes
) -> None:
    """``HttpBroker.connect`` reads the rules the paper broker declares; a URL that answers
    anything else is a ``BrokerProtocolError`` (the CLI's one line, exit 3), never an
    AttributeError out of ``ClientIdRules.from_dict``."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    real = httpx.AsyncClient

    def client(**kw: Any) -> httpx.AsyncClient:
        return real(transport=httpx.MockTransport(answer), **kw)

    async def go() -> None:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(httpx, "AsyncClient", client)
            with pytest.raises(BrokerProtocolError, match="_paper/rules"):
                await HttpBroker.connect("http://somewhere")

    run(go())
