"""The index of a trader's orders newest first: ``GET /api/v1/orders`` pages in the database.

Revision ID: 0004
Revises: 0003

``ix_orders_account_created`` on ``orders (account, created_at, client_order_id)``: the
service's keyset pagination (``wal.service.listing``) reads one account's orders in
(created_at, client_order_id) order from a cursor, a page at a time, without a sort.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_orders_account_created", "orders", ["account", "created_at", "client_order_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_orders_account_created", table_name="orders")
