"""The API's request bodies (Pydantic): a bad input is a 422 naming its field.

``OrderRequest`` is the note's request (symbol, side, quantity, order_type, price, stop_loss,
take_profit) plus ``stop_price`` (a stop-limit's trigger) and ``time_in_force``. Money and
quantities are decimals: JSON strings ("187.25") or numbers, at most 10 decimal places.
``fingerprint`` is the SHA-256 of the request in canonical form: the same order written
differently ("10" and 10.0) has the same fingerprint; another order has another.
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from wal.money import exact

__all__ = ["OrderRequest"]


def _lower(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


# a decimal in a JSON string: ASCII digits only (Python's Decimal() would also take "1_000"
# and other scripts' digits), an optional fraction and exponent
_DECIMAL_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,4})?")


def _decimal_text(v: Any) -> Any:
    if isinstance(v, str) and not _DECIMAL_TEXT.fullmatch(v):
        raise ValueError(f"{v[:40]!r} is not a decimal number (digits 0-9, a point, no spaces)")
    return v


def _plain(v: Decimal) -> Decimal:
    """The same value without an exponent (1E+5 is 100000): messages and rows show digits."""
    return Decimal(format(v, "f"))


_Amount = Annotated[
    Decimal,
    BeforeValidator(_decimal_text),
    Field(gt=0, max_digits=28, decimal_places=10, allow_inf_nan=False),
    AfterValidator(_plain),
]


class OrderRequest(BaseModel):
    """POST /api/v1/orders."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    symbol: Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9._/:-]{0,31}$")]
    side: Annotated[Literal["buy", "sell"], BeforeValidator(_lower)]
    quantity: _Amount
    order_type: Annotated[
        Literal["market", "limit", "stop", "stop_limit"], BeforeValidator(_lower)
    ] = "market"
    price: _Amount | None = None  # a limit's limit, a stop's trigger
    stop_price: _Amount | None = None  # a stop_limit's trigger
    stop_loss: _Amount | None = None
    take_profit: _Amount | None = None
    time_in_force: Annotated[Literal["day", "gtc", "ioc", "fok"], BeforeValidator(_lower)] = "day"

    @model_validator(mode="after")
    def _prices(self) -> OrderRequest:
        if self.order_type == "market" and self.price is not None:
            raise _field_error("price", "a market order takes no price")
        if self.order_type != "market" and self.price is None:
            raise _field_error("price", f"a {self.order_type} order needs a price")
        if (self.order_type == "stop_limit") != (self.stop_price is not None):
            raise _field_error("stop_price", "stop_price is for (and needed by) stop_limit only")
        if self.price is not None:
            wrong = self.bracket_problem(self.price, "the price")
            if wrong is not None:
                raise _field_error(*wrong)
        if self.stop_loss is not None and self.take_profit is not None:
            sl, tp = self.stop_loss, self.take_profit
            if (self.side == "buy" and sl >= tp) or (self.side == "sell" and sl <= tp):
                raise _field_error("stop_loss", "stop_loss is on the wrong side of take_profit")
        return self

    def bracket_problem(self, ref: Decimal, what: str) -> tuple[str, str] | None:
        """(field, message) when stop_loss or take_profit is on the wrong side of ``ref`` (the
        order's price, or the market's for a market order): such a child would execute at
        once, closing the position it was to protect; None when both are on their side."""
        below, above = (
            ("stop_loss", "take_profit") if self.side == "buy" else ("take_profit", "stop_loss")
        )
        low, high = getattr(self, below), getattr(self, above)
        if low is not None and low >= ref:
            return below, f"{below} {low} must be below {what} {ref}"
        if high is not None and high <= ref:
            return above, f"{above} {high} must be above {what} {ref}"
        return None

    @exact
    def fingerprint(self) -> str:
        """SHA-256 of the canonical request (decimals normalized, keys sorted)."""
        doc = {
            k: (format(v.normalize(), "f") if isinstance(v, Decimal) else v)
            for k, v in self.model_dump().items()
        }
        body = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()


class FieldError(ValueError):
    """A model-level check that names its field (the 422 handler reads ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _field_error(field: str, message: str) -> FieldError:
    return FieldError(field, message)
