"""wal.log.validate: recovery's fast path, its slow path and ``verify`` agree on every record.

One validator decides what a record with a good checksum must hold (issue 21, item 9: a
record with ``"lsn": true`` was accepted by open, since ``True == 1``, while ``verify`` said
"record has no LSN"). The property test below takes a log written by the storage, replaces
one field of one record with an odd value (re-sealing the record's checksum, and the entry's
content checksum, so that only the field's value is wrong), and asks all three: a strict open
through the fast path, the same through the slow path, and ``verify_log``. They must agree.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers_log import make_entry
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import wal.log.fastindex
from wal import StorageOptions, WALCorruptionError, WALEntryStatus, WALStorage
from wal.entry import content_checksum
from wal.log.record import encode_line
from wal.log.segment import segment_name
from wal.log.validate import record_lsn, record_problem
from wal.log.verify import verify_log

ODD: list[Any] = [
    True,
    False,
    None,
    0,
    -1,
    1,
    2,
    1.0,
    1.5,
    "1",
    "",
    "x",
    [],
    {},
    2**63,
    "2025-01-31T09:00:00+00:00",
    "pending",
    "completed",
    "C0FFEE00-0000-4000-8000-000000000000",
    "{c0ffee00-0000-4000-8000-000000000000}",
    "c0ffee00-0000-4000-8000-000000000000",
    "<missing>",
]
ENTRY_FIELDS = [
    "lsn",
    "entry_id",
    "operation",
    "idempotency_key",
    "checksum",
    "created_at",
    "synced_at",
    "status",
    "attempts",
    "last_error",
]
STATUS_FIELDS = ["lsn", "of", "entry_id", "status", "at", "attempts", "error"]


def _write_log(d: Path) -> list[bytes]:
    """Entries at LSN 1..3, a status record at 4 (of 1), entry 5; the segment's lines."""
    with WALStorage(d) as log:
        entries = log.append_many([make_entry(n) for n in range(3)])
        log.update_status(entries[0], WALEntryStatus.COMPLETED)
        log.append(make_entry(9))
    return (d / segment_name(1)).read_bytes().splitlines(keepends=True)


def _mutate(line: bytes, field: str, value: Any) -> bytes:
    rec = orjson.loads(line[17:-1])
    if value == "<missing>":
        rec.pop(field, None)
    else:
        rec[field] = value
    if rec["t"] == "entry":
        # only the field is wrong: the entry's own content checksum still matches
        with contextlib.suppress(KeyError, TypeError, orjson.JSONEncodeError):
            rec["checksum"] = (
                rec["checksum"]
                if field == "checksum"
                else content_checksum(
                    rec["entry_id"],
                    rec["operation"],
                    rec["args"],
                    rec["kwargs"],
                    rec["idempotency_key"],
                )
            )
    return encode_line(orjson.dumps(rec))


def _strict_open(d: Path) -> str | None:
    try:
        WALStorage.open_readonly(d, StorageOptions(recovery="strict")).close()
    except WALCorruptionError as exc:
        return f"line {exc.line}"
    return None


def _verdicts(d: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Any]:
    with monkeypatch.context() as m:  # the fast path: the regex, as for a large log
        m.setattr(wal.log.fastindex, "_SMALL", 0)
        wal.log.fastindex._line()
        fast = _strict_open(d)
    with monkeypatch.context() as m:  # every line the slow way
        m.setattr(wal.log.fastindex, "_SMALL", 1 << 62)
        m.setattr(wal.log.fastindex, "_slow_bytes", 0)
        m.setattr(wal.log.fastindex, "_line", _no_regex)
        slow = _strict_open(d)
    rep = verify_log(d)
    # the one check verify adds (record_problem's ``content``): an entry's content checksum,
    # which no read depends on; every other verdict is the shared validator's
    found = [x for x in rep.defects if not x.problem.startswith(CONTENT)]
    ver = f"line {found[0].line}" if found else None
    return fast, slow, ver


CONTENT = "entry content checksum mismatch"


class _NoRegex:
    """Stands in for the cached regex: ``cache_info().currsize`` 0 keeps the slow path."""

    class _Info:
        currsize = 0

    def cache_info(self) -> _Info:
        return self._Info()

    def __call__(self) -> Any:
        raise AssertionError("the slow path was asked for")


_no_regex = _NoRegex()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    which=st.sampled_from(["entry", "status"]),
    field_index=st.integers(0, 9),
    value=st.sampled_from(ODD),
)
@example(which="entry", field_index=0, value=True)  # the issue's example: "lsn": true
@example(which="status", field_index=0, value=True)
@example(which="status", field_index=1, value=True)  # "of": true
@example(which="status", field_index=1, value=4)  # "of" names itself, not an earlier record
@example(which="entry", field_index=8, value=True)  # "attempts": true
@example(which="entry", field_index=8, value=1.5)
@example(which="entry", field_index=5, value="")  # an empty created_at (found by Hypothesis)
@example(which="entry", field_index=6, value="")  # an empty synced_at
@example(which="status", field_index=4, value="")  # an empty "at"
@example(which="status", field_index=2, value="x")  # a status record's id is no UUID
@example(which="entry", field_index=1, value="C0FFEE00-0000-4000-8000-000000000000")
def test_fast_path_slow_path_and_verify_agree_on_every_mutated_record(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    which: str,
    field_index: int,
    value: Any,
) -> None:
    d = tmp_path_factory.mktemp("log")
    lines = _write_log(d)
    line_no = 2 if which == "entry" else 5  # line 1 is the header; LSN 4 is the status record
    fields = ENTRY_FIELDS if which == "entry" else STATUS_FIELDS
    field = fields[field_index % len(fields)]
    lines[line_no - 1] = _mutate(lines[line_no - 1], field, value)
    (d / segment_name(1)).write_bytes(b"".join(lines))
    fast, slow, ver = _verdicts(d, monkeypatch)
    assert fast == slow == ver, (field, value, fast, slow, ver)
    rec = orjson.loads(lines[line_no - 1][17:-1])
    problem = record_problem(rec)
    if problem is not None and problem.startswith(CONTENT):
        assert field == "checksum"  # the only field left unsealed
        problem = None
    valid = record_lsn(rec) == line_no - 1 and problem is None
    assert (ver is None) == valid
    if isinstance(value, bool) and field in ("lsn", "of", "attempts"):
        assert not valid  # a bool is not an int, whatever the three agree on
    if not valid:
        assert ver == f"line {line_no}"


def test_bools_are_not_ints_anywhere() -> None:
    rec = {"t": "entry", "lsn": True}
    assert record_lsn(rec) is None
    status = {
        "t": "status",
        "lsn": 5,
        "of": True,
        "entry_id": str(uuid.uuid4()),
        "status": "completed",
        "at": "2025-01-31T09:00:00+00:00",
        "attempts": None,
        "error": None,
    }
    assert record_problem(status, content=False) is not None
    status["of"] = 1
    assert record_problem(status, content=False) is None
    status["attempts"] = True
    assert record_problem(status, content=False) is not None


def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


# values that decode (or did) but that the encoder never writes: no replay, no listing of
# such an entry could work (review F6: NaN passed every open and crashed `inspect --json`)
UNWRITABLE = [
    ("nan", {"$decimal": "NaN"}, "kwargs['price']"),
    ("snan", {"$decimal": "sNaN"}, "kwargs['price']"),
    ("inf", {"$decimal": "Infinity"}, "kwargs['price']"),
    ("minus_inf", {"$decimal": "-Infinity"}, "kwargs['price']"),
    ("nested_nan", {"a": [{"$decimal": "NaN"}]}, "kwargs['price']['a'][0]"),
    ("too_deep", _nested(210), "kwargs['price']"),
]


@pytest.mark.parametrize(("name", "value", "path"), UNWRITABLE, ids=[u[0] for u in UNWRITABLE])
def test_a_value_the_encoder_refuses_is_a_content_defect_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: Any, path: str
) -> None:
    """The record's checksum and its entry's content checksum are good: only the value is
    wrong. Every open (fast and slow path) refuses naming the record (file, line, offset and
    LSN), verify reports it there, not as a defect only verify checks, and says a normal open
    refuses: the same verdict as the open, as for any other content defect."""
    d = tmp_path / "log"
    lines = _write_log(d)
    rec = orjson.loads(lines[1][17:-1])
    rec["kwargs"]["price"] = value
    rec["checksum"] = content_checksum(
        rec["entry_id"], rec["operation"], rec["args"], rec["kwargs"], rec["idempotency_key"]
    )
    lines[1] = encode_line(orjson.dumps(rec))
    (d / segment_name(1)).write_bytes(b"".join(lines))
    problem = record_problem(rec, content=False)
    assert problem is not None and path in problem

    fast, slow, ver = _verdicts(d, monkeypatch)
    assert fast == slow == ver == "line 2"
    rep = verify_log(d)
    (defect,) = rep.defects
    assert (defect.line, defect.offset, defect.lsn) == (2, len(lines[0]), 1)
    assert path in defect.problem and not defect.verify_only and not rep.opens
    for opts in (StorageOptions(), StorageOptions(recovery="strict")):
        with pytest.raises(WALCorruptionError) as err:
            WALStorage(d, options=opts)
        assert (err.value.path.name, err.value.line, err.value.offset) == (
            segment_name(1),
            2,
            len(lines[0]),
        )
        assert path in err.value.problem and "(LSN 1)" in err.value.problem
    with pytest.raises(WALCorruptionError):
        WALStorage.open_readonly(d)
