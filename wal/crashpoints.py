"""Named crash points for the crash tests (RocksDB's whitebox kills, etcd's gofail).

``WAL_CRASH_POINT=<name>`` makes the process ``os._exit(137)`` the first time it reaches the
point called ``<name>``; ``WAL_CRASH_POINT=<name>:<n>`` the n-th time. The variable is read
once, at import: without it ``crash_point`` is one string comparison. ``os._exit`` skips every
``finally``, ``atexit`` and buffer flush, like a SIGKILL at that instant (the page cache
survives, as it does a SIGKILL; power loss is modelled by a ``FileOps`` in the tests).

The points, in the order the write path meets them:

``append-after-write``        a batch is written to the segment, not yet fdatasynced
``append-after-fsync``        the batch is durable, nobody has been acknowledged yet
``rotate-after-create``       a new segment exists with its header synced; directory not synced
``compact-after-tmp-write``   a compacted segment's temp file is written and synced, not renamed
``compact-after-rename``      the temp file replaced the segment; directory not synced
``compact-after-unlink``      an emptied front segment was unlinked; directory not synced
``compact-between-segments``  one segment was rewritten, the next ones are not yet
``manager.after_apply_before_status``  the database committed a batch (effects and ledger
                              rows); the log does not yet say COMPLETED
"""

from __future__ import annotations

import os

from wal.errors import WALConfigError

__all__ = ["POINTS", "crash_point"]

POINTS = frozenset(
    {
        "append-after-write",
        "append-after-fsync",
        "rotate-after-create",
        "compact-after-tmp-write",
        "compact-after-rename",
        "compact-after-unlink",
        "compact-between-segments",
        "manager.after_apply_before_status",
    }
)

_name, _, _nth = os.environ.get("WAL_CRASH_POINT", "").partition(":")
if _name and (_name not in POINTS or (_nth and not (_nth.isdigit() and int(_nth) > 0))):
    raise WALConfigError(
        "WAL_CRASH_POINT",
        os.environ["WAL_CRASH_POINT"],
        "<point>[:<n>], point one of " + ", ".join(sorted(POINTS)),
    )
_remaining = int(_nth) if _nth else 1


def crash_point(name: str) -> None:
    """Exit at once (status 137) if ``WAL_CRASH_POINT`` names this point and its count is up."""
    global _remaining
    if name != _name:
        return
    _remaining -= 1
    if _remaining <= 0:
        os._exit(137)
