"""Shared helpers for the log's tests: entries, counting file ops, and an independent checker.

``check_files`` reads a log directory with nothing but ``wal.log.record.decode_line`` and the
format description in ``wal/__init__.py``, so it does not share the storage's recovery code:
it is the second opinion the crash tests ask after every recovery.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from wal import WALEntry
from wal.log.fileops import OSFileOps
from wal.log.record import RecordError, decode_line
from wal.log.segment import list_segments

__all__ = [
    "CountingFileOps",
    "FileReport",
    "check_files",
    "flip_bit",
    "lines_of",
    "make_entry",
    "mode_of",
    "segment_records",
]


def make_entry(n: int = 0, *, key: str | None = None, blob: int = 0, **kwargs: Any) -> WALEntry:
    """A small ``log_trade`` entry whose content is derived from ``n`` (and ``blob`` bytes)."""
    kw: dict[str, Any] = {
        "n": n,
        "symbol": "BTCUSDT",
        "qty": Decimal(f"{n}.50"),
        **kwargs,
    }
    if blob:
        kw["blob"] = "x" * blob
    return WALEntry.create("log_trade", kwargs=kw, idempotency_key=key)


def data_end(data: bytes) -> int:
    """Where the zero rest of a (preallocated) segment's bytes starts: after the last
    non-zero byte (``len(data)`` when the file does not end in zeros)."""
    return len(data.rstrip(b"\x00"))


def write_at_end(path: Path, data: bytes) -> int:
    """Plant ``data`` at the logical end of a segment: right after its last record, into the
    zero rest of a preallocated segment (what a write into preallocated space does; the zeros
    after it stay), or appended to a segment that grows. Returns the offset written at."""
    raw = path.read_bytes()
    end = data_end(raw)
    new = raw[:end] + data
    path.write_bytes(new + raw[len(new) :])
    return end


def as_preallocated(path: Path, size: int = 1 << 16) -> None:
    """Lay a (last) segment file out as a preallocated one: its bytes, then zeros up to
    ``size`` (byte for byte what a segment prepared with ``preallocate="zero"`` holds)."""
    with open(path, "ab") as f:
        f.write(bytes(max(0, size - path.stat().st_size)))


def cut_at(path: Path, offset: int) -> None:
    """Lose a segment's bytes from ``offset`` to its logical end: in a preallocated segment
    they read back as zeros (the file keeps its size, as after a lost write into its space);
    a segment that grows is truncated."""
    raw = path.read_bytes()
    if data_end(raw) < len(raw):
        path.write_bytes(raw[:offset] + bytes(len(raw) - offset))
    else:
        os.truncate(path, offset)


def lines_of(path: Path) -> list[tuple[int, bytes]]:
    """``(offset, line including its newline)`` of every line of a file (the last may be cut),
    up to its data end: the zero rest of a preallocated segment is not a line."""
    data = path.read_bytes()
    data = data[: data_end(data)]
    out = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl == -1 else nl + 1
        out.append((pos, data[pos:end]))
        pos = end
    return out


def segment_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a segment; ``RecordError`` if any line is bad."""
    return [decode_line(line.rstrip(b"\n")) for _, line in lines_of(path)]


def flip_bit(path: Path, offset: int, bit: int) -> None:
    """Flip one bit of a file in place."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@dataclass
class FileReport:
    """What ``check_files`` found: the entries and status records, by LSN."""

    entries: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[int, dict[str, Any]] = field(default_factory=dict)
    segments: int = 0
    last_lsn: int = 0


def check_files(directory: Path) -> FileReport:
    """Assert the on-disk log is well formed; return its records.

    Every line of every segment verifies and ends with a newline (no partial record is left
    after recovery; only the last segment may end in zeros, its preallocated rest), every
    segment starts with a header that matches its name, LSNs increase inside a segment, and
    segments are contiguous (a segment starts right after the range of the one before it).
    Entry ids are unique (no entry was written twice).
    """
    rep = FileReport()
    prev_end: int | None = None
    seen_ids: dict[str, int] = {}
    segments = list_segments(directory)
    for i, (first, path) in enumerate(segments):
        data = path.read_bytes()
        if i == len(segments) - 1:
            # the last segment may end in zeros: its preallocated rest, after its last record
            data = data[: data_end(data)]
        assert data.endswith(b"\n"), f"{path.name}: does not end with a complete line"
        recs = []
        for off, line in lines_of(path):
            try:
                recs.append(decode_line(line.rstrip(b"\n")))
            except RecordError as exc:
                raise AssertionError(f"{path.name}: offset {off}: {exc.problem}") from None
        assert recs, f"{path.name}: empty"
        head = recs[0]
        assert head["t"] == "segment" and head["first"] == first, f"{path.name}: header {head}"
        if prev_end is not None:
            assert first == prev_end + 1, (
                f"{path.name}: starts at {first}, previous ended at {prev_end}"
            )
        lsn = first - 1
        for rec in recs[1:]:
            assert rec["t"] in ("entry", "status"), rec
            if head["last"] is None:
                assert rec["lsn"] == lsn + 1, f"{path.name}: LSN {rec['lsn']} after {lsn}"
            else:
                assert lsn < rec["lsn"] <= head["last"], f"{path.name}: LSN {rec['lsn']}"
            lsn = rec["lsn"]
            if rec["t"] == "entry":
                eid = rec["entry_id"]
                assert eid not in seen_ids, f"entry {eid} twice (LSNs {seen_ids[eid]}, {lsn})"
                seen_ids[eid] = lsn
                rep.entries[lsn] = rec
            else:
                rep.statuses[lsn] = rec
        prev_end = head["last"] if head["last"] is not None else lsn
        rep.segments += 1
        rep.last_lsn = prev_end
    return rep


class CountingFileOps(OSFileOps):
    """The real file system, counting the calls that cost a disk flush (not a mock: it
    delegates every call to ``OSFileOps``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, fd: int, data: bytes) -> int:
        n = super().write(fd, data)
        self.calls.append(("write", fd))
        return n

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self.calls.append(("fdatasync", fd))

    def fsync_dir(self, path: str) -> None:
        super().fsync_dir(path)
        self.calls.append(("fsync_dir", path))

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        self.calls.append(("rename", (src, dst)))

    def count(self, name: str) -> int:
        return sum(1 for c, _ in self.calls if c == name)

    def reset(self) -> None:
        self.calls.clear()


def mode_of(path: Path) -> int:
    """The permission bits of a file or directory."""
    return os.stat(path).st_mode & 0o777


STATUS_FIELDS = ("lsn", "status", "synced_at", "attempts", "last_error")


def content(e: WALEntry) -> dict[str, Any]:
    """An entry's dict without the fields a status record may change."""
    d = e.to_dict()
    for k in STATUS_FIELDS:
        del d[k]
    return d


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition with a deadline (no sleep-as-synchronization)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)
