"""The real file operations issue the real system calls, in an ordinary run.

Every durability test swaps in ``CrashFS`` (or ``CountingFileOps``), which count at their own
level: none of them notices an ``OSFileOps.fdatasync`` that does nothing. Here nothing is
swapped: the log, ``repair_log`` and the SQLite file setup run on the real ``OSFileOps``,
and the ``os`` functions they end in (``os.fdatasync``, ``os.fsync``, ``os.rename``,
``os.unlink``, ``os.ftruncate``) are wrapped to record which file each call was for (the
path behind the descriptor, from ``/proc/self/fd``) before doing the real call. Each step
of the log is then checked for its system calls, in order: an append's ``fdatasync`` of its
segment, a rotation's seal of the old segment and the new one's header and directory entry,
a compaction's temp-file ``fdatasync`` before its ``rename`` and the directory ``fsync`` after
it and after an ``unlink``, recovery's ``.broken`` file and the ``fsync`` after its
``ftruncate``. See docs/testing.md for the mutation each assertion kills.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_log import flip_bit, lines_of, make_entry, write_at_end

from wal import WALEntryStatus, WALStorage
from wal.db.engine import make_engine
from wal.log.repair import repair_log
from wal.log.segment import PREPARED_NAME, list_segments

Call = tuple[str, str]  # (system call, path)


class Trace:
    """The durability system calls this process makes under ``root``, in order."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.calls: list[Call] = []

    def add(self, name: str, path: str) -> None:
        if path.startswith(self.root):
            self.calls.append((name, path))

    def take(self) -> list[Call]:
        out, self.calls = self.calls, []
        return out


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


@pytest.fixture
def trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Trace]:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name the file behind a descriptor")
    t = Trace(tmp_path)

    def by_fd(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(fd: int, *args: Any) -> Any:
            t.add(name, _fd_path(fd))
            return real(fd, *args)

        return wrapper

    def by_path(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            t.add(name, os.fspath(path))
            return real(path, *args, **kwargs)

        return wrapper

    for name in ("fdatasync", "fsync", "ftruncate"):
        monkeypatch.setattr(os, name, by_fd(name, getattr(os, name)))
    for name in ("rename", "unlink"):
        monkeypatch.setattr(os, name, by_path(name, getattr(os, name)))
    yield t


def in_order(calls: list[Call], *expected: Call) -> None:
    """``expected`` occur in ``calls`` in this order (other calls may come between)."""
    i = 0
    for c in calls:
        if i < len(expected) and c == expected[i]:
            i += 1
    assert i == len(expected), f"missing {expected[i]} (in order) in {calls}"


def test_the_log_makes_the_real_system_calls(trace: Trace, tmp_path: Path) -> None:
    d = tmp_path / "logs" / "wal"
    d.parent.mkdir()
    seg = [str(d / f"{n:020d}.wal") for n in (1, 4, 8)]  # 3 entries; 1 entry, 3 marks; ...
    dir_ = ("fsync", str(d))

    # a new log: its directory's name is synced in the parent, the first segment's header
    # is synced, then its name in the directory (segments that grow: preallocate="off"; the
    # preallocated rotation is the next test)
    log = WALStorage(d, max_segment_bytes=4096, preallocate="off")
    try:
        in_order(trace.take(), ("fsync", str(d.parent)), ("fdatasync", seg[0]), dir_)

        # an append is acknowledged after the fdatasync of its segment
        e = [log.append(make_entry(0, blob=900))]
        in_order(trace.take(), ("fdatasync", seg[0]))
        e += [log.append(make_entry(i, blob=900)) for i in (1, 2)]
        trace.take()

        # a rotation: the old segment is sealed, the new one's header synced, then its name
        e.append(log.append(make_entry(3, blob=900)))
        assert [p for _, p in list_segments(d)] == [Path(seg[0]), Path(seg[1])]
        in_order(trace.take(), ("fdatasync", seg[0]), ("fdatasync", seg[1]), dir_)
        log.update_statuses([(x, WALEntryStatus.COMPLETED, None, None) for x in e[:3]])
        in_order(trace.take(), ("fdatasync", seg[1]))

        # compaction: the emptied front segment is unlinked, then the directory synced; the
        # next one is rewritten: temp file synced, renamed over it, directory synced
        out = log.compact()
        assert out["segments_removed"] == 1 and out["segments_rewritten"] == 2, out
        tmp = seg[1] + ".tmp"
        calls = trace.take()
        in_order(calls, ("fdatasync", seg[1]), ("fdatasync", seg[2]), dir_)  # the seal
        in_order(calls, ("unlink", seg[0]), dir_, ("fdatasync", tmp), ("rename", tmp), dir_)
    finally:
        log.close()

    # recovery of a torn tail: the torn bytes go to a synced .broken file whose name is
    # synced, then the segment is cut and the cut synced
    last = Path(seg[2])
    with last.open("ab") as f:
        f.write(b'{"t":"entry","lsn":7,"torn')
    size = last.stat().st_size
    with WALStorage(d) as log:
        assert log.recovery_report.truncated_bytes > 0
    broken = seg[2] + ".broken"
    in_order(
        trace.take(),
        ("fdatasync", broken),
        dir_,
        ("ftruncate", seg[2]),
        ("fsync", seg[2]),
    )
    assert last.stat().st_size < size


def test_a_preallocated_rotation_makes_the_real_system_calls(trace: Trace, tmp_path: Path) -> None:
    """The prepared segment: zeros fdatasynced under a temporary name; at the rotation the old
    segment is sealed and cut back to its last record, the header is synced, the file renamed
    into place, the directory synced. Then a torn tail in its zero rest is cut like any other."""
    d = tmp_path / "wal"
    prep = str(d / PREPARED_NAME)
    dir_ = ("fsync", str(d))
    with WALStorage(d, max_segment_bytes=4096, preallocate="zero") as log:
        # a new log's first segment is prepared too, inline: zeros and header synced under
        # the temporary name, then the rename and the directory sync
        calls = trace.take()
        assert calls.count(("fdatasync", prep)) == 2
        in_order(calls, ("fdatasync", prep), ("fdatasync", prep), ("rename", prep), dir_)
        for i in range(3):  # past half of the segment: the next one is prepared
            log.append(make_entry(i, blob=900))
        assert len(list_segments(d)) == 1
        log.append(make_entry(3, blob=900))  # it would not fit: rotates into the prepared one
        old, new = (str(p) for _, p in list_segments(d))
        calls = trace.take()
        # the zeros (by the thread, whenever it ran), then the header: both before the rename
        assert calls.count(("fdatasync", prep)) == 2
        in_order(calls, ("fdatasync", prep), ("fdatasync", prep), ("rename", prep), dir_)
        # the seal, then the header, before the name
        in_order(calls, ("fdatasync", old), ("fdatasync", prep), ("rename", prep), dir_)
        for i in range(4, 7):
            log.append(make_entry(i, blob=900))
        calls = trace.take()
        assert len(list_segments(d)) == 3  # the preallocated segment was sealed
        last = str(list_segments(d)[-1][1])
        in_order(
            calls,
            ("fdatasync", new),  # the seal
            ("fsync", new),  # the cut back to its last record (truncate syncs)
            ("fdatasync", prep),  # the next one's header, before the name
            ("rename", prep),
            dir_,
        )
    new = last
    last = Path(new)
    assert last.stat().st_size == 4096
    write_at_end(last, b'{"t":"entry","lsn":8,"torn')  # a torn write into the zero rest
    trace.take()
    with WALStorage(d) as log:
        assert log.recovery_report.truncated_bytes > 0
    in_order(trace.take(), ("fdatasync", new + ".broken"), dir_, ("ftruncate", new), ("fsync", new))


def test_repair_makes_the_real_system_calls(trace: Trace, tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WALStorage(d, max_segment_bytes=4096) as log:
        for i in range(12):
            log.append(make_entry(i, blob=300))
    first = list_segments(d)[0][1]
    off, line = lines_of(first)[2]
    flip_bit(first, off + len(line) // 2, 3)  # a bit flip in a sealed segment's middle record
    names = sorted(p.name for p in d.iterdir() if p.name != "LOCK")
    trace.take()

    rep = repair_log(d)
    assert rep.backup is not None and first.name in rep.segments_rewritten
    calls = trace.take()
    backup = rep.backup
    # every file of the backup is synced (in <backup>.partial), then that directory, then it
    # is renamed to the backup's name and the parent synced, all before the first change to
    # the log
    partial = backup + ".partial"
    copies = [("fdatasync", os.path.join(partial, n)) for n in names]
    tmp = str(first) + ".tmp"
    in_order(
        calls,
        *copies,
        ("fsync", partial),
        ("rename", partial),
        ("fsync", str(d.parent)),
        ("fdatasync", tmp),
    )
    # each rewrite: temp file synced, renamed over the segment, the directory synced
    in_order(calls, ("fdatasync", tmp), ("rename", tmp), ("fsync", str(d)))


def test_a_new_sqlite_file_and_its_directories_are_synced(trace: Trace, tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "atb.db"
    engine, _ = make_engine(f"sqlite:///{path}")
    engine.dispose()
    assert path.exists()
    # each new directory's name is synced in its parent, then the new file's name
    in_order(
        trace.take(),
        ("fsync", str(tmp_path)),
        ("fsync", str(tmp_path / "new")),
        ("fsync", str(tmp_path / "new" / "dir")),
    )
