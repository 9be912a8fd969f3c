#!/usr/bin/env python3
"""The mutation table: every durability step, broken one at a time, must fail a named test.

Usage (from the repository root, in its virtual environment)::

    python tests/mutation/run.py              # every mutation (several minutes)
    python tests/mutation/run.py --only group-ack-after-fsync --only rotate-seal
    python tests/mutation/run.py --list       # the table, nothing run
    python tests/mutation/run.py --check      # only check that the table is not stale
    python tests/mutation/run.py --json out.json --markdown out.md

Each ``Mutation`` is a textual patch: in ``file``, the exact snippet ``old`` (it must occur
exactly once) becomes ``new``. The script copies the repository (the files git knows, plus new
ones not ignored) to a temporary directory, runs every named test there once unmutated (they
must pass: a failing baseline proves nothing), then, for each mutation, patches the copy, runs
the mutation's tests, and restores the file. Outcome: ``killed`` (a named test failed: the
step is guarded), ``survived`` (every named test passed: the step can be removed unnoticed)
or ``error`` (pytest could not run the tests: a test id that does not exist, a collection
error). Exit status: 0 when every mutation was killed, 1 otherwise, 2 when the table is stale.

When the code moves (a refactor, a renamed test), the table is stale: the script refuses to
run and names each snippet that is no longer found exactly once in its file ("snippet not
found in wal/log/storage.py -- the table is stale"), and each test that no longer exists.
Update the snippet (keep it on the line that *is* the durability step, with its comment, so it
stays stable), re-run, and update docs/testing.md. ``tests/test_mutation_table.py`` runs the
staleness check in CI, so the table cannot silently rot.

This file is not collected by pytest (its name does not start with ``test_``; see also
``tests/mutation/conftest.py``).
"""

# ruff: noqa: E501  (the snippets are exact lines of the code, comments included)
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------- the named tests

PL = "tests/log/test_crash_powerloss.py::"
EVERY_OP = PL + "test_power_loss_at_every_operation_loses_nothing_acknowledged"
ONLY_COVER = PL + "test_power_loss_where_one_durability_step_is_the_only_cover"
NAMES = PL + "test_no_name_reaches_the_disk_before_its_data"
GC = "tests/log/test_crash_group_commit.py::"
SYS = "tests/log/test_syscalls.py::"
IOE = "tests/log/test_io_errors.py::"
COR = "tests/log/test_corruption.py::"
DDB = "tests/sync/test_durable_db.py::"
PRE = PL + "test_power_loss_while_appending_into_preallocated_space"
PTEST = "tests/log/test_prealloc.py::"
SR = "tests/sync/test_startup_reads.py::"
OI = "tests/sync/test_overlay_interleavings.py::"
IK = "tests/sync/test_idempotency_keys.py::"


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    step: str  # the durability step this mutation removes or breaks, in one line
    old: str
    new: str
    tests: tuple[str, ...]
    area: str = "write path"


MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ the write path
    Mutation(
        "append-fdatasync",
        "wal/log/segwriter.py",
        "an append is acknowledged only after the fdatasync of its bytes",
        "            self._fs.fdatasync(self._fd)  # the acknowledgement below promises these bytes\n",
        "            pass\n",
        (EVERY_OP + "[appends]",),
    ),
    Mutation(
        "group-ack-after-fsync",
        "wal/log/groupcommit.py",
        "group commit: members are woken only after their group's write and fdatasync",
        "        try:\n"
        "            self._flush(g.records, g.durable)\n"
        "        except BaseException as exc:\n"
        "            g.error = exc\n"
        "            raise\n"
        "        finally:\n"
        "            g.finish()\n",
        "        g.finish()\n"
        "        try:\n"
        "            self._flush(g.records, g.durable)\n"
        "        except BaseException as exc:\n"
        "            g.error = exc\n"
        "            raise\n",
        (GC + "test_group_members_are_acknowledged_only_once_their_group_is_durable",),
    ),
    Mutation(
        "group-durable-sticky",
        "wal/log/groupcommit.py",
        "a group holding any durable record is fsynced (a durable=False joiner cannot unset it)",
        "        g.durable = g.durable or durable\n",
        "        g.durable = durable\n",
        (GC + "test_a_non_durable_mark_joining_a_group_does_not_take_its_fsync_away",),
    ),
    Mutation(
        "fsync-error-poisons",
        "wal/log/groupcommit.py",
        "a failed write or fdatasync stops the log: never retry an fsync and believe it",
        "            if error is not None:\n"
        "                self._poison(error)\n"
        "                raise self._failed or error\n"
        "            self._index_written(batch, off)\n",
        "            if error is not None:\n"
        "                raise error\n"
        "            self._index_written(batch, off)\n",
        (IOE + "test_the_failed_fsync_is_not_retried_even_when_a_later_fsync_would_succeed",),
    ),
    Mutation(
        "one-flush-at-a-time",
        "wal/log/groupcommit.py",
        "one flush at a time: a group's leader waits until the previous flush has ended",
        "            while self._flushing:\n"
        "                self._wait()  # one flush at a time: the previous group is being written\n",
        "            pass\n",
        (GC + "test_group_members_are_acknowledged_only_once_their_group_is_durable",),
    ),
    Mutation(
        "sync-error-poisons",
        "wal/log/groupcommit.py",
        "a failed sync() (interval mode) stops the log too",
        "            if error is not None:\n"
        "                self._poison(error)\n"
        "                raise self._failed or error\n"
        "            self._durable_lsn = max(self._durable_lsn, top)\n",
        "            if error is not None:\n"
        "                raise error\n"
        "            self._durable_lsn = max(self._durable_lsn, top)\n",
        (IOE + "test_a_failed_interval_sync_is_not_retried_either",),
    ),
    Mutation(
        "short-write-continues",
        "wal/log/fileops.py",
        "a short write is continued until every byte is written (or the next write fails)",
        "    while data:\n",
        "    if data:\n",
        (IOE + "test_a_failed_write_or_fsync_stops_the_log_and_loses_nothing_acknowledged",),
    ),
    Mutation(
        "one-writer-lock",
        "wal/log/lock.py",
        "one writer per log: an exclusive flock on the directory (LOCK can be deleted)",
        "            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
        "            pass\n",
        (
            "tests/log/test_hardening.py::test_a_deleted_lock_lets_no_second_writer_in_and_halts_the_first",
        ),
    ),
    Mutation(
        "new-log-directory-fsync",
        "wal/log/storage.py",
        "a new log directory's name is fsynced in its parent",
        "            self._fs.fsync_dir(str(made.parent))\n",
        "            pass\n",
        (SYS + "test_the_log_makes_the_real_system_calls",),
    ),
    # ------------------------------------------------------------------ interval mode
    Mutation(
        "interval-sync-fdatasync",
        "wal/log/groupcommit.py",
        "interval mode: sync() fdatasyncs what was written before it returns",
        "                self._fs.fdatasync(self._fd)  # interval mode: bound the power-loss window\n",
        "                pass\n",
        (ONLY_COVER + "[rotation-in-interval-mode]",),
        "interval mode",
    ),
    Mutation(
        "interval-background-sync",
        "wal/log/groupcommit.py",
        "interval mode: the background thread calls sync() every fsync_interval_ms",
        "        while not self._stop_syncer.wait(interval):\n"
        "            try:\n"
        "                self.sync()\n",
        "        while not self._stop_syncer.wait(interval):\n"
        "            try:\n"
        "                pass\n",
        ("tests/log/test_storage.py::test_interval_mode_syncs_in_the_background_and_on_close",),
        "interval mode",
    ),
    Mutation(
        "close-syncs",
        "wal/log/storage.py",
        "close() makes everything written durable (interval mode, lazy marks)",
        "            with contextlib.suppress(WALError):\n                self.sync()\n",
        "            with contextlib.suppress(WALError):\n                pass\n",
        (ONLY_COVER + "[rotation-in-interval-mode]",),
        "interval mode",
    ),
    # ------------------------------------------------------------------ rotation
    Mutation(
        "rotate-seal",
        "wal/log/segwriter.py",
        "rotation seals the old segment with an fdatasync (covers lazy marks, interval writes)",
        "            t0 = time.perf_counter_ns()\n"
        "            self._fs.fdatasync(self._fd)\n"
        "            self._record_fsync(time.perf_counter_ns() - t0)\n"
        "            self._durable_lsn = self._written_lsn\n",
        "            t0 = time.perf_counter_ns()\n"
        "            self._record_fsync(time.perf_counter_ns() - t0)\n"
        "            self._durable_lsn = self._written_lsn\n",
        (ONLY_COVER + "[rotation-after-lazy-marks]", ONLY_COVER + "[rotation-in-interval-mode]"),
        "rotation",
    ),
    Mutation(
        "segment-header-fdatasync",
        "wal/log/segwriter.py",
        "a new segment's header is fdatasynced before its name is made durable",
        "                self._fs.fdatasync(fd)  # the header must be on disk before any record after it\n",
        "                pass\n",
        (NAMES + "[rotation]",),
        "rotation",
    ),
    Mutation(
        "segment-directory-fsync",
        "wal/log/segwriter.py",
        "a new segment's name is made durable (directory fsync) before a record goes into it",
        "                # a new file's name is in the directory, not the file: fsync the directory\n"
        "                self._fs.fsync_dir(str(self.directory))\n",
        "                pass\n",
        (EVERY_OP + "[rotation]",),
        "rotation",
    ),
    Mutation(
        "prealloc-header-before-rename",
        "wal/log/segwriter.py",
        "a prepared (preallocated) segment gets its name only after its header is durable",
        "            write_all(self._fs, fd, header)\n"
        '            if self.options.fsync != "unsafe_never":\n'
        "                self._fs.fdatasync(fd)  # the header must be on disk before any record after it\n"
        '                crash_point("rotate-after-create")\n'
        "            if prepared:\n"
        "                # its name makes it a segment: only once its header is durable (above)\n"
        "                self._fs.rename(str(self.directory / PREPARED_NAME), str(path))\n",
        "            if prepared:\n"
        "                self._fs.rename(str(self.directory / PREPARED_NAME), str(path))\n"
        "            write_all(self._fs, fd, header)\n"
        '            if self.options.fsync != "unsafe_never":\n'
        "                self._fs.fdatasync(fd)  # the header must be on disk before any record after it\n"
        '                crash_point("rotate-after-create")\n',
        (PRE + "[prealloc-zero]",),
        "preallocation",
    ),
    Mutation(
        "prealloc-cut-sealed",
        "wal/log/segwriter.py",
        "a sealed preallocated segment is cut back to its last record before the next exists",
        "            self._fs.truncate(str(self._segments[-1].path), self._seg_size)\n",
        "            pass\n",
        (
            PRE + "[prealloc-zero]",
            PTEST + "test_segments_get_their_space_and_readers_see_only_records[zero]",
        ),
        "preallocation",
    ),
    Mutation(
        "prealloc-write-at-data-end",
        "wal/log/segwriter.py",
        "a reopened preallocated segment is written at the end of its records, not after its zeros",
        "            os.lseek(self._fd, seg.size, os.SEEK_SET)\n",
        "            os.lseek(self._fd, 0, os.SEEK_END)\n",
        (PRE + "[prealloc-reopened]",),
        "preallocation",
    ),
    Mutation(
        "recovery-zeros-are-the-end",
        "wal/log/recovery.py",
        "the zeros of a preallocated last segment are the end of the log (no defect, not cut)",
        "            if last_segment and cur.header is not None and zero_rest(data, pos):\n",
        "            if False:\n",
        (PTEST + "test_segments_get_their_space_and_readers_see_only_records[zero]",),
        "preallocation",
    ),
    # ------------------------------------------------------------------ compaction
    Mutation(
        "compact-tmp-fdatasync",
        "wal/log/compaction.py",
        "a rewritten segment's temp file is fdatasynced before it is renamed over the segment",
        "        store._fs.fdatasync(fd)  # never rename an unsynced file over good data\n",
        "        pass\n",
        (EVERY_OP + "[compaction]",),
        "compaction",
    ),
    Mutation(
        "compact-rename-directory-fsync",
        "wal/log/compaction.py",
        "the rename over a segment is made durable (directory fsync) before the next rewrite",
        "    store._fs.fsync_dir(str(store.directory))  # the rename is durable only after this\n",
        "    pass\n",
        (EVERY_OP + "[compaction]",),
        "compaction",
    ),
    Mutation(
        "manifest-before-unlink",
        "wal/log/compaction.py",
        "the manifest moves past an emptied front segment before that segment is unlinked",
        "        write_manifest(store._fs, store.directory, store._segments[1].first)\n",
        "        pass\n",
        (ONLY_COVER + "[compaction-of-a-front-segment]",),
        "compaction",
    ),
    Mutation(
        "manifest-tmp-fdatasync",
        "wal/log/manifest.py",
        "a new manifest is fdatasynced before it is renamed over the old one",
        "        fs.fdatasync(fd)  # never rename an unsynced file over the manifest\n",
        "        pass\n",
        (
            ONLY_COVER + "[compaction-of-a-front-segment]",
            PL + "test_no_name_reaches_the_disk_before_its_data",
        ),
        "compaction",
    ),
    Mutation(
        "manifest-directory-fsync",
        "wal/log/manifest.py",
        "the manifest's rename is made durable (directory fsync) before a segment is unlinked",
        "    fs.fsync_dir(str(directory))  # the rename is durable only after the directory fsync\n",
        "    pass\n",
        (ONLY_COVER + "[compaction-of-a-front-segment]",),
        "compaction",
    ),
    Mutation(
        "compaction-keeps-unfinished",
        "wal/log/compaction.py",
        "compaction drops only COMPLETED entries; every unfinished one stays",
        "        if code == CODE_COMPLETED and old and lsn not in protected:\n",
        "        if old and lsn not in protected:\n",
        ("tests/log/test_storage.py::test_compaction_folds_statuses_and_keeps_unfinished",),
        "compaction",
    ),
    # ------------------------------------------------------------------ recovery
    Mutation(
        "recovery-directory-fsync",
        "wal/log/recovery.py",
        "recovery's removals (headerless segment, temp files) are durable before appends",
        "        # removals and truncations above must not come back after a crash\n"
        "        store._fs.fsync_dir(str(store.directory))\n",
        "        pass\n",
        (ONLY_COVER + "[recovery-headerless-segment]",),
        "recovery",
    ),
    Mutation(
        "broken-file-fdatasync",
        "wal/log/recovery.py",
        "the torn bytes are fdatasynced in a .broken file before the tail is cut",
        "            store._fs.fdatasync(fd)  # the evidence must exist before the cut below\n",
        "            pass\n",
        (EVERY_OP + "[recovery]",),
        "recovery",
    ),
    Mutation(
        "broken-file-directory-fsync",
        "wal/log/recovery.py",
        "the .broken file's name is made durable before the tail is cut",
        "        store._fs.fsync_dir(str(path.parent))\n",
        "        pass\n",
        (EVERY_OP + "[recovery]",),
        "recovery",
    ),
    Mutation(
        "torn-tail-only-in-last-segment",
        "wal/log/recovery.py",
        "a torn tail is cut only in the last segment; anywhere else it is corruption",
        '            torn_ok = last_segment and mode != "strict" and (cur.header is not None or headless_ok)\n',
        '            torn_ok = mode != "strict" and (cur.header is not None or headless_ok)\n',
        (COR + "test_8_bad_record_in_a_non_last_segment",),
        "recovery",
    ),
    Mutation(
        "torn-tail-only-at-the-end",
        "wal/log/recovery.py",
        "a bad record followed by a good one is corruption, never a torn tail to cut",
        "                if hole or valid_record_after(rest, 0) is None:\n",
        "                if True:\n",
        (COR + "test_6_every_bit_of_a_middle_record",),
        "recovery",
    ),
    Mutation(
        "lsn-continuity",
        "wal/log/recovery.py",
        "segments must continue each other's LSNs: a missing segment is detected",
        "    if store._segments and first != prev_end + 1:\n",
        "    if False:\n",
        (COR + "test_9_middle_segment_deleted",),
        "recovery",
    ),
    Mutation(
        "record-checksum",
        "wal/log/record.py",
        "every record's checksum is verified over its exact bytes (slow path)",
        "    if int(head, 16) != xxhash.xxh3_64_intdigest(payload):\n",
        "    if False:\n",
        ("tests/log/test_record.py::test_flip_inside_a_number_that_still_parses",),
        "recovery",
    ),
    Mutation(
        "fastindex-checksum",
        "wal/log/fastindex.py",
        "every record's checksum is verified over its exact bytes (bulk path at open)",
        "    if want == got:\n        return j\n",
        "    return j\n",
        (COR + "test_6_every_bit_of_a_middle_record",),
        "recovery",
    ),
    # ------------------------------------------------------------------ the real file system
    Mutation(
        "os-fdatasync",
        "wal/log/fileops.py",
        "OSFileOps.fdatasync calls os.fdatasync",
        "        os.fdatasync(fd)\n",
        "        pass\n",
        (SYS + "test_the_log_makes_the_real_system_calls",),
        "real system calls",
    ),
    Mutation(
        "os-fsync-directory",
        "wal/log/fileops.py",
        "OSFileOps.fsync_dir calls os.fsync on the directory",
        "        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)\n"
        "        try:\n"
        "            os.fsync(fd)\n",
        "        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)\n"
        "        try:\n"
        "            pass\n",
        (SYS + "test_the_log_makes_the_real_system_calls",),
        "real system calls",
    ),
    Mutation(
        "os-fsync-after-truncate",
        "wal/log/fileops.py",
        "OSFileOps.truncate fsyncs the cut before anything is appended after it",
        "            os.fsync(fd)  # the cut must be durable before anything is appended after it\n",
        "            pass\n",
        (SYS + "test_the_log_makes_the_real_system_calls",),
        "real system calls",
    ),
    # ------------------------------------------------------------------ repair
    Mutation(
        "repair-backup-fdatasync",
        "wal/log/repair.py",
        "repair: every backup copy is fdatasynced before the log is touched",
        "            fs.fdatasync(fd)  # the backup must be on disk before the original is rewritten\n",
        "            pass\n",
        (SYS + "test_repair_makes_the_real_system_calls",),
        "repair",
    ),
    Mutation(
        "repair-backup-directory-fsync",
        "wal/log/repair.py",
        "repair: the backup directory is fsynced (the copies' names)",
        "    fs.fsync_dir(str(target))  # the copies' names live in the backup directory: persist them\n",
        "    pass\n",
        (SYS + "test_repair_makes_the_real_system_calls",),
        "repair",
    ),
    Mutation(
        "repair-backup-parent-fsync",
        "wal/log/repair.py",
        "repair: the backup directory's own name is fsynced in its parent",
        "    fs.fsync_dir(str(target.parent))  # and the backup directory's own name in its parent\n",
        "    pass\n",
        (SYS + "test_repair_makes_the_real_system_calls",),
        "repair",
    ),
    Mutation(
        "repair-tmp-fdatasync",
        "wal/log/repair.py",
        "repair: a rewritten segment's temp file is fdatasynced before its rename",
        "            fs.fdatasync(fd)  # never rename an unsynced file over a segment\n",
        "            pass\n",
        (SYS + "test_repair_makes_the_real_system_calls",),
        "repair",
    ),
    Mutation(
        "repair-rename-directory-fsync",
        "wal/log/repair.py",
        "repair: each rename is made durable with a directory fsync",
        "        fs.fsync_dir(str(d))  # the rename is durable only once the directory is synced\n",
        "        pass\n",
        (SYS + "test_repair_makes_the_real_system_calls",),
        "repair",
    ),
    # ------------------------------------------------------------------ the database side
    Mutation(
        "sqlite-new-directory-fsync",
        "wal/db/engine.py",
        "SQLite: a new parent directory's name is fsynced",
        "            os.fsync(fd)  # the new directory's entry must survive a power loss\n",
        "            pass\n",
        (SYS + "test_a_new_sqlite_file_and_its_directories_are_synced",),
        "database",
    ),
    Mutation(
        "sqlite-new-file-directory-fsync",
        "wal/db/engine.py",
        "SQLite: the new database file's name is fsynced",
        "        os.fsync(fd)  # SQLite syncs the directory for its journal files, not for this one\n",
        "        pass\n",
        (SYS + "test_a_new_sqlite_file_and_its_directories_are_synced",),
        "database",
    ),
    Mutation(
        "sqlite-synchronous-full",
        "wal/db/engine.py",
        "SQLite runs with synchronous=FULL (NORMAL may roll back a commit on power loss)",
        '            cur.execute("PRAGMA synchronous=FULL")\n',
        '            cur.execute("PRAGMA synchronous=NORMAL")\n',
        ("tests/db/test_database.py::test_sqlite_pragmas_and_file_modes",),
        "database",
    ),
    Mutation(
        "lazy-marks-only-behind-the-ledger",
        "wal/sync/apply.py",
        "status marks skip their own fsync only when COMPLETED behind the applied-ledger",
        "            self.storage.update_statuses(changes, durable=durable)\n",
        "            self.storage.update_statuses(changes, durable=False)\n",
        (
            "tests/sync/test_manager.py::test_completed_marks_need_their_own_fsync_only_without_the_ledger",
        ),
        "database",
    ),
    Mutation(
        "ledger-row-with-the-effect",
        "wal/db/apply.py",
        "exactly once: a batch's applied-ledger rows commit in the transaction of its effects",
        "                _insert_ledger(conn, todo)\n",
        "                pass\n",
        (
            "tests/db/test_ambiguous_commit.py::test_a_batch_replayed_after_a_lost_commit_equals_the_model",
        ),
        "database",
    ),
    # ------------------------------------------------------------------ reads include pending
    Mutation(
        "overlay-fresh-positions",
        "wal/sync/overlay.py",
        "open positions read from the database include the pending entries",
        "                    self.apply_position(positions, eff.entry)\n",
        "                    pass\n",
        (DDB + "test_open_positions_include_a_position_logged_during_an_outage_before_the_drain",),
        "reads",
    ),
    Mutation(
        "overlay-fresh-balance",
        "wal/sync/overlay.py",
        "a balance read from the database includes the pending deltas",
        "                value = _dec(db_balance) + total\n",
        "                value = _dec(db_balance)\n",
        (DDB + "test_the_balance_is_unknown_before_any_successful_read",),
        "reads",
    ),
    Mutation(
        "overlay-kept-balance",
        "wal/sync/overlay.py",
        "during an outage, each newly durable balance update is added to the kept balance",
        "            return value + self._logged.get(account, _ZERO) - logged\n",
        "            return value\n",
        (DDB + "test_reads_include_the_pending_entries_while_the_database_is_down",),
        "reads",
    ),
    Mutation(
        "overlay-kept-positions",
        "wal/sync/overlay.py",
        "during an outage, each newly durable position change is applied to the kept positions",
        "                self.apply_position(self._kept_pos, eff.entry)\n",
        "                pass\n",
        (DDB + "test_reads_include_the_pending_entries_while_the_database_is_down",),
        "reads",
    ),
    Mutation(
        "overlay-maybe-applied-at-open",
        "wal/sync/overlay.py",
        "after a crash, every entry pending when the log is opened is maybe applied (the ledger"
        " decides): a committed but unmarked entry is not counted twice",
        "                self._unsure[eff.entry_id] = eff\n",
        "                pass\n",
        (
            "tests/sync/test_overlay_after_crash.py::"
            "test_a_committed_but_unmarked_deposit_is_counted_once_after_a_crash",
        ),
        "reads",
    ),
    Mutation(
        "overlay-ledger-in-the-read-snapshot",
        "wal/sync/overlay.py",
        "a read leaves out the uncertain entries the ledger holds (same snapshot as the balance)",
        "                value -= sum((d for eid, d in mine.items() if eid in applied), _ZERO)\n",
        "                pass\n",
        (
            "tests/sync/test_overlay_after_crash.py::"
            "test_a_committed_but_unmarked_deposit_is_counted_once_after_a_crash",
        ),
        "reads",
    ),
    Mutation(
        "overlay-read-counts-the-batch-in-flight",
        "wal/sync/overlay.py",
        "a read asks the ledger about the batch in flight: a batch committing during the read is"
        " counted once",
        "                    for eid, eff in (*self._inflight.items(), *self._unsure.items())\n"
        "                    if eff.account == account and eid not in self._early\n",
        "                    for eid, eff in self._unsure.items()\n"
        "                    if eff.account == account and eid not in self._early\n",
        (SR + "test_a_batch_committing_during_a_read_is_counted_once",),
        "reads",
    ),
    Mutation(
        "overlay-settled-entry-not-subtracted-again",
        "wal/sync/overlay.py",
        "an entry a read already found in the ledger (settled) is not subtracted again while a"
        " batch replays it",
        "                    if eff.account == account and eid not in self._early\n",
        "                    if eff.account == account\n",
        (
            SR + "test_reads_during_the_startup_replay_after_a_kill_are_exact",
            OI + "test_every_interleaving_reads_the_exact_balance",
        ),
        "reads",
    ),
    Mutation(
        "overlay-abort-keeps-settled-entries-applied",
        "wal/sync/overlay.py",
        "an aborted batch never makes an entry a read found in the ledger maybe-applied again",
        "                elif eid in maybe and eid not in self._early:\n",
        "                elif eid in maybe:\n",
        (OI + "test_every_interleaving_reads_the_exact_balance",),
        "reads",
    ),
    Mutation(
        "overlay-counted-at-batch-start",
        "wal/sync/overlay.py",
        "an entry the sync thread applies before its write hook ran is counted when its batch"
        " starts",
        "                    self._batched_first.add(eff.entry_id)\n"
        "                    self._register(eff)\n",
        "                    pass\n",
        (OI + "test_every_interleaving_reads_the_exact_balance",),
        "reads",
    ),
    Mutation(
        "reads-raise-on-a-non-transient-error",
        "wal/sync/reads.py",
        "a read that fails for a bug or bad SQL raises; only an outage falls back to the kept"
        " state",
        "                    raise  # a bug, bad SQL, another database: never the kept state\n",
        "                    pass\n",
        (SR + "test_a_read_that_fails_for_a_bug_raises_and_never_answers_from_the_kept_state",),
        "reads",
    ),
    Mutation(
        "reads-refuse-another-database",
        "wal/sync/reads.py",
        "reads refuse while the database is not the log's (database.json)",
        "                self._check_database()  # another database's figures are never an answer\n",
        "                pass\n",
        ("tests/sync/test_wrong_database_reads.py::test_reads_refuse_while_the_database_is_not_the_logs",),
        "reads",
    ),
    Mutation(
        "check-arguments-before-the-log",
        "wal/sync/manager.py",
        "every argument of a critical call is checked against its column before the log is"
        " touched",
        "        self.check_arguments(operation, args, kwargs, idempotency_key)  # never durable if bad\n"
        "        entry = WALEntry.create(operation, args, kwargs, idempotency_key)\n"
        "        if idempotency_key is None:\n"
        "            return self._write_new(entry)\n",
        "        entry = WALEntry.create(operation, args, kwargs, idempotency_key)\n"
        "        if idempotency_key is None:\n"
        "            return self._write_new(entry)\n",
        ("tests/sync/test_bad_input.py::test_hostile_values_are_refused_before_the_log",),
        "database",
    ),
    Mutation(
        "keyed-write-async-holds-its-claim",
        "wal/sync/manager.py",
        "a keyed write_async holds its key until the entry is durable, even when cancelled",
        "            self._apply_executor(), self._write_keyed, entry, idempotency_key\n",
        "            self._apply_executor(), self._write_new, entry\n",
        (IK + "test_a_cancelled_keyed_write_async_then_retried_is_one_entry",),
        "database",
    ),
    Mutation(
        "keys-kept-beside-the-ledger",
        "wal/db/apply.py",
        "an applied entry's idempotency key is kept in the database beside the ledger",
        "                _insert_keys(conn, [(k, eid) for e, eid in todo if (k := _key(e)) is not None])\n",
        "                pass\n",
        (
            IK + "test_a_key_is_remembered_after_compaction_and_a_restart",
            IK + "test_a_key_in_the_log_twice_is_applied_once",
        ),
        "database",
    ),
)


# ---------------------------------------------------------------------------- checking


def _test_exists(root: Path, test_id: str) -> bool:
    path, _, rest = test_id.partition("::")
    name = rest.split("[", 1)[0]
    f = root / path
    return f.is_file() and f"def {name}(" in f.read_text()


def stale(root: Path = ROOT, mutations: tuple[Mutation, ...] = MUTATIONS) -> list[str]:
    """Why the table no longer fits the code (empty: it fits)."""
    problems = []
    ids = [m.id for m in mutations]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"mutation id {dup!r} is used twice")
    for m in mutations:
        f = root / m.file
        if not f.is_file():
            problems.append(f"{m.id}: file {m.file} does not exist -- the table is stale")
            continue
        n = f.read_text().count(m.old)
        if n == 0:
            problems.append(f"{m.id}: snippet not found in {m.file} -- the table is stale")
        elif n > 1:
            problems.append(f"{m.id}: snippet found {n} times in {m.file}; make it unique")
        if m.old == m.new:
            problems.append(f"{m.id}: the mutation changes nothing")
        if not m.tests:
            problems.append(f"{m.id}: no test named")
        for t in m.tests:
            if not _test_exists(root, t):
                problems.append(f"{m.id}: test {t} does not exist -- the table is stale")
    return problems


# ---------------------------------------------------------------------------- running


@dataclass
class Outcome:
    id: str
    outcome: str  # killed | survived | error
    seconds: float
    detail: str = ""
    tests: list[str] = field(default_factory=list)


def _copy_repository(src: Path, dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        s = src / rel
        if not s.is_file():  # deleted in the work tree
            continue
        d = dest / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d)


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _pytest(copy: Path, tests: list[str], timeout: float) -> tuple[int, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, time.monotonic() - t0, f"no result after {timeout:.0f} s"
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    failed = [ln.split(" - ")[0].split("::", 1)[-1] for ln in lines if ln.startswith("FAILED ")]
    last = lines[-1] if lines else ""
    detail = f"{len(failed)} failed: " + ", ".join(failed) if failed else last
    return p.returncode, time.monotonic() - t0, detail[:600]


def _check_import(copy: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import wal; print(wal.__file__)"],
        cwd=copy,
        env=_env(copy),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        sys.exit(f"the copy imports wal from {out}, not from {copy}: cannot mutate it")


def run(selected: list[Mutation], timeout: float, keep: bool) -> tuple[list[Outcome], float]:
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="atb-wal-mutation-"))
    copy = tmp / "repo"
    try:
        _copy_repository(ROOT, copy)
        _check_import(copy)
        baseline = sorted({t for m in selected for t in m.tests})
        print(f"baseline: {len(baseline)} tests, unmutated ...", flush=True)
        rc, secs, detail = _pytest(copy, baseline, timeout * 2)
        if rc != 0:
            sys.exit(f"the baseline fails (exit {rc}, {secs:.0f} s): {detail}\nfix it first")
        print(f"baseline: passed in {secs:.1f} s", flush=True)
        results = []
        for k, m in enumerate(selected, 1):
            target = copy / m.file
            original = target.read_text()
            if original.count(m.old) != 1:  # checked before; guards a mutation of the copy
                sys.exit(f"{m.id}: snippet not found in {m.file} -- the table is stale")
            target.write_text(original.replace(m.old, m.new, 1))
            try:
                rc, secs, detail = _pytest(copy, list(m.tests), timeout)
            finally:
                target.write_text(original)
            if rc == 1 or rc == -1:
                outcome = "killed"
            elif rc == 0:
                outcome = "survived"
                detail = "every named test passed"
            else:
                outcome = "error"
            results.append(Outcome(m.id, outcome, round(secs, 1), detail, list(m.tests)))
            print(f"[{k}/{len(selected)}] {m.id}: {outcome} ({secs:.1f} s) {detail}", flush=True)
        return results, time.monotonic() - t_start
    finally:
        if keep:
            print(f"kept the copy in {copy}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def markdown(results: list[Outcome], seconds: float, when: str) -> str:
    by_id = {r.id: r for r in results}
    out = [
        f"Run {when}: {sum(r.outcome == 'killed' for r in results)} of {len(results)} "
        f"mutations killed, in {seconds / 60:.1f} min "
        "(`python tests/mutation/run.py`).",
        "",
        "| area | durability step | mutation (file) | the test that fails without it | outcome |",
        "|---|---|---|---|---|",
    ]
    for m in MUTATIONS:
        r = by_id.get(m.id)
        if r is None:
            continue
        tests = "<br>".join(
            f"`{t.split('::', 1)[0].removeprefix('tests/')}::{t.split('::', 1)[1]}`"
            for t in m.tests
        )
        out.append(
            f"| {m.area} | {m.step} | `{m.id}` (`{m.file}`) | {tests} "
            f"| {r.outcome} ({r.seconds:.0f} s) |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="ID", help="run these only")
    ap.add_argument("--list", action="store_true", help="print the table and exit")
    ap.add_argument("--check", action="store_true", help="only check the table is not stale")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutation (900)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--markdown", type=Path, help="write the results table here")
    ap.add_argument("--keep", action="store_true", help="keep the mutated copy's directory")
    ap.add_argument("--render", type=Path, metavar="JSON", help="print --json results as Markdown")
    args = ap.parse_args(argv)

    if args.render:
        doc = json.loads(args.render.read_text())
        print(markdown([Outcome(**r) for r in doc["results"]], doc["seconds"], doc["when"]), end="")
        return 0

    if args.list:
        for m in MUTATIONS:
            print(f"{m.id:36} {m.file:24} {m.step}")
            for t in m.tests:
                print(f"{'':36} {t}")
        return 0
    problems = stale()
    if problems:
        print("THE MUTATION TABLE IS STALE (tests/mutation/run.py):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    if args.check:
        print(f"the table fits the code: {len(MUTATIONS)} mutations")
        return 0
    known = {m.id for m in MUTATIONS}
    unknown = [i for i in args.only if i not in known]
    if unknown:
        print(f"unknown mutation ids: {unknown}", file=sys.stderr)
        return 2
    selected = [m for m in MUTATIONS if not args.only or m.id in args.only]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results, seconds = run(selected, args.timeout, args.keep)
    killed = sum(r.outcome == "killed" for r in results)
    print(f"\n{killed} of {len(results)} mutations killed in {seconds:.0f} s ({when})")
    for r in results:
        if r.outcome != "killed":
            print(f"  {r.outcome.upper()}: {r.id}: {r.detail}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "when": when,
                    "seconds": round(seconds, 1),
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
            + "\n"
        )
    if args.markdown:
        args.markdown.write_text(markdown(results, seconds, when))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
