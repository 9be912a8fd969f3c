"""The manifest: the first LSN the log still owes, so a missing front is never a shorter log.

LSNs are checked for continuity between segments, but a deleted, emptied or zero-filled
*first* segment leaves no gap to see: the log would just start later. ``MANIFEST`` holds one
record, written when the log is created and whenever compaction removes front segments::

    <xxh3-64> {"t":"manifest","version":1,"first":F}

``F`` is the first LSN of the oldest segment that must exist. Recovery refuses to open
(``WALMissingSegmentError``) when no segment starts at ``F``, or when that segment has no
valid header. Segments wholly before ``F`` are what an interrupted compaction had still to
remove (the manifest is moved before they are unlinked): recovery removes them.

Each write is crash-safe: ``MANIFEST.tmp``, fsync, rename over ``MANIFEST``, fsync the
directory. A log written before the manifest existed gets one on its first writable open.
The manifest is not a defence against deleting the manifest itself *and* the first segment:
keep backups of the log directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from wal.errors import WALCorruptionError, WALFormatVersionError
from wal.log.fileops import FileOps, write_file_atomic
from wal.log.record import FORMAT_VERSION, RecordError, decode_line, encode_line
from wal.log.segment import open_read

__all__ = ["MANIFEST_NAME", "MANIFEST_TMP", "KIND_MANIFEST", "read_manifest", "write_manifest"]

MANIFEST_NAME = "MANIFEST"
MANIFEST_TMP = "MANIFEST.tmp"
KIND_MANIFEST = "manifest"


def read_manifest(directory: Path) -> int | None:
    """The first LSN the log owes, or None when there is no manifest (a log from before it).

    Raises ``WALCorruptionError`` for a manifest that does not verify, ``WALUnsafeFileError``
    for one that is a symlink or not a regular file.
    """
    path = directory / MANIFEST_NAME
    try:
        fd = open_read(path)
    except FileNotFoundError:
        return None
    try:
        data = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    try:
        if not data.endswith(b"\n") or data.count(b"\n") != 1:
            raise RecordError("not one complete record")
        rec = decode_line(data[:-1])
    except RecordError as exc:
        raise WALCorruptionError(path, 1, 0, f"unreadable manifest: {exc.problem}") from None
    if rec.get("t") != KIND_MANIFEST:
        raise WALCorruptionError(path, 1, 0, "the manifest holds no manifest record")
    if rec.get("version") != FORMAT_VERSION:
        raise WALFormatVersionError(path, 1, 0, rec.get("version"))
    first = rec.get("first")
    if type(first) is not int or first < 1:
        raise WALCorruptionError(path, 1, 0, f"the manifest has a bad first LSN {first!r}")
    return first


def write_manifest(fs: FileOps, directory: Path, first: int) -> None:
    """Durably make ``first`` the first LSN the log owes (``write_file_atomic``: MANIFEST.tmp,
    fsync, rename, fsync dir). A failure before the rename leaves the old manifest and no
    ``MANIFEST.tmp``, and raises ``OSError`` naming ``MANIFEST.tmp``."""
    payload = orjson.dumps({"t": KIND_MANIFEST, "version": FORMAT_VERSION, "first": first})
    write_file_atomic(fs, directory, MANIFEST_NAME, encode_line(payload))
