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
OPS = "tests/cli/test_operator.py::"
PTEST = "tests/log/test_prealloc.py::"
MGR = "tests/orders/test_manager_decisions.py::"
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


# ---------------------------------------------------------------------------- the reconciler's decisions
RP = "tests/orders/test_reconcile_protect.py::"
RX = "tests/orders/test_reconcile_exits.py::"
RC = "tests/orders/test_reconcile.py::"
AU = "tests/orders/test_audit.py::"
AC = "tests/orders/test_audit_content.py::"

RECONCILER: tuple[Mutation, ...] = (
    Mutation(
        "reconciler-lookup-window",
        "wal/orders/reconcile.py",
        "a reconciler lookup that finds nothing inside the broker's visibility window waits it out and looks again",
        "            while bo is None and left > 0:  # the broker may not show it yet: wait its window out\n",
        "            while False:\n",
        (RP + "test_a_reconciler_lookup_honours_the_visibility_window",),
        "reconciler",
    ),
    Mutation(
        "reconciler-failed-lookup-is-not-not-found",
        "wal/orders/reconcile.py",
        'a failed reconciler lookup raises (halted), never taken for "not found" (SUBMIT_FAILED)',
        '            bo = await self._lookup(cid)  # a failed lookup raises: never taken for "not found"\n',
        "            try:\n                bo = await self._lookup(cid)\n            except ReconciliationFatalError:\n                bo = None\n",
        (RP + "test_a_failed_reconciler_lookup_is_never_not_found",),
        "reconciler",
    ),
    Mutation(
        "adopted-stop-not-larger-than-position",
        "wal/orders/reconcile.py",
        "an unknown stop is adopted only if it is no larger than the position it protects",
        "            if protects(bo, pos) and remaining(bo) <= abs(pos) and bo.symbol not in adopted_for:\n",
        "            if protects(bo, pos) and bo.symbol not in adopted_for:\n",
        (RP + "test_an_unknown_stop_larger_than_its_position_is_not_adopted",),
        "reconciler",
    ),
    Mutation(
        "emergency-stop-counts-stops-in-place",
        "wal/orders/stops.py",
        "an emergency stop covers only what the stops already in place leave",
        "        need = size - cover\n",
        "        need = size\n",
        (RP + "test_an_emergency_stop_covers_only_what_the_stops_in_place_leave",),
        "reconciler",
    ),
    Mutation(
        "half-written-orphan-completed",
        "wal/orders/stops.py",
        "a half-written orphan order is completed, not skipped for a second one",
        "            if (\n                not is_final(existing.state)\n                and existing.filled_quantity < existing.intent.quantity\n                and await is_synthetic(om.journal, existing)\n            ):\n                break\n",
        "            if False:\n                break\n",
        (RP + "test_a_half_written_orphan_is_completed_not_doubled",),
        "reconciler",
    ),
    Mutation(
        "emergency-stop-price-side",
        "wal/orders/reconcile_model.py",
        "a long's emergency stop is below its entry (a short's above)",
        '        return table.round_stop(symbol, entry * (1 - pct), "sell")\n',
        '        return table.round_stop(symbol, entry * (1 + pct), "sell")\n',
        (
            RP + "test_an_emergency_stop_price_is_on_the_tick_beyond_the_entry",
            RC + "test_every_position_gets_one_emergency_stop_and_a_second_run_is_all_zeros",
        ),
        "reconciler",
    ),
    Mutation(
        "stop-rounded-away-from-market",
        "wal/orders/ticks.py",
        "a stop price is rounded to its tick away from the market (sell stop down, buy stop up)",
        '        return self.round(symbol, price, ROUND_FLOOR if side == "sell" else ROUND_CEILING)\n',
        '        return self.round(symbol, price, ROUND_CEILING if side == "sell" else ROUND_FLOOR)\n',
        (
            RP + "test_default_ticks_follow_the_equity_rule",
            RP + "test_an_emergency_stop_price_is_on_the_tick_beyond_the_entry",
        ),
        "reconciler",
    ),
    Mutation(
        "unknown-stop-resolved-by-lookup",
        "wal/orders/stops.py",
        "a protective order of unknown outcome is resolved by lookup before anything else is sent",
        "            order = await self._resolve(order)\n",
        "            pass\n",
        (RP + "test_an_unknown_emergency_stop_is_looked_up_never_doubled",),
        "reconciler",
    ),
    Mutation(
        "only-refusals-count",
        "wal/orders/stops.py",
        "only definite refusals count toward the market close (a stop not at the broker does not)",
        '            c.errors.append(f"emergency stop {cid} for {bp.symbol}: not at the broker")\n',
        "            refusals += 1\n",
        (RP + "test_only_definite_refusals_count_toward_the_market_close",),
        "reconciler",
    ),
    Mutation(
        "wrong-side-stops-cancelled",
        "wal/orders/stops.py",
        "every active stop that would open or grow a position is cancelled (user stops too)",
        "        for bo in [b for b in stops if not protects(b, pos)]:\n",
        "        for bo in []:\n",
        (
            RP + "test_a_stop_without_a_position_is_cancelled_with_its_reason",
            RP + "test_a_stop_that_would_grow_the_position_is_cancelled",
        ),
        "reconciler",
    ),
    Mutation(
        "over-cover-resized",
        "wal/orders/stops.py",
        "stops covering more than the position are resized (kept only while they fit)",
        "            if cover + remaining(b) <= size:\n",
        "            if True:\n",
        (RP + "test_over_cover_is_resized_never_left",),
        "reconciler",
    ),
    Mutation(
        "run-ends-with-the-end-check",
        "wal/orders/reconcile.py",
        "a run succeeds only if the broker's state, read at its end, matches the journal and is covered exactly",
        "                problems = await self._end_check()  # success is the broker's state, checked\n",
        "                problems = []\n",
        (
            RP
            + "test_an_emergency_stop_filled_at_once_with_its_fill_fetch_failing_is_booked_in_the_run",
            RP + "test_a_book_that_cannot_be_made_exact_is_fatal_and_halted",
        ),
        "reconciler",
    ),
    Mutation(
        "broker-evidence-beats-a-final-state",
        "wal/orders/reconcile.py",
        "a broker order under a journal client id whose journal state is final is still settled",
        "            if final is None or not is_final(final.state):\n",
        "            if True:\n",
        (
            RP + "test_a_live_order_under_a_final_journal_state_is_tracked_and_its_fills_booked",
            RP + "test_a_fill_lost_behind_a_cancel_is_booked_to_its_order_not_an_orphan",
        ),
        "reconciler",
    ),
    Mutation(
        "never-final-while-fills-differ",
        "wal/orders/reconcile.py",
        "an order is never set final while its booked fills differ from the broker's filled quantity",
        "                return  # never final while the booked fills differ from the broker's figure\n",
        "                pass\n",
        (RC + "test_a_filled_report_without_executions_is_critical_never_final_and_fatal",),
        "reconciler",
    ),
    Mutation(
        "fills-fetched-again-when-short",
        "wal/orders/reconcile.py",
        "executions that do not explain the broker's filled quantity are fetched again for the order",
        "        if sum((f.quantity for f in execs), Decimal(0)) < bo.filled_quantity - booked_qty:\n",
        "        if False:\n",
        (RP + "test_executions_the_fetch_missed_are_fetched_again_for_their_order",),
        "reconciler",
    ),
    Mutation(
        "final-journal-order-filled-at-broker-booked",
        "wal/orders/fills.py",
        "a final journal order the broker filled is reopened and its executions booked to it",
        "        if is_final(order.state):  # an execution of an order the journal holds final\n",
        "        if False:  # an execution of an order the journal holds final\n",
        (
            RP + "test_a_filled_order_the_journal_failed_is_booked_to_it",
            RP + "test_a_live_partly_filled_order_under_a_final_journal_state_takes_the_brokers_id",
            MGR + "test_an_execution_of_an_order_the_journal_holds_final_is_booked_to_it",
        ),
        "reconciler",
    ),
    Mutation(
        "no-orphan-for-a-known-client-id",
        "wal/orders/stops.py",
        "a position difference made of a journal order's unbooked executions gets no synthetic orphan",
        "            if sym in c.unsettled:  # the difference is an order's unbooked executions\n",
        "            if False:\n",
        (RP + "test_executions_the_broker_cannot_list_are_never_an_orphan",),
        "reconciler",
    ),
    Mutation(
        "unknown-stop-lookup-window",
        "wal/orders/stops.py",
        "an unknown stop is given up (submit_failed) only after the broker's visibility window",
        "            if left <= 0:\n",
        "            if True:\n",
        (RP + "test_an_unknown_stop_is_not_given_up_inside_the_visibility_window",),
        "reconciler",
    ),
    Mutation(
        "status-exact-cover",
        "cli/commands/orders.py",
        "atb orders status calls a position protected only when its stops cover it exactly",
        '                "protected": cover == abs(q),  # exact: more would flip the position\n',
        '                "protected": cover >= abs(q),\n',
        (RP + "test_status_reports_over_cover_and_stray_stops",),
        "reconciler",
    ),
    Mutation(
        "audit-hash-covers-prev-hash",
        "wal/db/order_schema.py",
        "a row's hash covers the previous row's hash (the chain)",
        '    return hashlib.sha256(body + prev_hash.encode("ascii")).hexdigest()\n',
        "    return hashlib.sha256(body).hexdigest()\n",
        (AU + "test_a_rows_hash_covers_the_previous_hash_and_every_field",),
        "audit",
    ),
    Mutation(
        "audit-hash-covers-broker-order-id",
        "wal/db/order_schema.py",
        "a row's hash covers every field, the broker order id included",
        '        broker_order_id=event.get("broker_order_id"),\n',
        "        broker_order_id=None,\n",
        (
            AU + "test_a_rows_hash_covers_the_previous_hash_and_every_field",
            AU + "test_a_changed_broker_order_id_is_named_by_seq",
        ),
        "audit",
    ),
    Mutation(
        "verify-reads-every-batch",
        "wal/orders/audit.py",
        "verify reads the chain batch after batch to its end",
        "        rows = db.get_audit_rows(after=after, limit=_BATCH)\n",
        "        rows = db.get_audit_rows(after=after, limit=_BATCH) if after == 0 else []\n",
        (AU + "test_verify_reads_past_its_first_batch",),
        "audit",
    ),
    Mutation(
        "anchor-checked-by-hash",
        "wal/orders/audit.py",
        "an anchor is checked by its hash, not only by its presence",
        "        if found != h:\n",
        "        if False:\n",
        (AU + "test_an_anchor_is_checked_by_its_hash_not_its_presence",),
        "audit",
    ),
    Mutation(
        "digest-compared",
        "wal/orders/audit.py",
        "verify compares the digest file with the rows and anchors (a rewrite of both tables)",
        "        problems += _check_digest(entries, anchors, hashes, last)\n",
        "        pass\n",
        (AU + "test_the_digest_file_catches_a_rewrite_of_both_tables",),
        "audit",
    ),
    Mutation(
        "digest-fsync",
        "wal/orders/audit.py",
        "each digest line is fsynced before the anchor write returns",
        "        os.fsync(fd)  # the anchor is on disk before the call returns\n",
        "        pass\n",
        (AU + "test_the_digest_is_appended_fsynced_and_refuses_a_symlink",),
        "audit",
    ),
    Mutation(
        "digest-directory-fsync",
        "wal/orders/audit.py",
        "a new digest file's name is fsynced in its directory",
        "            os.fsync(dfd)  # the new file's name survives a power loss\n",
        "            pass\n",
        (AU + "test_the_digest_is_appended_fsynced_and_refuses_a_symlink",),
        "audit",
    ),
    Mutation(
        "audit-hash-covers-content",
        "wal/db/order_schema.py",
        "a row's hash covers its content (chain format 2: the order's intent, the fill)",
        '        content=event.get("content"),\n',
        "        content=None,\n",
        (
            AU + "test_a_rows_hash_covers_the_previous_hash_and_every_field",
            AC + "test_stripping_an_events_content_breaks_the_chain",
        ),
        "audit",
    ),
    Mutation(
        "journal-carries-content",
        "wal/orders/journal.py",
        "the journal gives the created and fill events their content (hashed, in the log entry)",
        "                content = event_content(op, kwargs)\n",
        "                content = None\n",
        (AC + "test_the_content_is_what_the_log_entry_carried",),
        "audit",
    ),
    Mutation(
        "verify-checks-orders-and-fills",
        "wal/orders/audit.py",
        "verify checks the orders and fills tables against the hashed events",
        "    problems += contents.problems\n",
        "    pass\n",
        (AC + "test_a_changed_fill_price_is_named", AC + "test_a_deleted_order_row_is_named"),
        "audit",
    ),
    Mutation(
        "fill-checked-against-its-latest-event",
        "wal/orders/audit_contents.py",
        "a corrected fill's row is checked against its correction's event, not the first report",
        '            latest[str(doc.get("execution_key"))] = (e, doc)\n',
        '            latest.setdefault(str(doc.get("execution_key")), (e, doc))\n',
        (AC + "test_corrections_cancels_and_reasons_verify_clean",),
        "audit",
    ),
)

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
        "            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "        except BlockingIOError:\n            os.close(dir_fd)\n",
        "            pass\n        except BlockingIOError:\n            os.close(dir_fd)\n",
        (
            "tests/log/test_hardening.py::test_a_deleted_lock_lets_no_second_writer_in_and_halts_the_first",
        ),
    ),
    Mutation(
        "new-log-directory-fsync",
        "wal/log/storage.py",
        "a new log directory's name is fsynced in its parent",
        "                self._fs.fsync_dir(str(new.parent))\n",
        "                pass\n",
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
        # a segment that grows (preallocate="off"): its name over an unsynced header; a
        # prepared one (every segment of a preallocated log): a named segment of zeros
        (NAMES + "[rotation-after-lazy-marks]", EVERY_OP + "[rotation]"),
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
        "prealloc-first-segment",
        "wal/log/segwriter.py",
        "a new log's first segment is given its space when created (no file size per fdatasync)",
        "        prepared = self._prealloc.obtain(None if rotation else self._first_segment_bytes())\n",
        "        prepared = self._prealloc.obtain() if rotation else self._prealloc.take()\n",
        (
            PTEST + "test_a_new_logs_first_segment_is_given_its_space_and_moves_to_a_whole_one",
            "tests/log/test_syscalls.py::test_a_preallocated_rotation_makes_the_real_system_calls",
        ),
        "preallocation",
    ),
    Mutation(
        "prealloc-first-segment-switches",
        "wal/log/segwriter.py",
        "a first segment given less than a whole segment moves to a prepared one at the switch",
        "        self._seg_prealloc = self._alloc_end >= self.options.max_segment_bytes\n",
        "        self._seg_prealloc = prepared\n",
        (PTEST + "test_a_new_logs_first_segment_is_given_its_space_and_moves_to_a_whole_one",),
        "preallocation",
    ),
    Mutation(
        "recovery-zeros-are-the-end",
        "wal/log/recovery.py",
        "the zeros of a preallocated last segment are the end of the log (no defect, not cut)",
        "            rep.spare_bytes += size - stop\n            size = stop\n",
        "            pass\n",
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
        "wal/log/fileops.py",
        "a new manifest (any small file, write_file_atomic) is fdatasynced before its rename",
        "            fs.fdatasync(fd)  # never rename an unsynced file over the old one\n",
        "            pass\n",
        (
            ONLY_COVER + "[compaction-of-a-front-segment]",
            PL + "test_no_name_reaches_the_disk_before_its_data",
        ),
        "compaction",
    ),
    Mutation(
        "manifest-directory-fsync",
        "wal/log/fileops.py",
        "the manifest's rename is made durable (directory fsync) before a segment is unlinked",
        "        fs.fsync_dir(os.fspath(directory))  # the rename is durable only after the directory fsync\n",
        "        pass\n",
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
        "                if tail.torn:\n",
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
    Mutation(
        "fastindex-tags-read-back",
        "wal/log/fastindex.py",
        "a record whose value tag the codec cannot read is a defect (bulk path at open)",
        "            if any(bad):\n                return False\n",
        "            pass\n",
        ("tests/log/test_fastindex.py::test_forged_records[middle-an unknown tag]",),
        "recovery",
    ),
    Mutation(
        "fastindex-timestamps-parse",
        "wal/log/fastindex.py",
        "a record whose timestamp does not parse is a defect (bulk path at open)",
        "        for col in times:\n            _parse_all(datetime.fromisoformat, col)\n",
        "        pass\n",
        ("tests/log/test_fastindex.py::test_forged_records[middle-created_at not a date]",),
        "recovery",
    ),
    Mutation(
        "repair-keeps-intact-segments-open",
        "wal/log/repair.py",
        "repair leaves an intact sealed segment as it is (a fixed range would hide a later gap)",
        "        elif not seg.compacted and whole:\n",
        "        elif False:\n",
        (
            "tests/log/test_repair.py::"
            "test_repair_leaves_intact_segments_alone_and_their_gaps_detected",
        ),
        "recovery",
    ),
    Mutation(
        "tear-bound",
        "wal/log/segment.py",
        "good records after a hole are a torn tail only within the tear bound (else acknowledged)",
        "    torn = hole and (bound is None or span <= bound)\n",
        "    torn = hole\n",
        (
            "tests/log/test_tear_bound.py::test_tolerate_tail_keeps_the_bytes_warns_and_status_exits_1",
        ),
        "recovery",
    ),
    Mutation(
        "writer-tear-bound",
        "wal/log/segwriter.py",
        "the writer fdatasyncs before its unsynced bytes would go past the tear bound",
        "            # what is written so far is durable before more goes past the tear bound\n"
        "            self._fs.fdatasync(self._fd)\n",
        "            pass\n",
        (
            "tests/log/test_tear_bound.py::test_the_writer_never_leaves_more_than_the_bound_unsynced",
        ),
        "write path",
    ),
    Mutation(
        "never-delete-pending-front",
        "wal/log/recovery.py",
        "an open never deletes a segment before the manifest that holds an entry not completed",
        "    if unfinished:\n        # never delete a segment that holds an entry not yet applied\n",
        "    if False:\n        # never delete a segment that holds an entry not yet applied\n",
        (
            "tests/log/test_manifest.py::test_a_manifest_naming_a_later_segment_never_deletes_pending_entries",
        ),
        "recovery",
    ),
    Mutation(
        "validator-bool-is-no-lsn",
        "wal/log/validate.py",
        "one validator: a bool is not an LSN (open, its slow path and verify agree)",
        "    return lsn if type(lsn) is int and lsn >= 1 else None\n",
        "    return lsn if isinstance(lsn, int) and lsn >= 1 else None\n",
        (
            "tests/log/test_validate.py::test_fast_path_slow_path_and_verify_agree_on_every_mutated_record",
            "tests/log/test_validate.py::test_bools_are_not_ints_anywhere",
        ),
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
        "                    fs.fdatasync(fd)  # the backup must be on disk before the original is rewritten\n",
        "                    pass\n",
        (SYS + "test_repair_makes_the_real_system_calls",),
        "repair",
    ),
    Mutation(
        "repair-backup-directory-fsync",
        "wal/log/repair.py",
        "repair: the backup directory is fsynced (the copies' names)",
        "        fs.fsync_dir(str(partial))  # the copies' names live in the backup directory: persist them\n",
        "        pass\n",
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
        "                fs.fdatasync(fd)  # never rename an unsynced file over a segment\n",
        "                pass\n",
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
        "order-event-seq-follows-last",
        "wal/db/orders.py",
        "an order event is applied only as its order's last_seq + 1 (no gap, no repeat)",
        '    orders.c.last_seq == sa.bindparam("b_prev"),\n',
        "    sa.true(),\n",
        ("tests/db/test_database.py::test_an_order_event_must_follow_the_orders_last_one",),
        "database",
    ),
    Mutation(
        "position-changes-only-while-open",
        "wal/db/operations.py",
        "a position is updated or closed only while it is open",
        '    positions.c.status == "open",\n',
        "    sa.true(),\n",
        ("tests/db/test_database.py::test_unknown_or_closed_positions_raise",),
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
    Mutation(
        "pg-synchronous-commit-forced",
        "wal/db/engine.py",
        "PostgreSQL sessions commit with synchronous_commit=on whatever the server, database or"
        " role says: a COMPLETED mark follows a COMMIT that is on disk",
        '        durable = "-c synchronous_commit=on"\n',
        '        durable = ""\n',
        (
            "tests/sync/test_apply_behind.py::test_postgres_sessions_commit_synchronously_whatever_the_database_says",
        ),
        "database",
    ),
    Mutation(
        "reapply-entries-the-database-lost",
        "wal/sync/apply.py",
        "at start, COMPLETED entries whose ledger rows the database lost (a backup, a lagging"
        " replica) are applied again",
        "        missing = [e for e in chunk if str(e.entry_id) not in held]\n",
        "        missing: list[WALEntry] = []\n",
        (
            "tests/sync/test_database_power_loss.py::test_a_database_that_lost_its_last_commits_gets_them_back_from_the_log",
        ),
        "database",
    ),
    Mutation(
        "apply-behind-wakes-the-sync-thread",
        "wal/sync/manager.py",
        "WAL_APPLY=behind: a durable write wakes the sync thread, which applies it at once (no"
        " WAL_SYNC_INTERVAL wait)",
        "            self._nudge()\n"
        "            return self._receipt(e, WALEntryStatus.PENDING)\n"
        "        return self._apply_through(e)\n",
        "            return self._receipt(e, WALEntryStatus.PENDING)\n"
        "        return self._apply_through(e)\n",
        (
            "tests/sync/test_apply_behind.py::test_a_call_returns_once_durable_and_the_sync_thread_applies_it_at_once",
        ),
        "database",
    ),
    # ------------------------------------------------------------------ reads include pending
    Mutation(
        "reads-first-pause-waits",
        "wal/sync/overlay.py",
        "between a batch's steps the sync thread waits for the read in progress (reads first)",
        "                self._cond.wait_for(lambda: not self._readers, timeout)\n",
        "                pass\n",
        (
            "tests/sync/test_reads_first.py::test_the_pause_waits_for_the_read_in_progress_and_not_without_one",
        ),
        "reads",
    ),
    Mutation(
        "reads-first-applier-steps-aside",
        "wal/sync/apply.py",
        "the applier calls the overlay's pause between a batch's steps",
        "        for pause in self.step_aside:\n",
        "        for pause in ():\n",
        (
            "tests/sync/test_reads_first.py::test_the_sync_thread_records_a_batch_only_after_the_read_in_progress",
        ),
        "reads",
    ),
    Mutation(
        "ledger-probe-uses-the-index",
        "wal/db/apply.py",
        "PostgreSQL's ledger question probes the primary key per id, never scans the ledger",
        '        f"SELECT w.{col} FROM unnest(%b::text[]) AS asked(id) CROSS JOIN LATERAL "\n'
        '        f"(SELECT {col} FROM {table} WHERE {col} = asked.id LIMIT 1) AS w"\n',
        '        f"SELECT {col} AS asked FROM {table} WHERE {col} = ANY(%b::text[])"\n',
        ("tests/db/test_database.py::test_pg_ledger_question_probes_the_primary_key",),
        "reads",
    ),
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
        "new-log-counts-written-records",
        "wal/log/storage.py",
        'a new log stays new while an append is in flight (no false "handed entries before")',
        "            return self._base == 1 and self._written_lsn == pending\n",
        "            return self._base == 1 and self._next_lsn - 1 == pending\n",
        ("tests/sync/test_identity.py::test_a_new_log_with_an_append_in_flight_is_still_new",),
        "operator",
    ),
    Mutation(
        "halt-checked-before-submit",
        "wal/orders/manager.py",
        "the operator's kill switch (<WAL_DIR>/HALT) is read before every new order goes out",
        "        if not protective and (halt := operator_halt(self.db)) is not None:  # `atb orders halt`\n",
        "        if False:\n",
        (OPS + "test_halt_stops_new_orders_of_a_running_engine_durably",),
        "operator",
    ),
    Mutation(
        "no-log-in-an-empty-directory",
        "cli/_common.py",
        "no command starts a log in an empty directory (a mistyped --dir): no log at ..., exit 2",
        "        if not has_log(d):\n",
        "        if False:\n",
        (OPS + "test_no_wal_command_starts_a_log_in_an_empty_directory",),
        "operator",
    ),
    Mutation(
        "orders-reads-take-no-write-lock",
        "wal/db/connection.py",
        "a read-only reader (atb orders) never creates the schema: no BEGIN IMMEDIATE for a read",
        "        if self._schema_ready or self.read_only:\n",
        "        if self._schema_ready:\n",
        (OPS + "test_orders_reads_never_take_the_sqlite_write_lock",),
        "operator",
    ),
    Mutation(
        "cli-runs-leave-the-engines-view",
        "cli/commands/orders_act.py",
        "a CLI run never writes the engine's manager-status.json",
        "            manager = WALManager(storage, db, config, publish_status=False)\n",
        "            manager = WALManager(storage, db, config, publish_status=True)\n",
        (OPS + "test_reconcile_never_writes_the_engines_status_file",),
        "operator",
    ),
    # ------------------------------------------------------------------ orders: the manager's decisions
    # (issue 19: not durability steps but decisions no test noticed when broken)
    Mutation(
        "start-failed-lookup-not-a-miss",
        "wal/orders/manager.py",
        'start(): a failed lookup (5xx, timeout) is never taken for "not found"',
        '                log.warning("recovery lookup of %s failed: %s", cid, why(exc))\n'
        "                continue\n",
        '                log.warning("recovery lookup of %s failed: %s", cid, why(exc))\n'
        "                bo = None\n",
        (
            MGR + "test_a_failed_lookup_at_start_is_never_taken_for_not_found",
            MGR + "test_a_failed_lookup_of_a_pending_order_is_not_not_found",
        ),
        "orders",
    ),
    Mutation(
        "submit-fetches-its-own-fills",
        "wal/orders/fills.py",
        "a submit asks a broker that can list one order's fills for its order's own",
        "        if len(orders) == 1 and isinstance(broker, OrderFillsLookup):\n",
        "        if False:\n",
        (
            "tests/orders/test_units.py::"
            "test_a_submit_books_its_fills_from_its_own_order_not_every_recent_fill",
        ),
        "orders",
    ),
    Mutation(
        "start-visibility-window",
        "wal/orders/manager.py",
        'start(): a "not found" counts only if asked after the broker\'s visibility window',
        "            if asked >= deadline:\n",
        "            if True:\n",
        (MGR + "test_start_waits_the_visibility_window_before_submit_failed",),
        "orders",
    ),
    Mutation(
        "start-window-from-last-send",
        "wal/orders/manager.py",
        "start(): the visibility window runs from the last send, not the first",
        "        last = max(sends)\n",
        "        last = min(sends)\n",
        (MGR + "test_the_window_is_measured_from_the_last_send_not_the_first",),
        "orders",
    ),
    Mutation(
        "duplicate-answer-journaled",
        "wal/orders/manager.py",
        'a "duplicate client id" answer is journaled before the lookups (it exists)',
        "            order = await self._transition(\n"
        "                order, EventKind.UNKNOWN, _S.UNKNOWN, reason=DUPLICATE_ANSWER\n"
        "            )\n"
        "            return await self._chase(order, resend=False)\n",
        "            return await self._chase(order, resend=False)\n",
        (MGR + "test_retries_exhausted_after_a_duplicate_answer_never_end_final",),
        "orders",
    ),
    Mutation(
        "duplicate-answer-never-submit-failed",
        "wal/orders/manager.py",
        'start(): an order the broker answered "duplicate" for is never SUBMIT_FAILED',
        "            if exists:  # the broker said it has it: absence proves nothing\n",
        "            if False:  # the broker said it has it: absence proves nothing\n",
        (MGR + "test_retries_exhausted_after_a_duplicate_answer_never_end_final",),
        "orders",
    ),
    Mutation(
        "retries-exhausted-not-final",
        "wal/orders/manager.py",
        "retries used up (after a duplicate answer too) leave the order UNKNOWN, never final",
        "        if order.state is _S.SUBMITTING:  # a resend's outcome is not known either\n"
        "            order = await self._transition(\n"
        '                order, EventKind.UNKNOWN, _S.UNKNOWN, reason="retries exhausted"\n'
        "            )\n",
        "        if True:\n"
        "            order = await self._transition(\n"
        '                order, EventKind.SUBMIT_FAILED, _S.SUBMIT_FAILED, reason="retries exhausted"\n'
        "            )\n",
        (MGR + "test_retries_exhausted_after_a_duplicate_answer_never_end_final",),
        "orders",
    ),
    Mutation(
        "start-rechecks-submit-failed",
        "wal/orders/manager.py",
        "start(): an order SUBMIT_FAILED by absence is looked up again (the broker's word wins)",
        "        for cid in [c for c in self._absent if c in self._final_at_start]:\n",
        "        for cid in []:\n",
        (MGR + "test_start_takes_back_an_order_journaled_submit_failed_that_the_broker_holds",),
        "orders",
    ),
    Mutation(
        "final-only-when-fills-match",
        "wal/orders/fills.py",
        "an order reaches a final state only when its booked fills equal the broker's",
        "        if order.filled_quantity != bo.filled_quantity:\n            problem = (\n",
        "        if False:\n            problem = (\n",
        (MGR + "test_an_order_whose_fills_cannot_be_fetched_never_reaches_a_final_state",),
        "orders",
    ),
    Mutation(
        "fill-fetch-retried",
        "wal/orders/fills.py",
        "a failed fill fetch is retried (RetryPolicy) before an order is left unsettled",
        "        for attempt in range(max(1, self.retry.max_attempts)):\n",
        "        for attempt in range(1):\n",
        (MGR + "test_a_fill_behind_a_cancel_is_booked_to_its_order_before_it_is_cancelled",),
        "orders",
    ),
    Mutation(
        "broker-wins-over-a-final-state",
        "wal/orders/fills.py",
        "a lookup that contradicts a final journal state reopens the order (forced)",
        "            order = await self._reopen(order, bo)  # broker evidence wins over a final state\n",
        "            return order\n",
        (
            MGR + "test_start_takes_back_an_order_journaled_submit_failed_that_the_broker_holds",
            MGR + "test_a_lookup_corrects_a_final_journal_state_the_broker_contradicts",
        ),
        "orders",
    ),
    Mutation(
        "execution-of-a-final-order-booked",
        "wal/orders/fills.py",
        "an execution of an order the journal holds final is booked to it (never an orphan)",
        "        if is_final(order.state):  # an execution of an order the journal holds final\n",
        "        if False:  # an execution of an order the journal holds final\n",
        (
            MGR + "test_an_execution_of_an_order_the_journal_holds_final_is_booked_to_it",
            MGR + "test_poll_fills_books_an_execution_of_an_order_journaled_submit_failed",
        ),
        "orders",
    ),
    Mutation(
        "cancel-outcome-looked-up",
        "wal/orders/manager.py",
        "a cancel that times out or fails in transport is resolved by lookup, never raised",
        "                except Exception as exc:  # the broker may have cancelled: look it up\n",
        "                except BrokerRejectedError as exc:  # the broker may have cancelled: look it up\n",
        (
            MGR + "test_a_cancel_whose_answer_is_lost_is_resolved_by_lookup",
            MGR + "test_over_http_a_cancel_whose_reply_times_out_is_resolved_by_lookup",
        ),
        "orders",
    ),
    Mutation(
        "cancel-unknown-looked-up-first",
        "wal/orders/manager.py",
        "cancelling an UNKNOWN order looks it up first (nothing sent on a guess)",
        "            return await self._adopt(order, bo, EventKind.RECOVERED), bo, None\n",
        "            return order, bo, None\n",
        (MGR + "test_cancelling_an_unknown_order_looks_it_up_before_anything_is_sent",),
        "orders",
    ),
    Mutation(
        "cancel-to-the-looked-up-id",
        "wal/orders/manager.py",
        "a cancel goes to the broker id the lookup by client id reports, never the stored one (ids are reused)",
        "            bid = bo.broker_order_id  # the broker's id for this client id now, never the stored one\n",
        "            bid = order.broker_order_id or bo.broker_order_id\n",
        (
            "tests/orders/test_broker_id_reuse.py::test_cancel_goes_to_the_id_the_broker_reports_for_the_client_id",
        ),
        "orders",
    ),
    Mutation(
        "daily-loss-this-session",
        "wal/orders/fills.py",
        "the daily loss limit counts the losses realized in this session",
        '            self._book.add_pnl(fill.executed_at, c["pnl"])\n',
        "            pass\n",
        (MGR + "test_the_daily_loss_limit_counts_this_sessions_losses",),
        "orders",
    ),
    Mutation(
        "daily-loss-at-start",
        "wal/orders/base.py",
        "the daily loss limit counts today's losses of earlier sessions (loaded at start)",
        '                self._book.add_pnl(r["executed_at"], Decimal(str(r["pnl"])))\n',
        "                pass\n",
        (MGR + "test_the_daily_loss_limit_counts_this_sessions_losses",),
        "orders",
    ),
    Mutation(
        "risk-open-sells-are-sells",
        "wal/orders/manager.py",
        "the position limit counts open sells as sells, not buys",
        '                if o.intent.side == "buy":\n                    open_buys += o.remaining\n',
        "                if True:\n                    open_buys += o.remaining\n",
        (MGR + "test_open_sells_count_against_the_position_as_sells",),
        "orders",
    ),
    Mutation(
        "risk-open-sells-reserve-no-cash",
        "wal/orders/manager.py",
        "the balance check reserves cash for open buys only",
        '            if o.intent.side == "buy" and o.intent.account == intent.account:\n',
        "            if o.intent.account == intent.account:\n",
        (MGR + "test_open_sells_reserve_no_cash",),
        "orders",
    ),
    Mutation(
        "risk-submit-reserves",
        "wal/orders/manager.py",
        "a checked submit is reserved (an open order of every later check) before any await",
        "            self._reserved[intent.client_order_id] = Order(intent, _S.PENDING, last_seq=0)\n",
        "            pass\n",
        (
            "tests/orders/test_risk_worst_case.py::"
            + "test_two_submits_checked_at_once_never_both_pass_a_limit_only_one_fits",
        ),
        "orders",
    ),
    Mutation(
        "risk-open-buy-reference-price",
        "wal/orders/manager.py",
        "an open buy with no price of its own reserves at the price it was checked at",
        "                self._ref_price[intent.client_order_id] = price\n"
        "                self._last_price[intent.symbol] = price\n",
        "                pass\n",
        (
            "tests/orders/test_risk_worst_case.py::"
            + "test_an_open_market_buy_reserves_at_its_reference_price",
        ),
        "orders",
    ),
    Mutation(
        "fill-under-symbol-lock",
        "wal/orders/turns.py",
        "a symbol has one writer of fills: a fill that comes while its symbol's write is in flight waits for it",
        "        if key not in self._writers:\n",
        "        if True:\n",
        (
            "tests/orders/test_risk_worst_case.py::"
            + "test_a_fill_that_comes_while_its_symbols_write_is_in_flight_waits_for_it",
        ),
        "orders",
    ),
    Mutation(
        "fill-group-computes-in-turn",
        "wal/orders/fills.py",
        "the fills written together in one symbol are computed each from the position the one before it made",
        "            pos = new_pos\n",
        "            pass\n",
        (
            "tests/orders/test_risk_worst_case.py::"
            + "test_two_fills_in_one_symbol_never_compute_from_the_same_position",
            "tests/orders/test_risk_worst_case.py::"
            + "test_fills_of_one_symbol_at_once_share_writes_each_from_the_last_position",
        ),
        "orders",
    ),
    Mutation(
        "paper-change-holds-every-changed-order",
        "wal/orders/paper.py",
        "a paper broker's saved change holds every order that changed (a cancel too)",
        "            self._dirty.add(broker_order_id)\n",
        "            pass\n",
        (
            "tests/orders/test_paperstate.py::"
            + "test_every_kind_of_change_reads_back_from_the_changes_alone",
        ),
        "orders",
    ),
    Mutation(
        "paper-changes-the-snapshot-holds-skipped",
        "wal/orders/paperstate.py",
        "changes a paper snapshot already holds are not applied again on reading",
        '            if rec["through"] <= through:\n',
        "            if False:\n",
        (
            "tests/orders/test_paperstate.py::"
            + "test_changes_the_snapshot_already_holds_are_not_applied_twice",
        ),
        "orders",
    ),
    Mutation(
        "paper-save-after-failed-write-is-whole",
        "wal/orders/paperstate.py",
        "after a failed write of a paper change, the next save is the whole state",
        "            self.must_snapshot = True  # a torn or lost line: the next save is whole\n",
        "            pass\n",
        (
            "tests/orders/test_paperstate.py::"
            + "test_after_a_failed_change_write_the_next_save_is_the_whole_state",
        ),
        "orders",
    ),
    Mutation(
        "paper-torn-tail-never-appended-after",
        "wal/orders/paper.py",
        "a paper broker that read changes writes its whole state first, never after a torn line",
        "                self._file.must_snapshot = self._file.changes_bytes > 0\n",
        "                self._file.must_snapshot = False\n",
        (
            "tests/orders/test_paperstate.py::"
            + "test_a_torn_last_change_is_ignored_and_never_written_after",
        ),
        "orders",
    ),
    Mutation(
        "fill-sells-reduce-the-position",
        "wal/orders/fills.py",
        "a sell's fill reduces the position (never counted as a buy)",
        '            signed = b.delta if fill.side == "buy" else -b.delta\n',
        "            signed = b.delta\n",
        (MGR + "test_sells_reduce_the_position_they_are_never_counted_as_buys",),
        "orders",
    ),
    Mutation(
        "protective-counts-open-cover",
        "wal/orders/manager.py",
        "protective orders of a kind never cover more than the position (two stops would flip it)",
        "        if exposure([*open_, (intent.oco_group, intent.quantity)]) > abs(pos):\n",
        "        if False:\n",
        (
            "tests/orders/test_manager_decisions.py::"
            "test_protective_orders_never_cover_more_than_the_position",
        ),
        "orders",
    ),
    Mutation(
        "reconcile-reads-a-consistent-view",
        "wal/orders/reconcile.py",
        "the broker's positions, orders and fills are one view: read again while positions move",
        "            if _net(after) == _net(before):\n",
        "            if True:\n",
        (RC + "test_a_position_that_moves_while_the_lists_are_read_is_read_again",),
        "reconciler",
    ),
    Mutation(
        "fill-earlier-version-ignored",
        "wal/orders/fills.py",
        "an execution sent again after its correction is not booked (it would undo the correction)",
        "        if old is not None and not self.broker.rules.supersedes(\n",
        "        if old is not None and old['execution_id'] == fill.execution_id and not self.broker.rules.supersedes(\n",
        (
            "tests/orders/test_scenarios.py::"
            "test_a_corrected_execution_replaces_the_fill_never_adds",
        ),
        "orders",
    ),
    # ------------------------------------------------------------------ the order service
    Mutation(
        "service-used-key-other-body",
        "wal/service/placing.py",
        "a used Idempotency-Key with another body is refused (409), never answered as the first order",
        "                if owner.request_sha256 != fingerprint:\n",
        "                if False:\n",
        ("tests/service/test_api.py::test_a_new_order_is_201_and_the_same_key_is_the_same_order",),
        "service",
    ),
    Mutation(
        "service-halt-refusal-takes-no-rate-token",
        "wal/service/placing.py",
        "an order refused for a halt takes none of the trader's rate limit (checked before)",
        "            self._check_can_trade()\n            wait = self.limiter.take(trader)\n",
        "            wait = self.limiter.take(trader)\n            self._check_can_trade()\n",
        (
            "tests/service/test_api.py::"
            "test_the_operators_halt_makes_the_service_not_ready_and_refuses_orders",
        ),
        "service",
    ),
    Mutation(
        "manager-awaits-before-journal",
        "wal/orders/manager.py",
        "the caller's record (the service's owner row) is durable before the intent is journaled",
        "                    await before_journal()  # the caller's record that precedes the journal\n",
        "                    pass\n",
        (
            "tests/service/test_placing.py::test_a_refused_owner_row_places_nothing_and_frees_the_key",
        ),
        "service",
    ),
    Mutation(
        "service-refused-claim-places-nothing",
        "wal/service/placing.py",
        "an owner row the database refuses refuses the order (503): nothing journaled or sent",
        "                await claim\n            except Exception as exc:\n",
        "                await asyncio.wait([claim])\n            except Exception as exc:\n",
        (
            "tests/service/test_placing.py::test_a_refused_owner_row_places_nothing_and_frees_the_key",
        ),
        "service",
    ),
    Mutation(
        "find-key-asks-the-ledger-after-compaction",
        "wal/sync/durable.py",
        "a key the compacted log no longer holds is looked up in the database's ledger, never 'redo'",
        "        if found is not None or not self.storage.may_have_dropped():\n",
        "        if True:\n",
        (
            "tests/sync/test_idempotency_keys.py::"
            "test_find_by_key_after_compaction_asks_the_ledger_and_never_says_redo_blindly",
        ),
        "reads",
    ),
    Mutation(
        "keyed-retry-answers-the-first-id",
        "wal/sync/durable.py",
        "a retried keyed call returns the id the first call logged, never a new one never logged",
        "            if id_param is not None and receipt.made_id is not None:\n",
        "            if False:\n",
        (
            "tests/sync/test_idempotency_keys.py::"
            "test_a_retried_keyed_call_returns_the_first_calls_id_whatever_the_log_still_holds",
        ),
        "reads",
    ),
    Mutation(
        "keyed-other-call-refused",
        "wal/sync/durable.py",
        "another call under a used idempotency key is refused, never answered as the first call",
        "            check_same_request(op, key, params, filled, receipt)\n",
        "            pass\n",
        (
            "tests/sync/test_idempotency_keys.py::"
            "test_a_used_key_with_another_call_is_refused_and_nothing_is_written",
        ),
        "reads",
    ),
    Mutation(
        "keyed-write-asks-the-ledger-after-compaction",
        "wal/sync/manager.py",
        "a keyed call whose entry compaction removed is found in the key ledger, not written again",
        "        if applied_key is None or not self.storage.may_have_dropped():\n",
        "        if True:\n",
        (
            "tests/sync/test_idempotency_keys.py::"
            "test_a_key_compacted_away_and_retried_after_a_restart_is_not_counted_twice",
        ),
        "reads",
    ),
    Mutation(
        "new-connection-finds-lost-commits",
        "wal/sync/apply.py",
        "a new connection to a database that lost commits (a failover mid-run) is caught at once",
        "        if held is None:\n",
        "        if False:\n",
        (
            "tests/sync/test_database_changed_midrun.py::"
            "test_a_failover_to_a_replica_that_lost_commits_is_caught_and_repaired_mid_run",
        ),
        "reads",
    ),
    Mutation(
        "fill-execution-id-of-another-order-refused",
        "wal/orders/journal.py",
        "an execution id journaled for another order is refused, never left out as a retry",
        "        if other != cid:\n",
        "        if False:\n",
        (
            "tests/orders/test_scenarios.py::"
            "test_an_execution_id_reused_by_another_order_is_refused_never_dropped",
            "tests/orders/test_exec_id_reuse.py::"
            "test_the_journals_own_write_refuses_a_key_written_for_another_order_meanwhile",
        ),
        "orders",
    ),
    Mutation(
        "fill-owner-asks-the-database-after-compaction",
        "wal/orders/journal.py",
        "an execution key the compacted log no longer holds is looked up in the fills table",
        "                owner: str | None = lookup(execution_key)\n",
        "                owner: str | None = None\n",
        (
            "tests/orders/test_exec_id_reuse.py::"
            "test_an_execution_id_of_another_order_is_refused_whether_or_not_the_log_holds_it",
        ),
        "orders",
    ),
    Mutation(
        "fill-key-of-another-order-refused-at-write",
        "wal/orders/journal.py",
        "the journal's write refuses an execution key written for another order since its check",
        "            _check_fill_keys(chain, calls)\n",
        "            pass\n",
        (
            "tests/orders/test_exec_id_reuse.py::"
            "test_the_journals_own_write_refuses_a_key_written_for_another_order_meanwhile",
        ),
        "orders",
    ),
    Mutation(
        "fill-owner-checked-before-booking",
        "wal/orders/fills.py",
        "a fill's execution key is checked against the other orders' before it is booked",
        "            await self._check_owner(fill, key)\n",
        "            pass\n",
        (
            "tests/orders/test_exec_id_reuse.py::"
            "test_a_correction_id_of_another_orders_execution_is_refused",
        ),
        "orders",
    ),
    Mutation(
        "reserved-client-id-refused",
        "wal/orders/validation.py",
        "a client id with the reconciler's prefix (orphan-, es-, close-) is refused at validation",
        "    if not reconciler:\n        _not_reserved(intent.client_order_id)\n",
        "    pass\n",
        (
            "tests/orders/test_reserved_ids.py::"
            "test_submit_refuses_a_reserved_id_and_nothing_is_journaled_or_sent",
        ),
        "orders",
    ),
    Mutation(
        "orphan-completed-only-if-never-sent",
        "wal/orders/reconcile_model.py",
        "only an orphan-... order that was never sent is the reconciler's to complete",
        '    return not any(e["kind"] == EventKind.SUBMITTED.value for e in events)\n',
        "    return True\n",
        (
            "tests/orders/test_reserved_ids.py::"
            "test_a_users_unresolved_order_under_an_orphan_id_is_looked_up_not_completed",
        ),
        "orders",
    ),
    Mutation(
        "undeclared-dedup-scope-never-resends",
        "wal/orders/broker.py",
        "client-id rules nobody declared never resend (UNKNOWN, not GLOBAL)",
        "    dedup_scope: DedupScope = DedupScope.UNKNOWN\n",
        "    dedup_scope: DedupScope = DedupScope.GLOBAL\n",
        (
            "tests/orders/test_dedup_scope.py::"
            "test_a_timed_out_submit_whose_lookup_lags_is_never_a_second_order",
        ),
        "orders",
    ),
    Mutation(
        "flatten-close-sized-after-cancels",
        "wal/orders/flatten.py",
        "flatten sizes the close from the position after the symbol's orders are settled",
        "    pos = om.positions().get(symbol, Decimal(0))  # after what the cancelled orders executed\n",
        "    pos = held\n",
        (
            "tests/orders/test_flatten.py::"
            "test_a_stop_that_fills_before_its_cancel_leaves_nothing_to_close",
        ),
        "orders",
    ),
    Mutation(
        "flatten-no-close-beside-an-unconfirmed-cancel",
        "wal/orders/flatten.py",
        "flatten sends no close while an order of the symbol is not final after its cancel",
        "        if not is_final(done.state):\n",
        "        if False:\n",
        (
            "tests/orders/test_flatten.py::"
            "test_no_close_is_sent_beside_a_stop_whose_cancel_is_not_confirmed",
        ),
        "orders",
    ),
    Mutation(
        "flatten-cancels-before-the-close",
        "wal/orders/flatten.py",
        "flatten cancels the symbol's open orders before it sends the close",
        "    for order in [o for o in om.open_orders() if o.symbol == symbol]:\n",
        "    for order in []:\n",
        ("tests/orders/test_flatten.py::test_the_stop_triggering_as_the_close_arrives_sells_once",),
        "orders",
    ),
    Mutation(
        "service-other-traders-order",
        "wal/service/api.py",
        "another trader's order is refused (403) on every route that names an order",
        "        if owner.trader_id != who:\n",
        "        if False:\n",
        ("tests/service/test_traders.py::test_another_traders_order_is_403_on_every_endpoint",),
        "service",
    ),
    Mutation(
        "bracket-held-counts-child-exits",
        "wal/service/brackets.py",
        "a bracket covers what its parent filled minus what its children executed (OCO, shrink)",
        "            held = parent.filled_quantity - exited\n",
        "            held = parent.filled_quantity\n",
        (
            "tests/service/test_brackets.py::"
            "test_take_profit_fill_cancels_the_stop_and_finishes_the_bracket",
        ),
        "service",
    ),
    Mutation(
        "bracket-unknown-child-chased-first",
        "wal/service/brackets.py",
        "nothing is placed for a bracket while one of its children's outcome is unknown",
        "            if unknown:\n",
        "            if False:\n",
        (
            "tests/service/test_brackets.py::"
            "test_a_dropped_reply_and_lookup_lag_never_place_a_second_child",
        ),
        "service",
    ),
    Mutation(
        "bracket-capped-by-the-position",
        "wal/service/brackets.py",
        "a bracket's children never cover more than the journal's position leaves room for",
        "        target = max(Decimal(0), min(held, room))\n",
        "        target = held\n",
        (
            "tests/service/test_brackets.py::"
            "test_children_are_capped_by_the_room_the_position_leaves",
        ),
        "service",
    ),
    Mutation(
        "schema-behind-refused",
        "wal/db/versioning.py",
        "a database whose schema is not the code's is refused, naming `atb db upgrade`",
        "    if rev == HEAD:\n",
        "    if True:\n",
        (
            "tests/db/test_migrations.py::"
            "test_an_old_database_is_refused_then_upgraded_to_equal_a_fresh_one",
        ),
        "service",
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
        (
            "tests/sync/test_wrong_database_reads.py::test_reads_refuse_while_the_database_is_not_the_logs",
        ),
        "reads",
    ),
    Mutation(
        "check-arguments-before-the-log",
        "wal/sync/manager.py",
        "every argument of a critical call is checked against its column before the log is touched",
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
MUTATIONS = (*MUTATIONS, *RECONCILER)  # the reconciler's decisions (issue 19)

# ---------------------------------------------------------------------------- per-order locks, the last send (fixes)
LOCKS_AND_SENDS: tuple[Mutation, ...] = (
    Mutation(
        "poll-fills-under-order-lock",
        "wal/orders/fills.py",
        "poll_fills journals a fill under its order's lock (a concurrent submit's ACCEPTED takes the same seq otherwise)",
        "            async with self._lock(f.client_order_id):\n                if await self._apply_fill(f):\n",
        "            if True:\n                if await self._apply_fill(f):\n",
        (MGR + "test_polling_fills_while_submits_run_journals_each_seq_once",),
        "orders",
    ),
    Mutation(
        "order-lock-dropped-only-when-unused",
        "wal/orders/base.py",
        "an order's lock leaves the table only when nobody holds or waits for it",
        "            if users[0] == 0:\n                del self._locks[cid]\n",
        "            if users[0] >= 0:\n                self._locks.pop(cid, None)\n",
        (MGR + "test_the_per_order_locks_are_dropped_once_nobody_holds_them",),
        "orders",
    ),
    Mutation(
        "reconciler-window-from-last-send",
        "wal/orders/reconcile.py",
        "the reconciler measures an unresolved order's visibility window from its last send (OrderManager.send_evidence), not updated_at",
        "            sent_by, exists = await om.send_evidence(order, self._now())\n",
        "            sent_by, exists = order.updated_at, False\n",
        (RP + "test_the_reconciler_measures_the_window_from_the_last_send",),
        "reconciler",
    ),
    Mutation(
        "reconciler-never-gives-up-duplicate",
        "wal/orders/reconcile.py",
        "the reconciler never makes an order the broker answered duplicate client id for SUBMIT_FAILED",
        "            if order.broker_order_id is not None or exists:\n",
        "            if order.broker_order_id is not None:\n",
        (RP + "test_the_reconciler_never_gives_up_an_order_answered_duplicate",),
        "reconciler",
    ),
    Mutation(
        "stop-duplicate-never-given-up",
        "wal/orders/stops.py",
        "a protective order answered duplicate client id is never given up (SUBMIT_FAILED) by rule 3",
        "            if left <= 0 and exists:\n",
        "            if False:\n",
        (RP + "test_an_unknown_emergency_stop_answered_duplicate_is_never_given_up",),
        "reconciler",
    ),
)
MUTATIONS = (*MUTATIONS, *LOCKS_AND_SENDS)

# ---------------------------------------------------------------------------- OCO groups at the broker
OCO_T = "tests/orders/test_oco.py::"
BR = "tests/service/test_brackets.py::"

OCO: tuple[Mutation, ...] = (
    Mutation(
        "paper-oco-reduce-on-fill",
        "wal/orders/paper.py",
        "a fill of an OCO group's member reduces every other live member by what filled, in the same transition",
        "            self._reduce_group(o.oco_group, o.broker_order_id, qty)\n",
        "            pass\n",
        (
            OCO_T + "test_a_take_profit_fill_cancels_the_stop_in_the_same_change",
            OCO_T + "test_a_partial_fill_reduces_the_other_member_by_what_filled",
            BR + "test_a_price_through_the_take_profit_then_the_stop_before_converge_ends_flat",
        ),
        "orders",
    ),
    Mutation(
        "paper-oco-reduction-saved-with-the-fill",
        "wal/orders/paper.py",
        "an OCO reduction is saved in the same durable change as the fill that made it",
        "            self._dirty.add(bo)  # saved in the same change as the fill that reduced it\n",
        "            pass\n",
        (
            OCO_T + "test_a_take_profit_fill_cancels_the_stop_in_the_same_change",
            OCO_T + "test_the_reduction_survives_a_restart_of_the_broker",
        ),
        "orders",
    ),
    Mutation(
        "paper-oco-plan-trimmed",
        "wal/orders/paper.py",
        "a reduced member's planned executions are cut to what is left: it never executes more",
        "            _trim(po.plan, left)  # its planned parts never execute more than is left\n",
        "            pass\n",
        (OCO_T + "test_a_partial_fill_reduces_the_other_member_by_what_filled",),
        "orders",
    ),
    Mutation(
        "manager-refuses-oco-group-without-broker-support",
        "wal/orders/validation.py",
        "an intent with an oco_group is refused before it is journaled where the broker declares no OCO groups",
        "    if rules.oco_groups is not True:\n",
        "    if False:\n",
        (OCO_T + "test_a_broker_without_groups_refuses_one_and_the_manager_never_sends_it",),
        "orders",
    ),
    Mutation(
        "oco-group-journaled-with-the-intent",
        "wal/orders/journal.py",
        "the OCO group is journaled with the intent (a retry or a lookup after a crash sends it as it was)",
        '        kwargs["oco_group"] = d.oco_group  # journaled: a retry resends it, the chain covers it\n',
        "        pass\n",
        (OCO_T + "test_the_group_is_journaled_resent_as_it_was_and_covered_by_the_audit_chain",),
        "audit",
    ),
    Mutation(
        "oco-group-hashed-in-the-intent-content",
        "wal/db/order_schema.py",
        "the created event's hashed content holds the order's OCO group",
        "            doc[k] = fields[k]  # hashed with the intent: a changed group breaks the chain\n",
        "            pass\n",
        (OCO_T + "test_the_group_is_journaled_resent_as_it_was_and_covered_by_the_audit_chain",),
        "audit",
    ),
    Mutation(
        "verify-checks-the-oco-group",
        "wal/orders/audit_contents.py",
        "verify checks the orders row's OCO group against the hashed created event",
        "                    differs(name, doc.get(name), where)\n",
        "                    pass\n",
        (OCO_T + "test_the_group_is_journaled_resent_as_it_was_and_covered_by_the_audit_chain",),
        "audit",
    ),
    Mutation(
        "reconciler-remaining-less-oco-reduction",
        "wal/orders/reconcile_model.py",
        "the reconciler counts a broker order's remaining less what its OCO group reduced it by (stops exact)",
        "    return bo.remaining\n",
        "    return bo.quantity - bo.filled_quantity\n",
        (BR + "test_the_reconciler_finds_a_stop_reduced_by_its_group_exact",),
        "reconciler",
    ),
    Mutation(
        "exits-trimmed-before-the-emergency-stop",
        "wal/orders/stops.py",
        "before an emergency stop is sent, the reducing orders that are not stops and would execute more than the position beside it are cancelled",
        "        await self._trim_exits(bp.symbol, exits, [*kept, (group, qty)], abs(bp.quantity), c, dry)\n",
        "        pass\n",
        (
            RX + "test_after_the_reconciler_the_market_never_turns_the_long_short",
            RX + "test_a_take_profit_outside_any_group_is_cancelled_before_the_emergency_stop",
        ),
        "reconciler",
    ),
    Mutation(
        "exits-trimmed-before-the-close",
        "wal/orders/stops.py",
        "before a market close, the reducing orders that are not stops and would execute more than what it leaves are cancelled",
        "        await self._trim_exits(bp.symbol, exits, kept, abs(bp.quantity) - qty, c, dry)\n",
        "        pass\n",
        (RX + "test_a_market_close_never_leaves_the_take_profit_live",),
        "reconciler",
    ),
    Mutation(
        "exits-trimmed-beside-exact-stops",
        "wal/orders/stops.py",
        "stops already exact: a reducing order that is not a stop and would execute past zero beside them is cancelled",
        "            await self._trim_exits(sym, exits, [_item(b) for b in reducing], size, c, dry)\n",
        "            pass\n",
        (RX + "test_a_user_limit_beside_exact_stops_is_cancelled",),
        "reconciler",
    ),
    Mutation(
        "exit-cancel-confirmed-before-placing",
        "wal/orders/stops.py",
        "a reconciler cancel counts only once the journal holds the order cancelled (unconfirmed: nothing is placed beside it)",
        "            if order.state is _S.CANCELLED and order.filled_quantity <= bo.filled_quantity:\n",
        "            if True:\n",
        (RX + "test_an_unconfirmed_cancel_of_a_take_profit_places_nothing",),
        "reconciler",
    ),
    Mutation(
        "emergency-stop-joins-only-a-stop-free-group",
        "wal/orders/stops.py",
        "an emergency stop joins an OCO group only if every live member is a reducing order that is not a stop",
        "            if live and all(m.broker_order_id in mine for m in live):\n",
        "            if live:\n",
        (RX + "test_an_emergency_stop_never_joins_a_group_that_holds_a_stop",),
        "reconciler",
    ),
    Mutation(
        "emergency-stop-joins-the-take-profits-group",
        "wal/orders/stops.py",
        "an emergency stop joins the stop-free OCO group of a take-profit it covers (the take-profit kept, never both filled)",
        "        return min(fits)[1] if fits else None\n",
        "        return None\n",
        (RX + "test_an_emergency_stop_joins_the_take_profits_group_and_never_flips_the_long",),
        "reconciler",
    ),
    Mutation(
        "end-check-counts-every-reducing-order",
        "wal/orders/reconcile.py",
        "the end check fails a position whose live reducing orders (an OCO group as its largest member) could execute more than it",
        "            if worst > abs(pos):\n",
        "            if False:\n",
        (RX + "test_the_end_check_counts_every_reducing_order",),
        "reconciler",
    ),
    Mutation(
        "bracket-take-profit-room-beside-foreign-stops",
        "wal/service/brackets.py",
        "a bracket's take-profit is capped by the stops outside its OCO group (never placed again beside an emergency stop)",
        "                return group is None or o.intent.oco_group != group\n",
        '                return kind == "sl"\n',
        (
            BR
            + "test_a_take_profit_is_not_placed_again_beside_an_emergency_stop_outside_its_group",
            BR + "test_children_are_capped_by_the_room_the_position_leaves",
        ),
        "service",
    ),
    Mutation(
        "bracket-keeps-the-emergency-stop-for-a-refused-stop-loss",
        "wal/service/brackets.py",
        "an emergency stop is never cancelled to make room for a stop-loss refused at that size",
        "            if self._refused.get((pid, kind)) == held:\n",
        "            if False:\n",
        (BR + "test_a_refused_stop_loss_keeps_the_emergency_stop_linked_to_its_take_profit",),
        "service",
    ),
    Mutation(
        "bracket-children-in-one-oco-group",
        "wal/service/brackets.py",
        "a bracket's stop-loss and take-profit are placed in one OCO group at the broker (reduce on fill)",
        "            oco_group=self._group(pid, owner),\n",
        "            oco_group=None,\n",
        (
            BR + "test_a_price_through_the_take_profit_then_the_stop_before_converge_ends_flat",
            BR + "test_a_partial_take_profit_shrinks_the_stop_before_converge_runs",
        ),
        "service",
    ),
    Mutation(
        "service-refuses-two-legs-without-oco",
        "wal/service/placing.py",
        "a bracket with both legs is refused (422 oco_unsupported) where the broker declares no OCO groups",
        "        if self.om.broker.rules.oco_groups is not True:\n",
        "        if False:\n",
        (BR + "test_a_broker_without_oco_groups_refuses_a_two_leg_bracket_and_places_one_leg",),
        "service",
    ),
)
MAKE_BEFORE_BREAK: tuple[Mutation, ...] = (
    Mutation(
        "manager-protective-group-as-its-largest-member-only",
        "wal/orders/manager.py",
        "a protective order outside the group of the open ones adds to them (only one group counts as its largest member)",
        "        if exposure([*open_, (intent.oco_group, intent.quantity)]) > abs(pos):\n",
        "        if max([q for _, q in open_] + [intent.quantity]) > abs(pos):\n",
        (
            "tests/orders/test_oco.py::test_a_stop_in_the_group_of_a_live_stop_is_counted_as_the_larger_of_the_two",
        ),
        "orders",
    ),
    Mutation(
        "bracket-replacement-placed-before-the-cancel",
        "wal/service/brackets.py",
        "a grown child's replacement is placed in the group before the child it replaces is cancelled (a refusal leaves the old one)",
        "                if made is None and _grows(live, targets[kind], group):\n",
        "                if False:\n",
        (BR + "test_a_grown_stop_loss_is_placed_before_the_old_one_is_cancelled",),
        "service",
    ),
    Mutation(
        "bracket-keeps-the-replacement-made",
        "wal/service/brackets.py",
        "after a crash between a replacement and the cancel, only the old child is cancelled (the replacement kept)",
        "                        continue  # the replacement made before the others are cancelled\n",
        "                        pass\n",
        (BR + "test_a_crash_between_the_replacement_and_the_cancel_keeps_the_replacement",),
        "service",
    ),
)

MD = "tests/orders/test_manager_decisions.py::"
WG = "tests/db/test_writer_gate.py::"
ONE_WRITE: tuple[Mutation, ...] = (
    Mutation(
        "ack-with-its-fill-in-one-write",
        "wal/orders/fills.py",
        "an order filled at once: its acknowledgement is journaled in the same write as its first fill",
        "                calls.append(ack)  # the acknowledgement first: its seq precedes the fill's\n",
        "                await self.journal.arecord_fills([ack])\n",
        (MD + "test_an_order_filled_at_once_is_acknowledged_and_filled_in_one_write",),
        "orders",
    ),
    Mutation(
        "ack-alone-when-no-fill-took-it",
        "wal/orders/fills.py",
        "an acknowledgement no fetched fill took is journaled alone before anything else",
        "            if ack is not None:  # no fill took it (none fetched yet, or all known)\n",
        "            if False:\n",
        (MD + "test_an_acknowledgement_whose_fill_cannot_be_fetched_is_journaled_alone",),
        "orders",
    ),
    Mutation(
        "ack-alone-when-its-fill-is-refused",
        "wal/orders/fills.py",
        "an order filled at once whose fill is refused is still journaled ACCEPTED (known live at the broker)",
        "                if ack is not None and not isinstance(exc, WALWriteError):\n",
        "                if False:\n",
        (
            "tests/orders/test_exec_id_reuse.py::test_an_execution_id_of_another_order_is_refused_whether_or_not_the_log_holds_it",
        ),
        "orders",
    ),
    Mutation(
        "bracket-stop-loss-placed-beside-the-stand-in-in-its-group",
        "wal/service/brackets.py",
        "an emergency stop in the bracket's group is not cancelled before the stop-loss is placed (made before broken)",
        "                return group is None or o.intent.oco_group != group\n",
        '                return kind == "sl" or group is None or o.intent.oco_group != group\n',
        (
            BR
            + "test_after_a_restart_the_stop_loss_is_placed_before_the_emergency_stop_in_its_group_goes",
        ),
        "service",
    ),
    Mutation(
        "bracket-stand-in-cancelled-once-covered",
        "wal/service/brackets.py",
        "the emergency stop in the bracket's group is cancelled once the live stop-loss covers it",
        "        if covered == 0 or covered != target:\n",
        "        if True:\n",
        (
            BR
            + "test_after_a_restart_the_stop_loss_is_placed_before_the_emergency_stop_in_its_group_goes",
        ),
        "service",
    ),
    Mutation(
        "service-heap-frozen-after-startup",
        "wal/service/app.py",
        "the heap the service's startup built is frozen out of the collector's full passes",
        "        settled = asyncio.create_task(_heap_settled(rt))\n",
        "        settled = asyncio.create_task(rt.started())\n",
        ("tests/service/test_app.py::test_the_heap_of_the_startup_is_frozen_once_it_is_over",),
        "service",
    ),
    Mutation(
        "sqlite-gate-let-go-at-commit",
        "wal/db/writer_gate.py",
        "a committed SQLite write transaction lets the next writer of the process go",
        "        self._leave()  # committed: the next writer goes now (a failed commit keeps it\n",
        "        pass\n",
        (WG + "test_a_write_transaction_holds_the_gate_until_it_commits_or_rolls_back",),
        "database",
    ),
    Mutation(
        "sqlite-gate-one-per-file",
        "wal/db/writer_gate.py",
        "every engine of a SQLite file in the process shares the file's gate",
        "    key = os.path.realpath(path)\n",
        "    key = str(path)\n",
        (WG + "test_every_engine_of_a_file_shares_its_gate",),
        "database",
    ),
)

MUTATIONS = (*MUTATIONS, *OCO, *MAKE_BEFORE_BREAK, *ONE_WRITE)


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
