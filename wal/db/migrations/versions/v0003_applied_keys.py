"""The idempotency keys of applied entries, kept beside the ``wal_applied`` ledger.

Revision ID: 0003
Revises: 0002

An applied entry that carried an idempotency key gets a row here in the same transaction as
its ledger row, so a key is never forgotten when the log compacts the entry away (a re-sent
key is then a duplicate at apply). Entries applied before this revision have no row: their
keys are known only while the log still holds them (docs/database.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wal.db.schema import MAX_KEY_LEN, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wal_applied_keys",
        sa.Column("idempotency_key", sa.String(MAX_KEY_LEN), primary_key=True),
        sa.Column("entry_id", sa.String(64), nullable=False),
        sa.Column("applied_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("wal_applied_keys")
