"""A real PostgreSQL server for the tests: a throwaway ``pgserver`` or ``WAL_TEST_PG_DSN``.

``launch()`` returns a ``PgServer``. With ``WAL_TEST_PG_DSN`` set, it is that server (the
tests create and drop their own databases in it, and never stop it). Otherwise ``pgserver``
(PyPI; it bundles the PostgreSQL binaries) initializes a data directory in a fresh temporary
directory, and the server is restarted listening on TCP 127.0.0.1 at a free port as well as
on its Unix socket, so that tests can put a proxy in front of it, and so that
``stop_immediate()`` (a crash: ``pg_ctl stop -m immediate``) and ``start()`` (crash recovery)
make a real outage.

Running as root, pgserver runs PostgreSQL as the system user ``pgserver`` (PostgreSQL refuses
to run as root); ``pg_ctl`` is run as that user here too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

__all__ = ["ENV_DSN", "ENV_REQUIRE", "HOW_TO_RUN", "PgServer", "PgUnavailable", "launch"]

ENV_DSN = "WAL_TEST_PG_DSN"
ENV_REQUIRE = "WAL_REQUIRE_PG"
HOW_TO_RUN = (
    f"PostgreSQL tests need a server: set {ENV_DSN}=postgresql://user:password@host:5432/db "
    "(a user allowed to CREATE DATABASE) or `pip install pgserver`"
)
PG_CTL_TIMEOUT_S = 60  # pg_ctl -w waits this long for a start (crash recovery) or a stop


class PgUnavailable(Exception):
    """No PostgreSQL server could be had; the message says why."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgServer:
    """A PostgreSQL server the tests may use.

    ``url`` is the admin database's SQLAlchemy URL (``postgresql+psycopg://...``). ``pg_ctl``,
    ``pgdata`` and ``socket_dir`` are None for an external server (``WAL_TEST_PG_DSN``),
    which cannot be stopped: ``stop_immediate()`` then skips the calling test.
    """

    url: str
    host: str
    port: int
    pg_ctl: Path | None = None
    pgdata: Path | None = None
    socket_dir: Path | None = None
    log: Path | None = None
    run_as: str | None = None  # the system user owning pgdata (pgserver's, when run as root)
    _tmpdir: Path | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ lifecycle

    @property
    def can_restart(self) -> bool:
        """True for a pgserver-managed server (``stop_immediate`` / ``start`` work)."""
        return self.pg_ctl is not None

    @property
    def socket_path(self) -> Path | None:
        """The server's Unix socket (None for an external server)."""
        return None if self.socket_dir is None else self.socket_dir / f".s.PGSQL.{self.port}"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self.pg_ctl is None or self.pgdata is None:
            import pytest

            pytest.skip(f"the server from {ENV_DSN} is not stopped or started by the tests")
        return subprocess.run(
            [str(self.pg_ctl), "-D", str(self.pgdata), *args],
            check=check,
            capture_output=True,
            text=True,
            user=self.run_as,
            timeout=PG_CTL_TIMEOUT_S + 30,
        )

    def is_running(self) -> bool:
        """``pg_ctl status``: True while the postmaster runs (an external server: True)."""
        if not self.can_restart:
            return True
        return self._ctl("status", check=False).returncode == 0

    def start(self) -> None:
        """Start the server (after ``stop_immediate`` this runs crash recovery); wait until it
        accepts connections. Its TCP port, socket and settings stay the same."""
        assert self.log is not None or not self.can_restart
        result = self._ctl(
            "-w", "-t", str(PG_CTL_TIMEOUT_S), "-l", str(self.log), "start", check=False
        )
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log and self.log.exists() else ""
            raise PgUnavailable(
                f"pg_ctl start failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
            )

    def stop_immediate(self) -> None:
        """Crash the server: ``pg_ctl stop -m immediate`` (no checkpoint, connections cut)."""
        self._ctl("-w", "-t", str(PG_CTL_TIMEOUT_S), "-m", "immediate", "stop")

    def stop(self) -> None:
        """A clean shutdown (``-m fast``), if it runs."""
        if self.can_restart and self.is_running():
            self._ctl("-w", "-t", str(PG_CTL_TIMEOUT_S), "-m", "fast", "stop")

    def ensure_running(self) -> None:
        """Start the server if a test left it stopped."""
        if not self.is_running():
            self.start()

    def teardown(self) -> None:
        """Stop a server this module started and delete its data directory."""
        if not self.can_restart:
            return
        try:
            self.stop()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    # ------------------------------------------------------------------ databases

    def database_url(self, name: str, *, host: str | None = None, port: int | None = None) -> str:
        """The SQLAlchemy URL of database ``name`` (through ``host:port`` if given, e.g. a
        proxy), with the password in clear (for connecting; print ``safe_url`` instead)."""
        url = make_url(self.url).set(database=name)
        if host is not None:
            url = url.set(host=host)
        if port is not None:
            url = url.set(port=port)
        return url.render_as_string(hide_password=False)

    def _admin_conninfo(self) -> str:
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    def admin_connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit psycopg connection to the admin database."""
        return psycopg.connect(self._admin_conninfo(), autocommit=True, connect_timeout=10)

    def create_database(self) -> str:
        """Create an empty database with a unique name; return the name."""
        name = f"test_{uuid.uuid4().hex[:20]}"
        with self.admin_connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop the database, closing whatever connections are still open to it."""
        self.ensure_running()
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _from_dsn(dsn: str) -> PgServer:
    try:
        url = make_url(dsn)
    except Exception as exc:  # the DSN is never printed: it may hold a password
        raise PgUnavailable(f"{ENV_DSN} is not a valid URL ({type(exc).__name__})") from None
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise PgUnavailable(f"{ENV_DSN} must be a postgresql:// URL, got {url.drivername}://")
    url = url.set(drivername="postgresql+psycopg")
    server = PgServer(
        url=url.render_as_string(hide_password=False),
        host=url.host or "localhost",
        port=url.port or 5432,
    )
    try:
        with server.admin_connect() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        shown = url.render_as_string(hide_password=True)
        raise PgUnavailable(f"cannot connect to {ENV_DSN} ({shown}): {exc}") from None
    return server


def _from_pgserver() -> PgServer:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
            from pgserver._commands import POSTGRES_BIN_PATH
            from pgserver.postgres_server import get_server
    except ImportError as exc:
        raise PgUnavailable(f"pgserver is not installed ({exc})") from None

    tmpdir = Path(tempfile.mkdtemp(prefix="atb-wal-pg-"))
    pgdata = tmpdir / "pgdata"
    run_as: str | None = None
    try:
        # initdb (trust authentication, user "postgres") and a first start on a socket only.
        run_as = get_server(pgdata, cleanup_mode="stop").system_user
        server = PgServer(
            url="",
            host="127.0.0.1",
            port=0,
            pg_ctl=POSTGRES_BIN_PATH / "pg_ctl",
            pgdata=pgdata,
            socket_dir=pgdata,
            log=pgdata / "log",
            run_as=run_as,
            _tmpdir=tmpdir,
        )
        server.stop()
        # Restart with TCP. postgresql.auto.conf is read last, so these win over the defaults.
        last_error: Exception | None = None
        for _ in range(3):  # a free port may be taken between finding it and listening on it
            port = _free_port()
            (pgdata / "postgresql.auto.conf").write_text(
                "listen_addresses = '127.0.0.1'\n"
                f"port = {port}\n"
                f"unix_socket_directories = '{pgdata}'\n"
                "max_connections = 100\n"
            )
            server.port = port
            server.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
            try:
                server.start()
                break
            except PgUnavailable as exc:
                last_error = exc
        else:
            raise PgUnavailable(f"PostgreSQL did not start: {last_error}")
        return server
    except PgUnavailable:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    except Exception as exc:
        with contextlib.suppress(Exception):
            subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
                capture_output=True,
                user=run_as,
                timeout=PG_CTL_TIMEOUT_S,
            )
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise PgUnavailable(f"pgserver could not start PostgreSQL: {exc!r}") from exc


def launch() -> PgServer:
    """The server from ``WAL_TEST_PG_DSN`` if set, else a new pgserver one; raise
    ``PgUnavailable`` (its message says what went wrong) if neither works."""
    dsn = os.environ.get(ENV_DSN)
    return _from_dsn(dsn) if dsn else _from_pgserver()
