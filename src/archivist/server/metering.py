"""Charging a request's model usage: onto the request (for the request log) and into the metrics."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from archivist.llm.accounting import Budget
from archivist.server.services import Services


def charge_usage(request: Request, svc: Services, usage: dict[str, Any] | Budget) -> None:
    """Record an answer's model usage on the request (for the request log) and in the metrics: the usage the answer
    reports, or, for an answer cut short, what its request's budget was charged until then."""
    if isinstance(usage, Budget):
        tokens, cost = usage.spent_tokens, usage.spent_cost_usd
    else:
        tokens = int(usage.get("prompt_tokens", 0) or 0) + int(usage.get("completion_tokens", 0) or 0)
        cost = float(usage.get("cost_usd", 0.0) or 0.0)
    request.state.tokens = tokens
    request.state.cost_usd = cost
    if tokens:
        svc.metrics.llm_tokens.inc(tokens)
    if cost:
        svc.metrics.llm_cost.inc(cost)
