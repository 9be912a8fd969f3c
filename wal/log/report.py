"""``RecoveryReport``: what opening a log found and did (filled in by :mod:`wal.log.recovery`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RecoveryReport"]


@dataclass
class RecoveryReport:
    """What opening the log found and did."""

    mode: str = "tolerate_tail"
    segments: int = 0
    records: int = 0
    entries: int = 0
    truncated_bytes: int = 0  # torn tail cut off the last segment
    # a torn tail found (cut by a writing open; a read-only open leaves it: what an open cuts)
    torn_tail_bytes: int = 0
    # zeros after the last record of the last segment: its preallocated space (or an unsynced
    # write whose data never reached the disk): the normal end of the log, not a defect
    spare_bytes: int = 0
    # records with good checksums among the cut bytes (a torn tail's later pages, or records
    # after a hole beyond the tear bound: then also a warning)
    cut_records: int = 0
    broken_files: list[str] = field(default_factory=list)  # where the cut bytes were kept
    removed_empty_segments: int = 0  # a last segment torn before its header was durable
    skipped_records: int = 0  # skip_corrupt only
    lsn_gaps: int = 0  # skip_corrupt only
    defects: list[str] = field(default_factory=list)  # each as "file: line N, offset O: why"
    removed_tmp_files: int = 0
    removed_front_segments: int = 0  # wholly before the manifest: an interrupted compaction's
    # starting inside a compacted segment's range, every record of it held by that segment
    # too, byte for byte (wal.log.overlap): a copy, removed
    removed_copy_segments: int = 0
    manifest_first: int | None = None  # the first LSN the manifest owes (None: no manifest)
    # things the operator must look at although the log opened: a cut tail that was a
    # complete record with a bad checksum (possibly damage, not a crash), suspect files kept
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
