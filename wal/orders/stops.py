"""Startup reconciliation, phase 2: every position explained by the journal, and protected.

A difference between the broker's net position and the journal's gets a synthetic order
``orphan-{symbol}-{YYYYMMDD}`` (``-2``, ``-3``... if that id is used up today) with one
synthetic fill at the broker's entry price; the id is checked before creation, so restarts
do not make duplicates. Every position must then have its stop: the stops on the other side
must cover it exactly, else the emergency stops (client ids ``es-...``) are replaced by one
stop ``emergency_stop_pct`` beyond the entry price; after ``stop_attempts`` failed attempts
the position is closed at market. Emergency stops of positions that are gone are cancelled.

``StartupReconciler`` (:mod:`wal.orders.reconcile`) runs it after phase 1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from wal.orders.broker import BrokerOrder, BrokerPosition
from wal.orders.manager import OrderManager
from wal.orders.models import Fill, Order, OrderIntent
from wal.orders.reconcile_model import (
    EMERGENCY_STOP_PREFIX,
    Counts,
    ReconcilerConfig,
    Snapshot,
    cancel_at_broker,
    emergency_stop_id,
    emergency_stop_price,
    error_text,
    is_live,
    orphan_order_id,
    protects,
    remaining,
    symbol_tag,
)
from wal.orders.states import OrderState, is_final

__all__ = ["PositionReconciler"]

log = logging.getLogger("wal.orders.reconcile")

_S = OrderState


class PositionReconciler:
    """Phase 2 of a startup reconciliation of ``om`` (module docstring)."""

    def __init__(
        self, om: OrderManager, config: ReconcilerConfig, now: Callable[[], datetime]
    ) -> None:
        self.om = om
        self.broker = om.broker
        self.config = config
        self._now = now

    async def run(self, snap: Snapshot, c: Counts, dry: bool, planned_fills: list[Fill]) -> None:
        """Orphan positions, then every position's stop. ``planned_fills``: the fills phase 1
        would have journaled (a dry run)."""
        om = self.om
        now = self._now()
        broker_pos = {p.symbol: p for p in snap.positions if p.quantity != 0}
        mine = dict(om.positions())
        for f in planned_fills:  # a dry run: what phase 1 would have journaled
            signed = f.quantity if f.side == "buy" else -f.quantity
            mine[f.symbol] = mine.get(f.symbol, Decimal(0)) + signed
        for sym in sorted(set(broker_pos) | set(mine)):
            have = broker_pos[sym].quantity if sym in broker_pos else Decimal(0)
            diff = have - mine.get(sym, Decimal(0))
            if diff == 0:
                continue
            c.orphans += 1
            try:
                for _ in range(5):  # an unfinished synthetic order is completed first
                    await self._orphan(sym, diff, broker_pos.get(sym), now, c, dry)
                    if dry:
                        break
                    diff = have - om.positions().get(sym, Decimal(0))
                    if diff == 0:
                        break
                else:
                    c.errors.append(f"orphan position {sym}: still {diff} off after 5 tries")
            except Exception as exc:
                c.errors.append(f"orphan position {sym}: {error_text(exc)}")
        # every position gets exactly its stop; emergency stops of closed positions go
        known = {o.client_order_id: o for o in await asyncio.to_thread(om.journal.orders)}
        live = [
            bo for bo in snap.open_orders if is_live(bo) and bo.broker_order_id not in c.cancelled
        ]
        for sym in sorted(broker_pos):
            try:
                await self._protect(broker_pos[sym], live, known, now, c, dry)
            except Exception as exc:
                c.errors.append(f"protecting {sym}: {error_text(exc)}")
        for bo in live:
            if bo.broker_order_id in c.cancelled:
                continue
            pos = broker_pos[bo.symbol].quantity if bo.symbol in broker_pos else Decimal(0)
            if bo.client_order_id.startswith(EMERGENCY_STOP_PREFIX) and not protects(bo, pos):
                c.stop_cancels += 1
                c.cancelled.add(bo.broker_order_id)
                c.act(
                    dry,
                    f"cancel emergency stop {bo.client_order_id}: no "
                    f"{bo.symbol} position left for it to protect",
                )
                if not dry:
                    await self._cancel_own(bo, c)

    async def _orphan(
        self,
        sym: str,
        diff: Decimal,
        bp: BrokerPosition | None,
        now: datetime,
        c: Counts,
        dry: bool,
    ) -> None:
        om = self.om
        price = bp.avg_entry_price if bp is not None else None
        if price is None or price <= 0:
            jp = om.entry_price(sym)
            if bp is not None:
                log.critical("broker position %s has no entry price; using the journal's", sym)
                c.errors.append(f"broker position {sym} has no entry price")
            price = jp
        if price is None or price <= 0:
            raise ValueError(f"no price to journal the orphan {sym} position at")
        n = 1
        while True:
            cid = orphan_order_id(sym, now, n)
            existing = await asyncio.to_thread(om.journal.order, cid)
            if existing is None or existing.filled_quantity < existing.intent.quantity:
                break
            n += 1
        if existing is not None:
            intent = existing.intent
        else:
            intent = OrderIntent(
                symbol=sym,
                side="buy" if diff > 0 else "sell",
                quantity=abs(diff),
                order_type="market",
                client_order_id=cid,
                created_at=now,
            )
        c.act(
            dry,
            f"orphan {sym}: broker and journal differ by {diff}; synthetic "
            f"order {cid} ({intent.side} {intent.quantity} at {price})",
        )
        if dry:
            return
        fill = Fill(
            execution_id=cid,
            client_order_id=cid,
            symbol=sym,
            side=intent.side,
            quantity=intent.quantity,
            price=price,
            executed_at=now,
        )
        await om.record_synthetic(
            intent, fill, reason=f"synthetic: the broker's {sym} position is not in the journal"
        )

    async def _protect(
        self,
        bp: BrokerPosition,
        live: list[BrokerOrder],
        known: dict[str, Order],
        now: datetime,
        c: Counts,
        dry: bool,
    ) -> None:
        pos = bp.quantity
        stops = [bo for bo in live if bo.symbol == bp.symbol and protects(bo, pos)]
        if sum((remaining(b) for b in stops), Decimal(0)) == abs(pos):
            return  # protected, exactly
        ours = [b for b in stops if b.client_order_id.startswith(EMERGENCY_STOP_PREFIX)]
        for b in ours:
            c.stop_cancels += 1
            c.cancelled.add(b.broker_order_id)
            c.act(
                dry,
                f"cancel emergency stop {b.client_order_id}: it does not cover "
                f"the {pos} {bp.symbol} position",
            )
            if not dry:
                await self._cancel_own(b, c)
        cover = sum((remaining(b) for b in stops if b not in ours), Decimal(0))
        need = abs(pos) - cover
        if need < 0:
            c.errors.append(
                f"{bp.symbol}: stops cover {cover}, more than the position {pos}; left as they are"
            )
            return
        if need == 0:
            return
        await self._emergency_stop(bp, need, known, now, c, dry)

    async def _emergency_stop(
        self,
        bp: BrokerPosition,
        qty: Decimal,
        known: dict[str, Order],
        now: datetime,
        c: Counts,
        dry: bool,
    ) -> None:
        om = self.om
        side = "sell" if bp.quantity > 0 else "buy"
        pct = self.config.emergency_stop_pct
        entry = bp.avg_entry_price
        if entry is None or entry <= 0:
            entry = om.entry_price(bp.symbol) or Decimal(0)
        price = emergency_stop_price(entry, bp.quantity, pct) if entry > 0 else None
        prefix = f"{EMERGENCY_STOP_PREFIX}{symbol_tag(bp.symbol)}-{now.astimezone(UTC):%Y%m%d}-"
        used = {cid for cid in known if cid.startswith(prefix)}
        n = len(used) + 1
        if dry:
            c.stops += 1
            c.act(
                dry,
                f"emergency stop {side} {qty} {bp.symbol} @ {price} ({pct * 100:g} % from {entry})",
            )
            return
        for attempt in range(self.config.stop_attempts if price is not None else 0):
            cid = emergency_stop_id(bp.symbol, now, n)
            while cid in used:
                n += 1
                cid = emergency_stop_id(bp.symbol, now, n)
            used.add(cid)
            intent = OrderIntent(
                symbol=bp.symbol,
                side=side,
                quantity=qty,
                order_type="stop",
                stop_price=price,
                time_in_force="gtc",
                client_order_id=cid,
                created_at=now,
            )
            try:
                order = await om.submit(intent, protective=True)
            except Exception as exc:
                c.errors.append(
                    f"emergency stop {cid} (try {attempt + 1}) for {bp.symbol}: {error_text(exc)}"
                )
                continue
            if order.state in (_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED):
                c.stops += 1
                c.act(
                    dry,
                    f"emergency stop {cid}: {side} {qty} {bp.symbol} @ {price} "
                    f"({pct * 100:g} % from {entry})",
                )
                return
            c.errors.append(
                f"emergency stop {cid} (try {attempt + 1}) for {bp.symbol} ended "
                f"{order.state.value}: {order.reason or ''}".rstrip(": ")
            )
        # never leave a position unprotected: close it at market
        close = OrderIntent(
            symbol=bp.symbol,
            side=side,
            quantity=qty,
            order_type="market",
            client_order_id="close-"
            + emergency_stop_id(bp.symbol, now, n)[len(EMERGENCY_STOP_PREFIX) :],
            created_at=now,
        )
        c.act(dry, f"close {bp.symbol} at market ({side} {qty}): no stop could be placed")
        closed: Order | None = None
        try:
            closed = await om.submit(close, protective=True)
        except Exception as exc:
            c.errors.append(f"closing {bp.symbol} at market: {error_text(exc)}")
        if closed is not None and closed.state in (_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED):
            c.closed += 1
        else:
            msg = f"position {bp.quantity} {bp.symbol} is UNPROTECTED: stop and market close failed"
            log.critical(msg)
            c.errors.append(msg)

    async def _cancel_own(self, bo: BrokerOrder, c: Counts) -> None:
        om = self.om
        if om.get(bo.client_order_id) is not None and any(
            o.client_order_id == bo.client_order_id for o in om.open_orders()
        ):
            try:
                order = await om.cancel(bo.client_order_id)
                for attempt in range(self.config.fetch_attempts):  # settle it in the journal
                    if is_final(order.state):
                        return
                    await asyncio.sleep(self.config.backoff(attempt))
                    order = await om.refresh(bo.client_order_id)
                c.errors.append(f"cancelled {bo.client_order_id}: still {order.state.value}")
            except Exception as exc:
                c.errors.append(f"cancelling {bo.client_order_id}: {error_text(exc)}")
            return
        await cancel_at_broker(self.broker, bo, c, self.config.fetch_timeout)
