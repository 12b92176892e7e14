"""MCP calls in the request log: each `tools/call` and `resources/read`, with its key, route, status, time and model
usage, in the table the HTTP API writes (`/v1/usage` reads it), and in the Prometheus metrics where they are served."""

from __future__ import annotations

import contextvars
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult
from pydantic import ValidationError

from archivist.llm.accounting import Budget
from archivist.mcp.access import KeyToken
from archivist.server.metrics import Metrics
from archivist.server.usage import RequestLog
from archivist.store.protocols import Store
from archivist.store.records import RequestLogRow

#: the request log's status of each failure code a tool reports (as the HTTP API answers the same failure)
STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "budget_exceeded": 402,
    "forbidden": 403,
    "not_found": 404,
    "rate_limited": 429,
    "internal": 500,
    "failed": 500,
    "timeout": 504,
}
#: the route of a resource read (the document resource is the only one)
RESOURCE_ROUTE = "mcp:document"
#: the route of a call naming no tool the server has: client text never becomes a route (or a metrics label)
UNKNOWN_ROUTE = "mcp:unknown"
_LOGGED = ("tools/call", "resources/read")


@dataclass(slots=True)
class Call:
    """What a tool tells the request log about the call it serves: its failure code, the budget it charged."""

    code: str | None = None
    budget: Budget | None = None


#: the call being served: a mutable holder, so a tool running in a worker thread (a copied context) still reaches it
_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("archivist_mcp_call", default=None)


def note_failure(code: str) -> None:
    """Record the failure code of the call being served (nothing outside a call)."""
    call = _CALL.get()
    if call is not None:
        call.code = code


def note_budget(budget: Budget | None) -> Budget | None:
    """Record the budget the call's model calls are charged to (its spending goes into the log); return it."""
    call = _CALL.get()
    if call is not None:
        call.budget = budget
    return budget


class CallLog:
    """The MCP server's middleware that writes every tool call and resource read to the request log, and counts it
    in `metrics` (given where the server serves them: over HTTP, at /metrics)."""

    def __init__(self, store: Store, metrics: Metrics | None = None) -> None:
        self.requests = RequestLog(store)
        self.metrics = metrics
        #: the tools the server has (filled once they are registered)
        self.tools: frozenset[str] = frozenset()

    def start(self) -> None:
        """Start writing the log in the background (and timing searches and answers for the metrics)."""
        self.requests.start()
        if self.metrics is not None:
            self.metrics.start()

    def stop(self) -> None:
        """Write what is left of the log, and stop."""
        if self.metrics is not None:
            self.metrics.stop()
        self.requests.stop()

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Return the handler's result, having logged the call (other messages pass untouched)."""
        if ctx.method not in _LOGGED or ctx.request_id is None:
            return await call_next(ctx)
        call = Call()
        token = _CALL.set(call)
        started = time.perf_counter()
        status = 500
        try:
            result = await call_next(ctx)
            # The handler's result comes shaped for the wire (a dict), as the SDK's own tracing middleware reads it.
            failed = (isinstance(result, CallToolResult) and result.is_error) or (
                isinstance(result, dict) and result.get("isError") is True
            )
            # A tool error without a code of ours: the SDK refused the arguments (or the tool name) before the call.
            status = STATUS.get(call.code or "", 400) if failed else 200
            return result
        except MCPError as exc:
            status = STATUS.get(call.code or "", 400 if exc.error.code == INVALID_PARAMS else 500)
            raise
        except ValidationError:
            status = 400
            raise
        finally:
            _CALL.reset(token)
            self._record(ctx, status, time.perf_counter() - started, call)

    def _record(self, ctx: ServerRequestContext[Any, Any], status: int, elapsed: float, call: Call) -> None:
        route = self._route(ctx)
        access = get_access_token()
        tokens = call.budget.spent_tokens if call.budget is not None else 0
        cost = call.budget.spent_cost_usd if call.budget is not None else 0.0
        self.requests.add(
            RequestLogRow(
                request_id=uuid.uuid4().hex,
                at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                key_id=access.principal.id if isinstance(access, KeyToken) else None,
                method=ctx.method,
                route=route,
                status=status,
                latency_ms=round(elapsed * 1000, 3),
                tokens=tokens,
                cost_usd=cost,
            )
        )
        if self.metrics is not None:
            self.metrics.requests.labels(ctx.method, route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if tokens:
                self.metrics.llm_tokens.inc(tokens)
            if cost:
                self.metrics.llm_cost.inc(cost)

    def _route(self, ctx: ServerRequestContext[Any, Any]) -> str:
        if ctx.method == "resources/read":
            return RESOURCE_ROUTE
        name = (ctx.params or {}).get("name")
        return f"mcp:{name}" if isinstance(name, str) and name in self.tools else UNKNOWN_ROUTE
