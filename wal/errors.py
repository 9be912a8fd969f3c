"""Every error the library raises, in one hierarchy.

::

    WALError                       base of everything below; catch this to catch them all
    ├── WALConfigError             an option or WAL_* variable has a bad value   (also ValueError)
    ├── WALSerializationError      a value cannot be logged; names its path      (also ValueError)
    │   ├── WALEntryTooLargeError  an entry over ``max_entry_bytes``; nothing written
    │   └── WALArgumentError       a critical call's argument its column refuses (also TypeError)
    │       └── WALIdempotencyConflictError  a used key with another operation or arguments
    ├── WALLockedError             another writer holds the log; names its pid
    ├── WALClosedError             the storage was used after close()
    ├── WALEntryNotFoundError      no entry with that id in the log              (also KeyError)
    ├── WALCorruptionError         a defect on disk; names file, line, offset
    │   ├── WALFormatVersionError  a segment of an unknown format version (a newer writer)
    │   └── WALMissingSegmentError the first segment(s) the manifest owes are missing or empty
    ├── WALUnsafeFileError         a file in the log directory is a symlink or not a regular file
    ├── WALLogChangedError         a read-only reader's files were replaced under it: reopen
    ├── WALCompactionError         compaction failed; the log is intact and appends go on
    ├── WALWriteError              write or fsync failed: the log refuses appends until reopened
    │   ├── WALLockLostError       the LOCK file is no longer the one this writer locked
    │   └── WALForkedError         the storage was used in a process forked from its opener
    ├── WALDatabaseError           the database refused or could not be reached during a sync
    │   └── WALSchemaError         the database's schema is not the code's: `atb db upgrade`
    └── OrderError                 the order layer's errors, drawn in ``wal.orders.errors``

Every error carries a one-line ``hint``: what the operator can do about it. ``str(error)``
says what happened and where, then the hint, with control characters escaped
(:func:`printable`): a file name or an operation name from the log never reaches a terminal raw.

A ``WALWriteError`` means the durability of the log itself is gone (disk full, EIO). It is
never retried inside the library: a failed ``fsync`` leaves the kernel's page cache in an
unknown state ("fsyncgate"), so the only safe continuation is to close, fix the disk and
reopen, which recovers every acknowledged entry. Trading must halt until then.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "WALClosedError",
    "WALCompactionError",
    "WALConfigError",
    "WALCorruptionError",
    "WALDatabaseError",
    "WALArgumentError",
    "WALIdempotencyConflictError",
    "WALSchemaError",
    "WALEntryNotFoundError",
    "WALEntryTooLargeError",
    "WALError",
    "WALForkedError",
    "WALFormatVersionError",
    "WALLockLostError",
    "WALLockedError",
    "WALLogChangedError",
    "WALMissingSegmentError",
    "WALSerializationError",
    "WALUnsafeFileError",
    "WALWriteError",
    "printable",
]

# C0 and C1 control characters, DEL, and the Unicode format characters that reorder or hide
# text on a terminal (bidi overrides and isolates, zero-width marks, the BOM, line separators),
# and lone surrogates (no output can encode them: a name that is not valid UTF-8 holds them)
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    if 0xDC80 <= c <= 0xDCFF:  # os.fsdecode's escape of the byte c - 0xDC00: that byte
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: object) -> str:
    r"""``str(text)`` with control and invisible formatting characters escaped (``\x1b``).

    Log contents (operation names, errors, ids) and file names are chosen by whoever wrote
    them; a terminal must never interpret them (escape sequences, fake lines, bidi tricks).

    >>> printable("log_trade\x1b[2J\nFAKE")
    'log_trade\\x1b[2J\\x0aFAKE'
    >>> printable("data-\udcff")  # os.fsdecode(b"data-\xff"): a name not valid UTF-8
    'data-\\xff'
    """
    s = str(text)
    return _UNPRINTABLE.sub(_escape, s) if _UNPRINTABLE.search(s) else s


class WALError(Exception):
    """Base class of every error raised by this library."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        if hint is not None:
            self.hint = hint
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        text = f"{self.message} ({self.hint})" if self.hint else self.message
        return printable(text)


class WALConfigError(WALError, ValueError):
    """An option or environment variable has a value that is not accepted.

    Raised by ``WALConfig.from_env`` and the options dataclasses before anything is opened.
    """

    hint = "fix the value and start again; nothing was opened or written"

    def __init__(self, name: str, value: object, accepted: str) -> None:
        self.name = name
        self.value = value
        self.accepted = accepted
        super().__init__(f"{name}={value!r} is not valid: expected {accepted}")


class WALSerializationError(WALError, ValueError):
    """A value handed to the log cannot be stored and read back with its type.

    Raised for NaN and Infinity, non-string dict keys and types the codec does not know.
    ``path`` names where the bad value sits, e.g. ``kwargs['price']`` or ``args[2][0]``.
    Nothing was written.
    """

    hint = "pass JSON values, Decimal, datetime, date, UUID or Enum; nothing was written"

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"cannot log {path}: {problem}")


class WALLockedError(WALError):
    """Another writer (another process, or another ``WALStorage`` in this one) holds the log.

    ``pid`` is the owner's process id as it wrote it into the lock file (None if unreadable).
    """

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.directory = directory
        self.pid = pid
        owner = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"the log in {directory} is locked by {owner}",
            hint="stop that process first, or use a read-only command (status, verify, inspect)",
        )


class WALClosedError(WALError):
    """The storage was used after ``close()``."""

    hint = "open the log again"


class WALEntryNotFoundError(WALError, KeyError):
    """No entry with the given id is in the log (it may have been compacted away)."""

    hint = "check the id with `atb wal inspect`"

    def __init__(self, entry_id: object) -> None:
        self.entry_id = entry_id
        super().__init__(f"no entry {entry_id} in the log")

    def __str__(self) -> str:  # KeyError would quote the message
        return WALError.__str__(self)


class WALCorruptionError(WALError):
    """A defect on disk that recovery may not repair on its own.

    ``path``, ``line`` (1-based) and ``offset`` (byte offset of the bad record's first byte)
    locate it. Raised on open for a defect anywhere but the torn tail of the last segment
    (and for any defect in ``strict`` mode), and for a missing or reordered segment.
    """

    hint = (
        "run `atb wal verify` to list every defect; `atb wal repair` salvages the good records "
        "and keeps a backup"
    )

    def __init__(self, path: Path, line: int, offset: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.offset = offset
        self.problem = problem
        super().__init__(f"{path}: line {line}, byte offset {offset}: {problem}")


class WALWriteError(WALError):
    """Writing or fsyncing the log failed (ENOSPC, EIO, a short write).

    The entry was not acknowledged. The storage refuses every later append until it is
    reopened, because an fsync is never retried on the same file descriptor.
    """

    hint = "free disk space or fix the device, then reopen the log; trading must halt until then"

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        errno: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.errno = errno
        super().__init__(message, hint=hint)


class WALDatabaseError(WALError):
    """The database refused an entry or could not be reached while applying it.

    ``transient`` is True when the cause was the database's availability (connection refused
    or reset, shutdown, timeout, serialization failure) rather than the entry's data.
    """

    hint = "see `atb wal status`; transient errors are retried, permanent ones become FAILED"

    def __init__(self, message: str, *, transient: bool, hint: str | None = None) -> None:
        self.transient = transient
        super().__init__(message, hint=hint)


class WALSchemaError(WALDatabaseError):
    """The database's schema revision is not the one this code was written for.

    Transient on purpose: entries stay PENDING in the log (never dead-lettered) until the
    operator migrates the database, then they are applied.
    """

    hint = "run `atb db upgrade` (see `atb db current`), then start again"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, transient=True, hint=hint)


class WALEntryTooLargeError(WALSerializationError):
    """An entry's record is larger than ``StorageOptions.max_entry_bytes``; nothing was written."""

    hint = "split the operation, or raise StorageOptions.max_entry_bytes; nothing was written"

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__("entry", f"its record is {size} bytes, over max_entry_bytes={limit}")


class WALArgumentError(WALSerializationError, TypeError):
    """An argument of a critical call that its database column would refuse (a wrong type,
    out of range, too long, not a finite decimal, an unknown or missing argument).

    Raised before the log is touched: nothing was written, so nothing is pending, nothing can
    become a dead letter, and a corrected retry is safe. ``operation`` and ``argument`` name
    the call and the argument. Also a ``TypeError`` and a ``ValueError``.
    """

    hint = "fix the argument and call again; nothing was written"

    def __init__(self, operation: str, argument: str, problem: str) -> None:
        self.operation = operation
        self.argument = argument
        WALError.__init__(self, f"{operation}({argument}=...) refused: {problem}")
        self.path = f"{operation}({argument}=...)"
        self.problem = problem


class WALIdempotencyConflictError(WALArgumentError):
    """An idempotency key already used for another operation, or with other arguments.

    A retry with the same key and the same call answers the first call (its id, its receipt);
    the same key for a different call is refused: it is never taken for the first one (which
    would acknowledge an operation that never happens) nor written. ``first`` describes the
    first call as the log or the database's key ledger holds it.
    """

    hint = "use a new idempotency key for a new operation; nothing was written"

    def __init__(self, operation: str, key: str, problem: str) -> None:
        super().__init__(operation, "idempotency_key", f"key {key!r} {problem}")
        self.key = key


class WALFormatVersionError(WALCorruptionError):
    """A segment declares a format version this library does not know (a newer writer's log)."""

    hint = "open this log with the atb-wal version that wrote it; nothing was changed"

    def __init__(self, path: Path, line: int, offset: int, version: object) -> None:
        self.version = version
        super().__init__(path, line, offset, f"unknown log format version {version!r}")


class WALMissingSegmentError(WALCorruptionError):
    """The log's manifest owes records from an LSN that no segment holds any more.

    The first segment was deleted, emptied or zero-filled: reading on would be a shorter log.
    """

    hint = (
        "restore the missing segment from a backup; or accept the loss with `atb wal repair`, "
        "which backs the directory up and moves the manifest to the first segment present"
    )


class WALUnsafeFileError(WALError):
    """A file of the log is a symlink, a directory or another non-regular file.

    The log opens its files with ``O_NOFOLLOW`` and never reads, truncates or copies anything
    that is not its own regular file.
    """

    hint = "move that entry out of the log directory (it must hold only the log's own files)"

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # "a symlink", "a directory", "a FIFO (named pipe)", "a device", ...
        super().__init__(f"{path} is {what}, not a regular file of the log")


class WALLogChangedError(WALError):
    """A read-only reader found that a writer replaced or removed the segment it was reading
    (compaction), and re-indexing did not settle. Retryable: open the log again."""

    hint = "open the log again (a writer compacted it meanwhile); nothing is wrong with it"

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        super().__init__(f"{path}: {what}")


class WALCompactionError(WALError):
    """Compaction failed (disk full while writing its temporary file, for instance).

    Compaction is optional work: the segments and the index are as before it started, its
    temporary file was removed, and appends go on.
    """

    hint = "free disk space and compact again later; the log itself is intact and writable"

    def __init__(self, message: str, *, path: Path | None = None, errno: int | None = None) -> None:
        self.path = path
        self.errno = errno
        super().__init__(message)


class WALLockLostError(WALWriteError):
    """The ``LOCK`` file is not the one this writer locked (deleted or replaced by someone).

    Another process may be writing to the log now. The storage refuses every later append.
    """

    hint = (
        "stop every process using this log, check with `atb wal verify`, then reopen; "
        "never delete LOCK while a writer runs"
    )


class WALForkedError(WALWriteError):
    """The storage was used in a child process forked after it was opened.

    The writer lock and the file descriptors belong to the parent; a child's ``close()``
    releases nothing.
    """

    hint = "open the log in the process that uses it (after the fork), never share it across one"
