"""Values in and out of the log, with their types.

JSON natives (``None``, ``bool``, ``int``, ``float``, ``str``, ``list``, ``dict`` with ``str``
keys) are stored as themselves. These types are stored as one-key tagged objects and come
back as the same type:

============  ==============================  ==========================================
type          stored as                       comes back as
============  ==============================  ==========================================
Decimal       ``{"$decimal": "12.50"}``       ``Decimal("12.50")`` (exponent kept)
datetime      ``{"$datetime": "<iso>"}``      the same datetime; aware ones keep their
                                              UTC offset (a zone name becomes the offset)
date          ``{"$date": "2026-11-21"}``     the same date
UUID          ``{"$uuid": "<hex>"}``          the same UUID
int > 64 bit  ``{"$int": "<digits>"}``        the same int
dict whose    ``{"$dict": {...}}``            the same dict (its ``$`` keys are not tags)
keys start
with ``$``
============  ==============================  ==========================================

``Enum`` members are stored by value and come back as that value (no class is ever imported
from log contents). Tuples come back as lists.

NaN, Infinity, non-string dict keys, strings that are not valid Unicode (lone surrogates),
nesting deeper than ``MAX_DEPTH`` and any other type raise ``WALSerializationError`` naming
the path of the bad value (``kwargs['price']``, ``args[1][0]``); nothing is written.
Subclasses of ``str``, ``int``, ``float``, ``Decimal``, ``datetime`` and ``date`` are stored
as their base type's value (their overridden methods are never called), and a tag's text is
checked to read back before it is accepted.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from wal.errors import WALSerializationError

__all__ = [
    "MAX_DEPTH",
    "check_text",
    "decode_value",
    "encode_pair",
    "encode_value",
    "value_problem",
]

MAX_DEPTH = 200  # nesting of lists and dicts (orjson refuses more than 255 levels)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**64 - 1  # orjson writes unsigned 64-bit ints too


class _Bad(Exception):
    """Internal: a bad value, with the path built up while the recursion unwinds."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.parts: list[str] = []


def encode_value(value: Any, path: str = "value") -> Any:
    """Return ``value`` as a tree of JSON natives and tags; raise naming the bad path.

    >>> encode_value({"qty": Decimal("1.50")})
    {'qty': {'$decimal': '1.50'}}
    >>> encode_value(float("nan"), "kwargs['price']")
    Traceback (most recent call last):
    ...
    wal.errors.WALSerializationError: cannot log kwargs['price']: NaN is not allowed ...
    """
    try:
        return _enc(value, 0)
    except _Bad as bad:
        parts = bad.parts[::-1]
        if len(parts) > 12:  # a deep value: the first levels say where it is
            parts = [*parts[:12], f"...({len(parts) - 12} levels more)"]
        raise WALSerializationError(path + "".join(parts), bad.problem) from None
    except RecursionError:
        raise WALSerializationError(path, "nested too deeply (or contains itself)") from None


def check_text(text: str, path: str) -> str:
    """``text`` as an exact ``str``; ``WALSerializationError`` if it is not valid Unicode.

    >>> check_text("ok", "operation")
    'ok'
    """
    try:
        return _text(text)
    except _Bad as bad:
        raise WALSerializationError(path, bad.problem) from None


def _text(s: str) -> str:
    """An exact ``str`` that encodes to UTF-8 (no lone surrogate): what orjson can write."""
    if type(s) is not str:
        s = str.__str__(s)  # a subclass: its own __str__ is never called
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Bad(
                f"the text is not valid Unicode (a lone surrogate at position {exc.start})"
            ) from None
    return s


def _tag_text(v: Any, kind: str, to_text: Callable[[Any], str], back: Callable[[str], Any]) -> str:
    """The text of a tagged value, made by the base class's method and checked to read back."""
    try:
        text = to_text(v)
        if type(text) is not str:
            raise TypeError(f"it gave a {type(text).__name__}")
        back(text)
    except Exception as exc:  # an odd subclass: whatever it raises, the value is refused
        raise _Bad(f"{type(v).__name__} value cannot be stored as a {kind}: {exc}") from None
    return text


def _enc(v: Any, depth: int) -> Any:
    # Order matters: bool is an int, Enum members may be ints or strs, datetime is a date.
    t = type(v)
    if v is None or t is bool:
        return v
    if t is str:
        return v if v.isascii() else _text(v)
    if t is int:
        if _INT64_MIN <= v <= _INT64_MAX:
            return v
        return {"$int": str(v)}
    if t is float:
        if math.isfinite(v):
            return v
        raise _Bad(f"{v!r} is not allowed (a NaN or Infinity cannot be a price or a quantity)")
    if isinstance(v, Enum):
        return _enc(v.value, depth)
    if isinstance(v, Decimal):
        if not Decimal.is_finite(v):
            raise _Bad(
                f"Decimal {Decimal.__str__(v)} is not allowed (NaN and Infinity cannot be stored)"
            )
        return {"$decimal": _tag_text(v, "decimal", Decimal.__str__, Decimal)}
    if isinstance(v, datetime):
        return {"$datetime": _tag_text(v, "datetime", datetime.isoformat, datetime.fromisoformat)}
    if isinstance(v, date):
        return {"$date": _tag_text(v, "date", date.isoformat, date.fromisoformat)}
    if isinstance(v, uuid.UUID):
        return {"$uuid": _tag_text(v, "uuid", uuid.UUID.__str__, uuid.UUID)}
    if isinstance(v, str):  # str subclasses
        return _text(v)
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):  # int subclasses (IntFlag handled above as Enum)
        return _enc(int.__index__(v), depth)
    if isinstance(v, float):
        return _enc(float.__float__(v), depth)
    if depth >= MAX_DEPTH:
        raise _Bad(f"nested too deeply (more than {MAX_DEPTH} levels, or it contains itself)")
    if isinstance(v, Mapping):
        out: dict[str, Any] = {}
        tagged = False
        for k, item in v.items():
            if not isinstance(k, str):
                bad = _Bad(f"dict key {k!r} is a {type(k).__name__}; keys must be str")
                raise bad
            try:
                k = _text(k)  # an exact str (a StrEnum key is stored by its value)
                if k.startswith("$"):
                    tagged = True
                out[k] = _enc(item, depth + 1)
            except _Bad as bad:
                bad.parts.append(f"[{k!r}]")
                raise
        return {"$dict": out} if tagged else out
    if isinstance(v, list | tuple):
        items = []
        for i, item in enumerate(v):
            try:
                items.append(_enc(item, depth + 1))
            except _Bad as bad:
                bad.parts.append(f"[{i}]")
                raise
        return items
    raise _Bad(f"type {type(v).__name__} is not supported")


def decode_value(v: Any) -> Any:
    """Invert ``encode_value``.

    >>> decode_value({'qty': {'$decimal': '1.50'}})
    {'qty': Decimal('1.50')}
    """
    t = type(v)
    if t is dict:
        if len(v) == 1:
            ((k, inner),) = v.items()
            if k.startswith("$"):
                return _decode_tag(k, inner)
        out = {}
        for k, item in v.items():  # tagged values and leaves inline: the drain's hot path
            ti = type(item)
            if ti is dict and len(item) == 1:
                ((tag, inner),) = item.items()
                decode = _TAGS.get(tag)
                out[k] = decode(inner) if decode is not None else decode_value(item)
            elif ti is dict or ti is list:
                out[k] = decode_value(item)
            else:
                out[k] = item
        return out
    if t is list:
        return [decode_value(item) for item in v]
    return v


def value_problem(encoded: Any, path: str) -> str | None:
    """Why ``encoded`` (an entry's args or kwargs as read from the log) is not a value
    ``encode_value`` writes, with the path of the bad value (None: it reads back and would be
    written again as it is read). A tag that does not decode (an unknown tag) or a decoded
    value the encoder refuses (a ``$decimal`` NaN or Infinity, nesting deeper than
    ``MAX_DEPTH``) is one: no replay or listing of such an entry could work.

    ``decode_value`` itself trusts what it is given (the drain's hot path): every record is
    checked with this when a log is opened (``wal.log.validate``), before any read.

    >>> value_problem({"price": {"$decimal": "NaN"}}, "kwargs")
    "kwargs['price']: Decimal NaN is not allowed (NaN and Infinity cannot be stored)"
    """
    try:
        decoded = decode_value(encoded)
    except (ValueError, TypeError, AttributeError, ArithmeticError) as exc:
        return f"{_bad_path(encoded, path) or path}: {exc}"
    except RecursionError:
        return f"{path}: nested too deeply"
    try:
        encode_value(decoded, path)
    except WALSerializationError as exc:
        return f"{exc.path}: {exc.problem}"
    return None


def _bad_path(v: Any, path: str) -> str | None:
    """The path of the first value under ``v`` that does not decode (None: none)."""
    if type(v) is dict and len(v) == 1:
        ((k, inner),) = v.items()
        if k.startswith("$"):
            if k == "$dict" and type(inner) is dict:
                for kk, item in inner.items():
                    found = _bad_path(item, f"{path}[{kk!r}]")
                    if found is not None:
                        return found
            try:
                decode_value(v)
            except Exception:
                return path
            return None
    items = v.items() if type(v) is dict else enumerate(v) if type(v) is list else ()
    for k, item in items:
        found = _bad_path(item, f"{path}[{k!r}]")
        if found is not None:
            return found
    return None


def _decode_tag(tag: str, inner: Any) -> Any:
    decode = _TAGS.get(tag)
    if decode is not None:
        return decode(inner)
    if tag == "$dict":
        return {k: decode_value(item) for k, item in inner.items()}
    raise ValueError(f"unknown value tag {tag!r}")


_TAGS: dict[str, Callable[[Any], Any]] = {
    "$decimal": Decimal,
    "$datetime": datetime.fromisoformat,
    "$date": date.fromisoformat,
    "$uuid": uuid.UUID,
    "$int": int,
}


class _Slow(Exception):
    """Internal: a value the fast path of ``encode_pair`` leaves to the general one."""


def _same(v: Any) -> Any:
    return v


def _str_leaf(v: str) -> Any:
    if v.isascii():  # anything else is checked for lone surrogates by the general path
        return v
    raise _Slow


def _int_leaf(v: int) -> Any:
    if _INT64_MIN <= v <= _INT64_MAX:
        return v
    raise _Slow


def _float_leaf(v: float) -> Any:
    if math.isfinite(v):
        return v
    raise _Slow


def _decimal_leaf(v: Decimal) -> Any:
    if v.is_finite():
        return {"$decimal": str(v)}  # Decimal(str(d)) keeps digits, exponent and sign
    raise _Slow


def _datetime_leaf(v: datetime) -> Any:
    tz = v.tzinfo
    if (tz is None or tz is UTC) and not v.fold:  # other zones come back as an offset
        return {"$datetime": v.isoformat()}
    raise _Slow


# The exact types whose round trip (encode, then decode) gives back an equal object: the
# decoded value is the value itself. Each function returns the encoded form or raises _Slow.
_LEAVES: dict[type, Callable[[Any], Any]] = {
    str: _str_leaf,
    bool: _same,
    type(None): _same,
    int: _int_leaf,
    float: _float_leaf,
    Decimal: _decimal_leaf,
    uuid.UUID: lambda v: {"$uuid": str(v)},
    datetime: _datetime_leaf,
    date: lambda v: {"$date": v.isoformat()},
}


def encode_pair(value: list[Any] | dict[str, Any], path: str) -> tuple[Any, Any]:
    """``(encode_value(value), decode_value(encode_value(value)))`` without the decode.

    ``value`` is a fresh list or dict the caller owns (it may be returned as the decoded
    form). When every item is a leaf of an exact type whose round trip gives back an equal
    object (JSON natives, ``Decimal``, ``UUID``, naive or UTC ``datetime``, ``date``),
    ``value`` itself is what a replay will see: no decode. Anything else (nested
    containers, enums, subclasses, other time zones, big ints, ``$`` keys, non-ASCII text,
    bad values)
    takes the general path, which also raises the errors.

    >>> encode_pair({"qty": Decimal("1.50")}, "kwargs")
    ({'qty': {'$decimal': '1.50'}}, {'qty': Decimal('1.50')})
    """
    leaves = _LEAVES
    try:
        if type(value) is dict:
            enc: dict[str, Any] = {}
            for k, v in value.items():
                f = leaves.get(type(v))
                if f is None or type(k) is not str or k[:1] == "$" or not k.isascii():
                    raise _Slow
                enc[k] = f(v)
            return enc, value  # the leaves decode to themselves: the copy is its own decode
        if type(value) is list:
            out = []
            for v in value:
                f = leaves.get(type(v))
                if f is None:
                    raise _Slow
                out.append(f(v))
            return out, value
    except _Slow:
        pass
    encoded = encode_value(value, path)
    return encoded, decode_value(encoded)
