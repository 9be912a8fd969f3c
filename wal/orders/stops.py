"""Startup reconciliation, phase 2: every position explained by the journal, protected exactly.

**Orphans.** A difference between the broker's net position and the journal's gets a
synthetic order ``orphan-{symbol}-{YYYYMMDD}`` (``-2``, ``-3``... if that id is used up today)
with one synthetic fill at the broker's entry price. A half-written one (a crash between its
intent and its fill) is completed, never skipped for a second one.

**Protection is exact.** For each symbol, from the broker's own list of live orders:

1. Every active stop that would open or grow a position (a buy stop under a long, a sell stop
   under a short, any stop of a symbol without a position; user stops too) is cancelled,
   the reason journaled first (a ``forced`` event that keeps the order's state).
2. The stops on the reducing side must sum to the position. When they don't: the emergency
   stops (``es-...``) are cancelled; the user's stops are kept oldest first while they fit;
   the one that does not fit is resized (cancelled, then replaced by a stop of what is left
   at its own stop price); what is still uncovered gets one emergency stop
   ``emergency_stop_pct`` beyond the entry price (on the instrument's tick, rounded away from
   the market). A cancel that is not confirmed stops the work on that symbol: nothing is
   placed on top of a stop that may still be live.
3. A stop whose outcome is unknown (a timeout after the broker may have accepted it) is
   resolved by lookup by client id (within the broker's visibility window) before anything
   else is sent; a failed lookup is never "not found": nothing more is sent for that symbol.
   Only definite refusals count toward ``stop_attempts``; after that many the position is
   closed at market.
4. No stop is sent for a symbol with a journal order whose outcome is still unresolved.
5. **Never past zero.** A reducing order that is not a stop (a bracket's take-profit
   ``tp1-...``, a user's limit sell against a long) executes too. After the reconciler acts,
   all the live reducing orders of a symbol filling together (``exposure``: an OCO group
   counts as its largest member, reduce on fill) never execute more than the position, and
   the stops still cover it exactly. Protection beats profit-taking:

   * before an emergency stop is sent, on a broker that declares OCO groups, it joins the
     group of a take-profit it covers (``_link``: every live member of the group a reducing
     order that is not a stop, none larger than the stop; never a group holding a stop, whose
     fill would reduce the emergency stop and leave part of the position bare); then what
     would still execute more than the position is cancelled (``_trim_exits``: newest first,
     those whose cancel lowers the worst case first; ``exits_canceled``);
   * before a market close, the same against what the close leaves (a whole close: every
     such order, or a take-profit left on the flat position would open the opposite one);
   * with the stops already exact, the same against the position.

   Each cancel journals its reason first and is confirmed final before anything is placed;
   an unconfirmed one stops the work on that symbol (as for a stop). The end check
   (:mod:`wal.orders.reconcile`) fails a position whose live reducing orders could execute
   more than it, so a pass succeeds only when protection is exact and never past zero.

``StartupReconciler`` (:mod:`wal.orders.reconcile`) runs it after phase 1, then checks the
result from the broker's state (its end check) and runs again within its budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from wal.errors import WALWriteError
from wal.money import exact
from wal.orders.broker import BrokerOrder, BrokerPosition
from wal.orders.errors import OrderRejected, ReconciliationFatalError
from wal.orders.manager import OrderManager
from wal.orders.models import Fill, Order, OrderIntent
from wal.orders.reconcile_model import (
    CLOSE_PREFIX,
    EMERGENCY_STOP_PREFIX,
    Counts,
    ReconcilerConfig,
    Snapshot,
    emergency_stop_id,
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
    symbol_tag,
)
from wal.orders.states import OrderState, is_final

__all__ = ["Lookup", "PositionReconciler", "UNRESOLVED_STATES"]

log = logging.getLogger("wal.orders.reconcile")

_S = OrderState
Lookup = Callable[[str], Awaitable[BrokerOrder | None]]
Positions = Callable[[], Awaitable[list[BrokerPosition]]]
Item = tuple[str | None, Decimal]  # a live reducing order: (its OCO group or None, what is left)
UNRESOLVED_STATES = (_S.PENDING, _S.SUBMITTING, _S.UNKNOWN)  # the broker may hold it or not
_PLACED = (_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED)


class _Unresolved(Exception):
    """A stop or close whose outcome is unknown: nothing more may be sent for the symbol."""


class PositionReconciler:
    """Phase 2 of a startup reconciliation of ``om`` (module docstring). ``lookup``: the
    reconciler's lookup by client id (its timeout and tries; raises when they fail)."""

    def __init__(
        self,
        om: OrderManager,
        config: ReconcilerConfig,
        now: Callable[[], datetime],
        lookup: Lookup,
        positions: Positions,
    ) -> None:
        self.om = om
        self.broker = om.broker
        self.config = config
        self._now = now
        self._lookup = lookup
        self._positions_now = positions
        self._gone: set[str] = set()  # broker ids whose cancel this pass confirmed (or plans)

    @exact
    async def run(self, snap: Snapshot, c: Counts, dry: bool, planned_fills: list[Fill]) -> None:
        """Orphan positions, then every symbol's stops. ``planned_fills``: the fills phase 1
        would have journaled (a dry run)."""
        om = self.om
        now = self._now()
        self._gone = set()  # a new pass: only its own confirmed cancels count
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
            if sym in c.unsettled:  # the difference is an order's unbooked executions
                c.errors.append(
                    f"orphan position {sym}: not journaled: a journal order of {sym} has "
                    "executions the broker reports and the journal lacks"
                )
                continue
            if not dry:  # acted on only while the broker still holds what the snapshot says
                now_held = {p.symbol: p.quantity for p in await self._positions_now()}
                if now_held.get(sym, Decimal(0)) != have:
                    c.errors.append(
                        f"orphan position {sym}: the broker's position moved during the "
                        f"reconciliation ({have} -> {now_held.get(sym, Decimal(0))}): left to "
                        "the next pass"
                    )
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
        known = {o.client_order_id: o for o in await asyncio.to_thread(om.journal.orders)}
        live = [
            bo
            for bo in snap.open_orders
            if is_live(bo) and is_stop(bo) and bo.broker_order_id not in c.cancelled
        ]
        # reducing orders that are not stops (a take-profit): never more than the position;
        # one whose cancel is not confirmed (phase 1's, an earlier pass's) counts as live
        others = [bo for bo in snap.open_orders if is_live(bo) and not is_stop(bo)]
        groups: dict[str, list[BrokerOrder]] = {}  # OCO group -> its live members, all of them
        for bo in snap.open_orders:
            if bo.oco_group is not None and is_live(bo):
                groups.setdefault(bo.oco_group, []).append(bo)
        taken = set(known)  # client ids in use: a new stop never reuses one
        unresolved = {o.symbol for o in known.values() if o.state in UNRESOLVED_STATES}
        for sym in sorted(set(broker_pos) | {bo.symbol for bo in live}):
            if sym in unresolved and not dry:
                c.errors.append(
                    f"{sym}: a journal order's outcome is still unknown; no stop is sent or "
                    "cancelled until it is resolved"
                )
                continue
            pos = broker_pos[sym].quantity if sym in broker_pos else Decimal(0)
            stops = [bo for bo in live if bo.symbol == sym]
            exits = [bo for bo in others if bo.symbol == sym and reduces(bo, pos)]
            try:
                await self._protect(
                    sym, broker_pos.get(sym), pos, stops, exits, groups, taken, now, c, dry
                )
            except _Unresolved as exc:
                c.errors.append(f"protecting {sym}: {exc}")
            except WALWriteError:
                raise  # the log failed: trading halts
            except Exception as exc:
                c.errors.append(f"protecting {sym}: {error_text(exc)}")

    # ------------------------------------------------------------------ orphans

    @exact
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
            if existing is None:
                break
            # a half-written one (its intent journaled, its fill not) is completed, not skipped;
            # never an order that was sent under that id (not ours: is_synthetic)
            if (
                not is_final(existing.state)
                and existing.filled_quantity < existing.intent.quantity
                and await is_synthetic(om.journal, existing)
            ):
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

    # ------------------------------------------------------------------ exact protection

    @exact
    async def _protect(
        self,
        sym: str,
        bp: BrokerPosition | None,
        pos: Decimal,
        stops: list[BrokerOrder],
        exits: list[BrokerOrder],
        groups: dict[str, list[BrokerOrder]],
        taken: set[str],
        now: datetime,
        c: Counts,
        dry: bool,
    ) -> None:
        # 1. stops that would open or grow a position: cancelled, user stops too
        for bo in [b for b in stops if not protects(b, pos)]:
            why = (
                f"no {sym} position: it would open one"
                if pos == 0
                else f"a {bo.side} stop would grow the {pos} {sym} position"
            )
            await self._cancel_stop(bo, why, c, dry)
        if pos == 0 or bp is None:
            return
        # 2. the reducing side sums to the position exactly
        reducing = [b for b in stops if protects(b, pos)]
        size = abs(pos)
        if sum((remaining(b) for b in reducing), Decimal(0)) == size:
            # protected exactly; what else reduces it never executes more beside the stops
            await self._trim_exits(sym, exits, [_item(b) for b in reducing], size, c, dry)
            return
        ours = [b for b in reducing if b.client_order_id.startswith(EMERGENCY_STOP_PREFIX)]
        users = sorted((b for b in reducing if b not in ours), key=lambda b: b.created_at)
        for b in ours:
            await self._cancel_stop(b, f"it does not make the {pos} {sym} cover exact", c, dry)
        cover = Decimal(0)
        kept: list[Item] = []  # the stops that stay live
        side = "sell" if pos > 0 else "buy"
        for b in users:
            if cover + remaining(b) <= size:
                cover += remaining(b)
                kept.append(_item(b))
                continue
            await self._cancel_stop(
                b, f"resized: the {sym} stops would cover more than the position {pos}", c, dry
            )
            left = size - cover
            if left > 0 and b.stop_price is not None:
                price = self.config.ticks.round_stop(sym, b.stop_price, side)
                what = f"resizes {b.client_order_id}"
                if await self._place(bp, side, left, price, taken, now, c, dry, what):
                    cover = size  # else an emergency stop (or the close) covers what is left
                    kept.append((None, left))
        need = size - cover
        if need > 0:
            await self._emergency_stop(bp, side, need, kept, exits, groups, taken, now, c, dry)
        else:
            await self._trim_exits(sym, exits, kept, size, c, dry)

    @exact
    async def _trim_exits(
        self,
        sym: str,
        exits: list[BrokerOrder],
        stops: list[Item],
        limit: Decimal,
        c: Counts,
        dry: bool,
    ) -> None:
        """Cancel reducing orders that are not stops (``exits``) until they and ``stops``
        can execute at most ``limit`` together (``exposure``: an OCO group counts as its
        largest member): newest first, those whose cancel lowers that worst case before
        any other. Protection beats profit-taking. Each cancel is confirmed final before
        the next step (else ``_Unresolved``: nothing is placed on top of it)."""
        left = [b for b in exits if b.broker_order_id not in self._gone]

        def worst(orders: list[BrokerOrder]) -> Decimal:
            return exposure([*stops, *(_item(b) for b in orders)])

        while left and worst(left) > limit:
            newest = sorted(left, key=lambda b: (b.created_at, b.client_order_id), reverse=True)
            pick = next(
                (b for b in newest if worst([o for o in left if o is not b]) < worst(left)),
                newest[0],
            )
            why = (
                f"with the {sym} stops it could execute {worst(left)} of a position that "
                f"leaves {limit} to reduce: protection beats profit-taking"
            )
            await self._cancel_stop(pick, why, c, dry, kind="order")
            left.remove(pick)

    def _link(
        self,
        exits: list[BrokerOrder],
        groups: dict[str, list[BrokerOrder]],
        qty: Decimal,
    ) -> str | None:
        """The OCO group an emergency stop of ``qty`` joins, or None: only on a broker that
        declares OCO groups, only a group whose every live member is one of ``exits`` (a
        reducing order that is not a stop: a stop member's fill would reduce the emergency
        stop and leave part of the position bare) and none larger than ``qty`` (so the
        group still executes at most ``qty``). The largest such group, by name on a tie."""
        if self.broker.rules.oco_groups is not True:
            return None
        mine = {b.broker_order_id for b in exits if b.broker_order_id not in self._gone}
        fits: list[tuple[Decimal, str]] = []
        for group, members in groups.items():
            live = [m for m in members if m.broker_order_id not in self._gone]
            if live and all(m.broker_order_id in mine for m in live):
                largest = max(remaining(m) for m in live)
                if largest <= qty:
                    fits.append((-largest, group))
        return min(fits)[1] if fits else None

    async def _cancel_stop(
        self, bo: BrokerOrder, why: str, c: Counts, dry: bool, kind: str = "stop"
    ) -> None:
        """Cancel a live stop (``kind`` "order": a reducing order that is not a stop), the
        reason journaled first; confirmed, else ``_Unresolved``."""
        if kind == "stop":
            c.stop_cancels += 1
        else:
            c.exit_cancels += 1
        c.cancelled.add(bo.broker_order_id)
        c.act(
            dry,
            f"cancel {kind} {bo.client_order_id} ({bo.side} {remaining(bo)} {bo.symbol}): {why}",
        )
        if dry:
            self._gone.add(bo.broker_order_id)
            return
        om = self.om
        cid = bo.client_order_id
        order = om.get(cid)
        if order is not None and not is_final(order.state):
            # the reason is durable before the broker hears of the cancel
            await om.force_state(
                cid, order.state, reason=f"reconciler cancels it: {why}", _reconciliation=True
            )
            try:
                order = await om.cancel(cid)
            except Exception as exc:
                log.warning("cancel of %s failed: %s", cid, error_text(exc))
            for attempt in range(self.config.fetch_attempts):  # settled in the journal
                if is_final(order.state):
                    break
                await asyncio.sleep(self.config.backoff(attempt))
                order = await om.refresh(cid)
            if order.state is _S.CANCELLED and order.filled_quantity <= bo.filled_quantity:
                self._gone.add(bo.broker_order_id)  # confirmed: no longer counted as live
                return
            raise _Unresolved(
                f"{kind} {cid} is {order.state.value} ({order.filled_quantity} filled) after its "
                f"cancel ({why}): nothing more is sent until it is settled"
            )
        try:
            await asyncio.wait_for(
                self.broker.cancel_order(bo.broker_order_id), self.config.fetch_timeout
            )
        except Exception as exc:
            log.warning("cancel of broker order %s failed: %s", bo.broker_order_id, error_text(exc))
        try:
            after = await self._lookup(cid)
        except ReconciliationFatalError as exc:
            raise _Unresolved(f"{kind} {cid}: the lookup after its cancel failed ({exc})") from None
        if (
            after is None
            or after.state is not _S.CANCELLED
            or after.filled_quantity != bo.filled_quantity  # it executed: the position moved
        ):
            state = "not found" if after is None else after.status
            raise _Unresolved(f"{kind} {cid} is {state} after its cancel ({why})")
        self._gone.add(bo.broker_order_id)  # confirmed: no longer counted as live

    @exact
    async def _emergency_stop(
        self,
        bp: BrokerPosition,
        side: str,
        qty: Decimal,
        kept: list[Item],
        exits: list[BrokerOrder],
        groups: dict[str, list[BrokerOrder]],
        taken: set[str],
        now: datetime,
        c: Counts,
        dry: bool,
    ) -> None:
        """Cover ``qty`` with an emergency stop beside the ``kept`` stops; first the
        reducing orders that are not stops (``exits``) are made safe beside it: it joins a
        stop-free OCO group of theirs (``_link``) and the rest that would execute more than
        the position is cancelled, each cancel confirmed. Refused: ``_close``."""
        group = self._link(exits, groups, qty)
        # before the stop is sent: with it, nothing live executes more than the position
        await self._trim_exits(bp.symbol, exits, [*kept, (group, qty)], abs(bp.quantity), c, dry)
        pct = self.config.emergency_stop_pct
        entry = bp.avg_entry_price
        if entry is None or entry <= 0:
            entry = self.om.entry_price(bp.symbol) or Decimal(0)
        price = (
            emergency_stop_price(entry, bp.quantity, pct, symbol=bp.symbol, ticks=self.config.ticks)
            if entry > 0
            else None
        )
        what = f"{pct * 100:g} % from {entry}"
        if price is None:
            c.errors.append(f"{bp.symbol}: no entry price for an emergency stop")
            await self._close(bp, side, qty, kept, exits, taken, now, c, dry)
            return
        if not await self._place(bp, side, qty, price, taken, now, c, dry, what, group):
            await self._close(bp, side, qty, kept, exits, taken, now, c, dry)

    async def _place(
        self,
        bp: BrokerPosition,
        side: str,
        qty: Decimal,
        price: Decimal,
        taken: set[str],
        now: datetime,
        c: Counts,
        dry: bool,
        what: str,
        group: str | None = None,
    ) -> bool:
        """Place a stop (``es-...``, in OCO group ``group`` if one); True once one is live.
        False after ``stop_attempts`` definite refusals; ``_Unresolved`` when an outcome
        stays unknown."""
        linked = "" if group is None else f", in OCO group {group}"
        if dry:
            c.stops += 1
            c.act(dry, f"emergency stop {side} {qty} {bp.symbol} @ {price} ({what}{linked})")
            return True
        refusals = 0
        for _ in range(2 * self.config.stop_attempts):  # misses after the window are not refusals
            cid = self._next_id(bp.symbol, taken, now)
            intent = OrderIntent(
                symbol=bp.symbol,
                side=side,
                quantity=qty,
                order_type="stop",
                stop_price=price,
                time_in_force="gtc",
                client_order_id=cid,
                created_at=now,
                oco_group=group,  # a take-profit's fill reduces it: never both executed
            )
            order = await self._send(intent, c)
            if order is None or order.state is _S.REJECTED:
                refusals += 1
                why = "" if order is None else f": {order.reason}" if order.reason else ""
                c.errors.append(
                    f"emergency stop {cid} (refusal {refusals}) for {bp.symbol} refused{why}"
                )
                if refusals >= self.config.stop_attempts:
                    return False
                continue
            if order.state in _PLACED:
                c.stops += 1
                c.act(
                    dry,
                    f"emergency stop {cid}: {side} {qty} {bp.symbol} @ {price} ({what}{linked})",
                )
                return True
            c.errors.append(f"emergency stop {cid} for {bp.symbol}: not at the broker")
        raise _Unresolved(f"no stop for {bp.symbol} could be placed (nothing refused it)")

    async def _send(self, intent: OrderIntent, c: Counts) -> Order | None:
        """Submit a protective order; its outcome resolved by lookup if unknown. None: a
        definite refusal before it was sent (``OrderRejected``)."""
        om = self.om
        cid = intent.client_order_id
        try:  # broker errors end in the order's state; anything else (the log) raises
            order = await om.submit(intent, protective=True, _reconciliation=True)
        except OrderRejected as exc:
            c.errors.append(f"{cid}: refused before it was sent: {exc}")
            return None
        if order.state in UNRESOLVED_STATES:
            order = await self._resolve(order)
        return order

    async def _resolve(self, order: Order) -> Order:
        """Look an order of unknown outcome up by client id until found, or not found after
        the broker's visibility window, measured from its last send as the manager does
        (``OrderManager.send_evidence``); a failed lookup is ``_Unresolved``, never "not
        found", and so is an order the broker answered "duplicate client id" for (it exists
        there: never SUBMIT_FAILED)."""
        om = self.om
        cid = order.client_order_id
        window = timedelta(seconds=self.broker.rules.visibility_window_seconds)
        sent_by, exists = await om.send_evidence(order, self._now())  # its calls have ended
        deadline = sent_by + window
        while True:
            try:
                bo = await self._lookup(cid)
            except ReconciliationFatalError as exc:
                raise _Unresolved(f"{cid}: outcome unknown, its lookup failed ({exc})") from None
            if bo is not None:
                for attempt in range(self.config.fetch_attempts):  # journal the broker's word
                    order = await om.refresh(cid)
                    if order.state not in UNRESOLVED_STATES:
                        return order
                    await asyncio.sleep(self.config.backoff(attempt))
                raise _Unresolved(f"{cid}: found at the broker but not settled in the journal")
            left = (deadline - self._now()).total_seconds()
            if left <= 0 and exists:
                raise _Unresolved(
                    f"{cid}: the broker answered duplicate client id for it (it exists there) "
                    "but does not show it: never submit_failed"
                )
            if left <= 0:
                why = "not at the broker after its visibility window"
                return await om.force_state(cid, _S.SUBMIT_FAILED, reason=why, _reconciliation=True)
            await asyncio.sleep(left)  # the broker may not show it yet: wait its window out

    async def _close(
        self,
        bp: BrokerPosition,
        side: str,
        qty: Decimal,
        kept: list[Item],
        exits: list[BrokerOrder],
        taken: set[str],
        now: datetime,
        c: Counts,
        dry: bool,
    ) -> None:
        """Never leave a position unprotected: close ``qty`` of it at market. First every
        reducing order that is not a stop and would execute more than what is left beside
        the ``kept`` stops is cancelled, each confirmed (closed whole: every one of them,
        else a take-profit left live would open the opposite position)."""
        # before the close: nothing live executes more than what the close leaves
        await self._trim_exits(bp.symbol, exits, kept, abs(bp.quantity) - qty, c, dry)
        cid = CLOSE_PREFIX + self._next_id(bp.symbol, taken, now)[len(EMERGENCY_STOP_PREFIX) :]
        close = OrderIntent(
            symbol=bp.symbol,
            side=side,
            quantity=qty,
            order_type="market",
            client_order_id=cid,
            created_at=now,
        )
        c.act(dry, f"close {bp.symbol} at market ({side} {qty}): no stop could be placed")
        if dry:
            return
        closed = await self._send(close, c)
        if closed is not None and closed.state in _PLACED:
            c.closed += 1
            return
        msg = f"position {bp.quantity} {bp.symbol} is UNPROTECTED: stop and market close failed"
        log.critical(msg)
        c.errors.append(msg)

    @staticmethod
    def _next_id(symbol: str, taken: set[str], now: datetime) -> str:
        """The next unused ``es-{tag}-{YYYYMMDD}-{n}`` (added to ``taken``)."""
        prefix = f"{EMERGENCY_STOP_PREFIX}{symbol_tag(symbol)}-{now.astimezone(UTC):%Y%m%d}-"
        n = sum(1 for cid in taken if cid.startswith(prefix)) + 1
        cid = emergency_stop_id(symbol, now, n)
        while cid in taken or (CLOSE_PREFIX + cid[len(EMERGENCY_STOP_PREFIX) :]) in taken:
            n += 1
            cid = emergency_stop_id(symbol, now, n)
        taken.add(cid)
        return cid


def _item(bo: BrokerOrder) -> Item:
    """A live reducing order as ``exposure`` counts it."""
    return (bo.oco_group, remaining(bo))
