"""What every ``atb`` command shares: the configuration, error reporting and formatting.

Commands are thin: they parse, call the library, print. Library errors become one-line
``click.ClickException`` messages (``Error: ...`` on stderr, no traceback); the error's hint
says what the operator can do.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import functools
import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
import orjson
import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from wal.config import WALConfig, mask_url
from wal.db.classify import describe_error
from wal.errors import WALConfigError, WALDatabaseError, WALError, WALLockedError, printable
from wal.log.lock import LOCK_NAME, read_owner_pid
from wal.log.manifest import MANIFEST_NAME
from wal.log.segment import SEGMENT_SUFFIX
from wal.masking import mask_text
from wal.orders.validation import SYMBOL_RE
from wal.sync.identity import TARGET_FILE

__all__ = [
    "AtbError",
    "NonEmptyPath",
    "LockState",
    "WalContext",
    "echo_json",
    "fmt_age",
    "fmt_bytes",
    "get_config",
    "lock_state",
    "locked_message",
    "note_saved_prices",
    "one_line",
    "os_error_message",
    "parse_prices",
    "require_log_dir",
    "short_path",
    "wal_errors",
]

P = ParamSpec("P")
R = TypeVar("R")

# Exit codes shared by the commands (documented in docs/cli.md).
EXIT_OK = 0
EXIT_PROBLEM = 1  # the command ran and found a problem (unhealthy log, defects, failed sync)
EXIT_UNREADABLE = 2  # the log could not be read at all (corrupt, missing), or a usage error
EXIT_UNCHECKED = 3  # could not check: the database or the broker did not answer
EXIT_ENGINE = 4  # `atb wal status`: the engine is not running while entries are pending


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` for uvicorn (``server.serve(sockets=[...])``), with
    TCP_NODELAY: accepted connections inherit it; without it a response's body waits ~40 ms
    behind its headers (Nagle against the client's delayed ACK). A bind failure is one
    ``AtbError`` naming the address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AtbError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return sock


class AtbError(click.ClickException):
    """A one-line error with a chosen exit code (1 unless told)."""

    def __init__(self, message: str, exit_code: int = EXIT_PROBLEM) -> None:
        super().__init__(one_line(mask_text(message)))  # no password, whatever the message
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


def one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass
class WalContext:
    """What the ``wal`` group's options hand to its commands."""

    directory: Path | None = None  # --dir
    database_url: str | None = None  # --database-url
    _config: WALConfig | None = None

    def config(self) -> WALConfig:
        if self._config is None:
            overrides: dict[str, Any] = {}
            if self.directory is not None:
                if self.directory.exists() and not self.directory.is_dir():
                    raise AtbError(
                        f"--dir {self.directory} is a file, not a log directory, so it holds "
                        "no log (pass the directory the engine writes its log in)",
                        EXIT_UNREADABLE,
                    )
                overrides["directory"] = self.directory
            if self.database_url is not None:
                overrides["database_url"] = self.database_url
            try:
                self._config = WALConfig.from_env(**overrides)
            except WALConfigError as exc:
                raise AtbError(str(exc)) from None
        return self._config


def get_config(ctx: click.Context) -> WALConfig:
    """The configuration: ``WAL_*`` variables, overridden by the group's options."""
    obj = ctx.find_object(WalContext)
    if obj is None:  # a command invoked outside the wal group (tests)
        obj = ctx.ensure_object(WalContext)
    return obj.config()


def wal_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one-line messages (exit 1) instead of tracebacks.

    With ``--json`` (an ``as_json`` parameter), a failure also prints one JSON document on
    stdout, ``{"directory", "error", "health": {"exit_code", "problems"}}``: a script always
    gets a document, whatever happened.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            try:
                return fn(*args, **kwargs)
            except click.ClickException:
                raise
            except WALDatabaseError as exc:
                code = EXIT_UNCHECKED if exc.transient else EXIT_PROBLEM
                raise AtbError(str(exc), code) from None
            except WALError as exc:
                raise AtbError(str(exc)) from None
            except SQLAlchemyError as exc:  # the database failed under a library call
                raise AtbError(
                    f"database error{_which_database()}: {describe_error(exc)}", EXIT_UNCHECKED
                ) from None
            except OSError as exc:
                raise AtbError(os_error_message(exc)) from None
        except click.ClickException as exc:
            if kwargs.get("as_json"):
                echo_error_json(exc.format_message(), exc.exit_code)
            raise

    return wrapper


def _which_database() -> str:
    """`` (URL)``, the password masked, of the database the command was configured with."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(WalContext) if ctx is not None else None
    if obj is None or obj._config is None:
        return ""
    return f" ({mask_url(obj._config.database_url)})"


def short_path(name: str, limit: int = 160) -> str:
    """``name`` for a one-line message: printable, and its middle cut out when long."""
    name = printable(name)
    if len(name) <= limit:
        return name
    return f"{name[: limit - 50]}...{name[-40:]} ({len(name)} characters)"


def os_error_message(exc: OSError) -> str:
    """One line for a file system error: what failed, on which file (shortened), what to do."""
    name = short_path(os.fsdecode(exc.filename)) if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    if isinstance(exc, IsADirectoryError) and name:
        about = " (the log's record of its database)" if Path(name).name == TARGET_FILE else ""
        return (
            f"{name}{about} is a directory where a file belongs: move it aside "
            f"(mv {shlex.quote(name)} {shlex.quote(name + '.bad')}) and run again"
        )
    if exc.errno == errno.ENAMETOOLONG:
        return f"{what}: {name} (a file's name holds at most 255 bytes, a path 4096)"
    return f"{what}: {name}".rstrip(": ")


class NonEmptyPath(click.Path):
    """A path option (``--dir``) that refuses an empty value: click would take it as the
    current directory without saying so (an empty WAL_DIR is refused the same way)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail(
                f"{value!r} is empty: expected a path (. is the current directory)", param, ctx
            )
        return super().convert(value, param, ctx)


def echo_error_json(message: str, exit_code: int) -> None:
    """The ``--json`` document of a command that failed (see ``wal_errors``)."""
    directory: str | None = None
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(WalContext) if ctx is not None else None
    if obj is not None and obj._config is not None:
        directory = str(obj._config.directory)
    elif obj is not None and obj.directory is not None:
        directory = str(obj.directory)
    else:
        default = next(f.default for f in fields(WALConfig) if f.name == "directory")
        directory = os.environ.get("WAL_DIR") or str(default)
    text = one_line(message)
    echo_json(
        {
            "directory": directory,
            "error": text,
            "health": {"exit_code": exit_code, "problems": [text]},
        }
    )


def has_log(directory: Path) -> bool:
    """Whether ``directory`` holds a log: a segment file or the manifest. An empty directory
    (a typo in ``--dir``, a fresh mount) holds none, and no command starts one there.
    A directory this user may not read raises ``AtbError`` saying so (the log may be there:
    "no log" would send the operator looking elsewhere)."""
    try:
        names = os.listdir(directory)
    except PermissionError:
        raise AtbError(
            f"cannot read {directory}: permission denied (the log's directory is 0700, its "
            f"owner's only: run this as the user that runs the trading process, uid "
            f"{_owner(directory)})",
            EXIT_UNREADABLE,
        ) from None
    except OSError:
        return False
    return any(n.endswith(SEGMENT_SUFFIX) or n == MANIFEST_NAME for n in names)


def _owner(path: Path) -> str:
    try:
        return str(path.stat().st_uid)
    except OSError:
        return "unknown"


def require_log_dir(config: WALConfig) -> Path:
    """The log directory; no command creates a log by accident.

    Raises (exit 2) naming the path: missing, not a directory, or a directory without a log.
    """
    d = config.directory
    try:
        os.stat(d)
    except PermissionError:  # a parent this user may not enter: the log may well be there
        raise AtbError(
            f"cannot reach {d}: permission denied (run this as the user that runs the "
            "trading process)",
            EXIT_UNREADABLE,
        ) from None
    except OSError:
        pass  # missing: said below
    if d.is_dir():
        if not has_log(d):
            raise AtbError(
                f"no log at {d}: the directory holds no log segments (set WAL_DIR or pass "
                "--dir to point at the log; a trading process creates it on first start). "
                "Nothing was created",
                EXIT_UNREADABLE,
            )
        return d
    if d.exists():
        raise AtbError(
            f"{d} is not a directory, so it holds no log (set WAL_DIR or pass --dir to point "
            "at the log directory)",
            EXIT_UNREADABLE,
        )
    raise AtbError(
        f"no log at {d}: the directory does not exist (set WAL_DIR or pass --dir to point at "
        "the log; a trading process creates it on first start)",
        EXIT_UNREADABLE,
    )


@dataclass(frozen=True)
class LockState:
    """Who holds the writer lock, as far as can be seen without taking it."""

    owner_pid: int | None  # the pid the last owner wrote into LOCK
    owner_alive: bool | None  # that process exists now (None: no pid)
    held: bool | None  # /proc/locks shows a flock on LOCK (None: cannot tell)

    def to_dict(self) -> dict[str, Any]:
        return {"owner_pid": self.owner_pid, "owner_alive": self.owner_alive, "held": self.held}

    def describe(self) -> str:
        pid = self.owner_pid
        if self.held:
            alive = "" if self.owner_alive is not False else ", not running: pid from an old run"
            return f"held by pid {pid}{alive}" if pid is not None else "held by another process"
        if self.held is None:
            if pid is None:
                return "unknown (no owner recorded)"
            return f"last owner pid {pid} ({'running' if self.owner_alive else 'not running'})"
        return "free" + (f" (last owner pid {pid})" if pid is not None else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _flock_held(path: Path) -> bool | None:
    """Whether any process holds a flock on ``path``, from ``/proc/locks`` (Linux).

    Reading ``/proc/locks`` takes no lock itself, so a trading process starting at this very
    moment is never refused because of a status check.
    """
    try:
        ino = os.stat(path).st_ino
    except FileNotFoundError:
        return False  # never opened for writing
    except OSError:
        return None
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    for row in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4810 fe:00:2196548 0 EOF"; "->" rows are blocked waiters
        parts = row.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(ino):
            return True
    return False


def lock_state(directory: Path) -> LockState:
    pid = read_owner_pid(directory)
    alive = None if pid is None else _pid_alive(pid)
    return LockState(pid, alive, _flock_held(directory / LOCK_NAME))


def locked_message(exc: WALLockedError, what: str, advice: str = "stop it first") -> str:
    """One line for a writing command refused by the writer lock: who holds it, what to do."""
    if exc.pid is not None:
        alive = _pid_alive(exc.pid)
        owner = f"process {exc.pid}" + ("" if alive else " (pid from LOCK; not running now)")
    else:
        owner = "another process"
    return (
        f"cannot {what}: the log in {exc.directory} is locked by {owner}, its writer; "
        f"{advice}. Read-only commands (status, verify, inspect) work meanwhile"
    )


def echo_json(value: Any) -> None:
    """``value`` as one indented JSON document on stdout.

    A name that is not valid UTF-8 (``os.fsdecode`` of the bytes ``\\xff`` is the lone
    surrogate ``"\\udcff"``, which JSON cannot hold) is written escaped: ``"\\\\xff"``."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2, default=_json_default)
    except TypeError:  # a str with a lone surrogate somewhere (orjson refuses them)
        text = orjson.dumps(
            _without_surrogates(value), option=orjson.OPT_INDENT_2, default=_json_default
        )
    click.echo(text.decode())


ESCAPE_ERRORS = "atb-escape"


def _escape(exc: UnicodeError) -> tuple[str, int]:
    """Encoding error handler: an escaped byte of a name that is not valid UTF-8 (the lone
    surrogates U+DC80..U+DCFF ``os.fsdecode`` makes) as ``\\xNN``, the byte it stands for;
    anything else as ``backslashreplace`` writes it."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    out = "".join(
        f"\\x{ord(c) - 0xDC00:02x}"
        if 0xDC80 <= ord(c) <= 0xDCFF
        else c.encode("unicode_escape").decode()
        for c in bad
    )
    return out, exc.end


codecs.register_error(ESCAPE_ERRORS, _escape)


def _json_text(text: str) -> str:
    """``text`` without lone surrogates (JSON cannot hold them): the bytes of a name that is
    not valid UTF-8 as ``\\xNN`` escapes; valid text unchanged."""
    return text.encode("utf-8", ESCAPE_ERRORS).decode("utf-8")


def _json_default(value: Any) -> str:
    return _json_text(str(value))


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _json_text(value)
    if isinstance(value, dict):
        return {
            (_json_text(k) if isinstance(k, str) else k): _without_surrogates(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_without_surrogates(v) for v in value]
    return value


def parse_prices(prices: tuple[str, ...]) -> dict[str, Decimal]:
    """The ``--price SYMBOL=PRICE`` options of a paper broker: a symbol as orders name it
    (``SYMBOL_RE``) and a positive finite price. A bad one is a usage error (exit 2) naming
    it, before anything starts."""
    out: dict[str, Decimal] = {}
    for p in prices:
        sym, sep, value = p.partition("=")
        sym = sym.strip()
        try:
            price = Decimal(value.strip()) if sep else None
        except ArithmeticError:
            price = None
        if not sep or price is None or not price.is_finite() or price <= 0:
            raise click.BadParameter(
                f"{p!r}: expected SYMBOL=PRICE with a positive price, e.g. AAPL=187.25",
                param_hint="--price",
            )
        if not SYMBOL_RE.fullmatch(sym):
            raise click.BadParameter(
                f"{p!r}: expected SYMBOL=PRICE, and {sym!r} is not a symbol (1-32 chars of "
                "A-Z 0-9 . _ / : - starting with a letter or digit), e.g. AAPL=187.25",
                param_hint="--price",
            )
        out[sym] = price
    return out


def note_saved_prices(
    given: dict[str, Decimal], held: Callable[[str], Decimal], path: Path
) -> None:
    """Say (stderr) which ``--price`` a paper broker's saved state overrode: a restarted
    broker goes on from the market it saved; ``--price`` only sets where a new one starts."""
    kept = {s: held(s) for s, p in given.items() if held(s) != p}
    if kept:
        now = ", ".join(f"{s} {format(p, 'f')}" for s, p in kept.items())
        click.echo(
            f"note: --price not applied to {', '.join(kept)}: the saved paper state {path} "
            f"holds the market ({now}); remove {path.name} and {path.name}.changes to start a "
            "new one",
            err=True,
        )


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def parse_time(value: str) -> datetime:
    """An ISO 8601 date or time; a naive one is taken as UTC."""
    dt = datetime.fromisoformat(value.strip())
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def is_tty() -> bool:
    return sys.stdout.isatty()


def serve_until_stopped(server: uvicorn.Server, sock: socket.socket, url: str) -> None:
    """Run ``server`` on ``sock``, print ``listening on URL`` once it accepts, and return
    (never die) on SIGTERM or SIGINT, so the caller's cleanup runs and the exit code is 0.

    uvicorn stops gracefully on those signals (no new connections, in-flight requests
    finished, the lifespan's stop), then raises the signal again to the handler it found:
    with the default one the process would die there, before the caller's cleanup."""

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            click.echo(f"listening on {url}")
        await task

    def stop_serving(signum: int, frame: object) -> None:
        server.should_exit = True  # also a signal that came before uvicorn's handlers

    previous = {sig: signal.signal(sig, stop_serving) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
