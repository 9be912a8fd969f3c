"""Recovery's fast path: verify and index a chunk of records without building a dict per record.

The slow path (:func:`wal.log.segment.scan`, then ``WALStorage._index_record``) parses every payload
with ``orjson``, which is most of what opening a log costs. Records as our writers lay them out
(``WALStorage.append_many``, ``update_statuses`` and compaction: fixed field order, no
whitespace) are matched instead by one compiled regex per chunk that both checks that the
payload is valid JSON and extracts what the index needs (LSN, id, explicit key, status, ``of``).
Every record's xxh3 checksum is still verified over its exact payload bytes.

The regex accepts only a subset of what the slow path accepts, and indexes it identically:

* strings without escapes, control characters or non-ASCII bytes (then a JSON string is its
  bytes between two quotes, and an explicit idempotency key hashes as it does when written);
* numbers that ``orjson`` parses without error (at most 19 integer digits and 30 fraction
  digits, an exponent from -999 to 289), ``args``/``kwargs`` nested at most ``_DEPTH`` deep;
* ``args`` a list and ``kwargs`` an object (what ``WALEntry.from_dict`` requires);
* the top-level fields exactly in the writer's order (so no duplicate key changes a value)
  and of the types it writes, ``lsn`` a positive integer, ``entry_id`` (a status record's
  too) a lowercase canonical UUID, ``status`` a known one, ``attempts`` an int >= 0 (never
  ``true``), timestamps non-empty strings, a status record's ``of`` an earlier LSN
  (``_names_earlier``): the rules of the one validator, :mod:`wal.log.validate`, which the
  slow path and ``verify`` apply; a property test (tests/log/test_validate.py) feeds the
  same mutated records to all three.

Any other line, a checksum mismatch, an LSN out of order and every line before the segment's
header go to the slow path (the ``slow`` callback), one line at a time and in order, so every
defect is found, located and handled exactly as before.

A valid checksum does not make a record readable (someone may have recomputed it): the slow
path decodes every record in full (``record_problem``). The fast path checks the same in bulk,
per chunk (``_decodes``): every value tag (``{"$...``) must be one the codec reads back (one
``findall`` finds every tag, good or not), and every timestamp (``created_at``, ``synced_at``
and a status record's ``at``, captured by the line regex itself, and the ``$datetime`` and
``$date`` tags) must parse, all in C (``findall``, ``map``). When a chunk fails, its rows are
checked one by one and the failing ones go to the slow path, which reports them as defects.
"""

from __future__ import annotations

import re
import sys
from array import array
from binascii import unhexlify
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from functools import cache
from itertools import accumulate
from typing import Any

from xxhash import xxh3_64_digest, xxh3_64_intdigest

from wal.log.index import BLOOM_MASK, LogIndex

__all__ = ["Cursor", "index_chunk"]

_DEPTH = 5  # nesting of args/kwargs the regex follows; deeper records take the slow path
STATUS_CODE = {b"p": 1, b"s": 2, b"c": 3, b"f": 4}  # storage's status codes, by their first letter
_CODES = bytes(STATUS_CODE.get(bytes([b]), 0) for b in range(256))  # the same, for bytes.translate
_ADD18 = (18).__add__  # a line is checksum (16), space, payload, newline
_BIG_ENDIAN = sys.byteorder == "big"
# compiling the regex takes ~40 ms, the slow path ~10 us a record: a process compiles it
# once it has read this many bytes the slow way (a small log opens without it)
_SMALL = 1 << 18
_slow_bytes = 0


@cache
def _line() -> re.Pattern[bytes]:
    """The line regex (compiled on first use: it is large)."""
    # a JSON string that orjson reads as its own bytes: no escape, control or non-ASCII byte
    chars = rb"[\x20\x21\x23-\x5b\x5d-\x7f]"
    s = rb'"' + chars + rb'*+"'
    # a number orjson reads without error: within a double's range, and an int within 64 bits
    num = (
        rb"-?+(?:0|[1-9][0-9]{0,18}+)(?:\.[0-9]{1,30}+)?+"
        rb"(?:[eE](?:-[0-9]{1,3}+|\+?+(?:1[0-9]{2}+|2[0-8][0-9]|[0-9]{1,2}+)))?+"
    )
    scalar = rb"(?>" + s + rb"|" + num + rb"|true|false|null)"
    value = scalar
    for _ in range(_DEPTH):
        arr = rb"\[(?:" + value + rb"(?:,(?!\])|(?=\])))*+\]"
        obj = rb"\{(?:" + s + rb":" + value + rb"(?:,(?!\})|(?=\})))*+\}"
        value = rb"(?>" + obj + rb"|" + s + rb"|" + arr + rb"|" + num + rb"|true|false|null)"
    parts = {
        b"<S>": s,
        b"<N>": num,
        b"<S?>": rb"(?:null|" + s + rb")",
        b"<N?>": rb"(?:null|" + num + rb")",
        b"<V>": value,
        b"<C>": chars,
        b"<ST>": rb'"(?=([pscf]))(?:pending|syncing|completed|failed)"',
        # wal.log.validate: attempts an int >= 0 (never a bool or a float), ids UUIDs
        b"<I>": rb"(?:0|[1-9][0-9]{0,17}+)",
        # a timestamp, its text captured: never empty (_decodes parses every non-empty one)
        b"<T>": rb'"(' + chars + rb'++)"',
        b"<T?>": rb'(?:null|"(' + chars + rb'++)")',
        b"<I?>": rb"(?:null|0|[1-9][0-9]{0,17}+)",
        b"<U>": rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    }
    # groups: 1 checksum, 2 payload, 3 "e" for an entry, 4 lsn, 5 entry id, 6 explicit key,
    # 7 created_at, 8 synced_at, 9 entry status (first letter), 10 of, 11 status record's
    # status, 12 its "at"; any other line: 1 empty
    line = (
        rb'(?:([0-9a-f]{16}) (\{"t":"(?:(e)ntry|status)","lsn":([1-9][0-9]{0,17}+),(?(3)'
        rb'"entry_id":"(<U>)",'
        rb'"operation":<S>,"args":(?=\[)<V>,"kwargs":(?=\{)<V>,"idempotency_key":"(?:\5"|(<C>++)"),'
        rb'"checksum":<S>,"created_at":<T>,"synced_at":<T?>,"status":<ST>,"attempts":<I>,'
        rb'"last_error":<S?>'
        rb'|"of":([1-9][0-9]{0,17}+),"entry_id":"<U>","status":<ST>,"at":<T>,'
        rb'"attempts":<I?>,"error":<S?>'
        rb")\})|[^\n]*+)\n"
    )
    return re.compile(re.sub(rb"<[A-Z?]+>", lambda m: parts[m.group()], line))


# every value tag: one the codec reads back (wal.codec: Decimal digits, a canonical UUID, an
# int the int() of Python accepts (4300 digits), a $dict object; datetimes and dates are
# parsed below), or any other (group 3 holds "$": the line does not read back)
_TAG = re.compile(
    rb'\{"(?:\$(?:decimal":"-?+(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][-+]?+[0-9]++)?+"\}'
    rb'|datetime":"([^"\\]*+)"\}|date":"([^"\\]*+)"\}'
    rb'|uuid":"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"\}'
    rb'|int":"-?+[0-9]{1,4300}+"\}|dict":\{)|(\$))'
)
_TIME_COLS = (6, 7, 11)  # the line regex's timestamp groups: created_at, synced_at, at


def _parse_all(parse: Callable[[str], object], texts: Sequence[bytes]) -> None:
    """Parse every non-empty text (raises on the first bad one); runs in C via ``map``."""
    for _ in map(parse, map(bytes.decode, filter(None, texts))):
        pass


def _decodes(lines: bytes, times: Iterable[Sequence[bytes]]) -> bool:
    """True when every value tag in ``lines`` (whole lines) and every timestamp in ``times``
    (the line regex's timestamp columns for those lines) reads back."""
    try:
        tags = _TAG.findall(lines)
        if tags:
            dts, ds, bad = zip(*tags, strict=True)
            if any(bad):
                return False
            _parse_all(datetime.fromisoformat, dts)
            _parse_all(date.fromisoformat, ds)
        for col in times:
            _parse_all(datetime.fromisoformat, col)
    except ValueError:
        return False
    return True


class Cursor:
    """Where recovery is in one segment: shared by the slow path (wal.log.recovery) and this one."""

    __slots__ = ("compacted", "end", "expected", "header", "line_no")

    def __init__(self, first: int) -> None:
        self.header: dict[str, Any] | None = None
        self.expected = first  # the next LSN in order
        self.end = first - 1  # the last LSN indexed (a compacted segment: the header's last)
        self.compacted = False
        self.line_no = 0  # lines read so far


Slow = Callable[[bytes, int, int], int]


def index_chunk(store: LogIndex, cur: Cursor, data: bytes, end: int, base: int, slow: Slow) -> bool:
    """Index the lines of ``data[:end]`` (at file offset ``base``: whole lines, unless it is
    the end of the file). ``slow(data, base, pos)`` takes the line at ``pos`` the slow way and
    returns where the next line starts, or -1 to stop reading the segment. False: stopped."""
    global _slow_bytes
    if _slow_bytes + end < _SMALL and not _line.cache_info().currsize:
        _slow_bytes += end
        rows = []  # every line the slow way (below)
    else:
        # up to the last newline: every line there matches (a partial one would be searched
        # for a match from each of its bytes, quadratic in its length)
        rows = _line().findall(data, 0, data.rfind(b"\n", 0, end) + 1)
    cols: Sequence[tuple[bytes, ...]] = list(zip(*rows, strict=True)) if rows else []
    n = len(rows)
    pos = 0
    i = 0
    heads: Sequence[bytes] = cols[0] if cols else ()
    times = [cols[c] for c in _TIME_COLS] if cols else []
    if n and not _decodes(data[: data.rfind(b"\n", 0, end) + 1], times):
        # some record does not read back: find it, and let the slow path report it
        heads = [
            h if h and _decodes(p + b"\n", [(t[r],) for t in times]) else b""
            for r, (h, p) in enumerate(zip(heads, cols[1], strict=True))
        ]
    while i < n:
        if cur.header is None or not heads[i]:
            pos = slow(data, base, pos)
            if pos < 0:
                return False
            i += 1
            continue
        try:
            j = heads.index(b"", i)
        except ValueError:
            j = n
        k = _checked(cols, i, j)
        lsns = list(map(int, cols[3][i:k]))
        k = i + _in_order(cur, lsns)
        k = _names_earlier(cols, i, k, lsns)
        if k > i:
            pos = _index_run(store, cur, cols, i, k, lsns, base, pos)
        if k < j:
            pos = slow(data, base, pos)  # the slow path finds what is wrong with it
            if pos < 0:
                return False
            k += 1
        i = k
    while 0 <= pos < end:  # the end of the file without a newline, or a small chunk
        pos = slow(data, base, pos)
    return pos >= 0


def _checked(cols: Sequence[tuple[bytes, ...]], i: int, j: int) -> int:
    """Rows i..j-1 up to the first one whose checksum does not match (j if all match)."""
    want = unhexlify(b"".join(cols[0][i:j]))
    got = b"".join(map(xxh3_64_digest, cols[1][i:j]))
    if want == got:
        return j
    k = 0
    while want[k : k + 8] == got[k : k + 8]:
        k += 8
    return i + k // 8


def _in_order(cur: Cursor, lsns: list[int]) -> int:
    """How many of ``lsns`` the slow path would take in order (its check, for each in turn)."""
    e = cur.expected
    if not cur.compacted:
        if lsns == list(range(e, e + len(lsns))):
            return len(lsns)
        k = 0
        while lsns[k] == e + k:
            k += 1
        return k
    end = cur.end
    for k, lsn in enumerate(lsns):
        if not e <= lsn <= end:  # a compacted segment holds some of first..last, in order
            return k
        e = lsn + 1
    return len(lsns)


def _names_earlier(cols: Sequence[tuple[bytes, ...]], i: int, k: int, lsns: list[int]) -> int:
    """Rows i..k-1 up to the first status record whose ``of`` is not an earlier LSN (the
    validator's rule, :mod:`wal.log.validate`); the slow path reports that one."""
    kinds = cols[2]
    ofs = cols[9]
    b = i
    while True:
        try:
            b = kinds.index(b"", b, k)  # the next status record
        except ValueError:
            return k
        if int(ofs[b]) >= lsns[b - i]:
            return b
        b += 1


def _index_run(
    store: LogIndex,
    cur: Cursor,
    cols: Sequence[tuple[bytes, ...]],
    i: int,
    j: int,
    lsns: list[int],
    base: int,
    pos: int,
) -> int:
    """Index rows i..j-1 (verified, in order, LSNs ``lsns[:j - i]``) that start at
    ``data[pos]``; return where they end."""
    lens = list(map(_ADD18, map(len, cols[1][i:j])))
    offs = list(accumulate(lens, initial=base + pos))
    kinds = cols[2]
    rep = store.recovery_report
    a = i
    while a < j:
        try:
            b = kinds.index(b"", a, j)  # the next status record
        except ValueError:
            b = j
        if b > a:
            _put_entries(store, cols, a, b, lsns[a - i : b - i], offs[a - i :], lens[a - i :])
            rep.entries += b - a
        if b < j:
            r = b - i
            code = STATUS_CODE[cols[10][b]]
            store._index_status(lsns[r], offs[r], lens[r], int(cols[9][b]), code)
            b += 1
        a = b
    rep.records += j - i
    cur.line_no += j - i
    cur.expected = lsns[j - i - 1] + 1
    if not cur.compacted:
        cur.end = lsns[j - i - 1]
    return offs[-1] - base


def _put_entries(
    store: LogIndex,
    cols: Sequence[tuple[bytes, ...]],
    a: int,
    b: int,
    lsns: list[int],
    offs: list[int],
    lens: list[int],
) -> None:
    """Index entry rows a..b-1 exactly as ``_index_entry`` would, one slice per array."""
    m = b - a
    lsn0 = lsns[0]
    if lsns[-1] - lsn0 != m - 1:  # a compacted segment's gaps: index each contiguous piece
        s = 0
        for t in range(1, m + 1):
            if t == m or lsns[t] != lsns[t - 1] + 1:
                _put_entries(store, cols, a + s, a + t, lsns[s:t], offs[s:t], lens[s:t])
                s = t
        return
    st = store._status
    i0 = lsn0 - store._base
    i1 = i0 + m
    while i1 > len(st):  # grow the arrays the way m calls of _slot(lsn) in order would
        store._slot(store._base + max(len(st), i0))
    store._slot(lsns[-1])
    codes = b"".join(cols[8][a:b]).translate(_CODES)
    st[i0:i1] = codes
    store._offsets[i0:i1] = array("q", offs[:m])
    store._lengths[i0:i1] = array("I", lens[:m])
    ids = array("Q", unhexlify(b"".join(cols[4][a:b]).replace(b"-", b"")))[1::2]
    if _BIG_ENDIAN:
        ids.byteswap()  # id_hash reads an id's last 8 bytes little-endian
    store._idh[i0:i1] = ids
    seen = store._seen_ids
    mask = BLOOM_MASK
    for h in ids:  # WALStorage._bloom_add
        x = h & mask
        seen[x >> 3] |= 1 << (x & 7)
        x = (h >> 32) & mask
        seen[x >> 3] |= 1 << (x & 7)
    counts = store._counts
    for code in (1, 2, 3, 4):
        counts[code] += codes.count(code)
    keys = cols[5][a:b]
    if any(keys):
        for t, key in enumerate(keys):
            # an empty group: the key is the entry id (the regex matched it by backreference)
            if key and key != cols[4][a + t]:
                store._keys[xxh3_64_intdigest(key)] = lsns[t]
