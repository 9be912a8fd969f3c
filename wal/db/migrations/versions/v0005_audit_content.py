"""Audit chain format 2: ``order_events.content``, what a created or fill event is about.

Revision ID: 0005
Revises: 0004

The created event's content is the order's intent (symbol, side, quantity, type, prices,
time in force, account), a fill event's the fill (execution key, symbol, side, quantity,
price, trade id, P&L) and the order's filled quantity and average price after it; its hash
covers it, and ``verify_audit`` checks the ``orders`` and ``fills`` rows against it. A
nullable column, added without touching a row: the events written before (format 1) keep
NULL and verify as they did (their orders' and fills' contents are not covered).

The downgrade drops the column only while no row holds content: dropping it would break
the chain at the first format-2 event (its hash covers the content).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("order_events", sa.Column("content", sa.Text(), nullable=True))


def downgrade() -> None:
    held = (
        op.get_bind()
        .exec_driver_sql("SELECT COUNT(*) FROM order_events WHERE content IS NOT NULL")
        .scalar()
    )
    if held:
        raise RuntimeError(
            f"{held} order event(s) carry audit content (chain format 2): dropping "
            "order_events.content would break the audit chain at the first of them; restore "
            "a backup from before revision 0005 instead"
        )
    op.drop_column("order_events", "content")
