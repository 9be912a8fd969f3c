"""wal.entry: creation, the exact dict round trip, the content checksum, idempotency keys."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from helpers_log import make_entry

from wal import OperationType, WALEntry, WALEntryStatus, WALSerializationError
from wal.codec import encode_value


def test_create_normalizes_and_starts_pending() -> None:
    e = WALEntry.create(OperationType.BALANCE_UPDATE, (1, (2, 3)), {"amount": Decimal("1.10")})
    assert e.operation == "atomic_balance_update"
    assert e.args == (1, [2, 3])  # what a replay will see
    assert e.status is WALEntryStatus.PENDING and e.lsn is None and e.attempts == 0
    assert e.created_at.tzinfo is not None
    assert e.verify()


def test_to_dict_from_dict_round_trip_is_exact() -> None:
    e = make_entry(7, key="order-7").with_lsn(42)
    e = e.with_status(WALEntryStatus.FAILED, error="rejected", attempts=3)
    d = e.to_dict()
    back = WALEntry.from_dict(orjson.loads(orjson.dumps(d)))
    assert back == e
    assert back.to_dict() == d
    assert back.kwargs["qty"].as_tuple() == Decimal("7.50").as_tuple()
    assert back.verify()


def test_completed_status_sets_synced_at() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    e = make_entry().with_status(WALEntryStatus.COMPLETED, at=at)
    assert e.synced_at == at
    assert WALEntry.from_dict(e.to_dict()).synced_at == at


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("qty", Decimal("7.51")),
        ("qty", Decimal("7.5")),  # same number, other exponent: still a change
        ("symbol", "ETHUSDT"),
        ("n", 8),
    ],
)
def test_verify_detects_a_changed_value(field: str, value: Any) -> None:
    e = make_entry(7)
    d = e.to_dict()
    d["kwargs"] = dict(d["kwargs"])
    d["kwargs"][field] = encode_value(value)
    changed = WALEntry.from_dict(d)
    assert not changed.verify()


def test_verify_detects_changed_operation_key_and_id() -> None:
    e = make_entry(1)
    for field, value in [
        ("operation", "log_position"),
        ("idempotency_key", "other"),
        ("entry_id", str(uuid.uuid4())),
    ]:
        d = e.to_dict()
        d[field] = value
        assert not WALEntry.from_dict(d).verify(), field


def test_verify_after_replace_with_fresh_encoding() -> None:
    e = make_entry(1)
    changed = dataclasses.replace(e, kwargs={**e.kwargs, "n": 2})  # no stale encoding kept
    assert not changed.verify()


def test_default_idempotency_key_is_unique_per_entry() -> None:
    a, b = make_entry(1), make_entry(1)  # the same operation twice: two real events
    assert a.idempotency_key != b.idempotency_key
    assert a.idempotency_key == str(a.entry_id)
    assert not a.has_explicit_key
    assert a.entry_id != b.entry_id


def test_explicit_idempotency_key_is_kept() -> None:
    e = make_entry(1, key="client-order-17")
    assert e.idempotency_key == "client-order-17"
    assert e.has_explicit_key
    assert WALEntry.from_dict(e.to_dict()).idempotency_key == "client-order-17"


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"operation": ""}, "operation"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": 5}, "idempotency_key"),
        ({"kwargs": [("a", 1)]}, "kwargs"),
        ({"args": "abc"}, "args"),
        ({"args": {"a": 1}}, "args"),
    ],
)
def test_create_refuses_bad_arguments(kwargs: dict[str, Any], path: str) -> None:
    call: dict[str, Any] = {"operation": "log_trade", **kwargs}
    with pytest.raises(WALSerializationError) as ei:
        WALEntry.create(**call)
    assert ei.value.path == path


def test_from_dict_refuses_malformed() -> None:
    d = make_entry().to_dict()
    with pytest.raises(ValueError):
        WALEntry.from_dict({**d, "args": {"a": 1}})
    with pytest.raises(KeyError):
        WALEntry.from_dict({k: v for k, v in d.items() if k != "entry_id"})
    with pytest.raises(ValueError):
        WALEntry.from_dict({**d, "status": "lost"})


def test_entries_are_frozen() -> None:
    e = make_entry()
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.status = WALEntryStatus.COMPLETED  # type: ignore[misc]


def test_replace_with_new_kwargs_never_keeps_stale_encoded_values() -> None:
    e = WALEntry.create("log_trade", kwargs={"qty": 1})
    changed = dataclasses.replace(e, kwargs={"qty": 2})
    assert changed.to_dict()["kwargs"] == {"qty": 2}
    assert not changed.verify()  # the checksum covers the original content
    assert e.with_lsn(3).to_dict()["kwargs"] == {"qty": 1}
