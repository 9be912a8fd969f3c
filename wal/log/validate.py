"""What a record must hold to be used, beyond a good checksum.

A checksum proves that a record's bytes are the ones written; it says nothing about what the
writer (or someone who recomputed it) put there. ``record_problem`` is the full check that
recovery (slow path; the fast path checks the same in bulk), ``verify`` and ``repair`` apply to
every entry and status record: a record that fails it is a defect with its location, never
an entry that every later read, replay or drain would fail on.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from wal.entry import WALEntry, WALEntryStatus
from wal.log.record import KIND_ENTRY, KIND_STATUS

__all__ = ["record_problem"]


def record_problem(rec: dict[str, Any], *, content: bool = True) -> str | None:
    """Why a record with a good checksum still cannot be used (None: it is fine).

    Always: what reading it back needs (an entry decodes: its value tags, its timestamps; a
    status record's status and time parse). ``content`` (``verify``): also that an entry's
    content checksum matches and a status record names an earlier LSN; recovery leaves
    those to ``verify`` (they do not make a read fail).
    """
    kind = rec.get("t")
    try:
        if kind == KIND_ENTRY:
            WALEntryStatus(rec.get("status", "pending"))
            uuid.UUID(rec["entry_id"])
            if not isinstance(rec["idempotency_key"], str):
                return "malformed entry: idempotency_key is not a string"
            entry = WALEntry.from_dict(rec)  # decodes every value tag and both timestamps
            if content and not entry.verify():
                return "entry content checksum mismatch (written wrong, not damaged on disk)"
        elif kind == KIND_STATUS:
            WALEntryStatus(rec["status"])
            uuid.UUID(rec["entry_id"])
            of = rec["of"]
            if content and (not isinstance(of, int) or of >= rec["lsn"]):
                return f"malformed status record: 'of' is {of!r}"
            at = rec.get("at")
            if at is not None:
                datetime.fromisoformat(at)
        else:
            return f"unknown record kind {kind!r}"
    except (KeyError, ValueError, TypeError, AttributeError, ArithmeticError) as exc:
        return f"malformed {kind} record: {type(exc).__name__}: {exc}"
    return None
