"""What the LLM layer keeps in a store, as the two small protocols it needs (any store backend provides both)."""

from __future__ import annotations

from typing import Protocol


class CacheBackend(Protocol):
    """Where the response cache keeps completions: values under keys, each until it expires."""

    def cache_get(self, key: str, now: float) -> str | None:
        """Return a cached value that has not expired at `now` (epoch seconds), or None."""
        ...

    def cache_put(self, key: str, value: str, now: float, ttl_s: float) -> None:
        """Store a value under a key until `now + ttl_s`, dropping expired entries as it goes."""
        ...


class SpendLedger(Protocol):
    """Where budgets keep what was spent: tokens and dollars per budget key and period, shared by processes."""

    def spend_get(self, key: str, period: str) -> tuple[int, float]:
        """Return the tokens and dollars recorded against a budget key in a period (0, 0.0 if none)."""
        ...

    def spend_add(self, key: str, period: str, tokens: int, cost_usd: float) -> None:
        """Add tokens and dollars to a budget key's total for a period."""
        ...
