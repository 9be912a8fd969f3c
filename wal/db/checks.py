"""Every argument of a critical call checked against its column, with no database: bad input
is refused *before* the log is touched (issue 20, item 5).

``check_call(op, kwargs)`` binds the call to its effect's parameters (an unknown or missing
argument is refused), then checks each value with the validators of :mod:`wal.db.schema` that
the effect itself uses (types, ranges, string lengths, finite decimals with at most 10
places, integers that fit their column), so that an entry the log accepts is one the database
accepts: it can then fail only on the database's *state* (an unknown position, a seq that
does not follow), never on its own values. Each refusal is one ``WALArgumentError`` naming
the operation and the argument: the name the validator was given (``ArgumentTypeError`` /
``ArgumentValueError`` carry it), or for a call that does not bind, the parameter Python's
message names (``argument_named``); never a word guessed from the message.

``check_caller_values`` adds what a *caller* must give beyond the column's rules: a trade's
side ``buy``/``sell``, a position's ``long``/``short``, and aware times (a naive ``datetime``
says nothing of its zone). It runs before the log and in ``DatabaseManager``'s own methods,
not in the effects: those also replay entries logged before these rules.

The row builders of :mod:`wal.db.operations` are pure (they build a row from the arguments),
so the inserting operations are checked by building their row; the others by the same
validators with the same names and limits as their effect.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from wal.binding import KeywordShape
from wal.db.operations import INSERT_ONLY, OPERATIONS
from wal.db.orders import MAX_CONTENT_LEN, ORDER_OPERATIONS, fill_cash
from wal.db.schema import (
    MAX_KEY_LEN,
    POSITION_SIDES,
    TRADE_SIDES,
    ArgumentTypeError,
    ArgumentValueError,
    valid_aware,
    valid_id,
    valid_money,
    valid_opt_id,
    valid_opt_money,
    valid_opt_positive,
    valid_positive,
    valid_side,
    valid_text,
    valid_utc,
    valid_when,
)
from wal.entry import OperationType
from wal.errors import WALArgumentError

__all__ = [
    "CHECKS",
    "POSITIONAL",
    "argument_named",
    "check_call",
    "check_caller_values",
    "check_call_positional",
    "check_key",
    "valid_int",
]

_INT32: Final = 2**31 - 1  # sa.Integer is a 32-bit int on PostgreSQL


def valid_int(value: object, name: str, low: int = 0) -> int:
    """An int (never a bool) in ``[low, 2**31 - 1]``: the columns' ``INTEGER``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(
            name, f"{name} must be an int, got {type(value).__name__} {value!r}"
        )
    if not low <= value <= _INT32:
        raise ArgumentValueError(name, f"{name}={value} is out of range: {low} to {_INT32}")
    return value


def _opt_int(value: object, name: str, low: int = 0) -> None:
    if value is not None:
        valid_int(value, name, low)


def _opt_text(value: object, name: str, max_len: int) -> None:
    if value is not None:
        valid_text(value, name, max_len)


def _opt_utc(value: object, name: str) -> None:
    if value is not None:
        valid_utc(value, name)


def _chain(kw: Mapping[str, Any]) -> None:
    """The audit chain fields an order event may carry (``wal.orders.audit``)."""
    _opt_int(kw.get("audit_seq"), "audit_seq", 1)
    _opt_text(kw.get("prev_hash"), "prev_hash", 64)
    _opt_text(kw.get("hash"), "hash", 64)
    _opt_text(kw.get("content"), "content", MAX_CONTENT_LEN)  # chain format 2


def _balance_update(kw: Mapping[str, Any]) -> None:
    if kw.get("delta") is None:
        raise ArgumentTypeError("delta", "delta is required: the amount to add (a Decimal)")
    valid_money(kw["delta"], "delta")
    valid_text(kw.get("account", "default"), "account")
    valid_text(kw.get("reason", ""), "reason", 1000, empty=True)


def _update_position(kw: Mapping[str, Any]) -> None:
    valid_id(kw.get("position_id"), "position_id")
    for name in ("stop_loss", "take_profit", "quantity", "current_price", "entry_price"):
        valid_opt_positive(kw.get(name), name)


def _close_position(kw: Mapping[str, Any]) -> None:
    valid_id(kw.get("position_id"), "position_id")
    valid_positive(kw.get("exit_price"), "exit_price")
    valid_opt_money(kw.get("pnl"), "pnl")
    valid_when(kw.get("closed_at"), "closed_at")


def _end_session(kw: Mapping[str, Any]) -> None:
    valid_id(kw.get("session_id"), "session_id")
    valid_opt_money(kw.get("final_balance"), "final_balance")
    valid_when(kw.get("ended_at"), "ended_at")


def _order_intent(kw: Mapping[str, Any]) -> None:
    valid_text(kw.get("client_order_id"), "client_order_id")
    valid_text(kw.get("symbol"), "symbol")
    valid_text(kw.get("side"), "side", 8)
    valid_positive(kw.get("quantity"), "quantity")
    valid_text(kw.get("order_type"), "order_type", 16)
    valid_opt_positive(kw.get("limit_price"), "limit_price")
    valid_opt_positive(kw.get("stop_price"), "stop_price")
    valid_text(kw.get("time_in_force", "day"), "time_in_force", 16)
    valid_text(kw.get("account", "default"), "account")
    _opt_utc(kw.get("created_at"), "created_at")
    valid_opt_id(kw.get("oco_group"), "oco_group")
    _chain(kw)


def _order_event(kw: Mapping[str, Any]) -> None:
    valid_text(kw.get("client_order_id"), "client_order_id")
    valid_int(kw.get("seq"), "seq", 1)
    valid_text(kw.get("kind"), "kind", 24)
    valid_text(kw.get("state"), "state", 24)
    valid_utc(kw.get("at"), "at")
    valid_opt_id(kw.get("broker_order_id"), "broker_order_id")
    _opt_text(kw.get("reason"), "reason", 100_000)
    _chain(kw)


# the position operations a fill may carry, each checked as its own call
_POSITION_CHECKS: Final[dict[str, Callable[[Mapping[str, Any]], None]]] = {
    OperationType.LOG_POSITION.value: lambda kw: _bound_row(_row_builder("log_position"), kw),
    OperationType.UPDATE_POSITION.value: _update_position,
    OperationType.CLOSE_POSITION.value: _close_position,
}


def _order_fill(kw: Mapping[str, Any]) -> None:
    valid_text(kw.get("execution_id"), "execution_id", 128)
    valid_text(kw.get("execution_key"), "execution_key", 128)
    valid_text(kw.get("client_order_id"), "client_order_id")
    valid_opt_id(kw.get("broker_order_id"), "broker_order_id")
    valid_text(kw.get("symbol"), "symbol")
    valid_text(kw.get("side"), "side", 8)
    valid_positive(kw.get("quantity"), "quantity")
    valid_positive(kw.get("price"), "price")
    valid_utc(kw.get("executed_at"), "executed_at")
    valid_int(kw.get("seq"), "seq", 1)
    valid_text(kw.get("kind"), "kind", 24)
    valid_text(kw.get("state"), "state", 24)
    valid_positive(kw.get("filled_quantity"), "filled_quantity")
    valid_positive(kw.get("avg_fill_price"), "avg_fill_price")
    valid_opt_id(kw.get("trade_id"), "trade_id")
    valid_opt_money(kw.get("pnl"), "pnl")
    _fill_cash(kw)
    ops = kw.get("position_ops")
    if ops is not None:
        if not isinstance(ops, list):
            raise ArgumentTypeError(
                "position_ops", f"position_ops must be a list, got {type(ops).__name__}"
            )
        for i, op in enumerate(ops):
            name = f"position_ops[{i}]"
            if not isinstance(op, dict) or not isinstance(op.get("kwargs"), dict):
                raise ArgumentTypeError(
                    "position_ops", f"{name} must be a dict with 'op' and 'kwargs' (a dict)"
                )
            check = _POSITION_CHECKS.get(op.get("op"))  # type: ignore[arg-type]
            if check is None:
                raise ArgumentValueError(
                    "position_ops", f"{name}: unknown position operation {op.get('op')!r}"
                )
            try:
                check(op["kwargs"])
            except TypeError as exc:  # the argument is position_ops; the text says where in it
                raise ArgumentTypeError("position_ops", f"{name}: {_unprefixed(exc)}") from None
            except ValueError as exc:
                raise ArgumentValueError("position_ops", f"{name}: {exc}") from None
    _chain(kw)


def _fill_cash(kw: Mapping[str, Any]) -> None:
    """The cash a fill moves (``wal.db.orders.fill_cash``): its account, its fee, and the
    amount, which must be the one the fill's side, quantity, price and fee make."""
    if all(kw.get(k) is None for k in ("account", "fee", "cash", "replaces_cash")):
        return  # a fill journaled before fills moved cash
    valid_text(kw.get("account"), "account")
    fee = valid_money(kw.get("fee") or 0, "fee")
    if fee < 0:
        raise ArgumentValueError("fee", f"fee must be >= 0 (a cost the account pays), got {fee}")
    cash = valid_money(kw.get("cash"), "cash")
    if kw.get("side") not in TRADE_SIDES:
        raise ArgumentValueError(
            "side", f"side must be buy or sell for a fill that moves cash: {kw.get('side')!r}"
        )
    due = valid_money(fill_cash(kw["side"], kw["quantity"], kw["price"], fee), "cash")
    if cash != due:
        raise ArgumentValueError("cash", f"cash={cash} is not what the fill moves ({due})")
    valid_opt_money(kw.get("replaces_cash"), "replaces_cash")


def _order_anchor(kw: Mapping[str, Any]) -> None:
    valid_int(kw.get("seq"), "seq", 0)
    valid_text(kw.get("hash"), "hash", 64)
    valid_utc(kw.get("at"), "at")
    valid_text(kw.get("reason"), "reason", 32)


def _row_builder(op: str) -> Callable[..., dict[str, Any]]:
    return INSERT_ONLY[op][1]  # the effect's own pure row builder


def _bound_row(builder: Callable[..., dict[str, Any]], kw: Mapping[str, Any]) -> None:
    builder(**kw)  # its arguments are the effect's (bound in check_call); it validates each


def _row_check(op: str) -> Callable[[Mapping[str, Any]], None]:
    builder = _row_builder(op)
    return lambda kw: _bound_row(builder, kw)


CHECKS: Final[dict[str, Callable[[Mapping[str, Any]], None]]] = {
    OperationType.BALANCE_UPDATE.value: _balance_update,
    OperationType.LOG_TRADE.value: _row_check("log_trade"),
    OperationType.LOG_POSITION.value: _row_check("log_position"),
    OperationType.UPDATE_POSITION.value: _update_position,
    OperationType.CLOSE_POSITION.value: _close_position,
    OperationType.CREATE_TRADING_SESSION.value: _row_check("create_trading_session"),
    OperationType.END_TRADING_SESSION.value: _end_session,
    OperationType.ORDER_INTENT.value: _order_intent,
    OperationType.ORDER_EVENT.value: _order_event,
    OperationType.ORDER_FILL.value: _order_fill,
    OperationType.ORDER_ANCHOR.value: _order_anchor,
}
"""Operation name -> its check (every critical operation has one: a test keeps it so)."""

_EFFECTS: Final[dict[str, Callable[..., Any]]] = {**OPERATIONS, **ORDER_OPERATIONS}
# (conn, **kwargs): the effect's own connection is not the call's
_SHAPES: Final = {op: KeywordShape(inspect.signature(fn), skip=1) for op, fn in _EFFECTS.items()}


# What a caller must give beyond the columns' rules (``check_caller_values``): the sides a
# trade and a position take, and the times it gives, which must be aware.
_CALLER_SIDES: Final[dict[str, tuple[str, ...]]] = {
    OperationType.LOG_TRADE.value: TRADE_SIDES,
    OperationType.LOG_POSITION.value: POSITION_SIDES,
}
_CALLER_TIMES: Final[dict[str, tuple[str, ...]]] = {
    OperationType.LOG_TRADE.value: ("executed_at",),
    OperationType.LOG_POSITION.value: ("opened_at",),
    OperationType.CLOSE_POSITION.value: ("closed_at",),
    OperationType.CREATE_TRADING_SESSION.value: ("started_at",),
    OperationType.END_TRADING_SESSION.value: ("ended_at",),
    OperationType.ORDER_INTENT.value: ("created_at",),
}


def check_caller_values(op: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ``ArgumentValueError``/``ArgumentTypeError`` (naming the argument) for a side
    the operation does not take or a naive time. Run on a caller's call (before the log,
    ``DatabaseManager``'s methods), never on a replay: entries logged before these rules
    were accepted, and must still apply."""
    sides = _CALLER_SIDES.get(op)
    if sides is not None and "side" in kwargs:
        valid_side(kwargs["side"], "side", sides)
    for name in _CALLER_TIMES.get(op, ()):
        value = kwargs.get(name)
        if value is not None:
            valid_aware(value, name)


def check_call(op: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse a critical call whose arguments its columns would not take: one
    ``WALArgumentError`` naming the operation and the argument. Nothing is touched."""
    check = CHECKS.get(op)
    shape = _SHAPES.get(op)
    if check is None or shape is None:
        raise WALArgumentError(op, "operation", f"{op!r} is not a critical operation")
    try:
        shape.bind_keywords(kwargs)  # unknown or missing arguments
    except TypeError as exc:
        raise WALArgumentError(op, argument_named(exc), _unprefixed(exc)) from None
    try:
        check(kwargs)
        check_caller_values(op, kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WALArgumentError(op, argument_named(exc), _unprefixed(exc)) from None


def _unprefixed(exc: BaseException) -> str:
    """The message without a private function's name ("_trade_row() got ...")."""
    return re.sub(r"^\w+\(\) ", "", str(exc))


# Python's messages for a call that does not bind (inspect.Signature.bind, and a function
# call's own), each naming the parameter in quotes (its repr)
_QUOTED = r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
_BINDING: Final = tuple(
    re.compile(p)
    for p in (
        rf"missing (?:a |\d+ )?required (?:positional |keyword-only )?arguments?: {_QUOTED}",
        rf"got an unexpected keyword argument {_QUOTED}",
        rf"multiple values for (?:keyword )?argument {_QUOTED}",
        rf"{_QUOTED} parameter is positional only",
        rf"got some positional-only arguments passed as keyword arguments: {_QUOTED}",
    )
)
_TOO_MANY: Final = re.compile(
    r"too many positional arguments|takes (?:from )?\d+ (?:to \d+ )?positional arguments? "
    r"but \d+"
)
POSITIONAL: Final = "*args"
"""The argument named when a call has more positional arguments than the method takes."""


def argument_named(exc: BaseException) -> str:
    """The argument ``exc`` is about: the name a validator gave it (``argument``), else the
    parameter Python's binding error names (a missing, unexpected or doubled one; ``*args``
    for too many positional arguments), else ``"arguments"``. Never a word of the message:
    a value may look like a name (``quantity='abc'``)."""
    named = getattr(exc, "argument", None)
    if isinstance(named, str) and named:
        return named
    text = str(exc)
    for pattern in _BINDING:
        m = pattern.search(text)
        if m is not None:
            quoted = m.group(1)
            try:
                name = ast.literal_eval(quoted)
            except (ValueError, SyntaxError):
                name = quoted[1:-1]
            return str(name) or "arguments"
    if _TOO_MANY.search(text):
        return POSITIONAL
    return "arguments"


def check_call_positional(
    op: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """A call given with positional arguments, as keyword arguments (bound to its effect's
    parameters; refused with ``WALArgumentError`` when they do not bind)."""
    shape = _SHAPES.get(op)
    if shape is None:
        raise WALArgumentError(op, "operation", f"{op!r} is not a critical operation")
    signature = shape.signature
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        raise WALArgumentError(op, argument_named(exc), str(exc)) from None
    params = dict(bound.arguments)
    params.pop(next(iter(signature.parameters)))  # the connection
    return params


def check_key(op: str, key: object) -> None:
    """An idempotency key the key ledger's column takes (``wal_applied_keys``)."""
    try:
        valid_text(key, "idempotency_key", MAX_KEY_LEN)
    except (TypeError, ValueError) as exc:
        raise WALArgumentError(op, "idempotency_key", str(exc)) from None
