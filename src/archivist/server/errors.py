"""One error shape for every failure: `{"error": {"code", "message", "request_id"}}`, with a stable code."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from archivist.guard.policy import InjectionBlocked
from archivist.llm.errors import BudgetExceeded
from archivist.types import ArchivistError, ConflictError, NotFoundError, StoreError, UsageError

log = logging.getLogger("archivist.server")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


#: Our errors whose message is fit for the client, with the status and code they answer.
_KNOWN: dict[type[Exception], tuple[int, str]] = {
    UsageError: (400, "bad_request"),
    NotFoundError: (404, "not_found"),
    ConflictError: (409, "conflict"),
    BudgetExceeded: (402, "budget_exceeded"),
    InjectionBlocked: (400, "injection_blocked"),
}


class Problem(BaseModel):
    """One part of a request that failed validation."""

    loc: list[str] = Field(description='where: ["body", "k"], ["query", "limit"]…')
    msg: str
    type: str


class ErrorInfo(BaseModel):
    """What went wrong: a stable `code` to branch on, a message for people, the request's id."""

    # upstream_error: a streamed answer's model failed after the stream began (an `error` event)
    code: str = Field(
        description="stable: "
        + ", ".join(sorted({*_STATUS_CODES.values(), *(c for _, c in _KNOWN.values()), "upstream_error"}))
    )
    message: str
    request_id: str = Field(description="also in the X-Request-ID header, and on every server log line of the request")
    details: list[Problem] | None = Field(default=None, description="validation_error only: every problem found")


class ErrorBody(BaseModel):
    """The body of every error response, and the data of a stream's `error` event."""

    error: ErrorInfo


#: what each error status means, as the OpenAPI document says it
_MEANINGS = {
    400: "Bad request: the message says what to change.",
    401: "No API key, or not a valid one.",
    402: "The key's token or cost budget for this period is spent.",
    403: "The key lacks the scope, or may not use the collection.",
    404: "No such resource (or none this key may see).",
    409: "Conflict: the name is taken.",
    413: "The request body is over the server's limit.",
    415: "Unsupported content type.",
    422: "The request failed validation; `details` lists every problem.",
    429: "Rate limited (per key, or failed authentications per address): retry after `Retry-After` seconds.",
    500: "Internal error; the server log has the details.",
    503: "The server cannot take this now (it is shutting down).",
    504: "No response within the server's time limit.",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
#: what any `/v1` request may get: no valid key, past a rate limit, the server's failure or time limit
COMMON_ERRORS = (401, 429, 500, 504)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI `responses` of these error statuses, each with the one error body."""
    return {
        status: {"model": ErrorBody, "description": _MEANINGS[status]}
        | ({"headers": _RETRY_AFTER} if status == 429 else {})
        for status in statuses
    }


class ApiError(Exception):
    """An error the API reports as is: HTTP status, stable code, message fit for the client."""

    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, "error")
        self.message = message
        self.headers = headers or {}


def request_id_of(request: Request) -> str:
    """Return the request's id (set by the request middleware)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_body(code: str, message: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """Return the JSON body of an error."""
    return {"error": {"code": code, "message": message, "request_id": request_id, **extra}}


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """Return an error as a JSON response."""
    return JSONResponse(error_body(code, message, request_id_of(request), **extra), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Make every exception an error of the one shape: ours, validation, routing, and unexpected ones."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "request"
        return error_response(request, 422, "validation_error", f"{where}: {first['msg']}", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(request, exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), message)

    async def _known(request: Request, exc: Exception) -> JSONResponse:
        status, code = next(_KNOWN[c] for c in type(exc).__mro__ if c in _KNOWN)
        return error_response(request, status, code, str(exc))

    for error in _KNOWN:
        app.add_exception_handler(error, _known)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        # The database's own words (table names, constraints) are for the server log, not for the client.
        log.error("store failed: %s", exc, exc_info=exc, extra={"request_id": request_id_of(request)})
        return error_response(request, 500, "internal", "internal error; the server log has the details")

    @app.exception_handler(ArchivistError)
    async def _archivist(request: Request, exc: ArchivistError) -> JSONResponse:
        log.error("request failed: %s", exc, extra={"request_id": request_id_of(request)})
        return error_response(request, 500, "internal", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": request_id_of(request)})
        return error_response(request, 500, "internal", "internal error; the server log has the details")
