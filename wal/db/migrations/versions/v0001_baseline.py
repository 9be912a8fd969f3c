"""Baseline: every table the project had before migrations, and the audit triggers.

Revision ID: 0001
Revises: (none)

Frozen: the tables as main created them on first use (``metadata.create_all``) when
migrations began. A database made by that code is adopted by ``atb db upgrade`` (stamped
0001, then upgraded); this file is never changed afterwards: a change is a new revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from wal.db.schema import Money, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.String(64)
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLES = (
    "balances",
    "balance_changes",
    "trading_sessions",
    "trades",
    "positions",
    "metrics",
    "wal_applied",
    "wal_database_id",
    "orders",
    "order_events",
    "order_audit_anchors",
    "fills",
)
_APPEND_ONLY = ("order_events", "order_audit_anchors")  # the audit trail's tables

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION atb_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is an append-only audit trail: % refused', TG_TABLE_NAME, TG_OP;
END $$
"""


def _triggers(dialect: str, table: str) -> list[str]:
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{o.lower()} BEFORE {o} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is an append-only audit trail: {o} refused'); "
            "END"
            for o in ("UPDATE", "DELETE")
        ]
    return [
        _PG_FUNCTION,
        f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION atb_audit_append_only()",
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION atb_audit_append_only()",
    ]


def upgrade() -> None:
    op.create_table(
        "balances",
        sa.Column("account", _ID, primary_key=True),
        sa.Column("balance", Money(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "balance_changes",
        sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
        sa.Column("account", _ID, nullable=False, index=True),
        sa.Column("delta", Money(), nullable=False),
        sa.Column("balance_after", Money(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "trading_sessions",
        sa.Column("session_id", _ID, primary_key=True),
        sa.Column("strategy", sa.String(200), nullable=False),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("initial_balance", Money(), nullable=True),
        sa.Column("final_balance", Money(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "trades",
        sa.Column("trade_id", _ID, primary_key=True),
        sa.Column("session_id", _ID, nullable=True, index=True),
        sa.Column("symbol", _ID, nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("quantity", Money(), nullable=False),
        sa.Column("price", Money(), nullable=False),
        sa.Column("pnl", Money(), nullable=True),
        sa.Column("executed_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "positions",
        sa.Column("position_id", _ID, primary_key=True),
        sa.Column("session_id", _ID, nullable=True, index=True),
        sa.Column("symbol", _ID, nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("quantity", Money(), nullable=False),
        sa.Column("entry_price", Money(), nullable=False),
        sa.Column("current_price", Money(), nullable=True),
        sa.Column("stop_loss", Money(), nullable=True),
        sa.Column("take_profit", Money(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_price", Money(), nullable=True),
        sa.Column("pnl", Money(), nullable=True),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "metrics",
        sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, index=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "wal_applied",
        sa.Column("entry_id", _ID, primary_key=True),
        sa.Column("lsn", sa.BigInteger(), nullable=True),
        sa.Column("operation", _ID, nullable=False),
        sa.Column("applied_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "wal_database_id",
        sa.Column("key", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("database_id", _ID, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "orders",
        sa.Column("client_order_id", _ID, primary_key=True),
        sa.Column("symbol", _ID, nullable=False, index=True),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("quantity", Money(), nullable=False),
        sa.Column("order_type", sa.String(16), nullable=False),
        sa.Column("limit_price", Money(), nullable=True),
        sa.Column("stop_price", Money(), nullable=True),
        sa.Column("time_in_force", sa.String(16), nullable=False),
        sa.Column("account", _ID, nullable=False),
        sa.Column("state", sa.String(24), nullable=False, index=True),
        sa.Column("broker_order_id", _ID, nullable=True),
        sa.Column("filled_quantity", Money(), nullable=False),
        sa.Column("avg_fill_price", Money(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "order_events",
        sa.Column("client_order_id", _ID, primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("broker_order_id", _ID, nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("audit_seq", sa.Integer(), nullable=False, unique=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "order_audit_anchors",
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
    )
    op.create_table(
        "fills",
        sa.Column("execution_key", sa.String(128), primary_key=True),
        sa.Column("execution_id", sa.String(128), nullable=False),
        sa.Column("client_order_id", _ID, nullable=False, index=True),
        sa.Column("broker_order_id", _ID, nullable=True),
        sa.Column("symbol", _ID, nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("quantity", Money(), nullable=False),
        sa.Column("price", Money(), nullable=False),
        sa.Column("executed_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("trade_id", _ID, nullable=True),
        sa.Column("pnl", Money(), nullable=True),
    )
    dialect = op.get_bind().dialect.name
    for table in _APPEND_ONLY:
        for stmt in _triggers(dialect, table):
            op.execute(stmt)


def downgrade() -> None:
    raise RuntimeError(
        "revision 0001 is the baseline: downgrading it would drop the order journal, the "
        "audit trail and the wal_applied ledger; restore a backup instead"
    )
