"""F11: a segment file made huge (a 3 GiB sparse file: ``truncate -s 3G`` on a segment, or a
planted file under a segment's name) never makes ``atb wal verify``, ``atb wal repair``,
``atb wal status`` or an open read it into memory.

Each tool runs as a real subprocess on real files with its address space limited to 1 GiB
(``RLIMIT_AS``): before the fix, verify took 6.4 GB and died of ``MemoryError`` here. Each
must finish with the report it gave when it could read the whole file: the same defects at
the same file, line and byte offset. The files are sparse: they cost no disk, and neither
does the backup repair makes of them.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from wal import WALEntry, WALStorage
from wal.log.segment import list_segments, segment_name

BIN = Path(sys.executable).parent
ATB = shutil.which("atb", path=str(BIN))
ATB_CMD = [ATB] if ATB else [sys.executable, "-m", "cli.main"]
LIMIT = 1 << 30  # the children's address space
HUGE = 3 << 30  # the size a file is made: three times what a child may map

pytestmark = [pytest.mark.usefixtures("clean_env"), pytest.mark.timeout(300)]

OPEN = """
import resource, sys, orjson
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from wal.log.storage import WALStorage
try:
    s = WALStorage.open_readonly(sys.argv[1]) if sys.argv[2] == "ro" else WALStorage(sys.argv[1])
except Exception as exc:
    out = {{"error": type(exc).__name__, "line": getattr(exc, "line", None),
           "offset": getattr(exc, "offset", None), "path": str(getattr(exc, "path", ""))}}
else:
    out = s.recovery_report.to_dict()
    out["next_lsn"] = s.next_lsn
    s.close()
print(orjson.dumps(out).decode())
"""


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def run_atb(d: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [*ATB_CMD, "wal", "--dir", str(d), *args],
        preexec_fn=_limit,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "MemoryError" not in out.stderr and out.returncode >= 0, out.stderr[-3000:]
    return out.returncode, orjson.loads(out.stdout)


def open_log(d: Path, how: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", OPEN.format(limit=LIMIT), str(d), how],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    doc: dict[str, Any] = orjson.loads(out.stdout)
    return doc


def build(d: Path) -> int:
    """A log of three sealed segments and a last one; returns the next LSN."""
    with WALStorage(d, max_segment_bytes=4096, preallocate="off") as log:
        for i in range(30):
            log.append(WALEntry.create("log_trade", kwargs={"n": i, "pad": "x" * 300}))
        return log.next_lsn


def where(doc: dict[str, Any]) -> list[tuple[str, int, int, str, bool]]:
    return [
        (x["file"], x["line"], x["offset"], x["problem"], x["torn_tail"]) for x in doc["defects"]
    ]


def allocated(p: Path) -> int:
    return os.stat(p).st_blocks * 512


def test_the_last_segment_made_huge_is_its_preallocated_rest(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    next_lsn = build(d)
    last = [p for _, p in list_segments(d)][-1]
    records = last.stat().st_size
    data = sum(p.stat().st_size for _, p in list_segments(d))
    os.truncate(last, HUGE)  # zeros after its last record: what preallocated space is

    code, doc = run_atb(d, "verify", "--json")
    assert code == 0 and doc["ok"] and doc["defects"] == []
    assert doc["bytes"] == data and doc["last_lsn"] == next_lsn - 1
    for how in ("ro", "rw"):
        rep = open_log(d, how)
        assert rep.get("error") is None, rep
        assert rep["spare_bytes"] == HUGE - records and rep["defects"] == []
        assert rep["next_lsn"] == next_lsn
    code, doc = run_atb(d, "status", "--no-db", "--json")
    assert doc["next_lsn"] == next_lsn and doc["recovery"]["spare_bytes"] == HUGE - records
    code, doc = run_atb(d, "repair", "--yes", "--json")
    assert code == 0 and doc["nothing_to_do"] and doc["backup"] is None


def test_a_sealed_segment_made_huge_is_found_and_repaired(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    next_lsn = build(d)
    segs = [p for _, p in list_segments(d)]
    middle = segs[1]
    end = middle.stat().st_size
    lines = middle.read_bytes().count(b"\n")
    os.truncate(middle, HUGE)
    defect = (middle.name, lines + 1, end, "zero-filled tail (no complete record)", False)

    code, doc = run_atb(d, "verify", "--json")
    assert code == 1 and not doc["opens"]
    assert where(doc) == [defect]
    for how in ("ro", "rw"):  # the open refuses it, where verify says
        rep = open_log(d, how)
        assert (rep["error"], rep["path"], rep["line"], rep["offset"]) == (
            "WALCorruptionError",
            str(middle),
            lines + 1,
            end,
        )
    code, doc = run_atb(d, "status", "--no-db", "--json")
    assert code == 2 and "zero-filled tail" in doc["error"]

    code, doc = run_atb(d, "repair", "--yes", "--json")
    assert code == 0 and doc["opened"], doc
    assert [(x["file"], x["line"], x["offset"]) for x in doc["dropped"]] == [defect[:3]]
    copy = Path(doc["backup"]) / middle.name
    assert copy.stat().st_size == HUGE and allocated(copy) < 64 << 20  # sparse, as it was
    assert middle.stat().st_size == end  # its records, nothing more
    code, doc = run_atb(d, "verify", "--json")
    assert code == 0 and doc["ok"] and doc["last_lsn"] == next_lsn - 1


@pytest.mark.parametrize("garbage", [b"", b"x"], ids=["zeros", "zeros-then-a-byte"])
def test_a_planted_huge_file_under_the_next_segments_name(tmp_path: Path, garbage: bytes) -> None:
    """A file of 3 GiB under the name the next segment would have: the last segment, with
    no header (its zeros, or zeros and a byte at the very end): records are lost, a defect
    (never cut as a torn tail), which repair clears."""
    d = tmp_path / "wal"
    next_lsn = build(d)
    planted = d / segment_name(next_lsn)
    fd = os.open(planted, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, HUGE)
        if garbage:
            os.pwrite(fd, garbage, HUGE - len(garbage))
    finally:
        os.close(fd)
    problem = "incomplete record (no newline at the end)" if garbage else "zero-filled tail"

    code, doc = run_atb(d, "verify", "--json")
    assert code == 1 and not doc["opens"]
    found = where(doc)
    assert [x[:3] for x in found] == [(planted.name, 1, 0), (planted.name, 0, 0)]
    assert found[0][3].startswith(problem) and "no verifiable header" in found[1][3]
    for how in ("ro", "rw"):
        rep = open_log(d, how)
        assert (rep["error"], rep["path"], rep["line"], rep["offset"]) == (
            "WALCorruptionError",
            str(planted),
            1,
            0,
        )
    code, doc = run_atb(d, "repair", "--yes", "--json")
    assert code == 0 and doc["opened"], doc
    assert allocated(Path(doc["backup"]) / planted.name) < 64 << 20
    code, doc = run_atb(d, "verify", "--json")
    assert code == 0 and doc["ok"] and doc["last_lsn"] == next_lsn - 1
