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
from wal.errors import WALCorruptionError, WALLockedError, printable
from wal.log.repair import RepairReport, WALRepairError, repair_log, repairable
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
    applied ledger then skips it instead of applying it twice. A record only verify
    flags (an entry's content checksum, an entry id written twice) is one a normal
    open accepts and replays: it is kept, listed as such, never dropped.

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
    to_drop = repairable(before)
    kept = [d for d in before.defects if d.verify_only]
    if not to_drop:
        if as_json:
            echo_json(
                {
                    "directory": str(directory),
                    "nothing_to_do": True,
                    "backup": None,
                    "kept": [d.to_dict() for d in kept],
                    "notes": list(before.notes),
                }
            )
        else:
            for d in kept:
                click.echo(printable(f"kept     {d}"))
            for note in before.notes:  # e.g. an unfinished backup a killed repair left
                click.echo(printable(f"note     {note}"))
            click.echo(
                f"{directory}: no defects, nothing to repair"
                if not kept
                else f"{directory}: nothing to repair: {len(kept)} record(s) only verify flags "
                "stay (a normal open accepts and replays them; check them against the database)"
            )
        return
    if not yes and not as_json:
        for d in to_drop:
            click.echo(printable(f"DEFECT  {d}"))
        for d in kept:
            click.echo(printable(f"keep    {d}"))
        click.confirm(
            f"Back up {directory} and rewrite its damaged segments without these "
            f"{len(to_drop)} defect(s)?",
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
    for d in report.kept:  # records a normal open accepts and replays: never dropped
        click.echo(printable(f"kept     {d}"))
    for r in report.ranges:
        click.echo(f"rewrote  {r}")
    for note in report.notes:  # what was lost or moved, in words: never only in --json
        click.echo(f"note     {note}")
