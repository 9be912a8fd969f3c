"""``OrderJournalMethods``: the order journal's calls on ``DatabaseManager``.

Thin: each opens its transaction (``DatabaseConnection``) and calls the table function of
:mod:`wal.db.orders` (the effects) or :mod:`wal.db.order_reads` (the reads) on the tables of
:mod:`wal.db.order_schema`; ``wal.orders`` (the journal, the audit check) is the one caller.
``DatabaseManager`` (:mod:`wal.db.manager`) inherits them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from wal.db.checks import check_caller_values
from wal.db.connection import DatabaseConnection
from wal.db.order_reads import (
    anchor_rows,
    audit_content_rows,
    audit_rows,
    event_counts,
    event_rows,
    fill_owner,
    fill_rows,
    last_seq_by_order,
    order_row,
    order_rows,
)
from wal.db.order_schema import audit_head
from wal.db.orders import (
    op_record_order_anchor,
    op_record_order_event,
    op_record_order_fill,
    op_record_order_intent,
)

__all__ = ["OrderJournalMethods"]


class OrderJournalMethods(DatabaseConnection):
    """The order journal's writes and reads (module docstring)."""

    def record_order_intent(self, **kwargs: Any) -> str:
        """Insert an order (PENDING) and its first event; return its client order id."""
        check_caller_values("record_order_intent", kwargs)  # an aware created_at
        with self._write() as conn:
            return op_record_order_intent(conn, **kwargs)

    def record_order_event(self, **kwargs: Any) -> None:
        """Append an order event (seq must follow the order's last) and set its state."""
        with self._write() as conn:
            op_record_order_event(conn, **kwargs)

    def record_order_fill(self, **kwargs: Any) -> None:
        """Journal one execution: fill row, event, order totals, trade, position change."""
        with self._write() as conn:
            op_record_order_fill(conn, **kwargs)

    def record_order_anchor(self, **kwargs: Any) -> None:
        """Record an anchor (seq, hash) of the order audit chain."""
        with self._write() as conn:
            op_record_order_anchor(conn, **kwargs)

    def get_fill_owner(self, execution_key: str) -> str | None:
        """The client id of the order holding the fill with ``execution_key``, or None (the
        order journal asks it once the log may have dropped that fill's entry)."""
        with self._read() as conn:
            return fill_owner(conn, execution_key)

    def get_audit_head(self) -> tuple[int, str]:
        """(audit_seq, hash) of the order audit chain's last row ((0, "0"*64) if empty)."""
        with self._read() as conn:
            return audit_head(conn)

    def get_audit_rows(self, *, after: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        """``order_events`` rows in audit_seq order, from ``after + 1`` (at most ``limit``)."""
        with self._read() as conn:
            return audit_rows(conn, after=after, limit=limit)

    def get_audit_anchors(self) -> list[dict[str, Any]]:
        """The audit chain's anchors (seq, hash, at, reason), by seq."""
        with self._read() as conn:
            return anchor_rows(conn)

    def get_order_event_counts(self) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
        """(every order's last_seq, per order (event rows, highest seq)): a cut is visible."""
        with self._read() as conn:
            return last_seq_by_order(conn), event_counts(conn)

    def get_audit_contents(
        self, *, after: str | None = None, limit: int = 1000
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], str | None]:
        """The next ``limit`` orders by client id after ``after``, with the event and fill
        rows of their client ids, all from ONE snapshot (an order and its events agree even
        while the engine writes), and the batch's last client id (None: it was the last).
        ``verify_audit`` checks the orders and fills tables against the hashed events."""
        with self._snapshot() as conn:
            return audit_content_rows(conn, after=after, limit=limit)

    def get_order_row(self, client_order_id: str) -> dict[str, Any] | None:
        """The ``orders`` row of this client order id, or None."""
        with self._read() as conn:
            return order_row(conn, client_order_id)

    def get_order_rows(self, *, open_only: bool = False) -> list[dict[str, Any]]:
        """Every ``orders`` row (or those not in a final state), oldest first."""
        with self._read() as conn:
            return order_rows(conn, open_only=open_only)

    def get_order_events(self, client_order_id: str) -> list[dict[str, Any]]:
        """The order's ``order_events`` rows in seq order."""
        with self._read() as conn:
            return event_rows(conn, client_order_id)

    def get_order_fills(
        self, *, client_order_id: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """``fills`` rows (of one order, or executed at or after ``since``), oldest first."""
        with self._read() as conn:
            return fill_rows(conn, client_order_id=client_order_id, since=since)
