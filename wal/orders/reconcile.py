"""``StartupReconciler``: the journal made to agree with the broker before anyone trades.

Runs once on every process start. From the moment it is created until a run succeeds, the
``OrderManager`` refuses ``submit`` (``TradingHalted``; cancels still work): trading on stale
state is worse than not trading. ::

    om = OrderManager(ddb, broker)
    rec = StartupReconciler(om)                  # submit now raises TradingHalted
    result = await rec.run()                     # ReconciliationFatalError: stays halted
    trades = rec.filled_trades_since(midnight)   # phase 3: a circuit breaker's inputs

**Fetch**: positions, open orders, the last ``recent_hours`` of orders and the fills since
then, in parallel (``asyncio.gather``), each call with ``fetch_timeout`` and
``fetch_attempts`` tries (backoff ``fetch_backoff``); a fetch that still fails, or a broker
status string that ``BROKER_STATUS`` does not know, is ``ReconciliationFatalError``.

A run is **passes** (up to ``run_attempts``): fetch, phase 1, phase 2, then the **end
check**, read from the broker at that moment: the journal's positions equal the broker's,
every position's stops on its reducing side sum exactly to it (none would open or grow one),
all its live reducing orders (take-profits too; an OCO group counted as its largest member)
could never execute more than it, every journal order is settled (final, or open at the
broker with the same filled quantity), every open broker order is open in the journal. Only
then does the run succeed; otherwise the next pass starts from a fresh fetch, and after the
last one it is ``ReconciliationFatalError``.

**Phase 1, orders**: every journal order not in a final state is found at the broker (in the
fetched lists, else looked up by client id: also an order *without* a broker id, since the
crash may have come after the send; a failed lookup raises, never "not found"). Found: its
missing executions are booked to it (fetched again when the snapshot's do not explain the
broker's filled quantity), then its state is set to the broker's through ``BROKER_STATUS``
(``force_state(..., _reconciliation=True)``), never a final one while the booked quantity
differs from the broker's; transient statuses are skipped. Not found: PENDING (never sent),
or still missing once the broker's visibility window has passed -> ``SUBMIT_FAILED``. Broker
evidence wins over a final journal state: a broker order under a journal client id that is
live, filled, or has executions the journal lacks has its executions booked (booking an
execution reopens a final order, under the broker's id the fill carries), then its state set
to the broker's (``force_state``). Open broker orders the journal does not know are
cancelled, except a stop that protects a position we hold (no larger than it), which is
adopted (journaled under its client id).

**Phase 2, positions** (:mod:`wal.orders.stops`): a difference between the broker's net
position and the journal's gets a synthetic order ``orphan-{symbol}-{YYYYMMDD}`` (never for a
symbol whose journal order has executions it could not book); then protection is made exact:
stops that would open or grow a position are cancelled, the reducing side is resized to the
position, an emergency stop ``es-...`` covers what is left (prices on the tick,
:mod:`wal.orders.ticks`), a stop of unknown outcome is looked up before anything else is
sent, and only definite refusals lead to a market close. A reducing order that is not a stop
(a take-profit) never executes past zero beside them: the emergency stop joins its stop-free
OCO group, or it is cancelled (confirmed) before the emergency stop or the close.

**Result**: ``ReconciliationResult`` (frozen); errors are collected, every position is
processed. A second run right after a successful one reports all zeros and makes no write
call to the broker. ``dry_run=True`` fetches and reports what it would do, changing nothing
(one pass, no end check). The config, the result and the ids are in
:mod:`wal.orders.reconcile_model` (imported from here too).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from wal.errors import WALWriteError
from wal.money import exact
from wal.orders.broker import BrokerOrder, BrokerPosition
from wal.orders.errors import BrokerProtocolError, ReconciliationFatalError
from wal.orders.manager import OrderManager
from wal.orders.models import Fill, Order
from wal.orders.reconcile_model import (
    EMERGENCY_STOP_PREFIX,
    ORPHAN_PREFIX,
    Counts,
    FilledTrade,
    ReconcilerConfig,
    ReconciliationResult,
    Snapshot,
    cancel_at_broker,
    emergency_stop_price,
    error_text,
    exposure,
    is_live,
    is_stop,
    is_synthetic,
    orphan_order_id,
    protects,
    reduces,
    remaining,
)
from wal.orders.states import OrderState, is_final
from wal.orders.stops import UNRESOLVED_STATES, PositionReconciler

__all__ = [
    "EMERGENCY_STOP_PREFIX",
    "ORPHAN_PREFIX",
    "FilledTrade",
    "ReconciliationResult",
    "ReconcilerConfig",
    "StartupReconciler",
    "emergency_stop_price",
    "orphan_order_id",
]

log = logging.getLogger("wal.orders.reconcile")

_S = OrderState
_T = TypeVar("_T")
_FILL_SLACK = timedelta(minutes=1)
_PLACED = (_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED)


class StartupReconciler:
    """Reconciles ``om``'s journal with its broker (module docstring). Creating it halts
    ``om`` until a run succeeds."""

    def __init__(
        self,
        om: OrderManager,
        config: ReconcilerConfig | None = None,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.om = om
        self.broker = om.broker
        self.config = config if config is not None else ReconcilerConfig()
        self._now = now or (lambda: datetime.now(UTC))
        om.halt("startup reconciliation has not run yet")
        self._positions = PositionReconciler(
            om, self.config, self._now, self._lookup, self._positions_now
        )

    # ------------------------------------------------------------------ the run

    async def run(self, *, dry_run: bool = False) -> ReconciliationResult:
        """Fetch, phases 1 and 2, then the end check (module docstring), up to
        ``run_attempts`` passes. On success trading resumes (not after a dry run); on
        ``ReconciliationFatalError`` (or any other error) it stays halted."""
        om = self.om
        before = om.halted
        om.halt("startup reconciliation in progress")
        c = Counts()
        try:
            await om.load()
            passes = 1 if dry_run else self.config.run_attempts
            problems: list[str] = []
            for attempt in range(passes):
                if attempt:
                    log.warning(
                        "reconciliation pass %d: the end check failed: %s",
                        attempt,
                        "; ".join(problems),
                    )
                    await asyncio.sleep(self.config.backoff(attempt - 1))
                snap = await self._fetch()
                self._check_statuses(snap)
                await self._phase_orders(snap, c, dry_run)
                await self._positions.run(snap, c, dry_run, self._planned_fills)
                if dry_run:
                    break
                problems = await self._end_check()  # success is the broker's state, checked
                if not problems:
                    break
                c.errors += [f"end check of pass {attempt + 1}: {p}" for p in problems]
            else:
                raise ReconciliationFatalError(
                    f"the journal and the broker still differ after {passes} passes: "
                    + "; ".join(problems)
                )
        except ReconciliationFatalError as exc:
            om.halt(f"startup reconciliation failed: {exc}")
            log.critical("startup reconciliation failed, trading stays halted: %s", exc)
            raise
        except Exception as exc:
            om.halt(f"startup reconciliation failed: {type(exc).__name__}: {exc}")
            log.critical("startup reconciliation failed, trading stays halted: %r", exc)
            raise
        if dry_run:
            if before is None:
                om.resume()
            else:
                om.halt(before)
        else:
            om.resume()
        for e in c.errors:
            log.error("reconciliation: %s", e)
        result = ReconciliationResult(
            orders_reconciled=c.reconciled,
            orders_adopted=c.adopted,
            orphans_detected=c.orphans,
            orphan_orders_canceled=c.orphan_cancels,
            emergency_stops_placed=c.stops,
            fills_inferred=c.fills,
            errors=tuple(c.errors),
            stops_canceled=c.stop_cancels,
            positions_closed=c.closed,
            exits_canceled=c.exit_cancels,
            dry_run=dry_run,
            actions=tuple(c.actions),
        )
        log.info("startup reconciliation%s: %s", " (dry run)" if dry_run else "", result)
        return result

    @exact
    async def _end_check(self) -> list[str]:
        """What is still wrong, read from the broker now: the journal's positions against the
        broker's, every position's stops exact (none that would open or grow one), every
        journal order settled (final, or live at the broker with the same filled quantity),
        every open broker order known to the journal. Empty: the run succeeded."""
        b = self.broker
        positions, open_orders = await asyncio.gather(
            self._call("fetching positions (end check)", b.get_positions),
            self._call("fetching open orders (end check)", b.get_open_orders),
        )
        problems: list[str] = []
        theirs = {p.symbol: p.quantity for p in positions if p.quantity != 0}
        mine = {s: q for s, q in self.om.positions().items() if q != 0}
        for sym in sorted(set(theirs) | set(mine)):
            if theirs.get(sym, Decimal(0)) != mine.get(sym, Decimal(0)):
                problems.append(
                    f"{sym}: the journal's position is {mine.get(sym, 0)}, the broker's "
                    f"{theirs.get(sym, 0)}"
                )
        stops = [bo for bo in open_orders if is_live(bo) and is_stop(bo)]
        for sym in sorted(set(theirs) | {bo.symbol for bo in stops}):
            pos = theirs.get(sym, Decimal(0))
            mine_stops = [bo for bo in stops if bo.symbol == sym]
            wrong = [bo.client_order_id for bo in mine_stops if not protects(bo, pos)]
            if wrong:
                problems.append(f"{sym}: stops {wrong} would open or grow the {pos} position")
            cover = sum((remaining(bo) for bo in mine_stops if protects(bo, pos)), Decimal(0))
            if pos != 0 and cover != abs(pos):
                problems.append(f"{sym}: the stops cover {cover} of the {pos} position")
        live = [bo for bo in open_orders if is_live(bo)]
        for sym, pos in sorted(theirs.items()):
            # every live reducing order (take-profits too) executing: never past zero
            worst = exposure(
                (bo.oco_group, remaining(bo))
                for bo in live
                if bo.symbol == sym and reduces(bo, pos)
            )
            if worst > abs(pos):
                problems.append(
                    f"{sym}: its live reducing orders could execute {worst} of the {pos} "
                    "position (an OCO group counted as its largest member)"
                )
        journal = {o.client_order_id: o for o in await asyncio.to_thread(self.om.journal.orders)}
        at_broker = {bo.client_order_id: bo for bo in open_orders}
        for cid, o in sorted(journal.items()):
            if is_final(o.state):
                continue
            bo = at_broker.get(cid)
            if bo is None:
                problems.append(
                    f"order {cid} is {o.state.value} in the journal, not open at the broker"
                )
            elif o.state in UNRESOLVED_STATES or o.filled_quantity != bo.filled_quantity:
                problems.append(
                    f"order {cid}: {o.state.value}, {o.filled_quantity} booked; the broker: "
                    f"{bo.status}, {bo.filled_quantity} filled"
                )
        for bo in open_orders:
            known = journal.get(bo.client_order_id)
            if known is None:
                problems.append(
                    f"broker order {bo.broker_order_id} ({bo.client_order_id}) is open and "
                    "not in the journal"
                )
            elif is_final(known.state):
                problems.append(
                    f"broker order {bo.broker_order_id} ({bo.client_order_id}) is open; the "
                    f"journal has it {known.state.value}"
                )
        return problems

    def filled_trades_since(self, since: datetime) -> list[FilledTrade]:
        """Phase 3: every journaled execution at or after ``since``, oldest first (what a
        circuit breaker needs to rebuild its daily loss and trade count)."""
        return [
            FilledTrade(
                client_order_id=str(r["client_order_id"]),
                execution_id=str(r["execution_id"]),
                symbol=str(r["symbol"]),
                side=str(r["side"]),
                quantity=Decimal(str(r["quantity"])),
                price=Decimal(str(r["price"])),
                executed_at=r["executed_at"],
                pnl=None if r.get("pnl") is None else Decimal(str(r["pnl"])),
                trade_id=r.get("trade_id"),
            )
            for r in self.om.journal.fills(since=since)
        ]

    # ------------------------------------------------------------------ fetching

    async def _call(self, what: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """One broker read with its timeout and tries; fatal when they are used up."""
        cfg = self.config
        last: BaseException | None = None
        for attempt in range(cfg.fetch_attempts):
            if attempt:
                await asyncio.sleep(cfg.backoff(attempt - 1))
            try:
                return await asyncio.wait_for(fn(), cfg.fetch_timeout)
            except Exception as exc:
                last = exc
                log.warning(
                    "reconciliation: %s failed (try %d): %s", what, attempt + 1, error_text(exc)
                )
        raise ReconciliationFatalError(
            f"{what} failed {cfg.fetch_attempts} times (last: {error_text(last)}); trading on "
            "stale state is worse than not trading"
        ) from last

    async def _fetch(self) -> Snapshot:
        """The broker's positions, orders and fills as one view: the positions are read
        before and after the lists, and the lists read again until both reads agree (a fill
        between them, a resting stop triggered meanwhile, would leave positions that the
        fills do not explain: phase 2 would take the difference for an orphan and protect a
        position that is gone). Never agreeing after ``fetch_attempts`` tries is fatal."""
        cfg = self.config
        b = self.broker
        before = await self._positions_now("fetching positions")
        for attempt in range(cfg.fetch_attempts):
            if attempt:
                await asyncio.sleep(cfg.backoff(attempt - 1))
            now = self._now()
            opened = [o.intent.created_at for o in self.om.open_orders()]
            since = min([now - timedelta(hours=cfg.recent_hours), *opened]) - _FILL_SLACK
            open_orders, recent, fills = await asyncio.gather(
                self._call("fetching open orders", b.get_open_orders),
                self._call(
                    f"fetching the last {cfg.recent_hours:g} h of orders",
                    lambda: b.get_recent_orders(cfg.recent_hours),
                ),
                self._call("fetching fills", functools.partial(b.get_fills, since)),
            )
            after = await self._positions_now("fetching positions again")
            if _net(after) == _net(before):
                return Snapshot(list(after), list(open_orders), list(recent), list(fills))
            log.warning("reconciliation: the broker's positions moved while it was read; again")
            before = after
        raise ReconciliationFatalError(
            f"the broker's positions moved during each of {cfg.fetch_attempts} reads of its "
            "orders and fills: no consistent view to reconcile against (markets moving fast "
            "at startup?); start again"
        )

    async def _positions_now(self, what: str = "re-reading positions") -> list[BrokerPosition]:
        return list(await self._call(what, self.broker.get_positions))

    @staticmethod
    def _check_statuses(snap: Snapshot) -> None:
        for bo in [*snap.open_orders, *snap.recent_orders]:
            try:
                bo.state  # noqa: B018 - map_status raises for an unknown string
            except BrokerProtocolError as exc:
                raise ReconciliationFatalError(
                    f"broker order {bo.broker_order_id} (client id {bo.client_order_id}): {exc}"
                ) from None

    async def _lookup(self, cid: str) -> BrokerOrder | None:
        bo = await self._call(
            f"looking up client id {cid}", lambda: self.broker.get_order_by_client_id(cid)
        )
        if bo is not None:
            try:
                bo.state  # noqa: B018
            except BrokerProtocolError as exc:
                raise ReconciliationFatalError(f"client id {cid}: {exc}") from None
        return bo

    # ------------------------------------------------------------------ phase 1

    @exact
    async def _phase_orders(self, snap: Snapshot, c: Counts, dry: bool) -> None:
        om = self.om
        journal = {o.client_order_id: o for o in await asyncio.to_thread(om.journal.orders)}
        by_cid: dict[str, BrokerOrder] = {}
        for bo in [*snap.recent_orders, *snap.open_orders]:  # the open list is the freshest
            by_cid[bo.client_order_id] = bo
        fills_of: dict[str, list[Fill]] = {}
        for f in snap.fills:
            fills_of.setdefault(f.client_order_id, []).append(f)
        self._planned_fills: list[Fill] = []
        for order in [o for o in journal.values() if not is_final(o.state)]:
            if await is_synthetic(om.journal, order):
                continue  # a synthetic order, never sent: phase 2 completes it
            await self._one_order(order, by_cid, fills_of, c, dry)
        # broker evidence wins over a final journal state: a live, filled or executed broker
        # order under a journal client id is settled, never skipped
        for cid in sorted(set(by_cid) | set(fills_of)):
            final = journal.get(cid)
            if final is None or not is_final(final.state):
                continue
            if await is_synthetic(om.journal, final):
                continue
            found = by_cid.get(cid)
            if found is None:
                found = await self._lookup(cid)
            if found is not None:
                await self._settle(final, found, fills_of, c, dry)
        # open broker orders the journal does not know: cancel, or adopt a protective stop
        positions = {p.symbol: p.quantity for p in snap.positions}
        adopted_for: set[str] = set()
        for bo in snap.open_orders:
            if bo.client_order_id in journal or not is_live(bo):
                continue
            pos = positions.get(bo.symbol, Decimal(0))
            if protects(bo, pos) and remaining(bo) <= abs(pos) and bo.symbol not in adopted_for:
                adopted_for.add(bo.symbol)
                c.adopted += 1
                c.act(
                    dry,
                    f"adopt stop {bo.broker_order_id} ({bo.client_order_id}) "
                    f"protecting {pos} {bo.symbol}",
                )
                if not dry:
                    try:
                        await om.adopt_external(bo, reason="a stop protecting a held position")
                    except Exception as exc:
                        c.errors.append(f"adopting stop {bo.broker_order_id}: {error_text(exc)}")
                else:
                    self._planned_fills += [f for f in fills_of.get(bo.client_order_id, [])]
                continue
            c.orphan_cancels += 1
            c.cancelled.add(bo.broker_order_id)
            c.act(
                dry,
                f"cancel unknown broker order {bo.broker_order_id} "
                f"({bo.client_order_id}: {bo.side} {bo.quantity} {bo.symbol} "
                f"{bo.order_type})",
            )
            if not dry:
                await cancel_at_broker(self.broker, bo, c, self.config.fetch_timeout)

    async def _one_order(
        self,
        order: Order,
        by_cid: dict[str, BrokerOrder],
        fills_of: dict[str, list[Fill]],
        c: Counts,
        dry: bool,
    ) -> None:
        om = self.om
        cid = order.client_order_id
        bo = by_cid.get(cid)
        if bo is None:  # also without a broker id: the send may have happened
            bo = await self._lookup(cid)  # a failed lookup raises: never taken for "not found"
        exists = False  # the broker answered "duplicate client id": it has it
        if bo is None and order.broker_order_id is None and order.state is not _S.PENDING:
            # the window runs from the LAST send (the manager's rule: a resend journals its
            # own SUBMITTED), never from updated_at (whatever event came last); every call
            # that sent it has ended by now (an earlier process, or this run's own submit)
            sent_by, exists = await om.send_evidence(order, self._now())
            deadline = sent_by + timedelta(seconds=self.broker.rules.visibility_window_seconds)
            left = (deadline - self._now()).total_seconds()
            while bo is None and left > 0:  # the broker may not show it yet: wait its window out
                await asyncio.sleep(left)
                bo = await self._lookup(cid)  # asked after the window: a "not found" counts
                left = (deadline - self._now()).total_seconds()
        if bo is None:
            if order.broker_order_id is not None or exists:
                c.errors.append(
                    f"order {cid} ({order.state.value}, broker id {order.broker_order_id}) is "
                    "not at the broker: left as it is"
                    if not exists
                    else f"order {cid} ({order.state.value}): the broker answered duplicate "
                    "client id for it (it exists there) but does not show it: left as it is, "
                    "never submit_failed"
                )
                return
            why = (
                "never sent (the crash came before the broker call)"
                if order.state is _S.PENDING
                else "not at the broker after its visibility window"
            )
            c.reconciled += 1
            c.act(dry, f"{cid}: {order.state.value} -> submit_failed ({why})")
            if not dry:
                await om.force_state(cid, _S.SUBMIT_FAILED, reason=why, _reconciliation=True)
            return
        await self._settle(order, bo, fills_of, c, dry)

    @exact
    async def _executions(
        self, order: Order, bo: BrokerOrder, fills_of: dict[str, list[Fill]]
    ) -> tuple[list[Fill], Decimal]:
        """The broker's executions of ``order`` the journal lacks, and the quantity the
        journal has booked. The fetch is authoritative: when the snapshot's executions do
        not explain the broker's filled quantity, they are fetched again from the order's
        creation on."""
        cid = order.client_order_id
        rules = self.broker.rules
        rows = await asyncio.to_thread(self.om.journal.fills, client_order_id=cid)
        booked = {str(r["execution_key"]): str(r["execution_id"]) for r in rows}
        booked_qty = sum((Decimal(str(r["quantity"])) for r in rows), Decimal(0))
        execs = fills_of.get(cid, [])
        if sum((f.quantity for f in execs), Decimal(0)) < bo.filled_quantity - booked_qty:
            since = min(bo.created_at, order.intent.created_at) - _FILL_SLACK
            fetched = await self._call(
                f"fetching the fills of {cid}", lambda: self.broker.get_fills(since)
            )
            execs = [f for f in fetched if f.client_order_id == cid]
        # missing: not booked under its key, or a later correction of what is (an earlier
        # version sent again after its correction is not)
        missing = [
            f
            for f in execs
            if (had := booked.get(rules.execution_key(f.execution_id))) is None
            or rules.supersedes(f.execution_id, had)
        ]
        return missing, booked_qty

    @exact
    async def _settle(
        self,
        order: Order,
        bo: BrokerOrder,
        fills_of: dict[str, list[Fill]],
        c: Counts,
        dry: bool,
    ) -> None:
        """Make a journal order the broker's: its executions booked to it, then its state.
        Never a final state while the booked quantity differs from the broker's filled
        quantity (the broker's figure is authoritative)."""
        om = self.om
        cid = order.client_order_id
        target = bo.state
        if target is None:
            return  # transient at the broker (pending cancel, replaced): the next run settles it
        state = order.state
        agreed = is_final(state) and state is target
        if agreed and order.filled_quantity == bo.filled_quantity and cid not in fills_of:
            return  # the journal agrees, and nothing of it was executed in the fetched window
        missing, booked = await self._executions(order, bo, fills_of)
        if agreed and not missing and booked == bo.filled_quantity:
            return
        if order.broker_order_id is None and state in UNRESOLVED_STATES:
            c.adopted += 1
        changed = False
        filled = booked
        if missing:
            c.fills += len(missing)
            c.act(dry, f"{cid}: book {len(missing)} broker execution(s) to it")
            if dry:
                self._planned_fills += missing
                filled = booked + sum((f.quantity for f in missing), Decimal(0))
                state = _S.FILLED if filled >= order.intent.quantity else _S.PARTIALLY_FILLED
            else:
                try:
                    await om.apply_fills(missing)
                except WALWriteError:
                    raise  # the log failed: trading halts
                except Exception as exc:
                    c.errors.append(f"order {cid}: executions not booked: {error_text(exc)}")
                got = om.get(cid)
                assert got is not None
                order = got
                state = order.state
                filled = order.filled_quantity
        if target is _S.FILLED and bo.avg_fill_price is None:
            msg = f"order {cid}: the broker reports it filled without a fill price"
            log.critical(msg)
            c.errors.append(msg)
        if filled != bo.filled_quantity:
            msg = (
                f"order {cid}: the broker reports {bo.filled_quantity} filled, the journal has "
                f"{filled} booked; its executions are missing"
            )
            log.critical(msg)
            c.errors.append(msg)
            c.unsettled.add(order.symbol)  # no synthetic orphan covers what belongs to it
            if is_final(target):
                return  # never final while the booked fills differ from the broker's figure
        if state is not target and not (target is _S.ACCEPTED and state is _S.PARTIALLY_FILLED):
            changed = True
            c.act(dry, f"{cid}: {state.value} -> {target.value} (broker: {bo.status})")
            if not dry:
                await om.force_state(
                    cid,
                    target,
                    reason=f"broker status {bo.status}",
                    broker_order_id=bo.broker_order_id,
                    _reconciliation=True,
                )
        if changed or missing:
            c.reconciled += 1


def _net(positions: list[BrokerPosition]) -> dict[str, Decimal]:
    """Symbol -> quantity of the positions held (a flat one is no position)."""
    return {p.symbol: p.quantity for p in positions if p.quantity != 0}
