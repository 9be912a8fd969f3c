"""``atb wal verify``: a read-only checksum scan that lists every defect."""

from __future__ import annotations

import click

from cli._common import (
    EXIT_UNREADABLE,
    AtbError,
    echo_json,
    fmt_bytes,
    get_config,
    lock_state,
    one_line,
    require_log_dir,
    wal_errors,
)
from wal.errors import WALError, printable
from wal.log.verify import verify_log


@click.command(short_help="Check every checksum; list every defect.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@wal_errors
def verify(ctx: click.Context, as_json: bool) -> None:
    """Check the checksum of every record and the LSN chain; list every defect.

    Each defect is printed with its file, line and byte offset. Reads only: safe while
    a trading process writes (the last line may then be a record in flight, shown as
    a torn tail). A torn tail is what a crash leaves; a normal open cuts it and keeps
    the bytes in a .broken file. Any other defect makes a normal open refuse the log:
    `atb wal repair` salvages the good records after backing the log up.

    Exit code 0 when there is no defect, 1 when there is any, 2 when there is no log.

    \b
    Examples:
      atb wal verify
      atb wal --dir /var/lib/atb/wal verify --json
    """
    config = get_config(ctx)
    require_log_dir(config)
    try:
        report = verify_log(config.directory)
    except (WALError, OSError) as exc:
        raise AtbError(one_line(str(exc)), EXIT_UNREADABLE) from None
    if as_json:
        echo_json(report.to_dict())
    else:
        lsns = (
            f"LSN {report.first_lsn}..{report.last_lsn}"
            if report.first_lsn is not None
            else "no records"
        )
        click.echo(
            printable(
                f"{report.directory}: {report.segments} segments, {report.records} records "
                f"({report.entries} entries), {fmt_bytes(report.bytes)}, {lsns}"
            )
        )
        for d in report.defects:
            legible = [
                f"LSN {d.lsn}" if d.lsn is not None else "",
                (f"entry {d.entry_id}" if d.entry_id is not None else ""),
            ]
            known = ", ".join(x for x in legible if x)
            guess = f" (still legible: {known})" if known else ""
            click.echo(printable(f"DEFECT  {d}{guess}"))  # names and bytes from the disk
        for note in report.notes:
            click.echo(printable(f"note    {note}"))
        if report.ok:
            click.echo("OK: no defects")
        elif report.opens:
            only = [d for d in report.defects if d.verify_only]
            if only:  # decided by the open's own validator: it accepts these records
                click.echo(
                    f"{len(only)} defect(s) only verify checks (an entry's content checksum, an "
                    "entry id written twice): a normal open accepts these records and replays "
                    "them as they are; check them against the database (`atb wal repair` "
                    "keeps them too: it never drops a record a normal open replays)"
                )
            torn = [d for d in report.defects if d.torn_tail]
            if not torn:
                ctx.exit(1)
            writer = lock_state(config.directory).held
            damaged = any(".suspect" in d.problem for d in torn)
            why = (
                "a writer holds the log: it may be a record being written right now"
                if writer
                else "a damaged last record, not a crash's tear: the next normal open cuts it "
                "into a .suspect file (check it: an acknowledged entry may be lost)"
                if damaged
                else "a crash left it; the next normal open cuts it (kept in a .broken file)"
            )
            shape = "the last record damaged" if damaged and not writer else "a torn tail only"
            click.echo(f"{len(torn)} defect(s), {shape}: {why}")
        else:
            click.echo(
                f"{len(report.defects)} defect(s): a normal open refuses this log. "
                "`atb wal repair` salvages the good records and keeps a backup."
            )
    if not report.ok:
        ctx.exit(1)
