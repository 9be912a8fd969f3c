"""One line of a segment: a self-verifying record.

A line is::

    <checksum: 16 lowercase hex digits> <space> <payload: one JSON object> <newline>

The checksum is xxh3-64 over the payload's exact bytes, so a record is verified without
re-serializing it: a flipped bit anywhere in the payload (even one that still parses, as in a
JSON number) fails the check. The payload's ``"t"`` field names its kind:

``segment`` (the first line of every segment, no LSN)
    ``{"t":"segment","version":1,"first":F,"last":L|null}``: this segment holds records with
    LSNs from F on. ``last`` is set when the segment was rewritten by compaction: it then
    covers F..L, and holds only the records that were kept, in increasing LSN order.
``entry``
    ``{"t":"entry","lsn":N, ...WALEntry.to_dict() fields}``
``status``
    ``{"t":"status","lsn":N,"of":M,"entry_id":"...","status":"completed","at":"<iso>",
    "attempts":K,"error":null|"..."}``: entry M (by LSN) has a new status.
"""

from __future__ import annotations

from typing import Any

import orjson
import xxhash

__all__ = [
    "BAD_CHECKSUM",
    "FORMAT_VERSION",
    "KIND_ENTRY",
    "KIND_SEGMENT",
    "KIND_STATUS",
    "NOT_A_RECORD",
    "NOT_HEX",
    "RecordError",
    "ZERO_FILLED",
    "encode_line",
    "decode_line",
]

FORMAT_VERSION = 1
KIND_SEGMENT = "segment"
KIND_ENTRY = "entry"
KIND_STATUS = "status"
_HEX = frozenset(b"0123456789abcdef")
# what is wrong with a line, in words (also said of a line too long to be read whole:
# wal.log.filescan judges it in pieces, with the same words)
ZERO_FILLED = "zero-filled bytes where a record should be"
NOT_A_RECORD = "not a record (too short, or no checksum field)"
NOT_HEX = "checksum field is not 16 hex digits"
BAD_CHECKSUM = "checksum mismatch (the record's bytes changed after it was written)"


class RecordError(ValueError):
    """A line that is not a valid record; ``problem`` says why in words."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


def encode_line(payload: bytes) -> bytes:
    """Frame a JSON payload as a record line (checksum, space, payload, newline)."""
    return b"%016x %s\n" % (xxhash.xxh3_64_intdigest(payload), payload)


def encode_record(record: dict[str, Any]) -> bytes:
    return encode_line(orjson.dumps(record))


def decode_line(line: bytes) -> dict[str, Any]:
    """Verify and parse one line (without its newline); raise ``RecordError`` if it is bad."""
    if len(line) < 19 or line[16:17] != b" ":
        if line and line.strip(b"\x00") == b"":
            raise RecordError(ZERO_FILLED)
        raise RecordError(NOT_A_RECORD)
    head = line[:16]
    if not _HEX.issuperset(head):
        raise RecordError(NOT_HEX)
    payload = line[17:]
    if int(head, 16) != xxhash.xxh3_64_intdigest(payload):
        raise RecordError(BAD_CHECKSUM)
    try:
        rec = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:  # cannot happen with a matching checksum unless
        raise RecordError(f"checksum matches but the JSON is invalid: {exc}") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("t"), str):
        raise RecordError("checksum matches but the payload is not a record object")
    return rec
