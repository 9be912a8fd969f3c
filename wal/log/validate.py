"""What a record must hold to be used, beyond a good checksum: the one validator.

A checksum proves that a record's bytes are the ones written; it says nothing about what the
writer (or someone who recomputed it) put there. ``record_lsn`` and ``record_problem`` are
the full check that recovery's slow path, ``verify`` and ``repair`` apply to every entry and
status record; recovery's fast path (:mod:`wal.log.fastindex`) accepts only a subset of what
they accept (its regex and bulk checks are written from the same rules below) and hands
every other line to the slow path. A record that fails it is a defect with its location,
never an entry that every later read, replay or drain would fail on.

The rules, the same everywhere (JSON ``true`` is not an int: ``type(x) is int``):

* ``lsn``: an int >= 1;
* an entry: ``entry_id`` a canonical (lowercase) UUID, ``operation``, ``checksum``,
  ``created_at`` and ``idempotency_key`` strings, ``synced_at`` and ``last_error`` null or a string,
  ``attempts`` an int >= 0, ``status`` a known status, every value tag and timestamp decodes,
  and every value in ``args`` and ``kwargs`` is one the codec writes (``wal.codec.value_problem``:
  a ``$decimal`` NaN or Infinity, or nesting deeper than the encoder allows, is not: such an
  entry could be neither replayed nor shown);
* a status record: ``of`` an int from 1 to ``lsn - 1`` (an earlier record), ``entry_id`` a
  canonical UUID, ``status`` a known one, ``at`` a time (or null), ``attempts`` null or an int >= 0,
  ``error`` null or a string.

``content`` (``verify`` only) adds what no read depends on: an entry's content checksum. It is
checked last, so ``record_problem(rec)`` is ``CONTENT_MISMATCH`` exactly when the record passes
``record_problem(rec, content=False)``, the check an open applies: a normal open accepts such
a record (``verify`` says so).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from wal.codec import value_problem
from wal.entry import WALEntry, WALEntryStatus
from wal.log.record import KIND_ENTRY, KIND_STATUS

__all__ = ["CONTENT_MISMATCH", "record_lsn", "record_problem"]

CONTENT_MISMATCH = "entry content checksum mismatch (written wrong, not damaged on disk)"


def record_lsn(rec: dict[str, Any]) -> int | None:
    """The LSN of an entry or status record, or None when it has none (a bool is not one)."""
    lsn = rec.get("lsn")
    return lsn if type(lsn) is int and lsn >= 1 else None


def _str(rec: dict[str, Any], name: str, *, null: bool = False) -> None:
    v = rec[name] if not null else rec.get(name)
    if not (isinstance(v, str) or (null and v is None)):
        raise TypeError(f"{name} is {v!r}, not a string" + (" or null" if null else ""))


def _count(v: object, name: str, *, null: bool = False) -> None:
    if not ((type(v) is int and v >= 0) or (null and v is None)):
        raise TypeError(f"{name} is {v!r}, not an int >= 0" + (" or null" if null else ""))


def _uuid(rec: dict[str, Any]) -> None:
    v = rec["entry_id"]
    if not isinstance(v, str) or str(uuid.UUID(v)) != v:
        raise ValueError(f"entry_id {v!r} is not a UUID in its canonical form")


def record_problem(rec: dict[str, Any], *, content: bool = True) -> str | None:
    """Why a record with a good checksum (and an LSN, ``record_lsn``) still cannot be used
    (None: it is fine). ``content``: also an entry's content checksum (``verify``)."""
    kind = rec.get("t")
    try:
        if kind == KIND_ENTRY:
            WALEntryStatus(rec.get("status", "pending"))
            _uuid(rec)
            for name in ("operation", "checksum", "created_at", "idempotency_key"):
                _str(rec, name)
            _str(rec, "synced_at", null=True)
            _str(rec, "last_error", null=True)
            _count(rec.get("attempts", 0), "attempts")
            for name, shape in (("args", list), ("kwargs", dict)):
                value = rec[name]
                bad = value_problem(value, name) if isinstance(value, shape) else None
                if bad is not None:  # the path of the bad value (from_dict would not say)
                    return f"malformed entry record: {bad}"
            entry = WALEntry.from_dict(rec)  # decodes every value tag and both timestamps
            if content and not entry.verify():
                return CONTENT_MISMATCH
        elif kind == KIND_STATUS:
            WALEntryStatus(rec["status"])
            _uuid(rec)
            of = rec["of"]
            lsn = rec.get("lsn")
            if type(of) is not int or of < 1 or type(lsn) is not int or of >= lsn:
                return f"malformed status record: 'of' is {of!r} (not an earlier LSN)"
            _count(rec.get("attempts"), "attempts", null=True)
            _str(rec, "error", null=True)
            at = rec.get("at")
            if at is not None:
                datetime.fromisoformat(at)
        else:
            return f"unknown record kind {kind!r}"
    except (KeyError, ValueError, TypeError, AttributeError, ArithmeticError) as exc:
        return f"malformed {kind} record: {type(exc).__name__}: {exc}"
    return None
