"""The operator's kill switch: ``<WAL_DIR>/HALT``, seen by the running engine before a submit.

``atb orders halt --reason TEXT`` writes the file; ``atb orders resume`` removes it. The CLI
cannot write the log while the engine holds its one-writer lock, so the switch is a file
beside the log that any process can write and the engine reads before every new order
(``operator_halt``, asked by ``OrderManager.submit``): a file survives restarts, needs no
lock, and a halted engine that is restarted stays halted. Cancels and protective orders
(emergency stops, reduce-only closes) are still allowed while halted.

The file is JSON ``{"reason", "at", "by"}``, mode 0600, written atomically (temp file,
fsync, rename, directory fsync). A file that cannot be read still halts: a broken switch
must fail safe. So does anything at ``HALT`` that is not a regular file (a FIFO, a device, a
directory, a symlink): it is never opened in a way that could block (``read_regular``), so
the check before every submit answers at once, "halted", with a reason saying what is
wrong with the file.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from wal.errors import WALUnsafeFileError
from wal.log.fileops import read_regular

__all__ = [
    "HALT_FILE",
    "RESUME",
    "Halt",
    "clear_halt",
    "operator_halt",
    "read_halt",
    "write_halt",
]

HALT_FILE = "HALT"
RESUME = "`atb orders resume` allows new orders again; cancels and protective stops still go out"
RESUME_FIX = "`atb orders resume` removes it"


@dataclass(frozen=True)
class Halt:
    """Why and since when trading is halted, and who halted it."""

    reason: str
    at: str  # ISO 8601 UTC
    by: str  # user@host (pid)

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "at": self.at, "by": self.by}

    def describe(self) -> str:
        return f"halted by the operator ({self.by}, {self.at}): {self.reason}"

    def public(self) -> str:
        """``describe`` without who threw it (user, host, pid): for traders and ``/readyz``."""
        return f"halted by the operator (since {self.at}): {self.reason}"


_HALT_MAX_BYTES = 64 * 1024  # a halt file is a few hundred bytes; a reason, not a document


def read_halt(directory: Path | str) -> Halt | None:
    """The halt in force for the log in ``directory``, or None while trading is allowed.

    Never blocks: a FIFO, a device, a directory or a symlink at ``HALT`` is not opened for
    reading in a way that waits, and halts (fail safe), its reason saying what it is."""
    path = Path(directory) / HALT_FILE
    try:
        raw = read_regular(path, _HALT_MAX_BYTES)
    except FileNotFoundError:
        return None
    except WALUnsafeFileError as exc:  # fail safe: a switch that is not a file still halts
        reason = f"{path} is {exc.what}, not a halt file: halted until it is removed"
        return Halt(f"{reason} ({RESUME_FIX})", "?", "?")
    except OSError as exc:  # fail safe: a switch that cannot be read still halts
        return Halt(f"{path} cannot be read ({exc.strerror})", "?", "?")
    except ValueError as exc:  # larger than any halt file: still a halt
        return Halt(f"{exc}: not a valid halt file ({RESUME_FIX})", "?", "?")
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return Halt(str(data.get("reason") or ""), str(data.get("at", "?")), str(data["by"]))
    except (ValueError, KeyError) as exc:
        return Halt(f"{path} is not a valid halt file ({exc})", "?", "?")


def write_halt(directory: Path | str, reason: str) -> Halt:
    """Halt trading for the log in ``directory``, durably."""
    d = Path(directory)
    user = _user()
    by = f"{user}@{socket.gethostname()} (pid {os.getpid()})"
    halt = Halt(reason, datetime.now(UTC).isoformat(), by)
    tmp = d / (HALT_FILE + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover, or anything planted there (a FIFO would block open())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o600)
    try:
        os.write(fd, orjson.dumps(halt.to_dict(), option=orjson.OPT_INDENT_2))
        os.fsync(fd)  # the switch must survive a power loss once the command said "halted"
    finally:
        os.close(fd)
    os.replace(tmp, d / HALT_FILE)
    _fsync_dir(d)  # the rename itself must survive a power loss
    return halt


def clear_halt(directory: Path | str) -> Halt | None:
    """Allow trading again; the halt that was in force, or None if there was none."""
    d = Path(directory)
    halt = read_halt(d)
    try:
        os.unlink(d / HALT_FILE)
    except FileNotFoundError:
        return None
    _fsync_dir(d)  # the removal must survive a power loss, or trading stays halted by surprise
    return halt


def operator_halt(ddb: Any) -> Halt | None:
    """The halt in force for a ``DurableDatabaseManager``'s log (None: trading, or no log).
    Read at every call: a switch thrown by another process is seen at the next submit."""
    storage = getattr(ddb, "storage", None)
    return None if storage is None else read_halt(storage.directory)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
