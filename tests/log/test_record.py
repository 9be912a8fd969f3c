"""wal.log.record: the line framing; every single flipped bit is caught by the checksum."""

from __future__ import annotations

import orjson
import pytest
import xxhash

from wal.log.record import RecordError, decode_line, encode_line, encode_record

REC = {"t": "entry", "lsn": 12, "kwargs": {"qty": {"$decimal": "12.50"}, "n": 1234567}}


def test_round_trip() -> None:
    line = encode_record(REC)
    assert line.endswith(b"\n") and line[16:17] == b" "
    assert decode_line(line[:-1]) == REC
    payload = orjson.dumps(REC)
    assert line == b"%016x %s\n" % (xxhash.xxh3_64_intdigest(payload), payload)
    assert encode_line(payload) == line


def test_every_single_bit_flip_is_detected() -> None:
    line = encode_record(REC)[:-1]
    for pos in range(len(line)):
        for bit in range(8):
            bad = bytearray(line)
            bad[pos] ^= 1 << bit
            with pytest.raises(RecordError):
                decode_line(bytes(bad))


def test_flip_inside_a_number_that_still_parses() -> None:
    line = encode_record(REC)[:-1]
    pos = line.index(b"1234567") + 3  # the '4'
    bad = bytearray(line)
    bad[pos] ^= 0x01  # '4' (0x34) -> '5' (0x35): still valid JSON, a different quantity
    assert orjson.loads(bytes(bad[17:]))["kwargs"]["n"] == 1235567
    with pytest.raises(RecordError, match="checksum mismatch"):
        decode_line(bytes(bad))


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"", "not a record"),
        (b"\x00" * 40, "zero-filled"),
        (b"0123456789abcdef", "not a record"),
        (b"0123456789abcdef{}", "not a record"),
        (b"0123456789abcdefX{}", "not a record"),
        (b"0123456789ABCDEF {}", "16 hex digits"),
        (b"zz23456789abcdef {}", "16 hex digits"),
    ],
)
def test_malformed_lines(line: bytes, problem: str) -> None:
    with pytest.raises(RecordError, match=problem):
        decode_line(line)


def test_matching_checksum_over_bad_json() -> None:
    with pytest.raises(RecordError, match="JSON is invalid"):
        decode_line(encode_line(b"{not json")[:-1])
    with pytest.raises(RecordError, match="not a record object"):
        decode_line(encode_line(b"[1,2]")[:-1])
    with pytest.raises(RecordError, match="not a record object"):
        decode_line(encode_line(b'{"lsn":1}')[:-1])
