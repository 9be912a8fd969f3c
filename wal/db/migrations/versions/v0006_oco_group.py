"""The order's one-cancels-other group at the broker: ``orders.oco_group``.

Revision ID: 0006
Revises: 0005

A bracket's stop-loss and take-profit are linked at the broker in one OCO group with reduce
on fill (``OrderIntent.oco_group``): the group is journaled with the intent, so a retry or a
lookup after a crash sends it again as it was, and the created event's content (audit chain
format 2) holds it, a key only when the order has one. A nullable column, added without
touching a row: the orders journaled before have none, and their contents verify as they did.

The downgrade drops the column only while no order has a group: dropping it would break the
chain at the first such order (its created event's hash covers the group).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("oco_group", sa.String(64), nullable=True))


def downgrade() -> None:
    held = (
        op.get_bind()
        .exec_driver_sql("SELECT COUNT(*) FROM orders WHERE oco_group IS NOT NULL")
        .scalar()
    )
    if held:
        raise RuntimeError(
            f"{held} order(s) carry an OCO group, hashed into the audit chain: dropping "
            "orders.oco_group would break the chain at the first of them; restore a backup "
            "from before revision 0006 instead"
        )
    op.drop_column("orders", "oco_group")
