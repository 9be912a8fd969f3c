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
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = ["OrderRequest"]


def _lower(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


_Amount = Annotated[Decimal, Field(gt=0, max_digits=28, decimal_places=10, allow_inf_nan=False)]


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
        ref = self.price
        if ref is not None:
            below, above = (
                ("stop_loss", "take_profit") if self.side == "buy" else ("take_profit", "stop_loss")
            )
            low, high = getattr(self, below), getattr(self, above)
            if low is not None and low >= ref:
                raise _field_error(below, f"{below} {low} must be below the price {ref}")
            if high is not None and high <= ref:
                raise _field_error(above, f"{above} {high} must be above the price {ref}")
        if self.stop_loss is not None and self.take_profit is not None:
            sl, tp = self.stop_loss, self.take_profit
            if (self.side == "buy" and sl >= tp) or (self.side == "sell" and sl <= tp):
                raise _field_error("stop_loss", "stop_loss is on the wrong side of take_profit")
        return self

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
