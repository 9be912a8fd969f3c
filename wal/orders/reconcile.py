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

**Phase 2, positions**: a difference between the broker's net position and the journal's
gets a synthetic order ``orphan-{symbol}-{YYYYMMDD}`` (``-2``, ``-3``... if that id is used
up today) with one synthetic fill at the broker's entry price; the id is checked before
creation, so restarts do not make duplicates. Every position must then have its stop: the
stops on the other side must cover it exactly, else the emergency stops (client ids
``es-...``) are replaced by one stop ``emergency_stop_pct`` beyond the entry price; after
``stop_attempts`` failed attempts the position is closed at market. Emergency stops of
positions that are gone are cancelled.

**Result**: ``ReconciliationResult`` (frozen); errors are collected, every position is
processed. A second run right after a successful one reports all zeros and makes no write
call to the broker. ``dry_run=True`` fetches and reports what it would do, changing nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal, InvalidOperation
from typing import Any, TypeVar

from wal.orders.broker import BROKER_STATUS, BrokerOrder, BrokerPosition
from wal.orders.errors import BrokerProtocolError, ReconciliationFatalError
from wal.orders.manager import OrderManager
from wal.orders.models import Fill, Order, OrderIntent
from wal.orders.states import OrderState, is_final

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
EMERGENCY_STOP_PREFIX = "es-"
_STOP_TYPES = ("stop", "stop_limit")
_MIN_PCT = Decimal("0.005")
_MAX_PCT = Decimal("0.10")
_FILL_SLACK = timedelta(minutes=1)


@dataclass(frozen=True)
class ReconcilerConfig:
    """The reconciler's knobs. ``emergency_stop_pct`` is a fraction: 0.02 is 2 %."""

    emergency_stop_pct: Decimal = Decimal("0.02")  # allowed 0.005-0.10 (0.5 %-10 %)
    fetch_timeout: float = 10.0  # seconds, one broker call
    fetch_attempts: int = 3  # tries per fetch before ReconciliationFatalError
    fetch_backoff: tuple[float, ...] = (1.0, 2.0, 4.0)  # the waits between tries
    stop_attempts: int = 3  # emergency stop tries before the position is closed at market
    recent_hours: float = 24.0  # how far back the broker's order history is fetched

    def __post_init__(self) -> None:
        pct = self.emergency_stop_pct
        if isinstance(pct, bool) or not isinstance(pct, (Decimal, int, str)):
            raise ValueError(
                f"emergency_stop_pct must be a Decimal fraction (0.02 is 2 %), got "
                f"{type(pct).__name__} {pct!r}"
            )
        try:
            d = Decimal(pct)
        except InvalidOperation:
            raise ValueError(f"emergency_stop_pct {pct!r} is not a number") from None
        if not d.is_finite() or not _MIN_PCT <= d <= _MAX_PCT:
            raise ValueError(
                f"emergency_stop_pct must be between {_MIN_PCT} and {_MAX_PCT} (0.5 %-10 %), "
                f"got {pct}"
            )
        object.__setattr__(self, "emergency_stop_pct", d)
        if self.fetch_timeout <= 0:
            raise ValueError(f"fetch_timeout must be > 0 seconds, got {self.fetch_timeout}")
        if self.fetch_attempts < 1 or self.stop_attempts < 1:
            raise ValueError(
                f"fetch_attempts and stop_attempts must be >= 1, got {self.fetch_attempts} "
                f"and {self.stop_attempts}"
            )
        if any(b < 0 for b in self.fetch_backoff) or self.recent_hours <= 0:
            raise ValueError("fetch_backoff must be >= 0 and recent_hours > 0")

    def backoff(self, attempt: int) -> float:
        """The wait after failed try ``attempt`` (0-based)."""
        if not self.fetch_backoff:
            return 0.0
        return self.fetch_backoff[min(attempt, len(self.fetch_backoff) - 1)]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReconcilerConfig:
        """``ORDER_EMERGENCY_STOP_PCT`` (fraction), ``ORDER_RECONCILE_TIMEOUT`` (s)."""
        e = os.environ if env is None else env
        return cls(
            emergency_stop_pct=Decimal(e.get("ORDER_EMERGENCY_STOP_PCT", "0.02")),
            fetch_timeout=float(e.get("ORDER_RECONCILE_TIMEOUT", "10")),
        )


@dataclass(frozen=True)
class ReconciliationResult:
    """What a run did (or, dry, would do). All zeros: the journal and the broker agreed."""

    orders_reconciled: int = 0  # journal orders whose state changed to the broker's
    orders_adopted: int = 0  # found by client id without a broker id, or a protective stop
    orphans_detected: int = 0  # positions the journal's fills did not explain
    orphan_orders_canceled: int = 0  # open broker orders the journal did not know
    emergency_stops_placed: int = 0
    fills_inferred: int = 0  # fills journaled from the broker's executions
    errors: tuple[str, ...] = ()
    stops_canceled: int = 0  # emergency stops replaced (wrong size) or of a closed position
    positions_closed: int = 0  # closed at market after the stop failed stop_attempts times
    dry_run: bool = False
    actions: tuple[str, ...] = field(default=(), compare=False)

    @property
    def changes(self) -> int:
        """The number of changes made (or planned): 0 on an idempotent second run."""
        return (
            self.orders_reconciled
            + self.orders_adopted
            + self.orphans_detected
            + self.orphan_orders_canceled
            + self.emergency_stops_placed
            + self.fills_inferred
            + self.stops_canceled
            + self.positions_closed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "orders_reconciled": self.orders_reconciled,
            "orders_adopted": self.orders_adopted,
            "orphans_detected": self.orphans_detected,
            "orphan_orders_canceled": self.orphan_orders_canceled,
            "emergency_stops_placed": self.emergency_stops_placed,
            "fills_inferred": self.fills_inferred,
            "stops_canceled": self.stops_canceled,
            "positions_closed": self.positions_closed,
            "errors": list(self.errors),
            "dry_run": self.dry_run,
            "actions": list(self.actions),
        }


@dataclass(frozen=True)
class FilledTrade:
    """One journaled execution, what a circuit breaker rebuilds its state from."""

    client_order_id: str
    execution_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    executed_at: datetime
    pnl: Decimal | None
    trade_id: str | None


@dataclass
class _Snapshot:
    positions: list[BrokerPosition]
    open_orders: list[BrokerOrder]
    recent_orders: list[BrokerOrder]
    fills: list[Fill]


@dataclass
class _Counts:
    reconciled: int = 0
    adopted: int = 0
    orphans: int = 0
    orphan_cancels: int = 0
    stops: int = 0
    fills: int = 0
    stop_cancels: int = 0
    closed: int = 0
    errors: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)  # broker order ids cancelled in this run


def orphan_order_id(symbol: str, day: datetime, n: int = 1) -> str:
    """``orphan-{symbol}-{YYYYMMDD}`` (``-{n}`` from the second one of that day on)."""
    base = f"orphan-{symbol}-{day.astimezone(UTC):%Y%m%d}"
    return base if n == 1 else f"{base}-{n}"


def _symbol_tag(symbol: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9]", "", symbol)[:10]
    if tag != symbol:  # shortened or characters dropped: keep it unique
        tag += f"{zlib.crc32(symbol.encode()) & 0xFFFF:04x}"
    return tag


def _stop_id(symbol: str, day: datetime, n: int) -> str:
    return f"{EMERGENCY_STOP_PREFIX}{_symbol_tag(symbol)}-{day.astimezone(UTC):%Y%m%d}-{n}"


def emergency_stop_price(entry: Decimal, quantity: Decimal, pct: Decimal) -> Decimal:
    """``pct`` below the entry for a long (``quantity`` > 0), above it for a short; rounded
    away from the entry to the entry's precision (at least cents)."""
    exp = min(entry.as_tuple().exponent if isinstance(entry.as_tuple().exponent, int) else -2, -2)
    q = Decimal(1).scaleb(int(exp))
    if quantity > 0:
        return (entry * (1 - pct)).quantize(q, rounding=ROUND_DOWN)
    return (entry * (1 + pct)).quantize(q, rounding=ROUND_UP)


def _remaining(bo: BrokerOrder) -> Decimal:
    return bo.quantity - bo.filled_quantity


def _protects(bo: BrokerOrder, position: Decimal) -> bool:
    """A stop on the other side of ``position`` (sell stop for a long, buy stop for a short)."""
    if bo.order_type not in _STOP_TYPES or position == 0:
        return False
    return (position > 0 and bo.side == "sell") or (position < 0 and bo.side == "buy")


def _live(bo: BrokerOrder) -> bool:
    return BROKER_STATUS.get(bo.status) in (_S.ACCEPTED, _S.PARTIALLY_FILLED)


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
            c = _Counts()
            await self._phase_orders(snap, c, dry_run)
            await self._phase_positions(snap, c, dry_run)
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
                log.warning("reconciliation: %s failed (try %d): %s", what, attempt + 1, _why(exc))
        raise ReconciliationFatalError(
            f"{what} failed {cfg.fetch_attempts} times (last: {_why(last)}); trading on stale "
            "state is worse than not trading"
        ) from last

    async def _fetch(self) -> _Snapshot:
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
        return _Snapshot(list(positions), list(open_orders), list(recent), list(fills))

    @staticmethod
    def _check_statuses(snap: _Snapshot) -> None:
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

    async def _phase_orders(self, snap: _Snapshot, c: _Counts, dry: bool) -> None:
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
            if bo.client_order_id in journal or not _live(bo):
                continue
            pos = positions.get(bo.symbol, Decimal(0))
            if _protects(bo, pos) and _remaining(bo) <= abs(pos) and bo.symbol not in adopted_for:
                adopted_for.add(bo.symbol)
                c.adopted += 1
                self._act(
                    c,
                    dry,
                    f"adopt stop {bo.broker_order_id} ({bo.client_order_id}) "
                    f"protecting {pos} {bo.symbol}",
                )
                if not dry:
                    try:
                        await om.adopt_external(bo, reason="a stop protecting a held position")
                    except Exception as exc:
                        c.errors.append(f"adopting stop {bo.broker_order_id}: {_why(exc)}")
                else:
                    self._planned_fills += [f for f in fills_of.get(bo.client_order_id, [])]
                continue
            c.orphan_cancels += 1
            c.cancelled.add(bo.broker_order_id)
            self._act(
                c,
                dry,
                f"cancel unknown broker order {bo.broker_order_id} "
                f"({bo.client_order_id}: {bo.side} {bo.quantity} {bo.symbol} "
                f"{bo.order_type})",
            )
            if not dry:
                await self._cancel_at_broker(bo, c)

    async def _one_order(
        self,
        order: Order,
        by_cid: dict[str, BrokerOrder],
        fills_of: dict[str, list[Fill]],
        c: _Counts,
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
            self._act(c, dry, f"{cid}: {order.state.value} -> submit_failed ({why})")
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
            self._act(
                c,
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
            self._act(c, dry, f"{cid}: journal {len(missing)} inferred fill(s)")
            if dry:
                self._planned_fills += missing
                filled = order.filled_quantity + sum((f.quantity for f in missing), Decimal(0))
                state = _S.FILLED if filled >= order.intent.quantity else _S.PARTIALLY_FILLED
            else:
                try:
                    await om.apply_fills(missing)
                except Exception as exc:
                    c.errors.append(f"order {cid}: inferred fills not journaled: {_why(exc)}")
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
            self._act(c, dry, f"{cid}: {state.value} -> {target.value} (broker: {bo.status})")
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

    async def _cancel_at_broker(self, bo: BrokerOrder, c: _Counts) -> None:
        try:
            await asyncio.wait_for(
                self.broker.cancel_order(bo.broker_order_id), self.config.fetch_timeout
            )
        except Exception as exc:
            c.errors.append(f"cancelling broker order {bo.broker_order_id}: {_why(exc)}")

    # ------------------------------------------------------------------ phase 2

    async def _phase_positions(self, snap: _Snapshot, c: _Counts, dry: bool) -> None:
        om = self.om
        now = self._now()
        broker_pos = {p.symbol: p for p in snap.positions if p.quantity != 0}
        mine = dict(om.positions())
        for f in self._planned_fills:  # a dry run: what phase 1 would have journaled
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
                c.errors.append(f"orphan position {sym}: {_why(exc)}")
        # every position gets exactly its stop; emergency stops of closed positions go
        known = {o.client_order_id: o for o in await asyncio.to_thread(om.journal.orders)}
        live = [
            bo for bo in snap.open_orders if _live(bo) and bo.broker_order_id not in c.cancelled
        ]
        for sym in sorted(broker_pos):
            try:
                await self._protect(broker_pos[sym], live, known, now, c, dry)
            except Exception as exc:
                c.errors.append(f"protecting {sym}: {_why(exc)}")
        for bo in live:
            if bo.broker_order_id in c.cancelled:
                continue
            pos = broker_pos[bo.symbol].quantity if bo.symbol in broker_pos else Decimal(0)
            if bo.client_order_id.startswith(EMERGENCY_STOP_PREFIX) and not _protects(bo, pos):
                c.stop_cancels += 1
                c.cancelled.add(bo.broker_order_id)
                self._act(
                    c,
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
        c: _Counts,
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
        self._act(
            c,
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
        c: _Counts,
        dry: bool,
    ) -> None:
        pos = bp.quantity
        stops = [bo for bo in live if bo.symbol == bp.symbol and _protects(bo, pos)]
        if sum((_remaining(b) for b in stops), Decimal(0)) == abs(pos):
            return  # protected, exactly
        ours = [b for b in stops if b.client_order_id.startswith(EMERGENCY_STOP_PREFIX)]
        for b in ours:
            c.stop_cancels += 1
            c.cancelled.add(b.broker_order_id)
            self._act(
                c,
                dry,
                f"cancel emergency stop {b.client_order_id}: it does not cover "
                f"the {pos} {bp.symbol} position",
            )
            if not dry:
                await self._cancel_own(b, c)
        cover = sum((_remaining(b) for b in stops if b not in ours), Decimal(0))
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
        c: _Counts,
        dry: bool,
    ) -> None:
        om = self.om
        side = "sell" if bp.quantity > 0 else "buy"
        pct = self.config.emergency_stop_pct
        entry = bp.avg_entry_price
        if entry is None or entry <= 0:
            entry = om.entry_price(bp.symbol) or Decimal(0)
        price = emergency_stop_price(entry, bp.quantity, pct) if entry > 0 else None
        prefix = f"{EMERGENCY_STOP_PREFIX}{_symbol_tag(bp.symbol)}-{now.astimezone(UTC):%Y%m%d}-"
        used = {cid for cid in known if cid.startswith(prefix)}
        n = len(used) + 1
        if dry:
            c.stops += 1
            self._act(
                c,
                dry,
                f"emergency stop {side} {qty} {bp.symbol} @ {price} ({pct * 100:g} % from {entry})",
            )
            return
        for attempt in range(self.config.stop_attempts if price is not None else 0):
            cid = _stop_id(bp.symbol, now, n)
            while cid in used:
                n += 1
                cid = _stop_id(bp.symbol, now, n)
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
                    f"emergency stop {cid} (try {attempt + 1}) for {bp.symbol}: {_why(exc)}"
                )
                continue
            if order.state in (_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED):
                c.stops += 1
                self._act(
                    c,
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
            client_order_id=f"close-{_stop_id(bp.symbol, now, n)[len(EMERGENCY_STOP_PREFIX) :]}",
            created_at=now,
        )
        self._act(c, dry, f"close {bp.symbol} at market ({side} {qty}): no stop could be placed")
        closed: Order | None = None
        try:
            closed = await om.submit(close, protective=True)
        except Exception as exc:
            c.errors.append(f"closing {bp.symbol} at market: {_why(exc)}")
        if closed is not None and closed.state in (_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED):
            c.closed += 1
        else:
            msg = f"position {bp.quantity} {bp.symbol} is UNPROTECTED: stop and market close failed"
            log.critical(msg)
            c.errors.append(msg)

    async def _cancel_own(self, bo: BrokerOrder, c: _Counts) -> None:
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
                c.errors.append(f"cancelling {bo.client_order_id}: {_why(exc)}")
            return
        await self._cancel_at_broker(bo, c)

    @staticmethod
    def _act(c: _Counts, dry: bool, what: str) -> None:
        c.actions.append(what)
        log.info("reconciliation%s: %s", " (dry run)" if dry else "", what)


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
