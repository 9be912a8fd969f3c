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

**Phase 1, orders**: every journal order not in a final state is found at the broker (in the
fetched lists, else looked up by client id: also an order *without* a broker id, since the
crash may have come after the send). Found: its missing fills are journaled (inferred, once
per execution key), then its state is set to the broker's through ``BROKER_STATUS``
(``force_state(..., _reconciliation=True)``); transient statuses are skipped. Not found:
PENDING (never sent) or older than the broker's visibility window -> ``SUBMIT_FAILED``.
Open broker orders the journal does not know are cancelled, except a stop that protects a
position we hold, which is adopted (journaled under its client id).

**Phase 2, positions** (:mod:`wal.orders.stops`): a difference between the broker's net
position and the journal's gets a synthetic order ``orphan-{symbol}-{YYYYMMDD}``; every
position must then have its stop (else an emergency stop ``es-...``, else a market close).

**Result**: ``ReconciliationResult`` (frozen); errors are collected, every position is
processed. A second run right after a successful one reports all zeros and makes no write
call to the broker. ``dry_run=True`` fetches and reports what it would do, changing nothing.
The config, the result and the ids are in :mod:`wal.orders.reconcile_model` (imported from
here too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from wal.orders.broker import BrokerOrder
from wal.orders.errors import BrokerProtocolError, ReconciliationFatalError
from wal.orders.manager import OrderManager
from wal.orders.models import Fill, Order
from wal.orders.reconcile_model import (
    EMERGENCY_STOP_PREFIX,
    Counts,
    FilledTrade,
    ReconcilerConfig,
    ReconciliationResult,
    Snapshot,
    cancel_at_broker,
    emergency_stop_price,
    error_text,
    is_live,
    orphan_order_id,
    protects,
    remaining,
)
from wal.orders.states import OrderState, is_final
from wal.orders.stops import PositionReconciler

__all__ = [
    "EMERGENCY_STOP_PREFIX",
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
        self._positions = PositionReconciler(om, self.config, self._now)

    # ------------------------------------------------------------------ the run

    async def run(self, *, dry_run: bool = False) -> ReconciliationResult:
        """Fetch, then phases 1 and 2 (module docstring). On success trading resumes (not
        after a dry run); on ``ReconciliationFatalError`` (or any other error) it stays
        halted."""
        om = self.om
        before = om.halted
        om.halt("startup reconciliation in progress")
        try:
            await om.load()
            snap = await self._fetch()
            self._check_statuses(snap)
            c = Counts()
            await self._phase_orders(snap, c, dry_run)
            await self._positions.run(snap, c, dry_run, self._planned_fills)
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
            dry_run=dry_run,
            actions=tuple(c.actions),
        )
        log.info("startup reconciliation%s: %s", " (dry run)" if dry_run else "", result)
        return result

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
        cfg = self.config
        now = self._now()
        opened = [o.intent.created_at for o in self.om.open_orders()]
        since = min([now - timedelta(hours=cfg.recent_hours), *opened]) - _FILL_SLACK
        b = self.broker
        positions, open_orders, recent, fills = await asyncio.gather(
            self._call("fetching positions", b.get_positions),
            self._call("fetching open orders", b.get_open_orders),
            self._call(
                f"fetching the last {cfg.recent_hours:g} h of orders",
                lambda: b.get_recent_orders(cfg.recent_hours),
            ),
            self._call("fetching fills", lambda: b.get_fills(since)),
        )
        return Snapshot(list(positions), list(open_orders), list(recent), list(fills))

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
            await self._one_order(order, by_cid, fills_of, c, dry)
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
        if bo is None:
            bo = await self._lookup(cid)  # also without a broker id: the send may have happened
        if bo is None and order.broker_order_id is None and order.state is not _S.PENDING:
            window = self.broker.rules.visibility_window_seconds
            left = (order.updated_at + timedelta(seconds=window) - self._now()).total_seconds()
            if left > 0:  # the broker may not show it yet: wait its window out, look again
                await asyncio.sleep(left)
                bo = await self._lookup(cid)
        if bo is None:
            if order.broker_order_id is not None:
                c.errors.append(
                    f"order {cid} ({order.state.value}, broker id {order.broker_order_id}) is "
                    "not at the broker: left as it is"
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
        target = bo.state
        if target is None:
            return  # transient at the broker (pending cancel, replaced): the next run settles it
        if order.broker_order_id is None:
            c.adopted += 1
        missing = [f for f in fills_of.get(cid, []) if not om.known_execution(f)]
        changed = False
        state = order.state
        if state in (_S.PENDING, _S.SUBMITTING, _S.UNKNOWN) and (
            missing or target in (_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED)
        ):
            changed = True
            c.act(
                dry,
                f"{cid}: {state.value} -> accepted (found at the broker as {bo.broker_order_id})",
            )
            state = _S.ACCEPTED
            if not dry:
                order = await om.force_state(
                    cid,
                    _S.ACCEPTED,
                    reason=f"found at the broker by client id ({bo.status})",
                    broker_order_id=bo.broker_order_id,
                    _reconciliation=True,
                )
        if missing:
            c.fills += len(missing)
            c.act(dry, f"{cid}: journal {len(missing)} inferred fill(s)")
            if dry:
                self._planned_fills += missing
                filled = order.filled_quantity + sum((f.quantity for f in missing), Decimal(0))
                state = _S.FILLED if filled >= order.intent.quantity else _S.PARTIALLY_FILLED
            else:
                try:
                    await om.apply_fills(missing)
                except Exception as exc:
                    c.errors.append(f"order {cid}: inferred fills not journaled: {error_text(exc)}")
                got = om.get(cid)
                assert got is not None
                order = got
                state = order.state
        if target is _S.FILLED and bo.avg_fill_price is None:
            msg = f"order {cid}: the broker reports it filled without a fill price"
            log.critical("%s; applied anyway (the broker is the truth)", msg)
            c.errors.append(msg)
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
