"""The errors of the order layer, under ``WALError``.

::

    WALError
    └── OrderError                     base of the order layer's errors
        ├── OrderRejected              refused before anything was written or sent; ``reason``
        ├── IllegalTransitionError     a state change the transition table does not allow
        ├── FillError                  a fill that cannot be applied (overfill, unknown order)
        ├── TradingHalted              submit refused: startup reconciliation has not succeeded
        ├── ReconciliationFatalError   the reconciler could not establish the broker's state
        └── BrokerError                the broker call did not give a clear answer or refused
            ├── BrokerUnavailable      timeout, transport error, 5xx: the outcome is UNKNOWN
            ├── BrokerRejectedError    a clear reject (4xx with a reason): the order is over
            ├── DuplicateClientOrderId the broker already has this client id: look up, adopt
            └── BrokerProtocolError    an answer we cannot read (unknown status string, ...)

``BrokerUnavailable`` is never a failure of the order: the broker may have accepted it.
"""

from __future__ import annotations

from enum import StrEnum

from wal.errors import WALError

__all__ = [
    "BrokerError",
    "BrokerProtocolError",
    "BrokerRejectedError",
    "BrokerUnavailable",
    "DuplicateClientOrderId",
    "FillError",
    "IllegalTransitionError",
    "OrderError",
    "OrderRejected",
    "ReconciliationFatalError",
    "RejectReason",
    "TradingHalted",
]


class RejectReason(StrEnum):
    """Why ``OrderManager.submit`` refused an intent (nothing was journaled or sent)."""

    BAD_QUANTITY = "bad_quantity"  # not a Decimal, not finite, or <= 0
    BAD_SYMBOL = "bad_symbol"  # not 1-32 chars of [A-Z0-9._/:-], starting with a letter or digit
    BAD_SIDE = "bad_side"  # not "buy" or "sell"
    BAD_ORDER_TYPE = "bad_order_type"  # not market, limit, stop or stop_limit
    BAD_PRICE = "bad_price"  # a price missing, present where not allowed, not Decimal or <= 0
    BAD_CLIENT_ORDER_ID = "bad_client_order_id"  # not 1-36 chars of [A-Za-z0-9_-]
    BAD_OCO_GROUP = "bad_oco_group"  # not a client id the broker accepts (its rules)
    OCO_UNSUPPORTED = "oco_unsupported"  # an oco_group, and the broker declares no OCO groups
    # starts with a prefix the startup reconciler's own orders use (orphan-, es-, close-)
    RESERVED_CLIENT_ORDER_ID = "reserved_client_order_id"
    BAD_TIME_IN_FORCE = "bad_time_in_force"  # not day, gtc, ioc or fok
    BAD_ACCOUNT = "bad_account"  # not a str of 1-64 printable characters
    BAD_CREATED_AT = "bad_created_at"  # not an aware datetime, in the future or a day old
    INSUFFICIENT_BALANCE = "insufficient_balance"  # a buy costs more than the balance
    MAX_POSITION = "max_position"  # the position in the symbol would exceed the limit
    MAX_NOTIONAL = "max_notional"  # quantity x price exceeds the per-order limit
    DAILY_LOSS = "daily_loss"  # today's realized loss has reached the limit
    NO_PRICE = "no_price"  # a market order with no reference price to value it
    CONFLICTING_INTENT = "conflicting_intent"  # client id reused for a different intent
    BROKER_REJECTED = "broker_rejected"  # the broker refused it (one call, then final)


class OrderError(WALError):
    """Base class of the order layer's errors."""


class OrderRejected(OrderError):
    """Refused with a specific ``reason``; ``field`` names the input that was wrong."""

    hint = "fix the order; nothing was journaled or sent"

    def __init__(self, reason: RejectReason, message: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"order rejected ({reason.value}): {message}")


class IllegalTransitionError(OrderError):
    """A state change the transition table forbids (e.g. FILLED -> ACCEPTED)."""

    hint = "a bug or a broker report out of order; the order was not changed"


class FillError(OrderError):
    """A fill that was not applied: it would exceed the order's quantity, names an unknown
    order, or contradicts the order (symbol or side)."""

    hint = "the fill was not journaled; reconcile the order with the broker"


class TradingHalted(OrderError):
    """``OrderManager.submit`` refused: trading is halted (startup reconciliation has not
    succeeded yet, or failed). Nothing was journaled or sent; cancels are still allowed."""

    hint = "run the startup reconciliation (`atb orders reconcile`); see docs/orders.md"


class ReconciliationFatalError(OrderError):
    """The startup reconciler could not establish the broker's state (a fetch failed after
    its retries, or the broker reported a status nobody knows): trading stays halted."""

    hint = "trading stays halted; see the runbook in docs/orders.md, then reconcile again"


class BrokerError(OrderError):
    """The broker did not do what was asked, or its answer could not be read."""


class BrokerUnavailable(BrokerError):
    """Timeout, transport error or a 5xx: the broker may or may not have acted."""

    hint = "the order is UNKNOWN until it is looked up by its client id"


class BrokerRejectedError(BrokerError):
    """A clear refusal by the broker (insufficient funds, bad symbol, ...)."""

    hint = "the order ended REJECTED; it is not retried"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the broker rejected the order: {reason}")


class DuplicateClientOrderId(BrokerError):
    """The broker already has an order with this client id: it exists; look it up."""

    def __init__(self, client_order_id: str) -> None:
        self.client_order_id = client_order_id
        super().__init__(f"the broker already has client_order_id {client_order_id!r}")


class BrokerProtocolError(BrokerError):
    """An answer the adapter cannot interpret (an unknown status string, a malformed body)."""

    hint = "the order is left as it was; check the broker adapter"
