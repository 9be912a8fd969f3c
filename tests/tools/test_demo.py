"""`atb demo` runs its outage for real and its closing check passes, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from pg import PgServer

from cli.main import atb
from wal.tools.demo import run_demo


def test_demo_cli_on_sqlite(tmp_path: Path) -> None:
    result = CliRunner().invoke(atb, ["demo", "--dir", str(tmp_path / "demo"), "--rounds", "3"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "OUTAGE" in out
    assert "expected" in out and ": ok)" in out  # the balance read during the outage
    assert "OK: nothing lost, nothing doubled" in out
    assert "MISMATCH" not in out
    assert "temporary" not in out  # --dir keeps the log where it says


def test_demo_installed_command_in_a_fresh_directory(tmp_path: Path) -> None:
    # as a newcomer runs it: the console script, default settings, a fresh working directory
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_") and k != "DATABASE_URL"}
    atb_script = Path(sys.executable).with_name("atb")
    cmd = [str(atb_script)] if atb_script.exists() else [sys.executable, "-m", "cli.main"]
    proc = subprocess.run(
        [*cmd, "demo", "--rounds", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: nothing lost, nothing doubled" in proc.stdout
    assert "Traceback" not in proc.stderr
    # the log it names lived in a temporary directory: it says so, and it is gone
    log_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("log:"))
    assert "temporary: removed at the end" in log_line
    log_dir = Path(log_line.split("log:", 1)[1].split(" (temporary")[0].strip())
    assert not log_dir.exists() and not log_dir.parent.exists()


def test_demo_on_postgresql_cuts_the_network(pg_url: PgServer, tmp_path: Path) -> None:
    name = pg_url.create_database()
    try:
        lines: list[str] = []
        result = run_demo(
            workdir=tmp_path, database_url=pg_url.database_url(name), rounds=3, echo=lines.append
        )
        assert result.ok, result.problems
        assert result.operations_during_outage == 18
        assert result.balance_read_during_outage == result.balance_expected
        assert result.entries_applied == result.entries_logged == result.operations
    finally:
        pg_url.drop_database(name)
