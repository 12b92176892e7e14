"""Failures of model calls, each saying whether retrying could help."""

from __future__ import annotations

from archivist.types import ArchivistError


class LLMError(ArchivistError):
    """A model call failed."""

    retryable = False

    def __init__(self, message: str, *, provider: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{provider}: {message}" if provider else message)
        self.provider = provider
        self.retry_after = retry_after


class ProviderTimeout(LLMError):
    """The provider did not answer (or send the first token) in time."""

    retryable = True


class RateLimited(LLMError):
    """The provider answered 429 or 503, possibly with Retry-After."""

    retryable = True


class ProviderError(LLMError):
    """The provider failed: a 5xx answer or a dropped connection."""

    retryable = True


class BadResponse(LLMError):
    """The provider answered something that is not a valid completion."""

    retryable = True


class RequestRejected(LLMError):
    """The provider refused the request itself (4xx other than 429): retrying cannot help."""


class StreamBroken(LLMError):
    """A stream failed after text was already sent to the caller; it is never retried into duplicate text."""

    def __init__(self, message: str, *, provider: str = "", partial_text: str = "") -> None:
        super().__init__(message, provider=provider)
        self.partial_text = partial_text


class CircuitOpen(LLMError):
    """The provider's circuit breaker is open after repeated failures."""


class DeadlineExceeded(LLMError):
    """The caller's deadline passed before a model answered."""


class Cancelled(LLMError):
    """The caller cancelled the work (its client went away): never retried, never a fallback, and no mark
    against the provider's health."""


class AllProvidersFailed(LLMError):
    """Every provider in the fallback chain failed; `errors` holds each one's last error."""

    def __init__(self, errors: list[LLMError]) -> None:
        detail = "; ".join(str(e) for e in errors) or "no providers configured"
        super().__init__(f"all providers failed: {detail}")
        self.errors = errors


class BudgetExceeded(LLMError):
    """The call would exceed a token or cost budget: refused before anything was sent."""
