"""A critical call made ready for the log: arguments bound, ids and times filled, floats refused.

Pure functions (and the balance transaction's value object) used by
``wal.sync.durable.DurableDatabaseManager`` before it hands a call to the ``WALManager``:

* ``prepare_call``: positional arguments bound to the wrapped method's parameter names (the
  log holds keyword arguments only), the id of a creating operation made here (UUID4, so an
  operation logged during an outage can be referred to by the next one, and a replay reuses
  it) and its time set to "now" (a replay hours later records when it happened);
* ``check_call``: the same refusals for a call logged as it is (the order journal's path);
* ``DurableBalanceTxn``: the context-manager form of ``atomic_balance_update``;
* ``check_same_database``: a wrapped manager on another database than the config names is
  an error.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import make_url

from wal.binding import KeywordShape
from wal.config import WALConfig, mask_url
from wal.db.checks import argument_named
from wal.db.engine import DEFAULT_URL
from wal.entry import OperationType
from wal.errors import WALArgumentError, WALConfigError

__all__ = [
    "CRITICAL_OPERATIONS",
    "DurableBalanceTxn",
    "check_call",
    "check_same_database",
    "prepare_call",
    "reject_floats",
]

CRITICAL_OPERATIONS = frozenset(op.value for op in OperationType)
# The id parameter each creating operation gets filled in before it is logged.
ID_PARAMS = {
    OperationType.LOG_TRADE.value: "trade_id",
    OperationType.LOG_POSITION.value: "position_id",
    OperationType.CREATE_TRADING_SESSION.value: "session_id",
}
# The time parameter filled in with "now" before logging, so that a replay hours later
# records when the operation happened, not when the database came back.
TIME_PARAMS = {
    OperationType.LOG_TRADE.value: "executed_at",
    OperationType.LOG_POSITION.value: "opened_at",
    OperationType.CLOSE_POSITION.value: "closed_at",
    OperationType.CREATE_TRADING_SESSION.value: "started_at",
    OperationType.END_TRADING_SESSION.value: "ended_at",
}


def reject_floats(op: str, params: dict[str, Any]) -> None:
    """Money is Decimal: a float would be logged and then refused by the database."""
    for name, value in params.items():
        if isinstance(value, float):
            raise WALArgumentError(op, name, f"{value!r} is a float; pass money as Decimal")


class _Shape:
    """A method's signature, computed once per (class, function): binding a call is the
    only per-call work."""

    __slots__ = ("accepted", "keywords", "signature")

    def __init__(self, method: Callable[..., Any]) -> None:
        self.signature = inspect.signature(method)
        self.keywords = KeywordShape(self.signature)  # a keyword call bound without bind()
        self.accepted = self.signature.parameters


_SHAPES: dict[tuple[type, Any], _Shape] = {}


def _shape(method: Callable[..., Any]) -> _Shape:
    """The cached ``_Shape`` of a bound method (keyed by its class and function: another
    instance of the class has the same signature; a method replaced on an instance is its
    own function) or of a plain callable."""
    owner = getattr(method, "__self__", None)
    key = (type(owner), getattr(method, "__func__", method))
    shape = _SHAPES.get(key)
    if shape is None:
        shape = _SHAPES[key] = _Shape(method)
    return shape


def prepare_call(
    method: Callable[..., Any], op: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Bind ``args``/``kwargs`` to ``method``, fill the id and the time: the keyword
    arguments that get logged (and passed to ``method`` when the log is off)."""
    shape = _shape(method)
    try:
        if args:
            params = dict(shape.signature.bind(*args, **kwargs).arguments)
        else:
            params = shape.keywords.bind_keywords(kwargs)
    except TypeError as exc:  # an unknown or missing argument: refused before logging
        raise WALArgumentError(op, argument_named(exc), str(exc)) from None
    var_keyword = shape.keywords.var_keyword  # the **kwargs of the method, if it has one
    if var_keyword is not None and var_keyword in params:
        params.update(params.pop(var_keyword))
    accepted = shape.accepted
    id_param = ID_PARAMS.get(op)
    if id_param is not None and id_param in accepted and params.get(id_param) is None:
        params[id_param] = str(uuid.uuid4())
    time_param = TIME_PARAMS.get(op)
    if time_param is not None and time_param in accepted and params.get(time_param) is None:
        params[time_param] = datetime.now(UTC)
    reject_floats(op, params)
    return params


def check_call(db: Any, op: str, kwargs: dict[str, Any]) -> None:
    """Refuse, before logging, a call logged as it is: not a critical operation, arguments
    the wrapped manager ``db``'s method does not take, or a float."""
    if op not in CRITICAL_OPERATIONS:
        raise ValueError(f"{op!r} is not a critical operation")
    try:
        _shape(getattr(db, op)).keywords.bind_keywords(kwargs)  # refused before logging
    except TypeError as exc:
        raise WALArgumentError(op, argument_named(exc), str(exc)) from None
    reject_floats(op, kwargs)


class DurableBalanceTxn:
    """The context-manager form of ``atomic_balance_update``: read, decide, add.

    ``balance`` is the balance including pending entries, as of entering; ``add`` changes it.
    The net delta is logged as one balance update when the block exits without an exception.
    """

    def __init__(self, account: str, balance: Decimal) -> None:
        self.account = account
        self.balance = balance
        self.delta = Decimal(0)
        self.reasons: list[str] = []

    def add(self, delta: Decimal, reason: str = "") -> Decimal:
        if not isinstance(delta, Decimal):
            raise TypeError(f"delta must be a Decimal, got {type(delta).__name__}")
        self.delta += delta
        self.balance += delta
        if reason:
            self.reasons.append(reason)
        return self.balance


def check_same_database(db: Any, config: WALConfig) -> None:
    """A wrapped manager on another database than ``config.database_url`` is an error: the
    URL is given once (``from_config``), never silently ignored."""
    url = getattr(db, "url", None)
    if not isinstance(url, str) or config.database_url == DEFAULT_URL:
        return  # a manager of the user's own without a URL, or a config that names none

    def norm(u: str) -> str:
        parsed = make_url(u)
        return parsed.set(drivername=parsed.get_backend_name()).render_as_string(
            hide_password=False
        )

    if norm(url) != norm(config.database_url):
        raise WALConfigError(
            "database_url",
            mask_url(config.database_url),
            f"the URL of the wrapped manager ({mask_url(url)}); or build both from the "
            "config with DurableDatabaseManager.from_config(config)",
        )
