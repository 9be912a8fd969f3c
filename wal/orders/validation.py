"""Checks before an order is journaled: the intent's own syntax, then the risk limits.

Every failure raises ``OrderRejected`` with one specific ``RejectReason`` naming what was
wrong; nothing is journaled or sent. ``validate_intent`` needs nothing but the intent;
``check_risk`` is given the figures it judges (the balance read through the log's overlay,
the net position, today's realized P&L), so it is a pure function the tests can drive.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from wal.entry import utc_now
from wal.money import exact
from wal.orders.broker import ClientIdRules
from wal.orders.errors import OrderRejected, RejectReason
from wal.orders.models import OrderIntent

__all__ = [
    "CLOSE_PREFIX",
    "CREATED_AT_MAX_AGE",
    "CREATED_AT_MAX_SKEW",
    "EMERGENCY_STOP_PREFIX",
    "ORDER_TYPES",
    "ORPHAN_PREFIX",
    "RESERVED_PREFIXES",
    "SIDES",
    "TIMES_IN_FORCE",
    "RiskLimits",
    "RiskView",
    "check_risk",
    "validate_intent",
]

SIDES: Final = frozenset({"buy", "sell"})
ORDER_TYPES: Final = frozenset({"market", "limit", "stop", "stop_limit"})
TIMES_IN_FORCE: Final = frozenset({"day", "gtc", "ioc", "fok"})  # the API's (wal.service.schemas)
# the whole string (fullmatch): "$" would also match before a trailing newline
SYMBOL_RE: Final = re.compile(r"[A-Z0-9][A-Z0-9._/:-]{0,31}")
_MAX_ACCOUNT_LEN: Final = 64  # the balances' account column
# created_at: the fills of an order are fetched from its created_at (less a minute), so a
# time in the future loses them, and a naive one cannot be compared with the broker's times.
# A minute of clock skew ahead; at most a day old (an intent is a decision to trade now: a
# stale one is refused, and fetching a broker's fills for days on every poll is not done).
CREATED_AT_MAX_SKEW: Final = timedelta(seconds=60)
CREATED_AT_MAX_AGE: Final = timedelta(days=1)
# The client ids the startup reconciler makes for itself (wal.orders.reconcile_model,
# wal.orders.stops): synthetic orders (journaled, never sent), emergency stops, market closes.
# It tells its own orders by these prefixes (it completes a half-written synthetic order,
# cancels and replaces its emergency stops), so no other order may carry one: a user's
# ``orphan-AAPL-20250102`` would be completed with a synthetic fill while it rests at the
# broker. Refused in any letter case (``reserved_client_order_id``), nothing journaled or sent.
ORPHAN_PREFIX: Final = "orphan-"
EMERGENCY_STOP_PREFIX: Final = "es-"
CLOSE_PREFIX: Final = "close-"
RESERVED_PREFIXES: Final = (ORPHAN_PREFIX, EMERGENCY_STOP_PREFIX, CLOSE_PREFIX)
_MAX_DIGITS: Final = 18  # the database's NUMERIC(28, 10): at most 18 integer digits
_MAX_PLACES: Final = 10


@dataclass(frozen=True)
class RiskLimits:
    """Pre-trade limits; None switches a limit off.

    ``max_position``: the largest position (in units) per symbol on each side, in the worst
    case: the position plus every open buy (this one included) at most ``max_position``, the
    position minus every open sell at least ``-max_position`` (open orders of the other side
    never make room: they may not fill). ``max_position_notional``: the same worst case per
    side, valued at the order's price. ``max_order_notional``: quantity x price of one order.
    ``max_daily_loss``: a positive amount; submits stop once today's (UTC) realized P&L is
    at or below minus it. ``check_balance``: a buy's cost (plus the open buys') must fit in
    the account's balance as read through the log (pending entries included).
    """

    max_position: Decimal | None = None
    max_order_notional: Decimal | None = None
    max_daily_loss: Decimal | None = None
    check_balance: bool = True
    max_position_notional: Decimal | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RiskLimits:
        """``ORDER_MAX_POSITION``, ``ORDER_MAX_NOTIONAL``, ``ORDER_MAX_DAILY_LOSS``,
        ``ORDER_MAX_POSITION_NOTIONAL``."""
        e = os.environ if env is None else env

        def dec(name: str) -> Decimal | None:
            v = e.get(name)
            return None if not v else Decimal(v)

        return cls(
            dec("ORDER_MAX_POSITION"),
            dec("ORDER_MAX_NOTIONAL"),
            dec("ORDER_MAX_DAILY_LOSS"),
            max_position_notional=dec("ORDER_MAX_POSITION_NOTIONAL"),
        )


@dataclass(frozen=True)
class RiskView:
    """What ``check_risk`` judges an intent against (read by the manager, fed in here)."""

    price: Decimal | None  # the price the order is valued at (limit, stop or market)
    balance: Decimal | None  # the account's balance after its fills, incl. pending entries
    reserved: Decimal  # what the account's open buy orders may still cost (the worst case)
    position: Decimal  # the symbol's position, signed: its fills only
    daily_pnl: Decimal  # today's realized P&L (negative: a loss)
    open_buys: Decimal = Decimal(0)  # what the symbol's open buy orders may still buy
    open_sells: Decimal = Decimal(0)  # what its open sell orders may still sell (positive)


def _reject(reason: RejectReason, message: str, field_: str) -> OrderRejected:
    return OrderRejected(reason, message, field=field_)


@exact
def _amount(value: object, name: str, reason: RejectReason) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal):
        raise _reject(
            reason,
            f"{name} must be a Decimal, got {type(value).__name__} "
            f"{value!r} (money is never float)",
            name,
        )
    if not value.is_finite() or value <= 0:
        raise _reject(reason, f"{name} must be a positive finite Decimal, got {value}", name)
    if value.adjusted() >= _MAX_DIGITS or value != value.quantize(Decimal(1).scaleb(-_MAX_PLACES)):
        raise _reject(
            reason,
            f"{name}={value} needs at most {_MAX_DIGITS} integer digits and "
            f"{_MAX_PLACES} decimal places",
            name,
        )
    return value


def validate_intent(
    intent: OrderIntent,
    rules: ClientIdRules | None = None,
    *,
    now: datetime | None = None,
    reconciler: bool = False,
) -> None:
    """Raise ``OrderRejected`` for the first thing wrong with the intent itself (``now``:
    the time ``created_at`` is judged against, the clock's by default). A client id with a
    reserved prefix (``RESERVED_PREFIXES``) is refused unless ``reconciler`` (the startup
    reconciler's own orders, and only those)."""
    if not isinstance(intent.symbol, str) or not SYMBOL_RE.fullmatch(intent.symbol):
        raise _reject(
            RejectReason.BAD_SYMBOL,
            f"symbol {intent.symbol!r} is not 1-32 chars of "
            "A-Z 0-9 . _ / : - starting with a letter or digit",
            "symbol",
        )
    if intent.side not in SIDES:
        raise _reject(RejectReason.BAD_SIDE, f"side {intent.side!r} is not buy or sell", "side")
    _amount(intent.quantity, "quantity", RejectReason.BAD_QUANTITY)
    if intent.order_type not in ORDER_TYPES:
        raise _reject(
            RejectReason.BAD_ORDER_TYPE,
            f"order_type {intent.order_type!r} is not one of {', '.join(sorted(ORDER_TYPES))}",
            "order_type",
        )
    needs_limit = intent.order_type in ("limit", "stop_limit")
    needs_stop = intent.order_type in ("stop", "stop_limit")
    for name, needed, value in (
        ("limit_price", needs_limit, intent.limit_price),
        ("stop_price", needs_stop, intent.stop_price),
    ):
        if needed and value is None:
            raise _reject(
                RejectReason.BAD_PRICE, f"a {intent.order_type} order needs a {name}", name
            )
        if not needed and value is not None:
            raise _reject(
                RejectReason.BAD_PRICE, f"a {intent.order_type} order takes no {name}", name
            )
        if value is not None:
            _amount(value, name, RejectReason.BAD_PRICE)
    tif = intent.time_in_force
    if not isinstance(tif, str) or tif not in TIMES_IN_FORCE:
        raise _reject(
            RejectReason.BAD_TIME_IN_FORCE,
            f"time_in_force {tif!r} is not one of {', '.join(sorted(TIMES_IN_FORCE))}",
            "time_in_force",
        )
    _account(intent.account)
    _created_at(intent.created_at, utc_now() if now is None else now)
    why = (
        (rules or ClientIdRules()).check(intent.client_order_id)
        if isinstance(intent.client_order_id, str)
        else "not a str"
    )
    if why is not None:
        raise _reject(
            RejectReason.BAD_CLIENT_ORDER_ID,
            f"client_order_id {intent.client_order_id!r}: {why}",
            "client_order_id",
        )
    if not reconciler:
        _not_reserved(intent.client_order_id)
    _oco_group(intent.oco_group, rules or ClientIdRules())


def _oco_group(group: object, rules: ClientIdRules) -> None:
    """An OCO group: the client id's charset and length, and a broker that declares OCO
    groups with reduce on fill (without it the members would be independent orders: both
    could fill, a position protected twice over)."""
    if group is None:
        return
    why = rules.check(group) if isinstance(group, str) else "not a str"
    if why is not None:
        raise _reject(RejectReason.BAD_OCO_GROUP, f"oco_group {group!r}: {why}", "oco_group")
    if rules.oco_groups is not True:
        raise _reject(
            RejectReason.OCO_UNSUPPORTED,
            f"oco_group {group!r}: the broker does not declare one-cancels-other groups with "
            "reduce on fill; its members would be independent orders that can all fill",
            "oco_group",
        )


def _not_reserved(cid: str) -> None:
    """Refuse a client id that starts with a prefix of the reconciler's own orders."""
    folded = cid.lower()
    for prefix in RESERVED_PREFIXES:
        if folded.startswith(prefix):
            raise _reject(
                RejectReason.RESERVED_CLIENT_ORDER_ID,
                f"client_order_id {cid!r} starts with {prefix!r}, reserved for the startup "
                f"reconciler's own orders ({', '.join(RESERVED_PREFIXES)}): it would take the "
                "order for its own; use another id (the default, uuid4().hex, never is one)",
                "client_order_id",
            )


def _account(account: object) -> None:
    """The balance account the order is valued against: what the balances' column takes,
    printable (no control characters, no lone surrogate)."""
    if not isinstance(account, str):
        raise _reject(
            RejectReason.BAD_ACCOUNT,
            f"account must be a str, got {type(account).__name__} {account!r}",
            "account",
        )
    if not 0 < len(account) <= _MAX_ACCOUNT_LEN or not account.isprintable():
        raise _reject(
            RejectReason.BAD_ACCOUNT,
            f"account {account[:80]!r} is not 1-{_MAX_ACCOUNT_LEN} printable characters",
            "account",
        )


def _created_at(created: object, now: datetime) -> None:
    if not isinstance(created, datetime):
        raise _reject(
            RejectReason.BAD_CREATED_AT,
            f"created_at must be a datetime, got {type(created).__name__} {created!r}",
            "created_at",
        )
    if created.utcoffset() is None:
        raise _reject(
            RejectReason.BAD_CREATED_AT,
            f"created_at {created.isoformat()} is naive (no tzinfo): pass an aware time, "
            "e.g. datetime.now(UTC)",
            "created_at",
        )
    if created > now + CREATED_AT_MAX_SKEW:
        raise _reject(
            RejectReason.BAD_CREATED_AT,
            f"created_at {created.isoformat()} is in the future (now {now.isoformat()}; "
            f"at most {CREATED_AT_MAX_SKEW.total_seconds():.0f} s of clock skew)",
            "created_at",
        )
    if created < now - CREATED_AT_MAX_AGE:
        raise _reject(
            RejectReason.BAD_CREATED_AT,
            f"created_at {created.isoformat()} is more than {CREATED_AT_MAX_AGE} old "
            f"(now {now.isoformat()}): make a new intent",
            "created_at",
        )


@exact
def check_risk(intent: OrderIntent, limits: RiskLimits, view: RiskView) -> None:
    """Raise ``OrderRejected`` for the first limit the intent would break."""
    if limits.max_daily_loss is not None and view.daily_pnl <= -limits.max_daily_loss:
        raise _reject(
            RejectReason.DAILY_LOSS,
            f"today's realized P&L {view.daily_pnl} has "
            f"reached the daily loss limit {limits.max_daily_loss}",
            "max_daily_loss",
        )
    # the worst case of this order's side: every open order of that side fills, none of the
    # other side does (a resting sell never makes room for a buy)
    if intent.side == "buy":
        worst = view.position + view.open_buys + intent.quantity
    else:
        worst = view.position - view.open_sells - intent.quantity
    if (
        limits.max_position is not None
        and abs(worst) > limits.max_position
        and ((worst > 0) == (intent.side == "buy"))
    ):
        raise _reject(
            RejectReason.MAX_POSITION,
            f"the {intent.symbol} position could reach {worst} (the position "
            f"{view.position}, every open {intent.side} and this one filled); the limit "
            f"is {limits.max_position} per side",
            "quantity",
        )
    needs_price = (
        limits.max_order_notional is not None
        or limits.max_position_notional is not None
        or (limits.check_balance and intent.side == "buy")
    )
    if view.price is None:
        if needs_price:
            raise _reject(
                RejectReason.NO_PRICE,
                f"no price to value the {intent.order_type} "
                f"order in {intent.symbol}: give the manager a price source",
                "price",
            )
        return
    notional = intent.quantity * view.price
    cap = limits.max_position_notional
    if cap is not None and abs(worst) * view.price > cap and (worst > 0) == (intent.side == "buy"):
        raise _reject(
            RejectReason.MAX_NOTIONAL,
            f"the {intent.symbol} position could reach {worst} x {view.price} = "
            f"{abs(worst) * view.price} (every open {intent.side} and this one filled); the "
            f"limit is {cap} per side",
            "quantity",
        )
    if limits.max_order_notional is not None and notional > limits.max_order_notional:
        raise _reject(
            RejectReason.MAX_NOTIONAL,
            f"notional {notional} exceeds the per-order limit {limits.max_order_notional}",
            "quantity",
        )
    if limits.check_balance and intent.side == "buy":
        if view.balance is None:
            raise _reject(
                RejectReason.INSUFFICIENT_BALANCE,
                f"the balance of account "
                f"{intent.account!r} is unknown (the database has not been reachable)",
                "account",
            )
        available = view.balance - view.reserved
        if notional > available:
            raise _reject(
                RejectReason.INSUFFICIENT_BALANCE,
                f"the order costs {notional}; "
                f"account {intent.account!r} has {available} available (balance "
                f"{view.balance}, open buys {view.reserved})",
                "quantity",
            )
