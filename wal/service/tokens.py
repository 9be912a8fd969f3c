"""Traders' bearer tokens: made once, shown once, stored as their SHA-256 only.

A token is ``atb_<token id>_<secret>``: the id (16 hex chars) finds its row, the secret is 32
random bytes (``secrets.token_urlsafe``), so the SHA-256 of the whole token is enough to
store (a slow password hash buys nothing against 256 bits of entropy). ``verify`` compares
the hashes with ``hmac.compare_digest`` (constant time) and returns the trader; a revoked
token fails. Every request reads its token's row (one primary-key read): a revocation, by
``atb serve token revoke`` in another process or by hand in the database, takes effect on the
serving process's next request; no verified token is trusted from memory. An open event
stream's token is read again every second (``live``, one read for every stream): a revoked
one's stream is closed before it is sent anything more.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from wal.db.engine import READ_ONLY
from wal.db.service_schema import api_tokens
from wal.entry import utc_now

__all__ = ["TRADER_RE", "TokenInfo", "TokenStore", "hash_token", "valid_trader"]

TRADER_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_TOKEN_RE: Final = re.compile(r"^atb_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")


def valid_trader(trader_id: str) -> str:
    """The trader id, or ``ValueError`` saying what a trader id may be."""
    if not TRADER_RE.fullmatch(trader_id):
        raise ValueError(
            f"trader id {trader_id!r} is not 1-32 characters of A-Z a-z 0-9 _ - "
            "starting with a letter or digit"
        )
    return trader_id


def hash_token(token: str) -> str:
    """The SHA-256 of a token, as hex (what ``api_tokens`` stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    trader_id: str
    created_at: datetime
    revoked_at: datetime | None


class TokenStore:
    """``api_tokens`` on an engine whose schema is at the code's revision."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, trader_id: str) -> str:
        """A new token for ``trader_id``: returned once, only its hash is kept."""
        valid_trader(trader_id)
        token_id = secrets.token_hex(8)
        token = f"atb_{token_id}_{secrets.token_urlsafe(32)}"
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(api_tokens).values(
                    token_id=token_id,
                    token_sha256=hash_token(token),
                    trader_id=trader_id,
                    created_at=utc_now(),
                    revoked_at=None,
                )
            )
        return token

    def _reader(self) -> Connection:
        """A connection for one read of the tokens table (its single statement needs no
        transaction around it)."""
        conn = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            # one statement, no BEGIN and ROLLBACK around it: two round trips fewer on every
            # request (the statement is its own snapshot)
            conn.execution_options(isolation_level="AUTOCOMMIT")
        else:
            conn.execution_options(**{READ_ONLY: True})  # SQLite: a plain BEGIN, no write lock
        return conn

    def verify(self, token: str) -> str | None:
        """The token's trader, or None (unknown, malformed or revoked)."""
        m = _TOKEN_RE.fullmatch(token)
        if m is None:
            return None
        digest = hash_token(token)
        with self._reader() as conn:  # every time: a revoked token fails at once
            row = conn.execute(
                sa.select(api_tokens.c.token_sha256, api_tokens.c.trader_id).where(
                    api_tokens.c.token_id == m.group(1), api_tokens.c.revoked_at.is_(None)
                )
            ).first()
        if row is None or not hmac.compare_digest(str(row[0]), digest):
            return None
        return str(row[1])

    def live(self, tokens: Iterable[str]) -> set[str]:
        """Those of ``tokens`` that still verify: one read for all (the event streams')."""
        by_id = {m.group(1): t for t in set(tokens) if (m := _TOKEN_RE.fullmatch(t))}
        if not by_id:
            return set()
        with self._reader() as conn:
            rows = conn.execute(
                sa.select(api_tokens.c.token_id, api_tokens.c.token_sha256).where(
                    api_tokens.c.token_id.in_(list(by_id)), api_tokens.c.revoked_at.is_(None)
                )
            ).all()
        return {
            by_id[tid]
            for tid, digest in rows
            if hmac.compare_digest(str(digest), hash_token(by_id[tid]))
        }

    def revoke(self, token_id: str) -> bool:
        """Revoke a token by its id; False if there is no such live token."""
        with self.engine.begin() as conn:
            n = conn.execute(
                sa.update(api_tokens)
                .where(api_tokens.c.token_id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            ).rowcount
        return bool(n)

    def list(self, trader_id: str | None = None) -> list[TokenInfo]:
        q = sa.select(api_tokens).order_by(api_tokens.c.created_at)
        if trader_id is not None:
            q = q.where(api_tokens.c.trader_id == trader_id)
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})  # a read: no SQLite write lock
            return [
                TokenInfo(r.token_id, r.trader_id, r.created_at, r.revoked_at)
                for r in conn.execute(q)
            ]
