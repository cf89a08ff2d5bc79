"""Every refusal of the service is a :class:`Refusal`: an HTTP status, a short machine-readable
code and a sentence for the person who sent the request, answered as JSON
``{"error": code, "reason": sentence}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.database import DatabaseState, is_unavailable

log = logging.getLogger("cxr.api")


class Refusal(Exception):
    def __init__(self, status: int, error: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason, self.headers = status, error, reason, headers

    def response(self) -> JSONResponse:
        return refusal_response(self.status, self.error, self.reason, self.headers)


def refusal_response(status: int, error: str, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status, headers=headers)


def _validation_reason(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, database: DatabaseState | None = None, retry_after_s: int = 5) -> None:
    """Refusals, validation errors and Starlette's own HTTP errors (404, 405) all answer in the
    same JSON shape; so does a database that cannot be reached (503 ``database_unavailable``
    with ``Retry-After``, logged once per outage by ``database``) and any other error (500
    ``internal_error``, its traceback in the log)."""
    database = database or DatabaseState()

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        if not is_unavailable(exc):
            log.error("unexpected database error answering a request", exc_info=exc)
            return await _internal(_request, exc)
        database.failed(exc)
        return refusal_response(
            503,
            "database_unavailable",
            "the database cannot be reached just now; nothing was stored, try again shortly",
            {"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware runs this and then logs the traceback itself.
        return refusal_response(500, "internal_error", "an unexpected error occurred; it is in the service's log")

    @app.exception_handler(Refusal)
    async def _refusal(_request: Request, exc: Refusal) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return refusal_response(422, "invalid_request", _validation_reason(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return refusal_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers)
