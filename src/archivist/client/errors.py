"""The client's one exception hierarchy: every failure is an `APIError`, with the status, code and request id
the server gave (as httpx's `HTTPError` is the root of its own)."""

from __future__ import annotations

from typing import Any

import httpx


class APIError(Exception):
    """Any failure of a call: `code` (stable, to branch on) and `request_id` when the server answered."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        head = f"{self.status} {self.code}: " if self.status is not None else (f"{self.code}: " if self.code else "")
        return f"{head}{self.message}{where}"


class APIConnectionError(APIError):
    """The server could not be reached, or the connection failed before a response."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the client's timeout."""


class APIStatusError(APIError):
    """The server answered with an error status; `response` is the response, `details` its validation problems."""

    status: int

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        code: str,
        request_id: str | None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, status=response.status_code, code=code, request_id=request_id)
        self.response = response
        self.details = details or []


class BadRequestError(APIStatusError):
    """400: the request is wrong in a way the message explains."""


class AuthenticationError(APIStatusError):
    """401: no API key, or not a valid one."""


class PermissionDeniedError(APIStatusError):
    """403: the key lacks the scope, or may not use the collection."""


class NotFoundError(APIStatusError):
    """404: no such resource, or none the key may see."""


class ConflictError(APIStatusError):
    """409: the name is taken."""


class PayloadTooLargeError(APIStatusError):
    """413: the body is over the server's limit."""


class UnsupportedMediaTypeError(APIStatusError):
    """415: the server does not take this content type."""


class UnprocessableEntityError(APIStatusError):
    """422: the request failed validation; `details` lists every problem."""


class RateLimitError(APIStatusError):
    """429: too many requests; `retry_after` says how many seconds to wait (None if the server did not say)."""

    @property
    def retry_after(self) -> float | None:
        """Return the server's Retry-After in seconds, or None."""
        try:
            return float(self.response.headers["retry-after"])
        except (KeyError, ValueError):
            return None


class InternalServerError(APIStatusError):
    """5xx: the server failed (its log has the details, under `request_id`)."""


class GatewayTimeoutError(InternalServerError):
    """504: the server gave up on the request at its time limit."""


class StreamError(APIError):
    """A streamed answer ended with an `error` event (the status was 200: the stream had begun)."""


class JobTimeoutError(APIError, TimeoutError):
    """A job was still queued or running when `wait_for_job` stopped waiting."""


class AgentRunTimeoutError(APIError, TimeoutError):
    """An agent run was still running when `wait_for_agent_run` stopped waiting (it goes on on the server)."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    504: GatewayTimeoutError,
}


def status_error(response: httpx.Response) -> APIStatusError:
    """Return the error for a response with an error status, read from the API's `{"error": {…}}` body (or, from
    something that is not the API, such as a proxy, from the status alone)."""
    kind = _BY_STATUS.get(response.status_code) or (
        InternalServerError if response.status_code >= 500 else APIStatusError
    )
    request_id = response.headers.get("x-request-id")
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200]
        return kind(
            text or response.reason_phrase,
            response=response,
            code=f"http_{response.status_code}",
            request_id=request_id,
        )
    details = error.get("details")
    return kind(
        message,
        response=response,
        code=code,
        request_id=str(error.get("request_id") or request_id or "") or None,
        details=details if isinstance(details, list) else None,
    )
