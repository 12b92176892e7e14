"""Token estimates, prices and budgets: what a call may cost, checked before it and settled after it.

Token counts come from the provider's reported usage after a call. Before a call they are counted with the
model family's tokenizer where one is available (see `archivist.llm.tokens`: cl100k for OpenAI models, a local
model's own tokenizer), else estimated as one token per 4 characters; plus the request's `max_tokens`.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from archivist.llm.base import ChatRequest, Usage
from archivist.llm.errors import BudgetExceeded
from archivist.llm.persistence import SpendLedger
from archivist.llm.tokens import CharEstimate, TokenCounter

DEFAULT_COMPLETION_ESTIMATE = 512


def estimate_prompt_tokens(request: ChatRequest, counter: TokenCounter | None = None) -> int:
    """Return the prompt's tokens by `counter` (chars/4 if None), plus 4 per message of chat framing."""
    counter = counter or CharEstimate()
    total = 0
    for m in request.messages:
        total += counter.count(m.content) + 4
    for t in request.tools:
        total += counter.count(t.name + " " + t.description + " " + json.dumps(t.parameters))
    if request.response_schema is not None:
        total += counter.count(json.dumps(request.response_schema))
    return total


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float


@dataclass
class PriceTable:
    """Prices by model-name glob; the first matching pattern wins; unknown models cost 0 (local or free)."""

    prices: dict[str, Price] = field(default_factory=dict)

    def price(self, model: str) -> Price:
        """Return the price of a model."""
        for pattern, price in self.prices.items():
            if fnmatch.fnmatchcase(model, pattern):
                return price
        return Price(0.0, 0.0)

    def cost(self, model: str, usage: Usage) -> float:
        """Return the cost in dollars of a call's usage."""
        p = self.price(model)
        return (usage.prompt_tokens * p.input_per_mtok + usage.completion_tokens * p.output_per_mtok) / 1e6


@dataclass(slots=True)
class Reservation:
    """Tokens and dollars held for a call in flight."""

    tokens: int
    cost_usd: float


class Budget:
    """A token and/or cost limit shared by every call charged to it (a request, or an API key's period).

    Each call reserves its estimate first, so concurrent calls, retries, fallbacks and streams cannot
    overrun the limit together; the reservation is replaced by the actual usage when the call ends.
    """

    def __init__(
        self, max_tokens: int | None = None, max_cost_usd: float | None = None, *, parent: Budget | None = None
    ) -> None:
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        #: a wider budget every call charged here is also charged to (a request's budget → its API key's)
        self.parent = parent
        self.spent_tokens = 0
        self.spent_cost_usd = 0.0
        self._held_tokens = 0
        self._held_cost = 0.0
        self._lock = threading.Lock()

    def reserve(self, tokens: int, cost_usd: float) -> Reservation:
        """Return a reservation for a call's estimate, or raise BudgetExceeded if it (or its parent) would not fit."""
        held = self._reserve_here(tokens, cost_usd)
        if self.parent is not None:
            try:
                self.parent.reserve(tokens, cost_usd)
            except BudgetExceeded:
                self._release(held)
                raise
        return held

    def settle(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        """Replace a reservation with what the call actually used (0 for a call that failed unbilled)."""
        self._settle_here(reservation, tokens, cost_usd)
        if self.parent is not None:
            self.parent.settle(reservation, tokens, cost_usd)

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            self._held_tokens -= reservation.tokens
            self._held_cost -= reservation.cost_usd

    def _reserve_here(self, tokens: int, cost_usd: float) -> Reservation:
        with self._lock:
            if self.max_tokens is not None and self.spent_tokens + self._held_tokens + tokens > self.max_tokens:
                raise BudgetExceeded(
                    f"token budget: {self.spent_tokens} spent + {self._held_tokens} in flight + ~{tokens} "
                    f"estimated > {self.max_tokens}"
                )
            if self.max_cost_usd is not None and self.spent_cost_usd + self._held_cost + cost_usd > self.max_cost_usd:
                raise BudgetExceeded(
                    f"cost budget: ${self.spent_cost_usd:.4f} spent + ${self._held_cost:.4f} in flight + "
                    f"~${cost_usd:.4f} estimated > ${self.max_cost_usd:.4f}"
                )
            self._held_tokens += tokens
            self._held_cost += cost_usd
            return Reservation(tokens, cost_usd)

    def _settle_here(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        with self._lock:
            self._held_tokens -= reservation.tokens
            self._held_cost -= reservation.cost_usd
            self.spent_tokens += tokens
            self.spent_cost_usd += cost_usd


Period = Literal["day", "month"]


def period_label(period: Period, now: float) -> str:
    """Return the UTC calendar period holding `now`: "2026-11-23" for a day, "2026-11" for a month."""
    day = datetime.fromtimestamp(now, UTC)
    return day.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


class KeyBudget(Budget):
    """A budget per key (an API key's id) and calendar period, persisted in the store so restarts don't reset it.

    Spending is read from the store at each reservation and added to it at each settlement, so several
    processes share one limit; between a read and the matching write another process may reserve too, so
    concurrent processes can overrun a limit by at most their calls in flight.
    """

    def __init__(
        self,
        store: SpendLedger,
        key: str,
        *,
        period: Period = "month",
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(max_tokens, max_cost_usd)
        self.store = store
        self.key = key
        self.period = period
        self._clock = clock

    def _reserve_here(self, tokens: int, cost_usd: float) -> Reservation:
        spent_tokens, spent_cost = self.store.spend_get(self.key, period_label(self.period, self._clock()))
        with self._lock:
            self.spent_tokens, self.spent_cost_usd = spent_tokens, spent_cost
        return super()._reserve_here(tokens, cost_usd)

    def _settle_here(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        super()._settle_here(reservation, tokens, cost_usd)
        if tokens or cost_usd:
            self.store.spend_add(self.key, period_label(self.period, self._clock()), tokens, cost_usd)
