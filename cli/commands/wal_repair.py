"""``atb wal repair``: salvage the good records of a log a normal open refuses."""

from __future__ import annotations

import click

from cli._common import (
    EXIT_UNREADABLE,
    AtbError,
    echo_json,
    get_config,
    locked_message,
    one_line,
    require_log_dir,
    wal_errors,
)
from wal.errors import WALCorruptionError, WALLockedError
from wal.log.repair import RepairReport, WALRepairError, repair_log
from wal.log.verify import verify_log


@click.command(short_help="Salvage a damaged log (backs it up first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the repair report as JSON.")
@click.pass_context
@wal_errors
def repair(ctx: click.Context, yes: bool, as_json: bool) -> None:
    """Back the log up, then rewrite damaged segments with only their good records.

    For a log that a normal open refuses (a bit flip mid-log, a missing segment,
    garbage records). First the whole directory is copied to <dir>.backup-<UTC time>
    next to it; then each damaged segment is rewritten (temp file, fsync, rename,
    directory fsync) with its good records and a header covering its original LSN
    range, so the dropped records' LSNs become allowed gaps. Every dropped record is
    listed with file, line and byte offset (and its LSN and entry id when legible).
    A dropped status record can make an applied entry PENDING again: the database's
    applied ledger then skips it instead of applying it twice.

    Needs the writer lock. Run `atb wal verify` first to see what would be dropped.

    \b
    Examples:
      atb wal verify
      atb wal repair
      atb wal --dir /var/lib/atb/wal repair --yes --json
    """
    config = get_config(ctx)
    directory = require_log_dir(config)
    try:
        before = verify_log(directory)
    except WALCorruptionError as exc:
        raise AtbError(one_line(str(exc)), EXIT_UNREADABLE) from None
    if before.ok:
        if as_json:
            echo_json({"directory": str(directory), "nothing_to_do": True, "backup": None})
        else:
            click.echo(f"{directory}: no defects, nothing to repair")
        return
    if not yes and not as_json:
        for d in before.defects:
            click.echo(f"DEFECT  {d}")
        click.confirm(
            f"Back up {directory} and rewrite its damaged segments without these "
            f"{len(before.defects)} defect(s)?",
            abort=True,
        )
    elif not yes:
        raise click.UsageError("--json needs --yes (there is no prompt in JSON mode)")
    try:
        report = repair_log(directory)
    except WALLockedError as exc:
        raise AtbError(locked_message(exc, "repair")) from None
    except WALRepairError as exc:
        # the log was changed, then a check failed: the backup and every change first
        if as_json:
            echo_json(_report_json(exc.report))
        else:
            _print(exc.report)
        click.echo(f"Error: {one_line(str(exc))}", err=True)
        ctx.exit(1)
    if as_json:
        echo_json(report.to_dict())
        return
    _print(report)
    click.echo(
        f"salvaged {report.records_kept} records; {len(report.dropped)} defect(s) dropped; "
        + ("a normal open succeeds now" if report.opened else "could not check a normal open")
    )


def _report_json(report: RepairReport) -> dict[str, object]:
    """``repair --json`` after a failed check: the report, with ``error`` and ``health``."""
    return {
        **report.to_dict(),
        "health": {"exit_code": 1, "problems": [report.error]},
    }


def _print(report: RepairReport) -> None:
    click.echo(f"backup: {report.backup}")
    for d in report.dropped:
        known = [f"LSN {d.lsn}"] if d.lsn is not None else []
        known += [f"entry {d.entry_id}"] if d.entry_id is not None else []
        click.echo(f"dropped  {d}" + (f" ({', '.join(known)})" if known else ""))
    for r in report.ranges:
        click.echo(f"rewrote  {r}")
    for note in report.notes:  # what was lost or moved, in words: never only in --json
        click.echo(f"note     {note}")
