"""A writer process for the crash tests: real ``WALStorage``, random operations, acks on stdout.

Usage: ``python walwriter_child.py DIR SEED FIRST_N [MAX_OPS]``, or ``--zygote`` (see
``zygote()``: a server that forks writers, each a real process with its own log handle).

It opens the log in DIR (small segments, so it rotates often), then runs random operations:
``append``, ``append_many``, ``update_status`` and, now and then, ``compact``. Entry number
``n`` (from FIRST_N on) has content ``content(n)``, so the parent can check every entry it gets
back. Every line is written with ONE ``os.write`` on an unbuffered pipe (atomic: a kill cannot
tear it), and an ack only after the call returned::

    R <next_lsn>                    opened (recovery finished)
    B A <n>:<id> <n>:<id> ...       about to append these entries (one call)
    A <id>:<lsn> <id>:<lsn> ...     that append returned: durable, acknowledged
    B S <id>:<status>               about to change a status
    S <id>:<status>                 that status is acknowledged
    B C                             about to compact (retention 0)
    C                               compaction finished
    D                               MAX_OPS done, closed cleanly

``WAL_CRASH_POINT`` (see ``wal.crashpoints``) makes it exit with status 137 at a named point.
``WALWRITER_COMPACT_P`` (default 0.04) and ``WALWRITER_FAIL_P`` (0.05) set how often it
compacts and how often a status change is FAILED.
"""

from __future__ import annotations

import os
import random
import sys
import traceback
from decimal import Decimal
from typing import Any

from wal import WALEntry, WALEntryStatus, WALStorage

MAX_SEGMENT_BYTES = 4096


def content(n: int) -> dict[str, Any]:
    """The kwargs of entry number n (the parent computes the same to check what it reads)."""
    blob = (n * 7919) % 5000 if n % 10 == 0 else n % 40  # now and then a multi-page record
    return {"n": n, "qty": Decimal(f"{n}.{n % 97:02d}"), "pad": "p" * blob}


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def run(argv: list[str]) -> None:
    directory, seed, first_n = argv[0], int(argv[1]), int(argv[2])
    max_ops = int(argv[3]) if len(argv) > 3 else 10**9
    compact_p = float(os.environ.get("WALWRITER_COMPACT_P", "0.04"))
    fail_p = float(os.environ.get("WALWRITER_FAIL_P", "0.05"))
    rnd = random.Random(seed)
    log = WALStorage(directory, max_segment_bytes=MAX_SEGMENT_BYTES)
    live: dict[str, WALEntryStatus] = {str(e.entry_id): e.status for e in log.get_pending_entries()}
    say(f"R {log.next_lsn}")
    n = first_n
    for _ in range(max_ops):
        r = rnd.random()
        if r < compact_p:
            say("B C")
            log.compact(retention=0)
            say("C")
        elif r < 0.8 and live:  # status changes outpace appends: the log stays small
            eid = rnd.choice(list(live)[:8])  # mostly the oldest: front segments empty out
            old = live[eid]
            if old is WALEntryStatus.PENDING:
                new = WALEntryStatus.SYNCING
            else:
                x = rnd.random()
                new = (
                    WALEntryStatus.FAILED
                    if x < fail_p
                    else WALEntryStatus.PENDING  # a retry
                    if x < fail_p + 0.1
                    else WALEntryStatus.COMPLETED
                )
            say(f"B S {eid}:{new.value}")
            log.update_status(eid, new, "refused" if new is WALEntryStatus.FAILED else None)
            say(f"S {eid}:{new.value}")
            if new in (WALEntryStatus.COMPLETED, WALEntryStatus.FAILED):
                del live[eid]
            else:
                live[eid] = new
        else:
            k = 1 if r < 0.96 else rnd.randint(2, 6)
            batch = [WALEntry.create("log_trade", kwargs=content(n + i)) for i in range(k)]
            say("B A " + " ".join(f"{n + i}:{e.entry_id}" for i, e in enumerate(batch)))
            out = log.append(batch[0]) if k == 1 else None
            done = [out] if out is not None else log.append_many(batch)
            say("A " + " ".join(f"{e.entry_id}:{e.lsn}" for e in done))
            for e in done:
                live[str(e.entry_id)] = WALEntryStatus.PENDING
            n += k
    log.close()
    say("D")


def zygote() -> None:
    """Fork writers on request, so that each one skips the interpreter start and the imports.

    Commands on stdin, one a line; replies on stdout:
    ``RUN <fifo> <args of run()>`` forks a writer whose stdout is the named pipe ``<fifo>``
    and replies ``P <pid>``; ``WAIT <pid>`` reaps it and replies ``W <exit code>`` (negative:
    killed by that signal). The zygote has no threads and no log open, so a fork is clean.
    """
    reply = sys.stdout.buffer
    while line := sys.stdin.readline():
        cmd, *args = line.split()
        if cmd == "RUN":
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    fd = os.open(args[0], os.O_WRONLY)
                    os.dup2(fd, 1)
                    os.close(fd)
                    run(args[1:])
                    code = 0
                except BaseException:
                    traceback.print_exc()  # on stderr, which the test shows
                finally:
                    os._exit(code)
            reply.write(b"P %d\n" % pid)
        elif cmd == "WAIT":
            _, status = os.waitpid(int(args[0]), 0)
            reply.write(b"W %d\n" % os.waitstatus_to_exitcode(status))
        reply.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        zygote()
    else:
        run(sys.argv[1:])
