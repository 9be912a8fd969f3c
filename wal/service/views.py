"""What a trader reads: their orders, fills, positions, audit trail and export, as JSON.

Every function here is given the trader's own client order ids (``OwnerStore.orders_of``):
what another trader owns never reaches them. The reads go through the journal
(``OrderJournal``: the database's rows with the log's pending entries on top).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from wal.db.orders import audit_hash
from wal.money import exact
from wal.orders import Order, OrderState
from wal.service.errors import ApiError
from wal.service.owners import OwnerRow

__all__ = [
    "EXPORT_FIELDS",
    "OrderFilter",
    "audit_view",
    "decode_cursor",
    "encode_cursor",
    "csv_cell",
    "export_csv",
    "export_jsonl",
    "export_rows",
    "fill_view",
    "order_view",
    "page_of_orders",
    "positions_view",
]


@exact
def _s(v: Any) -> Any:
    if isinstance(v, Decimal):
        return format(v.normalize(), "f")
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat()
    return v


def order_view(order: Order, owner: OwnerRow) -> dict[str, Any]:
    """An order as the API shows it: the journal's order, its trader and its request."""
    i = order.intent
    return {
        "id": order.client_order_id,
        "client_order_id": order.client_order_id,
        "trader_id": owner.trader_id,
        "idempotency_key": owner.idempotency_key,
        "symbol": i.symbol,
        "side": i.side,
        "quantity": _s(i.quantity),
        "order_type": i.order_type,
        "price": _s(i.limit_price if i.order_type in ("limit", "stop_limit") else i.stop_price),
        "stop_price": _s(i.stop_price if i.order_type == "stop_limit" else None),
        "stop_loss": _s(owner.stop_loss),
        "take_profit": _s(owner.take_profit),
        "time_in_force": i.time_in_force,
        "state": order.state.value,
        "broker_order_id": order.broker_order_id,
        "filled_quantity": _s(order.filled_quantity),
        "avg_fill_price": _s(order.avg_fill_price),
        "reason": order.reason,
        "last_seq": order.last_seq,
        "created_at": _s(i.created_at),
        "updated_at": _s(order.updated_at),
    }


def fill_view(row: dict[str, Any], venue: str) -> dict[str, Any]:
    return {
        "execution_id": row["execution_id"],
        "quantity": _s(row["quantity"]),
        "price": _s(row["price"]),
        "executed_at": _s(row["executed_at"]),
        "venue": venue,
    }


@dataclass(frozen=True)
class OrderFilter:
    state: OrderState | None = None
    symbol: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before

    def keeps(self, o: Order) -> bool:
        at = o.intent.created_at
        return (
            (self.state is None or o.state is self.state)
            and (self.symbol is None or o.symbol == self.symbol)
            and (self.since is None or at >= self.since)
            and (self.until is None or at < self.until)
        )


def encode_cursor(o: Order) -> str:
    """The opaque cursor after ``o``: base64 of JSON [created_at, client id]."""
    raw = json.dumps([o.intent.created_at.isoformat(), o.client_order_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at in UTC, client id) of the last order of the previous page; 422 naming
    ``cursor`` if this API did not make it (a time without its zone included)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, cid = json.loads(raw)
        when = datetime.fromisoformat(str(at))
        if when.tzinfo is None or len(str(cid)) > 64:
            raise ValueError("not a cursor of ours")
        return when.astimezone(UTC), str(cid)  # OverflowError: a time with no UTC one
    except (ValueError, TypeError, binascii.Error, RecursionError, OverflowError):
        # whatever the bytes (nested JSON, a huge number, bad UTF-8): this API did not make it
        raise ApiError(
            422, "validation_error", "cursor is not one this API gave", field="cursor"
        ) from None


def page_of_orders(
    orders: Iterable[Order], flt: OrderFilter, limit: int, cursor: str | None
) -> tuple[list[Order], str | None]:
    """Newest first, ``limit`` at most, after ``cursor``; (page, next cursor or None). In
    memory: the list's fallback while the database is unreachable (``wal.service.listing``)."""
    keep = sorted(
        (o for o in orders if flt.keeps(o)),
        key=lambda o: (o.intent.created_at, o.client_order_id),
        reverse=True,
    )
    if cursor is not None:
        at, cid = decode_cursor(cursor)
        keep = [o for o in keep if (o.intent.created_at, o.client_order_id) < (at, cid)]
    page = keep[:limit]
    return page, (encode_cursor(page[-1]) if len(keep) > limit else None)


@exact
def positions_view(
    fills: Iterable[dict[str, Any]], orders: Iterable[tuple[Order, OwnerRow]]
) -> list[dict[str, Any]]:
    """Net position and average entry per symbol from the trader's fills, with the stops that
    protect it: the open stop orders and the requests' stop_loss / take_profit levels."""
    book: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (signed qty, avg entry)
    for f in sorted(fills, key=lambda r: (r["executed_at"], r["execution_key"])):
        qty = Decimal(str(f["quantity"])) * (1 if f["side"] == "buy" else -1)
        price = Decimal(str(f["price"]))
        pos, avg = book.get(f["symbol"], (Decimal(0), Decimal(0)))
        new = pos + qty
        if pos == 0 or (pos > 0) == (qty > 0):
            avg = (pos * avg + qty * price) / new if new else Decimal(0)
        elif new != 0 and (new > 0) != (pos > 0):
            avg = price  # flipped: the remainder opened at this price
        book[f["symbol"]] = (new, avg if new else Decimal(0))
    stops: dict[str, list[dict[str, Any]]] = {}
    levels: dict[str, dict[str, Any]] = {}
    for o, owner in orders:
        live = o.state in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)
        if live and o.intent.order_type in ("stop", "stop_limit"):
            stops.setdefault(o.symbol, []).append(
                {
                    "id": o.client_order_id,
                    "side": o.intent.side,
                    "stop_price": _s(o.intent.stop_price),
                    "quantity": _s(o.remaining),
                }
            )
        bracket = owner.stop_loss is not None or owner.take_profit is not None
        if o.filled_quantity > 0 and bracket:
            levels[o.symbol] = {
                "stop_loss": _s(owner.stop_loss),
                "take_profit": _s(owner.take_profit),
            }
    out = []
    for sym, (qty, avg) in sorted(book.items()):
        if qty == 0:
            continue
        lv = levels.get(sym, {})
        out.append(
            {
                "symbol": sym,
                "quantity": _s(qty),
                "avg_entry_price": _s(avg.quantize(Decimal("1E-10"))),
                "stop_loss": lv.get("stop_loss"),
                "take_profit": lv.get("take_profit"),
                "stop_orders": stops.get(sym, []),
            }
        )
    return out


def audit_view(events: list[dict[str, Any]], prev_hashes: dict[int, str | None]) -> dict[str, Any]:
    """The order's events with their chain links, each checked: ``hash_ok`` (the event's own
    hash recomputed from it and its prev_hash), ``link_ok`` (prev_hash is the chain's
    previous event's hash; None while that event is only in the log) and ``verified``."""
    out = []
    for e in events:
        seq = e.get("audit_seq")
        if seq is None:
            continue
        seq = int(seq)
        hash_ok = audit_hash(e, str(e["prev_hash"])) == e["hash"]
        before = prev_hashes.get(seq - 1) if seq > 1 else "0" * 64
        link_ok = None if before is None else before == e["prev_hash"]
        out.append(
            {
                "seq": seq,
                "order_seq": int(e["seq"]),
                "kind": e["kind"],
                "state": e["state"],
                "at": _s(e["at"]),
                "broker_order_id": e.get("broker_order_id"),
                "detail": e.get("detail"),
                "prev_hash": e["prev_hash"],
                "hash": e["hash"],
                "hash_ok": hash_ok,
                "link_ok": link_ok,
            }
        )
    verified = all(x["hash_ok"] and x["link_ok"] is not False for x in out)
    return {"events": out, "verified": verified}


EXPORT_FIELDS: Final = (
    "timestamp",
    "trader_id",
    "order_id",
    "broker_order_id",
    "audit_seq",
    "order_seq",
    "action",
    "status",
    "symbol",
    "side",
    "order_type",
    "quantity",
    "price",
    "fill_quantity",
    "fill_price",
    "execution_id",
    "venue",
    "reason",
    "hash",
)


def export_rows(
    order: Order,
    owner: OwnerRow,
    events: list[dict[str, Any]],
    fills: dict[str, dict[str, Any]],
    venue: str,
    since: datetime | None,
    until: datetime | None,
) -> Iterator[dict[str, Any]]:
    """One row per journal event of the order (the compliance fields: time, trader, order,
    symbol, quantity, price, venue), a fill's quantity and price on its row."""
    i = order.intent
    price = i.limit_price if i.limit_price is not None else i.stop_price
    for e in events:
        at = e["at"]
        if (since is not None and at < since) or (until is not None and at >= until):
            continue
        f = fills.get(str(e.get("detail"))) if e["kind"] in ("fill", "fill_corrected") else None
        yield {
            "timestamp": _s(at),
            "trader_id": owner.trader_id,
            "order_id": order.client_order_id,
            "broker_order_id": e.get("broker_order_id"),
            "audit_seq": e.get("audit_seq"),
            "order_seq": e["seq"],
            "action": e["kind"],
            "status": e["state"],
            "symbol": i.symbol,
            "side": i.side,
            "order_type": i.order_type,
            "quantity": _s(i.quantity),
            "price": _s(price),
            "fill_quantity": _s(f["quantity"]) if f else None,
            "fill_price": _s(f["price"]) if f else None,
            "execution_id": f["execution_id"] if f else None,
            "venue": venue,
            "reason": None if f else e.get("detail"),
            "hash": e.get("hash"),
        }


def export_jsonl(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    for r in rows:
        yield json.dumps(r, separators=(",", ":")) + "\n"


# A spreadsheet runs a cell that starts with one of these as a formula ("CSV injection"):
# the broker's ids, its rejection text and the client's ids are not ours to trust.
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_NUMBER_FIELDS: Final = frozenset({"quantity", "price", "fill_quantity", "fill_price"})


def csv_cell(field: str, value: Any) -> Any:
    """``value`` as a CSV cell: a text that a spreadsheet would take for a formula gets a
    leading ``'`` (it then shows as text); the numbers (never negative here) are left as they
    are. The JSON-lines export is never changed: it is read by programs, not spreadsheets."""
    if value is None:
        return ""
    if isinstance(value, str) and field not in _NUMBER_FIELDS and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def export_csv(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    # RFC 4180's CRLF: the writer then quotes a cell holding a CR as well as one holding an
    # LF (with "\n" alone, a bare CR in a broker's text split the row in two)
    w = csv.DictWriter(buf, fieldnames=list(EXPORT_FIELDS), lineterminator="\r\n")
    w.writeheader()
    yield buf.getvalue()
    for r in rows:
        buf.seek(0)
        buf.truncate()
        w.writerow({k: csv_cell(k, v) for k, v in r.items()})
        yield buf.getvalue()
