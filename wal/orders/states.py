"""Order states, the transition table, and the event kinds of the order journal.

::

    PENDING ──> SUBMITTING ──> ACCEPTED ──> PARTIALLY_FILLED ──> FILLED
       │            │  │           │               │
       │            │  └─> UNKNOWN ┘ (timeout: looked up by client id, adopted or resent)
       │            └────> REJECTED / SUBMIT_FAILED
       └─> CANCELLED / SUBMIT_FAILED (never sent)

``TRANSITIONS[a]`` is the set of states an order in state ``a`` may move to; anything else
raises ``IllegalTransitionError``. FILLED, REJECTED, CANCELLED and SUBMIT_FAILED are final.
Only the reconciler may step outside the table (``OrderManager.force_state(...,
_reconciliation=True)``): the broker is the truth after a crash.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from wal.orders.errors import IllegalTransitionError

__all__ = [
    "FINAL_STATES",
    "TRANSITIONS",
    "EventKind",
    "OrderState",
    "check_transition",
    "is_final",
]


class OrderState(StrEnum):
    """Where an order is. The values are what the journal and ``--json`` output hold."""

    PENDING = "pending"  # the intent is journaled (fsynced); nothing was sent
    SUBMITTING = "submitting"  # journaled just before the broker call: it may have arrived
    ACCEPTED = "accepted"  # the broker acknowledged it (or a lookup found it)
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    REJECTED = "rejected"  # a clear refusal by the broker: never retried
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # a timeout/transport error/5xx: sent, outcome unknown
    SUBMIT_FAILED = "submit_failed"  # not at the broker after its visibility window


class EventKind(StrEnum):
    """What an ``order_events`` row records."""

    CREATED = "created"  # the intent was journaled -> PENDING
    SUBMITTED = "submitted"  # about to call the broker -> SUBMITTING (the request may arrive)
    ACCEPTED = "accepted"  # the broker's acknowledgement of our call
    UNKNOWN = "unknown"  # the call timed out or failed in transport: outcome unknown
    RECOVERED = "recovered"  # a lookup by client id found the order: adopted
    REJECTED = "rejected"
    FILL = "fill"  # a fill was journaled (its row is in ``fills``)
    FILL_CORRECTED = "fill_corrected"  # a corrected execution replaced an earlier fill
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    SUBMIT_FAILED = "submit_failed"
    FORCED = "forced"  # the reconciler set the state outside the table


_S = OrderState
FINAL_STATES: Final = frozenset({_S.FILLED, _S.REJECTED, _S.CANCELLED, _S.SUBMIT_FAILED})
_BROKER_OUTCOMES = frozenset(
    {_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED, _S.REJECTED, _S.CANCELLED}
)

TRANSITIONS: Final[dict[OrderState, frozenset[OrderState]]] = {
    # a PENDING order was never sent; a lookup at start may still find it (adopted)
    _S.PENDING: frozenset({_S.SUBMITTING, _S.SUBMIT_FAILED} | _BROKER_OUTCOMES),
    _S.SUBMITTING: frozenset({_S.UNKNOWN, _S.SUBMIT_FAILED} | _BROKER_OUTCOMES),
    # UNKNOWN -> SUBMITTING: resent with the same client id (global-dedup brokers only)
    _S.UNKNOWN: frozenset({_S.SUBMITTING, _S.UNKNOWN, _S.SUBMIT_FAILED} | _BROKER_OUTCOMES),
    _S.ACCEPTED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.REJECTED}),
    _S.PARTIALLY_FILLED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED}),
    _S.FILLED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.SUBMIT_FAILED: frozenset(),
}


def is_final(state: OrderState) -> bool:
    """True for FILLED, REJECTED, CANCELLED and SUBMIT_FAILED: nothing follows them."""
    return state in FINAL_STATES


def check_transition(current: OrderState, new: OrderState) -> None:
    """Raise ``IllegalTransitionError`` unless ``TRANSITIONS`` allows ``current -> new``."""
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "nothing (final)"
        raise IllegalTransitionError(
            f"illegal order transition {current.value} -> {new.value} (allowed: {allowed})"
        )
