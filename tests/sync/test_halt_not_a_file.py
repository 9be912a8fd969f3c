"""The kill switch fails safe, at once: anything at ``<WAL_DIR>/HALT`` that is not a readable
regular file (a FIFO, a device, a directory, a symlink) means HALTED, with a reason saying
what is wrong with it, and is never opened in a way that blocks: the engine reads the switch
before every submit, so a FIFO there would otherwise hang every order.

In-process calls run in a thread with a bounded ``join``: a call that blocks fails the test
(and is released by opening the FIFO from the other side) instead of hanging it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fifo_guard import GUARD_S, answers
from orders_helpers import buy, make_rig, run

from wal.orders import TradingHalted
from wal.sync.halt import HALT_FILE, clear_halt, operator_halt, read_halt, write_halt


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "device", "huge"])
def test_anything_but_a_halt_file_at_halt_halts(tmp_path: Path, kind: str) -> None:
    path = tmp_path / HALT_FILE
    said = {
        "fifo": "is a FIFO (named pipe), not a halt file",
        "directory": "is a directory, not a halt file",
        "symlink": "is a symlink, not a halt file",
        "device": "is a device, not a halt file",
        "huge": "not a valid halt file",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_text('{"reason": "r", "at": "t", "by": "b"}')
        path.symlink_to(tmp_path / "elsewhere")  # even a good halt file: never followed
    elif kind == "device":
        path.symlink_to("/dev/null")  # a symlink to a device: refused without reading it
        said = "is a symlink, not a halt file"
    else:
        path.write_bytes(b" " * (1 << 20))
    halt = answers(lambda: read_halt(tmp_path), path)
    assert halt is not None, kind
    assert said in halt.reason, halt.reason
    assert "atb orders resume" in halt.reason


def test_resume_removes_a_fifo_at_halt_and_halt_replaces_a_fifo_at_its_temp(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / HALT_FILE)
    was = answers(lambda: clear_halt(tmp_path), tmp_path / HALT_FILE)
    assert was is not None and "FIFO" in was.reason
    assert not os.path.lexists(tmp_path / HALT_FILE)
    assert read_halt(tmp_path) is None
    tmp = tmp_path / (HALT_FILE + ".tmp")
    os.mkfifo(tmp)  # planted where `atb orders halt` writes first: O_TRUNC would block on it
    answers(lambda: write_halt(tmp_path, "drill"), tmp)
    halt = read_halt(tmp_path)
    assert halt is not None and halt.reason == "drill"


def test_submit_with_a_fifo_at_halt_is_refused_without_blocking(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    try:
        run(rig.om.start())
        fifo = tmp_path / "wal" / HALT_FILE
        os.mkfifo(fifo)
        halt = answers(lambda: operator_halt(rig.ddb), fifo)
        assert halt is not None and "FIFO" in halt.reason
        with pytest.raises(TradingHalted, match="FIFO"):
            answers(lambda: run(rig.om.submit(buy())), fifo)
        os.unlink(fifo)
        order = run(rig.om.submit(buy()))  # the switch removed: trading again
        assert order.client_order_id
    finally:
        rig.close()


def test_atb_orders_resume_and_status_answer_with_a_fifo_at_halt(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.close()
    url = f"sqlite:///{tmp_path / 'atb.db'}"
    os.mkfifo(tmp_path / "wal" / HALT_FILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAL_")}
    env.pop("DATABASE_URL", None)
    # the installed `atb` (as the operator runs it): `python -m` would put the cwd, which
    # holds the log directory `wal`, before the package on sys.path
    atb_bin = shutil.which("atb", path=str(Path(sys.executable).parent))
    cmd = [atb_bin] if atb_bin else [sys.executable, "-m", "cli.main"]
    base = [*cmd, "orders", "--dir", "wal", "--database-url", url]

    def atb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=GUARD_S,  # the guard: a hang is a failure, not a stuck suite
            check=False,
        )

    r = atb("status", "--no-broker")
    assert "Traceback" not in r.stderr
    assert "trading: HALTED" in r.stdout and "FIFO" in r.stdout, (r.stdout, r.stderr)
    r = atb("resume")
    assert r.returncode == 0 and "RESUMED" in r.stdout, (r.stdout, r.stderr)
    assert not os.path.lexists(tmp_path / "wal" / HALT_FILE)
