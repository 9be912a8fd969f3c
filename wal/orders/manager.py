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
  UNKNOWN for reconciliation. A duplicate-client-id answer means "it exists: look it up";
  it is journaled (``DUPLICATE_ANSWER``): no run ever makes that order SUBMIT_FAILED.
* A clear reject ends the order after one call.
* Fills are journaled once per execution key (a correction replaces, never adds), with the
  order's filled quantity and average price, the trade and the position change in one entry;
  a fill beyond the order's quantity raises ``FillError`` and is not applied.
* ``start()`` resolves what a crash left: PENDING (never sent) and SUBMITTING/UNKNOWN orders
  are looked up by client id; only ``max_attempts`` definite "not found" answers to lookups
  asked after the broker's visibility window, measured from the *last* send, make them
  SUBMIT_FAILED; a failed lookup is never "not found" (it decides nothing). Accepted orders
  get their missing fills; orders SUBMIT_FAILED by absence in the last 24 h are looked up
  again (the broker's word wins over a final journal state).
* ``cancel()`` has submit's discipline: every sent order is looked up by client id before
  anything is sent, and the cancel goes to the broker id that lookup reports, never to the
  journal's stored one (broker ids are reused across broker sessions: the stored id may
  name another order); not found -> ``OrderRejected``, nothing sent. A cancel whose answer
  is lost is resolved by lookups (and resent, to the looked-up id, while the broker shows
  the order live); the caller gets the order as it stands.
* An order reaches a final state only when its booked fills equal the broker's filled
  quantity (:mod:`wal.orders.fills`); until then it stays open, listed by ``unsettled()``.

The class is built in three modules: ``OrderBase`` (:mod:`wal.orders.base`: state, reads,
halting, one journaled transition), ``OrderFills`` (:mod:`wal.orders.fills`: the broker's
status and fills taken into the journal, the reconciler's tools) and ``OrderManager`` here
(submit, send, retries, startup recovery, cancel). Positions and daily P&L are a
``PositionBook`` (:mod:`wal.orders.positions`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from wal.crashpoints import crash_point
from wal.entry import utc_now
from wal.money import exact
from wal.orders.base import LIVE_STATES, NEVER_SENT, RetryPolicy, utc, why
from wal.orders.broker import BrokerOrder, DedupScope
from wal.orders.errors import (
    BrokerProtocolError,
    BrokerRejectedError,
    DuplicateClientOrderId,
    FillError,
    OrderRejected,
    RejectReason,
    TradingHalted,
)
from wal.orders.fills import OrderFills
from wal.orders.models import Order, OrderEvent, OrderIntent, exposure
from wal.orders.states import EventKind, OrderState, check_transition, is_final
from wal.orders.validation import RiskView, check_risk, validate_intent
from wal.sync.halt import RESUME, operator_halt

__all__ = ["DUPLICATE_ANSWER", "OrderManager", "RecoveryResult", "RetryPolicy"]

log = logging.getLogger("wal.orders")

_S = OrderState
_BALANCE_READS = 100  # a balance read a fill overtook is read again, this many times at most
# the reason journaled when the broker answers "duplicate client id": the order exists there
DUPLICATE_ANSWER = "the broker answered duplicate client id: it exists"


@dataclass(frozen=True)
class RecoveryResult:
    """What ``start()`` did with the orders a previous run left unfinished."""

    adopted: int = 0  # found at the broker by client id
    submit_failed: int = 0  # not at the broker after the lookups and the visibility window
    unknown: int = 0  # still UNKNOWN (lookups failed, or unreadable status): reconcile
    fills_journaled: int = 0
    unsettled: int = 0  # final at the broker, fills not all booked: left open (``unsettled()``)


class OrderManager(OrderFills):
    """Orders on the log (module docstring). ``db`` is a ``DurableDatabaseManager``."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> RecoveryResult:
        """Load the journal and resolve what a crash left unfinished (module docstring)."""
        await self.load()
        adopted = failed = unknown = fills = 0
        started = utc_now()  # the previous process has ended: this one holds the log
        for order in list(self._orders.open.values()):
            async with self._lock(order.client_order_id):
                before_fills = len(self._fills.get(order.client_order_id, {}))
                o = await self._recover(self._orders[order.client_order_id], started)
                fills += len(self._fills.get(order.client_order_id, {})) - before_fills
                if o.state is _S.SUBMIT_FAILED:
                    failed += 1
                elif o.state in (_S.UNKNOWN, _S.PENDING, _S.SUBMITTING):
                    unknown += 1
                elif order.state not in LIVE_STATES and o.state is not order.state:
                    adopted += 1
        for cid in [c for c in self._absent if c in self._final_at_start]:
            # SUBMIT_FAILED by an earlier run because the broker did not show it: the broker's
            # word wins over a final journal state (a live or filled order is taken back)
            o = await self.refresh(cid)
            if o.state is not _S.SUBMIT_FAILED:
                self._absent.pop(cid, None)
                adopted += 1
        return RecoveryResult(adopted, failed, unknown, fills, len(self._unsettled))

    # ------------------------------------------------------------------ submit

    async def submit(
        self,
        intent: OrderIntent,
        *,
        protective: bool = False,
        before_journal: Callable[[], Awaitable[None]] | None = None,
        _reconciliation: bool = False,
    ) -> Order:
        """Validate, journal, send (see the module docstring); the order as it stands.

        Raises ``TradingHalted`` while trading is halted (the startup reconciler has not
        succeeded, or the operator's ``atb orders halt``: ``wal.sync.halt``),
        ``OrderRejected`` (nothing journaled or sent) and ``WALWriteError`` (the log
        failed: not sent if the failure came before the broker call).

        ``protective=True`` (the reconciler's emergency stops and market closes): an order
        that only reduces the journal's position in its symbol (opposite side, at most its
        size); it skips the risk limits and is allowed while halted.

        A client id with a reserved prefix (``orphan-``, ``es-``, ``close-``: the startup
        reconciler's own orders) is refused (``reserved_client_order_id``) unless
        ``_reconciliation=True``, which only the reconciler passes (with ``protective``).

        ``before_journal``: awaited once, after every check passed and the order is reserved,
        just before the intent is journaled (a new order only: not for a retry of a journaled
        one). What must be durable before the order exists goes there: the order service
        commits the order's owner row, a write it begins before calling ``submit`` so that its
        commit overlaps the checks (the balance read). What it raises refuses the order
        (nothing journaled or sent) and is raised to the caller.
        """
        if _reconciliation and not protective:
            raise RuntimeError("_reconciliation=True is the reconciler's, for protective orders")
        if not protective and self._halted is not None:
            raise TradingHalted(f"trading is halted: {self._halted}; nothing was sent")
        if not protective and (halt := operator_halt(self.db)) is not None:  # `atb orders halt`
            raise TradingHalted(f"trading is {halt.describe()}; nothing was sent", hint=RESUME)
        self._require_loaded()
        cid = intent.client_order_id
        async with self._lock(cid):
            existing = await self._existing(cid)
            if existing is not None:  # a retry: never a second order, whatever moved since
                return await self._resubmitted(existing, intent)
            if protective:
                self._check_protective(intent)
            validate_intent(intent, self.broker.rules, reconciler=_reconciliation)
            # checked and reserved with no await in between (``_check_risk``): a concurrent
            # submit sees this order's reservation; no global lock is held past this point
            await self._check_risk(intent, check=not protective)
            try:
                if before_journal is not None:
                    await before_journal()  # the caller's record that precedes the journal
                check_transition(_S.PENDING, _S.SUBMITTING)
                submitted = OrderEvent(cid, 2, EventKind.SUBMITTED, _S.SUBMITTING, utc_now())
                # ONE group commit, one fsync: the intent (PENDING) and SUBMITTING, durable
                # before the broker call (shared with concurrent submits: the journal batches
                # them); the database gets them from the sync thread
                await self.journal.arecord_submission(intent, submitted)
                order = Order(intent, _S.SUBMITTING, last_seq=2, updated_at=submitted.at)
                self._orders[cid] = order  # an open order: it counts from now on
                self._fills[cid] = {}
            finally:
                self._reserved.pop(cid, None)  # journaled (now in _orders) or failed
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
        existing = await self._load_order(existing.client_order_id) or existing  # with its fills
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
            # journaled first: after a crash, start() must know it exists (never SUBMIT_FAILED)
            order = await self._transition(
                order, EventKind.UNKNOWN, _S.UNKNOWN, reason=DUPLICATE_ANSWER
            )
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
                    order, EventKind.UNKNOWN, _S.UNKNOWN, reason=DUPLICATE_ANSWER
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

    async def _recover(self, order: Order, started: datetime) -> Order:
        """Resolve one order a previous run left unfinished.

        A failed lookup (transport error, timeout, 5xx) is never "not found": it decides
        nothing. SUBMIT_FAILED needs ``max_attempts`` definite "not found" answers to
        lookups *asked* after the broker's visibility window, measured from the last send
        (``send_evidence``), and never comes to an order the broker answered "duplicate client
        id" for (it exists: it stays UNKNOWN for reconciliation)."""
        if order.state in LIVE_STATES:
            return await self.refresh(order.client_order_id, _locked=True)
        cid = order.client_order_id
        rules = self.broker.rules
        needed = max(1, self.retry.max_attempts)
        sent_by, exists = await self.send_evidence(order, started)
        deadline = sent_by + timedelta(seconds=rules.visibility_window_seconds)
        misses = 0
        wait = 0.0
        for attempt in range(2 * needed + 1):
            if attempt:
                await asyncio.sleep(wait)
            wait = self.retry.delay(attempt)
            asked = utc_now()
            try:
                bo = await asyncio.wait_for(
                    self.broker.get_order_by_client_id(cid), self.retry.call_timeout
                )
            except Exception as exc:  # unknown, not "not found": decides nothing
                log.warning("recovery lookup of %s failed: %s", cid, why(exc))
                continue
            if bo is not None:
                return await self._adopt(order, bo, EventKind.RECOVERED)
            if exists:  # the broker said it has it: absence proves nothing
                misses += 1
                if misses >= needed:
                    break
                continue
            if asked >= deadline:
                misses += 1  # only an answer asked after the window counts
            if misses >= needed:
                never_sent = order.state is _S.PENDING  # SUBMITTED is journaled before any send
                if not never_sent:
                    self._absent[cid] = order.intent.created_at  # its fills are still booked
                return await self._transition(
                    order,
                    EventKind.SUBMIT_FAILED,
                    _S.SUBMIT_FAILED,
                    reason=f"{NEVER_SENT}: stopped before the broker call"
                    if never_sent
                    else f"not at the broker after {misses} lookups past its "
                    f"{rules.visibility_window_seconds:g} s visibility window from the last send",
                )
            left = (deadline - utc_now()).total_seconds()
            wait = max(wait, left)  # the broker may not show it yet: wait its window out
        if order.state is _S.SUBMITTING:
            order = await self._transition(
                order,
                EventKind.UNKNOWN,
                _S.UNKNOWN,
                reason=DUPLICATE_ANSWER + "; not found during recovery"
                if exists
                else "not resolved by the lookups of recovery",
            )
        return order

    async def send_evidence(self, order: Order, started: datetime) -> tuple[datetime, bool]:
        """(the latest moment its last request can have reached the broker, whether the
        broker answered "duplicate client id"), from the order's journaled events.

        A request goes out after its SUBMITTED event and can arrive until the call's
        timeout, or until the call ended: by ``started`` (this ``start()``, which holds the
        log's writer lock, so the process that sent it has ended; or the moment the startup
        reconciler looks, after every call that sent it returned). A PENDING order was never
        sent by us (its intent is journaled in the same fsync as SUBMITTED): the intent's
        time. Events that cannot be read: the order's last change, and no SUBMIT_FAILED
        (``exists``). The startup reconciler uses it too (``wal.orders.reconcile``)."""
        try:
            events = await asyncio.to_thread(self.journal.events, order.client_order_id)
        except Exception as exc:
            log.warning("events of %s unreadable (%s)", order.client_order_id, why(exc))
            return max(order.updated_at, started), True
        sends = [utc(e["at"]) for e in events if e["kind"] == EventKind.SUBMITTED.value]
        exists = any(str(e.get("detail") or "").startswith(DUPLICATE_ANSWER) for e in events)
        if not sends:
            return utc(order.intent.created_at), exists
        last = max(sends)
        return min(last + timedelta(seconds=self.retry.call_timeout), max(last, started)), exists

    @exact
    def _check_protective(self, intent: OrderIntent) -> None:
        """A protective order only reduces the position, together with the protective
        orders of its kind already open in its symbol and direction: never more than is
        held. The kinds are the trigger's: stops (stop, stop_limit), limits, market orders;
        a bracket's stop-loss and take-profit are one of each for the whole position (one
        cancels the other), never two stops. Orders of one OCO group count as their largest
        member (``exposure``: a fill of one reduces the others by as much), so a bracket's
        replacement stop may be placed in its group before the stop it replaces is
        cancelled: the two never execute more than the larger."""
        pos = self.positions().get(intent.symbol, Decimal(0))
        reduces = (pos > 0 and intent.side == "sell") or (pos < 0 and intent.side == "buy")
        if not reduces or not isinstance(intent.quantity, Decimal) or intent.quantity > abs(pos):
            raise OrderRejected(
                RejectReason.MAX_POSITION,
                f"a protective {intent.side} of {intent.quantity} {intent.symbol} does not only "
                f"reduce the journal's position of {pos}",
                field="quantity",
            )
        kind = _trigger_kind(intent.order_type)
        open_: list[tuple[str | None, Decimal]] = []
        for o in itertools.chain(self._orders.open.values(), self._reserved.values()):
            i = o.intent
            same = i.symbol == intent.symbol and i.side == intent.side
            if same and _trigger_kind(i.order_type) == kind and not is_final(o.state):
                open_.append((i.oco_group, max(i.quantity - o.filled_quantity, Decimal(0))))
        covered = exposure(open_)
        if exposure([*open_, (intent.oco_group, intent.quantity)]) > abs(pos):
            raise OrderRejected(
                RejectReason.MAX_POSITION,
                f"a protective {intent.side} {intent.order_type} of {intent.quantity} "
                f"{intent.symbol} with {covered} already open would cover more than the "
                f"journal's position of {pos}",
                field="quantity",
            )

    # ------------------------------------------------------------------ cancel, force

    async def cancel(self, client_order_id: str) -> Order:
        """Cancel: a never-sent order locally; a live one at the broker; the order as it
        stands after.

        Submit's discipline: nothing is sent on a guess. Every sent order is **looked up by
        its client id first**, and the cancel goes to the broker id the broker reports for
        it, never to the journal's stored one: broker ids can be reused (Interactive
        Brokers' orderId is per session; a broker restarted without its state numbers its
        orders from 1 again), and the stored id may now name another order, a protective
        stop. An order the lookups do not find (or that no lookup answered for) is refused
        with ``OrderRejected``: nothing was sent, nothing journaled. A cancel that times out
        or fails in transport is resolved by lookups (``RetryPolicy``), and sent again, to
        the id the lookup reports, only while the broker shows the order live. Once the
        cancel was sent the caller never gets a bare ``BrokerUnavailable``: if no lookup
        answers, the order is returned as it stands (its ``cancel_requested`` journaled)."""
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
            # resolved by lookup first (an UNKNOWN order is never resent), and the broker id
            # to act on is the one the broker shows under this client id now
            order, bo, failure = await self._look_up_for_cancel(order)
            if bo is None:
                stored = (
                    f" (the journal's broker id {order.broker_order_id} was not used: it may "
                    "name another order now)"
                    if order.broker_order_id is not None
                    else ""
                )
                found = (
                    f"the broker did not answer {self.retry.max_attempts} lookups by its client "
                    f"id (last: {failure})"
                    if failure is not None
                    else f"not found at the broker by {self.retry.max_attempts} lookups"
                )
                raise OrderRejected(
                    RejectReason.CONFLICTING_INTENT,
                    f"order {client_order_id!r} is {order.state.value}: {found}; nothing was "
                    f"sent{stored}",
                    field="client_order_id",
                )
            if is_final(order.state):
                return order
            bid = bo.broker_order_id  # the broker's id for this client id now, never the stored one
            order = await self._transition(
                order, EventKind.CANCEL_REQUESTED, order.state, broker_order_id=bid
            )
            return await self._cancel_at_broker(order, bid)

    async def _own_order(self, cid: str) -> BrokerOrder | None:
        """The broker's order under client id ``cid`` (one lookup, with the call's timeout);
        ``BrokerProtocolError`` if the broker answers with another client id's order."""
        bo = await asyncio.wait_for(
            self.broker.get_order_by_client_id(cid), self.retry.call_timeout
        )
        if bo is not None and bo.client_order_id != cid:
            raise BrokerProtocolError(
                f"asked for client id {cid}, the broker answered order {bo.broker_order_id} "
                f"of client id {bo.client_order_id}"
            )
        return bo

    async def _look_up_for_cancel(
        self, order: Order
    ) -> tuple[Order, BrokerOrder | None, str | None]:
        """Look a sent order up by client id (``max_attempts`` lookups with the backoff)
        and take the broker's word for it; (the order as it then stands, the broker's
        order or None, why the last lookup failed or None if it answered)."""
        cid = order.client_order_id
        failure: str | None = None
        for attempt in range(max(1, self.retry.max_attempts)):
            if attempt:
                await asyncio.sleep(self.retry.delay(attempt - 1))
            try:
                bo = await self._own_order(cid)
            except Exception as exc:
                failure = why(exc)
                log.warning("lookup of %s before its cancel failed: %s", cid, failure)
                continue
            failure = None
            if bo is None:
                continue  # not (yet) visible: look again; nothing is sent on the stored id
            try:
                target = bo.state
            except BrokerProtocolError:
                target = None  # unreadable status: the id is confirmed, the cancel may go
            if order.state in LIVE_STATES and (target is None or target in LIVE_STATES):
                return order, bo, None  # live on both sides: cancelled now, adopted after
            return await self._adopt(order, bo, EventKind.RECOVERED), bo, None
        return order, None, failure

    async def _cancel_at_broker(self, order: Order, bid: str) -> Order:
        """Send the cancel to ``bid`` (the broker's id for this client id, as a lookup just
        reported it), then look the order up until the broker's answer is known."""
        cid = order.client_order_id
        send = True
        for attempt in range(max(1, self.retry.max_attempts) + 1):
            if send:
                send = False
                try:
                    await asyncio.wait_for(self.broker.cancel_order(bid), self.retry.call_timeout)
                except BrokerRejectedError as exc:  # not open there: the lookup says why
                    log.info("cancel of %s refused: %s", cid, exc.reason)
                except Exception as exc:  # the broker may have cancelled: look it up
                    log.warning("cancel of %s: outcome unknown (%s); looked up", cid, why(exc))
            if attempt:
                await asyncio.sleep(self.retry.delay(attempt - 1))
            try:
                bo = await self._own_order(cid)
            except Exception as exc:
                log.warning("lookup of %s after its cancel failed: %s", cid, why(exc))
                continue
            if bo is None:
                continue  # visibility lag: look again (nothing is sent on the old id)
            order = await self._adopt(order, bo, EventKind.RECOVERED)
            try:
                live = bo.state in LIVE_STATES
            except BrokerProtocolError:
                return order  # unreadable: left for reconciliation
            if not live:
                return order  # cancelled, filled, or on its way (pending_cancel)
            # still live: the cancel did not arrive; cancels are idempotent, and it goes to
            # the id the broker shows for this client id now
            bid = bo.broker_order_id
            send = True
        log.warning("cancel of %s: the broker's answer is not known yet", cid)
        return self._orders[cid]

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
            if client_order_id not in self._fills:  # a final order reopened: its booked fills
                self._fills[client_order_id] = {
                    str(r["execution_key"]): r
                    for r in self.journal.fills(client_order_id=client_order_id)
                }
            return await self._transition(
                order,
                EventKind.FORCED,
                state,
                reason=reason,
                broker_order_id=broker_order_id,
                check=False,
            )

    # ------------------------------------------------------------------ internals

    async def _check_risk(self, intent: OrderIntent, *, check: bool = True) -> None:
        """Check the risk limits (``check``) and reserve the order: from the moment this
        returns until it is journaled (or refused), ``_reserved`` counts it as an open order
        of every later check. The balance is read outside any lock; the check and the
        reservation run with no await in between (one event loop: no other submit can check
        meanwhile). A fill booked while the balance was read moves cash from the reserved
        open buys into the balance: the balance is read again (``_fill_epoch``)."""
        price = intent.limit_price or intent.stop_price
        if price is None and self.price_source is not None:
            price = self.price_source(intent.symbol)
        for _ in range(_BALANCE_READS):
            epoch = self._fill_epoch
            balance: Decimal | None = None
            if check and self.risk.check_balance and intent.side == "buy":
                try:
                    balance = await asyncio.to_thread(self.db.get_balance, intent.account)
                except Exception as exc:
                    log.warning("balance of %s unknown: %s", intent.account, why(exc))
            if epoch != self._fill_epoch:
                continue  # a fill was booked meanwhile: the balance may predate it
            if check:
                self._check_reserved(intent, price, balance)
            # the reservation: an open order of every later check until journaled or refused
            self._reserved[intent.client_order_id] = Order(intent, _S.PENDING, last_seq=0)
            if price is not None:
                self._ref_price[intent.client_order_id] = price
                self._last_price[intent.symbol] = price
            return
        raise OrderRejected(
            RejectReason.INSUFFICIENT_BALANCE,
            f"the balance of account {intent.account!r} changed by fills during each of "
            f"{_BALANCE_READS} reads; nothing was journaled: retry",
            field="account",
        )

    @exact
    def _check_reserved(
        self, intent: OrderIntent, price: Decimal | None, balance: Decimal | None
    ) -> None:
        """``check_risk`` against the open orders and the reservations (no await)."""
        reserved = Decimal(0)
        valued = balance is not None  # only the balance check values the open buys
        open_buys = open_sells = Decimal(0)  # per side: the worst case (validation.check_risk)
        for o in itertools.chain(self._orders.open.values(), self._reserved.values()):
            if is_final(o.state):
                continue
            if o.symbol == intent.symbol:
                if o.intent.side == "buy":
                    open_buys += o.remaining
                else:
                    open_sells += o.remaining
            if o.intent.side == "buy" and o.intent.account == intent.account:
                reserved += o.remaining * (self._reference_price(o) if valued else 0)
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

    def _reference_price(self, o: Order) -> Decimal:
        """What one unit of an open buy may still cost: its limit or stop, its average fill,
        the market's price, the price it was checked at, the symbol's last known price.
        None of them (an order of an earlier run, no quote, no fill): the new order is
        refused, never valued against a reservation of 0."""
        p = (
            o.intent.limit_price
            or o.intent.stop_price
            or o.avg_fill_price
            or (self.price_source(o.symbol) if self.price_source else None)
            or self._ref_price.get(o.client_order_id)
            or self._last_price.get(o.symbol)
        )
        if p is None:
            raise OrderRejected(
                RejectReason.NO_PRICE,
                f"the open {o.intent.order_type} buy {o.client_order_id} of {o.remaining} "
                f"{o.symbol} has no price to reserve its cost at; the balance check cannot "
                f"value it (give the manager a price source)",
                field="price",
            )
        return p


def _trigger_kind(order_type: str) -> str:
    """What makes an order execute: a stop price, a limit price, or the market."""
    return "stop" if order_type in ("stop", "stop_limit") else order_type
