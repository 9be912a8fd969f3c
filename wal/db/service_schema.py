"""The order service's tables: traders' API tokens and each service order's owner.

``api_tokens``: one row per bearer token, its SHA-256 (never the token itself), its trader,
when it was made and when it was revoked. ``service_orders``: one row per order placed
through the service (``wal.service``): the client order id, the trader who owns it, the
``Idempotency-Key`` it was placed under, the SHA-256 of the request body (a different body
under a used key is refused) and the bracket levels of the request (``stop_loss``,
``take_profit``). The row is committed before the order is journaled, so a journaled
service order always has its owner.

Both are versioned by the Alembic revision ``v0002_service`` (:mod:`wal.db.migrations`).
"""

from __future__ import annotations

import sqlalchemy as sa

from wal.db.schema import Money, UTCDateTime, metadata

__all__ = ["api_tokens", "service_orders"]

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("token_id", sa.String(32), primary_key=True),  # the public half: 16 hex bytes
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("trader_id", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

service_orders = sa.Table(
    "service_orders",
    metadata,
    sa.Column("client_order_id", sa.String(64), primary_key=True),
    sa.Column("trader_id", sa.String(32), nullable=False, index=True),
    sa.Column("idempotency_key", sa.String(128), nullable=False),
    sa.Column("request_sha256", sa.String(64), nullable=False),
    sa.Column("stop_loss", Money(), nullable=True),
    sa.Column("take_profit", Money(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("trader_id", "idempotency_key", name="uq_service_orders_trader_key"),
)
