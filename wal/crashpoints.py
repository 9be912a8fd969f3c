"""Named crash points for the crash tests (RocksDB's whitebox kills, etcd's gofail).

``WAL_CRASH_POINT=<name>`` makes the process ``os._exit(137)`` the first time it reaches the
point called ``<name>``; ``WAL_CRASH_POINT=<name>:<n>`` the n-th time. With
``WAL_CRASH_ACTION=stop`` it stops itself there instead (``SIGSTOP``), for a test to deliver a
real ``SIGKILL`` at that very point (``os.waitpid(pid, os.WUNTRACED)`` sees it stopped). The
variables are read once, at import: without them ``crash_point`` is one string comparison.
``os._exit`` skips every ``finally``, ``atexit`` and buffer flush, like a SIGKILL at that
instant (the page cache survives, as it does a SIGKILL; power loss is modelled by a
``FileOps`` in the tests).

The points, in the order the write path meets them:

``append-after-write``        a batch is written to the segment, not yet fdatasynced
``append-after-fsync``        the batch is durable, nobody has been acknowledged yet
``rotate-after-create``       a new segment exists with its header synced; directory not synced
``compact-after-tmp-write``   a compacted segment's temp file is written and synced, not renamed
``compact-after-rename``      the temp file replaced the segment; directory not synced
``compact-after-unlink``      an emptied front segment was unlinked; directory not synced
``compact-between-segments``  one segment was rewritten, the next ones are not yet
``repair.after_backup_copy``  ``repair`` copied one more file into ``<backup>.partial``; the
                              backup is not complete, the log not yet changed
``durable.after_write_before_read``  ``atomic_balance_update`` logged (and maybe applied) the
                              update, before reading the balance it returns
``manager.after_append_before_apply``  the entry is durable in the log, not yet applied, the
                              caller not yet acknowledged
``order.after_intent_fsync``  an order intent is durable in the log; nothing was sent
``order.after_submitting_fsync``  SUBMITTING is durable; the broker call is next
``order.after_broker_accept``  the broker accepted the order; the journal does not know yet
``order.after_ack_before_fill``  ACCEPTED is journaled; its fills are not (an order whose
                              first fill came with its acknowledgement journals both in one
                              write: not reached)
``order.after_fill_fsync``    one fill is journaled (the next ones are not)
``bracket.after_cancel``      a bracket child was cancelled (resize or one-cancels-other); its
                              replacement is not placed yet (``wal.service.brackets``)
``bracket.after_replacement``  a grown child's replacement is placed in the bracket's OCO group;
                              the child it replaces is not cancelled yet
``manager.after_apply_before_status``  the database committed a batch (effects and ledger
                              rows); the log does not yet say COMPLETED
``manager.after_status_before_ack``  the log recorded the batch's statuses; the caller of the
                              write that applied it is not yet acknowledged

In-process crashes (the model tests): ``set_in_process_handler(handler)`` makes every point
call ``handler(name)`` first; the handler raises to stop the stack at that point, as if the
process died there (the test then drops every object and opens the files again). The log's
hot-path points (``append-*``, behind ``ARMED``) are reached only with ``WAL_CRASH_POINT``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from wal.errors import WALConfigError

__all__ = ["ARMED", "POINTS", "crash_point", "set_in_process_handler"]

POINTS = frozenset(
    {
        "append-after-write",
        "append-after-fsync",
        "rotate-after-create",
        "compact-after-tmp-write",
        "compact-after-rename",
        "compact-after-unlink",
        "compact-between-segments",
        "repair.after_backup_copy",
        "durable.after_write_before_read",
        "manager.after_append_before_apply",
        "manager.after_apply_before_status",
        "manager.after_status_before_ack",
        "order.after_intent_fsync",
        "order.after_submitting_fsync",
        "order.after_broker_accept",
        "order.after_ack_before_fill",
        "order.after_fill_fsync",
        "bracket.after_cancel",
        "bracket.after_replacement",
    }
)

_name, _, _nth = os.environ.get("WAL_CRASH_POINT", "").partition(":")
if _name and (
    _name not in POINTS or (_nth and not (_nth.isascii() and _nth.isdigit() and int(_nth) > 0))
):
    raise WALConfigError(
        "WAL_CRASH_POINT",
        os.environ["WAL_CRASH_POINT"],
        "<point>[:<n>], point one of " + ", ".join(sorted(POINTS)),
    )
_action = os.environ.get("WAL_CRASH_ACTION", "exit") if _name else "exit"
if _action not in ("exit", "stop"):
    raise WALConfigError("WAL_CRASH_ACTION", _action, "exit | stop")
_remaining = int(_nth) if _nth else 1
# True when a crash point is set: hot paths test this constant and skip the call (zero cost).
ARMED = bool(_name)
_handler: Callable[[str], None] | None = None


def set_in_process_handler(handler: Callable[[str], None] | None) -> None:
    """Call ``handler(point)`` at every crash point (None: stop). For in-process crash tests."""
    global _handler
    _handler = handler


def crash_point(name: str) -> None:
    """Exit at once (status 137) if ``WAL_CRASH_POINT`` names this point and its count is up."""
    global _remaining
    if _handler is not None:
        _handler(name)
    if name != _name:
        return
    _remaining -= 1
    if _remaining <= 0:
        if _action == "stop":  # the test sends the SIGKILL (a SIGCONT would go on from here)
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        os._exit(137)
