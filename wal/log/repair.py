"""``repair_log``: an explicit salvage of a log that a normal open refuses.

Opening a log never skips a defect silently: a bit flip in the middle, a missing segment or a
garbage record refuses to open (``WALCorruptionError``), because skipping could lose an
acknowledged balance update without anyone noticing. ``repair_log`` is the operator's
decision to go on with what can be saved, after a disaster:

1. It takes the writer lock (a running writer makes it fail with ``WALLockedError``).
2. It copies the whole directory to ``<dir>.backup-<UTC time>`` next to it, durably, before
   touching anything. Nothing is ever lost for good: every dropped byte is in the backup.
3. For each segment with a defect it writes a new segment that holds only the records a
   normal open accepts (the good ones, and those only ``verify`` flags: see ``repairable``),
   with a header whose ``last`` covers the segment's original LSN range (a "compacted"
   header, see :mod:`wal.log.record`), so the LSNs of the dropped records are allowed gaps. A
   missing segment is covered the same way: the segment before it is rewritten with a range
   that extends to the next one. Each rewrite is temp file, fsync, rename, fsync directory.
4. It checks the result with ``verify_log`` and then with a normal ``WALStorage`` open. A
   check that fails after the backup was made raises ``WALRepairError``, whose ``report``
   still says where the backup is and every change made (the CLI prints them before the
   error).

A segment that starts inside the range a compacted segment's header claims is judged by the
one rule of :mod:`wal.log.overlap` (an open applies it too): a byte-for-byte copy of records
the earlier segment holds is left for the next open to remove; otherwise the earlier header
is corrected to what its records hold (``last`` up to the next segment) and no segment is
removed. A header whose ``last`` is below its own records is extended over them.

It reads every file a chunk at a time (:mod:`wal.log.filescan`): a segment made huge (a
sparse file of gigabytes) costs neither memory nor, in the backup, disk (a hole stays one).

A record a normal open accepts is never dropped: one only ``verify`` flags (an entry whose
content checksum does not match, an entry id written a second time) is indexed and replayed
by the open, so it may be an acknowledged entry; it stays where it is, listed in ``kept``. A
log whose only defects are such records has nothing to repair (no backup is made).

What it cannot know: a dropped *status* record may have said COMPLETED, so its entry is
PENDING again after the repair. The bundled database's applied ledger (``wal_applied``)
then skips it on replay instead of applying it twice. A dropped *entry* is gone from the log;
its LSN and entry id (when still legible) are in the report, its bytes in the backup.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wal.crashpoints import crash_point
from wal.errors import (
    WALCorruptionError,
    WALError,
    WALLockedError,
    WALUnsafeFileError,
    WALWriteError,
)
from wal.log.backups import PARTIAL_SUFFIX, backup_name
from wal.log.fileops import FileOps, OSFileOps, write_all
from wal.log.filescan import CHUNK, pread_all
from wal.log.lock import LOCK_NAME, WriterLock, lock_file_problem, move_bad_lock
from wal.log.manifest import MANIFEST_NAME, write_manifest
from wal.log.segment import (
    DIR_MODE,
    FILE_MODE,
    TMP_SUFFIX,
    Line,
    open_read,
    regions,
    segment_header,
)
from wal.log.storage import WALStorage
from wal.log.verify import SegmentScan, VerifyDefect, VerifyReport, scan_log, verify_log

__all__ = ["RepairReport", "WALRepairError", "repair_log", "repairable"]


@dataclass
class RepairReport:
    """What ``repair_log`` did. ``backup`` is None when there was nothing to repair."""

    directory: str
    backup: str | None = None
    records_kept: int = 0
    dropped: list[VerifyDefect] = field(default_factory=list)  # every defect, with location
    # records only verify flags (``verify_only``: an entry's content checksum, an entry id
    # written twice): a normal open accepts and replays them, so they stay in the log
    kept: list[VerifyDefect] = field(default_factory=list)
    segments_rewritten: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)  # each rewritten segment's new LSN range
    opened: bool = False  # a normal WALStorage open succeeded afterwards
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the check that failed after the repair changed the log

    @property
    def nothing_to_do(self) -> bool:
        return self.backup is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "backup": self.backup,
            "nothing_to_do": self.nothing_to_do,
            "records_kept": self.records_kept,
            "dropped": [d.to_dict() for d in self.dropped],
            "kept": [d.to_dict() for d in self.kept],
            "segments_rewritten": list(self.segments_rewritten),
            "ranges": list(self.ranges),
            "opened": self.opened,
            "notes": list(self.notes),
            "error": self.error,
        }


class WALRepairError(WALCorruptionError):
    """The repair backed the log up and changed it, but the result fails its check (a defect
    left, or a normal open refuses). ``report`` holds the backup's path and every change made:
    they are never lost with the error."""

    def __init__(self, path: Path, line: int, offset: int, problem: str, report: RepairReport):
        self.report = report
        super().__init__(path, line, offset, problem)
        self.hint = (
            f"the repair changed the log (listed above); the backup of the log as it was is in "
            f"{report.backup}: run `atb wal verify`, restore from the backup if needed"
        )
        report.error = str(self)


def repair_log(directory: str | os.PathLike[str]) -> RepairReport:
    """Back the log up, then rewrite every defective segment with only its good records.

    Raises ``WALLockedError`` while a writer holds the log, ``WALCorruptionError`` if there is
    no log directory (or, which would be a bug, if the repaired log still has a defect).
    """
    d = Path(directory)
    if not d.is_dir():
        raise WALCorruptionError(d, 0, 0, "no log directory here")
    report = RepairReport(directory=str(d))
    if lock_file_problem(d) is not None:  # no writer can lock the log: moved aside first
        aside = d.with_name(f"{d.name}.{LOCK_NAME}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        if move_bad_lock(d, aside):
            report.notes.append(f"{LOCK_NAME} was not a regular file: moved to {aside}")
    lock = WriterLock(d)
    lock.acquire()
    try:
        before = verify_log(d)
        report.notes.extend(before.notes)
        if not repairable(before):  # nothing, or only records the open accepts: kept as they are
            report.kept = [x for x in before.defects if x.verify_only]
            report.records_kept = before.records + len(report.kept)
        else:
            _refuse_linked_files(d)
            backup = _backup(d)
            report.backup = str(backup)
            try:
                _move_unsafe(d, backup, report)
                _rewrite(d, report)
                _move_manifest(d, report)
                _mend_manifest(d, report)
                after = verify_log(d)
            except (WALError, OSError) as exc:  # what was done so far is in the report
                raise WALRepairError(d, 0, 0, f"the repair failed: {exc}", report) from exc
            left = repairable(after)
            if left:
                first = left[0]
                raise WALRepairError(
                    d / first.file,
                    first.line,
                    first.offset,
                    f"still defective after repair: {first.problem}",
                    report,
                )
            report.records_kept = after.records + sum(x.verify_only for x in after.defects)
    finally:
        lock.release()
    try:
        report.opened = _opens(d, report)
    except WALError as exc:
        if report.backup is None:
            raise  # nothing was changed: the open's own error
        raise WALRepairError(
            getattr(exc, "path", d) or d,
            getattr(exc, "line", 0),
            getattr(exc, "offset", 0),
            f"a normal open still refuses the repaired log: {getattr(exc, 'problem', exc)}",
            report,
        ) from exc
    return report


def repairable(rep: VerifyReport) -> list[VerifyDefect]:
    """The defects of a verify report that a repair acts on: all but those only verify
    checks (``verify_only``). Their records are ones a normal open accepts, indexes and
    replays (``record_problem(rec, content=False)`` passes): an entry whose content checksum
    does not match was still appended and acknowledged, and the database applies it as it
    is; an entry id written twice is indexed twice and applied once (the applied ledger).
    Dropping them could lose an acknowledged entry: they stay, listed in ``kept``."""
    return [x for x in rep.defects if not x.verify_only]


def _opens(d: Path, report: RepairReport) -> bool:
    """Prove the repaired log opens normally (this also finishes what recovery tidies up)."""

    try:
        WALStorage(d).close()
    except WALLockedError as exc:
        report.notes.append(f"could not check a normal open: {exc}")
        return False
    return True


def _refuse_linked_files(d: Path) -> None:
    """A symlink under a segment's name that leads to a file may be the log's own data put
    elsewhere (a segment moved to another disk): moved aside, its entries would be dropped as
    a gap, acknowledged ones included. Refused, nothing changed: the operator decides."""
    for path in scan_log(d).unsafe:
        if not path.name.endswith(".wal"):  # MANIFEST, LOCK, temporary files: no entries
            continue
        if path.is_symlink() and path.exists() and not path.is_dir():
            err = WALUnsafeFileError(path, f"a symlink to {os.path.realpath(path)}")
            err.hint = (
                "repair changed nothing: if the target is the log's own file, put the file "
                "itself in the link's place (mv TARGET LINK), else move the link out of the "
                "log directory; then run repair again"
            )
            raise err


def _move_unsafe(d: Path, backup: Path, report: RepairReport) -> None:
    """Move what an open refuses to touch (a symlink, a directory or a device under a name
    of the log's: a segment, MANIFEST, a temporary file) into the backup, as it is: the
    link itself, never its target."""
    scan = scan_log(d)
    if not scan.unsafe:
        return
    fs = OSFileOps()
    for path in scan.unsafe:
        dest = backup / (path.name + ".unsafe")
        os.rename(path, dest)  # the entry itself moves (a symlink is never followed)
        report.notes.append(f"{path.name}: not a regular file; moved to {dest}")
    fs.fsync_dir(str(d))  # the removals are durable before the log is rewritten
    fs.fsync_dir(str(backup))  # and the moved entries' new names


def _mend_manifest(d: Path, report: RepairReport) -> None:
    """A manifest that does not read back (garbage, a bad first LSN, an unknown version):
    a new one names the first segment present (whether an older one was lost is unknown)."""
    scan = scan_log(d)
    if scan.manifest_bad is None:
        return
    report.dropped.append(scan.manifest_bad)
    if scan.segments:
        first = scan.segments[0].first
        write_manifest(OSFileOps(), d, first)  # durable: temp, fsync, rename, fsync dir
        report.notes.append(
            f"{MANIFEST_NAME} was unreadable: it now says the log starts at LSN {first}, the "
            "first segment present (if an older segment was lost too, restore it from a backup)"
        )
    else:
        fs = OSFileOps()
        fs.unlink(str(d / MANIFEST_NAME))
        fs.fsync_dir(str(d))  # the removal must be durable before the log is used again
        report.notes.append(f"{MANIFEST_NAME} was unreadable and no segment is left: removed")


def _move_manifest(d: Path, report: RepairReport) -> None:
    """A deleted first segment: accept the loss by moving the manifest to the first segment
    present (the lost LSNs are reported; their bytes may be in an older backup)."""
    scan = scan_log(d)
    if scan.manifest_behind is not None and scan.segments:
        # segments before the manifest's first LSN hold entries still owed: they are the
        # log's front (a restored backup of the first segment, say); the manifest goes back
        report.dropped.append(scan.manifest_behind)
        first = scan.segments[0].first
        write_manifest(OSFileOps(), d, first)  # durable: temp, fsync, rename, fsync dir
        report.notes.append(
            f"the manifest owed LSN {scan.manifest_first}, but segments before it hold entries "
            f"not completed: the manifest now says the log starts at LSN {first}"
        )
        return
    if scan.missing_front is None:
        return
    report.dropped.append(scan.missing_front)
    if scan.segments:
        first = scan.segments[0].first
        write_manifest(OSFileOps(), d, first)  # durable: temp, fsync, rename, fsync dir
        report.notes.append(
            f"the manifest owed LSN {scan.manifest_first}; the first segment present starts at "
            f"{first}: LSNs {scan.manifest_first}..{first - 1} are lost, the log starts at {first}"
        )
    else:  # every segment is gone: the log starts again empty (its next open writes one)
        fs = OSFileOps()
        fs.unlink(str(d / MANIFEST_NAME))
        fs.fsync_dir(str(d))  # the removal must be durable before the log is used again
        report.notes.append(
            f"the manifest owed LSN {scan.manifest_first} and no segment is left: every entry "
            "is lost; the log starts again empty (the backup holds what was there)"
        )


def _backup(d: Path) -> Path:
    """Copy every file of the log (not the lock) into a new sibling directory, durably: the
    copies go into ``<name>.partial`` first, renamed to the backup's name once complete,
    so a backup under its final name is never a partial one. A failure (a full disk)
    removes the partial copy and raises ``WALWriteError`` naming the file; nothing of the
    log was changed."""
    fs = OSFileOps()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = d.with_name(backup_name(d, stamp))
    n = 1
    while target.exists() or target.with_name(target.name + PARTIAL_SUFFIX).exists():
        target = d.with_name(f"{backup_name(d, stamp)}-{n}")
        n += 1
    partial = target.with_name(target.name + PARTIAL_SUFFIX)  # a killed repair leaves it
    partial.mkdir(mode=DIR_MODE)  # 0700 (chmod below: whatever the umask)
    os.chmod(partial, DIR_MODE)  # the copy holds the same balances and trades: owner only
    src = d
    try:
        for src in sorted(d.iterdir()):
            if src.name == LOCK_NAME or not stat.S_ISREG(os.lstat(src).st_mode):
                continue  # never follow a symlink out of the log directory
            fd_in = open_read(src)
            try:
                fd = fs.open(
                    str(partial / src.name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE
                )
                try:
                    _copy(fs, fd_in, fd)
                    fs.fdatasync(fd)  # the backup must be on disk before the original is rewritten
                finally:
                    fs.close(fd)
            finally:
                os.close(fd_in)
            crash_point("repair.after_backup_copy")  # a copy made, the backup not complete
        fs.fsync_dir(str(partial))  # the copies' names live in the backup directory: persist them
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise WALWriteError(
            f"the backup of {d} failed while copying {src.name} into {partial} "
            f"({exc.strerror or exc}); the partial backup was removed and the log not changed",
            path=partial / src.name,
            errno=exc.errno,
            hint="free space beside the log directory (where the backup goes), then repair again",
        ) from None
    fs.rename(str(partial), str(target))  # complete: under its final name, at once
    fs.fsync_dir(str(target.parent))  # and the backup directory's own name in its parent
    return target


def _copy(fs: FileOps, fd_in: int, fd: int) -> None:
    """Copy a file into a new one a chunk at a time (a segment made huge is never read into
    memory); a hole of a sparse file stays a hole (its zeros are not written: a 3 GiB sparse
    file costs the backup no disk)."""
    size = os.fstat(fd_in).st_size
    for _, piece in regions(fd_in, 0, size, CHUNK):
        if isinstance(piece, int):
            os.lseek(fd, piece, os.SEEK_CUR)  # a hole: skipped, its zeros read back as zeros
        else:
            write_all(fs, fd, piece)
    if os.lseek(fd, 0, os.SEEK_CUR) != os.fstat(fd).st_size:
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))  # a file that ends in a hole


def _unchanged(fd: int, header: bytes, kept: list[Line], end: int) -> bool:
    """True when the segment (open as ``fd``, its records ending at ``end``) is already the
    header followed by the records kept: they follow one another from the header's end to
    ``end`` (they are its own lines, so then the bytes are the same), nothing read but the
    header."""
    if pread_all(fd, len(header), 0) != header:
        return False
    pos = len(header)
    for line in kept:
        if line.offset != pos:
            return False
        pos += line.length
    return pos == end


def _write_kept(fs: FileOps, fd: int, src: int, header: bytes, kept: list[Line]) -> None:
    """Write the header, then the records kept, read again from the segment (``src``) a chunk
    at a time: neighbouring records with one read."""
    out = [header]
    held = len(header)
    k = 0
    while k < len(kept):
        start = kept[k].offset
        stop = start + kept[k].length
        k += 1
        while k < len(kept) and kept[k].offset == stop and stop - start < CHUNK:
            stop += kept[k].length
            k += 1
        out.append(pread_all(src, stop - start, start))
        held += stop - start
        if held >= CHUNK:
            write_all(fs, fd, b"".join(out))
            out, held = [], 0
    if out:
        write_all(fs, fd, b"".join(out))


def _rewrite(d: Path, report: RepairReport) -> None:
    """Rewrite each segment whose bytes differ from its salvaged form."""
    fs = OSFileOps()
    chain = scan_log(d).segments
    for k, seg in enumerate(chain):
        is_last = k == len(chain) - 1
        end = _planned_end(seg, chain[k + 1] if not is_last else None)
        kept = []
        for line in seg.good:
            if line.record["lsn"] <= end:
                kept.append(line)
            else:  # overlaps the next segment's range: that segment's records win
                seg.defects.append(
                    VerifyDefect(
                        seg.path.name,
                        line.line,
                        line.offset,
                        f"LSN {line.record['lsn']} lies in the next segment's range",
                        lsn=line.record["lsn"],
                        entry_id=line.record.get("entry_id"),
                    )
                )
        offsets = {x.offset for x in kept}
        for x in seg.defects:  # a record only verify flags stays; every other defect goes
            (report.kept if x.verify_only and x.offset in offsets else report.dropped).append(x)
        lsns = [line.record["lsn"] for line in kept]
        contiguous = lsns == list(range(seg.first, seg.first + len(lsns)))
        whole = contiguous and (lsns[-1] if lsns else seg.first - 1) == end
        if is_last and ((not seg.compacted and contiguous) or end < seg.first):
            last: int | None = None  # an ordinary active segment: appends continue in it
        elif not seg.compacted and whole:
            # every LSN of its range, in order: it stays as it is, its range implied by the
            # next segment (a fixed range would let a later gap in it pass as compaction's)
            last = None
        else:
            last = end  # a fixed range: the LSNs of dropped records are allowed gaps
        header = segment_header(seg.first, last)
        src = open_read(seg.path)
        try:
            end = seg.data_end if seg.data_end is not None else seg.size
            if _unchanged(src, header, kept, end):
                continue  # intact (a preallocated last segment's zeros are its normal end)
            tmp = seg.path.with_name(seg.path.name[: -len(".wal")] + TMP_SUFFIX)
            fd = fs.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                _write_kept(fs, fd, src, header, kept)
                fs.fdatasync(fd)  # never rename an unsynced file over a segment
            finally:
                fs.close(fd)
        finally:
            os.close(src)
        fs.rename(str(tmp), str(seg.path))  # atomic: the old or the new segment, never a mix
        fs.fsync_dir(str(d))  # the rename is durable only once the directory is synced
        report.segments_rewritten.append(seg.path.name)
        shown = f"{seg.first}..{last}" if last is not None else f"{seg.first}.. (active)"
        report.ranges.append(f"{seg.path.name}: LSN {shown}, {len(kept)} records kept")


def _planned_end(seg: SegmentScan, nxt: SegmentScan | None) -> int:
    """The last LSN a segment covers after the repair."""
    if nxt is not None:
        return nxt.first - 1  # up to the next segment: covers a missing segment in between
    top = seg.end if seg.compacted else seg.first - 1
    if seg.good:
        top = max(top, seg.good[-1].record["lsn"])
    return top
