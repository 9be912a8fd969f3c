"""``WALEntry``: one critical operation, as the log stores it.

An entry is created by the caller (``WALEntry.create``), gets its ``lsn`` from the storage
on ``append``, and changes ``status`` only through appended status records.

Idempotency keys
----------------
By default every entry's ``idempotency_key`` is its own ``entry_id``: unique. A pure content
hash of ``(operation, args, kwargs)`` would be wrong for a trading log, because two identical
operations are often two real events: two +100 deposits, two fills of the same size at the
same price. Hashing them to one key would silently drop the second. A caller that *does*
retry one intent (a client order id, a request id) passes that as ``idempotency_key``; the
manager then collapses the retries into the first entry.

Values are normalized on ``create`` through :mod:`wal.codec` (tuples become lists, enums
their values), so the entry holds exactly what a replay after a restart will see.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import xxhash

from wal.codec import decode_value, encode_value
from wal.errors import WALSerializationError

__all__ = ["OperationType", "WALEntry", "WALEntryStatus", "content_checksum"]


class OperationType(StrEnum):
    """The built-in critical operations (the values are the DatabaseManager method names)."""

    BALANCE_UPDATE = "atomic_balance_update"
    LOG_TRADE = "log_trade"
    LOG_POSITION = "log_position"
    UPDATE_POSITION = "update_position"
    CLOSE_POSITION = "close_position"
    CREATE_TRADING_SESSION = "create_trading_session"
    END_TRADING_SESSION = "end_trading_session"


class WALEntryStatus(StrEnum):
    """Where an entry is on its way to the database.

    PENDING: durable in the log, not yet applied. SYNCING: an apply was started (a crash here
    leaves it SYNCING; it is replayed like PENDING). COMPLETED: applied to the database.
    FAILED: the database refused it ``max_retries`` times for a permanent reason (dead letter).
    """

    PENDING = "pending"
    SYNCING = "syncing"
    COMPLETED = "completed"
    FAILED = "failed"


def content_checksum(entry_id: str, operation: str, args: Any, kwargs: Any, key: str) -> str:
    """xxh3-64 (hex) over the entry's content in its encoded form.

    It guards the entry end to end (creation to replay); each record on disk also has its
    own checksum over its exact bytes.
    """
    blob = orjson.dumps([entry_id, operation, args, kwargs, key], option=orjson.OPT_SORT_KEYS)
    return xxhash.xxh3_64_hexdigest(blob)


_STATUS_OF = {s.value: s for s in WALEntryStatus}  # a dict lookup is 5x an Enum call


def utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


@dataclass(frozen=True, slots=True)
class WALEntry:
    """One critical operation in the log. Frozen: a new status is a new record, not a mutation.

    >>> e = WALEntry.create("log_trade", kwargs={"symbol": "BTCUSDT"})
    >>> WALEntry.from_dict(e.to_dict()) == e
    True
    """

    entry_id: uuid.UUID
    operation: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    idempotency_key: str
    checksum: str
    created_at: datetime
    lsn: int | None = None
    synced_at: datetime | None = None
    status: WALEntryStatus = WALEntryStatus.PENDING
    attempts: int = 0
    last_error: str | None = None
    # The encoded (JSON-native) args and kwargs, kept so the storage does not encode twice.
    # Not an __init__ argument: dataclasses.replace() drops it, so a copy with other
    # args/kwargs can never carry stale encoded values; it is recomputed on demand.
    _encoded: tuple[list[Any], dict[str, Any]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    # Whether the caller gave the idempotency key (known on create; saves a str(uuid) per append).
    _explicit: bool | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        operation: str | OperationType,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> WALEntry:
        """Build a new PENDING entry; raise ``WALSerializationError`` for an unloggable value."""
        op = str(operation.value if isinstance(operation, OperationType) else operation)
        if not op:
            raise WALSerializationError("operation", "must be a non-empty string")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise WALSerializationError(
                "idempotency_key", f"must be a non-empty str, got {idempotency_key!r}"
            )
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise WALSerializationError("kwargs", f"must be a mapping, got {type(kwargs).__name__}")
        if isinstance(args, str | bytes | Mapping):
            raise WALSerializationError("args", f"must be a sequence, got {type(args).__name__}")
        enc_args: list[Any] = encode_value(list(args), "args")
        enc_kwargs: dict[str, Any] = encode_value(dict(kwargs or {}), "kwargs")
        if "$dict" in enc_kwargs and len(enc_kwargs) == 1:
            raise WALSerializationError("kwargs", "keyword names must not start with '$'")
        entry_id = uuid.uuid4()
        sid = str(entry_id)
        key = idempotency_key if idempotency_key is not None else sid
        return cls(
            entry_id=entry_id,
            operation=op,
            args=tuple(decode_value(enc_args)),
            kwargs=decode_value(enc_kwargs),
            idempotency_key=key,
            checksum=content_checksum(sid, op, enc_args, enc_kwargs, key),
            created_at=utc_now(),
        )._cached(enc_args, enc_kwargs, idempotency_key is not None and key != sid)

    def _cached(
        self, enc_args: list[Any], enc_kwargs: dict[str, Any], explicit: bool | None = None
    ) -> WALEntry:
        object.__setattr__(self, "_encoded", (enc_args, enc_kwargs))
        object.__setattr__(self, "_explicit", explicit)
        return self

    @property
    def has_explicit_key(self) -> bool:
        """True when the caller supplied the idempotency key (it is not the entry id)."""
        if self._explicit is None:
            object.__setattr__(self, "_explicit", self.idempotency_key != str(self.entry_id))
        return bool(self._explicit)

    def encoded(self) -> tuple[list[Any], dict[str, Any]]:
        """The args and kwargs as JSON natives and tags (see :mod:`wal.codec`)."""
        if self._encoded is not None:
            return self._encoded
        return encode_value(list(self.args), "args"), encode_value(self.kwargs, "kwargs")

    def verify(self) -> bool:
        """True when ``checksum`` matches the content."""
        a, k = self.encoded()
        got = content_checksum(str(self.entry_id), self.operation, a, k, self.idempotency_key)
        return got == self.checksum

    def with_status(
        self,
        status: WALEntryStatus,
        *,
        at: datetime | None = None,
        error: str | None = None,
        attempts: int | None = None,
    ) -> WALEntry:
        """A copy with a new status (what a status record means when read back)."""
        synced = (at or utc_now()) if status is WALEntryStatus.COMPLETED else self.synced_at
        return replace(
            self,
            status=status,
            synced_at=synced,
            last_error=error if error is not None else self.last_error,
            attempts=self.attempts if attempts is None else attempts,
        )

    def with_lsn(self, lsn: int) -> WALEntry:
        """A copy with its LSN set (on the append path: positional, faster than replace())."""
        new = WALEntry(
            self.entry_id,
            self.operation,
            self.args,
            self.kwargs,
            self.idempotency_key,
            self.checksum,
            self.created_at,
            lsn,
            self.synced_at,
            self.status,
            self.attempts,
            self.last_error,
        )
        object.__setattr__(new, "_encoded", self._encoded)  # same args and kwargs
        object.__setattr__(new, "_explicit", self._explicit)
        return new

    def to_dict(self) -> dict[str, Any]:
        """A JSON-native dict; ``from_dict`` turns it back into an equal entry."""
        a, k = self.encoded()
        return {
            "entry_id": str(self.entry_id),
            "lsn": self.lsn,
            "operation": self.operation,
            "args": a,
            "kwargs": k,
            "idempotency_key": self.idempotency_key,
            "checksum": self.checksum,
            "created_at": _iso(self.created_at),
            "synced_at": _iso(self.synced_at),
            "status": self.status.value,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WALEntry:
        """Rebuild an entry from ``to_dict`` output; ``ValueError``/``KeyError`` if malformed."""
        enc_args = d["args"]
        enc_kwargs = d["kwargs"]
        if not isinstance(enc_args, list) or not isinstance(enc_kwargs, dict):
            raise ValueError("args must be a list and kwargs an object")
        synced = d.get("synced_at")
        lsn = d.get("lsn")
        return cls(
            entry_id=uuid.UUID(d["entry_id"]),
            operation=str(d["operation"]),
            args=tuple(decode_value(enc_args)) if enc_args else (),
            kwargs=decode_value(enc_kwargs),
            idempotency_key=str(d["idempotency_key"]),
            checksum=str(d["checksum"]),
            created_at=datetime.fromisoformat(d["created_at"]),
            lsn=None if lsn is None else int(lsn),
            synced_at=None if synced is None else datetime.fromisoformat(synced),
            status=_STATUS_OF.get(d.get("status", "pending")) or WALEntryStatus(d["status"]),
            attempts=int(d.get("attempts", 0)),
            last_error=d.get("last_error"),
        )._cached(enc_args, enc_kwargs)
