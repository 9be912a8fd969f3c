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

import errno
import os
from pathlib import Path

import orjson

from wal.errors import WALCorruptionError, WALFormatVersionError
from wal.log.fileops import FileOps, write_all
from wal.log.record import FORMAT_VERSION, RecordError, decode_line, encode_line
from wal.log.segment import FILE_MODE, open_read

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
    """Durably make ``first`` the first LSN the log owes (temp, fsync, rename, fsync dir)."""
    tmp = directory / MANIFEST_TMP
    payload = orjson.dumps({"t": KIND_MANIFEST, "version": FORMAT_VERSION, "first": first})
    try:
        fs.unlink(str(tmp))  # a leftover of an interrupted write (never followed: unlink)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EISDIR and exc.errno != errno.EPERM:
            raise
        raise WALCorruptionError(tmp, 0, 0, "is not a regular file") from None
    fd = fs.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        write_all(fs, fd, encode_line(payload))
        fs.fdatasync(fd)  # never rename an unsynced file over the manifest
    finally:
        fs.close(fd)
    fs.rename(str(tmp), str(directory / MANIFEST_NAME))  # atomic: old or new manifest
    fs.fsync_dir(str(directory))  # the rename is durable only after the directory fsync
