"""``PaperBroker``: a simulated broker with fault injection, real enough to find real bugs.

It keeps orders, executions and net positions; it deduplicates client ids by its declared
scope (``ClientIdRules.dedup_scope``: GLOBAL refuses a reused id forever, OPEN_ONLY only while
the first order is open, as Binance does; GLOBAL unless told OPEN_ONLY, and that is what it
declares, in-process as ``rules`` and over HTTP at ``/_paper/rules``); it fills market orders
at the simulated market price and marketable limit orders at their limit price (resting ones
when ``set_price`` crosses them; stops trigger the same way); and it misbehaves as its
``FaultPlan`` says.

**OCO groups, reduce on fill** (``ClientIdRules.oco_groups``, declared True unless told
False): orders submitted with the same ``oco_group`` are linked; when one executes q, every
other open order of its group is reduced by q (``BrokerOrder.reduced_quantity``, its
planned parts trimmed; ``canceled`` once nothing is left) under the same lock, in the same
change, persisted before any reply, as the execution itself: no instant, and no restart,
sees the fill without the reduction. A broker told ``oco_groups=False`` refuses an order
with an ``oco_group``.

Everything is deterministic from ``seed``: order ids (``paper-00000001``), execution ids
(``<order id>-<n>``), the random faults and the random-walk prices of ``step_prices``.

With ``state_path`` the state is durable: every change is appended to ``<state>.changes``
and fdatasynced before it is acknowledged, and the whole state is written again (atomically,
mode 0600) only once those changes outgrow it (:mod:`wal.orders.paperstate`: the format,
and why); a restarted broker (``atb paper-broker serve`` after a SIGKILL) continues from
it. The fault plan's call counters are not part of the state: a restarted broker starts its
plan over.

Use it in-process (its methods are the async ``Broker`` protocol) or as its own process
behind :mod:`wal.orders.server` with :class:`wal.orders.http_broker.HttpBroker`.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from wal.money import exact
from wal.orders.broker import (
    OPEN_STATUSES,
    BrokerOrder,
    BrokerPosition,
    ClientIdRules,
    DedupScope,
)
from wal.orders.errors import (
    BrokerRejectedError,
    BrokerUnavailable,
    DuplicateClientOrderId,
)
from wal.orders.faults import Fault, FaultPlan
from wal.orders.models import Fill, OrderIntent
from wal.orders.paperstate import PaperStateFile

__all__ = ["PaperBroker", "SimulatedTimeout"]

_Q = Decimal("1E-10")  # prices are kept to 10 places, like the database's money columns
DEFAULT_PRICE = Decimal("100")
UNKNOWN_STATUS = "held_for_review"  # what an UNKNOWN_STATUS fault reports: in no table


def _enforced(rules: ClientIdRules) -> ClientIdRules:
    """The rules a paper broker enforces, and declares: a dedup scope it keeps, ``GLOBAL``
    unless told ``OPEN_ONLY`` (``UNKNOWN``, the default of ``ClientIdRules()``, is a client's
    word for a broker whose rule it was not told; a broker always has one)."""
    if rules.dedup_scope is DedupScope.UNKNOWN:
        rules = replace(rules, dedup_scope=DedupScope.GLOBAL)
    if rules.oco_groups is None:
        rules = replace(rules, oco_groups=True)  # it has them (module docstring)
    return rules


class SimulatedTimeout(BrokerUnavailable):
    """A timeout the fault plan caused; ``accepted`` says whether the order exists.

    In-process it is raised at once; the HTTP server holds the request ``hang_seconds``
    first, so that the client's own socket timeout fires.
    """

    def __init__(self, message: str, *, accepted: bool, hang_seconds: float) -> None:
        self.accepted = accepted
        self.hang_seconds = hang_seconds
        super().__init__(message)


@dataclass
class _Order:
    order: BrokerOrder
    plan: list[Decimal] = field(default_factory=list)  # quantities still to execute


class PaperBroker:
    """A simulated broker (the async ``Broker`` protocol); see the module docstring.

    ``auto_fill``: marketable orders execute at once (all their planned parts); False keeps
    every order open until ``advance()`` executes the next part of each marketable one.
    """

    def __init__(
        self,
        *,
        rules: ClientIdRules | None = None,
        faults: FaultPlan | None = None,
        seed: int = 0,
        state_path: Path | str | None = None,
        prices: dict[str, Decimal] | None = None,
        auto_fill: bool = True,
    ) -> None:
        self._rules = _enforced(rules or ClientIdRules())  # GLOBAL unless told OPEN_ONLY
        self.faults = faults or FaultPlan(seed=seed)
        self.seed = seed
        self.auto_fill = auto_fill
        self.state_path = None if state_path is None else Path(state_path)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._orders: dict[str, _Order] = {}
        self._by_cid: dict[str, list[str]] = {}
        self._groups: dict[str, list[str]] = {}  # OCO group -> its broker order ids
        self._fills: list[Fill] = []  # in execution order (only appended: ``_add_fill``)
        # (executed_at, index in _fills), sorted: get_fills(since) without a scan of them all
        self._fill_times: list[tuple[datetime, int]] = []
        self._fill_count: dict[str | None, int] = {}  # broker order id -> its executions
        self._fills_by_cid: dict[str, list[int]] = {}  # client order id -> indexes in _fills
        self._positions: dict[str, tuple[Decimal, Decimal]] = {}
        self._prices: dict[str, Decimal] = dict(prices or {})
        self._next_order = 1
        self._version = 0  # changes made (under _lock); _persist makes them durable
        self._saved = 0  # the version the state file holds
        self._save_lock = threading.Lock()  # the state file's one writer (taken before _lock)
        self._dict_cache: dict[str, tuple[BrokerOrder, dict[str, Any]]] = {}
        self._fill_cache: list[dict[str, Any]] = []
        # what the state files hold (``_persist`` writes what changed since)
        self._dirty: set[str] = set()  # broker order ids changed since the last save
        self._saved_fills = 0
        self._saved_positions: dict[str, tuple[Decimal, Decimal]] = {}
        self._saved_prices: dict[str, Decimal] = {}
        self.submit_calls = 0  # every submit_order call that reached the broker
        self.cancel_calls = 0  # every cancel_order call that reached the broker
        self.submitted_client_ids: list[str] = []  # the client id of each of those calls
        self._file = None if self.state_path is None else PaperStateFile(self.state_path)
        if self._file is not None:
            state, through = self._file.read()
            if state is not None:
                self._load(state, through)
                # changes read: the next save is whole, never appended after a torn line
                self._file.must_snapshot = self._file.changes_bytes > 0

    @staticmethod
    def read_state(state_path: Path | str) -> dict[str, Any] | None:
        """The durable state of a paper broker (its snapshot with every change folded in,
        the snapshot's JSON shape), or None when it has none; for tests and tools."""
        return PaperStateFile(Path(state_path)).read()[0]

    def close(self) -> None:
        """Close the state's changes file (a later change opens it again)."""
        with self._save_lock:
            if self._file is not None:
                self._file.close()

    @property
    def rules(self) -> ClientIdRules:
        return self._rules

    # ------------------------------------------------------------------ the Broker protocol

    async def submit_order(self, intent: OrderIntent) -> BrokerOrder:
        bo = self._submit_locked(intent)
        # durable before the reply, written by a thread: concurrent submits share one write
        await asyncio.to_thread(self._persist)
        return self._submit_reply(bo)

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        return self.lookup(client_order_id)

    async def cancel_order(self, broker_order_id: str) -> None:
        fault = self._cancel_locked(broker_order_id)
        await asyncio.to_thread(self._persist)  # durable before it is acknowledged
        self._cancel_reply(fault)

    async def get_open_orders(self) -> list[BrokerOrder]:
        return self.open_orders()

    async def get_recent_orders(self, hours: float) -> list[BrokerOrder]:
        return self.recent_orders(hours)

    async def get_positions(self) -> list[BrokerPosition]:
        return self.positions()

    async def get_fills(self, since: datetime | None = None) -> list[Fill]:
        return self.fills(since)

    async def get_order_fills(
        self, client_order_id: str, since: datetime | None = None
    ) -> list[Fill]:
        if getattr(self.get_fills, "__func__", None) is not PaperBroker.get_fills:
            # a subclass (or a patch of this instance) shapes what get_fills shows (lag, pages,
            # hidden fills): one order's fills are that view's, the same on either call
            return [f for f in await self.get_fills(since) if f.client_order_id == client_order_id]
        return self.fills_of(client_order_id, since)

    # ------------------------------------------------------------------ the engine (sync)

    def submit(self, intent: OrderIntent) -> BrokerOrder:
        """Accept (and maybe fill) an order, or fail as the fault plan says."""
        bo = self._submit_locked(intent)
        self._persist()  # durable before any reply: an accepted order survives our restart
        return self._submit_reply(bo)

    def _submit_locked(self, intent: OrderIntent) -> tuple[str, Fault | None]:
        """The order accepted in memory (its id, the fault still to play after the save)."""
        with self._lock:
            self.submit_calls += 1
            self.submitted_client_ids.append(intent.client_order_id)
            fault = self.faults.decide("submit_order")
            hang = self.faults.timeout_hang_seconds
            if fault is Fault.TIMEOUT_BEFORE_ACCEPT:
                raise SimulatedTimeout(
                    "submit timed out (before accept)", accepted=False, hang_seconds=hang
                )
            if fault is Fault.SERVER_ERROR:
                raise BrokerUnavailable("503 service unavailable (simulated)")
            why = self._rules.check(intent.client_order_id)
            if why is not None:
                raise BrokerRejectedError(f"client_order_id rejected: {why}")
            if fault is Fault.REJECT:
                raise BrokerRejectedError(self.faults.reject_reason)
            if intent.oco_group is not None and not self._rules.oco_groups:
                # never accepted as an independent order: both members could fill
                raise BrokerRejectedError("oco_group: this broker has no OCO groups")
            existing = self._dedup_hit(intent.client_order_id)
            if existing is not None:
                raise DuplicateClientOrderId(intent.client_order_id)
            bo = self._create(intent)
            self._version += 1  # to be saved (``_persist``) before the reply
            return bo, fault

    def _submit_reply(self, accepted: tuple[str, Fault | None]) -> BrokerOrder:
        bo, fault = accepted
        if fault is Fault.TIMEOUT_AFTER_ACCEPT:
            raise SimulatedTimeout(
                "submit timed out (after accept)",
                accepted=True,
                hang_seconds=self.faults.timeout_hang_seconds,
            )
        with self._lock:
            order = self._orders[bo].order
        if fault is Fault.DUPLICATE_ID:
            raise DuplicateClientOrderId(order.client_order_id)
        return order

    def lookup(self, client_order_id: str) -> BrokerOrder | None:
        """The newest order with this client id, or None (or a lagging "not found")."""
        with self._lock:
            fault = self.faults.decide("get_order_by_client_id")
            if fault is Fault.NOT_FOUND:
                return None
            if fault in (Fault.SERVER_ERROR, Fault.FETCH_FAILURE):
                raise BrokerUnavailable("503 service unavailable (simulated)")
            ids = self._by_cid.get(client_order_id)
            if not ids:
                return None
            order = self._orders[ids[-1]].order
            return self._maybe_garble(order, fault)

    def cancel(self, broker_order_id: str) -> None:
        fault = self._cancel_locked(broker_order_id)
        self._persist()  # the cancel is durable before it is acknowledged
        self._cancel_reply(fault)

    def _cancel_locked(self, broker_order_id: str) -> Fault | None:
        with self._lock:
            self.cancel_calls += 1
            fault = self.faults.decide("cancel_order")
            hang = self.faults.timeout_hang_seconds
            if fault in (Fault.SERVER_ERROR, Fault.FETCH_FAILURE):
                raise BrokerUnavailable("503 service unavailable (simulated)")
            if fault is Fault.TIMEOUT_BEFORE_ACCEPT:
                raise SimulatedTimeout(
                    "cancel timed out (before the broker saw it)", accepted=False, hang_seconds=hang
                )
            po = self._orders.get(broker_order_id)
            if po is None:
                raise BrokerRejectedError(f"order {broker_order_id} not found")
            if po.order.status not in OPEN_STATUSES:
                raise BrokerRejectedError(f"order {broker_order_id} is {po.order.status}")
            po.order = replace(po.order, status="canceled")
            po.plan.clear()
            self._dirty.add(broker_order_id)
            self._version += 1  # to be saved (``_persist``) before it is acknowledged
            return fault

    def _cancel_reply(self, fault: Fault | None) -> None:
        if fault is Fault.TIMEOUT_AFTER_ACCEPT:
            raise SimulatedTimeout(
                "cancel timed out (after the broker cancelled)",
                accepted=True,
                hang_seconds=self.faults.timeout_hang_seconds,
            )

    def open_orders(self) -> list[BrokerOrder]:
        with self._lock:
            fault = self._list_fault("get_open_orders")
            return [
                self._maybe_garble(p.order, fault)
                for p in self._orders.values()
                if p.order.status in OPEN_STATUSES
            ]

    def recent_orders(self, hours: float) -> list[BrokerOrder]:
        with self._lock:
            fault = self._list_fault("get_recent_orders")
            since = datetime.now(UTC) - timedelta(hours=hours)
            return [
                self._maybe_garble(p.order, fault)
                for p in self._orders.values()
                if p.order.created_at >= since
            ]

    def positions(self) -> list[BrokerPosition]:
        with self._lock:
            self._list_fault("get_positions")
            return [
                BrokerPosition(sym, q, avg)
                for sym, (q, avg) in sorted(self._positions.items())
                if q != 0
            ]

    def fills(self, since: datetime | None = None) -> list[Fill]:
        with self._lock:
            self._list_fault("get_fills")
            if since is None:
                return list(self._fills)
            # the executions at or after `since` (the wall clock may step back: by time, not
            # by position), in execution order
            start = bisect.bisect_left(self._fill_times, (since, -1))
            return [self._fills[i] for i in sorted(i for _, i in self._fill_times[start:])]

    def fills_of(self, client_order_id: str, since: datetime | None = None) -> list[Fill]:
        """``fills(since)`` of the orders with this client id, without a scan of them all
        (the same fault plan: ``get_fills``)."""
        with self._lock:
            self._list_fault("get_fills")
            got = [self._fills[i] for i in self._fills_by_cid.get(client_order_id, ())]
            return got if since is None else [f for f in got if f.executed_at >= since]

    # ------------------------------------------------------------------ the market

    def price(self, symbol: str) -> Decimal:
        """The simulated market price (100 until set)."""
        return self._prices.get(symbol, DEFAULT_PRICE)

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Move the market; resting orders that become marketable execute."""
        with self._lock:
            self._prices[symbol] = Decimal(price)
            for bo, po in self._orders.items():
                if (
                    self.auto_fill
                    and po.order.symbol == symbol
                    and po.order.status in OPEN_STATUSES
                ):
                    self._try_fill(bo, all_parts=True)
            self._version += 1
        self._persist()

    @exact
    def step_prices(self, pct: Decimal = Decimal("0.01")) -> None:
        """One seeded random-walk step (up to +-pct) of every known symbol's price."""
        for sym in sorted({p.order.symbol for p in self._orders.values()} | set(self._prices)):
            move = Decimal(self._rng.randint(-1000, 1000)) / 1000 * pct
            self.set_price(sym, (self.price(sym) * (1 + move)).quantize(Decimal("0.01")))

    def advance(self) -> int:
        """Execute the next planned part of every open marketable order; how many executed."""
        with self._lock:
            n = 0
            for bo, po in list(self._orders.items()):
                if po.order.status in OPEN_STATUSES and po.plan:
                    n += self._try_fill(bo, all_parts=False)
            if n:
                self._version += 1
        if n:
            self._persist()
        return n

    def write_calls(self) -> int:
        """Submits plus cancels that reached the broker (tests: "no broker write")."""
        with self._lock:
            return self.submit_calls + self.cancel_calls

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"submit_calls": self.submit_calls, "cancel_calls": self.cancel_calls}

    def orders_with_client_id(self, client_order_id: str) -> list[BrokerOrder]:
        """Every order the broker holds for this client id (tests: "at most one")."""
        with self._lock:
            return [self._orders[b].order for b in self._by_cid.get(client_order_id, [])]

    def all_orders(self) -> list[BrokerOrder]:
        """Every order the broker holds (tests; no fault applies)."""
        with self._lock:
            return [p.order for p in self._orders.values()]

    def all_fills(self) -> list[Fill]:
        """Every execution, oldest first (tests; no fault applies)."""
        with self._lock:
            return list(self._fills)

    def net_positions(self) -> dict[str, Decimal]:
        """The net position per symbol, zeros left out (tests; no fault applies)."""
        with self._lock:
            return {s: q for s, (q, _) in sorted(self._positions.items()) if q != 0}

    # ------------------------------------------------------------------ internals

    def _list_fault(self, op: str) -> Fault | None:
        fault = self.faults.decide(op)
        if fault in (Fault.FETCH_FAILURE, Fault.SERVER_ERROR):
            raise BrokerUnavailable(f"{op}: 503 service unavailable (simulated)")
        return fault

    @staticmethod
    def _maybe_garble(order: BrokerOrder, fault: Fault | None) -> BrokerOrder:
        return replace(order, status=UNKNOWN_STATUS) if fault is Fault.UNKNOWN_STATUS else order

    def _dedup_hit(self, cid: str) -> str | None:
        ids = self._by_cid.get(cid, [])
        if self._rules.dedup_scope == "global":
            return ids[-1] if ids else None
        for bo in ids:
            if self._orders[bo].order.status in OPEN_STATUSES:
                return bo
        return None

    def _create(self, intent: OrderIntent) -> str:
        bo = f"paper-{self._next_order:08d}"
        self._next_order += 1
        order = BrokerOrder(
            broker_order_id=bo,
            client_order_id=intent.client_order_id,
            symbol=intent.symbol,
            side=intent.side,
            quantity=intent.quantity,
            order_type=intent.order_type,
            status="new",
            limit_price=intent.limit_price,
            stop_price=intent.stop_price,
            created_at=datetime.now(UTC),
            oco_group=intent.oco_group,
        )
        self._orders[bo] = _Order(order, self._split(intent.quantity))
        self._by_cid.setdefault(intent.client_order_id, []).append(bo)
        if intent.oco_group is not None:
            self._groups.setdefault(intent.oco_group, []).append(bo)
        self._dirty.add(bo)
        if self.auto_fill:
            self._try_fill(bo, all_parts=True)
        return bo

    @exact
    def _split(self, qty: Decimal) -> list[Decimal]:
        fractions = self.faults.partial_fills or (Decimal(1),)
        parts = [qty * f for f in fractions[:-1]]
        parts.append(qty - sum(parts, Decimal(0)))  # the last part takes the remainder exactly
        return [p for p in parts if p > 0]

    def _fill_price(self, o: BrokerOrder) -> Decimal | None:
        """The execution price if ``o`` is marketable now, else None."""
        mkt = self.price(o.symbol)
        buy = o.side == "buy"
        if o.order_type in ("stop", "stop_limit"):
            assert o.stop_price is not None
            triggered = mkt >= o.stop_price if buy else mkt <= o.stop_price
            if not triggered:
                return None
            if o.order_type == "stop":
                return mkt
        if o.order_type in ("limit", "stop_limit"):
            assert o.limit_price is not None
            marketable = mkt <= o.limit_price if buy else mkt >= o.limit_price
            return o.limit_price if marketable else None
        return mkt

    def _try_fill(self, bo: str, *, all_parts: bool) -> int:
        po = self._orders[bo]
        price = self._fill_price(po.order)
        n = 0
        while price is not None and po.plan:
            self._execute(po, po.plan.pop(0), price)
            n += 1
            if not all_parts:
                break
        return n

    @exact
    def _execute(self, po: _Order, qty: Decimal, price: Decimal) -> None:
        o = po.order
        filled = o.filled_quantity + qty
        avg = (
            price
            if o.avg_fill_price is None
            else ((o.avg_fill_price * o.filled_quantity + price * qty) / filled).quantize(_Q)
        )
        self._dirty.add(o.broker_order_id)  # its order and plan (popped by _try_fill)
        if filled == o.quantity:
            status = "filled"
        elif filled + o.reduced_quantity >= o.quantity:
            status = "canceled"  # the rest taken off by its OCO group (FILLED: all it ordered)
        else:
            status = "partially_filled"
        po.order = replace(o, filled_quantity=filled, avg_fill_price=avg, status=status)
        if o.oco_group is not None:
            # under the same lock, in the same saved change as the fill: never filled apart
            self._reduce_group(o.oco_group, o.broker_order_id, qty)
        n = self._fill_count.get(o.broker_order_id, 0) + 1
        self._add_fill(
            Fill(
                execution_id=f"{o.broker_order_id}-{n}",
                client_order_id=o.client_order_id,
                broker_order_id=o.broker_order_id,
                symbol=o.symbol,
                side=o.side,
                quantity=qty,
                price=price,
                executed_at=datetime.now(UTC),
            )
        )
        signed = qty if o.side == "buy" else -qty
        q, avg_entry = self._positions.get(o.symbol, (Decimal(0), Decimal(0)))
        new = q + signed
        if q == 0 or ((q > 0) != (new > 0) and new != 0):
            avg_entry = price  # opened, or flipped through zero
        elif (q > 0) == (signed > 0):
            avg_entry = ((avg_entry * abs(q) + price * qty) / abs(new)).quantize(_Q)
        self._positions[o.symbol] = (new, avg_entry if new != 0 else Decimal(0))

    @exact
    def _reduce_group(self, group: str, filled: str, qty: Decimal) -> None:
        """Reduce on fill: every other open order of ``group`` loses ``qty`` (what is left,
        at most), and is cancelled when nothing is left (``_lock`` held)."""
        for bo in self._groups.get(group, ()):
            po = self._orders[bo]
            o = po.order
            if bo == filled or o.status not in OPEN_STATUSES:
                continue
            cut = min(qty, o.remaining)
            left = o.remaining - cut
            po.order = replace(
                o,
                reduced_quantity=o.reduced_quantity + cut,
                status=o.status if left > 0 else "canceled",
            )
            _trim(po.plan, left)  # its planned parts never execute more than is left
            self._dirty.add(bo)  # saved in the same change as the fill that reduced it

    # ------------------------------------------------------------------ durable state

    def _state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "seed": self.seed,
            "next_order": self._next_order,
            "rules": self._rules.to_dict(),
            "orders": [
                {"order": self._order_dict(b, p.order), "plan": [format(q, "f") for q in p.plan]}
                for b, p in self._orders.items()
            ],
            "fills": self._fill_dicts(),
            "positions": {
                s: [format(q, "f"), format(a, "f")] for s, (q, a) in self._positions.items()
            },
            "prices": {s: format(p, "f") for s, p in self._prices.items()},
        }

    def _persist(self) -> None:
        """Make every change made so far durable: one writer at a time, and a change a
        concurrent writer's save already holds is not written again (a group commit: N
        concurrent submits, about two writes). What changed since the last save is appended
        (its size is the change's); the whole state only when ``PaperStateFile`` asks for it.
        Never called with ``_lock`` held."""
        if self._file is None:
            return
        wanted = self._version
        with self._save_lock:  # one writer: saves reach the files in version order
            if self._saved >= wanted:
                return  # a save taken after our change is durable
            with self._lock:
                version = self._version
                if self._file.wants_snapshot():
                    whole: bytes | None = orjson.dumps(self._state() | {"changes_through": version})
                    change = None
                else:
                    whole = None
                    change = self._change(self._saved, version)
                self._mark_saved()
            if whole is not None:
                self._file.write_snapshot(whole)
            else:
                assert change is not None
                self._file.append_change(change)  # a failure: the next save is whole
            self._saved = version

    def _change(self, since: int, version: int) -> dict[str, Any]:
        """What changed since the last save (``_lock`` held): the changed orders whole, the
        new executions, the positions and prices that moved."""
        return {
            "from": since,
            "through": version,
            "next_order": self._next_order,
            "orders": [
                {
                    "order": self._order_dict(bo, self._orders[bo].order),
                    "plan": [format(q, "f") for q in self._orders[bo].plan],
                }
                for bo in sorted(self._dirty)
            ],
            "fill_base": self._saved_fills,
            "fills": [f.to_dict() for f in self._fills[self._saved_fills :]],
            "positions": {
                s: [format(q, "f"), format(a, "f")]
                for s, (q, a) in self._positions.items()
                if self._saved_positions.get(s) != (q, a)
            },
            "prices": {
                s: format(p, "f") for s, p in self._prices.items() if self._saved_prices.get(s) != p
            },
        }

    def _mark_saved(self) -> None:
        """The state as of now is what the next ``_change`` is measured from (``_lock`` held)."""
        self._dirty.clear()
        self._saved_fills = len(self._fills)
        self._saved_positions = dict(self._positions)
        self._saved_prices = dict(self._prices)

    def _order_dict(self, bo: str, order: BrokerOrder) -> dict[str, Any]:
        """``order.to_dict()``, kept while the order is unchanged (orders are immutable)."""
        cached = self._dict_cache.get(bo)
        if cached is None or cached[0] is not order:
            cached = self._dict_cache[bo] = (order, order.to_dict())
        return cached[1]

    def _fill_dicts(self) -> list[dict[str, Any]]:
        """Every fill's ``to_dict()``; fills are only appended, so new ones are converted."""
        done = self._fill_cache
        if len(done) > len(self._fills):
            done.clear()
        done.extend(f.to_dict() for f in self._fills[len(done) :])
        return list(done)

    def _add_fill(self, fill: Fill) -> None:
        """Append an execution, and index it by time and by order (``_lock`` held)."""
        bisect.insort(self._fill_times, (fill.executed_at, len(self._fills)))
        self._fills_by_cid.setdefault(fill.client_order_id, []).append(len(self._fills))
        self._fills.append(fill)
        bo = fill.broker_order_id
        self._fill_count[bo] = self._fill_count.get(bo, 0) + 1

    def _load(self, d: dict[str, Any], through: int) -> None:
        path = self.state_path
        if d.get("version") != 1:
            raise ValueError(f"{path}: unknown paper broker state version {d.get('version')!r}")
        self._next_order = int(d["next_order"])
        self._rules = _enforced(ClientIdRules.from_dict(d["rules"]))
        for item in d["orders"]:
            o = BrokerOrder.from_dict(item["order"])
            self._orders[o.broker_order_id] = _Order(o, [Decimal(q) for q in item["plan"]])
            self._by_cid.setdefault(o.client_order_id, []).append(o.broker_order_id)
            if o.oco_group is not None:
                self._groups.setdefault(o.oco_group, []).append(o.broker_order_id)
        for f in d["fills"]:
            self._add_fill(Fill.from_dict(f))
        self._positions = {s: (Decimal(q), Decimal(a)) for s, (q, a) in d["positions"].items()}
        self._prices = {s: Decimal(p) for s, p in d["prices"].items()}
        self._version = self._saved = through  # the files hold every change through it
        self._mark_saved()


@exact
def _trim(plan: list[Decimal], left: Decimal) -> None:
    """Cut the planned parts (from the last) so that they add up to at most ``left``."""
    total = sum(plan, Decimal(0))
    while plan and total - plan[-1] >= left:
        total -= plan.pop()
    if plan and total > left:
        plan[-1] -= total - left
