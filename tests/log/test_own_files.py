"""Issue 21, items 5 and 6: the library changes nothing that is not its own.

Every small file it writes (``MANIFEST``, ``database.json``, ``manager-status.json``, the CLI's
``last-cli-sync.json``) goes through one helper, ``write_file_atomic``: a fresh temp file
(``O_CREAT | O_EXCL | O_NOFOLLOW``, 0600), fsync, rename, directory fsync. A symlink planted at
the temp name is removed, never written through, and its target keeps its bytes and mode.
``WALStorage`` pointed at a regular file changes nothing and raises one ``WALConfigError``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers_log import make_entry

from wal import WALStorage
from wal.errors import WALConfigError, WALUnsafeFileError
from wal.log.fileops import OSFileOps, write_file_atomic
from wal.log.manifest import read_manifest, write_manifest
from wal.sync.identity import read_target, record_target
from wal.sync.status import CLI_SYNC_FILE, MANAGER_STATUS_FILE, write_view


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


WRITERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "MANIFEST": ("MANIFEST", lambda d: write_manifest(OSFileOps(), d, 1)),
    "database.json": ("database.json", lambda d: record_target(d, "sqlite:///x.db", "id-1")),
    "manager-status.json": (
        MANAGER_STATUS_FILE,
        lambda d: write_view(d, MANAGER_STATUS_FILE, {"pid": 1, "updated_at": "x"}),
    ),
    "last-cli-sync.json": (CLI_SYNC_FILE, lambda d: write_view(d, CLI_SYNC_FILE, {"ok": True})),
}


@pytest.mark.parametrize("what", sorted(WRITERS))
@pytest.mark.parametrize("planted", ["tmp", "file"])
def test_a_symlink_planted_at_a_file_the_library_writes_is_never_written_through(
    tmp_path: Path, what: str, planted: str
) -> None:
    name, write = WRITERS[what]
    d = tmp_path / "log"
    d.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim.chmod(0o644)
    link = d / (name + ".tmp" if planted == "tmp" else name)
    link.symlink_to(victim)
    write(d)
    assert victim.read_bytes() == b"precious" and _mode(victim) == 0o644
    assert not (d / (name + ".tmp")).exists() and not (d / (name + ".tmp")).is_symlink()
    written = d / name
    assert not written.is_symlink() and written.is_file()
    assert _mode(written) == 0o600


def test_the_written_files_read_back(tmp_path: Path) -> None:
    d = tmp_path / "log"
    d.mkdir(mode=0o700)
    for _, write in WRITERS.values():
        write(d)
    assert read_manifest(d) == 1
    target = read_target(d)
    assert target is not None and target.database_id == "id-1"


def test_a_directory_at_the_temp_name_is_refused_not_removed(tmp_path: Path) -> None:
    d = tmp_path / "log"
    (d / "MANIFEST.tmp").mkdir(parents=True)
    with pytest.raises(WALUnsafeFileError, match=r"MANIFEST\.tmp"):
        write_file_atomic(OSFileOps(), d, "MANIFEST", b"x\n")
    assert (d / "MANIFEST.tmp").is_dir() and not (d / "MANIFEST").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    class Full(OSFileOps):
        def write(self, fd: int, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    d = tmp_path
    (d / "MANIFEST").write_bytes(b"old")
    with pytest.raises(OSError) as info:
        write_file_atomic(Full(), d, "MANIFEST", b"new")
    assert info.value.filename == str(d / "MANIFEST.tmp")
    assert (d / "MANIFEST").read_bytes() == b"old" and not (d / "MANIFEST.tmp").exists()


# ---------------------------------------------------------------- 6: a regular file


@pytest.mark.parametrize("where", ["the file", "below the file"])
def test_a_regular_file_as_the_log_directory_is_refused_and_left_as_it_is(
    tmp_path: Path, where: str
) -> None:
    f = tmp_path / "not-a-dir"
    f.write_bytes(b"someone's data")
    f.chmod(0o644)
    before = os.stat(f)
    path = f if where == "the file" else f / "wal"
    with pytest.raises(WALConfigError) as info:
        WALStorage(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and "not a directory" in text
    after = os.stat(f)
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
    )
    assert f.read_bytes() == b"someone's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


def test_a_log_directory_is_still_made_owner_only(tmp_path: Path) -> None:
    d = tmp_path / "a" / "log"
    with WALStorage(d) as log:
        log.append(make_entry(1))
    assert _mode(d) == 0o700 and _mode(d.parent) == 0o700


def test_a_directory_holding_other_files_keeps_its_mode(tmp_path: Path) -> None:
    """Pointed at a directory that is not only the log's (a home, a shared /tmp), the log
    writes its own files (0600) and changes nothing else: not the directory's mode."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o755)
    (d / "notes.txt").write_bytes(b"mine")
    with WALStorage(d) as log:
        log.append(make_entry(1))
    assert _mode(d) == 0o755 and (d / "notes.txt").read_bytes() == b"mine"
    own = d / "00000000000000000001.wal"
    assert _mode(own) == 0o600


def test_a_directory_holding_only_a_log_is_still_tightened(tmp_path: Path) -> None:
    d = tmp_path / "log"
    with WALStorage(d) as log:
        log.append(make_entry(1))
    d.chmod(0o755)
    WALStorage(d).close()
    assert _mode(d) == 0o700


def test_the_paper_brokers_state_file_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    from decimal import Decimal

    from wal.orders.paper import PaperBroker

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    state = tmp_path / "paper.json"
    (tmp_path / "paper.json.tmp").symlink_to(victim)
    broker = PaperBroker(state_path=state)
    broker.set_price("BTCUSDT", Decimal("100"))
    assert victim.read_bytes() == b"precious"
    assert state.is_file() and not state.is_symlink() and _mode(state) == 0o600
    assert PaperBroker(state_path=state)._prices == {"BTCUSDT": Decimal("100")}


def test_the_paper_brokers_changes_file_is_never_written_through_a_symlink(
    tmp_path: Path,
) -> None:
    """A change is appended to ``paper.json.changes``: a symlink planted there is refused
    (the change fails, loudly), never appended through; the real file is 0600."""
    from decimal import Decimal

    from wal.orders.paper import PaperBroker

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    state = tmp_path / "paper.json"
    broker = PaperBroker(state_path=state)
    broker.set_price("BTCUSDT", Decimal("100"))  # the first save: the snapshot
    (tmp_path / "paper.json.changes").symlink_to(victim)
    with pytest.raises(OSError):
        broker.set_price("BTCUSDT", Decimal("101"))
    assert victim.read_bytes() == b"precious"
    (tmp_path / "paper.json.changes").unlink()
    broker.close()
    broker.set_price("BTCUSDT", Decimal("102"))  # after a failed write: the whole state
    broker.set_price("BTCUSDT", Decimal("103"))  # then a change
    changes = tmp_path / "paper.json.changes"
    assert changes.is_file() and not changes.is_symlink() and _mode(changes) == 0o600
    assert PaperBroker(state_path=state)._prices == {"BTCUSDT": Decimal("103")}
