"""The gateway: retries with backoff, a circuit breaker per provider and model, a fallback chain, deadlines.

Every model call in Archivist goes through `Gateway.chat` or `Gateway.stream`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Literal

from archivist.llm.accounting import (
    DEFAULT_COMPLETION_ESTIMATE,
    Budget,
    PriceTable,
    Reservation,
    estimate_prompt_tokens,
)
from archivist.llm.base import LLM, ChatRequest, Completion, Deadline, DoneEvent, StreamEvent, TokenEvent, Usage
from archivist.llm.cache import ResponseCache, cache_key
from archivist.llm.errors import (
    AllProvidersFailed,
    Cancelled,
    CircuitOpen,
    DeadlineExceeded,
    LLMError,
    StreamBroken,
)
from archivist.llm.tokens import TokenCounter, counter_for
from archivist.observe import span

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown_s` lets one probe call through."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        """Return closed, open, or half-open (cooldown over: the next call is a probe)."""
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """Return whether a call may go through now (at most one probe while half-open)."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half-open" and not self._probing:
                self._probing = True
                return True
            return False

    def record(self, ok: bool) -> None:
        """Record a call's outcome."""
        with self._lock:
            self._probing = False
            if ok:
                self._failures = 0
                self._opened_at = None
                return
            self._failures += 1
            if self._opened_at is not None or self._failures >= self.threshold:
                self._opened_at = self._clock()

    def abandon(self) -> None:
        """Forget a call that ended with no verdict on the provider (its caller went away); frees a probe slot."""
        with self._lock:
            self._probing = False


@dataclass
class Route:
    """One provider in the fallback chain, with its retry budget and breaker."""

    llm: LLM
    max_retries: int = 2
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)


class Gateway:
    """Calls providers in fallback order, retrying transient failures within the caller's deadline."""

    def __init__(
        self,
        routes: list[Route],
        *,
        default_timeout_s: float = 60.0,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        prices: PriceTable | None = None,
        cache: ResponseCache | None = None,
        cache_sampled: bool = False,
    ) -> None:
        self.routes = routes
        self.prices = prices or PriceTable()
        self.cache = cache
        self.cache_sampled = cache_sampled
        self.default_timeout_s = default_timeout_s
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._sleep = sleep
        self._rng = rng or random.Random()

    def supports_tools(self) -> bool:
        """Return whether the first provider calls tools natively (a provider says it cannot with a class
        attribute `supports_tools = False`)."""
        return bool(self.routes) and bool(getattr(self.routes[0].llm, "supports_tools", True))

    def _delay(self, attempt: int, error: LLMError) -> float:
        """Return how long to wait before retry `attempt`: Retry-After if given, else full jitter."""
        if error.retry_after is not None:
            return error.retry_after
        return self._rng.uniform(0.0, min(self._cap, self._base * 2**attempt))

    def _may_call(self, route: Route, name: str, deadline: Deadline, errors: list[LLMError]) -> bool:
        """Return whether the route may be called now; raise Cancelled once the caller cancelled, AllProvidersFailed
        once the deadline has passed."""
        if deadline.cancelled:
            raise Cancelled("cancelled before the call", provider=name)
        if deadline.remaining() <= 0:
            errors.append(DeadlineExceeded("deadline passed", provider=name))
            raise AllProvidersFailed(errors)
        if not route.breaker.allow():
            errors.append(CircuitOpen("circuit open after repeated failures", provider=name))
            return False
        return True

    def _wait_to_retry(
        self, route: Route, attempt: int, exc: LLMError, deadline: Deadline, errors: list[LLMError]
    ) -> bool:
        """Sleep before retrying the route and return True, or record the error and return False to move on."""
        if deadline.cancelled:
            raise Cancelled("cancelled: not retried", provider=exc.provider) from exc
        if not exc.retryable or attempt == route.max_retries:
            errors.append(exc)
            return False
        delay = self._delay(attempt, exc)
        if delay >= deadline.remaining():
            # Sleeping past the deadline would only fail later: fall back now.
            errors.append(exc)
            return False
        self._sleep(delay)
        return True

    def _reserve(self, route: Route, request: ChatRequest, budget: Budget | None) -> Reservation | None:
        """Return the budget reservation for one attempt's estimate (raises BudgetExceeded if it won't fit)."""
        if budget is None:
            return None
        prompt = estimate_prompt_tokens(request, self._counter(route))
        completion = request.max_tokens or DEFAULT_COMPLETION_ESTIMATE
        cost = self.prices.cost(route.llm.model, Usage(prompt, completion))
        return budget.reserve(prompt + completion, cost)

    @staticmethod
    def _counter(route: Route) -> TokenCounter:
        """Return the route's token counter: the provider's own tokenizer if it has one, else by model family."""
        own: TokenCounter | None = getattr(route.llm, "token_counter", None)
        return own or counter_for(route.llm.model)

    def _settle(self, budget: Budget | None, held: Reservation | None, model: str, usage: Usage | None) -> float:
        """Charge the budget what a call used (nothing for a call that failed); return its cost."""
        cost = self.prices.cost(model, usage) if usage else 0.0
        if budget is not None and held is not None:
            budget.settle(held, (usage.prompt_tokens + usage.completion_tokens) if usage else 0, cost)
        return cost

    def _partial(self, route: Route, request: ChatRequest, sent: list[str]) -> Usage:
        """Return the estimated usage of a stream that ended early: the prompt, and the text sent so far (the
        provider's own count comes only with the end of the stream)."""
        counter = self._counter(route)
        return Usage(estimate_prompt_tokens(request, counter), counter.count("".join(sent)))

    def _cacheable(self, request: ChatRequest) -> bool:
        # Sampled answers differ by design: caching them would hide that unless asked for.
        return self.cache is not None and (request.temperature == 0 or self.cache_sampled)

    def chat(self, request: ChatRequest, deadline: Deadline | None = None, budget: Budget | None = None) -> Completion:
        """Return the first successful completion along the fallback chain, or raise AllProvidersFailed."""
        with span("llm.chat", max_tokens=request.max_tokens, messages=len(request.messages)) as current:
            completion = self._chat(request, deadline, budget)
            current.set(
                provider=completion.provider,
                model=completion.model,
                attempts=len(completion.attempts),
                prompt_tokens=completion.usage.prompt_tokens,
                completion_tokens=completion.usage.completion_tokens,
                cost_usd=completion.cost_usd,
            )
            return completion

    def _chat(self, request: ChatRequest, deadline: Deadline | None, budget: Budget | None) -> Completion:
        deadline = deadline or Deadline.after(self.default_timeout_s)
        errors: list[LLMError] = []
        attempts: list[str] = []
        if self._cacheable(request):
            assert self.cache is not None
            for route in self.routes:
                hit = self.cache.get(cache_key(route.llm.name, route.llm.model, request))
                if hit is not None:
                    hit.attempts = [f"{route.llm.name}/{route.llm.model}: cached"]
                    return hit
        for route in self.routes:
            name = f"{route.llm.name}/{route.llm.model}"
            for attempt in range(route.max_retries + 1):
                if not self._may_call(route, name, deadline, errors):
                    break
                held = self._reserve(route, request, budget)
                try:
                    completion = route.llm.chat(request, deadline)
                except LLMError as exc:
                    self._settle(budget, held, route.llm.model, None)
                    if deadline.cancelled:
                        # Whatever failed, nobody waits for the answer: try nothing else, blame no provider.
                        route.breaker.abandon()
                        raise Cancelled("cancelled during the call", provider=name) from exc
                    # A rejected request says nothing about the provider's health.
                    route.breaker.record(not exc.retryable)
                    attempts.append(f"{name}: {type(exc).__name__}")
                    if not self._wait_to_retry(route, attempt, exc, deadline, errors):
                        break
                    continue
                route.breaker.record(True)
                completion.cost_usd = self._settle(budget, held, route.llm.model, completion.usage)
                completion.attempts = [*attempts, f"{name}: ok"]
                if self._cacheable(request) and self.cache is not None:
                    self.cache.put(cache_key(route.llm.name, route.llm.model, request), completion)
                return completion
        raise AllProvidersFailed(errors)

    def stream(
        self, request: ChatRequest, deadline: Deadline | None = None, budget: Budget | None = None
    ) -> Generator[StreamEvent, None, None]:
        """Yield a stream from the first provider that starts one; once text flowed, a failure is StreamBroken.

        Closing the generator early closes the provider's stream and charges what it sent; a cancelled
        `deadline` aborts the call in flight and raises Cancelled (no retry, no fallback)."""
        deadline = deadline or Deadline.after(self.default_timeout_s)
        errors: list[LLMError] = []
        for route in self.routes:
            name = f"{route.llm.name}/{route.llm.model}"
            for attempt in range(route.max_retries + 1):
                if not self._may_call(route, name, deadline, errors):
                    break
                sent: list[str] = []
                held = self._reserve(route, request, budget)
                events = route.llm.stream(request, deadline)
                try:
                    for event in events:
                        if isinstance(event, TokenEvent):
                            sent.append(event.text)
                        elif isinstance(event, DoneEvent):
                            route.breaker.record(True)
                            usage = event.completion.usage
                            event.completion.cost_usd = self._settle(budget, held, route.llm.model, usage)
                            held = None
                        yield event
                    return
                except GeneratorExit:
                    # The caller stopped reading: charge what was sent, then let the generator close (the
                    # `finally` closes the provider's stream, and with it the connection).
                    route.breaker.abandon()
                    self._settle(budget, held, route.llm.model, self._partial(route, request, sent))
                    raise
                except LLMError as exc:
                    if deadline.cancelled:
                        # The caller cancelled and the provider's stream was aborted for it: the provider billed
                        # what it generated until then. Charge that, blame no provider, try nothing else.
                        route.breaker.abandon()
                        self._settle(budget, held, route.llm.model, self._partial(route, request, sent))
                        raise Cancelled(f"cancelled after {len(sent)} pieces", provider=name) from exc
                    if isinstance(exc, StreamBroken):
                        route.breaker.record(False)
                        # The provider billed what it sent: charge an estimate of it.
                        self._settle(budget, held, route.llm.model, self._partial(route, request, sent))
                        raise  # text already reached the caller: retrying would duplicate it
                    route.breaker.record(not exc.retryable)
                    self._settle(budget, held, route.llm.model, None)
                    if sent:
                        raise StreamBroken(str(exc), provider=name) from exc
                    if not self._wait_to_retry(route, attempt, exc, deadline, errors):
                        break
                finally:
                    if isinstance(events, Generator):
                        events.close()
        raise AllProvidersFailed(errors)

    def ping(self, timeout_s: float = 10.0) -> list[dict[str, object]]:
        """Return each provider's state: reachable, latency, breaker state, error."""
        from archivist.llm.base import Message

        report: list[dict[str, object]] = []
        request = ChatRequest((Message("user", "Reply with the word pong."),), max_tokens=5)
        for route in self.routes:
            started = time.monotonic()
            entry: dict[str, object] = {"provider": route.llm.name, "model": route.llm.model}
            try:
                route.llm.chat(request, Deadline.after(timeout_s))
                route.breaker.record(True)
                entry |= {"reachable": True, "error": None}
            except LLMError as exc:
                route.breaker.record(False)
                entry |= {"reachable": False, "error": str(exc)}
            entry |= {"latency_ms": round((time.monotonic() - started) * 1000, 1), "breaker": route.breaker.state}
            report.append(entry)
        return report
