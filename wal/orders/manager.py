"""``OrderManager``: every order journaled before the broker hears of it; never sent twice.

The submit path, each step durable (fsynced in the log) before the next one starts::

    validate + risk  ->  journal the intent (PENDING) and SUBMITTED (SUBMITTING): one fsync
        ->  broker.submit_order  ->  journal ACCEPTED / REJECTED / UNKNOWN  ->  fills

The journal's writes wait for the log only: the sync thread applies them to the database
(``DurableDatabaseManager.journal_orders``), and every read of the journal includes the log's
pending entries. The fills of an order the broker reports executed are fetched while its
ACCEPTED entry is being fsynced.

* A ``WALWriteError`` (the log failed) raises to the caller before the broker is called.
* A timeout, a transport error or a 5xx is not a failure: the order becomes UNKNOWN and the
  retries (``RetryPolicy``: backoff 1, 2, 4 s, 3 attempts) **look it up by client id first**:
  found -> adopted (event RECOVERED); not found -> resent with the same client id only if the
  broker deduplicates client ids globally (a duplicate then proves it exists), otherwise left
  UNKNOWN for reconciliation. A duplicate-client-id answer means "it exists: look it up".
* A clear reject ends the order after one call.
* Fills are journaled once per execution key (a correction replaces, never adds), with the
  order's filled quantity and average price, the trade and the position change in one entry;
  a fill beyond the order's quantity raises ``FillError`` and is not applied.
* ``start()`` resolves what a crash left: PENDING (never sent) and SUBMITTING/UNKNOWN orders
  are looked up by client id; only "not found" after ``max_attempts`` lookups *and* the
  broker's visibility window makes them SUBMIT_FAILED. Accepted orders get their missing fills.

The class is built in three modules: ``OrderBase`` (:mod:`wal.orders.base`: state, reads,
halting, one journaled transition), ``OrderFills`` (:mod:`wal.orders.fills`: the broker's
status and fills taken into the journal, the reconciler's tools) and ``OrderManager`` here
(submit, send, retries, startup recovery, cancel). Positions and daily P&L are a
``PositionBook`` (:mod:`wal.orders.positions`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from wal.crashpoints import crash_point
from wal.entry import utc_now
from wal.orders.base import LIVE_STATES, RetryPolicy, why
from wal.orders.broker import DedupScope
from wal.orders.errors import (
    BrokerRejectedError,
    DuplicateClientOrderId,
    FillError,
    OrderRejected,
    RejectReason,
    TradingHalted,
)
from wal.orders.fills import OrderFills
from wal.orders.models import Order, OrderEvent, OrderIntent
from wal.orders.states import EventKind, OrderState, check_transition, is_final
from wal.orders.validation import RiskView, check_risk, validate_intent

__all__ = ["OrderManager", "RecoveryResult", "RetryPolicy"]

log = logging.getLogger("wal.orders")

_S = OrderState


@dataclass(frozen=True)
class RecoveryResult:
    """What ``start()`` did with the orders a previous run left unfinished."""

    adopted: int = 0  # found at the broker by client id
    submit_failed: int = 0  # not at the broker after the lookups and the visibility window
    unknown: int = 0  # still UNKNOWN (lookups failed, or unreadable status): reconcile
    fills_journaled: int = 0


class OrderManager(OrderFills):
    """Orders on the log (module docstring). ``db`` is a ``DurableDatabaseManager``."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> RecoveryResult:
        """Load the journal and resolve what a crash left unfinished (module docstring)."""
        await self.load()
        adopted = failed = unknown = fills = 0
        for order in [o for o in self._orders.values() if not is_final(o.state)]:
            async with self._lock(order.client_order_id):
                before_fills = len(self._fills.get(order.client_order_id, {}))
                o = await self._recover(self._orders[order.client_order_id])
                fills += len(self._fills.get(order.client_order_id, {})) - before_fills
                if o.state is _S.SUBMIT_FAILED:
                    failed += 1
                elif o.state is _S.UNKNOWN:
                    unknown += 1
                elif order.state not in LIVE_STATES and o.state is not order.state:
                    adopted += 1
        return RecoveryResult(adopted, failed, unknown, fills)

    # ------------------------------------------------------------------ submit

    async def submit(self, intent: OrderIntent, *, protective: bool = False) -> Order:
        """Validate, journal, send (see the module docstring); the order as it stands.

        Raises ``TradingHalted`` while trading is halted (the startup reconciler has not
        succeeded), ``OrderRejected`` (nothing journaled or sent) and ``WALWriteError`` (the
        log failed: not sent if the failure came before the broker call).

        ``protective=True`` (the reconciler's emergency stops and market closes): an order
        that only reduces the journal's position in its symbol (opposite side, at most its
        size); it skips the risk limits and is allowed while halted.
        """
        if not protective and self._halted is not None:
            raise TradingHalted(f"trading is halted: {self._halted}; nothing was sent")
        self._require_loaded()
        if protective:
            self._check_protective(intent)
        cid = intent.client_order_id
        async with self._lock(cid):
            existing = await self._existing(cid)
            if existing is not None:
                return await self._resubmitted(existing, intent)
            async with self._state_lock:
                validate_intent(intent, self.broker.rules)
                if not protective:
                    await self._check_risk(intent)
                check_transition(_S.PENDING, _S.SUBMITTING)
                submitted = OrderEvent(cid, 2, EventKind.SUBMITTED, _S.SUBMITTING, utc_now())
                # ONE group commit, one fsync: the intent (PENDING) and SUBMITTING, durable
                # before the broker call; the database gets them from the sync thread
                await self.journal.arecord_submission(intent, submitted)
                order = Order(intent, _S.SUBMITTING, last_seq=2, updated_at=submitted.at)
                self._orders[cid] = order
                self._fills[cid] = {}
                self._publish(OrderEvent(cid, 1, EventKind.CREATED, _S.PENDING, intent.created_at))
                self._publish(submitted)
            crash_point("order.after_intent_fsync")  # journaled, nothing sent
            crash_point("order.after_submitting_fsync")  # durable: the request may go out next
            return await self._send(order)

    async def _existing(self, cid: str) -> Order | None:
        """The journal's order under this client id, if any, without a database read on the
        common path (a new id): this run's orders are in memory, those final at start are
        listed, and an intent journaled by anyone else since is in the log's key index."""
        order = self._orders.get(cid)
        if order is not None:
            return order
        if cid in self._final_at_start or self.journal.knows(cid):
            return await asyncio.to_thread(self.journal.order, cid)
        return None

    async def _resubmitted(self, existing: Order, intent: OrderIntent) -> Order:
        """The same intent again: never a second order; chase it if its outcome is unknown."""
        if not existing.intent.same_order(intent):
            raise OrderRejected(
                RejectReason.CONFLICTING_INTENT,
                f"client_order_id {intent.client_order_id!r} is already the journal's order "
                f"{existing.intent.side} {existing.intent.quantity} {existing.intent.symbol}",
                field="client_order_id",
            )
        self._orders.setdefault(existing.client_order_id, existing)
        if existing.state in (_S.SUBMITTING, _S.UNKNOWN):
            return await self._chase(existing)
        return existing

    async def _send(self, order: Order) -> Order:
        """Call the broker once for an order journaled SUBMITTING; journal what it answered."""
        try:
            bo = await asyncio.wait_for(
                self.broker.submit_order(order.intent), self.retry.call_timeout
            )
        except BrokerRejectedError as exc:
            return await self._transition(order, EventKind.REJECTED, _S.REJECTED, reason=exc.reason)
        except DuplicateClientOrderId:  # it exists: look it up and adopt it, never resend
            return await self._chase(order, resend=False)
        except Exception as exc:  # timeout, transport, 5xx, unreadable: outcome unknown
            order = await self._transition(order, EventKind.UNKNOWN, _S.UNKNOWN, reason=why(exc))
            return await self._chase(order)
        crash_point("order.after_broker_accept")  # accepted at the broker, not journaled
        return await self._adopt(order, bo, EventKind.ACCEPTED)

    async def _chase(self, order: Order, *, resend: bool = True) -> Order:
        """Retries of an order whose outcome is unknown: look up first (module docstring).

        A miss is resent (same client id) only where the broker deduplicates globally, and
        only until the broker has answered a send with "duplicate" (it exists: only look)
        or refused a resend (which proves nothing about the first request: it may have
        arrived, and used the buying power the resend lacked)."""
        for attempt in range(self.retry.max_attempts):
            await asyncio.sleep(self.retry.delay(attempt))
            try:
                bo = await asyncio.wait_for(
                    self.broker.get_order_by_client_id(order.client_order_id),
                    self.retry.call_timeout,
                )
            except Exception as exc:
                log.warning("lookup of %s failed: %s", order.client_order_id, why(exc))
                continue
            if bo is not None:
                return await self._adopt(order, bo, EventKind.RECOVERED)
            if not resend or self.broker.rules.dedup_scope is not DedupScope.GLOBAL:
                continue  # a resend could double a filled order: only look again
            if order.state is _S.SUBMITTING:
                order = await self._transition(
                    order, EventKind.UNKNOWN, _S.UNKNOWN, reason="not found by its client id"
                )
            order = await self._transition(order, EventKind.SUBMITTED, _S.SUBMITTING)
            try:  # the broker refuses a known client id forever: the resend is safe
                bo = await asyncio.wait_for(
                    self.broker.submit_order(order.intent), self.retry.call_timeout
                )
            except BrokerRejectedError as exc:
                resend = False  # not final: the first request's outcome is still unknown
                order = await self._transition(
                    order,
                    EventKind.UNKNOWN,
                    _S.UNKNOWN,
                    reason=f"the resend was refused ({exc.reason}); the first request may "
                    "have arrived: looked up again",
                )
                continue
            except DuplicateClientOrderId:
                resend = False  # it exists: only look it up from now on
                order = await self._transition(
                    order, EventKind.UNKNOWN, _S.UNKNOWN, reason="duplicate client id: look it up"
                )
                continue
            except Exception as exc:
                order = await self._transition(
                    order, EventKind.UNKNOWN, _S.UNKNOWN, reason=why(exc)
                )
                continue
            return await self._adopt(order, bo, EventKind.ACCEPTED)
        if order.state is _S.SUBMITTING:  # a resend's outcome is not known either
            order = await self._transition(
                order, EventKind.UNKNOWN, _S.UNKNOWN, reason="retries exhausted"
            )
        return order

    async def _recover(self, order: Order) -> Order:
        """Resolve one order a previous run left unfinished."""
        if order.state in LIVE_STATES:
            return await self.refresh(order.client_order_id, _locked=True)
        rules = self.broker.rules
        needed = max(1, self.retry.max_attempts)
        misses = 0
        wait = 0.0
        for attempt in range(2 * needed + 1):
            if attempt:
                await asyncio.sleep(wait)
            wait = self.retry.delay(attempt)
            try:
                bo = await asyncio.wait_for(
                    self.broker.get_order_by_client_id(order.client_order_id),
                    self.retry.call_timeout,
                )
            except Exception as exc:
                log.warning("recovery lookup of %s failed: %s", order.client_order_id, why(exc))
                bo = None
                if order.state is not _S.PENDING:
                    continue
            if bo is not None:
                return await self._adopt(order, bo, EventKind.RECOVERED)
            if order.state is _S.PENDING:  # SUBMITTING is journaled before any send
                return await self._transition(
                    order,
                    EventKind.SUBMIT_FAILED,
                    _S.SUBMIT_FAILED,
                    reason="never sent: stopped before the broker call",
                )
            misses += 1
            window_left = (
                order.updated_at + timedelta(seconds=rules.visibility_window_seconds) - utc_now()
            ).total_seconds()
            if misses >= needed and window_left <= 0:
                return await self._transition(
                    order,
                    EventKind.SUBMIT_FAILED,
                    _S.SUBMIT_FAILED,
                    reason=f"not at the broker after {misses} lookups and its "
                    f"{rules.visibility_window_seconds:g} s visibility window",
                )
            if misses >= needed:
                wait = max(wait, window_left)  # the broker may not show it yet: wait it out
        if order.state is not _S.UNKNOWN:
            order = await self._transition(
                order, EventKind.UNKNOWN, _S.UNKNOWN, reason="lookups failed during recovery"
            )
        return order

    def _check_protective(self, intent: OrderIntent) -> None:
        pos = self.positions().get(intent.symbol, Decimal(0))
        reduces = (pos > 0 and intent.side == "sell") or (pos < 0 and intent.side == "buy")
        if not reduces or not isinstance(intent.quantity, Decimal) or intent.quantity > abs(pos):
            raise OrderRejected(
                RejectReason.MAX_POSITION,
                f"a protective {intent.side} of {intent.quantity} {intent.symbol} does not only "
                f"reduce the journal's position of {pos}",
                field="quantity",
            )

    # ------------------------------------------------------------------ cancel, force

    async def cancel(self, client_order_id: str) -> Order:
        """Cancel: a never-sent order locally; a live one at the broker (then its status)."""
        async with self._lock(client_order_id):
            order = self._orders.get(client_order_id)
            if order is None or is_final(order.state):
                raise OrderRejected(
                    RejectReason.CONFLICTING_INTENT,
                    f"order {client_order_id!r} is not open",
                    field="client_order_id",
                )
            if order.state is _S.PENDING:
                return await self._transition(
                    order, EventKind.CANCELLED, _S.CANCELLED, reason="cancelled before it was sent"
                )
            if order.broker_order_id is None:
                raise OrderRejected(
                    RejectReason.CONFLICTING_INTENT,
                    f"order {client_order_id!r} is {order.state.value}: its "
                    "broker id is not known yet",
                    field="client_order_id",
                )
            await self._transition(order, EventKind.CANCEL_REQUESTED, order.state)
            try:
                await self.broker.cancel_order(order.broker_order_id)
            except BrokerRejectedError as exc:
                log.info("cancel of %s refused: %s", client_order_id, exc.reason)
            return await self.refresh(client_order_id, _locked=True)

    async def force_state(
        self,
        client_order_id: str,
        state: OrderState,
        *,
        reason: str,
        broker_order_id: str | None = None,
        _reconciliation: bool = False,
    ) -> Order:
        """Set a state outside the transition table: the startup reconciler's tool only."""
        if not _reconciliation:
            raise RuntimeError(
                "force_state bypasses the order state machine and is reserved for the startup "
                "reconciler (pass _reconciliation=True there, nowhere else)"
            )
        async with self._lock(client_order_id):
            order = self.get(client_order_id)
            if order is None:
                raise FillError(f"no order with client_order_id {client_order_id!r}")
            return await self._transition(
                order,
                EventKind.FORCED,
                state,
                reason=reason,
                broker_order_id=broker_order_id,
                check=False,
            )

    # ------------------------------------------------------------------ internals

    async def _check_risk(self, intent: OrderIntent) -> None:
        price = intent.limit_price or intent.stop_price
        if price is None and self.price_source is not None:
            price = self.price_source(intent.symbol)
        balance: Decimal | None = None
        if self.risk.check_balance and intent.side == "buy":
            try:
                balance = await asyncio.to_thread(self.db.get_balance, intent.account)
            except Exception as exc:
                log.warning("balance of %s unknown: %s", intent.account, why(exc))
        reserved = Decimal(0)
        open_buys = open_sells = Decimal(0)  # per side: the worst case (validation.check_risk)
        for o in self._orders.values():
            if is_final(o.state):
                continue
            if o.symbol == intent.symbol:
                if o.intent.side == "buy":
                    open_buys += o.remaining
                else:
                    open_sells += o.remaining
            if o.intent.side == "buy" and o.intent.account == intent.account:
                p = (
                    o.intent.limit_price
                    or o.intent.stop_price
                    or o.avg_fill_price
                    or (self.price_source(o.symbol) if self.price_source else None)
                )
                reserved += o.remaining * (p or Decimal(0))
        today = utc_now().date().isoformat()
        check_risk(
            intent,
            self.risk,
            RiskView(
                price,
                balance,
                reserved,
                self._book.quantity(intent.symbol),
                self._book.pnl_on(today),
                open_buys,
                open_sells,
            ),
        )
