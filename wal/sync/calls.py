"""A critical call made ready for the log: arguments bound, ids and times filled, floats refused.

Pure functions (and the balance transaction's value object) used by
``wal.sync.durable.DurableDatabaseManager`` before it hands a call to the ``WALManager``:

* ``prepare_call``: positional arguments bound to the wrapped method's parameter names (the
  log holds keyword arguments only), the id of a creating operation made here (so an
  operation logged during an outage can be referred to by the next one, and a replay reuses
  it: a UUID4, or with an idempotency key a UUID5 of the operation and the key, the same for
  every retry) and its time set to "now" (a replay hours later records when it happened);
* ``request_digest`` and ``check_same_request``: a retry under a used idempotency key is the
  same call, or refused (``WALIdempotencyConflictError``);
* ``check_call``: the same refusals for a call logged as it is (the order journal's path);
* ``DurableBalanceTxn``: the context-manager form of ``atomic_balance_update``;
* ``check_same_database``: a wrapped manager on another database than the config names is
  an error.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy.engine import make_url

from wal.binding import KeywordShape
from wal.config import WALConfig, mask_url
from wal.db.checks import argument_named
from wal.db.engine import DEFAULT_URL
from wal.entry import OperationType
from wal.errors import WALArgumentError, WALConfigError, WALIdempotencyConflictError
from wal.money import MONEY_CONTEXT, exact
from wal.sync.results import Receipt

__all__ = [
    "CRITICAL_OPERATIONS",
    "DurableBalanceTxn",
    "check_call",
    "check_same_database",
    "check_same_request",
    "prepare_call",
    "reject_floats",
    "request_digest",
]

CRITICAL_OPERATIONS = frozenset(op.value for op in OperationType)
# the calls a trading engine makes with its own idempotency keys (check_same_request); the
# order journal's calls (record_order_*) carry keys OrderJournal makes and checks itself
TRADING_OPERATIONS = frozenset(
    op.value for op in OperationType if not op.value.startswith("record_order_")
)
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


# the namespace of the ids made from (operation, idempotency key): a retry gets the same id
_KEYED_IDS = uuid.UUID("5b0d7a52-3f7e-4c1c-9d2a-8f3e6a1c0b47")


def prepare_call(
    method: Callable[..., Any],
    op: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    key: str | None = None,
    filled: set[str] | None = None,
) -> dict[str, Any]:
    """Bind ``args``/``kwargs`` to ``method``, fill the id and the time: the keyword
    arguments that get logged (and passed to ``method`` when the log is off). With an
    idempotency ``key`` the id made here is the key's (a retry gets the first call's id).
    The names filled in are added to ``filled``."""
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
        made = uuid.uuid4() if key is None else uuid.uuid5(_KEYED_IDS, f"{op}\n{key}")
        params[id_param] = str(made)
        if filled is not None:
            filled.add(id_param)
    time_param = TIME_PARAMS.get(op)
    if time_param is not None and time_param in accepted and params.get(time_param) is None:
        params[time_param] = datetime.now(UTC)
        if filled is not None:
            filled.add(time_param)
    reject_floats(op, params)
    return params


def _canonical(value: Any) -> Any:
    """A value as a retry must repeat it: an amount whatever its trailing zeros, a time
    whatever its zone, containers element by element."""
    if isinstance(value, Decimal):
        return ("D", format(value.normalize(_CANON), "f") if value.is_finite() else str(value))
    if isinstance(value, datetime):
        return ("T", value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat())
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, str):
        return ("S", str.__str__(value))
    if isinstance(value, bool) or value is None:
        return ("B", value)
    if isinstance(value, int):
        return ("I", int(value))
    if isinstance(value, uuid.UUID):
        return ("S", str(value))
    if isinstance(value, Mapping):
        return ("M", tuple(sorted((str(k), _canonical(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("L", tuple(_canonical(v) for v in value))
    return (type(value).__name__, repr(value))


_CANON = MONEY_CONTEXT  # normalize() exactly, whatever the caller's decimal context


def request_digest(op: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """What a keyed call asks for, as a string: its operation and arguments, without the id
    and the time the wrapper fills in (``ID_PARAMS``, ``TIME_PARAMS``: compared apart)."""
    left_out = (ID_PARAMS.get(op), TIME_PARAMS.get(op))
    items = tuple(sorted((k, _canonical(v)) for k, v in kwargs.items() if k not in left_out))
    return repr((op, _canonical(args), items))


def check_same_request(
    op: str, key: str, params: dict[str, Any], filled: set[str], first: Receipt
) -> None:
    """Refuse a call under a used ``key`` that is not the first call again (another
    operation, other arguments, another id or time given): ``WALIdempotencyConflictError``.
    ``first`` is the receipt of the call logged under the key; ``filled``, what this call's
    ``prepare_call`` made up (never a difference)."""
    if op not in TRADING_OPERATIONS:
        return  # the order journal's keys are its own (an anchor retried at another time)
    where = f"lsn {first.lsn}" if first.lsn else "the database's key ledger"
    if first.operation and first.operation != op:
        raise WALIdempotencyConflictError(
            op, key, f"was used for {first.operation} ({where}): not the same call"
        )
    if first.request is not None and first.request != request_digest(op, (), params):
        raise WALIdempotencyConflictError(
            op, key, f"was used for this operation with other arguments ({where})"
        )
    for name, logged in ((ID_PARAMS.get(op), first.made_id), (TIME_PARAMS.get(op), first.made_at)):
        if name is None or name in filled or logged is None or name not in params:
            continue
        if _canonical(params[name]) != _canonical(logged):
            raise WALIdempotencyConflictError(
                op, key, f"was used with {name}={logged!s} ({where}), not {params[name]!s}"
            )


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

    @exact
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
