"""The backups ``repair`` makes beside a log, and the unfinished ones a killed repair leaves.

``repair_log`` copies the log directory ``<dir>`` into ``<dir>.backup-<UTC time>[-<n>].partial``
first, then renames it to ``<dir>.backup-<UTC time>[-<n>]`` once every copy is durable: a
backup under its final name is never a partial one. A repair killed while it copies (SIGKILL,
a power loss) leaves the ``.partial`` directory behind. It holds copies only: the repair
changes the log only after the rename, so the log is as it was. ``verify``, ``repair`` and
``status`` name it in one line (``partial_backup_notes``), so that the operator knows what it
is and that it can be removed; nothing removes it by itself (it is the operator's disk, and
the operator's copy).

>>> import tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp()) / "wal"
>>> d.mkdir(); (d.parent / "wal.backup-20260101T000000Z.partial").mkdir()
>>> [p.name for p in partial_backups(d)]
['wal.backup-20260101T000000Z.partial']
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = [
    "PARTIAL_SUFFIX",
    "backup_name",
    "partial_backup_notes",
    "partial_backups",
]

PARTIAL_SUFFIX = ".partial"  # a backup still being copied (or left by a killed repair)


def backup_name(directory: Path, stamp: str) -> str:
    """The name of a backup of ``directory`` made at ``stamp`` (without a ``-<n>`` suffix)."""
    return f"{directory.name}.backup-{stamp}"


def partial_backups(directory: str | os.PathLike[str]) -> list[Path]:
    """The unfinished backups of the log in ``directory`` beside it (directories named
    ``<name>.backup-*.partial``, never followed through a symlink), in name order."""
    d = Path(directory)
    prefix = backup_name(d, "")
    try:
        names = os.listdir(d.parent)
    except OSError:  # the parent cannot be listed: nothing can be said
        return []
    found = []
    for name in names:
        if name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX):
            try:
                if stat.S_ISDIR(os.lstat(d.parent / name).st_mode):
                    found.append(d.parent / name)
            except OSError:  # removed meanwhile
                continue
    return sorted(found)


def partial_backup_notes(directory: str | os.PathLike[str]) -> list[str]:
    """One line for each unfinished backup beside the log: what it is, that it holds copies
    only, and that it can be removed."""
    return [
        f"{p}: an unfinished backup left by an interrupted `atb wal repair` (killed while it "
        "copied the log, before it changed anything): it holds copies only; remove it "
        f"(rm -r '{p}') once you no longer need them"
        for p in partial_backups(directory)
    ]
