"""The lean ``WALEntry.create``: the same entry as the general path (encode, then decode back).

``encode_pair`` skips the decode for leaves whose round trip is themselves; these tests
compare it with ``encode_value`` + ``decode_value`` on every kind of value, including the
ones that must take the general path (other time zones, enums, subclasses, nesting), and
check the fast UUID's version and variant bits.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wal import WALEntry, WALSerializationError
from wal.codec import decode_value, encode_pair, encode_value


class Side(StrEnum):
    BUY = "buy"


class Color(Enum):
    RED = 1


class MyDecimal(Decimal):
    pass


LEAVES: list[Any] = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,
    2**70,  # a big int: tagged
    1.5,
    "x",
    "$not-a-tag-as-a-value",
    Decimal("1.50"),
    Decimal("-0"),
    Decimal("1E+3"),
    MyDecimal("2.5"),
    uuid.UUID("21759a69-b07b-4829-af6a-1c6773d5044e"),  # fixed: test ids must not vary per run
    datetime(2026, 1, 2, 3, 4, 5, 6),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2), "X")),
    datetime(2026, 3, 29, 2, 30, tzinfo=ZoneInfo("Europe/Berlin")),
    datetime(2026, 10, 25, 2, 30, fold=1),
    date(2026, 1, 2),
    Side.BUY,
    Color.RED,
    (1, 2),
    [Decimal("3"), {"a": 1}],
    {"$x": 1},
    {"nested": {"qty": Decimal("1")}},
]


def general(value: Any) -> tuple[Any, Any]:
    enc = encode_value(value)
    return enc, decode_value(enc)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same types, with the same time zone objects' offsets, recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime):
        return a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold
    if isinstance(a, Decimal):
        return str(a) == str(b)
    return bool(a == b)


@pytest.mark.parametrize("leaf", LEAVES, ids=repr)
def test_encode_pair_is_encode_then_decode(leaf: Any) -> None:
    for value in ({"k": leaf, "s": "BTCUSDT"}, [leaf, 1]):
        enc, dec = encode_pair(value.copy(), "v")  # type: ignore[attr-defined]
        want_enc, want_dec = general(value)
        assert enc == want_enc
        assert same(dec, want_dec)


@given(
    st.dictionaries(
        st.text(max_size=4),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=5),
            st.decimals(allow_nan=False, allow_infinity=False),
            st.datetimes(timezones=st.sampled_from([None, UTC])),
            st.dates(),
            st.uuids(),
        ),
        max_size=6,
    )
)
def test_encode_pair_matches_the_general_path(kwargs: dict[str, Any]) -> None:
    enc, dec = encode_pair(dict(kwargs), "kwargs")
    want_enc, want_dec = general(kwargs)
    assert enc == want_enc
    assert same(dec, want_dec)


@pytest.mark.parametrize(
    "bad",
    [float("nan"), Decimal("NaN"), float("inf"), object(), {1: 2}],
    ids=["nan", "Decimal-NaN", "inf", "object", "dict-int-key"],
)
def test_encode_pair_raises_what_encode_value_raises(bad: Any) -> None:
    with pytest.raises(WALSerializationError) as fast:
        encode_pair({"price": bad}, "kwargs")
    with pytest.raises(WALSerializationError) as slow:
        encode_value({"price": bad}, "kwargs")
    assert str(fast.value) == str(slow.value)


def test_create_holds_what_a_replay_sees_and_verifies() -> None:
    kw = {"qty": Decimal("1.50"), "at": datetime(2026, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo"))}
    caller_kwargs = dict(kw)
    e = WALEntry.create("log_trade", (Side.BUY, (1, 2)), caller_kwargs, idempotency_key="k1")
    assert e.args == ("buy", [1, 2])
    assert e.kwargs["at"].tzinfo == timezone(timedelta(hours=9))  # the zone became its offset
    assert e.verify() and e.has_explicit_key
    back = WALEntry.from_dict(e.to_dict())
    assert back == e and same(back.kwargs, e.kwargs)
    caller_kwargs["qty"] = Decimal("9")  # the entry holds its own copy
    assert e.kwargs["qty"] == Decimal("1.50")
    assert e.with_lsn(7).lsn == 7 and e.with_lsn(7).encoded() is e.encoded()


def test_the_fast_uuid_is_a_random_version_4_uuid() -> None:
    ids = [WALEntry.create("x").entry_id for _ in range(200)]
    assert len(set(ids)) == 200
    for u in ids:
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert uuid.UUID(str(u)) == u and hash(u) == hash(uuid.UUID(str(u)))
    assert not WALEntry.create("x").has_explicit_key
