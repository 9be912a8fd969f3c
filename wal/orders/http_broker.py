"""``HttpBroker``: the ``Broker`` protocol over HTTP (httpx), for ``atb paper-broker serve``
and for any broker speaking Alpaca's v2 orders API shape.

Every transport failure (connect error, read timeout, a dropped connection) and every 5xx
raises ``BrokerUnavailable``: the request may or may not have been acted on. 422 with
Alpaca's code 40010001 raises ``DuplicateClientOrderId``; another 4xx on submit raises
``BrokerRejectedError``. A 404 means "not found" only where ONE order is asked for: the lookup
by client id answers None, a cancel raises ``BrokerRejectedError``. A 404 anywhere else (the
lists of positions, orders and fills, the rules, a submit) is not "nothing there": a gateway
answering 404 for a moment, or a wrong path prefix, would read as a broker holding no
positions. It raises ``BrokerProtocolError``, as does a body that cannot be read or a list
endpoint that does not answer a list. ``timeout`` is a real socket timeout (seconds). No
error message holds the broker URL's password (``safe_url``; a transport error's text is
masked too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx

from wal.masking import mask_text, mask_url, remember_url
from wal.orders.broker import BrokerOrder, BrokerPosition, ClientIdRules
from wal.orders.errors import (
    BrokerProtocolError,
    BrokerRejectedError,
    BrokerUnavailable,
    DuplicateClientOrderId,
)
from wal.orders.models import Fill, OrderIntent

__all__ = ["HttpBroker"]

_DUPLICATE_CODE = 40010001

# what a 404 means: "none" (a lookup of one order: not found), "rejected" (a cancel of one
# order: the broker does not have it), "error" (anything else: a protocol error, never empty)
_On404 = Literal["none", "rejected", "error"]


class HttpBroker:
    """An async ``Broker`` over HTTP. ``rules``: the broker's declared client-id rules (for
    the paper broker, ``await HttpBroker.connect(url)`` reads them from ``/_paper/rules``).
    Without them the broker's rules are not known: ``ClientIdRules()``, whose dedup scope is
    ``UNKNOWN``, so an order whose outcome is unknown is only ever looked up, never resent
    (a broker that accepts a client id again once its first order is closed, as Binance
    does, would take a resend after a fill for a second order). Pass
    ``ClientIdRules(dedup_scope=DedupScope.GLOBAL)`` only for a broker that refuses a
    reused client id forever."""

    def __init__(
        self,
        base_url: str,
        *,
        rules: ClientIdRules | None = None,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        remember_url(self.base_url)  # its password never shows in an error text (mask_text)
        self._rules = rules or ClientIdRules()  # undeclared: never resend (UNKNOWN)
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=headers or {}
        )

    @classmethod
    async def connect(cls, base_url: str, *, timeout: float = 5.0) -> HttpBroker:
        """A client for a paper broker, with the rules it declares."""
        b = cls(base_url, timeout=timeout)
        try:
            d = await b._request("GET", "/_paper/rules")
            if not isinstance(d, dict):
                raise BrokerProtocolError(
                    f"GET /_paper/rules: not a rules document ({type(d).__name__})"
                )
            try:
                b._rules = ClientIdRules.from_dict(d)
            except (TypeError, ValueError) as exc:
                raise BrokerProtocolError(f"GET /_paper/rules: unreadable rules: {exc}") from exc
        except BaseException:
            await b.aclose()
            raise
        return b

    @property
    def safe_url(self) -> str:
        """The broker's URL with its password masked (``***``): safe to print and log."""
        return mask_url(self.base_url)

    def __repr__(self) -> str:
        return f"HttpBroker({self.safe_url!r})"

    @property
    def rules(self) -> ClientIdRules:
        return self._rules

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, *, on_404: _On404 = "error", **kw: Any) -> Any:
        try:
            r = await self._client.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise BrokerUnavailable(f"{method} {path} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            text = mask_text(str(exc), self.base_url)  # httpx may quote the URL
            raise BrokerUnavailable(f"{method} {path}: {type(exc).__name__}: {text}") from exc
        if r.status_code >= 500:
            raise BrokerUnavailable(f"{method} {path}: HTTP {r.status_code}")
        if r.status_code == 404:
            if on_404 == "none":
                return None
            if on_404 == "rejected":
                raise BrokerRejectedError(f"{method} {path}: HTTP 404 (not found)")
            raise BrokerProtocolError(
                f"{method} {path}: HTTP 404 (not this broker API: a wrong URL or path prefix, or a "
                "gateway in front of it); never read as empty"
            )
        if r.status_code == 204:
            return {}
        try:
            body = r.json()
        except ValueError as exc:
            raise BrokerProtocolError(f"{method} {path}: unreadable body") from exc
        if r.status_code >= 400:
            message = str(body.get("message", r.text)) if isinstance(body, dict) else r.text
            if isinstance(body, dict) and body.get("code") == _DUPLICATE_CODE:
                raise DuplicateClientOrderId(kw.get("json", {}).get("client_order_id", "?"))
            raise BrokerRejectedError(mask_text(message, self.base_url))
        return body

    @staticmethod
    def _order(d: Any) -> BrokerOrder:
        try:
            return BrokerOrder.from_dict(d)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise BrokerProtocolError(f"unreadable order: {exc}") from exc

    async def submit_order(self, intent: OrderIntent) -> BrokerOrder:
        body = {
            "symbol": intent.symbol,
            "qty": format(intent.quantity, "f"),
            "side": intent.side,
            "type": intent.order_type,
            "time_in_force": intent.time_in_force,
            "client_order_id": intent.client_order_id,
        }
        if intent.limit_price is not None:
            body["limit_price"] = format(intent.limit_price, "f")
        if intent.stop_price is not None:
            body["stop_price"] = format(intent.stop_price, "f")
        if intent.oco_group is not None:
            body["oco_group"] = intent.oco_group  # linked there: reduce on fill, atomically
        return self._order(await self._request("POST", "/v2/orders", json=body))

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        d = await self._request(
            "GET",
            "/v2/orders:by_client_order_id",
            params={"client_order_id": client_order_id},
            on_404="none",  # ONE order asked for: 404 is "not found"
        )
        return None if d is None else self._order(d)

    async def cancel_order(self, broker_order_id: str) -> None:
        await self._request("DELETE", f"/v2/orders/{broker_order_id}", on_404="rejected")

    async def _list(self, path: str, **kw: Any) -> list[Any]:
        """A list endpoint's answer: a JSON list, else ``BrokerProtocolError`` (a 404, a
        null or an object is never read as an empty list)."""
        d = await self._request("GET", path, **kw)
        if not isinstance(d, list):
            raise BrokerProtocolError(f"GET {path}: not a list ({type(d).__name__})")
        return d

    async def get_open_orders(self) -> list[BrokerOrder]:
        return [self._order(d) for d in await self._list("/v2/orders")]

    async def get_recent_orders(self, hours: float) -> list[BrokerOrder]:
        after = (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
        d = await self._list("/v2/orders", params={"status": "all", "after": after})
        return [self._order(x) for x in d]

    async def get_positions(self) -> list[BrokerPosition]:
        d = await self._list("/v2/positions")
        try:
            return [BrokerPosition.from_dict(x) for x in d]
        except (KeyError, TypeError, ArithmeticError) as exc:
            raise BrokerProtocolError(f"unreadable positions: {exc}") from exc

    async def get_fills(self, since: datetime | None = None) -> list[Fill]:
        params = {} if since is None else {"after": since.isoformat()}
        return await self._fills(params)

    async def get_order_fills(
        self, client_order_id: str, since: datetime | None = None
    ) -> list[Fill]:
        params = {"client_order_id": client_order_id}
        if since is not None:
            params["after"] = since.isoformat()
        # a server that does not filter by order answers every fill: filtered here too
        return [f for f in await self._fills(params) if f.client_order_id == client_order_id]

    async def _fills(self, params: dict[str, str]) -> list[Fill]:
        d = await self._list("/v2/account/activities/FILL", params=params)
        try:
            return [Fill.from_dict(x) for x in d]
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise BrokerProtocolError(f"unreadable fills: {exc}") from exc
