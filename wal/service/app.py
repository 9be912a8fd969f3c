"""``create_app``: the FastAPI application of a ``ServiceRuntime``.

The lifespan starts the runtime (recovery and reconciliation run in the background) and
stops it; once the startup is over, the heap it built is frozen out of the garbage
collector's full passes (``gc.freeze``: they took up to 97 ms each, with every request
waiting). Every error is answered in the one shape of :mod:`wal.service.errors`: the
service's own (``ApiError``), bad input (422 naming the field: a body field, a query
parameter or a header), unknown routes and methods, the database unreachable (503
``database_unavailable`` with ``Retry-After``: an outage the trader can wait out, not a bug),
and anything unexpected (500, logged).
The status page (``static/index.html``, plain JavaScript) is served at ``/``; the OpenAPI
page at ``/docs``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wal.db.classify import describe_error, is_transient
from wal.errors import WALDatabaseError
from wal.service.api import make_router
from wal.service.errors import ApiError, error_body
from wal.service.metrics import ServiceMetrics
from wal.service.runtime import ServiceRuntime
from wal.service.schemas import FieldError

__all__ = ["create_app", "static_dir"]

log = logging.getLogger("wal.service")


def static_dir() -> str:
    """The status page's files, shipped in the package."""
    return str(resources.files("wal.service") / "static")


def _field_of(err: dict[str, Any]) -> str | None:
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, FieldError):
        return cause.field
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    if loc and loc[0] in ("body", "query", "header", "path"):
        loc = loc[1:]
    # a union member's name (decimal, str, ...) is not a field: keep the field's own name
    return loc[0] if loc else None


DATABASE_RETRY_AFTER_S = 2  # a reconnect's backoff: the database is retried on every request
MAX_BODY_BYTES = 65_536  # a request body's cap (an order is a few hundred bytes): 413 above it


def database_down(exc: BaseException) -> bool:
    """The database (not the log, not the broker) is unreachable: connection refused or cut,
    server shut down, locked; ``wal.db.classify.is_transient`` decides, for database errors."""
    return isinstance(exc, SQLAlchemyError | WALDatabaseError) and is_transient(exc)


def _too_large() -> StarletteHTTPException:
    return StarletteHTTPException(413, f"the request body is over {MAX_BODY_BYTES} bytes")


class BodyLimit:
    """Refuse a request body over ``limit`` bytes (413) as it arrives, before it is parsed or
    held: at once when its Content-Length says so, else when the bytes read pass it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            exc = _too_large()
            response = JSONResponse(error_body("body_too_large", exc.detail), status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # raised to the route: the one error shape (http_error)
                raise _too_large()
            return message

        await self.app(scope, counted, send)


async def _heap_settled(rt: ServiceRuntime) -> None:
    """Once the startup is over (recovery, reconciliation), what it built (the modules, the
    app, the journal's orders) is moved out of the garbage collector's way (``gc.freeze``):
    the collector's full passes scanned it all, 44-97 ms with every request waiting (the
    worst POSTs of a one-trader run: 61-110 ms); they now scan only what was made since
    (13-20 ms). The one ``gc.collect()`` before it holds the loop once, about 60 ms."""
    await rt.started()
    gc.collect()  # garbage first: what is frozen is never collected
    gc.freeze()


def create_app(rt: ServiceRuntime) -> FastAPI:
    metrics = ServiceMetrics(
        lambda: rt.hub.clients,
        lambda: rt.hub.overflows,
        lambda: rt.readiness() is None,
        lambda: len(rt.unprotected()),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        settled = asyncio.create_task(_heap_settled(rt))
        try:
            yield
        finally:
            settled.cancel()
            await rt.stop()

    app = FastAPI(title="atb order service", version="1", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.state.runtime = rt
    app.include_router(make_router(rt, metrics))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        first = errors[0] if errors else {}
        field = _field_of(first)
        msg = str(first.get("msg", "invalid input"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if first.get("type") == "missing" and field:
            msg = f"{field} is required"
        details = [
            {"field": _field_of(e), "message": str(e.get("msg")), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse(
            error_body("validation_error", f"{field}: {msg}" if field else msg, field, details),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body that is no JSON this service reads: bad input
            return JSONResponse(
                error_body("validation_error", f"body: {exc.detail}", "body"), status_code=422
            )
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return JSONResponse(
            error_body(codes.get(exc.status_code, "http_error"), str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if database_down(exc):
            # the outage's detail (host, port) is the operator's, in the service's log
            log.warning(
                "%s %s: the database is unreachable: %s",
                request.method,
                request.url.path,
                describe_error(exc),
            )
            return JSONResponse(
                error_body(
                    "database_unavailable",
                    "the service's database cannot be reached; retry later (an order retried "
                    "with the same Idempotency-Key is never placed twice)",
                ),
                status_code=503,
                headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
            )
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", f"{type(exc).__name__}: the service logged it"),
            status_code=500,
        )

    static = static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(f"{static}/index.html")

    return app
