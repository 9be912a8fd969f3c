"""The paper broker's durable state (wal/orders/paperstate.py): a snapshot and its changes.

Every test compares the whole state a fresh broker reads back with the state of the broker
that wrote it: what a restarted ``atb paper-broker serve`` would continue from.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from wal.log.fileops import OSFileOps
from wal.orders.faults import FaultPlan
from wal.orders.models import OrderIntent
from wal.orders.paper import PaperBroker

NEVER = 1 << 40  # a changes file this large is never folded into a snapshot


def intent(cid: str, **kw: Any) -> OrderIntent:
    base: dict[str, Any] = {"symbol": "AAPL", "side": "buy", "quantity": Decimal("10")}
    base.update(kw)
    return OrderIntent(client_order_id=cid, **base)


def whole(broker: PaperBroker) -> dict[str, Any]:
    """What the broker holds, as its snapshot would (without the change counter)."""
    with broker._lock:
        return broker._state()


def reloaded(path: Path, **kw: Any) -> PaperBroker:
    return PaperBroker(seed=1, state_path=path, **kw)


def broker_at(path: Path, *, fold_at: int = NEVER, **kw: Any) -> PaperBroker:
    b = PaperBroker(seed=1, state_path=path, **kw)
    assert b._file is not None
    b._file.min_changes_bytes = fold_at
    return b


def test_every_kind_of_change_reads_back_from_the_changes_alone(tmp_path: Path) -> None:
    """After each kind of change (an order that fills in parts, a resting limit order that a
    price move fills, a stop that triggers, a cancel, a random-walk step), a fresh broker
    reads exactly the writer's state, from the first snapshot and appended changes only:
    no change is left out of what is appended."""
    path = tmp_path / "paper.json"
    plan = FaultPlan(seed=1, partial_fills=(Decimal("0.3"), Decimal("0.3"), Decimal("0.4")))
    b = broker_at(path, faults=plan, auto_fill=False)
    steps = [
        lambda: b.set_price("AAPL", Decimal("100")),
        lambda: b.submit(intent("m1")),
        lambda: b.advance(),  # the first part of m1
        lambda: b.submit(intent("l1", order_type="limit", limit_price=Decimal("90"))),
        lambda: b.submit(intent("s1", side="sell", order_type="stop", stop_price=Decimal("95"))),
        lambda: b.submit(intent("c1", symbol="MSFT", order_type="limit", limit_price=Decimal(1))),
        lambda: b.cancel(b.orders_with_client_id("c1")[0].broker_order_id),
        lambda: b.advance(),
        lambda: b.set_price("AAPL", Decimal("89")),  # l1 marketable, s1 triggered
        lambda: b.advance(),
        lambda: b.advance(),
        lambda: b.step_prices(),
    ]
    for step in steps:
        step()
        assert whole(reloaded(path, faults=plan, auto_fill=False)) == whole(b)
    assert b._file is not None
    assert b._file.snapshots_written == 1  # the first save; every other one appended
    assert b._file.changes_written >= len(steps) - 1  # step_prices: a change per symbol
    assert len(b.all_fills()) >= 6


def test_the_whole_state_is_written_rarely_and_a_change_costs_its_own_size(
    tmp_path: Path,
) -> None:
    """2,000 orders: the whole state is written a few times (each once the changes outgrew
    it), not once per change; each change appends a line of its own size, and the last
    ones are no larger than the first (before, every change rewrote every order)."""
    path = tmp_path / "paper.json"
    b = broker_at(path, fold_at=64 * 1024)
    sizes = []
    for i in range(2000):
        before = b._file.changes_bytes if b._file else 0
        b.submit(intent(f"o{i}", quantity=Decimal(1)))
        assert b._file is not None
        if b._file.changes_bytes > before:
            sizes.append(b._file.changes_bytes - before)
    assert b._file is not None
    assert 2 <= b._file.snapshots_written <= 12
    assert b._file.changes_written + b._file.snapshots_written == 2000
    assert max(sizes[-100:]) <= max(sizes[:100]) + 16  # digits of the growing ids
    assert whole(reloaded(path)) == whole(b)


def test_a_torn_last_change_is_ignored_and_never_written_after(tmp_path: Path) -> None:
    """A crash in a change's write leaves a torn last line (never acknowledged): it is
    ignored, and the next save writes the whole state (a change appended after the torn
    bytes would make them a damaged line in the middle)."""
    path = tmp_path / "paper.json"
    b = broker_at(path)
    b.submit(intent("a"))
    b.submit(intent("b"))
    acknowledged = whole(b)
    changes = tmp_path / "paper.json.changes"
    good = changes.read_bytes()
    snapshot = path.read_bytes()
    b.submit(intent("c"))
    torn = changes.read_bytes()[len(good) :]
    for tail in (torn[: len(torn) // 2], torn[:-1], b"\x00" * 40, torn[:20] + b"\n"):
        path.write_bytes(snapshot)  # each round from the same files
        changes.write_bytes(good + tail)
        again = broker_at(path)
        assert whole(again) == acknowledged
        again.submit(intent("d"))
        assert again._file is not None and again._file.snapshots_written == 1
        assert changes.read_bytes() == b""
        again.submit(intent("e"))  # appended to an emptied file
        assert whole(reloaded(path)) == whole(again)


def test_a_damaged_change_before_a_good_one_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "paper.json"
    b = broker_at(path)
    for cid in ("a", "b", "c"):
        b.submit(intent(cid))
    changes = tmp_path / "paper.json.changes"
    data = bytearray(changes.read_bytes())
    data[30] ^= 0x01  # a bit flipped in the first change
    changes.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"paper\.json\.changes: line 1 \(offset 0\): checksum"):
        reloaded(path)


def test_a_missing_change_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "paper.json"
    b = broker_at(path)
    for cid in ("a", "b", "c", "d"):  # the first save is the snapshot, then 3 changes
        b.submit(intent(cid))
    changes = tmp_path / "paper.json.changes"
    lines = changes.read_bytes().splitlines(keepends=True)
    changes.write_bytes(lines[0] + lines[2])
    with pytest.raises(ValueError, match=r"line 2 .*a change is missing"):
        reloaded(path)


def test_changes_the_snapshot_already_holds_are_not_applied_twice(tmp_path: Path) -> None:
    """A crash after the new snapshot's rename, before the changes file was emptied: the
    changes it holds are read again, and skipped (an execution applied twice would double
    a position)."""
    path = tmp_path / "paper.json"
    b = broker_at(path)
    for cid in ("a", "b", "c"):
        b.submit(intent(cid))
    changes = tmp_path / "paper.json.changes"
    held = changes.read_bytes()
    assert b._file is not None
    b._file.must_snapshot = True
    b.submit(intent("d"))  # the whole state, then the changes file emptied
    assert changes.read_bytes() == b""
    changes.write_bytes(held)  # as if the process died before emptying it
    again = reloaded(path)
    assert whole(again) == whole(b)
    assert again.net_positions() == {"AAPL": Decimal("40")}
    assert len(again.all_fills()) == 4


class _FailingSync(OSFileOps):
    """The real file system, with one fdatasync failing (EIO): a disk that lost a write."""

    def __init__(self) -> None:
        self.fail = True

    def fdatasync(self, fd: int) -> None:
        if self.fail:
            self.fail = False
            raise OSError(5, "Input/output error (injected)")
        os.fdatasync(fd)


def test_after_a_failed_change_write_the_next_save_is_the_whole_state(tmp_path: Path) -> None:
    """fsyncgate: the failed change may be lost (or torn) on disk, so the save after it writes
    the whole state; a restarted broker reads every change acknowledged after it."""
    path = tmp_path / "paper.json"
    b = broker_at(path)
    b.submit(intent("a"))
    assert b._file is not None
    b._file.fs = _FailingSync()
    with pytest.raises(OSError, match="injected"):
        b.submit(intent("b"))  # refused, though held in memory: the next save covers it
    b.submit(intent("c"))
    assert b._file.snapshots_written == 2
    assert whole(reloaded(path)) == whole(b)
    assert [o.client_order_id for o in reloaded(path).all_orders()] == ["a", "b", "c"]


def test_a_state_written_before_the_changes_file_still_reads(tmp_path: Path) -> None:
    """A snapshot without ``changes_through`` (every earlier release wrote only that) is
    read as the state at change 0."""
    path = tmp_path / "paper.json"
    b = broker_at(path)
    b.submit(intent("a"))
    b.close()
    old = orjson.loads(path.read_bytes())
    old.pop("changes_through")
    path.write_bytes(orjson.dumps(old))
    (tmp_path / "paper.json.changes").unlink(missing_ok=True)
    again = broker_at(path)
    assert whole(again) == whole(b)
    again.submit(intent("b"))
    assert [o.client_order_id for o in reloaded(path).all_orders()] == ["a", "b"]


@pytest.mark.parametrize("snapshot", [b"", b"{not json", b"[1, 2]", b'{"version": 1}'])
def test_a_damaged_snapshot_is_one_clear_error_naming_it(tmp_path: Path, snapshot: bytes) -> None:
    path = tmp_path / "paper.json"
    path.write_bytes(snapshot)
    with pytest.raises(ValueError, match=r"paper\.json: not a paper broker state"):
        reloaded(path)


def test_changes_without_their_snapshot_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "paper.json"
    b = broker_at(path)
    b.submit(intent("a"))
    b.submit(intent("b"))
    path.unlink()
    with pytest.raises(ValueError, match="changes without their snapshot"):
        reloaded(path)
