"""Token estimates, prices and budgets: what a call may cost, checked before it and settled after it.

Token counts come from the provider's reported usage after a call. Before a call they are counted with the
model family's tokenizer where one is available (see `archivist.llm.tokens`: cl100k for OpenAI models, a local
model's own tokenizer), else estimated as one token per 4 characters; plus the request's `max_tokens`.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from dataclasses import dataclass, field

from archivist.llm.base import ChatRequest, Usage
from archivist.llm.errors import BudgetExceeded
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

    def __init__(self, max_tokens: int | None = None, max_cost_usd: float | None = None) -> None:
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.spent_tokens = 0
        self.spent_cost_usd = 0.0
        self._held_tokens = 0
        self._held_cost = 0.0
        self._lock = threading.Lock()

    def reserve(self, tokens: int, cost_usd: float) -> Reservation:
        """Return a reservation for a call's estimate, or raise BudgetExceeded if it would not fit."""
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

    def settle(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        """Replace a reservation with what the call actually used (0 for a call that failed unbilled)."""
        with self._lock:
            self._held_tokens -= reservation.tokens
            self._held_cost -= reservation.cost_usd
            self.spent_tokens += tokens
            self.spent_cost_usd += cost_usd
