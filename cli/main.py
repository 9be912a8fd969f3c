"""``atb``: the command line of atb-wal.

Every command lives in its own module under ``cli/commands/`` and is registered here, so the
whole command tree is visible in one place. To add a command group (``atb demo``), write
``cli/commands/demo.py`` with a ``@click.group() def demo()`` (or a command) and add one
``atb.add_command(demo)`` line below.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import click

from cli._common import ESCAPE_ERRORS
from cli._logging import LogSession, log_format
from cli.commands.config import config
from cli.commands.db import db
from cli.commands.demo import demo
from cli.commands.orders import orders
from cli.commands.orders_act import cancel_cmd, flatten_cmd, halt_cmd, reconcile_cmd, resume_cmd
from cli.commands.paper_broker import paper_broker
from cli.commands.serve import serve
from cli.commands.wal import wal
from cli.commands.wal_bench import bench
from cli.commands.wal_compact import compact
from cli.commands.wal_discard import discard
from cli.commands.wal_failed import failed
from cli.commands.wal_inspect import inspect_entries
from cli.commands.wal_metrics import metrics
from cli.commands.wal_repair import repair
from cli.commands.wal_replay import replay
from cli.commands.wal_retry import retry
from cli.commands.wal_status import status
from cli.commands.wal_sync import sync
from cli.commands.wal_verify import verify

__all__ = ["atb", "main"]


class _Atb(click.Group):
    """The root group: settles the command's log records once its outcome is known."""

    def invoke(self, ctx: click.Context) -> Any:
        ok = False
        try:
            result = super().invoke(ctx)
            ok = True
            return result
        except click.exceptions.Exit as exc:
            ok = exc.exit_code == 0
            raise
        finally:
            session = ctx.meta.get("atb.logs")
            if isinstance(session, LogSession):
                session.finish(ok)


@click.group(cls=_Atb, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="atb-wal", prog_name="atb")
@click.option("-q", "--quiet", is_flag=True, help="Show no log records, even when it fails.")
@click.option(
    "-v", "--verbose", is_flag=True, help="Show the library's log records (INFO and up) live."
)
@click.pass_context
def atb(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """atb: a crash-safe write-ahead log for a trading engine's database writes.

    The library's warnings are shown only when a command fails (exit code not 0);
    --verbose shows INFO and up as they happen, --quiet none. WAL_LOG_FORMAT=json
    writes them as one JSON object per line on stderr. Shell completion: see
    docs/cli.md (eval "$(_ATB_COMPLETE=bash_source atb)").

    \b
    Examples:
      atb demo
      atb wal status
      atb orders status
      atb -v orders reconcile --dry-run
      atb config show
    """
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose: choose one")
    session = LogSession(quiet=quiet, verbose=verbose, fmt=log_format())
    session.start()
    ctx.meta["atb.logs"] = session


atb.add_command(wal)
atb.add_command(demo)
atb.add_command(orders)
atb.add_command(paper_broker)
atb.add_command(config)
for _command in (reconcile_cmd, cancel_cmd, flatten_cmd, halt_cmd, resume_cmd):
    orders.add_command(_command)
atb.add_command(serve)
atb.add_command(db)
for _command in (
    status,
    sync,
    compact,
    verify,
    inspect_entries,
    failed,
    retry,
    replay,
    discard,
    repair,
    metrics,
    bench,
):
    wal.add_command(_command)


class _QuietPipe(io.TextIOBase):
    """stdout that, once the reader has gone (``atb wal status | head -2``: EPIPE), drops
    the rest of the output instead of failing: the command ends with its own exit code."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._inner.write(text)
            except BrokenPipeError:
                self._went()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._inner.flush()
            except BrokenPipeError:
                self._went()

    def _went(self) -> None:
        self._gone = True
        # the interpreter flushes stdout at exit: point its descriptor at /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._inner.fileno())
        os.close(devnull)

    def isatty(self) -> bool:
        return bool(self._inner.isatty())

    def fileno(self) -> int:
        return int(self._inner.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(self._inner.encoding)

    @property
    def buffer(self) -> Any:
        return self._inner.buffer


def main() -> None:
    """The ``atb`` console script."""
    for stream in (sys.stdout, sys.stderr):
        # a name that is not valid UTF-8 (a directory's, a file's) is printed with
        # \\xNN escapes rather than failing the command (PYTHONIOENCODING=utf-8 is strict)
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=ESCAPE_ERRORS)
    sys.stdout = _QuietPipe(sys.stdout)
    atb(prog_name="atb")


if __name__ == "__main__":
    main()
