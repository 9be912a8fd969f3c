"""Issue 11, sections 2-6: the directory, a shorter log, API misuse, bad input, resource limits.

Each test failed on the code before the issue's fixes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from faultfs import CrashFS, SimulatedCrash
from helpers_log import data_end, make_entry

from cli.main import atb
from wal import (
    WALCorruptionError,
    WALEntry,
    WALEntryNotFoundError,
    WALEntryStatus,
    WALLockedError,
    WALSerializationError,
    WALStorage,
    WALWriteError,
)
from wal.errors import (
    WALCompactionError,
    WALEntryTooLargeError,
    WALForkedError,
    WALFormatVersionError,
    WALLockLostError,
    WALMissingSegmentError,
    WALUnsafeFileError,
)
from wal.log.lock import LOCK_NAME
from wal.log.record import encode_line
from wal.log.repair import repair_log
from wal.log.segment import list_segments, read_chunks, segment_name
from wal.log.verify import verify_log

# ---------------------------------------------------------------- 2: the directory is ours


def _log_with(d: Path, n: int = 3) -> list[WALEntry]:
    with WALStorage(d) as log:
        return [log.append(make_entry(i)) for i in range(n)]


def test_a_symlinked_segment_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    d = tmp_path / "log"
    _log_with(d)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious data\n")
    (d / segment_name(100)).symlink_to(victim)  # a "last segment" pointing elsewhere
    for opener in (WALStorage, WALStorage.open_readonly):
        with pytest.raises(WALUnsafeFileError, match="symlink"):
            opener(d)
    assert victim.read_bytes() == b"precious data\n"
    assert not list(d.glob("*.broken*"))


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    d = tmp_path / "log"
    _log_with(d)
    (d / LOCK_NAME).unlink()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious data\n")
    (d / LOCK_NAME).symlink_to(victim)
    with pytest.raises(WALUnsafeFileError, match="LOCK"):
        WALStorage(d)
    assert victim.read_bytes() == b"precious data\n"


@pytest.mark.parametrize("name", [segment_name(50), segment_name(1)[:-4] + ".wal.tmp"])
def test_a_directory_named_like_a_log_file_is_refused(tmp_path: Path, name: str) -> None:
    d = tmp_path / "log"
    _log_with(d)
    (d / name).mkdir()
    with pytest.raises(WALUnsafeFileError, match="directory"):
        WALStorage(d)


def test_every_directory_the_log_creates_is_0700(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        d = tmp_path / "a" / "b" / "log"
        WALStorage(d).close()
    finally:
        os.umask(old)
    for p in (tmp_path / "a", tmp_path / "a" / "b", d):
        assert p.stat().st_mode & 0o777 == 0o700, p


def test_a_deleted_lock_lets_no_second_writer_in_and_halts_the_first(tmp_path: Path) -> None:
    d = tmp_path / "log"
    first = WALStorage(d, max_segment_bytes=4096)
    try:
        first.append(make_entry(0))
        (d / LOCK_NAME).unlink()
        with pytest.raises(WALLockedError):
            WALStorage(d)  # the directory itself is locked too
        with pytest.raises(WALLockLostError, match="LOCK was deleted"):
            for i in range(1, 40):  # the check runs after a rotation
                first.append(make_entry(i, blob=400))
        with pytest.raises(WALLockLostError):
            first.append(make_entry(99))
    finally:
        first.close()


def test_a_forked_child_can_neither_write_nor_release_the_parents_lock(tmp_path: Path) -> None:
    d = tmp_path / "log"
    log = WALStorage(d)
    try:
        log.append(make_entry(0))
        pid = os.fork()
        if pid == 0:  # the child: report by exit code only
            code = 0
            try:
                log.append(make_entry(1))
                code = 3
            except WALForkedError:
                pass
            except BaseException:
                code = 4
            try:  # the asyncio path refuses too
                asyncio.run(log.append_async(make_entry(5)))
                code = code or 5
            except WALForkedError:
                pass
            except BaseException:
                code = code or 6
            log.close()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        probe = subprocess.run(
            [sys.executable, "-c", "import sys, wal; wal.WALStorage(sys.argv[1])", str(d)],
            capture_output=True,
            text=True,
        )
        assert "WALLockedError" in probe.stderr, "the child's close() released the lock"
        assert log.append(make_entry(2)).lsn == 2
    finally:
        log.close()


# ---------------------------------------------------------------- 3: never a shorter log


def _seven_pending(d: Path) -> None:
    with WALStorage(d) as log:
        log.append_many(make_entry(i) for i in range(7))


@pytest.mark.parametrize("damage", ["delete", "zero-fill", "empty"])
def test_a_lost_first_segment_is_detected_and_repair_accepts_it(
    tmp_path: Path, damage: str
) -> None:
    d = tmp_path / "log"
    _seven_pending(d)
    seg = d / segment_name(1)
    if damage == "delete":
        seg.unlink()
    elif damage == "zero-fill":
        seg.write_bytes(bytes(seg.stat().st_size))
    else:
        seg.write_bytes(b"")
    with pytest.raises(WALMissingSegmentError):
        WALStorage(d)
    with pytest.raises(WALCorruptionError):
        WALStorage.open_readonly(d)
    assert not verify_log(d).ok
    rep = repair_log(d)  # the documented path: back up, then accept the loss
    assert rep.backup is not None and rep.opened
    with WALStorage(d) as log:
        assert log.count(WALEntryStatus.PENDING) == 0


def test_a_zero_length_middle_segment_is_corruption(tmp_path: Path) -> None:
    d = tmp_path / "log"
    with WALStorage(d, max_segment_bytes=4096) as log:
        log.append_many(make_entry(i, blob=500) for i in range(6))
        for i in range(6, 20):
            log.append(make_entry(i, blob=500))
    segs = list_segments(d)
    assert len(segs) >= 3
    segs[1][1].write_bytes(b"")
    with pytest.raises(WALCorruptionError, match="no valid header"):
        WALStorage(d)
    assert segs[1][1].exists()


def test_a_lost_page_inside_an_unacknowledged_write_is_cut_as_a_torn_tail(tmp_path: Path) -> None:
    """A multi-page write never acknowledged: an earlier page lost, a later page kept."""
    d = tmp_path / "log"
    fs = CrashFS(d, crash_at=None)
    log = WALStorage(d, fs=fs)
    acked = [log.append(make_entry(i)) for i in range(3)]
    fs.crash_at, fs.crash_when = len(fs.ops) + 2, "before"  # the write happens, not its fsync
    with pytest.raises((SimulatedCrash, WALWriteError)):  # the power went out mid-append
        log.append_many(make_entry(100 + i, blob=300) for i in range(40))  # ~6 pages
    for seed in range(6):
        img = tmp_path / f"img{seed}"
        files = fs.crash_image(img, "hole", random.Random(seed))
        assert b"\x00" * 64 in files[segment_name(1)]
        with WALStorage(img) as again:
            got = [e.entry_id for e in again.iter_entries()]
        assert got[:3] == [e.entry_id for e in acked]
        assert len(got) < 43  # nothing after the hole was kept


# ---------------------------------------------------------------- 4: misuse of the API


def test_update_status_refuses_an_entry_object_from_another_log(tmp_path: Path) -> None:
    with WALStorage(tmp_path / "a") as a, WALStorage(tmp_path / "b") as b:
        mine = a.append(make_entry(1))
        theirs = b.append(make_entry(2))  # also LSN 1
        with pytest.raises(WALEntryNotFoundError):
            a.update_status(theirs, WALEntryStatus.COMPLETED)
        with pytest.raises(WALEntryNotFoundError):
            a.update_statuses([(theirs, WALEntryStatus.COMPLETED, None, None)], durable=False)
        a.compact()
        assert a.get_entry(mine.entry_id).status is WALEntryStatus.PENDING


def test_update_status_refuses_a_stale_entry_object(tmp_path: Path) -> None:
    with WALStorage(tmp_path / "a", max_segment_bytes=4096) as log:
        old = log.append(make_entry(1, blob=3000))
        log.update_status(old, WALEntryStatus.COMPLETED)
        log.append(make_entry(2, blob=3000))
        log.compact()
        with pytest.raises(WALEntryNotFoundError):
            log.update_status(old, WALEntryStatus.FAILED, "stale")


def test_a_status_update_and_the_compaction_dropping_its_entry_are_exclusive(
    tmp_path: Path,
) -> None:
    with WALStorage(tmp_path / "a", max_segment_bytes=4096) as log:
        e = log.append(make_entry(1, blob=3000))
        log.update_status(e, WALEntryStatus.COMPLETED)
        log.append(make_entry(2, blob=3000))
        log.yield_to_appenders = log.compact  # type: ignore[method-assign]  # runs mid-update
        with pytest.raises(WALEntryNotFoundError):
            log.update_statuses([(e.entry_id, WALEntryStatus.FAILED, "x", 1)], durable=False)


def test_find_by_idempotency_key_after_the_front_segments_were_dropped(tmp_path: Path) -> None:
    with WALStorage(tmp_path / "a", max_segment_bytes=4096) as log:
        es = [log.append(make_entry(i, blob=500, key=f"order-{i}")) for i in range(30)]
        for e in es:
            log.update_status(e, WALEntryStatus.COMPLETED)
        log.append(make_entry(99))
        log.compact()
        assert log.find_by_idempotency_key("order-0") is None
        assert log.find_by_idempotency_key("order-29") is None
        assert len(log._keys) == 0  # section 6: the map is pruned with compaction


# ---------------------------------------------------------------- 5: bad input, tampered records


class Side(StrEnum):
    BUY = "buy"


class OddStr(str):
    def __str__(self) -> str:
        raise RuntimeError("boom")


class OddDecimal(Decimal):
    def __str__(self) -> str:
        return "not a number"


class OddDatetime(datetime):
    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return "yesterday"


@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        ((), {"note": "a\ud800b"}, "kwargs['note']"),
        ((), {"a\udfffb": 1}, "kwargs"),
        (("x\ud800",), None, "args[0]"),
        ((), {"deep": None}, None),  # made 300 levels deep below
    ],
)
def test_unloggable_text_and_nesting_raise_a_serialization_error(
    tmp_path: Path, args: tuple[Any, ...], kwargs: dict[str, Any] | None, path: str | None
) -> None:
    if "deep" in (kwargs or {}):
        v: Any = 1
        for _ in range(300):
            v = [v]
        kwargs = {"deep": v}
    with pytest.raises(WALSerializationError) as ei:
        WALEntry.create("log_trade", args, kwargs)
    if path is not None:
        assert path in str(ei.value)


def test_surrogates_in_operation_key_or_status_error_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(WALSerializationError, match="operation"):
        WALEntry.create("log\ud800trade")
    with pytest.raises(WALSerializationError, match="idempotency_key"):
        WALEntry.create("log_trade", idempotency_key="k\udc00")
    with WALStorage(tmp_path / "a") as log:
        e = log.append(make_entry(1))
        size = sum(p.stat().st_size for _, p in list_segments(tmp_path / "a"))
        with pytest.raises(WALSerializationError):
            log.update_status(e, WALEntryStatus.FAILED, "bad \ud800 text")
        assert sum(p.stat().st_size for _, p in list_segments(tmp_path / "a")) == size


def test_str_subclasses_and_odd_subclasses_are_stored_by_value(tmp_path: Path) -> None:
    e = WALEntry.create(
        "log_trade",
        kwargs={
            Side.BUY: OddStr("x"),
            OddStr("k"): 1,
            "qty": OddDecimal("1.50"),
            "at": OddDatetime(2026, 1, 2, tzinfo=UTC),
        },
    )
    with WALStorage(tmp_path / "a") as log:
        log.append(e)
    with WALStorage(tmp_path / "a") as log:
        (got,) = list(log.iter_entries())
    assert got.kwargs == {
        "buy": "x",
        "k": 1,
        "qty": Decimal("1.50"),
        "at": datetime(2026, 1, 2, tzinfo=UTC),
    }
    assert type(got.kwargs["qty"]) is Decimal


def _forge(path: Path, line_no: int, change: Any) -> None:
    """Rewrite one line's payload and recompute its checksum (a tamperer's edit)."""
    lines = path.read_bytes().split(b"\n")
    payload = lines[line_no - 1][17:]
    lines[line_no - 1] = encode_line(change(payload))[:-1]
    path.write_bytes(b"\n".join(lines))


FORGERIES = {
    "bad $decimal": (2, lambda p: p.replace(b'{"$decimal":"1.50"}', b'{"$decimal":"1.5x"}')),
    "bad created_at": (3, lambda p: p.replace(b'"created_at":"', b'"created_at":"X')),
    "bad $datetime": (
        2,
        lambda p: p.replace(b'"kwargs":{', b'"kwargs":{"t":{"$datetime":"2026-02-30T00:00:00"},'),
    ),
    "unknown tag": (2, lambda p: p.replace(b'"kwargs":{', b'"kwargs":{"t":{"$pickle":"x"},')),
    "header last=[1]": (1, lambda p: p.replace(b'"last":null', b'"last":[1]')),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
@pytest.mark.parametrize("fast", [False, True])
def test_a_record_with_a_valid_checksum_but_bad_contents_is_a_located_defect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, fast: bool
) -> None:
    import wal.log.fastindex

    d = tmp_path / "log"
    with WALStorage(d) as log:
        log.append_many(make_entry(1) for _ in range(4))
    seg = d / segment_name(1)
    line, change = FORGERIES[name]
    _forge(seg, line, change)
    if fast:  # the regex fast path, as for a large log
        monkeypatch.setattr(wal.log.fastindex, "_slow_bytes", 1 << 30)
    with pytest.raises(WALCorruptionError) as ei:
        WALStorage(d)
    assert ei.value.path == seg and ei.value.line == line
    rep = verify_log(d)
    assert not rep.ok and any(x.line == line for x in rep.defects)
    res = CliRunner().invoke(atb, ["wal", "--dir", str(d), "verify"])
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_an_unknown_format_version_is_refused_naming_it(tmp_path: Path) -> None:
    d = tmp_path / "log"
    _log_with(d)
    _forge(d / segment_name(1), 1, lambda p: p.replace(b'"version":1', b'"version":99'))
    for mode in ("tolerate_tail", "skip_corrupt"):
        with pytest.raises(WALFormatVersionError, match="99"):
            WALStorage(d, recovery=mode)


def test_inspect_and_verify_escape_control_characters(tmp_path: Path) -> None:
    d = tmp_path / "log"
    with WALStorage(d) as log:
        log.append(WALEntry.create("log_trade\x1b[2J\nFAKE 1 pending", kwargs={}))
    res = CliRunner().invoke(atb, ["wal", "--dir", str(d), "inspect"])
    assert res.exit_code == 0
    assert "\x1b" not in res.output and "\nFAKE" not in res.output
    assert "\\x1b[2J\\x0aFAKE" in res.output
    (d / (segment_name(1)[:-4] + "\x1b[31m.wal.tmp")).write_bytes(b"x")
    res = CliRunner().invoke(atb, ["wal", "--dir", str(d), "verify"])
    assert "\x1b" not in res.output


# ---------------------------------------------------------------- 6: resource limits


@pytest.fixture
def small_fs(tmp_path: Path) -> Any:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_compaction_hitting_enospc_leaves_the_log_writable(small_fs: Path) -> None:
    d = small_fs / "log"
    with WALStorage(d, max_segment_bytes=64 * 1024) as log:
        es = [log.append(make_entry(i, blob=1000)) for i in range(60)]  # ~65 KB
        log.update_status(es[0], WALEntryStatus.COMPLETED)
        filler = small_fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the disk, then give back a little: room for appends, not for compaction
            with pytest.raises(OSError) as full:
                while True:
                    os.write(fd, bytes(4096))
            assert full.value.errno == errno.ENOSPC
            os.ftruncate(fd, os.fstat(fd).st_size - 24 * 1024)
        finally:
            os.close(fd)
        with pytest.raises(WALCompactionError, match="ENOSPC"):
            log.compact()
        assert not list(d.glob("*.tmp"))
        log.append(make_entry(1000))  # appends go on
        filler.unlink()
        log.compact()
    with WALStorage(d) as log:
        assert log.count(WALEntryStatus.PENDING) == 60


def test_read_descriptors_are_bounded_and_emfile_has_its_own_message(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import resource, sys
        from helpers_log import make_entry
        from wal import WALStorage, WALWriteError
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))
        log = WALStorage(sys.argv[1], max_segment_bytes=4096)
        for i in range(400):  # ~130 segments, each read back once
            log.append(make_entry(i, blob=1000))
            list(log.iter_entries())
        held = []
        try:
            while True:
                held.append(open(sys.argv[1] + "/LOCK"))
        except OSError:
            pass
        try:
            for i in range(10):
                log.append(make_entry(i, blob=1000))
        except WALWriteError as exc:
            print("ERR", exc)
        """
    )
    here = Path(__file__).resolve().parents[1] / "support"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), *sys.path])}
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "log")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "file descriptors" in r.stdout


def test_an_entry_over_max_entry_bytes_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with WALStorage(tmp_path / "a") as log:
        with pytest.raises(WALEntryTooLargeError, match="max_entry_bytes"):
            log.append(make_entry(1, blob=5 * 1024 * 1024))
        with pytest.raises(WALEntryTooLargeError):
            log.append_many([make_entry(2), make_entry(3, blob=5 * 1024 * 1024)])
        with pytest.raises(WALEntryTooLargeError):  # the asyncio path has the same limit
            asyncio.run(log.append_async(make_entry(5, blob=5 * 1024 * 1024)))
        with pytest.raises(WALEntryTooLargeError):
            asyncio.run(log.append_many_async([make_entry(6), make_entry(7, blob=5 * 1024 * 1024)]))
        assert log.next_lsn == 1
    with WALStorage(tmp_path / "a", max_entry_bytes=8 * 1024 * 1024) as log:
        assert log.append(make_entry(4, blob=5 * 1024 * 1024)).lsn == 1


@pytest.mark.timeout(120)
def test_a_long_record_is_read_without_quadratic_copying(tmp_path: Path) -> None:
    """32 MiB in 1 KiB chunks: a growing buffer copies ~512 GB; pieces joined once, 32 MB."""
    p = tmp_path / "long"
    p.write_bytes(b"x" * (32 << 20) + b"\nend")
    fd = os.open(p, os.O_RDONLY)
    try:
        pieces = list(read_chunks(fd, 1024))
    finally:
        os.close(fd)
    assert pieces[0][1] == (32 << 20) + 1 and pieces[-1][0].endswith(b"end")


def test_status_shows_a_suspect_tail_as_a_problem(tmp_path: Path) -> None:
    d = tmp_path / "log"
    _log_with(d)
    seg = d / segment_name(1)
    data = bytearray(seg.read_bytes())
    data[data_end(data) - 10] ^= 1  # inside the last complete record
    seg.write_bytes(bytes(data))
    WALStorage(d).close()  # cuts it, loudly
    env = {"WAL_DIR": str(d), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    res = CliRunner().invoke(atb, ["wal", "status", "--no-db", "--json"], env=env)
    doc = orjson.loads(res.stdout)
    assert res.exit_code == 1 and any("suspect" in p for p in doc["health"]["problems"])


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_a_lock_that_is_not_a_file_is_a_defect_that_repair_moves_aside(
    tmp_path: Path, kind: str
) -> None:
    """A LOCK no writer can take (a directory, a symlink) stops the engine: verify reports
    it, status says so, and repair moves it aside (its target untouched) so the log opens."""
    d = tmp_path / "log"
    entries = _log_with(d)
    (d / LOCK_NAME).unlink()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious data\n")
    if kind == "directory":
        (d / LOCK_NAME).mkdir()
    else:
        (d / LOCK_NAME).symlink_to(victim)
    with pytest.raises(WALUnsafeFileError, match="LOCK"):
        WALStorage(d)
    rep = verify_log(d)
    assert not rep.ok and any(x.file == LOCK_NAME for x in rep.defects)
    status = CliRunner().invoke(atb, ["wal", "--dir", str(d), "status", "--no-db"])
    assert status.exit_code != 0 and "no writer can lock the log" in status.output
    fixed = repair_log(d)
    assert fixed.opened and any("LOCK" in n and "moved" in n for n in fixed.notes)
    assert victim.read_bytes() == b"precious data\n"
    with WALStorage(d) as log:
        assert [e.entry_id for e in log.iter_entries()] == [e.entry_id for e in entries]
