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

import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import xxhash

from wal.codec import decode_value, encode_pair, encode_value
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
    # the order journal (wal.orders): intent, state change, fill
    ORDER_INTENT = "record_order_intent"
    ORDER_EVENT = "record_order_event"
    ORDER_FILL = "record_order_fill"
    ORDER_ANCHOR = "record_order_anchor"  # an anchor (seq, hash) of the order audit chain


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


def content_checksum(
    entry_id: str | uuid.UUID, operation: str, args: Any, kwargs: Any, key: str
) -> str:
    """xxh3-64 (hex) over the entry's content in its encoded form (the id as its string;
    orjson writes a ``UUID`` as that same string).

    It guards the entry end to end (creation to replay); each record on disk also has its
    own checksum over its exact bytes.
    """
    blob = orjson.dumps([entry_id, operation, args, kwargs, key], option=orjson.OPT_SORT_KEYS)
    return xxhash.xxh3_64_hexdigest(blob)


_STATUS_OF = {s.value: s for s in WALEntryStatus}
_set = object.__setattr__  # fills a frozen entry's caches
_new_uuid = _new_object = object.__new__
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def _uuid4() -> uuid.UUID:
    """``uuid.uuid4()`` (the same 16 bytes of ``os.urandom``, the same bits set), 3x faster:
    the UUID is filled in directly instead of through its argument-checking constructor."""
    u = _new_uuid(uuid.UUID)
    _set(u, "int", (int.from_bytes(os.urandom(16)) & _UUID4_CLEAR) | _UUID4_SET)
    _set(u, "is_safe", uuid.SafeUUID.unknown)
    return u  # a dict lookup is 5x an Enum call


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
        # exact-type checks first: the isinstance checks against ABCs cost more than the rest
        if type(operation) is str:
            op = operation
        else:
            op = str(operation.value if isinstance(operation, OperationType) else operation)
        if not op:
            raise WALSerializationError("operation", "must be a non-empty string")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise WALSerializationError(
                "idempotency_key", f"must be a non-empty str, got {idempotency_key!r}"
            )
        if kwargs is not None and type(kwargs) is not dict and not isinstance(kwargs, Mapping):
            raise WALSerializationError("kwargs", f"must be a mapping, got {type(kwargs).__name__}")
        ta = type(args)
        if ta is not tuple and ta is not list and isinstance(args, str | bytes | Mapping):
            raise WALSerializationError("args", f"must be a sequence, got {type(args).__name__}")
        if ta is tuple and not args:
            enc_args: list[Any] = []
            dec_args: list[Any] = enc_args
        else:
            enc_args, dec_args = encode_pair(list(args), "args")
        enc_kwargs, dec_kwargs = encode_pair(dict(kwargs) if kwargs else {}, "kwargs")
        if "$dict" in enc_kwargs and len(enc_kwargs) == 1:
            raise WALSerializationError("kwargs", "keyword names must not start with '$'")
        entry_id = _uuid4()
        sid = str(entry_id)
        key = idempotency_key if idempotency_key is not None else sid
        return _build(
            cls,
            entry_id,
            op,
            tuple(dec_args),
            dec_kwargs,
            key,
            content_checksum(entry_id, op, enc_args, enc_kwargs, key),
            datetime.now(UTC),
            None,
            None,
            WALEntryStatus.PENDING,
            0,
            None,
            (enc_args, enc_kwargs),
            idempotency_key is not None and key != sid,
        )

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
        """A copy with its LSN set (on the append path: slots filled directly, 3x replace())."""
        return _build(
            type(self),
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
            self._encoded,  # same args and kwargs
            self._explicit,
        )

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


# The slots of WALEntry, filled directly by their descriptors (a frozen dataclass's __init__
# goes through object.__setattr__ once per field: about twice the cost).
_slot = vars(WALEntry)
_s_id = _slot["entry_id"].__set__
_s_op = _slot["operation"].__set__
_s_args = _slot["args"].__set__
_s_kwargs = _slot["kwargs"].__set__
_s_key = _slot["idempotency_key"].__set__
_s_checksum = _slot["checksum"].__set__
_s_created = _slot["created_at"].__set__
_s_lsn = _slot["lsn"].__set__
_s_synced = _slot["synced_at"].__set__
_s_status = _slot["status"].__set__
_s_attempts = _slot["attempts"].__set__
_s_error = _slot["last_error"].__set__
_s_encoded = _slot["_encoded"].__set__
_s_explicit = _slot["_explicit"].__set__


def _build(
    cls: type[WALEntry],
    entry_id: uuid.UUID,
    operation: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    key: str,
    checksum: str,
    created_at: datetime,
    lsn: int | None,
    synced_at: datetime | None,
    status: WALEntryStatus,
    attempts: int,
    last_error: str | None,
    encoded: tuple[list[Any], dict[str, Any]] | None,
    explicit: bool | None,
) -> WALEntry:
    """A ``WALEntry`` with every slot given (no validation: the append path's constructor)."""
    e = _new_object(cls)
    _s_id(e, entry_id)
    _s_op(e, operation)
    _s_args(e, args)
    _s_kwargs(e, kwargs)
    _s_key(e, key)
    _s_checksum(e, checksum)
    _s_created(e, created_at)
    _s_lsn(e, lsn)
    _s_synced(e, synced_at)
    _s_status(e, status)
    _s_attempts(e, attempts)
    _s_error(e, last_error)
    _s_encoded(e, encoded)
    _s_explicit(e, explicit)
    return e
