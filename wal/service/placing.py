"""``OrderDesk``: placing and cancelling the service's orders.

The Idempotency-Key becomes the client order id (``client_order_id_for``). Under the key's
lock, ``place`` answers the same order again for a used key (200; an order whose outcome is
not known yet is looked up at the broker by its client id, never sent twice), refuses a used
key with another body (409), and otherwise checks, in this order: a bracket with both legs
against the broker's OCO groups (``oco_unsupported``, 422: a broker that declares none
would hold its stop-loss and take-profit as two independent orders that can both fill), the
bracket's prices against the market, a halt (the manager's, the log's, the operator's:
before anything is claimed or counted), the trader's rate limit. Then it claims the key
(the owner row) and ``OrderManager.submit`` journals and sends. The owner row's commit is
begun first and awaited by the manager just before it journals the intent
(``before_journal``): the commit overlaps the manager's checks (its balance read), and a
journaled order always has its owner. A refusal frees the key when nothing of the order was
journaled, and a 503 gives the rate token back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from wal import DurableDatabaseManager
from wal.errors import WALDatabaseError, WALWriteError
from wal.orders import Order, OrderIntent, OrderManager, OrderRejected, OrderState, TradingHalted
from wal.service.brackets import Brackets
from wal.service.errors import ApiError
from wal.service.health import LogHealth
from wal.service.owners import OwnerRow, OwnerStore, client_order_id_for
from wal.service.ratelimit import RateLimiter
from wal.service.schemas import OrderRequest
from wal.sync.halt import operator_halt

__all__ = ["OrderDesk", "Placed", "account_of"]

log = logging.getLogger("wal.service")

_UNSETTLED = (OrderState.PENDING, OrderState.SUBMITTING, OrderState.UNKNOWN)
_STRIPES = 1024  # locks of the Idempotency-Keys being placed (by their client id's hash)


def account_of(trader_id: str) -> str:
    """The balance account a trader's orders are valued against."""
    return f"trader:{trader_id}"


@dataclass(frozen=True)
class Placed:
    """What ``place`` did: the order, its owner row, and whether it is new."""

    order: Order
    owner: OwnerRow
    created: bool

    @property
    def status(self) -> int:
        """201 new, 200 the same key again, 202 new but its outcome not known yet."""
        if not self.created:
            return 200
        return 202 if self.order.state in _UNSETTLED else 201


class OrderDesk:
    """Places and cancels the traders' orders (module docstring)."""

    def __init__(
        self,
        ddb: DurableDatabaseManager,
        om: OrderManager,
        owners: OwnerStore,
        limiter: RateLimiter,
        brackets: Brackets,
        health: LogHealth,
        *,
        kick_bracket: Callable[[str], None],
        paper_balance: Decimal | None,
    ) -> None:
        self.ddb = ddb
        self.om = om
        self.owners = owners
        self.limiter = limiter
        self.brackets = brackets
        self.health = health
        self.kick_bracket = kick_bracket
        self.paper_balance = paper_balance
        self._locks = [asyncio.Lock() for _ in range(_STRIPES)]
        self._funded: set[str] = set()

    def _lock(self, cid: str) -> asyncio.Lock:
        """The lock of a client id's stripe: one request per key at a time, in bounded memory."""
        return self._locks[int(cid[:8], 16) % len(self._locks)]

    async def place(self, trader: str, key: str, req: OrderRequest) -> Placed:
        """The order under (trader, key): the same one again, or a new one (module doc)."""
        cid = client_order_id_for(trader, key)
        fingerprint = req.fingerprint()
        async with self._lock(cid):
            owner = self.owners.get(cid)
            if owner is not None:
                if owner.request_sha256 != fingerprint:
                    raise ApiError(
                        409,
                        "idempotency_conflict",
                        f"Idempotency-Key {key!r} was used for a different order "
                        f"({owner.client_order_id}); use a new key for a new order",
                        field="Idempotency-Key",
                    )
                order = await asyncio.to_thread(self.om.get, cid)
                if order is not None:
                    if order.state in (OrderState.SUBMITTING, OrderState.UNKNOWN):
                        order = await self._chase(cid, req, trader, order)
                    return Placed(order, owner, created=False)
                # claimed by a run that died (or was refused) before journaling it: nothing
                # was sent, and it is placed now as a new order (a token, the checks below)
            self._check_oco(req)
            self._check_brackets_at_market(req)
            self._check_can_trade()
            wait = self.limiter.take(trader)
            if wait:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"trader {trader} placed {self.limiter.per_minute} orders in the last "
                    f"minute (ORDER_RATE_LIMIT); retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            try:
                return await self._place_new(trader, key, cid, req, fingerprint, owner)
            except ApiError as exc:
                if exc.status == 503:  # refused by the service itself: the trader placed nothing
                    self.limiter.give_back(trader)
                raise

    async def _place_new(
        self,
        trader: str,
        key: str,
        cid: str,
        req: OrderRequest,
        fingerprint: str,
        owner: OwnerRow | None,
    ) -> Placed:
        """Claim the key (its owner row) and submit the order (the key's lock held)."""
        await self._fund(trader)
        claim: asyncio.Future[OwnerRow] | None = None
        if owner is None:
            row = OwnerRow(cid, trader, key, fingerprint, req.stop_loss, req.take_profit)
            # begun now, awaited just before the intent is journaled (``claimed``): its commit
            # overlaps the manager's checks (the balance read) and still precedes the journal
            claim = asyncio.ensure_future(asyncio.to_thread(self.owners.claim, row))

        async def claimed() -> None:
            """The owner row committed: a journaled order always has its owner."""
            if claim is None:
                return
            try:
                await claim
            except Exception as exc:
                raise ApiError(
                    503,
                    "database_unavailable",
                    f"the order was not placed: its owner could not be recorded ({exc}); "
                    "retry with the same Idempotency-Key",
                    headers={"Retry-After": "1"},
                ) from exc

        intent = _intent(req, cid, account_of(trader))
        try:
            order = await self.om.submit(intent, before_journal=claimed)
            await claimed()  # done already, unless the manager answered a journaled order
        except OrderRejected as exc:
            await _settled(claim)  # a claim still being committed is not released under it
            await self._release_unplaced(cid)
            raise ApiError(422, exc.reason.value, exc.message, field=exc.field) from exc
        except TradingHalted as exc:
            await _settled(claim)
            await self._release_unplaced(cid)
            raise ApiError(
                503, "halted", self._halt_text(exc), headers={"Retry-After": "5"}
            ) from exc
        except WALWriteError as exc:
            self.health.fail(exc)
            raise ApiError(503, "log_failed", str(exc)) from exc
        finally:
            await _settled(claim)  # never a claim left running (its error read, not lost)
        if claim is not None:
            owner = claim.result()
        assert owner is not None
        if req.stop_loss is not None or req.take_profit is not None:
            self.brackets.track(cid)  # its stop_loss / take_profit follow its fills
            self.kick_bracket(cid)
        return Placed(order, owner, created=True)

    async def _release_unplaced(self, cid: str) -> None:
        """A refused order: its key is free again if nothing of it was journaled (the same
        key may then place another order; a journaled one stays the key's order)."""
        if await asyncio.to_thread(self.om.get, cid) is None:
            await asyncio.to_thread(self.owners.release, cid)

    def _halt_text(self, exc: TradingHalted) -> str:
        """What a trader is told about a halt: the operator's without who threw it."""
        op = operator_halt(self.ddb)
        if op is not None:
            return f"trading is {op.public()}; nothing was placed"
        return str(exc)

    def _check_oco(self, req: OrderRequest) -> None:
        """Both a stop_loss and a take_profit need the broker's OCO groups with reduce on
        fill (``wal.service.brackets``): refused before anything is claimed or sent."""
        if req.stop_loss is None or req.take_profit is None:
            return
        if self.om.broker.rules.oco_groups is not True:
            # two independent reducing orders for the whole position: both could fill
            raise ApiError(
                422,
                "oco_unsupported",
                "an order with both stop_loss and take_profit needs a broker with "
                "one-cancels-other groups (reduce on fill), and this broker declares none: "
                "both could fill and reverse the position; place it with one of them",
                field="take_profit",
            )

    def _check_brackets_at_market(self, req: OrderRequest) -> None:
        """A market order's stop_loss / take_profit on their side of the market price, when
        the service knows it (the paper broker's): else its child would execute at once."""
        source = self.om.price_source
        if req.order_type != "market" or source is None:
            return
        if req.stop_loss is None and req.take_profit is None:
            return
        price = source(req.symbol)
        wrong = None if price is None else req.bracket_problem(price, "the market price")
        if wrong is not None:
            raise ApiError(422, "validation_error", f"{wrong[0]}: {wrong[1]}", field=wrong[0])

    async def _chase(self, cid: str, req: OrderRequest, trader: str, order: Order) -> Order:
        """A retry of an order whose outcome is unknown: the manager looks it up by its
        client id (never a second order); the order as it stands, whatever happened."""
        try:
            return await self.om.submit(_intent(req, cid, account_of(trader)))
        except (OrderRejected, TradingHalted):
            return order
        except WALWriteError as exc:
            self.health.fail(exc)
            raise ApiError(503, "log_failed", str(exc)) from exc

    def _check_can_trade(self) -> None:
        self.health.check()
        if self.om.halted is not None:
            raise ApiError(
                503,
                "halted",
                f"trading is halted: {self.om.halted}; nothing was placed",
                headers={"Retry-After": "5"},
            )
        op = operator_halt(self.ddb)  # `atb orders halt`: refused before the key is claimed
        if op is not None:
            raise ApiError(
                503,
                "halted",
                f"trading is {op.public()}; nothing was placed",
                headers={"Retry-After": "5"},
            )

    async def _fund(self, trader: str) -> None:
        """Paper mode: a trader's account is credited once (``SERVICE_PAPER_BALANCE``)."""
        amount = self.paper_balance
        if amount is None or trader in self._funded:
            return
        account = account_of(trader)
        key = f"paper-open:{trader}"
        try:
            balance = await asyncio.to_thread(self.ddb.get_balance, account)
            if balance == 0 and self.ddb.find_by_idempotency_key(key) is None:
                await asyncio.to_thread(
                    lambda: self.ddb.atomic_balance_update(
                        amount, reason="paper account opened", account=account, idempotency_key=key
                    )
                )
        except WALWriteError as exc:
            self.health.fail(exc)
            raise ApiError(503, "log_failed", str(exc)) from exc
        except WALDatabaseError as exc:
            log.warning("paper balance of %s unknown: %s", trader, exc)
            return
        self._funded.add(trader)

    async def cancel(self, cid: str) -> Order:
        """Cancel an open order (409 when it is not open; 503 when the log failed)."""
        self.health.check()
        try:
            return await self.om.cancel(cid)
        except OrderRejected as exc:
            raise ApiError(409, "not_open", exc.message, field="id") from exc
        except WALWriteError as exc:
            self.health.fail(exc)
            raise ApiError(503, "log_failed", str(exc)) from exc


async def _settled(claim: asyncio.Future[OwnerRow] | None) -> None:
    """Wait until ``claim`` has finished, whatever its outcome (read by ``claimed``)."""
    if claim is not None and not claim.done():
        await asyncio.wait([claim])
    if claim is not None and not claim.cancelled():
        claim.exception()  # read: never "exception was never retrieved"


def _intent(req: OrderRequest, cid: str, account: str) -> OrderIntent:
    limit: Decimal | None = None
    stop: Decimal | None = None
    if req.order_type == "limit":
        limit = req.price
    elif req.order_type == "stop":
        stop = req.price
    elif req.order_type == "stop_limit":
        limit, stop = req.price, req.stop_price
    return OrderIntent(
        symbol=req.symbol,
        side=req.side,
        quantity=req.quantity,
        order_type=req.order_type,
        limit_price=limit,
        stop_price=stop,
        time_in_force=req.time_in_force,
        account=account,
        client_order_id=cid,
    )
