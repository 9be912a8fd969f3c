"""wal.codec: every type comes back as itself, every bad value is named by its path."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from helpers_log import make_entry

from wal import WALEntry, WALSerializationError, WALStorage
from wal.codec import decode_value, encode_value


class Side(StrEnum):
    BUY = "buy"


class Level(IntEnum):
    HIGH = 3


class Pair(Enum):
    BTC = ("BTC", "USDT")


def roundtrip(value: Any) -> Any:
    """Through the codec and real JSON bytes, as the log stores it."""
    return decode_value(orjson.loads(orjson.dumps(encode_value(value))))


@pytest.mark.parametrize(
    "text", ["1.50", "1.5", "0.00000001", "-0.000", "1E+3", "123456789012345678901234567890.1"]
)
def test_decimal_keeps_value_and_exponent(text: str) -> None:
    got = roundtrip(Decimal(text))
    assert type(got) is Decimal
    assert got.as_tuple() == Decimal(text).as_tuple()  # 1.50 stays 1.50, not 1.5


def test_aware_datetime_keeps_offset() -> None:
    dt = datetime(2026, 11, 21, 9, 30, 1, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    got = roundtrip(dt)
    assert got == dt
    assert got.utcoffset() == timedelta(hours=5, minutes=30)


def test_utc_datetime_stays_utc() -> None:
    dt = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    got = roundtrip(dt)
    assert got == dt and got.utcoffset() == timedelta(0)


def test_zone_name_becomes_its_offset() -> None:
    dt = datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    got = roundtrip(dt)
    assert got == dt
    assert got.utcoffset() == timedelta(hours=2)


def test_naive_datetime_stays_naive() -> None:
    dt = datetime(2026, 11, 21, 9, 30)
    got = roundtrip(dt)
    assert got == dt and got.tzinfo is None


def test_date_is_not_a_datetime() -> None:
    got = roundtrip(date(2026, 11, 21))
    assert got == date(2026, 11, 21) and type(got) is date


def test_uuid() -> None:
    u = uuid.uuid4()
    got = roundtrip(u)
    assert got == u and isinstance(got, uuid.UUID)


def test_enums_are_stored_by_value() -> None:
    assert roundtrip(Side.BUY) == "buy" and type(roundtrip(Side.BUY)) is str
    assert roundtrip(Level.HIGH) == 3 and type(roundtrip(Level.HIGH)) is int
    assert roundtrip(Pair.BTC) == ["BTC", "USDT"]


@pytest.mark.parametrize(
    "n", [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**40, -(10**40)]
)
def test_ints_of_any_size(n: int) -> None:
    got = roundtrip(n)
    assert got == n and type(got) is int


def test_bool_stays_bool() -> None:
    assert roundtrip([True, False]) == [True, False]
    assert type(roundtrip(True)) is bool


def test_dollar_keyed_dicts_are_not_tags() -> None:
    value = {"$decimal": "1.5", "nested": {"$uuid": "not a uuid"}, "plain": {"$int": 3}}
    got = roundtrip(value)
    assert got == value
    assert type(got["$decimal"]) is str  # a user's "$decimal" key is data, not a tag


def test_tuple_becomes_list_and_nesting_is_kept() -> None:
    value = {"a": (1, Decimal("2.0"), [date(2026, 1, 1), {"b": (uuid.UUID(int=7),)}])}
    got = roundtrip(value)
    assert got == {"a": [1, Decimal("2.0"), [date(2026, 1, 1), {"b": [uuid.UUID(int=7)]}]]}


def test_unknown_tag_is_refused_on_decode() -> None:
    with pytest.raises(ValueError, match=r"unknown value tag '\$pickle'"):
        decode_value({"$pickle": "x"})


@pytest.mark.parametrize(
    ("args", "kwargs", "path", "words"),
    [
        ((), {"price": float("nan")}, "kwargs['price']", "NaN"),
        ((), {"price": float("inf")}, "kwargs['price']", "inf"),
        ((1, [float("-inf")]), {}, "args[1][0]", "inf"),
        ((), {"price": Decimal("NaN")}, "kwargs['price']", "Decimal NaN"),
        ((), {"qty": Decimal("Infinity")}, "kwargs['qty']", "Infinity"),
        ((), {"qty": Decimal("sNaN")}, "kwargs['qty']", "sNaN"),
        ((), {"o": {"legs": [1, {"px": b"12"}]}}, "kwargs['o']['legs'][1]['px']", "bytes"),
        ((), {"s": {1, 2}}, "kwargs['s']", "set"),
        (({1: "a"},), {}, "args[0]", "dict key 1 is a int"),
        ((), {"m": {"ok": 1, (1, 2): 2}}, "kwargs['m']", "keys must be str"),
        ((object(),), {}, "args[0]", "type object"),
    ],
)
def test_bad_values_are_named_by_path(
    args: tuple[Any, ...], kwargs: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(WALSerializationError) as ei:
        WALEntry.create("log_trade", args, kwargs)
    assert ei.value.path == path
    assert words in ei.value.problem
    assert path in str(ei.value)


def test_self_containing_value_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(WALSerializationError, match="nested too deeply"):
        WALEntry.create("log_trade", kwargs={"x": loop})


def test_dollar_keyword_names_are_refused() -> None:
    with pytest.raises(WALSerializationError, match=r"must not start with '\$'"):
        WALEntry.create("log_trade", kwargs={"$x": 1, "y": 2})


def test_bad_value_writes_nothing(tmp_path: Path) -> None:
    """A bad value slipped into an entry by hand is refused before a byte is written."""
    with WALStorage(tmp_path / "log") as log:
        log.append(make_entry(1))
        seg = sorted((tmp_path / "log").glob("*.wal"))[0]
        size, next_lsn = seg.stat().st_size, log.next_lsn
        good = make_entry(2)
        bad = WALEntry(
            entry_id=good.entry_id,
            operation="log_trade",
            args=(),
            kwargs={"price": float("nan")},
            idempotency_key=good.idempotency_key,
            checksum=good.checksum,
            created_at=good.created_at,
        )
        with pytest.raises(WALSerializationError) as ei:
            log.append(bad)
        assert ei.value.path == "kwargs['price']"
        with pytest.raises(WALSerializationError):
            log.append_many([make_entry(3), bad])  # the good one is not written either
        assert seg.stat().st_size == size
        assert log.next_lsn == next_lsn
    with WALStorage(tmp_path / "log") as log:
        assert [e.kwargs["n"] for e in log.iter_entries()] == [1]


def test_every_type_survives_the_log(tmp_path: Path) -> None:
    """The codec's promise end to end: append, close, reopen, read back the same values."""
    kwargs = {
        "qty": Decimal("0.00100000"),
        "at": datetime(2026, 11, 21, 9, 30, tzinfo=timezone(timedelta(hours=-4))),
        "naive": datetime(2026, 11, 21, 9, 30),
        "day": date(2026, 11, 21),
        "id": uuid.UUID(int=12345),
        "side": Side.BUY,
        "big": 2**100,
        "neg": -(2**70),
        "raw": {"$decimal": "x"},
        "flt": 0.1,
    }
    e = WALEntry.create("log_trade", (Level.HIGH, (1, 2)), kwargs)
    with WALStorage(tmp_path / "log") as log:
        log.append(e)
    with WALStorage(tmp_path / "log") as log:
        got = log.get_entry(e.entry_id)
    assert got.kwargs == {**kwargs, "side": "buy"}
    assert got.kwargs["qty"].as_tuple() == Decimal("0.00100000").as_tuple()
    assert got.kwargs["at"].utcoffset() == timedelta(hours=-4)
    assert got.kwargs["naive"].tzinfo is None
    assert got.args == (3, [1, 2])
    assert got.verify()


@pytest.mark.parametrize("text", ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "Inf"])
def test_a_decimal_the_encoder_refuses_is_a_value_problem(text: str) -> None:
    """``encode_value`` never writes a NaN or an Infinity: one read back was not written by
    it, and every replay or listing of it would fail (review F6). Its path is named."""
    from wal.codec import value_problem

    problem = value_problem({"a": [1, {"price": {"$decimal": text}}]}, "kwargs")
    assert problem is not None
    assert problem.startswith("kwargs['a'][1]['price']: Decimal ") and "not allowed" in problem
    assert value_problem({"price": {"$decimal": "1.50"}}, "kwargs") is None


def test_value_problem_names_what_the_encoder_would_refuse() -> None:
    from wal.codec import MAX_DEPTH, value_problem

    deep: Any = 1
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    problem = value_problem([deep], "args")
    assert problem is not None and problem.startswith("args[0]") and "nested too deeply" in problem
    bad_tag = value_problem({"x": {"$nope": 1}}, "kwargs")
    assert bad_tag is not None and bad_tag.startswith("kwargs['x']: ")
    assert value_problem([1, "a", {"$uuid": str(uuid.uuid4())}], "args") is None
