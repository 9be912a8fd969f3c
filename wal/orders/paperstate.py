"""The paper broker's durable state: a snapshot, and the changes made since, one line each.

Two files, both mode 0600, written only by the one ``PaperBroker`` that owns them:

``<state>`` (say ``paper.json``): a snapshot, one JSON object, written whole and atomically
    (a temporary file, fdatasynced, renamed over it, the directory fsynced):
    ``{"version": 1, "seed", "next_order", "rules", "orders": [{"order", "plan"}], "fills",
    "positions", "prices", "changes_through": V}``. ``V`` is the broker's change counter
    when the snapshot was taken (absent in files written before the changes file: 0).
``<state>.changes``: appended records in the log's line framing (:mod:`wal.log.record`:
    an xxh3-64 checksum, a space, a JSON object, a newline), each fdatasynced before the
    change it holds is acknowledged:
    ``{"t": "paper-change", "from": U, "through": V, "next_order", "orders": [the orders
    that changed, whole], "fill_base": K, "fills": [the executions K, K+1, ...], "positions":
    {changed symbols}, "prices": {changed symbols}}``.

A change costs one appended line (its size is the change's, not the state's). The snapshot
is rewritten, and the changes file emptied after it, once the changes outgrow the snapshot
(at least ``MIN_CHANGES_BYTES``): the whole state is written O(1) times per change on
average. Before, every change rewrote the whole state, O(orders): a long-running service's
submits got slower with every order it had placed.

Reading (:meth:`PaperStateFile.read`) folds the changes into the snapshot, in order: a line
whose ``through`` the snapshot already holds is skipped (a crash after the snapshot's rename,
before the changes file was emptied); the next one must start where the state is (``from``;
its ``fill_base``, the executions before it). The last line may be torn (a crash in its
write, never acknowledged): it is ignored. A bad line before a good one is damage: one
``ValueError`` that names the file, the line and the offset.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Final

import orjson

from wal.errors import WALUnsafeFileError
from wal.log.fileops import FileOps, OSFileOps, read_regular, write_all, write_file_atomic
from wal.log.record import RecordError, decode_line, encode_line

__all__ = ["CHANGE_KIND", "MIN_CHANGES_BYTES", "PaperStateFile", "changes_path_of"]

CHANGE_KIND: Final = "paper-change"
MIN_CHANGES_BYTES: Final = 256 * 1024
"""The changes file is folded into a new snapshot once it is at least this large and larger
than the snapshot."""

_READ_TRIES = 5  # a reader racing the writer's snapshot reads again (the files changed)


def changes_path_of(path: Path) -> Path:
    return path.with_name(path.name + ".changes")


class PaperStateFile:
    """The two files of one paper broker's state (module docstring); one writer."""

    def __init__(
        self, path: Path, fs: FileOps | None = None, *, min_changes_bytes: int = MIN_CHANGES_BYTES
    ) -> None:
        self.path = path
        self.changes_path = changes_path_of(path)
        self.fs: FileOps = fs or OSFileOps()
        self.min_changes_bytes = min_changes_bytes
        self.snapshot_bytes = 0  # the snapshot's size; 0: none written or read yet
        self.changes_bytes = 0  # what the changes file holds
        self.must_snapshot = False  # a write failed: the next save writes the whole state
        self._fd: int | None = None  # the changes file, open for appends
        self.snapshots_written = 0
        self.changes_written = 0

    # ------------------------------------------------------------------ reading

    def read(self) -> tuple[dict[str, Any] | None, int]:
        """The state (the snapshot with every change folded in) and its change counter; (None,
        0) when there is no state. Raises ``ValueError`` for a damaged file."""
        for _ in range(_READ_TRIES):
            before = _identity(self.path)
            snap = _read_or_none(self.path)
            changes = _read_or_none(self.changes_path) or b""
            if _identity(self.path) == before:
                break  # no snapshot was written meanwhile: the changes belong to it
        if snap is None:
            if changes.strip(b"\x00"):
                raise ValueError(
                    f"{self.changes_path}: changes without their snapshot {self.path.name}: "
                    "restore the snapshot, or remove both files to start the paper account over"
                )
            return None, 0
        try:
            state = orjson.loads(snap)
        except orjson.JSONDecodeError as exc:
            raise ValueError(
                f"{self.path}: not a paper broker state (not JSON: {exc}); restore it, or "
                "remove it and its .changes file to start the paper account over"
            ) from None
        if not isinstance(state, dict):
            raise ValueError(f"{self.path}: not a paper broker state (a JSON object)")
        self.snapshot_bytes = len(snap)
        self.changes_bytes = len(changes)
        try:
            return state, self._fold(state, changes)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{self.path}: not a paper broker state ({type(exc).__name__}: {exc}); restore "
                "it, or remove it and its .changes file to start the paper account over"
            ) from None

    def _fold(self, state: dict[str, Any], changes: bytes) -> int:
        """Apply the changes the snapshot does not hold, in order; the state's counter."""
        through = state.get("changes_through", 0)
        if type(through) is not int or through < 0:
            raise ValueError(f"{self.path}: changes_through is {through!r}, not an int >= 0")
        lines = changes.split(b"\n")
        lines.pop()  # after the last newline: b"", or a torn last line (never acknowledged)
        where = {item["order"]["id"]: i for i, item in enumerate(state["orders"])}
        offset = 0
        for number, line in enumerate(lines, 1):
            at = offset
            offset += len(line) + 1
            try:
                rec = decode_line(line)
                if rec["t"] != CHANGE_KIND or not _is_change(rec):
                    raise RecordError(f"not a {CHANGE_KIND} record")
            except RecordError as exc:
                if number == len(lines):
                    break  # the last line, torn by a crash in its write: never acknowledged
                raise ValueError(
                    f"{self.changes_path}: line {number} (offset {at}): {exc}; the paper "
                    "broker's state cannot be read: restore it, or remove both files to start "
                    "the paper account over"
                ) from None
            if rec["through"] <= through:
                continue  # the snapshot holds it (a crash before the changes were emptied)
            if rec["from"] != through or rec["fill_base"] != len(state["fills"]):
                raise ValueError(
                    f"{self.changes_path}: line {number} (offset {at}) continues change "
                    f"{rec['from']} with {rec['fill_base']} executions, the state is at change "
                    f"{through} with {len(state['fills'])}: a change is missing"
                )
            for item in rec["orders"]:
                bo = item["order"]["id"]  # the broker order id (Alpaca's shape)
                if bo in where:
                    state["orders"][where[bo]] = item
                else:
                    where[bo] = len(state["orders"])
                    state["orders"].append(item)
            state["fills"].extend(rec["fills"])
            state["positions"].update(rec["positions"])
            state["prices"].update(rec["prices"])
            state["next_order"] = rec["next_order"]
            through = rec["through"]
        return int(through)

    # ------------------------------------------------------------------ writing

    def wants_snapshot(self) -> bool:
        """The next save writes the whole state: none yet, a failed write, or changes that
        outgrew the snapshot."""
        return (
            self.must_snapshot
            or self.snapshot_bytes == 0
            or self.changes_bytes >= max(self.min_changes_bytes, self.snapshot_bytes)
        )

    def write_snapshot(self, data: bytes) -> None:
        """Make ``data`` (the whole state) the snapshot, then empty the changes file."""
        try:
            # temp (O_EXCL, O_NOFOLLOW: never through a planted symlink), fsync, rename, dir fsync
            write_file_atomic(self.fs, self.path.parent, self.path.name, data)
            self.snapshot_bytes = len(data)
            self.snapshots_written += 1
            if self.changes_bytes or self.changes_path.exists():
                # after the rename (a crash between the two leaves changes the snapshot
                # holds: skipped when read); fsynced: emptied before anything is appended
                self.fs.truncate(str(self.changes_path), 0)
                self.changes_bytes = 0
        except BaseException:
            self.must_snapshot = True  # what is on disk is unknown: the next save is whole
            raise
        self.must_snapshot = False

    def append_change(self, change: dict[str, Any]) -> None:
        """Append one change (``from``/``through``/... as the module docstring says), durably."""
        line = encode_line(orjson.dumps({"t": CHANGE_KIND, **change}))
        try:
            fd = self._changes_fd()
            write_all(self.fs, fd, line)
            self.fs.fdatasync(fd)  # durable before the change is acknowledged
        except BaseException:
            self.must_snapshot = True  # a torn or lost line: the next save is whole
            raise
        self.changes_bytes += len(line)
        self.changes_written += 1

    def _changes_fd(self) -> int:
        if self._fd is None:
            created = not self.changes_path.exists()
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            self._fd = self.fs.open(str(self.changes_path), flags, 0o600)  # O_NOFOLLOW
            if created:
                self.fs.fsync_dir(str(self.path.parent))  # the new file's name is durable
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self.fs.close(fd)


_CHANGE_FIELDS: Final = {
    "from": int,
    "through": int,
    "next_order": int,
    "orders": list,
    "fill_base": int,
    "fills": list,
    "positions": dict,
    "prices": dict,
}


def _is_change(rec: dict[str, Any]) -> bool:
    """Every field of a change, of its type (the orders' contents are checked on load)."""
    return all(type(rec.get(k)) is t for k, t in _CHANGE_FIELDS.items()) and all(
        isinstance(item, dict) and isinstance(item.get("order"), dict) for item in rec["orders"]
    )


def _read_or_none(path: Path) -> bytes | None:
    """The file's bytes; None when missing. Anything but a regular file (a directory, a
    FIFO, a device, a symlink) is a ``ValueError`` naming it, never a read that blocks."""
    try:
        return read_regular(path, limit=None)
    except FileNotFoundError:
        return None
    except WALUnsafeFileError as exc:
        raise ValueError(f"{exc}: not a paper broker state file") from None


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return None
        raise
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
