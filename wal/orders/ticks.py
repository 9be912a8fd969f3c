"""Tick sizes: every price the library computes is a price a real broker accepts.

A broker refuses a price that is not a multiple of the instrument's tick (``90.7131555555``
is refused everywhere; US equities trade in cents at or above 1.00, in 0.0001 below: the SEC's
sub-penny rule). ``TickTable`` holds the tick per symbol (``ORDER_TICK_SIZES="BTC-USD=0.01,
ES=0.25"``); a symbol it does not name gets the equity default. ``round_stop`` rounds a stop
price *away from the market* (down for a sell stop, up for a buy stop): a stop is never moved
closer to the price it protects against, so rounding can only make it trigger later, never
at once. ::

    ticks = TickTable({"ES": Decimal("0.25")})
    ticks.round_stop("AAPL", Decimal("90.7131555"), "sell")   # Decimal('90.71')
    ticks.round_stop("ES", Decimal("4012.30"), "buy")          # Decimal('4012.50')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation

from wal.money import exact

__all__ = ["DEFAULT_TICK_ABOVE_1", "DEFAULT_TICK_BELOW_1", "TickTable", "default_tick"]

DEFAULT_TICK_ABOVE_1 = Decimal("0.01")  # at or above 1.00: cents
DEFAULT_TICK_BELOW_1 = Decimal("0.0001")  # below 1.00: hundredths of a cent


@exact
def default_tick(price: Decimal) -> Decimal:
    """The common equity rule: 0.01 at or above 1.00, 0.0001 below."""
    return DEFAULT_TICK_ABOVE_1 if abs(price) >= 1 else DEFAULT_TICK_BELOW_1


def _tick(value: object, where: str) -> Decimal:
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{where}: tick size {value!r} is not a number") from None
    if not d.is_finite() or d <= 0:
        raise ValueError(f"{where}: tick size must be a positive number, got {value!r}")
    return d


@dataclass(frozen=True)
class TickTable:
    """The tick size per symbol; symbols it does not name follow ``default_tick``."""

    sizes: Mapping[str, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "sizes", {s: _tick(t, f"symbol {s!r}") for s, t in dict(self.sizes).items()}
        )

    def tick(self, symbol: str, price: Decimal) -> Decimal:
        """The tick of ``symbol`` at ``price``."""
        t = self.sizes.get(symbol)
        return t if t is not None else default_tick(price)

    @exact
    def round(self, symbol: str, price: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
        """``price`` on the tick grid of ``symbol`` (``rounding``: a ``decimal`` mode)."""
        t = self.tick(symbol, price)
        return ((price / t).to_integral_value(rounding=rounding) * t).quantize(t)

    def round_stop(self, symbol: str, price: Decimal, side: str) -> Decimal:
        """A stop price on the tick grid, rounded away from the market: a sell stop (below
        the market) down, a buy stop (above it) up."""
        if side not in ("buy", "sell"):
            raise ValueError(f"side must be 'buy' or 'sell', got {side!r}")
        return self.round(symbol, price, ROUND_FLOOR if side == "sell" else ROUND_CEILING)

    @classmethod
    def parse(cls, text: str) -> TickTable:
        """``"SYM=0.01,SYM2=0.25"`` (the format of ``ORDER_TICK_SIZES``); empty: defaults."""
        sizes: dict[str, Decimal] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            sym, sep, tick = part.partition("=")
            if not sep or not sym.strip():
                raise ValueError(f"ORDER_TICK_SIZES: {part!r} is not SYMBOL=TICK")
            sizes[sym.strip()] = _tick(tick.strip(), f"ORDER_TICK_SIZES {sym.strip()}")
        return cls(sizes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TickTable:
        """From ``ORDER_TICK_SIZES`` (see ``parse``)."""
        e = os.environ if env is None else env
        return cls.parse(e.get("ORDER_TICK_SIZES", ""))
