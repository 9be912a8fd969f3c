"""``PositionBook``: the order manager's positions and daily P&L, kept from the fills it journals.

The manager is the only writer of the positions it opens (ids ``ord-...``). Each fill becomes
position operations (``log_position``, ``update_position``, ``close_position``) journaled in
the fill's own entry; the book computes them, with the realized P&L, and is updated once the
entry is durable::

    ops, pnl, after = book.change("AAPL", Decimal("-5"), Decimal("190"))  # a sell of 5
    ...journal the fill with ops and pnl...
    book.set("AAPL", after)
    book.add_pnl(executed_at, pnl)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from wal.money import exact

__all__ = ["POSITION_PREFIX", "PRICE_QUANTUM", "Position", "PositionBook"]

PRICE_QUANTUM = Decimal("1E-10")  # average and entry prices, realized P&L
POSITION_PREFIX = "ord-"  # positions the order manager opens; it is their only writer


@dataclass
class Position:
    position_id: str
    quantity: Decimal  # signed
    entry_price: Decimal


class PositionBook:
    """The net position per symbol (signed) and the realized P&L per UTC date."""

    def __init__(self) -> None:
        self._positions: dict[str, Position] = {}
        self._daily_pnl: dict[str, Decimal] = {}  # UTC date -> realized P&L

    @exact
    def load(self, open_positions: Iterable[Mapping[str, Any]]) -> None:
        """Take the open positions this manager opened (``ord-`` ids) from database rows."""
        for row in open_positions:
            pid = str(row["position_id"])
            if pid.startswith(POSITION_PREFIX):
                q = Decimal(str(row["quantity"]))
                self._positions[str(row["symbol"])] = Position(
                    pid, q if row["side"] == "long" else -q, Decimal(str(row["entry_price"]))
                )

    def net(self) -> dict[str, Decimal]:
        """The net position per symbol (signed), flat symbols left out."""
        return {s: p.quantity for s, p in self._positions.items() if p.quantity != 0}

    def quantity(self, symbol: str) -> Decimal:
        """The signed position in ``symbol`` (0 if none)."""
        p = self._positions.get(symbol)
        return p.quantity if p is not None else Decimal(0)

    def entry_price(self, symbol: str) -> Decimal | None:
        """The entry price of the open position in ``symbol`` (None if flat)."""
        p = self._positions.get(symbol)
        return None if p is None or p.quantity == 0 else p.entry_price

    def pnl_on(self, day: str) -> Decimal:
        """The realized P&L of one UTC date (ISO format)."""
        return self._daily_pnl.get(day, Decimal(0))

    def position(self, symbol: str) -> Position | None:
        """The position in ``symbol`` as booked (None if never opened)."""
        return self._positions.get(symbol)

    def change(
        self, symbol: str, signed: Decimal, price: Decimal
    ) -> tuple[list[dict[str, Any]], Decimal | None, Position | None]:
        """The position operations a fill makes, its realized P&L, the position after it."""
        return self.change_from(self._positions.get(symbol), symbol, signed, price)

    @exact
    def change_from(
        self, pos: Position | None, symbol: str, signed: Decimal, price: Decimal
    ) -> tuple[list[dict[str, Any]], Decimal | None, Position | None]:
        """``change`` from the position ``pos`` instead of the booked one (several fills of
        one symbol computed in turn before any of them is booked)."""
        q0 = pos.quantity if pos is not None else Decimal(0)
        q1 = q0 + signed
        ops: list[dict[str, Any]] = []
        pnl: Decimal | None = None
        if signed == 0:
            return ops, None, pos

        def opened(q: Decimal) -> tuple[dict[str, Any], Position]:
            pid = f"{POSITION_PREFIX}{uuid.uuid4().hex}"  # made here: a replay reuses it
            return (
                {
                    "op": "log_position",
                    "kwargs": {
                        "position_id": pid,
                        "symbol": symbol,
                        "side": "long" if q > 0 else "short",
                        "quantity": abs(q),
                        "entry_price": price,
                    },
                },
                Position(pid, q, price),
            )

        if pos is None or q0 == 0:
            op, new = opened(q1)
            return [op], None, new
        if (q0 > 0) == (signed > 0):  # adding: the entry price becomes the average
            entry = ((pos.entry_price * abs(q0) + price * abs(signed)) / abs(q1)).quantize(
                PRICE_QUANTUM
            )
            ops.append(
                {
                    "op": "update_position",
                    "kwargs": {
                        "position_id": pos.position_id,
                        "quantity": abs(q1),
                        "entry_price": entry,
                    },
                }
            )
            return ops, None, Position(pos.position_id, q1, entry)
        closed = min(abs(signed), abs(q0))
        pnl = ((price - pos.entry_price) * closed * (1 if q0 > 0 else -1)).quantize(PRICE_QUANTUM)
        if q1 == 0 or (q1 > 0) != (q0 > 0):
            ops.append(
                {
                    "op": "close_position",
                    "kwargs": {"position_id": pos.position_id, "exit_price": price, "pnl": pnl},
                }
            )
            if q1 == 0:
                return ops, pnl, None
            op, new = opened(q1)
            ops.append(op)
            return ops, pnl, new
        ops.append(
            {
                "op": "update_position",
                "kwargs": {"position_id": pos.position_id, "quantity": abs(q1)},
            }
        )
        return ops, pnl, Position(pos.position_id, q1, pos.entry_price)

    def set(self, symbol: str, pos: Position | None) -> None:
        """The position in ``symbol`` after a journaled fill (None: closed)."""
        if pos is None:
            self._positions.pop(symbol, None)
        else:
            self._positions[symbol] = pos

    @exact
    def add_pnl(self, at: datetime, pnl: Decimal) -> None:
        """Add realized P&L to the UTC date of ``at``."""
        day = at.astimezone(UTC).date().isoformat()
        self._daily_pnl[day] = self._daily_pnl.get(day, Decimal(0)) + pnl
