"""wal.log.fastindex: recovery's fast path indexes exactly what the slow path does, or defers to it.

Every test opens the same bytes twice, once as shipped and once with the fast path replaced
by a loop that hands every line to the slow path (``decode_line`` + ``_index_record``), and
compares everything: the index arrays (and their capacities), the Bloom filter, the explicit
keys, the counts, the segments, the recovery report, the files left on disk, or the error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers_log import lines_of, make_entry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wal.log.fastindex
import wal.log.recovery
from wal import StorageOptions, WALCorruptionError, WALEntry, WALEntryStatus, WALStorage
from wal.log.fastindex import Cursor, Slow
from wal.log.record import encode_line
from wal.log.segment import list_segments, segment_name

MODES = ("tolerate_tail", "strict", "skip_corrupt")


@pytest.fixture(autouse=True)
def _always_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal.log.fastindex, "_SMALL", 0)  # the fast path even for tiny logs


def slow_only(store: WALStorage, cur: Cursor, data: bytes, end: int, base: int, slow: Slow) -> bool:
    pos = 0
    while pos < end:
        pos = slow(data, base, pos)
        if pos < 0:
            return False
    return True


def state(s: WALStorage) -> dict[str, Any]:
    n = s._n
    rep = s.recovery_report.to_dict()
    rep.pop("seconds")
    return {
        "n": n,
        "base": s._base,
        "status": bytes(s._status),
        "offsets": s._offsets.tobytes(),
        "lengths": s._lengths.tobytes(),
        "status_rec": s._status_rec.tobytes(),
        "idh": s._idh.tobytes(),
        "seen": bytes(s._seen_ids),
        "keys": dict(s._keys),
        "counts": list(s._counts),
        "next": (s._next_lsn, s._durable_lsn, s._written_lsn),
        "segments": [(g.first, g.path.name, g.end, g.compacted, g.size) for g in s._segments],
        "report": rep,
    }


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "LOCK"}


def outcome(d: Path, mode: str, readonly: bool) -> tuple[Any, ...]:
    try:
        opts = StorageOptions(recovery=mode)  # type: ignore[arg-type]
        s = WALStorage.open_readonly(d, opts) if readonly else WALStorage(d, opts)
    except WALCorruptionError as exc:
        return ("error", str(exc).replace(str(d), "<log>"), files(d))
    try:
        return ("ok", state(s), files(d))
    finally:
        s.close()


def both(
    tmp: Path, src: Path, mode: str, readonly: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[tuple[Any, ...], tuple[Any, ...], int]:
    """(fast outcome, slow outcome, lines the fast run sent to the slow path)."""
    out = []
    slow_lines = 0
    real_scan = wal.log.recovery.scan

    def counting_scan(*args: Any) -> Iterator[Any]:
        nonlocal slow_lines
        slow_lines += 1
        return real_scan(*args)

    for fast in (True, False):
        d = tmp / ("fast" if fast else "slow")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        with monkeypatch.context() as m:
            if fast:
                m.setattr(wal.log.recovery, "scan", counting_scan)
            else:
                m.setattr(wal.log.recovery, "index_chunk", slow_only)
            out.append(outcome(d, mode, readonly))
    return out[0], out[1], slow_lines


def assert_same(
    tmp: Path, src: Path, monkeypatch: pytest.MonkeyPatch, modes: tuple[str, ...] = MODES
) -> list[int]:
    """Fast and slow agree in every mode, read-only and writable; lines sent to slow."""
    sent = []
    for mode in modes:
        for readonly in (True, False):
            fast, slow, n = both(tmp, src, mode, readonly, monkeypatch)
            assert fast[0] == slow[0], (mode, readonly, fast[:2], slow[:2])
            if fast[1] != slow[1]:
                if fast[0] == "error":
                    raise AssertionError((mode, readonly, fast[1], slow[1]))
                diff = [k for k in fast[1] if fast[1][k] != slow[1][k]]
                raise AssertionError((mode, readonly, diff))
            assert fast[2] == slow[2], (mode, readonly, "files differ")
            sent.append(n)
    return sent


def rich_log(d: Path, max_segment_bytes: int = 4096) -> list[WALEntry]:
    """Entries of many shapes (explicit keys, escapes, unicode, nesting), statuses, compaction."""
    kwargs_kinds: list[dict[str, Any]] = [
        {},
        {"text": 'quote " and backslash \\ and tab \t'},
        {"unicode": "Zürich ₿ 🚀", "small": -0.5e-7},
        {"deep": {"a": [{"b": [{"c": [1, 2, {"d": None}]}]}]}},
        {"big": 2**62, "neg": -(2**62), "f": 1.5e300, "t": True, "x": [[], {}, [[[]]]]},
        {"price": Decimal("67321.45"), "qty": Decimal("0.0125")},
    ]
    out = []
    with WALStorage(d, max_segment_bytes=max_segment_bytes, fsync="unsafe_never") as log:
        for i in range(120):
            key = None if i % 3 else f"order-{i}"
            if i % 17 == 0:
                key = f"ключ-{i}"  # a non-ASCII key
            e = make_entry(i, key=key, **kwargs_kinds[i % len(kwargs_kinds)])
            out.append(log.append(e))
            if i % 10 == 9:
                done = out[-10:]
                statuses = [
                    WALEntryStatus.COMPLETED,
                    WALEntryStatus.SYNCING,
                    WALEntryStatus.FAILED,
                    WALEntryStatus.PENDING,
                ]
                log.update_statuses(
                    (e, statuses[j % 4], 'err "x"\n' if j % 4 == 2 else None, j)
                    for j, e in enumerate(done)
                )
            if i == 70:
                log.compact(timedelta(0))
        log.append_many(make_entry(1000 + j) for j in range(30))
    return out


def test_a_rich_log_indexes_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    rich_log(src)
    segs = list_segments(src)
    assert len(segs) > 5
    assert any(b'"last":null' not in p.read_bytes()[:80] for _, p in segs)  # some compacted
    sent = assert_same(tmp_path, src, monkeypatch)
    lines = sum(p.read_bytes().count(b"\n") for _, p in segs)
    assert max(sent) < lines * 2 // 3, (sent, lines)  # the fast path took most of the rest


def test_one_big_segment_and_a_big_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    with WALStorage(src, fsync="unsafe_never") as log:
        es = log.append_many(make_entry(i, blob=300) for i in range(20_000))
        log.update_statuses((e, WALEntryStatus.COMPLETED, None, 1) for e in es[::3])
    assert (src / segment_name(1)).stat().st_size > 3 * (1 << 22)  # several chunks
    sent = assert_same(tmp_path, src, monkeypatch, modes=("tolerate_tail",))
    assert sent == [1, 1]  # only the header


# ------------------------------------------------------------------------------ defects


def line_spans(p: Path) -> list[tuple[int, int]]:
    return [(off, off + len(line)) for off, line in lines_of(p)]


def edit(p: Path, fn: Callable[[bytes, list[tuple[int, int]]], bytes]) -> None:
    p.write_bytes(fn(p.read_bytes(), line_spans(p)))


def forge(old: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """A record line with its payload changed and a checksum that matches the change."""
    return encode_line(change(old[17:-1]))


def replace_line(k: int, change: Callable[[bytes], bytes]) -> Callable[..., bytes]:
    def fn(data: bytes, spans: list[tuple[int, int]]) -> bytes:
        a, b = spans[k]
        return data[:a] + forge(data[a:b], change) + data[b:]

    return fn


def sub(old: bytes, new: bytes, count: int = 1) -> Callable[[bytes], bytes]:
    def fn(payload: bytes) -> bytes:
        assert old in payload, (old, payload)
        return payload.replace(old, new, count)

    return fn


FORGED: dict[str, Callable[[bytes], bytes]] = {
    "control char in a string": sub(b'"symbol":"BTCUSDT"', b'"symbol":"BTC\x01USDT"'),
    "raw newline in a string": sub(b'"symbol":"BTCUSDT"', b'"symbol":"BTC\nUSDT"'),
    "escaped string": sub(b'"symbol":"BTCUSDT"', b'"symbol":"BTC\\u0055SDT"'),
    "bad escape": sub(b'"symbol":"BTCUSDT"', b'"symbol":"BTC\\qUSDT"'),
    "invalid utf-8": sub(b'"symbol":"BTCUSDT"', b'"symbol":"BTC\xffUSDT"'),
    "utf-8": sub(b'"symbol":"BTCUSDT"', '"symbol":"BTC€"'.encode()),
    "trailing comma": sub(b'"symbol":"BTCUSDT"', b'"symbol":"BTCUSDT",'),
    "missing comma": sub(b'"symbol":"BTCUSDT",', b'"symbol":"BTCUSDT"'),
    "infinite number": sub(b'"n":', b'"n":1e999,"m":'),
    "20-digit integer": sub(b'"n":', b'"n":10000000000000000000,"m":'),
    "long fraction": sub(b'"n":', b'"n":0.1234567890123456789012345678901234,"m":'),
    "leading zero": sub(b'"n":', b'"n":01,"m":'),
    "bare minus": sub(b'"n":', b'"n":-,"m":'),
    "NaN": sub(b'"n":', b'"n":NaN,"m":'),
    "whitespace": sub(b'"symbol":"BTCUSDT"', b'"symbol": "BTCUSDT"'),
    "unclosed object": sub(b'"kwargs":{', b'"kwargs":{{'),
    "array as object": sub(b'"args":[]', b'"args":[1:2]'),
    "too deep": sub(b'"args":[]', b'"args":[[[[[[[[1]]]]]]]]'),
    "lsn as float": sub(b',"entry_id"', b'.0,"entry_id"'),
    "lsn duplicated": sub(b',"last_error":null}', b',"last_error":null,"lsn":1}'),
    "status duplicated": sub(b',"last_error":null}', b',"last_error":null,"status":"failed"}'),
    "unknown status": sub(b'"status":"pending"', b'"status":"paused"'),
    "uppercase id": lambda p: p.replace(p[p.index(b'"entry_id":"') + 12 :][:8], b"ABCDEF01"),
    "id without dashes": lambda p: p.replace(p[p.index(b'"entry_id":"') + 12 :][:36], b"0" * 32),
    "key is null": lambda p: (
        p[: p.index(b'"idempotency_key":')]
        + b'"idempotency_key":null'
        + p[p.index(b',"checksum"') :]
    ),
    "empty key": lambda p: (
        p[: p.index(b'"idempotency_key":')] + b'"idempotency_key":""' + p[p.index(b',"checksum"') :]
    ),
    "explicit key": lambda p: (
        p[: p.index(b'"idempotency_key":')]
        + b'"idempotency_key":"k1"'
        + p[p.index(b',"checksum"') :]
    ),
    "field missing": sub(b'"attempts":0,', b""),
    "fields reordered": sub(b'"t":"entry","lsn":', b'"lsn":', 1),
    "not an object": lambda p: b"[" + p + b"]",
    # timestamps and value tags (the bulk checks, ``_decodes``): bad ones, and odd good ones
    "created_at not a date": lambda p: _field(p, b"created_at", b"2026-02-30T00:00:00+00:00"),
    "created_at hour 24": lambda p: _field(p, b"created_at", b"2026-01-02T24:00:00+00:00"),
    "created_at offset 24 h": lambda p: _field(p, b"created_at", b"2026-01-02T03:04:05+24:00"),
    "created_at year 0": lambda p: _field(p, b"created_at", b"0000-01-02T03:04:05"),
    "created_at with a space": lambda p: _field(p, b"created_at", b"2026-01-02 03:04:05"),
    "created_at in Z": lambda p: _field(p, b"created_at", b"2026-01-02T03:04:05.5Z"),
    "synced_at not a date": sub(b'"synced_at":null', b'"synced_at":"2026-13-01T00:00:00"'),
    "synced_at good": sub(b'"synced_at":null', b'"synced_at":"2026-12-01T00:00:00+00:00"'),
    "a $datetime not a date": sub(b'"n":', b'"d":{"$datetime":"2026-02-30T00:00:00"},"n":'),
    "a $datetime": sub(b'"n":', b'"d":{"$datetime":"2026-02-28T00:00:00+01:00"},"n":'),
    "a $date not a date": sub(b'"n":', b'"d":{"$date":"2026-02-30"},"n":'),
    "an unknown tag": sub(b'"n":', b'"d":{"$pickle":"x"},"n":'),
    "a tag with an escape": sub(b'"n":', b'"d":{"$datetime":"2026-02-28\\u0054"},"n":'),
    "a bad $decimal": sub(b'"n":', b'"d":{"$decimal":"1.5x"},"n":'),
}


def _field(payload: bytes, name: bytes, value: bytes) -> bytes:
    """``payload`` with the text of its string field ``name`` replaced by ``value``."""
    a = payload.index(b'"' + name + b'":"') + len(name) + 4
    return payload[:a] + value + payload[payload.index(b'"', a) :]


@pytest.mark.parametrize("name", sorted(FORGED))
@pytest.mark.parametrize("where", ["middle", "last"])
def test_forged_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, where: str
) -> None:
    """Lines with a valid checksum that our writer never produces: the fast path defers."""
    src = tmp_path / "src"
    with WALStorage(src, fsync="unsafe_never") as log:
        log.append_many(make_entry(i) for i in range(8))
    seg = src / segment_name(1)
    k = 4 if where == "middle" else 8
    edit(seg, replace_line(k, FORGED[name]))
    assert_same(tmp_path, src, monkeypatch)


def test_a_forged_status_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    with WALStorage(src, fsync="unsafe_never") as log:
        es = log.append_many(make_entry(i) for i in range(4))
        log.update_statuses((e, WALEntryStatus.COMPLETED, None, None) for e in es)
    seg = src / segment_name(1)
    for change in [
        sub(b'"of":1', b'"of":99'),
        sub(b'"of":1', b'"of":-1'),
        sub(b'"of":1', b'"of":1.0'),
        sub(b'"status":"completed"', b'"status":"done"'),
        sub(b'"error":null', b'"error":"a\\"b"'),
        sub(b'"at":"', b'"at":"X'),
        lambda p: _field(p, b"at", b"2026-02-30T00:00:00+00:00"),  # not a date
    ]:
        snap = seg.read_bytes()
        edit(seg, replace_line(5, change))
        assert_same(tmp_path, src, monkeypatch)
        seg.write_bytes(snap)


DEFECTS: dict[str, Callable[[bytes, list[tuple[int, int]]], bytes]] = {
    "bit flip": lambda d, s: d[: s[3][0] + 40] + bytes([d[s[3][0] + 40] ^ 4]) + d[s[3][0] + 41 :],
    "checksum flip": lambda d, s: d[: s[3][0]] + b"f" + d[s[3][0] + 1 :],
    "torn tail": lambda d, s: d[:-7],
    "torn at a newline": lambda d, s: d[: s[-1][0] + 1],
    "zero tail": lambda d, s: d + bytes(300),
    "zero lines": lambda d, s: d + b"\x00" * 20 + b"\n" + b"\x00" * 5,
    "garbage tail": lambda d, s: d + b'xyz {"t":1}\n{"t"',
    "records swapped": lambda d, s: (
        d[: s[2][0]] + d[s[3][0] : s[3][1]] + d[s[2][0] : s[2][1]] + d[s[3][1] :]
    ),
    "record duplicated": lambda d, s: d[: s[3][1]] + d[s[3][0] : s[3][1]] + d[s[3][1] :],
    "record removed": lambda d, s: d[: s[3][0]] + d[s[3][1] :],
    "header removed": lambda d, s: d[s[0][1] :],
    "second header": lambda d, s: d[: s[3][1]] + d[: s[0][1]] + d[s[3][1] :],
    "empty line": lambda d, s: d[: s[3][1]] + b"\n" + d[s[3][1] :],
    "no final newline": lambda d, s: d[:-1],
    "emptied": lambda d, s: b"",
}


@pytest.mark.parametrize("name", sorted(DEFECTS))
@pytest.mark.parametrize("which", [0, -1])
def test_defects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, which: int) -> None:
    src = tmp_path / "src"
    with WALStorage(src, max_segment_bytes=4096, fsync="unsafe_never") as log:
        es = log.append_many(make_entry(i) for i in range(8))
        log.update_statuses((e, WALEntryStatus.COMPLETED, None, None) for e in es[:4])
        for i in range(30):
            log.append(make_entry(100 + i))
    segs = [p for _, p in list_segments(src)]
    assert len(segs) >= 3
    edit(segs[which], DEFECTS[name])
    assert_same(tmp_path, src, monkeypatch)


def test_segment_gaps_and_bad_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    with WALStorage(src, max_segment_bytes=4096, fsync="unsafe_never") as log:
        for i in range(40):
            log.append(make_entry(i))
    segs = [p for _, p in list_segments(src)]
    snap = files(src)

    def restore() -> None:
        for p in src.iterdir():
            p.unlink()
        for k, v in snap.items():
            (src / k).write_bytes(v)

    segs[1].unlink()  # an LSN gap
    assert_same(tmp_path, src, monkeypatch)
    restore()
    segs[2].rename(src / segment_name(int(segs[2].name[:20]) + 1))  # header disagrees
    assert_same(tmp_path, src, monkeypatch)
    restore()
    (src / segment_name(10_000)).write_bytes(b"")  # an empty last segment
    assert_same(tmp_path, src, monkeypatch)


# ------------------------------------------------------------------------ any JSON at all

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
TOKENS = st.lists(
    st.sampled_from(
        [
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b'"',
            b'"a"',
            b"1",
            b"-",
            b"0",
            b".5",
            b"e9",
            b"e999",
            b"true",
            b"nul",
            b" ",
            b"\\",
            b"\x01",
            b"\xc3\xa9",
            b"\xff",
            b"12345678901234567890",
        ]
    ),
    max_size=12,
).map(b"".join)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kwargs=JSON, raw=st.none() | TOKENS)
def test_any_kwargs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: Any, raw: bytes | None
) -> None:
    """Whatever sits in ``kwargs`` (valid JSON or not), fast and slow agree."""
    src = tmp_path / "src"
    shutil.rmtree(src, ignore_errors=True)
    with WALStorage(src, fsync="unsafe_never") as log:
        log.append_many(make_entry(i) for i in range(3))
    seg = src / segment_name(1)
    blob = orjson.dumps(kwargs) if raw is None else raw

    def change(p: bytes) -> bytes:
        a = p.index(b'"kwargs":') + 9
        b = p.index(b',"idempotency_key"')
        return p[:a] + blob + p[b:]

    edit(seg, replace_line(2, change))
    assert_same(tmp_path, src, monkeypatch, modes=("skip_corrupt",))


NUMBER = rb"-?(?:0|[1-9][0-9]{0,20})(?:\.[0-9]{1,32})?(?:[eE][+-]?[0-9]{1,4})?"


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(num=st.from_regex(NUMBER, fullmatch=True))
def test_any_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, num: bytes) -> None:
    """Numbers around the fast path's limits (digits, exponents, orjson's range) agree."""
    src = tmp_path / "src"
    shutil.rmtree(src, ignore_errors=True)
    with WALStorage(src, fsync="unsafe_never") as log:
        log.append_many(make_entry(i) for i in range(3))
    seg = src / segment_name(1)
    edit(seg, replace_line(2, sub(b'"n":1,', b'"n":' + num + b",")))
    assert_same(tmp_path, src, monkeypatch, modes=("tolerate_tail",))


def test_a_record_longer_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    with WALStorage(src, fsync="unsafe_never") as log:
        log.append_many(make_entry(i, blob=(3 << 20) if i == 5 else 10) for i in range(9))
    seg = src / segment_name(1)
    assert_same(tmp_path, src, monkeypatch, modes=("tolerate_tail",))
    edit(seg, lambda d, s: d[:-9])  # and torn in the middle of the long one
    edit(seg, lambda d, s: d[: s[6][1] - 100])
    assert_same(tmp_path, src, monkeypatch, modes=("tolerate_tail", "strict"))
