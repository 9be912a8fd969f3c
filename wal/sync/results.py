"""What the manager hands back: ``Receipt`` (one write) and ``SyncResult`` (one drain)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from wal.entry import WALEntryStatus

__all__ = ["UNFINISHED", "Receipt", "SyncResult"]

UNFINISHED = (WALEntryStatus.PENDING, WALEntryStatus.SYNCING)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What ``write`` hands back. ``status`` COMPLETED: applied, ``result`` is the database
    method's return value. PENDING: durable in the log, to be applied by the sync thread.
    ``duplicate``: the idempotency key was seen before; this is the first write's receipt.

    A keyed write's receipt also describes the call that was logged under the key, so that a
    retry can be told from another call under a used key: ``request`` (``request_digest`` of
    its arguments without the id and time the wrapper fills in), ``made_id`` and ``made_at``
    (those two as logged). None when not known (the entry compacted away: only the
    database's key ledger knows the key)."""

    entry_id: uuid.UUID
    lsn: int
    operation: str
    idempotency_key: str
    status: WALEntryStatus
    result: Any = None
    error: str | None = None
    duplicate: bool = False
    request: str | None = None
    made_id: Any = None
    made_at: Any = None

    @property
    def applied(self) -> bool:
        return self.status is WALEntryStatus.COMPLETED

    @property
    def pending(self) -> bool:
        return self.status in UNFINISHED


@dataclass(frozen=True, slots=True)
class SyncResult:
    """Counts of one drain (``force_sync`` or a pass of the sync thread)."""

    applied: int = 0
    duplicates: int = 0
    failed: int = 0  # became FAILED (dead letters) in this drain
    errors: int = 0  # permanent errors that will be retried
    pending: int = 0  # still unfinished after the drain
    seconds: float = 0.0
    error: str | None = None  # the transient error that stopped the drain, if any

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
