"""Bracket orders: a service order's ``stop_loss`` and ``take_profit`` placed at the broker.

When an order placed with ``stop_loss`` / ``take_profit`` fills (fully or partly), the service
protects what it filled: a ``stop`` at ``stop_loss`` and a ``limit`` at ``take_profit``, on
the reducing side, each for the quantity still held from that order. ``Brackets.converge``
makes the broker's children match that, and is safe to run any number of times, after any
crash, because every decision is read from the journal:

* **Held** = the parent's filled quantity minus every child's filled quantity (all kinds, all
  generations). Each kind's live children must have exactly that much left; a kind that does
  not is cancelled (every live child of it, each cancel confirmed final: a cancel whose answer
  is unknown stops the work, nothing is placed on top of it), counted again (a child may have
  filled before its cancel), then replaced by one child of the held quantity. So a partial
  fill of the take-profit shrinks the stop, and a child that fills completely leaves nothing
  held: the other one is cancelled.
* **Grown: made before broken.** A kind whose live children (all in the bracket's OCO group)
  cover less than held (the parent filled more) gets its replacement of the held quantity
  placed in the group FIRST, and its old children are cancelled once the replacement is
  live (``_made``: the newest live child with exactly the held quantity left is kept, the
  others cancelled; also after a crash between the two, ``bracket.after_replacement``).
  While both are live they execute at most the larger (one group: reduce on fill), and a
  replacement the broker refuses leaves the old stop-loss protecting what it covered, never
  nothing (cancel first, a refusal left the position without a stop). The manager's
  protective check counts a group as its largest member (``OrderManager._check_protective``).
  Children without a group (one leg on a broker without OCO groups) are still cancelled
  first.
* **One-cancels-other at the broker.** That sweep runs after a fill is seen (the fill poll,
  every ``SERVICE_POLL_INTERVAL``): alone it leaves a window in which a price that crosses
  the take-profit and then the stop-loss fills both (a long of 10 becomes a short of 10),
  and a partial take-profit leaves the stop at the whole size. So every child of a parent is
  placed in ONE OCO group at the broker, ``oco_group_of(parent)`` (``oco-{parent[:28]}``:
  deterministic, so a child placed again after a crash joins the same group), with reduce
  on fill: a fill of any child by q reduces every other live child by q in the same broker
  transition (``ClientIdRules.oco_groups``, :mod:`wal.orders.broker`). One group for the
  bracket's whole life, not one per generation: a replacement (``sl2``) must be linked to
  the other kind's child still live (``tp1``); every live child covers at most what is held,
  so the group never fills more than is held. ``converge`` still does all of the above on
  top: a reduced child shows in the journal as a cancel (reduced to nothing: the lookup
  before the cancel adopts the broker's ``canceled``) or as a live child whose journal
  remainder is larger than held (it is cancelled and replaced at the held size).
* **A broker without OCO groups** (not declared): a bracket with both a stop-loss and a
  take-profit is refused when it is placed (``oco_unsupported``, 422, nothing journaled):
  two independent reducing orders for the whole position is the over-protection above.
  A single-leg bracket (a stop-loss, or a take-profit, alone) has no second leg to fill and
  is placed without a group there. Where the broker declares groups, a single-leg bracket's
  children are in its group too (``_group``): a replacement is made before it is broken,
  and the reconciler's emergency stop may join a take-profit's group.
* **Ids**: a child's client order id is ``{kind}{gen}-{parent[:28]}`` (``sl1-...``,
  ``tp2-...``; at most 36 characters of ``[0-9a-z-]``), a pure function of the parent, the
  kind and the generation. Its owner row (``service_orders``, key
  ``bracket/<parent>/<kind>/<gen>``) is committed before it is journaled, so the next
  generation is known after any restart, and a generation claimed but never journaled is
  reused (nothing was sent). Every child goes through ``OrderManager.submit`` (journaled and
  fsynced before the broker hears of it; a retry is a lookup by client id, never a second
  order). A child whose outcome is unknown is chased (the same intent again: looked up) before
  anything else is done for its parent.
* **Never over-protected**: what a kind covers is capped by the room the journal's net
  position in the symbol leaves beside the reducing orders that are not this bracket's and
  can execute beside it (stops for a stop-loss; for a take-profit, limits and every stop
  outside the bracket's OCO group): a trader who sells part of a bracketed position by hand
  shrinks its children, and a take-profit is never placed beside an emergency stop or a
  user's stop outside its group (both could fill: a long of 10 sold 20). The reconciler's
  emergency stops (``es-...``, its stand-ins for missing protection) are cancelled to make
  room for the trader's stop-loss, never for one refused at that size (cancelled, the
  position would be left bare); one in the bracket's OCO group is made before broken (the
  stop-loss placed in the group beside it first, the emergency stop cancelled once the
  stop-loss is live: ``_stand_ins_replaced``), so a refusal a new process does not remember
  leaves it in place. A child the broker or the checks refuse is a ``problem``
  (the log, ``/readyz`` details), not sent again at the same size.

The startup reconciler (:mod:`wal.orders.stops`) sees a stop-loss child as a user stop that
protects the position (kept while the stops are exact) and a take-profit as a reducing order
that is not a stop: its emergency stop joins the take-profit's group when that group holds
no stop, else the take-profit is cancelled before the emergency stop or a market close (all
the live reducing orders never execute more than the position). ``ServiceRuntime``
converges every bracket before it (so the reconciler finds the protection exact) and again
after it (what its phase 1 booked).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from wal.crashpoints import crash_point
from wal.entry import utc_now
from wal.money import exact
from wal.orders import Order, OrderIntent, OrderManager, OrderRejected, OrderState
from wal.orders.base import OrderLocks
from wal.orders.reconcile_model import EMERGENCY_STOP_PREFIX
from wal.orders.states import is_final
from wal.service.owners import CHILD_KEY_PREFIX, OwnerRow, OwnerStore

__all__ = [
    "KINDS",
    "Brackets",
    "Missing",
    "child_key",
    "child_order_id",
    "oco_group_of",
    "parse_child_id",
]

log = logging.getLogger("wal.service.brackets")

KINDS = ("sl", "tp")  # stop-loss (a stop), take-profit (a limit)
_S = OrderState
_UNRESOLVED = (_S.PENDING, _S.SUBMITTING, _S.UNKNOWN)
_LIVE = (_S.ACCEPTED, _S.PARTIALLY_FILLED)
_ROUNDS = 4  # cancel, count again, place: a bracket settles in two rounds
_CHILD_RE = re.compile(r"^(sl|tp)([1-9][0-9]{0,4})-([0-9a-f]{28})$")
_STOP_TYPES = ("stop", "stop_limit")


def child_order_id(parent: str, kind: str, gen: int) -> str:
    """The client id of ``parent``'s ``gen``-th ``kind`` child (module docstring)."""
    if kind not in KINDS or not 1 <= gen <= 99999:
        raise ValueError(f"bad bracket child {kind!r} generation {gen}")
    return f"{kind}{gen}-{parent[:28]}"


def oco_group_of(parent: str) -> str:
    """The OCO group every child of ``parent`` is placed in (module docstring): at most 32
    characters of ``[0-9a-z-]``, a client id every listed broker accepts."""
    return f"oco-{parent[:28]}"


def parse_child_id(cid: str) -> tuple[str, int] | None:
    """(kind, generation) of a bracket child's client id; None for any other id."""
    m = _CHILD_RE.fullmatch(cid)
    return None if m is None else (m.group(1), int(m.group(2)))


def child_key(parent: str, kind: str, gen: int) -> str:
    """The owner row's key of a child (a "/" no Idempotency-Key can hold)."""
    return f"{CHILD_KEY_PREFIX}{parent}/{kind}/{gen}"


@dataclass(frozen=True)
class Missing:
    """A bracket child that could not be placed: the position it should protect is not (fully)
    protected. Kept until that kind is placed, or nothing is held any more."""

    order_id: str  # the parent
    trader_id: str
    symbol: str
    kind: str  # "sl" or "tp"
    quantity: Decimal  # held, not covered
    reason: str
    since: datetime

    @property
    def missing(self) -> str:
        return "stop_loss" if self.kind == "sl" else "take_profit"

    @exact
    def to_dict(self, *, ids: bool) -> dict[str, Any]:
        """For ``/readyz`` (``ids=False``: public, no trader's ids) or the trader's own view."""
        out: dict[str, Any] = {
            "source": "bracket",
            "symbol": self.symbol,
            "missing": self.missing,
            "quantity": format(self.quantity.normalize(), "f"),
            "reason": self.reason,
            "since": self.since.isoformat(),
        }
        if ids:
            out["order_id"] = self.order_id
        return out


@dataclass(frozen=True)
class _Child:
    row: OwnerRow
    kind: str
    gen: int
    order: Order | None  # None: claimed, never journaled (nothing was sent)


class Brackets:
    """The bracket children of the service's orders (module docstring)."""

    def __init__(self, om: OrderManager, owners: OwnerStore) -> None:
        self.om = om
        self.owners = owners
        self._locks = OrderLocks()
        self._active: set[str] = set()  # parents whose bracket may still need work
        self._refused: dict[tuple[str, str], Decimal] = {}  # (parent, kind) -> held when refused
        self._stalled: set[str] = set()  # waiting on an outcome nobody announces: tried again
        self.problems: dict[str, str] = {}  # parent -> why its protection is not as asked
        self._missing: dict[tuple[str, str], Missing] = {}  # (parent, kind) -> not placed

    def missing(self) -> list[Missing]:
        """The children that could not be placed (their positions are not fully protected)."""
        return sorted(self._missing.values(), key=lambda m: (m.since, m.order_id, m.kind))

    def _placed(self, pid: str, kind: str | None = None) -> None:
        """``kind`` of ``pid`` placed (None: every kind: nothing is held to protect)."""
        for k in KINDS if kind is None else (kind,):
            self._refused.pop((pid, k), None)
            self._missing.pop((pid, k), None)
        if not any(p == pid for p, _ in self._missing):
            self.problems.pop(pid, None)

    @property
    def active(self) -> list[str]:
        return sorted(self._active)

    def track(self, parent: str) -> None:
        """Watch ``parent`` (an order placed with a stop_loss or take_profit)."""
        row = self.owners.get(parent)
        if row is not None and row.parent is None and _levels(row):
            self._active.add(parent)

    def load(self) -> None:
        """Watch every bracket parent (startup); finished ones drop out at their first sweep."""
        for row in self.owners.parents():
            self._active.add(row.client_order_id)

    def parent_of(self, cid: str) -> str | None:
        """The parent a journal event of ``cid`` concerns (itself, or a child's parent)."""
        if cid in self._active:
            return cid
        row = self.owners.get(cid)
        return None if row is None else row.parent

    async def sweep(self) -> None:
        """Converge every watched bracket."""
        for parent in self.active:
            await self.converge(parent)

    @property
    def stalled(self) -> list[str]:
        """Brackets that waited on an outcome nobody announces (the fill poll retries them)."""
        return sorted(self._stalled)

    async def converge(self, parent: str) -> None:
        """Make ``parent``'s children at the broker what it holds (module docstring)."""
        async with self._locks.hold(parent):
            self._stalled.discard(parent)
            done = await self._converge(parent)
        if done:
            self._active.discard(parent)
            self._placed(parent)  # finished: nothing left to protect

    # ------------------------------------------------------------------ the decision

    @exact
    async def _converge(self, pid: str) -> bool:
        """One bracket brought in line; True once it is finished (the parent final, every
        child final: nothing held is left to protect)."""
        owner = self.owners.get(pid)
        if owner is None or owner.parent is not None or not _levels(owner):
            return True
        wanted = _levels(owner)
        for _ in range(_ROUNDS):
            parent = await asyncio.to_thread(self.om.get, pid)
            if parent is None:
                return True  # claimed, never journaled: a retry of its key tracks it again
            if parent.state in _UNRESOLVED:
                return False  # no fill is known before its outcome is
            kids = await asyncio.to_thread(self._children, pid)
            unknown = [k for k in kids if k.order is not None and k.order.state in _UNRESOLVED]
            if unknown:
                for k in unknown:  # the same intent again: looked up by client id, never resent
                    assert k.order is not None
                    order = await self.om.submit(k.order.intent, protective=True)
                    if order.state in _UNRESOLVED:
                        self._stalled.add(pid)
                        return False  # nothing is done on top of an order of unknown outcome
                continue
            exited = sum((k.order.filled_quantity for k in kids if k.order), Decimal(0))
            held = parent.filled_quantity - exited
            if held < 0:
                msg = (
                    f"bracket of {pid}: its children executed {exited}, more than the "
                    f"{parent.filled_quantity} it filled; nothing more is placed"
                )
                log.critical(msg)
                self.problems[pid] = msg
                held = Decimal(0)
            targets = {kind: Decimal(0) for kind in KINDS}
            cancelled = False
            group = self._group(pid, owner)
            for kind in wanted:
                targets[kind], trimmed = await self._target(parent, kind, held, kids, group)
                cancelled = cancelled or trimmed
            if not cancelled:
                gone = await self._stand_ins_replaced(parent, kids, group, targets["sl"])
                if gone is None:
                    self._stalled.add(pid)
                    return False  # a stand-in's cancel not confirmed: nothing placed on top
                cancelled = gone
            grow: set[str] = set()  # kinds whose replacement is placed before the old goes
            replaced = stand_ins = False
            for kind in KINDS:
                live = [k for k in kids if k.kind == kind and _live(k)]
                if sum((_left(k) for k in live), Decimal(0)) == targets[kind]:
                    continue
                made = _made(live, targets[kind], group)
                if made is None and _grows(live, targets[kind], group):
                    # a stop-loss too small (the parent filled more): its replacement first,
                    # in the same group, so a refused one leaves the old stop, never none
                    grow.add(kind)
                    continue
                for k in live:  # resized (cancel, then replace) or one-cancels-other
                    if k is made:
                        continue  # the replacement made before the others are cancelled
                    if not await self._cancel(k.row.client_order_id):
                        self._stalled.add(pid)
                        return False  # its answer is not known: nothing placed on top
                    cancelled = True
            if cancelled:
                crash_point("bracket.after_cancel")  # cancelled, the replacement not placed
                continue  # a cancelled child may have filled first: count again
            open_kids = [k for k in kids if k.order is not None and not is_final(k.order.state)]
            if held == 0:
                if exited <= parent.filled_quantity:
                    self._placed(pid)  # nothing held: nothing is unprotected
                return is_final(parent.state) and not open_kids
            for kind in wanted:
                want = targets[kind]
                if want == 0:
                    self._placed(pid, kind)  # no position left for it to protect
                    continue
                if kind not in grow and any(_live(k) for k in kids if k.kind == kind):
                    continue
                if self._refused.get((pid, kind)) == want:
                    continue  # refused at this size already (a problem): not sent again
                await self._place(owner, parent, kind, wanted[kind], want, kids)
                if self._refused.get((pid, kind)) == want:
                    continue
                if kind in grow:
                    replaced = True  # the replacement is in: the old child goes next round
                elif kind == "sl" and group is not None:
                    stand_ins = True  # an emergency stop in the group it covers goes next round
            if replaced:
                crash_point("bracket.after_replacement")  # both live in one group: the old next
                continue
            if stand_ins:
                continue
            return False
        return False

    def _group(self, pid: str, owner: OwnerRow) -> str | None:
        """The bracket's OCO group at the broker: both legs of a two-leg bracket (never
        both filled), and every child of any bracket where the broker declares groups (a
        replacement is then placed in the group before the child it replaces is cancelled:
        the two never execute more than the larger). None: one leg on a broker without
        groups (its replacement is placed after the old child is cancelled)."""
        if len(_levels(owner)) > 1 or self.om.broker.rules.oco_groups is True:
            return oco_group_of(pid)
        return None

    @exact
    async def _target(
        self, parent: Order, kind: str, held: Decimal, kids: list[_Child], group: str | None
    ) -> tuple[Decimal, bool]:
        """(what ``kind`` should cover, whether an emergency stop was cancelled for it): what
        the bracket holds, capped by the room the journal's net position leaves beside the
        reducing orders that are not this bracket's and can execute beside it (never
        over-protected): for a stop-loss the other stops; for a take-profit the other limits
        and every stop outside the bracket's OCO group ``group`` (an emergency stop the
        reconciler placed beside it, a user's stop). The reconciler's emergency stops
        (``es-...``) are cancelled to make room for a stop-loss, never for one refused at
        that size (the position would be left bare: it stays, and so does the refusal)."""
        pid = parent.client_order_id
        symbol = parent.symbol
        side = "sell" if parent.intent.side == "buy" else "buy"
        pos = self.om.positions().get(symbol, Decimal(0))
        if not ((pos > 0 and side == "sell") or (pos < 0 and side == "buy")):
            return Decimal(0), False
        mine = {k.row.client_order_id for k in kids}

        def beside(o: Order) -> bool:
            """Executes independently of this kind's child: takes room from it."""
            if o.intent.order_type in _STOP_TYPES:
                # a stop outside the bracket's group: both could fill, past zero; one in it
                # (the reconciler's emergency stop that joined it) is reduced by the child's
                # fills, so the child is placed beside it first (``_stand_ins_replaced``)
                return group is None or o.intent.oco_group != group
            return kind == "tp" and o.intent.order_type == "limit"

        others = [
            o
            for o in self.om.open_orders()
            if o.symbol == symbol
            and o.intent.side == side
            and o.state in _LIVE
            and beside(o)
            and o.client_order_id not in mine
        ]
        room = abs(pos) - sum((o.remaining for o in others), Decimal(0))
        trimmed = False
        for o in others:
            if room >= held or kind != "sl":
                break
            if not o.client_order_id.startswith(EMERGENCY_STOP_PREFIX):
                continue
            if self._refused.get((pid, kind)) == held:
                # refused at this size: cancelling the stand-in would leave the position bare
                return held, trimmed
            # the reconciler's stand-in for missing protection: the trader's stop replaces it
            trimmed = True
            if await self._cancel(o.client_order_id):
                room += o.remaining
        target = max(Decimal(0), min(held, room))
        if target < held:
            log.warning(
                "bracket of %s: %s of the %s held is protected by its %s: the %s position "
                "is %s beside other %s orders",
                parent.client_order_id,
                target,
                held,
                _name(kind),
                symbol,
                pos,
                side,
            )
        return target, trimmed

    async def _stand_ins_replaced(
        self, parent: Order, kids: list[_Child], group: str | None, target: Decimal
    ) -> bool | None:
        """Cancel the reconciler's emergency stops (``es-...``) in the bracket's OCO group
        that the bracket's live stop-loss now covers (made before broken: the stop-loss is
        placed in the group beside them first, so a refused one leaves the emergency stop,
        never a bare position; while both are live a fill of one reduces the other). An
        emergency stop larger than the stop-loss stays (it protects the rest of the
        position, and the group's reductions keep it exact), and every one stays while the
        stop-loss is not at its ``target`` yet (it may be resized: cancelled first). True if
        one was cancelled, False if none was due, None if a cancel was not confirmed."""
        if group is None:
            return False
        covered = sum(
            (_left(k) for k in kids if k.kind == "sl" and _live(k) and _in_group([k], group)),
            Decimal(0),
        )
        if covered == 0 or covered != target:
            return False
        side = "sell" if parent.intent.side == "buy" else "buy"
        cancelled = False
        for o in self.om.open_orders():
            if not (
                o.client_order_id.startswith(EMERGENCY_STOP_PREFIX)
                and o.symbol == parent.symbol
                and o.intent.side == side
                and o.state in _LIVE
                and o.intent.oco_group == group
                and o.remaining <= covered
            ):
                continue
            if not await self._cancel(o.client_order_id):
                return None
            cancelled = True
        return cancelled

    def _children(self, pid: str) -> list[_Child]:
        out = []
        for row in self.owners.children_of(pid):
            parsed = parse_child_id(row.client_order_id)
            if parsed is None:
                continue
            out.append(_Child(row, parsed[0], parsed[1], self.om.get(row.client_order_id)))
        return out

    async def _cancel(self, cid: str) -> bool:
        """Cancel a child; True once it is final (cancelled, or filled meanwhile)."""
        try:
            order = await self.om.cancel(cid)
        except OrderRejected:
            # not open any more (it filled or was cancelled: counted next), or the broker
            # did not show it by its client id (nothing was sent): still open in the journal,
            # it may be live there, so nothing is placed on top of it
            got = self.om.get(cid)
            return got is None or is_final(got.state)
        return is_final(order.state)

    async def _place(
        self,
        owner: OwnerRow,
        parent: Order,
        kind: str,
        level: Decimal,
        held: Decimal,
        kids: list[_Child],
    ) -> None:
        pid = parent.client_order_id
        side = "sell" if parent.intent.side == "buy" else "buy"
        unsent = [k.gen for k in kids if k.kind == kind and k.order is None]
        gen = unsent[0] if unsent else 1 + max((k.gen for k in kids if k.kind == kind), default=0)
        cid = child_order_id(pid, kind, gen)
        key = child_key(pid, kind, gen)
        row = OwnerRow(
            cid, owner.trader_id, key, hashlib.sha256(key.encode()).hexdigest(), None, None
        )
        # committed before the child is journaled: the generation survives any crash
        await asyncio.to_thread(self.owners.claim, row)
        intent = OrderIntent(
            symbol=parent.symbol,
            side=side,
            quantity=held,
            order_type="stop" if kind == "sl" else "limit",
            stop_price=level if kind == "sl" else None,
            limit_price=level if kind == "tp" else None,
            time_in_force="gtc",
            account=parent.intent.account,
            client_order_id=cid,
            # both kinds linked at the broker, reduce on fill: a fill of one shrinks the other
            # in the same broker transition, never both filled before converge sees it
            oco_group=self._group(pid, owner),
        )
        try:
            order = await self.om.submit(intent, protective=True)
        except OrderRejected as exc:
            if await asyncio.to_thread(self.om.get, cid) is None:
                await asyncio.to_thread(self.owners.release, cid)  # nothing was journaled
            self._refuse(owner, parent, kind, held, f"refused before it was sent: {exc.message}")
            return
        if order.state in (_S.REJECTED, _S.SUBMIT_FAILED):
            self._refuse(owner, parent, kind, held, f"{order.state.value}: {order.reason}")
            return
        if order.state in _UNRESOLVED:
            self._stalled.add(pid)
        self._placed(pid, kind)

    def _refuse(self, owner: OwnerRow, parent: Order, kind: str, held: Decimal, why: str) -> None:
        pid = parent.client_order_id
        msg = f"the {_name(kind)} of {pid} ({held}) is not placed: {why}"
        log.critical(msg)
        self._refused[(pid, kind)] = held
        self.problems[pid] = msg
        self._missing[(pid, kind)] = Missing(
            pid,
            owner.trader_id,
            parent.symbol,
            kind,
            held,
            f"the {_name(kind)} ({held}) is not placed: {why}",
            utc_now(),
        )


def _levels(row: OwnerRow) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    if row.stop_loss is not None:
        out["sl"] = Decimal(row.stop_loss)
    if row.take_profit is not None:
        out["tp"] = Decimal(row.take_profit)
    return out


def _live(k: _Child) -> bool:
    return k.order is not None and k.order.state in _LIVE


def _made(live: list[_Child], target: Decimal, group: str | None) -> _Child | None:
    """The replacement made before the others were cancelled: the newest live child,
    exactly ``target`` left, and every live child in ``group`` (while both are live they
    execute at most the larger); then only the others are cancelled. None otherwise."""
    if group is None or not live or target == 0:
        return None
    newest = max(live, key=lambda k: k.gen)
    return newest if _in_group(live, group) and _left(newest) == target else None


def _grows(live: list[_Child], target: Decimal, group: str | None) -> bool:
    """Live children in ``group`` that cover less than ``target``: the replacement is placed
    first (in the group), the old ones cancelled once it is live (``_made``)."""
    return (
        group is not None
        and bool(live)
        and _in_group(live, group)
        and max(_left(k) for k in live) < target
    )


def _in_group(live: list[_Child], group: str | None) -> bool:
    """Every one of ``live`` is in OCO group ``group`` at the broker."""
    return all(k.order is not None and k.order.intent.oco_group == group for k in live)


def _left(k: _Child) -> Decimal:
    assert k.order is not None
    return k.order.remaining


def _name(kind: str) -> str:
    return "stop-loss" if kind == "sl" else "take-profit"
