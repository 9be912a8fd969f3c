"""``ApiError``: every error the service answers, in one JSON shape.

::

    {"error": {"code": "max_notional", "message": "...", "field": "quantity", "details": null}}

``code`` is stable (a risk limit's ``RejectReason`` value, ``validation_error``,
``unauthorized``, ``forbidden``, ``not_found``, ``idempotency_conflict``, ``rate_limited``,
``halted``, ``not_ready``, ...); ``field`` names the input that was wrong, when one was.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "error_body"]


def error_body(
    code: str, message: str, field: str | None = None, details: Any = None
) -> dict[str, Any]:
    """The one error shape."""
    return {"error": {"code": code, "message": message, "field": field, "details": details}}


class ApiError(Exception):
    """An HTTP error answered in the one shape; ``headers`` (``Retry-After``, ...) too."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.field, self.details)
