"""The log's in-memory index: where every record is and what state every entry is in.

``LogIndex`` is the part of ``WALStorage`` (which derives from it) that knows records by LSN,
in compact arrays grown in chunks, about 29 bytes per LSN: per slot (slot = LSN - ``_base``)
the entry's status code (``_status``, 0 for a status record or a compacted-away entry), the
record's file offset and length, the LSN of the entry's newest status record, and 64 random
bits of its id (``_idh``, searched in C by ``_find_id``). Beside them: a Bloom filter of the
ids appended since open, a dict of explicit idempotency keys (by 64-bit hash) and the count
of entries per status. The entries themselves stay on disk; ``WALStorage`` reads them back.

Nothing here does I/O except ``_find_id``, which verifies a hash hit by reading the record
(``_read_record``, provided by ``WALStorage``). Callers hold the storage's lock.
"""

from __future__ import annotations

import re
import uuid
from array import array
from typing import Any

import xxhash

from wal.entry import WALEntry, WALEntryStatus
from wal.errors import WALEntryNotFoundError
from wal.log.record import KIND_ENTRY, KIND_STATUS
from wal.log.report import RecoveryReport
from wal.log.segment import Line

# Status codes in the per-LSN index (0: not an entry, or compacted away).
CODE_NONE, CODE_PENDING, CODE_SYNCING, CODE_COMPLETED, CODE_FAILED = 0, 1, 2, 3, 4
STATUS_CODE = {
    WALEntryStatus.PENDING: CODE_PENDING,
    WALEntryStatus.SYNCING: CODE_SYNCING,
    WALEntryStatus.COMPLETED: CODE_COMPLETED,
    WALEntryStatus.FAILED: CODE_FAILED,
}
CODE_STATUS = {v: k for k, v in STATUS_CODE.items()}
CODE_OF_TEXT = {k.value: v for k, v in STATUS_CODE.items()}
UNFINISHED_CODES = re.compile(b"[\x01\x02]")  # PENDING or SYNCING

BLOOM_BYTES = 1 << 22
BLOOM_MASK = (BLOOM_BYTES * 8) - 1


def id_hash(entry_id: bytes) -> int:
    """The last 8 bytes of a UUID4: random, so a fine hash (hits are verified on disk)."""
    return int.from_bytes(entry_id[8:], "little")


def uuid_hash(u: uuid.UUID) -> int:
    """``id_hash(u.bytes)``, from the UUID's integer."""
    return int.from_bytes((u.int & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big"), "little")


def key_hash(key: str) -> int:
    return xxhash.xxh3_64_intdigest(key.encode())


# A framed record on its way to disk (a tuple: the append path makes one per record):
# (lsn, line, code, id_hash, key_hash, target, target_code). ``code`` is the entry's status
# code, or CODE_NONE for a status record, which changes entry ``target`` to ``target_code``.
IndexRecord = tuple[int, bytes, int, int, int | None, int, int]


class LogIndex:
    """The per-LSN index (a base of ``WALStorage``; see the module docstring)."""

    recovery_report: RecoveryReport

    def _init_index(self) -> None:
        self._base = 1  # LSN of index slot 0
        self._status = bytearray()  # allocated in chunks; slots past _n are zero
        self._n = 0  # slots in use
        self._offsets = array("q")
        self._lengths = array("I")
        self._status_rec = array("q")  # LSN of an entry's newest status record (0: none)
        self._idh = array("Q")  # 64 random bits of each entry's id, searched in C by _find_id
        # a Bloom filter of every id appended since open (4 MiB): a re-appended entry is
        # caught, and only its rare false positives pay for a _find_id search
        self._seen_ids = bytearray(BLOOM_BYTES)
        self._keys: dict[int, int] = {}  # hash of an explicit idempotency key -> LSN
        self._counts = [0, 0, 0, 0, 0]

    def _read_record(self, lsn: int) -> dict[str, Any]:
        """One record parsed, by LSN (``WALStorage`` reads it from disk)."""
        raise NotImplementedError

    def _slot(self, lsn: int) -> int:
        """Grow the index to hold ``lsn`` (in chunks, amortized); return its slot."""
        i = lsn - self._base
        if i >= self._n:
            have = len(self._status)
            if i >= have:
                grow = max(i + 1 - have, have // 2, 4096)
                self._status.extend(bytes(grow))
                zeros = bytes(8 * grow)
                self._offsets.frombytes(zeros)
                self._status_rec.frombytes(zeros)
                self._idh.frombytes(zeros)
                self._lengths.frombytes(bytes(self._lengths.itemsize * grow))
            self._n = i + 1
        return i

    def _index_record(self, rec: dict[str, Any], item: Line) -> None:
        """Index a record read back during recovery."""
        kind = rec["t"]
        lsn = rec["lsn"]
        if kind == KIND_ENTRY:
            code = CODE_OF_TEXT[rec.get("status", "pending")]
            key = rec["idempotency_key"]
            sid = rec["entry_id"]
            eid = bytes.fromhex(sid.replace("-", ""))  # 4x faster than uuid.UUID(sid).bytes
            if len(eid) != 16:
                raise ValueError(f"entry_id {sid!r} is not a UUID")
            self._index_entry(lsn, item.offset, item.length, code, eid, key, sid)
            self.recovery_report.entries += 1
        elif kind == KIND_STATUS:
            code = CODE_OF_TEXT[rec["status"]]
            self._index_status(lsn, item.offset, item.length, int(rec["of"]), code)
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def _index_entry(
        self, lsn: int, off: int, length: int, code: int, eid: bytes, key: str | None, sid: str
    ) -> None:
        i = self._slot(lsn)
        self._status[i] = code
        self._offsets[i] = off
        self._lengths[i] = length
        self._counts[code] += 1
        self._idh[i] = h = id_hash(eid)
        self._bloom_add(h)
        if key is not None and key != sid:
            self._keys[key_hash(key)] = lsn

    def _index_status(self, lsn: int, off: int, length: int, target: int, code: int) -> None:
        i = self._slot(lsn)
        self._offsets[i] = off
        self._lengths[i] = length
        t = target - self._base
        if t < 0 or t >= self._n or self._status[t] == CODE_NONE:
            return  # its entry was compacted away: nothing to change
        old = self._status[t]
        self._counts[old] -= 1
        self._counts[code] += 1
        self._status[t] = code
        self._status_rec[t] = lsn

    def _index_written(self, batch: list[IndexRecord], off: int) -> None:
        """Index the records a flush has written from offset ``off`` on (lock held)."""
        self._slot(batch[-1][0])  # grow the arrays once for the whole batch
        base = self._base
        status, offsets, lengths, idh = self._status, self._offsets, self._lengths, self._idh
        counts, seen, keys = self._counts, self._seen_ids, self._keys
        for lsn, line, code, h, kh, target, target_code in batch:
            n = len(line)
            if code:  # an entry
                i = lsn - base
                status[i] = code
                offsets[i] = off
                lengths[i] = n
                counts[code] += 1
                idh[i] = h
                b1, b2 = h & BLOOM_MASK, (h >> 32) & BLOOM_MASK
                seen[b1 >> 3] |= 1 << (b1 & 7)
                seen[b2 >> 3] |= 1 << (b2 & 7)
                if kh is not None:
                    keys[kh] = lsn
            else:
                self._index_status(lsn, off, n, target, target_code)
            off += n

    def _resolve(self, ref: uuid.UUID | str | WALEntry) -> tuple[int, str]:
        """(LSN, id string) of an entry given by id or object; caller holds the lock."""
        if isinstance(ref, WALEntry):
            if ref.lsn is None:
                raise WALEntryNotFoundError(ref.entry_id)
            return ref.lsn, str(ref.entry_id)
        try:
            u = ref if isinstance(ref, uuid.UUID) else uuid.UUID(str(ref))
        except ValueError:
            raise WALEntryNotFoundError(ref) from None
        return self._find_id(u), str(u)

    def _bloom_add(self, h: int) -> None:
        b1, b2 = h & BLOOM_MASK, (h >> 32) & BLOOM_MASK
        self._seen_ids[b1 >> 3] |= 1 << (b1 & 7)
        self._seen_ids[b2 >> 3] |= 1 << (b2 & 7)

    def _bloom_has(self, h: int) -> bool:
        """False: no entry with this id hash was appended since open (True: maybe)."""
        b1, b2 = h & BLOOM_MASK, (h >> 32) & BLOOM_MASK
        seen = self._seen_ids
        return bool(seen[b1 >> 3] & (1 << (b1 & 7)) and seen[b2 >> 3] & (1 << (b2 & 7)))

    def _has_id(self, u: uuid.UUID) -> bool:
        try:
            self._find_id(u)
        except WALEntryNotFoundError:
            return False
        return True

    def _find_id(self, u: uuid.UUID) -> int:
        """The LSN of entry ``u``: a search of the id-hash array in C, each hit verified."""
        pattern = re.compile(re.escape(uuid_hash(u).to_bytes(8, "little")))
        with memoryview(self._idh) as ids, ids.cast("B") as raw:
            hits = [m.start() for m in pattern.finditer(raw, 0, self._n * 8) if m.start() % 8 == 0]
        sid = str(u)
        for pos in hits:
            i = pos // 8
            lsn = i + self._base
            if self._status[i] != CODE_NONE and self._read_record(lsn)["entry_id"] == sid:
                return lsn
        raise WALEntryNotFoundError(sid)
