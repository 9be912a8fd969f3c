"""The ``orders`` and ``fills`` tables checked against the hashed events (chain format 2).

The hash chain (:mod:`wal.orders.audit`) proves the ``order_events`` rows are what was
journaled. Since chain format 2 the created event's ``content`` holds the order's intent and
each fill event's the fill and the order's totals after it, so the rows the journal keeps
beside the events are held to them too; ``check_contents`` reports, one line each:

* an ``orders`` row whose intent (symbol, side, quantity, type, prices, time in force,
  account) differs from its created event's content, or whose state, times, broker order
  id, reason, filled quantity or average price differ from what its events say;
* an ``orders`` row with no event, and events whose order has no row (a deleted row);
* a ``fills`` row that differs from the latest hashed fill event of its execution key (a
  correction replaces the row: the latest event is the row), a ``fills`` row no hashed
  fill event explains (added), and a hashed fill event with no row (deleted);
* an order whose ``last_seq`` disagrees with its event rows (event rows cut off).

Events of chain format 1 (journaled before it: no content) do not cover what their order or
fill holds; their orders' states, times, broker ids and reasons are still checked, and a
fill row must still be one of their executions. Each batch of orders is read with its events
and fills from one snapshot (``DatabaseManager.get_audit_contents``), so an order the engine
changes meanwhile is never half read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from itertools import groupby
from operator import itemgetter
from typing import Any, Final

from wal.db import DatabaseManager
from wal.db.order_schema import (
    FILL_FIELDS,
    FILL_ORDER_FIELDS,
    INTENT_FIELDS,
    MONEY_FIELDS,
    OPTIONAL_INTENT_FIELDS,
    money_text,
)
from wal.orders.states import EventKind

__all__ = ["FILL_KINDS", "ContentCheck", "check_contents", "show"]

FILL_KINDS: Final = frozenset({EventKind.FILL.value, EventKind.FILL_CORRECTED.value})
_CREATED: Final = EventKind.CREATED.value
_BATCH = 1_000  # orders per snapshot
_by_cid = itemgetter("client_order_id")


@dataclass
class ContentCheck:
    """What ``check_contents`` found: the problems, one line each, and how many ``orders``
    and ``fills`` rows were checked against hashed content (format 2)."""

    problems: list[str] = field(default_factory=list)
    orders: int = 0
    fills: int = 0


def show(value: object) -> str:
    """A value as a problem line prints it: text quoted, money without trailing zeros,
    times in ISO 8601, nothing as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(money_text(value))


def _same(name: str, found: object, expected: object) -> bool:
    if name in MONEY_FIELDS and found is not None and expected is not None:
        try:
            return Decimal(str(found)) == Decimal(str(expected))
        except InvalidOperation:
            return False
    return found == expected


def _money(name: str, value: object) -> object:
    """A content value as its column holds it (content keeps money as text)."""
    if name in MONEY_FIELDS and isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value


def _at(e: dict[str, Any]) -> str:
    return f"seq {e['seq']}, audit seq {e['audit_seq']}"


def _read(e: dict[str, Any], out: list[str]) -> dict[str, Any] | None:
    """An event's content as a dict; None (and a problem) if it is not a JSON object."""
    try:
        doc = json.loads(e["content"])
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        out.append(
            f"order {e['client_order_id']}: the content of its event ({_at(e)}) is not a "
            "JSON object"
        )
        return None
    return doc


def check_contents(db: DatabaseManager, *, batch: int | None = None) -> ContentCheck:
    """Check every ``orders`` and ``fills`` row against the hashed events (module
    docstring), a batch of orders (one snapshot) at a time."""
    check = ContentCheck()
    after: str | None = None
    while True:
        orders, events, fills, after = db.get_audit_contents(after=after, limit=batch or _BATCH)
        rows = {str(r["client_order_id"]): r for r in orders}
        evs = {str(k): list(g) for k, g in groupby(events, _by_cid)}
        fls = {str(k): list(g) for k, g in groupby(fills, _by_cid)}
        for cid in sorted(rows.keys() | evs.keys() | fls.keys()):
            _check_order(check, cid, rows.get(cid), evs.get(cid, []), fls.get(cid, []))
        if after is None:
            return check


def _check_order(
    check: ContentCheck,
    cid: str,
    row: dict[str, Any] | None,
    evs: list[dict[str, Any]],
    fls: list[dict[str, Any]],
) -> None:
    out = check.problems
    complete = False  # the order's event rows run 1..last_seq
    if row is None:
        if evs:
            out.append(
                f"order {cid}: {len(evs)} hashed event(s) (the first at audit seq "
                f"{evs[0]['audit_seq']}) but no row in the orders table: the row was deleted"
            )
    elif not evs:
        out.append(
            f"order {cid}: in the orders table but in no hashed event: the row was added "
            "outside the journal"
        )
    else:
        last_seq, top = int(row["last_seq"]), int(evs[-1]["seq"])
        complete = len(evs) == last_seq == top
        if not complete:
            out.append(
                f"order {cid}: last_seq is {last_seq} but it has {len(evs)} event row(s) "
                f"ending at seq {top}: event rows were deleted"
            )
        else:
            _check_order_row(check, cid, row, evs)
    _check_fills(check, cid, evs, fls, complete or row is None)


def _differs(
    out: list[str],
    what: str,
    table: str,
    name: str,
    found: object,
    expected: object,
    where: str,
) -> None:
    if not _same(name, found, expected):
        out.append(
            f"{what}: {name} is {show(found)} in the {table} table but {show(expected)} in "
            f"{where}: the row was changed"
        )


def _check_order_row(
    check: ContentCheck, cid: str, row: dict[str, Any], evs: list[dict[str, Any]]
) -> None:
    """The row against its events (they run 1..last_seq): the intent against the created
    event's content (format 2), the rest against what the events say."""
    out, what = check.problems, f"order {cid}"

    def differs(name: str, expected: object, where: str) -> None:
        _differs(out, what, "orders", name, row.get(name), expected, where)

    first, last = evs[0], evs[-1]
    if first["kind"] == _CREATED:
        where = f"its hashed created event ({_at(first)})"
        if first.get("content") is not None:
            doc = _read(first, out)
            if doc is not None:
                check.orders += 1
                for name in INTENT_FIELDS:
                    if name in doc:
                        differs(name, _money(name, doc[name]), where)
                for name in OPTIONAL_INTENT_FIELDS:  # a key only when set: absent is NULL
                    differs(name, doc.get(name), where)
        differs("created_at", first["at"], where)
    where = f"its last hashed event ({_at(last)})"
    differs("state", last["state"], where)
    differs("updated_at", last["at"], where)
    _last_set(differs, "broker_order_id", evs, lambda e: True)
    _last_set(differs, "reason", evs, lambda e: e["kind"] not in FILL_KINDS, key="detail")
    fill_events = [e for e in evs if e["kind"] in FILL_KINDS]
    if not fill_events:
        differs("filled_quantity", Decimal(0), "its hashed events (no fill event)")
        differs("avg_fill_price", None, "its hashed events (no fill event)")
    elif fill_events[-1].get("content") is not None:  # format 1: the totals are not covered
        e = fill_events[-1]
        doc = _read(e, out)
        if doc is not None:
            for name in FILL_ORDER_FIELDS:
                if name in doc:
                    differs(name, _money(name, doc[name]), f"its last hashed fill event ({_at(e)})")


def _last_set(
    differs: Callable[[str, object, str], None],
    name: str,
    evs: list[dict[str, Any]],
    sets: Callable[[dict[str, Any]], bool],
    *,
    key: str | None = None,
) -> None:
    """A column an event sets when it carries a value (and keeps otherwise): the last
    such value among the events that set it, or NULL if none did."""
    col = key or name
    for e in reversed(evs):
        if sets(e) and e.get(col) is not None:
            differs(name, e[col], f"its hashed events (last set at {_at(e)})")
            return
    differs(name, None, "its hashed events (never set)")


def _check_fills(
    check: ContentCheck,
    cid: str,
    evs: list[dict[str, Any]],
    fls: list[dict[str, Any]],
    complete: bool,
) -> None:
    """The order's fill rows against its hashed fill events: each row against the latest
    event of its execution key (format 2), or one of the executions of its format-1
    events; every format-2 key must have its row."""
    out = check.problems
    latest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    format1: set[str] = set()  # execution ids of format-1 fill events
    for e in evs:
        if e["kind"] not in FILL_KINDS:
            continue
        if e.get("content") is None:
            format1.add(str(e["detail"]))
            continue
        doc = _read(e, out)
        if doc is not None:
            latest[str(doc.get("execution_key"))] = (e, doc)
    for f in fls:
        key = str(f["execution_key"])
        hit = latest.pop(key, None)
        if hit is None:
            if str(f["execution_id"]) in format1:
                continue  # journaled before format 2: its contents are not covered
            why = (
                "the row was added outside the journal"
                if complete
                else "the row was added outside the journal, or its event row was deleted"
            )
            out.append(
                f"fill {key} of order {cid} (execution {f['execution_id']}): in the fills "
                f"table but in no hashed fill event: {why}"
            )
            continue
        e, doc = hit
        check.fills += 1
        what, where = f"fill {key} of order {cid}", f"its hashed fill event ({_at(e)})"
        expected = [
            ("execution_id", e["detail"]),
            ("broker_order_id", e["broker_order_id"]),
            ("executed_at", e["at"]),
            *((n, _money(n, doc[n])) for n in FILL_FIELDS if n in doc and n != "execution_key"),
        ]
        for name, value in expected:
            _differs(out, what, "fills", name, f.get(name), value, where)
    for key, (e, _) in latest.items():
        out.append(
            f"fill {key} of order {cid}: in its hashed fill event ({_at(e)}) but not in the "
            "fills table: the row was deleted"
        )
