"""HTTP plumbing every HTTP provider shares: deadlines as timeouts, status codes and transport errors as LLMErrors."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx

from archivist.llm.base import Deadline
from archivist.llm.errors import (
    DeadlineExceeded,
    LLMError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RequestRejected,
    StreamBroken,
)

#: 529 is Anthropic's "overloaded"; OpenAI-compatible servers use 429 and 503.
RATE_LIMIT_STATUSES = frozenset({429, 503, 529})


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a Retry-After header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def call_timeout(deadline: Deadline, read_s: float, connect_s: float, provider: str) -> httpx.Timeout:
    """Return the call's timeouts, never past the deadline; raise DeadlineExceeded if it has passed."""
    left = deadline.remaining()
    if left <= 0:
        raise DeadlineExceeded("deadline passed before the call", provider=provider)
    return httpx.Timeout(min(read_s, left), connect=min(connect_s, left))


def error_for_status(status: int, message: str, *, provider: str, retry_after: float | None = None) -> LLMError:
    """Return the LLMError an HTTP status means: rate limits, 5xx/408 failures (retryable), else rejected."""
    if status in RATE_LIMIT_STATUSES:
        return RateLimited(message, provider=provider, retry_after=retry_after)
    if status >= 500 or status == 408:
        return ProviderError(message, provider=provider, retry_after=retry_after)
    return RequestRejected(message, provider=provider)


def raise_for_status(resp: httpx.Response, provider: str) -> None:
    """Raise the LLMError of a 4xx/5xx answer, with its body's start and its Retry-After."""
    if resp.status_code < 400:
        return
    body = resp.read().decode("utf-8", "replace")[:200]
    raise error_for_status(
        resp.status_code,
        f"HTTP {resp.status_code}: {body!r}",
        provider=provider,
        retry_after=parse_retry_after(resp.headers.get("retry-after")),
    )


def transport_error(exc: httpx.HTTPError, provider: str) -> LLMError:
    """Return the LLMError of a failed HTTP exchange: a timeout, or a connection failure."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeout(f"no answer in time ({type(exc).__name__})", provider=provider)
    return ProviderError(f"connection failed: {exc}", provider=provider)


def stream_error(exc: LLMError | httpx.HTTPError, sent: list[str], provider: str) -> LLMError:
    """Return what a stream failure means: StreamBroken once text reached the caller, else a retryable error."""
    if sent:
        detail = "stream stalled" if isinstance(exc, httpx.TimeoutException) else f"stream broke: {exc}"
        return StreamBroken(f"{detail} after {len(sent)} pieces", provider=provider, partial_text="".join(sent))
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeout("no first token in time", provider=provider)
    return transport_error(exc, provider)


def aborter(resp: httpx.Response) -> Callable[[], None]:
    """Return a hook that aborts a streamed response from another thread: it shuts its socket down, which wakes
    a read blocked on it (a stall before the first token included) with an error, and tells the server at once."""

    def abort() -> None:
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            # The plain socket's shutdown, even under TLS: SSLSocket.shutdown would also drop the TLS state the
            # reading thread is using. A transport without a socket (tests' in-memory ones) stops at the next read.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    return abort
