"""Every error the library raises, in one hierarchy.

::

    WALError                       base of everything below; catch this to catch them all
    ├── WALConfigError             an option or WAL_* variable has a bad value   (also ValueError)
    ├── WALSerializationError      a value cannot be logged; names its path      (also ValueError)
    ├── WALLockedError             another writer holds the log; names its pid
    ├── WALClosedError             the storage was used after close()
    ├── WALEntryNotFoundError      no entry with that id in the log              (also KeyError)
    ├── WALCorruptionError         a defect on disk; names file, line, offset
    ├── WALWriteError              write or fsync failed: the log refuses appends until reopened
    └── WALDatabaseError           the database refused or could not be reached during a sync

Every error carries a one-line ``hint``: what the operator can do about it. ``str(error)``
says what happened and where, then the hint.

A ``WALWriteError`` means the durability of the log itself is gone (disk full, EIO). It is
never retried inside the library: a failed ``fsync`` leaves the kernel's page cache in an
unknown state ("fsyncgate"), so the only safe continuation is to close, fix the disk and
reopen, which recovers every acknowledged entry. Trading must halt until then.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "WALClosedError",
    "WALConfigError",
    "WALCorruptionError",
    "WALDatabaseError",
    "WALEntryNotFoundError",
    "WALError",
    "WALLockedError",
    "WALSerializationError",
    "WALWriteError",
]


class WALError(Exception):
    """Base class of every error raised by this library."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        if hint is not None:
            self.hint = hint
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


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

    def __init__(self, message: str, *, path: Path | None = None, errno: int | None = None) -> None:
        self.path = path
        self.errno = errno
        super().__init__(message)


class WALDatabaseError(WALError):
    """The database refused an entry or could not be reached while applying it.

    ``transient`` is True when the cause was the database's availability (connection refused
    or reset, shutdown, timeout, serialization failure) rather than the entry's data.
    """

    hint = "see `atb wal status`; transient errors are retried, permanent ones become FAILED"

    def __init__(self, message: str, *, transient: bool, hint: str | None = None) -> None:
        self.transient = transient
        super().__init__(message, hint=hint)
